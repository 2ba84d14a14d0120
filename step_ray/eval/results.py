"""What an evaluation of a benchmark writes: ``predictions.parquet``, ``summary.json`` and, for NExT-QA, the
results file its own ``eval_mc.py`` reads.

A scorer gives, per mode (``likelihood``, ``generation``) and question id, an :class:`Outcome`: the option
scores or the generated text, the option predicted, or why the question could not be scored (an unreadable
video). :func:`prediction_rows` joins them with the questions, one row per question of the input, answered or
not; :func:`summarise` turns the rows into accuracies overall, by steps and by each grouping of the benchmark,
each with its interval; :func:`write_outputs` writes the files (atomically, under ``out`` only).

``docs/benchmarks.md`` documents the columns and files.
"""

from __future__ import annotations

import csv
import io
import json
from collections import Counter, defaultdict
from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Optional, Sequence

import numpy as np

from step_ray.eval.answers import DEFAULT_LETTERS, parse_answer
from step_ray.eval.benchmarks import nextqa
from step_ray.eval.benchmarks.common import RECORD_VERSION, BenchmarkQuestion
from step_ray.eval.stats import DEFAULT_BOOTSTRAP, INTERVAL_METHODS, accuracy_cell
from step_ray.utils import storage

MODES = ("likelihood", "generation")
STEP_BUCKETS = ("1", "2", "3+")
PREDICTIONS_FILE = "predictions.parquet"
SUMMARY_FILE = "summary.json"
NEXTQA_RESULTS_FILE = "nextqa_results.json"
NEXTQA_ANSWERED_FILE = "nextqa_answered.csv"
#: What nextqa_results.json records as the prediction of an unparsed generated answer: answered, but no option
#: (eval_mc.py counts it wrong, as the summary does).
NO_OPTION = -1


@dataclass(frozen=True)
class Outcome:
    """One question scored in one mode."""

    pred_index: Optional[int] = None
    """The option predicted; None when unparsed (generation) or not scored."""
    scores: Optional[tuple[float, ...]] = None
    """Likelihood mode: one score per option (higher is better)."""
    generated: Optional[str] = None
    """Generation mode: the text the model wrote."""
    match: Optional[str] = None
    """Generation mode: how the text was mapped to an option (:mod:`step_ray.eval.answers`)."""
    reason: Optional[str] = None
    """Why the question was not scored in this mode (``unreadable_video: ...``); None when it was."""
    rationale: Optional[str] = None
    """A joint model's rationale, written before its answer (options are scored / parsed after it)."""

    @property
    def scored(self) -> bool:
        return self.reason is None


def likelihood_outcome(scores: Sequence[float], rationale: Optional[str] = None) -> Outcome:
    """The best-scoring option (the first of equal best scores)."""
    values = tuple(float(s) for s in scores)
    if not values or not all(np.isfinite(values)):
        return Outcome(scores=values or None, reason=f"bad_scores: {list(values)}", rationale=rationale)
    return Outcome(pred_index=int(np.argmax(values)), scores=values, rationale=rationale)


def generation_outcome(text: str, question: BenchmarkQuestion, letters: Optional[str] = DEFAULT_LETTERS,
                       rationale: Optional[str] = None) -> Outcome:
    """A generated answer mapped onto the question's options (no letters for open-answer vocabularies)."""
    parsed = parse_answer(text, question.options, None if question.open_answer else letters)
    return Outcome(pred_index=parsed.index, generated=text, match=parsed.match, rationale=rationale)


def skipped(reason: str) -> Outcome:
    return Outcome(reason=reason)


def steps_bucket(steps: Optional[int]) -> Optional[str]:
    """``"1"``, ``"2"`` or ``"3+"`` (the paper reports three or more steps together); None without steps."""
    if steps is None:
        return None
    return "3+" if int(steps) >= 3 else str(max(int(steps), 1))


def reason_kind(reason: str) -> str:
    """The part of a skip reason before its colon: what the summary counts by."""
    return reason.split(":", 1)[0].strip()


