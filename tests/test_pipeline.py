"""The QRA stage through both executors (in process and on Ray), and the whole self-train loop at tiny sizes on the session's Ray."""

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


TINY_RUN = ["synth.videos=8", "synth.seed=5", "qra.samples_per_video=6", "train.steps=2", "train.batch_size=2",
            "train.checkpoint_every=2", "train.log_every=1", "model.frames=2", "eval.batch_size=8",
            "pretrain.videos=6", "pretrain.steps=2", "pretrain.batch_size=2", "pretrain.samples_per_video=2",
            "pretrain.test_fraction=0.5", "train.lora.enabled=true"]  # the demo trains fully; LoRA's path here


@pytest.mark.ray
def test_self_train_two_rounds_from_a_pretrained_base(ray_session, tmp_path, monkeypatch):
    """pretrain -> synth -> round 1 (stsg -> qra -> eval base -> train -> eval, vision control) -> round 2 (the
    filter asks model 1; training starts from model 1 merged) -> report.md / report.html; a re-run skips it all."""
    from step_ray.models.card import read_card
    from step_ray.pipeline.self_train import self_train

    monkeypatch.setenv("STEP_RAY_CACHE", str(tmp_path / "cache"))
    cfg = load_config("configs/demo.yaml", [*TINY_RUN, "run.rounds=2", "pretrain.enabled=true",
                                            "qra.filter.enabled=true", "qra.filter.asks=2"])
    run = tmp_path / "run"
    summary = self_train(cfg, run_dir=str(run))
    pre = summary["pretrain"]
    assert read_card(pre["model_dir"]).kind == "pretrain" and pre["train_steps"] == 2
    assert set(pre["accuracy"]) == {"held_out", "held_out_blank"}
    r1, r2 = summary["rounds"]
    assert r1["stsg"]["ok"] == 8 and r1["qra"]["samples"] > 0 and r1["train"]["steps"] == 2
    assert r1["init"] == f"base:{pre['model_dir']}"
    # Round 2 mined with model 1 (its filter) and trained from model 1, merged into one folder.
    assert r2["stsg"] == {"reused": str(run / "round_1" / "stsg")}
    assert r2["qra"]["filter"]["model"] == str(run / "round_1" / "train" / "merged")
    assert r2["init"] == str(run / "round_1" / "train" / "merged")
    assert read_card(run / "round_1" / "train" / "merged").kind == "merged"
    assert r2["train"]["base_dir"].endswith("round_2/train/base")
    for rdir in (run / "round_1", run / "round_2"):
        assert (rdir / "train" / "adapter" / "step_ray_model.json").is_file()
        for name in ("trained", "trained_blank"):
            result = json.loads((rdir / "eval" / f"{name}.json").read_text())
            assert result["n"] == r1["eval_base"]["base"]["n"] > 0 and "low" in result["by_steps"]["1"]
    assert json.loads((run / "round_1" / "eval" / "base_blank.json").read_text())["vision"] == "blank"
    report = (run / "report.md").read_text()
    assert "| model 2 |" in report and "3+ steps" in report and "black frames" in report
    page = (run / "report.html").read_text()
    assert page.startswith("<!doctype html>") and "data:image/png;base64," in page and "Examples" in page
    assert (run / "plots" / "accuracy_by_steps.png").stat().st_size > 1000 and (run / "plots" / "loss.png").is_file()
    stored = json.loads((run / "summary.json").read_text())
    assert {"round 1: stsg", "round 1: qra", "round 1: train", "round 2: train"} <= set(stored["seconds"])
    # A re-run finds every stage done (and the base in the cache): nothing is trained again.
    again = self_train(cfg, run_dir=str(run))
    assert again["pretrain"]["reused"] and not [k for k in again["seconds"] if k.endswith(": train")]


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
