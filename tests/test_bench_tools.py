"""The benchmarks' fairness machinery (benchmarks/common.py), and the GPU benchmark run end to end on the CPU at
toy sizes through its real code path (Ray Data, Ray Train + DeepSpeed, evaluation, the plain baselines)."""

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "benchmarks"), str(ROOT / "benchmarks" / "gpu")]

import common  # noqa: E402
from common import Case, headline, measure, rate_run, steady_window, value_run  # noqa: E402


def test_the_window_excludes_the_warm_up_share_on_any_run():
    events = [(10.0, 1), (11.0, 1), (12.0, 1), (13.0, 1)]  # four items, one per second, after a 10 s start-up
    w = steady_window(events, 0.25, start=0.0)
    assert (w.items, w.seconds, w.value) == (3, 3.0, 1.0) and w.info["run_seconds"] == 13.0
    whole = steady_window(events, 0.0, start=0.0)
    assert whole.value == pytest.approx(4 / 13)  # start-up included: what the window is there to avoid
    with pytest.raises(ValueError):
        steady_window(events[:1], 0.5, start=0.0)  # no completion after the warm-up: no window
    with pytest.raises(ValueError):
        rate_run(1, 0.0)


def test_rounds_alternate_and_the_headline_is_a_ratio_of_medians():
    order = []

    def case(name, values):
        it = iter(values)
        return Case(name, lambda: (order.append(name), rate_run(next(it), 1.0))[1])

    cases = [case("a", [1, 10, 2, 3, 4]), case("b", [2, 2, 2, 2, 2])]
    runs = measure(cases, repeats=2, warmup_runs=1, progress=lambda s: None)
    assert order == ["a", "b", "a", "b", "b", "a"]  # warm-up, round 1 (a b), round 2 (b a)
    assert [r.value for r in runs["a"]] == [10, 2]
    head = headline(runs, "a", "b")
    assert head["ratio"] == pytest.approx(6 / 2) and head["per_round"] == [5.0, 1.0]
    low = headline({"c": [value_run(100)], "d": [value_run(400)]}, "c", "d", higher_is_better=False)
    assert low["ratio"] == 4.0  # memory: baseline / candidate


def test_finish_prints_the_ratio_last(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(common, "RESULTS", tmp_path)
    runs = {"new": [rate_run(3, 1)], "old": [rate_run(2, 1)]}
    cases = [Case("new", lambda: None, "candidate"), Case("old", lambda: None, "baseline")]
    common.finish("unit", common.case_rows(cases, runs, "old"), {"note": 1}, headline(runs, "new", "old"), runs)
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[-1] == "ratio=1.500"
    saved = json.loads((tmp_path / "unit.json").read_text())
    assert saved["headline"]["ratio"] == 1.5 and saved["runs"]["new"][0]["value"] == 3


def test_gpu_benchmark_runs_on_cpu_at_toy_sizes(ray_session, tmp_path, capsys):
    import run as gpu_bench

    out = tmp_path / "gpu.json"
    code = gpu_bench.main(["--device", "cpu", "--size", "tiny", "--train-configs", "lora-zero2", "--steps", "2",
                           "--warmup-steps", "1", "--batch", "1", "--frames", "2", "--frame-size", "56",
                           "--videos", "2", "--video-seconds", "4", "--keyframes", "1", "--parse-tokens", "8",
                           "--eval-questions", "4", "--work", str(tmp_path / "work"), "--out", str(out)])
    assert code == 0
    assert capsys.readouterr().out.strip().splitlines()[-1].startswith("ratio=")
    result = json.loads(out.read_text())
    cases = {(r["part"], r["case"]): r for r in result["rows"]}
    assert set(cases) == {("perception", "YOLO + tracker"), ("perception", "+ Video-LLM parser"),
                          ("train", "lora-zero2"), ("eval", "multiple choice")}
    for row in cases.values():
        assert not any(k.endswith("_error") for k in row), row
        assert row["stack"] > 0 and row["baseline"] > 0 and row["ratio"] > 0
    train = cases[("train", "lora-zero2")]
    assert train["stack_detail"]["windows"] >= 1 and train["stack_detail"]["tokens_per_sample"] > 10
    assert result["model"]["size"] == "tiny" and result["peak_tflops"] is None  # no MFU without a known peak