def prediction_rows(questions: Sequence[BenchmarkQuestion],
                    outcomes: Mapping[str, Mapping[str, Outcome]]) -> list[dict[str, Any]]:
    """One row per question (in input order) with every mode's result; see docs/benchmarks.md for columns.

    A question that could not be asked has its ``skip_reason`` and no mode result. A question a mode has no
    outcome for is a programming error (every asked question must come back), and is refused.
    """
    unknown = sorted(set(outcomes) - set(MODES))
    if unknown:
        raise ValueError(f"unknown evaluation mode(s) {unknown}; modes are {MODES}")
    modes = [m for m in MODES if m in outcomes]
    rows = []
    for q in questions:
        row: dict[str, Any] = {
            "id": q.id, "benchmark": q.benchmark, "split": q.split, "video_id": q.video_id,
            "video_uri": q.video_uri, "start": q.start, "end": q.end, "question": q.question,
            "options": list(q.options), "answer": q.answer, "answer_index": q.answer_index, "steps": q.steps,
            "steps_bucket": steps_bucket(q.steps), "open_answer": q.open_answer,
        }
        for dim, labels in q.groups.items():
            row[f"group_{dim}"] = list(labels)
        for key, value in q.fields.items():
            if key in row:
                raise ValueError(f"benchmark field {key!r} of {q.id} clashes with a predictions column")
            row[key] = value
        reasons = [q.skip_reason] if q.skip_reason else []
        rationale = None
        for mode in modes:
            outcome = outcomes[mode].get(q.id) if q.askable else None
            if q.askable and outcome is None:
                raise ValueError(f"{mode}: no outcome for question {q.id}")
            reason = q.skip_reason if outcome is None else outcome.reason
            if outcome is not None and outcome.reason:
                reasons.append(outcome.reason)
            if outcome is not None and outcome.rationale and rationale is None:
                rationale = outcome.rationale
            answered = outcome is not None and outcome.scored
            index = outcome.pred_index if answered else None
            row[f"{mode}_index"] = index
            row[f"{mode}_prediction"] = q.options[index] if index is not None else None
            # labelled but unanswerable by index (an open answer outside the vocabulary) counts as wrong
            row[f"{mode}_correct"] = (index is not None and index == q.answer_index) if answered and q.labelled \
                else None
            row[f"{mode}_reason"] = reason
            if mode == "likelihood":
                row["scores"] = list(outcome.scores) if outcome is not None and outcome.scores else None
            else:
                row["generated"] = outcome.generated if outcome is not None else None
                row["generation_match"] = outcome.match if answered else None
        row["rationale"] = rationale
        row["skip_reason"] = "; ".join(dict.fromkeys(reasons)) or None
        rows.append(row)
    return rows


