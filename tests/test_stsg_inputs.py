"""Every kind of input the STSG stage meets: the bad-input classes, manifests, object-store URIs, and the
content + settings key that makes re-runs idempotent."""

import json
import shutil

import pytest

from bad_media import bad_inputs
from step_ray.config import load_config
from step_ray.pipeline.steps import stsg_step
from step_ray.pipeline.stsg_run import rows_of_last_run
from step_ray.stsg import schema
from step_ray.utils import storage
from step_ray.utils.inputs import InputError, video_rows


@pytest.mark.ray
def test_every_bad_input_class_ends_as_a_graph_or_a_reason(ray_session, real_video, tmp_path):
    """Zero-byte, truncated, random bytes, text, audio-only, single-frame, 4K frames and variable frame rate,
    on Ray: the run finishes, outputs + errors = inputs, and each file ends the way its class should."""
    expected = bad_inputs(tmp_path / "in", real_video)
    cfg = load_config(None, ["video.sample_fps=5", "perception.pool.max_size=1"])
    out = tmp_path / "stsg"
    summary = stsg_step(cfg, [str(tmp_path / "in")], out)
    assert summary["videos"] == len(expected) and summary["accounted_for"]
    rows = {r["video_id"]: r for r in rows_of_last_run(str(out))}
    assert set(rows) == set(expected)
    for vid, outcome in expected.items():
        row = rows[vid]
        if outcome == "ok":
            assert row["status"] == "ok", (vid, row["error"])
            g = schema.read(row["stsg_path"])
            assert g.graph["width"] <= cfg.video.max_side and g.graph["height"] <= cfg.video.max_side
            assert len(schema.nodes_of(g, "clip")) >= 1
        else:
            assert row["status"] == "error" and outcome in row["error"], (vid, row["error"])
    assert rows["single_frame"]["frames"] == 1
    vfr = schema.read(rows["variable_rate"]["stsg_path"])
    times = [t for n in schema.nodes_of(vfr, "object") for t, *_ in vfr.nodes[n]["track"]]
    assert times and max(times) > 3.5  # the file's own timestamps, not frame index / average rate
    errors = rows_of_last_run(str(out), "errors")
    assert len(errors) == sum(v != "ok" for v in expected.values())


def test_manifests_name_videos_by_path_or_id(tmp_path, real_video):
    shutil.copy(real_video, tmp_path / "a.mp4")
    (tmp_path / "list.txt").write_text("# two videos\na.mp4\n\n" + str(real_video) + "\n")
    rows = video_rows([str(tmp_path / "list.txt")])
    assert [r["uri"] for r in rows] == sorted([str(tmp_path / "a.mp4"), str(real_video)])
    (tmp_path / "list.jsonl").write_text(json.dumps({"uri": "a.mp4", "video_id": "clip-42"}) + "\n")
    assert video_rows([str(tmp_path / "list.jsonl")]) == [{"video_id": "clip-42", "uri": str(tmp_path / "a.mp4")}]
    (tmp_path / "list.csv").write_text("uri,video_id\na.mp4,first\n")
    assert video_rows([str(tmp_path / "list.csv")])[0]["video_id"] == "first"
    (tmp_path / "bad.csv").write_text("path\na.mp4\n")
    with pytest.raises(InputError, match="'uri' column"):
        video_rows([str(tmp_path / "bad.csv")])
    (tmp_path / "empty.txt").write_text("# nothing\n")
    with pytest.raises(InputError, match="lists no videos"):
        video_rows([str(tmp_path / "empty.txt")])


