"""`step-ray eval --benchmark`: every adapter through the Ray Data actor pool with a tiny random-weight model and
small generated videos; both modes; missing and unreadable videos as rows; NExT-QA's results file as eval_mc.py
reads it; scores equal to the model layer's; joint models scored after their rationale; paired comparisons."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from benchmark_fixtures import INPUTS, VIDEOS, write_videos
from step_ray.cli import main
from step_ray.config import ModelConfig, load_config
from step_ray.eval.benchmarks import load_benchmark
from step_ray.eval.run import compare_rows, scoring_record
from step_ray.eval.score import EvalScore, scoring_row
from step_ray.pipeline.steps import eval_benchmark_step as evaluate_benchmark
from test_eval_outputs import eval_mc_numbers


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    root = tmp_path_factory.mktemp("pool_videos")
    return {name: write_videos(name, root / name) for name in VIDEOS}


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    from step_ray.models.tiny import save_tiny

    return save_tiny(ModelConfig(), tmp_path_factory.mktemp("pool_model") / "base", seed=0)


@pytest.fixture(scope="module")
def joint_dir(tiny_dir, tmp_path_factory):
    """The same weights with the card of a model trained in the joint format (rationale, then answer)."""
    from step_ray.models.card import ModelCard, write_card
    from step_ray.models.prompts import PromptFormat

    target = tmp_path_factory.mktemp("pool_joint") / "model"
    shutil.copytree(tiny_dir, target)
    write_card(target, ModelCard(prompt=PromptFormat(), loss_format="joint", kind="train"))
    return target


def cfg_of(tiny_dir, *overrides):
    return load_config(None, [f"model.name_or_path={tiny_dir}", "eval.max_new_tokens=8", *overrides])


def rows_of(out: Path) -> dict:
    return {r["id"]: r for r in pq.read_table(out / "predictions.parquet").to_pylist()}


def test_nextqa_through_the_cli_both_modes(ray_session, videos, tiny_dir, tmp_path):
    """The command on the NExT-QA fixture: a row per question, skipped ones with their reason, both modes, and a
    nextqa_results.json that eval_mc.py's scoring reads to the summary's numbers."""
    out = tmp_path / "out"
    code = main(["eval", "--benchmark", "nextqa", "--input", str(INPUTS["nextqa"]), "--videos",
                 str(videos["nextqa"]), "--output", str(out), f"model.name_or_path={tiny_dir}",
                 "eval.max_new_tokens=8", "eval.pool.batch_size=4"])
    assert code == 0
    rows = rows_of(out)
    summary = json.loads((out / "summary.json").read_text())
    assert len(rows) == 12 and summary["questions"] == 12
    assert rows["1000000004_0"]["skip_reason"].startswith("video_missing: ")
    assert rows["1000000005_0"]["skip_reason"].startswith("video_not_in_map: ")
    for mode in ("likelihood", "generation"):
        s = summary["modes"][mode]
        assert (s["scored"], s["skipped"]) == (10, 2)
        assert s["skipped_by_reason"] == {"video_missing": 1, "video_not_in_map": 1}
        assert s["overall"]["n"] == 10 and 0 <= s["overall"]["low"] <= s["overall"]["high"] <= 1
        assert set(s["by_group"]) == {"type", "family"}
    scored = [r for r in rows.values() if r["skip_reason"] is None]
    for r in scored:
        assert len(r["scores"]) == 5 and r["likelihood_index"] == int(np.argmax(r["scores"]))
        assert r["likelihood_correct"] == (r["likelihood_index"] == r["answer_index"])
        assert isinstance(r["generated"], str) and r["generation_match"] in ("exact", "normalised", "letter",
                                                                             "unparsed")
        assert r["generation_correct"] == (r["generation_index"] is not None
                                           and r["generation_index"] == r["answer_index"])
    assert summary["placement"] == ["cpu/float32"]  # no CUDA here: fp32 on the CPU; bf16 is for GPUs
    # eval_mc.py, on the answered questions' CSV and the results file, gives the summary's numbers
    numbers = eval_mc_numbers(out / "nextqa_answered.csv", out / "nextqa_results.json")
    like = summary["modes"]["likelihood"]
    assert numbers["all"] == "{:.2f}".format(100 * like["overall"]["accuracy"])
    for code_, cell in like["by_group"]["type"].items():
        assert numbers[code_] == "{:.2f}".format(100 * cell["accuracy"])
    results = json.loads((out / "nextqa_results.json").read_text())
    assert set(results) == {r["id"] for r in scored}
    assert all(results[r["id"]]["prediction"] == r["likelihood_index"] for r in scored)


def test_pool_scores_are_the_model_layers(ray_session, videos, tiny_dir, tmp_path):
    """STAR clips on two fractional-GPU actors (logical GPUs here): the scores the pool writes are those the
    model layer gives in this process for the same question and frames; an unreadable video is a row."""
    from step_ray.models.inputs import frames_for_row
    from step_ray.models.runtime import load_video_llm

    root = tmp_path / "star_videos"
    shutil.copytree(videos["star"], root)
    (root / "9QZ3M.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42 not really a video")
    cfg = cfg_of(tiny_dir, "eval.pool.num_gpus=0.5", "eval.pool.max_size=2", "eval.pool.batch_size=2")
    out = tmp_path / "out"
    summary = evaluate_benchmark(cfg, "star", str(INPUTS["star"]), str(root), str(out), mode="likelihood")
    rows = rows_of(out)
    assert len(rows) == 7 and set(summary["modes"]) == {"likelihood"}
    assert "generated" not in next(iter(rows.values()))
    unreadable = [r for r in rows.values() if (r["skip_reason"] or "").startswith("unreadable_video")]
    assert unreadable and all(r["video_id"] == "9QZ3M" for r in unreadable)
    assert summary["modes"]["likelihood"]["skipped_by_reason"]["unreadable_video"] == len(unreadable)

    llm = load_video_llm(cfg)
    q = next(q for q in load_benchmark("star", str(INPUTS["star"]), str(root)) if q.video_id == "4HKT2")
    row = scoring_record(q)
    expected = llm.score_options([row], [frames_for_row(row, llm.model_cfg)])[0]
    assert summary["placement"] == ["cpu/float32"]
    assert np.allclose(rows[q.id]["scores"], expected, atol=1e-4)


def test_agqa_vocabulary_scoring_and_generation(ray_session, videos, tiny_dir, tmp_path):
    """AGQA open answers: likelihood over the question type's vocabulary (scores per vocabulary entry), generation
    mapped onto it, accuracy by steps 1 / 2 / 3+."""
    cfg = cfg_of(tiny_dir, "eval.max_sequences=3")
    out = tmp_path / "out"
    summary = evaluate_benchmark(cfg, "agqa", str(INPUTS["agqa"]), str(videos["agqa"]), str(out))
    rows = rows_of(out)
    questions = {q.id: q for q in load_benchmark("agqa", str(INPUTS["agqa"]), str(videos["agqa"]))}
    assert set(rows) == set(questions)
    for qid, r in rows.items():
        if r["skip_reason"] is None:
            assert len(r["scores"]) == len(questions[qid].options) and r["open_answer"]
            assert r["generation_match"] in ("exact", "normalised", "unparsed")  # no letters for a vocabulary
    like = summary["modes"]["likelihood"]
    assert set(like["by_steps"]) <= {"1", "2", "3+"} and like["by_steps"]
    assert sum(c["n"] for c in like["by_steps"].values()) == like["overall"]["n"]
    assert {"reasoning", "semantic", "structural", "answer_type"} <= set(like["by_group"])


def test_chunked_option_scoring_and_open_answer_prompt(videos, tiny_dir):
    """The scorer as plain Python: bounding the sequences per forward pass leaves the scores as they are; an
    open-answer question is asked without its vocabulary as an options line."""
    qs = [q for q in load_benchmark("agqa", str(INPUTS["agqa"]), str(videos["agqa"])) if q.askable][:2]
    rows = [scoring_row(scoring_record(q)) for q in qs]
    scores = {}
    for n in (2, 1000):
        scorer = EvalScore.from_config(cfg_of(tiny_dir, f"eval.max_sequences={n}"))
        scorer.setup()
        out = scorer.score(rows)
        scores[n] = [out[r["key"]]["scores"] for r in rows]
        assert all(out[r["key"]]["letters"] is False for r in rows)
    for a, b in zip(scores[2], scores[1000]):
        assert np.allclose(a, b, atol=1e-4)


def test_joint_model_scored_after_its_rationale(ray_session, videos, joint_dir, tmp_path):
    """A model whose card says 'joint' writes its rationale; with both modes the one rationale serves both, and
    the likelihood scores are those of the options after it."""
    from step_ray.models.inputs import frames_for_row
    from step_ray.models.runtime import load_video_llm

    cfg = cfg_of(joint_dir, "eval.max_samples=3")
    out = tmp_path / "out"
    summary = evaluate_benchmark(cfg, "star", str(INPUTS["star"]), str(videos["star"]), str(out),
                                 model=str(joint_dir))
    assert summary["answer_format"] == "joint"
    rows = [r for r in rows_of(out).values() if r["skip_reason"] is None]
    assert rows and all(isinstance(r["rationale"], str) for r in rows)
    llm = load_video_llm(cfg, str(joint_dir), max_new_tokens=8)
    r = rows[0]
    record = {k: r[k] for k in ("id", "question", "options", "video_uri", "start", "end")}
    expected = llm.score_options([record], [frames_for_row(record, llm.model_cfg)], [r["rationale"]])[0]
    assert np.allclose(r["scores"], expected, atol=1e-4)


def test_qra_as_a_benchmark_and_compare(ray_session, tiny_dir, tmp_path):
    """step-ray's own QRA through the same pool; --compare with the same model is a zero difference, within
    noise; a bad --compare fails before any scoring."""
    from step_ray.train.toy import make_toy_qra

    qra = make_toy_qra(tmp_path / "toy", videos=4, seed=1)
    base = tmp_path / "base"
    assert main(["eval", "--benchmark", "qra", "--input", str(qra), "--output", str(base), "--mode", "likelihood",
                 f"model.name_or_path={tiny_dir}"]) == 0
    first = json.loads((base / "summary.json").read_text())
    assert first["questions"] == 3 and set(first["modes"]["likelihood"]["by_group"]) == {"family"}
    again = tmp_path / "again"
    assert main(["eval", "--benchmark", "qra", "--input", str(qra), "--output", str(again), "--mode", "likelihood",
                 "--compare", str(base), f"model.name_or_path={tiny_dir}"]) == 0
    comparison = json.loads((again / "comparison.json").read_text())
    assert comparison["likelihood"]["difference"] == 0 and comparison["likelihood"]["n"] == 3
    assert comparison["likelihood"]["statement"].endswith("within noise")
    assert json.loads((again / "summary.json").read_text())["comparison"] == comparison
    assert main(["eval", "--benchmark", "qra", "--input", str(qra), "--output", str(tmp_path / "x"),
                 "--compare", str(tmp_path / "nowhere"), f"model.name_or_path={tiny_dir}"]) == 2
    assert not (tmp_path / "x" / "summary.json").exists()


def test_compare_rows_verdicts():
    """Hand-made runs: 30 of 40 questions turned right is outside noise; 3 of 10 is not."""
    def rows(flags):
        return [{"id": f"q{i}", "likelihood_correct": f} for i, f in enumerate(flags)]

    better = compare_rows(rows([False] * 40), rows([True] * 30 + [False] * 10))["likelihood"]
    assert better["difference"] == 0.75 and better["low"] > 0 and better["mcnemar_p"] < 1e-6
    assert better["statement"].endswith("better than the baseline")
    noise = compare_rows(rows([False] * 10), rows([True] * 3 + [False] * 7))["likelihood"]
    assert noise["low"] < 0 < noise["high"] and noise["statement"].endswith("within noise")
    partial = compare_rows(rows([True, None, False]), rows([True, True, None]))["likelihood"]
    assert (partial["n"], partial["only_a"], partial["only_b"]) == (1, 1, 1)


def test_eval_refusals(videos, tiny_dir, tmp_path, capsys):
    out = str(tmp_path / "o")
    assert main(["eval", "--benchmark", "star", "--input", str(INPUTS["star"]), "--output", out]) == 2
    assert "needs --videos" in capsys.readouterr().err
    assert main(["eval", "--input", str(INPUTS["star"]), "--videos", str(videos["star"]), "--output", out]) == 2
    assert "--videos needs --benchmark" in capsys.readouterr().err
    assert main(["eval", "--benchmark", "star", "--input", str(INPUTS["star"]), "--videos", str(videos["star"]),
                 "--output", out, "--model", str(tmp_path / "no-model")]) == 2
    assert "--model" in capsys.readouterr().err
    assert main(["eval", "--benchmark", "star", "--input", str(INPUTS["star"]), "--videos", str(videos["star"]),
                 "--output", out, "--map", "x.json"]) == 2
    assert "takes no option map_uri" in capsys.readouterr().err
    assert main(["eval", "--benchmark", "star", "--input", str(INPUTS["star"]), "--videos", str(videos["star"]),
                 "--output", out, "eval.pool.num_gpus=1.5"]) == 2


def test_qra_eval_on_the_pool_equals_in_process(ray_session, tiny_dir, tmp_path, monkeypatch):
    """The eval step (what self-train, ablate and pretrain run) with its vision controls: on the actor pool
    (two actors, batches of two) it gives the numbers the in-process run gives, file for file, and the driver
    never loads the model (loading one here fails)."""
    import step_ray.models.loading as loading
    from step_ray.pipeline import steps
    from step_ray.train.toy import make_toy_qra

    qra = make_toy_qra(tmp_path / "toy", videos=6, seed=1)
    cfg = cfg_of(tiny_dir, "eval.batch_size=2", "eval.pool.batch_size=2", "eval.pool.max_size=2")
    names = {"base": "real", "base_blank": "blank", "base_shuffled": "shuffled"}
    local = steps.eval_files(cfg, qra, None, tmp_path / "local", names, use_ray=False)

    def no_model_here(*args, **kwargs):
        raise AssertionError("the driver loaded a model")

    monkeypatch.setattr(loading, "load_model_and_processor", no_model_here)
    pooled = steps.eval_files(cfg, qra, None, tmp_path / "pool", names)
    for name in names:
        a, b = local[name], pooled[name]
        assert a["n"] > 0 and a["vision"] == b["vision"] == names[name]
        for key in ("n", "correct", "accuracy", "low", "high", "by_steps", "by_family", "skipped", "chance", "model"):
            assert a[key] == b[key], (name, key)
        assert [p["id"] for p in a["predictions"]] == [p["id"] for p in b["predictions"]]
        for p, q in zip(a["predictions"], b["predictions"]):
            assert p["pred_index"] == q["pred_index"] and np.allclose(p["scores"], q["scores"], atol=1e-5)
        assert json.loads((tmp_path / "pool" / f"{name}.json").read_text())["n"] == b["n"]
    assert pooled["base"]["placement"] == ["cpu/float32"]
    real, blank = pooled["base"]["predictions"], pooled["base_blank"]["predictions"]
    assert not np.allclose(real[0]["scores"], blank[0]["scores"], atol=1e-4)  # the control changes the evidence


def test_a_row_that_killed_its_actor_is_scored_alone_then_given_up(videos, tiny_dir):
    """Under the crash ledger: a row that already killed more processes than eval.pool.max_retries is an
    actor_died row; a row of a batch that died once is scored alone (its scores are those of an unguarded run);
    a fresh row is scored as usual; every attempt that finished is ended in the ledger."""
    import pyarrow as pa

    from step_ray.stage import CrashLedger, RowGuard, run_batch

    ledger = CrashLedger()

    class Guard(RowGuard):
        max_retries = 1

        def begin(self, key):
            return ledger.begin(key)

        def end(self, key):
            ledger.end(key)

    qs = [q for q in load_benchmark("star", str(INPUTS["star"]), str(videos["star"])) if q.askable][:3]
    rows = [scoring_row(scoring_record(q)) for q in qs]
    killer, bystander, fresh = (r["key"] for r in rows)
    ledger.open.update({killer: 2, bystander: 1})
    stage = EvalScore.from_config(cfg_of(tiny_dir))
    stage.setup()
    plain = stage.score(rows)
    stage.row_guard = Guard()
    out = {r["key"]: r for r in run_batch(stage, pa.Table.from_pylist(rows)).to_pylist()}
    assert out[killer]["status"] == "error" and out[killer]["error"].startswith("actor_died: ")
    for key in (bystander, fresh):
        assert out[key]["status"] == "ok" and np.allclose(out[key]["scores"], plain[key]["scores"], atol=1e-5)
    assert ledger.open == {killer: 2, bystander: 1}  # deaths stay counted; the finished attempts are gone