def modes_of(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    return [m for m in MODES if rows and f"{m}_correct" in rows[0]]


def summarise(rows: Sequence[Mapping[str, Any]], mode: str, method: str = "wilson", confidence: float = 0.95,
              n_boot: int = DEFAULT_BOOTSTRAP, seed: int = 0) -> dict[str, Any]:
    """Accuracy of ``mode`` overall, by steps bucket and by every ``group_*`` dimension, each cell
    ``{"accuracy", "correct", "n", "low", "high"}``; with the counts of questions skipped (by reason kind),
    unlabelled and (generation) unparsed. Only scored, labelled questions enter accuracies."""
    if method not in INTERVAL_METHODS:
        raise ValueError(f"interval method {method!r} is not one of {', '.join(INTERVAL_METHODS)}")

    def cell(flags: list[bool]) -> dict[str, Any]:
        return accuracy_cell(flags, method, confidence, n_boot, seed)

    scored = [r for r in rows if r.get(f"{mode}_reason") is None]
    labelled = [r for r in scored if r.get(f"{mode}_correct") is not None]
    skipped_kinds = Counter(reason_kind(r[f"{mode}_reason"]) for r in rows if r.get(f"{mode}_reason") is not None)
    by_steps: dict[str, list[bool]] = defaultdict(list)
    by_group: dict[str, dict[str, list[bool]]] = defaultdict(lambda: defaultdict(list))
    for r in labelled:
        flag = bool(r[f"{mode}_correct"])
        if r.get("steps_bucket"):
            by_steps[r["steps_bucket"]].append(flag)
        for key, labels in r.items():
            if key.startswith("group_") and labels:
                for label in labels:
                    by_group[key[len("group_"):]][label].append(flag)
    summary: dict[str, Any] = {
        "mode": mode,
        "questions": len(rows),
        "scored": len(scored),
        "skipped": len(rows) - len(scored),
        "skipped_by_reason": dict(sorted(skipped_kinds.items())),
        "unlabelled": len(scored) - len(labelled),
        "overall": cell([bool(r[f"{mode}_correct"]) for r in labelled]),
        "by_steps": {k: cell(by_steps[k]) for k in STEP_BUCKETS if k in by_steps},
        "by_group": {dim: {label: cell(v) for label, v in sorted(groups.items())}
                     for dim, groups in by_group.items()},
        "interval": {"method": method, "confidence": confidence,
                     **({"n_boot": n_boot, "seed": seed} if method == "bootstrap" else {})},
    }
    if mode == "generation":
        summary["unparsed"] = sum(1 for r in scored if r.get("generation_match") == "unparsed")
        summary["matched_by"] = dict(sorted(Counter(r.get("generation_match") for r in scored).items()))
    return summary


def nextqa_results(rows: Sequence[Mapping[str, Any]], mode: str) -> dict[str, dict[str, int]]:
    """``{"<video>_<qid>": {"prediction": i, "answer": j}}`` for the NExT-QA questions ``mode`` answered, the
    layout NExT-QA's ``eval_mc.py`` reads (an unparsed generated answer has prediction :data:`NO_OPTION`)."""
    out = {}
    for r in rows:
        if r.get("benchmark") != nextqa.NAME:
            raise ValueError(f"{r.get('id')}: not a NExT-QA question")
        if r.get(f"{mode}_reason") is None and r.get("answer_index") is not None:
            index = r[f"{mode}_index"]
            out[r["id"]] = {"prediction": NO_OPTION if index is None else int(index),
                            "answer": int(r["answer_index"])}
    return out


def nextqa_answered_csv(rows: Sequence[Mapping[str, Any]], mode: str) -> str:
    """The input CSV's rows (its columns, in its order) of the questions in :func:`nextqa_results`: the sample
    list to run ``eval_mc.py`` on when some questions were skipped (it looks up every row of its CSV)."""
    answered = nextqa_results(rows, mode)
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(nextqa.COLUMNS)
    for r in rows:
        if r["id"] in answered:
            values = {"video": r["video"], "frame_count": r["frame_count"], "width": r["width"],
                      "height": r["height"], "question": r["question"], "answer": r["answer_index"],
                      "qid": r["qid"], "type": r["type"], **dict(zip(nextqa.OPTION_COLUMNS, r["options"]))}
            writer.writerow([values[c] for c in nextqa.COLUMNS])
    return buf.getvalue()


def _column(values: list[Any]):
    """An Arrow array of ``values``; a benchmark field whose values mix types (a number here, a string there)
    is stored as JSON text rather than failing the write at the end of a long evaluation."""
    import pyarrow as pa

    try:
        return pa.array(values)
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        return pa.array([None if v is None else json.dumps(v) for v in values], type=pa.string())


def _parquet_bytes(rows: Sequence[Mapping[str, Any]], meta: Mapping[str, str]) -> bytes:
    import pyarrow as pa
    import pyarrow.parquet as pq

    names = list(dict.fromkeys(k for r in rows for k in r))  # every column any row has, in first-seen order
    table = pa.table({k: _column([r.get(k) for r in rows]) for k in names})
    table = table.replace_schema_metadata(dict(meta))
    sink = io.BytesIO()
    pq.write_table(table, sink)
    return sink.getvalue()


def write_outputs(out: str, questions: Sequence[BenchmarkQuestion], outcomes: Mapping[str, Mapping[str, Outcome]],
                  method: str = "wilson", confidence: float = 0.95, n_boot: int = DEFAULT_BOOTSTRAP, seed: int = 0,
                  extra: Optional[Mapping[str, Any]] = None) -> dict[str, Any]:
    """Write ``predictions.parquet``, ``summary.json`` and (NExT-QA) ``nextqa_results.json`` with
    ``nextqa_answered.csv`` (the first mode of :data:`MODES` run; ``nextqa_results.<mode>.json`` for each)
    under ``out`` (a folder or an object-store prefix); return the summary. ``extra`` is merged into the
    summary (model, timings)."""
    rows = prediction_rows(questions, outcomes)
    modes = modes_of(rows)
    benchmarks = sorted({q.benchmark for q in questions})
    summary: dict[str, Any] = {
        "record_version": RECORD_VERSION,
        "benchmark": benchmarks[0] if len(benchmarks) == 1 else benchmarks,
        "questions": len(rows),
        "modes": {m: summarise(rows, m, method, confidence, n_boot, seed) for m in modes},
        "files": {"predictions": PREDICTIONS_FILE},
        **dict(extra or {}),
    }
    files: dict[str, bytes] = {}
    if benchmarks == [nextqa.NAME] and modes:
        for mode in modes:
            files[f"nextqa_results.{mode}.json"] = _json_bytes(nextqa_results(rows, mode))
        files[NEXTQA_RESULTS_FILE] = files[f"nextqa_results.{modes[0]}.json"]
        files[NEXTQA_ANSWERED_FILE] = nextqa_answered_csv(rows, modes[0]).encode()
        summary["files"].update({"nextqa_results": NEXTQA_RESULTS_FILE, "nextqa_results_mode": modes[0],
                                 "nextqa_answered": NEXTQA_ANSWERED_FILE})
    files[PREDICTIONS_FILE] = _parquet_bytes(rows, {"record_version": RECORD_VERSION})
    for name, data in files.items():
        with storage.open_write(storage.join(out, name)) as f:
            f.write(data)
    storage.write_text(storage.join(out, SUMMARY_FILE), json.dumps(summary, indent=1, sort_keys=False) + "\n")
    return summary


def _json_bytes(obj: Any) -> bytes:
    return (json.dumps(obj, indent=1) + "\n").encode()


def read_predictions(path: str) -> list[dict[str, Any]]:
    """The rows of a ``predictions.parquet`` (local or object store), for summaries and comparisons."""
    import pyarrow.parquet as pq

    fs, inner = storage.filesystem(path)
    return pq.read_table(inner, filesystem=fs).to_pylist()


def outcomes_by_id(rows: Iterable[Mapping[str, Any]], mode: str) -> dict[str, Optional[bool]]:
    """question id -> right / wrong in ``mode`` (None: not scored or unlabelled), for :func:`stats.pair_outcomes`."""
    return {r["id"]: r.get(f"{mode}_correct") for r in rows}
