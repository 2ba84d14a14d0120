"""``step-ray eval --benchmark``: score a benchmark's questions with the ``eval-score`` stage, write the outputs
of :mod:`step_ray.eval.results`, and compare two runs question by question.

The driver reads the questions (:func:`step_ray.eval.benchmarks.load_benchmark`: compact records, never frames)
and writes the outputs; it never loads the model. The questions are scored by :class:`~step_ray.eval.score.
EvalScore` (likelihood and / or generation; the model loaded once per actor of ``eval.pool``, bf16 on a GPU)
through the executor the caller hands in: the pipeline's Ray Data actor pool
(:func:`step_ray.ray_executor.map_tables`; ``step-ray eval``), or this process (tests, ``--no-ray``).
A generated answer is mapped onto an option by :func:`step_ray.eval.answers.parse_answer`, else ``unparsed``.

A question whose video is missing is a row with its reason (the adapters say so); one whose video cannot be
decoded comes back ``unreadable_video``, one whose scoring raises ``scoring_error``, one that keeps killing its
actor ``actor_died`` (:mod:`step_ray.eval.score`). Each is a row of the predictions, counted by kind in the
summary.

Comparisons (:func:`compare_rows`, ``--compare``) pair two runs on the questions both scored and give the
paired difference with its 95% interval and McNemar's exact p (:func:`step_ray.eval.stats.paired_difference`),
"within noise" when the interval holds 0.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any, Mapping, Optional, Sequence

from step_ray.config import StepRayConfig
from step_ray.eval.benchmarks import BenchmarkQuestion, load_benchmark
from step_ray.eval.results import (
    MODES,
    PREDICTIONS_FILE,
    Outcome,
    generation_outcome,
    likelihood_outcome,
    outcomes_by_id,
    prediction_rows,
    read_predictions,
    skipped,
    write_outputs,
)
from step_ray.eval.score import EvalScore, Executor, Row, row_key, score_rows, scoring_row
from step_ray.eval.stats import pair_outcomes, paired_difference
from step_ray.utils import storage
from step_ray.utils.inputs import InputError

logger = logging.getLogger(__name__)

MODE_CHOICES = ("likelihood", "generation", "both")
COMPARISON_FILE = "comparison.json"


def modes_of(mode: str) -> tuple[str, ...]:
    """``both`` -> both modes, in :data:`~step_ray.eval.results.MODES` order."""
    if mode == "both":
        return MODES
    if mode not in MODES:
        raise InputError(f"--mode {mode}: not one of {', '.join(MODE_CHOICES)}")
    return (mode,)


def scoring_record(q: BenchmarkQuestion) -> dict[str, Any]:
    """A question in the QRA row layout the scorer reads (with ``open_answer``)."""
    return {**q.as_row(), "open_answer": q.open_answer}


def scoring_rows(questions: Sequence[BenchmarkQuestion], visions: Sequence[str], seed: int) -> list[Row]:
    """The ``eval-score`` input rows of the askable ``questions`` under each of ``visions`` (``shuffled``: each
    question shown the same moments of another of their videos, a seeded derangement)."""
    from step_ray.models.inputs import shuffled_sources

    asked = [q for q in questions if q.askable]
    rows: list[Row] = []
    for vision in visions:
        others = (shuffled_sources([{"video_uri": q.video_uri} for q in asked], seed) if vision == "shuffled"
                  else [None] * len(asked))
        rows += [scoring_row(scoring_record(q), vision, other) for q, other in zip(asked, others)]
    return rows


def score_questions(cfg: StepRayConfig, model: Optional[str], modes: Sequence[str],
                    questions: Sequence[BenchmarkQuestion], visions: Sequence[str] = ("real",),
                    executor: Optional[Executor] = None) -> dict[str, Row]:
    """``eval-score`` output rows (by :func:`~step_ray.eval.score.row_key`) of every askable question under
    every vision, run by ``executor`` (None: in this process)."""
    stage = EvalScore.from_config(cfg, source=model, modes=tuple(modes))
    return score_rows(stage, scoring_rows(questions, visions, cfg.run.seed), executor)


def outcomes_of(questions: Sequence[BenchmarkQuestion], results: Mapping[str, Mapping[str, Any]],
                modes: Sequence[str], vision: str = "real") -> dict[str, dict[str, Outcome]]:
    """The scored rows (:func:`score_questions`) under ``vision`` as :class:`~step_ray.eval.results.Outcome`
    per mode and asked question."""
    outcomes: dict[str, dict[str, Outcome]] = {m: {} for m in modes}
    for q in questions:
        if not q.askable:
            continue
        res = results.get(row_key(vision, q.id)) or {"error": "no_result: not scored"}
        for mode in modes:
            if res.get("error"):
                outcomes[mode][q.id] = skipped(res["error"])
            elif mode == "likelihood":
                outcomes[mode][q.id] = likelihood_outcome(res["scores"] or [], res.get("rationale"))
            else:
                letters = None if res.get("letters") is False else "ABCDEFGH"
                outcomes[mode][q.id] = generation_outcome(res.get("generated") or "", q, letters,
                                                          rationale=res.get("rationale"))
    return outcomes


# --------------------------------------------------------------------------------------------- comparisons

def predictions_path(path: str) -> str:
    """``predictions.parquet`` itself, or the one in the evaluation folder ``path``."""
    if path.endswith(".parquet"):
        return path
    return storage.join(path, PREDICTIONS_FILE)


def read_baseline(path: str) -> list[dict[str, Any]]:
    """The rows of another run's predictions (``--compare``), or a one-line input error."""
    target = predictions_path(path)
    try:
        if not storage.exists(target):
            raise InputError(f"--compare {path}: no {PREDICTIONS_FILE} there")
        rows = read_predictions(target)
    except InputError:
        raise
    except Exception as err:  # noqa: BLE001 - any unreadable file is the same one-line error
        raise InputError(f"--compare {path}: not a predictions file ({type(err).__name__}: {err})") from None
    if not rows or "id" not in rows[0]:
        raise InputError(f"--compare {path}: no predictions in it")
    return rows