def test_a_changed_video_or_setting_is_rebuilt_and_nothing_else(synth_corpus, tmp_path):
    cfg = synth_corpus["cfg"]
    folder = tmp_path / "videos"
    folder.mkdir()
    a, b = synth_corpus["items"][:2]
    shutil.copy(a["path"], folder / "x.mp4")
    shutil.copy(b["path"], folder / "y.mp4")
    out = tmp_path / "stsg"
    first = stsg_step(cfg, [str(folder)], out, use_ray=False)
    assert first["ok"] == 2 and first["skipped_done"] == 0
    shutil.copy(synth_corpus["items"][2]["path"], folder / "y.mp4")  # y now has other content
    again = stsg_step(cfg, [str(folder)], out, use_ray=False)
    assert again["ok"] == 2 and again["skipped_done"] == 1
    assert schema.read(out / "y.stsg.json").graph["key"].startswith(storage.content_key(str(folder / "y.mp4"))[:16])
    changed = load_config(None, ["stsg.near_factor=2.0", "synth.videos=6", "synth.seed=3", "video.sample_fps=5"])
    assert stsg_step(changed, [str(folder)], out, use_ray=False)["skipped_done"] == 0


def test_videos_and_graphs_on_s3(s3_server, synth_corpus, tmp_path):
    """Inputs listed under an s3:// prefix, graphs and run files written back to s3://, a re-run skips."""
    import pyarrow.fs as pafs

    fs = pafs.S3FileSystem(endpoint_override=f"http://127.0.0.1:{s3_server}", allow_bucket_creation=True)
    fs.create_dir("corpus")
    for item in synth_corpus["items"][:2]:
        with fs.open_output_stream(f"corpus/videos/{item['video_id']}.mp4") as f:
            f.write(open(item["path"], "rb").read())
    cfg = synth_corpus["cfg"]
    summary = stsg_step(cfg, ["s3://corpus/videos/"], "s3://corpus/stsg", use_ray=False)
    assert summary["ok"] == 2, summary["errors"]
    names = sorted(i.base_name for i in fs.get_file_info(pafs.FileSelector("corpus/stsg")))
    assert names == sorted([f"{i['video_id']}.stsg.json" for i in synth_corpus["items"][:2]]
                           + ["results", "summary.json"])  # no errors: no errors/ table
    assert [r["status"] for r in rows_of_last_run("s3://corpus/stsg")] == ["ok", "ok"]
    g = schema.loads(storage.read_text(f"s3://corpus/stsg/{synth_corpus['items'][0]['video_id']}.stsg.json"))
    assert g.graph["uri"].startswith("s3://corpus/videos/") and schema.nodes_of(g, "object")
    assert stsg_step(cfg, ["s3://corpus/videos/"], "s3://corpus/stsg", use_ray=False)["skipped_done"] == 2


def test_qra_run_dir_on_s3_and_readers_of_its_parts(s3_server, synth_corpus):
    """The qra step from an stsg output on s3:// to a QRA folder on s3://: parts, tables, stats and card are
    written there, and training's and evaluation's readers take the split they need from it."""
    import pyarrow.fs as pafs

    from step_ray.eval.evaluate import load_rows
    from step_ray.pipeline.steps import qra_step, require_split
    from step_ray.qra.records import read_parquet
    from step_ray.train.stream import split_table, train_rows

    fs = pafs.S3FileSystem(endpoint_override=f"http://127.0.0.1:{s3_server}", allow_bucket_creation=True)
    fs.create_dir("qrabucket")
    for item in synth_corpus["items"]:
        with fs.open_output_stream(f"qrabucket/videos/{item['video_id']}.mp4") as f:
            f.write(open(item["path"], "rb").read())
    cfg = synth_corpus["cfg"]
    assert stsg_step(cfg, ["s3://qrabucket/videos/"], "s3://qrabucket/stsg", use_ray=False)["ok"] == len(synth_corpus["items"])
    q = qra_step(cfg, ["s3://qrabucket/stsg"], "s3://qrabucket/qra", use_ray=False)
    assert q["graphs"] == len(synth_corpus["items"]) and q["samples"] > 0
    names = {i.base_name for i in fs.get_file_info(pafs.FileSelector("qrabucket/qra"))}
    assert {"part-00000.parquet", "part-00000.jsonl", "stats.json", "card.md", "plots", "results"} <= names
    assert "_work" not in names  # the finishing's scratch space is gone
    rows = read_parquet("s3://qrabucket/qra")
    assert len(rows) == q["samples"]
    require_split("s3://qrabucket/qra", "train")
    train = split_table("s3://qrabucket/qra", "train")
    assert train.num_rows == train_rows("s3://qrabucket/qra") == q["by_split"]["train"]
    test = load_rows("s3://qrabucket/qra", "test")
    assert len(test) == q["by_split"].get("test", 0) and all(r["split"] == "test" for r in test)


