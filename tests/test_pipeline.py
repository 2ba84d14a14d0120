"""The QRA stage through both executors (in process and on Ray), and the self-train loop's choice of graphs (the whole
loop at tiny sizes runs as a Ray job: tests/test_jobs.py)."""

import json

import pyarrow as pa
import pytest

from step_ray.config import load_config
from step_ray.stage import run_local
from step_ray.pipeline.steps import qra_step
from step_ray.qra.corpus import finalize
from step_ray.qra.records import part_files, read_parquet
from step_ray.qra.stage import QraStage


def part_bytes(folder) -> dict[str, bytes]:
    """Every part of a QRA folder (Parquet and JSONL) by name."""
    files = part_files(str(folder))
    assert files, f"no parts in {folder}"
    return {p.rsplit("/", 1)[-1]: open(p, "rb").read() for f in files for p in (f, f[: -len(".parquet")] + ".jsonl")}


def test_qra_stage_sequential_on_ground_truth(synth_corpus):
    cfg, items = synth_corpus["cfg"], synth_corpus["items"]
    batch = pa.table({"video_id": [i["video_id"] for i in items], "uri": [i["gt_path"] for i in items],
                      "input_error": pa.nulls(len(items), pa.string())})
    [table] = run_local([batch], [QraStage.from_config(cfg)])
    out = table.to_pylist()
    assert all(r["status"] == "ok" and r["samples"] > 0 for r in out)
    candidates = [rec for r in out for rec in r["records"]]  # typed records: no JSON in the rows
    records, _ = finalize(candidates, cfg.qra, cfg.run.seed)  # options, balance, splits: corpus-wide
    assert {rec["steps"] for rec in records} == set(range(cfg.qra.min_steps, cfg.qra.max_steps + 1))
    assert all(rec["options"][rec["answer_index"]] == rec["answer"] for rec in records)


@pytest.mark.ray
def test_qra_on_ray_is_deterministic_and_reports_bad_graphs(ray_session, synth_corpus, tmp_path):
    cfg = synth_corpus["cfg"]
    graphs = tmp_path / "graphs"
    graphs.mkdir()
    for item in synth_corpus["items"]:
        (graphs / f"{item['video_id']}.stsg.json").write_text(open(item["gt_path"]).read())
    (graphs / "broken.stsg.json").write_text("{not json")
    old = json.loads(open(synth_corpus["items"][0]["gt_path"]).read())
    old["graph"]["schema_version"] = "stsg/0"
    (graphs / "old.stsg.json").write_text(json.dumps(old))
    a = qra_step(cfg, [str(graphs)], tmp_path / "a")
    qra_step(cfg, [str(graphs)], tmp_path / "b", use_ray=False)  # the same graphs in process: the same bytes
    assert a["graphs"] == len(synth_corpus["items"]) + 2 and a["graphs_failed"] == 2
    assert "unsupported STSG schema version" in a["errors"]["old"] and "not JSON" in a["errors"]["broken"]
    assert part_bytes(tmp_path / "a") == part_bytes(tmp_path / "b")
    records = read_parquet(tmp_path / "a")
    assert len(records) == a["samples"] > 0
    splits = {}
    for rec in records:
        splits.setdefault(rec["video_id"], set()).add(rec["split"])
    assert all(len(s) == 1 for s in splits.values())  # no video in two splits


def test_self_train_reads_only_the_graphs_of_its_last_stsg_run(synth_corpus, tmp_path):
    """A graph left in the folder by an earlier run with other inputs must not feed this run's QRA."""
    from step_ray.pipeline.steps import graphs_of_last_run, stsg_step

    cfg, items = synth_corpus["cfg"], synth_corpus["items"]
    videos = tmp_path / "videos"
    videos.mkdir()
    (videos / "v.mp4").write_bytes(open(items[0]["path"], "rb").read())
    (tmp_path / "stsg").mkdir()
    (tmp_path / "stsg" / "old.stsg.json").write_text(open(items[1]["gt_path"]).read())
    stsg_step(cfg, [str(videos)], tmp_path / "stsg", use_ray=False)
    assert [p.rsplit("/", 1)[-1] for p in graphs_of_last_run(tmp_path / "stsg")] == ["v.stsg.json"]
