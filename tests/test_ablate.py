"""STEP's own experiment: pretraining a base, the ablation over lambda / format / seed, its statistics."""

from __future__ import annotations

import json

import pytest

from step_ray.config import load_config
from step_ray.pipeline.ablate import grid, run_name, seed_mean, seed_mean_difference


def _result(flags: dict[str, bool], steps: int = 3) -> dict:
    return {"predictions": [{"id": q, "steps": steps, "correct": ok} for q, ok in flags.items()]}


def test_grid_trains_lambda_zero_once_per_seed():
    cfg = load_config(None, ["ablation.rationale_weights=[0, 1]", "ablation.loss_formats=[multitask, joint]",
                             "ablation.seeds=[0, 1]"])
    assert grid(cfg) == [(0.0, "multitask", 0), (0.0, "multitask", 1), (1.0, "multitask", 0), (1.0, "multitask", 1),
                         (1.0, "joint", 0), (1.0, "joint", 1)]
    assert run_name(0.5, "joint", 2) == "lam0.5_joint_seed2"


def test_seed_mean_and_paired_difference_over_common_questions():
    a = [_result({"q1": True, "q2": False, "q3": False, "q4": False}),
         _result({"q1": True, "q2": True, "q3": False, "q4": False})]
    b = [_result({"q1": True, "q2": True, "q3": True, "q4": False, "extra": True}),
         _result({"q1": True, "q2": True, "q3": True, "q4": True})]
    m = seed_mean(a, "3+")
    assert m["accuracy"] == pytest.approx(3 / 8) and m["per_run"] == [0.25, 0.5] and m["n"] == 4
    assert m["low"] <= m["accuracy"] <= m["high"]
    assert seed_mean(a, "1") is None  # no question of that bucket
    d = seed_mean_difference(a, b, "all")
    # per question, mean over seeds: a = (1, .5, 0, 0), b = (1, 1, 1, .5) -> difference (0, .5, 1, .5) -> .5
    assert d["difference"] == pytest.approx(0.5) and d["n"] == 4
    assert 0 < d["low"] <= 0.5 <= d["high"] <= 1 and d["verdict"] == "B better"
    same = seed_mean_difference(a, a, "all")
    assert same["difference"] == 0 and same["verdict"] == "within noise"


@pytest.mark.ray
def test_ablate_from_a_pretrained_base(ray_session, tmp_path, monkeypatch):
    """pretrain (tiny) -> mine once -> lambda 0 and lambda 1 (joint: answers after its generated rationale) ->
    ablation.json in the documented shape, with the vision control and the base beside every run."""
    from step_ray.models.card import read_card
    from step_ray.pipeline.ablate import ablate

    monkeypatch.setenv("STEP_RAY_CACHE", str(tmp_path / "cache"))
    cfg = load_config("configs/step_miniature.yaml", [
        "synth.videos=8", "qra.samples_per_video=6", "train.steps=2", "train.batch_size=2", "train.log_every=1",
        "train.checkpoint_every=2", "pretrain.videos=6", "pretrain.steps=2", "pretrain.batch_size=2",
        "pretrain.samples_per_video=2", "pretrain.test_fraction=0.5", "ablation.rationale_weights=[0, 1]", "ablation.loss_formats=[joint]",
        "ablation.seeds=[0]", "eval.batch_size=4"])
    out = tmp_path / "ablation"
    result = ablate(cfg, out)
    stored = json.loads((out / "ablation.json").read_text())
    assert [(e["rationale_weight"], e["loss_format"], e["seed"]) for e in stored["entries"]] == [
        (0.0, "multitask", 0), (1.0, "joint", 0)]
    for e in stored["entries"]:
        assert set(e["eval"]["by_steps"]) <= {"1", "2", "3+"} and e["eval"]["n"] == stored["base"]["n"] > 0
        for cell in e["eval"]["by_steps"].values():
            assert {"accuracy", "correct", "n", "low", "high"} <= set(cell)
        assert e["eval_blank"]["vision"] == "blank" and e["eval_blank"]["n"] == e["eval"]["n"]
    assert stored["base_blank"]["vision"] == "blank"
    joint = json.loads((out / "runs" / "lam1_joint_seed0" / "eval" / "trained.json").read_text())
    assert joint["answer_format"] == "joint" and all(p["rationale"] is not None for p in joint["predictions"])
    assert read_card(out / "runs" / "lam1_joint_seed0" / "train" / "model").loss_format == "joint"  # full fine-tuning
    rows = {r["loss_format"]: r for r in result["aggregate"]}
    assert "vs_lambda0" in rows["joint"] and "vs_blank" in rows["joint"] and rows["base"]["accuracy"]["all"]
    assert (out / "ablation.md").read_text().count("λ = 0") >= 2 and (out / "plots" / "ablation.png").is_file()
    assert (out / "ablation.html").read_text().startswith("<!doctype html>")