def test_a_rerun_skips_done_videos_from_the_results_table(synth_corpus, tmp_path):
    """The re-run reads the earlier run's results rows: a finished video is skipped without its graph being
    read (here the graph is replaced by junk to show it); without that row the graph itself is the judge."""
    from step_ray.pipeline.stsg_run import read_summary

    cfg = synth_corpus["cfg"]
    folder = tmp_path / "videos"
    folder.mkdir()
    for item in synth_corpus["items"][:2]:
        shutil.copy(item["path"], folder / f"{item['video_id']}.mp4")
    out = tmp_path / "stsg"
    first = stsg_step(cfg, [str(folder)], out, use_ray=False)
    counts = {r["video_id"]: (r["objects"], r["edges"]) for r in rows_of_last_run(str(out))}
    vid = synth_corpus["items"][0]["video_id"]
    (out / f"{vid}.stsg.json").write_text("junk")
    again = stsg_step(cfg, [str(folder)], out, use_ray=False)
    assert again["skipped_done"] == 2 and again["run"] != first["run"]
    rows = rows_of_last_run(str(out))
    assert all(r["skipped"] for r in rows)
    assert {r["video_id"]: (r["objects"], r["edges"]) for r in rows} == counts  # carried from the earlier rows
    shutil.rmtree(out / "results")
    rebuilt = stsg_step(cfg, [str(folder)], out, use_ray=False)
    assert rebuilt["skipped_done"] == 1 and schema.read(out / f"{vid}.stsg.json").graph["video_id"] == vid
    assert read_summary(str(out))["run"] == rebuilt["run"]


def test_ids_that_are_not_file_names_are_refused_or_error_rows(synth_corpus, tmp_path):
    """An id names an output file. A manifest that gives one with a path in it is a bad input file, refused
    before any work with its line; a file whose stem cannot be an id (``.hidden.mp4``) is an error row for that
    video only while the other inputs go on; two files with one stem get ids made unique by their URI."""
    cfg = synth_corpus["cfg"]
    a, b = synth_corpus["items"][:2]
    (tmp_path / "x").mkdir()
    (tmp_path / "y").mkdir()
    shutil.copy(a["path"], tmp_path / "x" / "clip.mp4")
    shutil.copy(b["path"], tmp_path / "y" / "clip.mp4")
    shutil.copy(b["path"], tmp_path / "y" / ".hidden.mp4")
    out = tmp_path / "out"
    bad = tmp_path / "bad.jsonl"
    bad.write_text("".join(json.dumps(r) + "\n" for r in [{"uri": "x/clip.mp4"},
                                                          {"uri": "x/clip.mp4", "video_id": "../../outside"}]))
    with pytest.raises(InputError, match=r"bad.jsonl: line 2: video_id '../../outside' must be a plain file name"):
        stsg_step(cfg, [str(bad)], out, use_ray=False)
    assert not out.exists()
    manifest = tmp_path / "list.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in [
        {"uri": "x/clip.mp4"}, {"uri": "y/clip.mp4"}, {"uri": "y/.hidden.mp4"}]))
    summary = stsg_step(cfg, [str(manifest)], out, use_ray=False)
    rows = {r["video_id"]: r for r in rows_of_last_run(str(out))}
    assert summary["videos"] == 3 and summary["ok"] == 2 and summary["failed"] == 1
    assert "not a plain file name" in rows[".hidden"]["error"]
    ok = sorted(v for v, r in rows.items() if r["status"] == "ok")
    assert len(ok) == 2 and all(v.startswith("clip-") for v in ok)  # one stem, two files: hashed suffixes
    assert sorted(p.name for p in out.glob("*.stsg.json")) == sorted(f"{v}.stsg.json" for v in ok)
    assert not (tmp_path / "outside.stsg.json").exists() and not list(out.rglob(".hidden*"))