def comparison_statement(r: Mapping[str, Any]) -> str:
    """One line: ``+3.0 points [-1.2, +7.1] on 200 paired questions (McNemar p = 0.16): within noise``."""
    verdict = {"B better": "better than the baseline", "A better": "worse than the baseline"}.get(
        r["verdict"], r["verdict"])
    return (f"{100 * r['difference']:+.1f} points [{100 * r['low']:+.1f}, {100 * r['high']:+.1f}] on {r['n']} "
            f"paired questions (McNemar p = {r['mcnemar_p']:.3g}): {verdict}")


def compare_rows(baseline: Sequence[Mapping[str, Any]], rows: Sequence[Mapping[str, Any]],
                 modes: Optional[Sequence[str]] = None, confidence: float = 0.95) -> dict[str, Any]:
    """This run (``rows``) against ``baseline``, per mode both have: the paired difference (this − baseline)
    with its interval, McNemar's p, the questions only one of them scored, and a one-line ``statement``."""
    out: dict[str, Any] = {}
    for mode in modes or MODES:
        if not rows or f"{mode}_correct" not in rows[0]:
            continue
        if not baseline or f"{mode}_correct" not in baseline[0]:
            out[mode] = {"n": 0, "statement": f"the baseline has no {mode} results"}
            continue
        ids, a, b, only = pair_outcomes(outcomes_by_id(baseline, mode), outcomes_by_id(rows, mode))
        if not ids:
            out[mode] = {"n": 0, **only, "statement": "no question was scored by both runs"}
            continue
        r = paired_difference(a, b, confidence)
        out[mode] = {**r, **only, "statement": comparison_statement(r)}
    return out


def compare_predictions(baseline: str, other: str, modes: Optional[Sequence[str]] = None) -> dict[str, Any]:
    """:func:`compare_rows` of two prediction files (or evaluation folders): ``other`` − ``baseline``."""
    return compare_rows(read_baseline(baseline), read_baseline(other), modes)


# --------------------------------------------------------------------------------------------- the command

def load_questions(benchmark: str, input_uri: str, videos: Optional[str], **options: Any) -> list[BenchmarkQuestion]:
    """The benchmark's questions, or a one-line input error (``--videos`` is needed but for ``qra``)."""
    if benchmark != "qra" and not videos:
        raise InputError(f"--benchmark {benchmark} needs --videos ROOT (the folder or prefix of its videos)")
    return load_benchmark(benchmark, input_uri, videos, **options)


