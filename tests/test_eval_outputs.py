"""What an evaluation writes: predictions.parquet (a row per question), summary.json with intervals, and the NExT-QA
results file scored the way NExT-QA's own eval_mc.py scores it."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest

from benchmark_fixtures import DATA, INPUTS, VIDEOS, write_videos
from step_ray.eval.benchmarks import load_benchmark
from step_ray.eval.results import (
    NO_OPTION,
    Outcome,
    generation_outcome,
    likelihood_outcome,
    outcomes_by_id,
    prediction_rows,
    read_predictions,
    skipped,
    summarise,
    write_outputs,
)
from step_ray.eval.stats import pair_outcomes, paired_difference, wilson_interval


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    root = tmp_path_factory.mktemp("benchmark_videos")
    return {name: write_videos(name, root / name) for name in VIDEOS}


def scores_for(q, right: bool) -> list[float]:
    """Option scores whose best option is the answer (``right``) or the option after it."""
    best = q.answer_index if right else (q.answer_index + 1) % len(q.options)
    return [1.0 if i == best else -float(i + 1) for i in range(len(q.options))]


def nextqa_outcomes(qs):
    """Likelihood right on every other askable question; generation in the forms models write."""
    asked = [q for q in qs if q.askable]
    likelihood = {q.id: likelihood_outcome(scores_for(q, i % 2 == 0)) for i, q in enumerate(asked)}
    texts = []
    for i, q in enumerate(asked):
        answer = q.options[q.answer_index]
        texts.append([f"So the answer is {answer}.", f"({'ABCDE'[q.answer_index]})", q.options[q.answer_index - 1],
                      "I cannot tell from the video."][i % 4])
    generation = {q.id: generation_outcome(t, q) for q, t in zip(asked, texts)}
    return {"likelihood": likelihood, "generation": generation}


def eval_mc_numbers(sample_list_file: Path, result_file: Path) -> dict[str, str]:
    """NExT-QA's eval_mc.py ``accuracy_metric``, re-implemented here from a reading of it (its code is not in this
    project): it reads the sample CSV with pandas, keys each row ``str(video) + '_' + str(qid)``, counts TP in TN,
    looks every key up in the results JSON, counts ``answer == prediction`` per type, sums types by their first
    letter into C / T / D, and prints each as ``'{:.2f}'`` of a percentage, then ``Acc`` over all rows."""
    samples = pd.read_csv(sample_list_file, delimiter=",")
    preds = json.loads(result_file.read_text())
    right, count = Counter(), Counter()
    for _, row in samples.iterrows():
        key = str(row["video"]) + "_" + str(row["qid"])
        qtype = "TN" if str(row["type"]) == "TP" else str(row["type"])
        hit = preds[key]["answer"] == preds[key]["prediction"]
        for label in (qtype, qtype[0], "all"):
            right[label] += int(hit)
            count[label] += 1
    return {label: "{:.2f}".format(right[label] * 100.0 / count[label]) for label in count}


def test_nextqa_outputs_and_eval_mc_agree(videos, tmp_path):
    qs = load_benchmark("nextqa", str(INPUTS["nextqa"]), str(videos["nextqa"]))
    out = tmp_path / "eval"
    summary = write_outputs(str(out), qs, nextqa_outcomes(qs), extra={"model": "fixture-scores"})
    assert json.loads((out / "summary.json").read_text()) == summary and summary["model"] == "fixture-scores"

    table = pq.read_table(out / "predictions.parquet")
    assert table.schema.metadata[b"record_version"] == b"bench/1"
    rows = table.to_pylist()
    assert [r["id"] for r in rows] == [q.id for q in qs]  # one row per question of the input, in its order
    by = {r["id"]: r for r in rows}
    first = by["1000000001_0"]
    assert first["likelihood_index"] == 2 and first["likelihood_correct"] is True
    assert first["likelihood_prediction"] == "to reach the edge" and first["scores"][2] == 1.0
    assert first["generated"] == "So the answer is to reach the edge." and first["generation_match"] == "normalised"
    assert (first["type"], first["qid"], first["group_type"], first["group_family"]) == ("CW", 0, ["CW"], ["C"])
    missing = by["1000000004_0"]
    assert missing["skip_reason"].startswith("video_missing: ") and missing["likelihood_correct"] is None
    assert missing["likelihood_index"] is None and missing["scores"] is None and missing["generated"] is None
    unparsed = by["1000000001_3"]  # the 4th asked question: "I cannot tell from the video."
    assert unparsed["generation_match"] == "unparsed" and unparsed["generation_correct"] is False

    lik = summary["modes"]["likelihood"]
    assert (lik["questions"], lik["scored"], lik["skipped"]) == (12, 10, 2)
    assert lik["skipped_by_reason"] == {"video_missing": 1, "video_not_in_map": 1}
    assert (lik["overall"]["correct"], lik["overall"]["n"]) == (5, 10)
    assert (lik["overall"]["low"], lik["overall"]["high"]) == pytest.approx(wilson_interval(5, 10))
    assert set(lik["by_group"]) == {"type", "family"} and lik["by_steps"] == {}
    assert lik["by_group"]["type"]["TN"]["n"] == 3  # TN + TP, as NExT-QA scores them
    gen = summary["modes"]["generation"]
    assert gen["unparsed"] == 2 and gen["matched_by"] == {"letter": 3, "normalised": 3, "unparsed": 2,
                                                          "exact": 2}

    results = json.loads((out / "nextqa_results.json").read_text())
    assert summary["files"]["nextqa_results_mode"] == "likelihood"
    assert set(results) == {q.id for q in qs if q.askable}  # the answered questions; skipped ones in the summary
    assert results["1000000001_0"] == {"prediction": 2, "answer": 2}
    gen_results = json.loads((out / "nextqa_results.generation.json").read_text())
    assert gen_results["1000000001_3"] == {"prediction": NO_OPTION, "answer": 1}

    # scored the way eval_mc.py scores, on the answered rows: the same numbers as step-ray's summary
    numbers = eval_mc_numbers(out / "nextqa_answered.csv", out / "nextqa_results.json")
    ours = {k: v for k, v in lik["by_group"]["type"].items()} | lik["by_group"]["family"] | {"all": lik["overall"]}
    assert numbers == {k: "{:.2f}".format(100.0 * v["accuracy"]) for k, v in ours.items()}
    assert set(numbers) == {"CW", "CH", "TN", "TC", "DC", "DL", "DO", "C", "T", "D", "all"}
    # the answered CSV is the input's rows, as they were
    answered = (out / "nextqa_answered.csv").read_text().splitlines()
    source = INPUTS["nextqa"].read_text().splitlines()
    assert answered[0] == source[0] and len(answered) == 11
    assert all(line in source for line in answered)
    assert answered[9] == '1000000003,100,64,48,"why is the background dark, not bright",3,1,CW,it is night,' \
                          'the lights failed,to save power,to show the shapes,it is raining'


def test_unreadable_video_and_unlabelled_questions(videos, tmp_path):
    """STAR: a video that cannot be decoded is a row with the decoder's reason; test-split questions are predicted
    but not scored."""
    from step_ray.video.frames import FrameDecodeError, read_frames

    root = tmp_path / "videos"
    root.mkdir()
    (root / "4HKT2.mp4").write_bytes((videos["star"] / "4HKT2.mp4").read_bytes())
    (root / "9QZ3M.mp4").write_bytes(b"not an mp4 at all")
    qs = load_benchmark("star", str(INPUTS["star"]), str(root))
    outcomes = {}
    for q in qs:
        if q.askable:
            try:
                read_frames(q.video_uri, q.start, q.end, 2, 16)
                outcomes[q.id] = likelihood_outcome(scores_for(q, True))
            except FrameDecodeError as err:
                outcomes[q.id] = skipped(f"unreadable_video: {err}")
    rows = prediction_rows(qs, {"likelihood": outcomes})
    by = {r["id"]: r for r in rows}
    assert by["Sequence_T1_7"]["skip_reason"].startswith("unreadable_video: ")
    s = summarise(rows, "likelihood")
    assert s["skipped_by_reason"] == {"bad_span": 1, "unreadable_video": 2, "video_missing": 1}
    assert s["overall"]["n"] == 3 and s["overall"]["accuracy"] == 1.0
    assert set(s["by_group"]["type"]) == {"Interaction", "Feasibility"}

    test = load_benchmark("star", str(DATA / "star" / "STAR_test.json"), str(videos["star"]))
    rows = prediction_rows(test, {"likelihood": {q.id: likelihood_outcome([0.1, 0.9, 0.3, 0.2]) for q in test}})
    assert all(r["likelihood_index"] == 1 and r["likelihood_correct"] is None for r in rows)
    s = summarise(rows, "likelihood")
    assert (s["scored"], s["unlabelled"], s["overall"]["n"], s["overall"]["accuracy"]) == (2, 2, 0, None)


def test_agqa_summary_by_steps_and_reasoning(videos, tmp_path):
    qs = load_benchmark("agqa", str(INPUTS["agqa"]), str(videos["agqa"]))
    asked = [q for q in qs if q.askable]
    right = {q.id: q.steps < 3 for q in asked}  # a model that fails every question of three or more steps
    outcomes = {"likelihood": {q.id: likelihood_outcome(scores_for(q, right[q.id])) for q in asked},
                "generation": {q.id: generation_outcome(q.answer.upper(), q) for q in asked}}
    summary = write_outputs(str(tmp_path / "agqa"), qs, outcomes, method="bootstrap", n_boot=2000, seed=1)
    lik = summary["modes"]["likelihood"]
    assert {k: (v["correct"], v["n"]) for k, v in lik["by_steps"].items()} == {"1": (1, 1), "2": (2, 2),
                                                                               "3+": (0, 9)}
    assert lik["interval"] == {"method": "bootstrap", "confidence": 0.95, "n_boot": 2000, "seed": 1}
    reasoning = lik["by_group"]["reasoning"]  # multi-label: a question counts in each of its categories
    assert sum(v["n"] for v in reasoning.values()) == sum(len(q.groups["reasoning"]) for q in asked)
    assert lik["by_group"]["answer_type"]["open"]["n"] == 4
    assert "nextqa_results" not in summary["files"] and not (tmp_path / "agqa" / "nextqa_results.json").exists()
    gen = summary["modes"]["generation"]
    assert gen["overall"]["accuracy"] == 1.0 and gen["matched_by"] == {"normalised": 12}  # no letters on vocabularies
    assert not any(p.name.startswith(".") or p.suffix == ".tmp" for p in (tmp_path / "agqa").iterdir())
    assert sorted(p.name for p in (tmp_path / "agqa").iterdir()) == ["predictions.parquet", "summary.json"]


def test_paired_comparison_from_two_prediction_files(videos, tmp_path):
    """Base vs trained on the same questions: paired on ids, the difference with its interval."""
    qs = load_benchmark("nextqa", str(INPUTS["nextqa"]), str(videos["nextqa"]))
    asked = [q for q in qs if q.askable]
    base = {q.id: likelihood_outcome(scores_for(q, i < 4)) for i, q in enumerate(asked)}
    trained = {q.id: likelihood_outcome(scores_for(q, i < 7)) for i, q in enumerate(asked)}
    write_outputs(str(tmp_path / "base"), qs, {"likelihood": base})
    write_outputs(str(tmp_path / "trained"), qs, {"likelihood": trained})
    a = outcomes_by_id(read_predictions(str(tmp_path / "base" / "predictions.parquet")), "likelihood")
    b = outcomes_by_id(read_predictions(str(tmp_path / "trained" / "predictions.parquet")), "likelihood")
    ids, fa, fb, dropped = pair_outcomes(a, b)
    assert len(ids) == 10 and dropped == {"only_a": 0, "only_b": 0}
    r = paired_difference(fa, fb)
    assert (r["accuracy_a"], r["accuracy_b"], r["b_only"], r["a_only"]) == (0.4, 0.7, 3, 0)
    assert r["verdict"] == "within noise" and r["low"] < 0 < r["high"]  # +30 points on 10 questions is noise


def test_outputs_on_an_object_store(s3_server, videos):
    import pyarrow.fs as pafs

    fs = pafs.S3FileSystem(endpoint_override=f"http://127.0.0.1:{s3_server}", allow_bucket_creation=True)
    fs.create_dir("runs")
    qs = load_benchmark("nextqa", str(INPUTS["nextqa"]), str(videos["nextqa"]))
    summary = write_outputs("s3://runs/eval1", qs, nextqa_outcomes(qs))
    names = sorted(i.base_name for i in fs.get_file_info(pafs.FileSelector("runs/eval1")))
    assert names == ["nextqa_answered.csv", "nextqa_results.generation.json", "nextqa_results.json",
                     "nextqa_results.likelihood.json", "predictions.parquet", "summary.json"]
    rows = read_predictions("s3://runs/eval1/predictions.parquet")
    assert len(rows) == 12 and summarise(rows, "likelihood") == summary["modes"]["likelihood"]


def test_mixed_type_fields_are_kept_as_json(videos, tmp_path):
    """A benchmark field with a number in one file row and a string in another still writes (as JSON text)."""
    import dataclasses

    qs = load_benchmark("agqa", str(INPUTS["agqa"]), str(videos["agqa"]))
    qs = [dataclasses.replace(q, fields={**q.fields, "direct_equiv": 7 if i == 0 else q.fields["direct_equiv"]})
          for i, q in enumerate(qs)]
    outcomes = {q.id: likelihood_outcome([0.0] * len(q.options)) for q in qs if q.askable}
    write_outputs(str(tmp_path), qs, {"likelihood": outcomes})
    rows = read_predictions(str(tmp_path / "predictions.parquet"))
    assert rows[0]["direct_equiv"] == "7" and rows[1]["direct_equiv"] == '"K1P3D-8"'


def test_refusals(videos):
    qs = load_benchmark("star", str(INPUTS["star"]), str(videos["star"]))
    with pytest.raises(ValueError, match="unknown evaluation mode"):
        prediction_rows(qs, {"beam": {}})
    with pytest.raises(ValueError, match="likelihood: no outcome for question Interaction_T1_13"):
        prediction_rows(qs, {"likelihood": {}})
    with pytest.raises(ValueError, match="interval method"):
        summarise([], "likelihood", method="wald")
    assert likelihood_outcome([0.1, float("nan")]).reason.startswith("bad_scores")
    assert Outcome(pred_index=1).scored and not skipped("x: y").scored
