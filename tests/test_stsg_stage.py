"""The STSG stage end to end: sequential runner on synthetic videos (against ground truth) and on Ray with
fractional-GPU actors, the real clip and broken files."""

import collections
import os
import shutil

import pytest

from step_ray.stage import run_local
from step_ray.pipeline.steps import stsg_step
from step_ray.pipeline.stsg_run import rows_of_last_run
from step_ray.stsg import schema
from step_ray.stsg.stage import input_table, stsg_stages


def run_chain(cfg, out_dir, rows):
    """The two STSG stages in this process over rows ``{"video_id", "uri"}``, one batch of two rows at a time."""
    batches = [input_table(rows[i:i + 2]) for i in range(0, len(rows), 2)]
    return [r for t in run_local(batches, stsg_stages(cfg, str(out_dir))) for r in t.to_pylist()]


def objects_by_clip(g):
    return collections.Counter((g.nodes[n]["clip"], schema.describe_object(g, n)) for n in schema.nodes_of(g, "object"))


def test_sequential_stage_recovers_the_synthetic_truth(synth_corpus, tmp_path):
    cfg, items = synth_corpus["cfg"], synth_corpus["items"]
    rows = [{"video_id": i["video_id"], "uri": i["path"]} for i in items]
    out = run_chain(cfg, tmp_path, rows)
    assert [r["status"] for r in out] == ["ok"] * len(items)
    exact, found, total = 0, 0, 0
    for item, row in zip(items, out):
        gt, pred = schema.read(item["gt_path"]), schema.read(row["stsg_path"])
        assert pred.graph["source"] == "perception" and pred.graph["video_id"] == item["video_id"]
        assert len(schema.nodes_of(pred, "clip")) == len(schema.nodes_of(gt, "clip"))  # the cut is found
        a, b = objects_by_clip(gt), objects_by_clip(pred)
        exact += a == b
        found += sum((a & b).values())
        total += sum(a.values())
    assert found / total >= 0.9, f"only {found}/{total} ground-truth objects found"
    assert exact >= len(items) // 2


def test_rerun_skips_finished_graphs(synth_corpus, tmp_path):
    cfg, items = synth_corpus["cfg"], synth_corpus["items"][:2]
    rows = [{"video_id": i["video_id"], "uri": i["path"]} for i in items]
    first = run_chain(cfg, tmp_path, rows)
    mtimes = [os.stat(r["stsg_path"]).st_mtime_ns for r in first]
    again = run_chain(cfg, tmp_path, rows)  # no previous results rows handed in: the graphs' keys decide
    assert all(r["skipped"] for r in again)
    assert [os.stat(r["stsg_path"]).st_mtime_ns for r in again] == mtimes
    assert [r["objects"] for r in again] == [r["objects"] for r in first]


@pytest.mark.ray
def test_stsg_on_ray_accounts_for_every_input(ray_session, synth_corpus, real_video, tmp_path):
    """Synthetic videos + the real H.264 clip + broken files, on a pool of half-GPU actors (logical GPUs)."""
    videos = tmp_path / "videos"
    videos.mkdir()
    for item in synth_corpus["items"][:3]:
        shutil.copy(item["path"], videos)
    shutil.copy(real_video, videos)
    (videos / "zero_bytes.mp4").write_bytes(b"")
    (videos / "random_bytes.mp4").write_bytes(os.urandom(20000))
    (videos / "truncated.mp4").write_bytes(real_video.read_bytes()[:3000])
    cfg = synth_corpus["cfg"]
    cfg.perception.pool.num_gpus = 0.5  # two actors share one logical GPU
    out = tmp_path / "stsg"
    summary = stsg_step(cfg, [str(videos)], out)
    assert summary["videos"] == 7
    assert summary["ok"] + summary["failed"] == 7
    assert set(summary["errors"]) == {"zero_bytes", "random_bytes", "truncated"}
    assert all("cannot decode video" in reason for reason in summary["errors"].values())
    errors = rows_of_last_run(str(out), "errors")
    assert [e["video_id"] for e in errors] == ["random_bytes", "truncated", "zero_bytes"]
    real = schema.read(out / "carphone_pristine.stsg.json")
    # 29.97 fps sampled at 5 fps: the auto backend decodes sparsely, exactly (the synthetic 10 fps videos use decord)
    assert len(schema.nodes_of(real, "keyframe")) >= 4 and real.graph["provenance"]["decoder"] == "pyav-refs"
    assert len(list(out.glob("*.stsg.json"))) == 4
    # A re-run does nothing new and still accounts for everything.
    again = stsg_step(cfg, [str(videos)], out)
    assert again["skipped_done"] == 4 and again["failed"] == 3


@pytest.mark.ray
def test_stsg_with_yolo_backend_on_ray(ray_session, real_video, tmp_path):
    """The YOLO path through the same stage (random weights from yolo11n.yaml: no objects, but a valid graph)."""
    from step_ray.config import load_config

    cfg = load_config(None, ["perception.detector=yolo", "perception.imgsz=160", "video.sample_fps=2",
                             "perception.pool.num_gpus=0.5", "perception.pool.max_size=1"])
    summary = stsg_step(cfg, [str(real_video)], tmp_path)
    assert summary["ok"] == 1
    g = schema.read(tmp_path / "carphone_pristine.stsg.json")
    assert g.graph["provenance"]["detector"] == "detector:yolo"