def evaluate_benchmark(cfg: StepRayConfig, benchmark: str, input_uri: str, videos: Optional[str], out: str,
                       model: Optional[str] = None, mode: str = "both", compare: Optional[str] = None,
                       vision: str = "real", executor: Optional[Executor] = None, **options: Any) -> dict[str, Any]:
    """Score ``benchmark``'s questions of ``input_uri`` with ``model`` and write the outputs under ``out``;
    return the summary (``comparison`` included with ``compare``). ``executor`` runs the scoring stage (the
    pipeline's actor pool; None: in this process)."""
    from step_ray.models.inputs import VISION_CONTROLS
    from step_ray.models.sources import ModelSourceError, resolve_model

    started = time.perf_counter()
    modes = modes_of(mode)
    if vision not in VISION_CONTROLS:
        raise InputError(f"--vision {vision}: not one of {', '.join(VISION_CONTROLS)}")
    try:  # the reference and its card only: the weights are loaded by the actors
        resolved = resolve_model(model, cfg.model.name_or_path)
    except ModelSourceError as err:
        raise InputError(f"--model {model}: {err}") from None
    questions = load_questions(benchmark, input_uri, videos, **options)
    if cfg.eval.max_samples:
        questions = questions[:cfg.eval.max_samples]
    baseline = read_baseline(compare) if compare else None  # a bad --compare fails now, not after the run
    if baseline is not None and str(baseline[0].get("benchmark")) != benchmark:
        raise InputError(f"--compare {compare}: predictions of {baseline[0].get('benchmark')}, not {benchmark}")
    scoring_started = time.perf_counter()
    results = score_questions(cfg, model, modes, questions, [vision], executor)
    scoring_seconds = time.perf_counter() - scoring_started
    outcomes = outcomes_of(questions, results, modes, vision)
    card = resolved.card
    extra: dict[str, Any] = {
        "input": input_uri,
        "videos": videos,
        "model": resolved.description,
        "answer_format": (card.loss_format if card is not None and card.loss_format else "multitask"),
        "vision": vision,
        "pool": {"min_size": cfg.eval.pool.min_size, "max_size": cfg.eval.pool.max_size,
                 "num_cpus": cfg.eval.pool.num_cpus, "num_gpus": cfg.eval.pool.num_gpus,
                 "batch_size": cfg.eval.pool.batch_size},
        "placement": sorted({r["placement"] for r in results.values() if r.get("placement")}),
        "seconds": {"scoring": round(scoring_seconds, 2), "total": None},
    }
    if baseline is not None:
        extra["comparison"] = {"baseline": compare,
                               **compare_rows(baseline, prediction_rows(questions, outcomes), modes)}
    extra["seconds"]["total"] = round(time.perf_counter() - started, 2)
    summary = write_outputs(out, questions, outcomes, extra=extra)
    if baseline is not None:
        storage.write_text(storage.join(out, COMPARISON_FILE), json.dumps(extra["comparison"], indent=1) + "\n")
    return summary


def _cell(c: Mapping[str, Any]) -> str:
    if not c.get("n"):
        return "  n/a (0 questions)"
    return f"{c['accuracy']:6.3f} [{c['low']:.3f}, {c['high']:.3f}]  ({c['correct']}/{c['n']})"


def format_summary(summary: Mapping[str, Any]) -> str:
    """The end-of-job lines a user reads: per mode, accuracy overall / by steps / by group with 95% intervals,
    skipped questions by reason, and the comparison when there is one."""
    lines = [f"== eval {summary['benchmark']}: {summary['questions']} questions, model {summary.get('model')} =="]
    for mode, s in summary["modes"].items():
        lines.append(f"-- {mode} (95% {s['interval']['method']} intervals)")
        lines.append(f"  {'overall':<24}{_cell(s['overall'])}")
        for bucket, c in s["by_steps"].items():
            lines.append(f"  {'steps ' + bucket:<24}{_cell(c)}")
        for dim, groups in s["by_group"].items():
            for label, c in groups.items():
                lines.append(f"  {dim + ' ' + label:<24}{_cell(c)}")
        if s["skipped"]:
            kinds = ", ".join(f"{k} {v}" for k, v in s["skipped_by_reason"].items())
            lines.append(f"  skipped {s['skipped']} ({kinds})")
        if s.get("unlabelled"):
            lines.append(f"  unlabelled {s['unlabelled']} (predicted, not scored)")
        if mode == "generation":
            lines.append(f"  unparsed {s['unparsed']} (matched by: {json.dumps(s['matched_by'])})")
    comparison = summary.get("comparison")
    if comparison:
        lines.append(f"-- against {comparison['baseline']} (this run − baseline, paired)")
        for mode in MODES:
            if mode in comparison:
                lines.append(f"  {mode:<12}{comparison[mode]['statement']}")
    return "\n".join(lines)
