"""Evaluate a model on held-out QRA questions: accuracy overall, by number of steps and by family, each with
its 95% Wilson interval, and the vision controls that show whether the model uses its frames.

The model is any reference the model layer resolves (:mod:`step_ray.models.sources`: None for the base, a
training or pretraining output, a checkpoint, an adapter, a merged or hub model), asked the way its card says
it was trained (:mod:`step_ray.models.runtime`). ``vision`` picks the evidence: ``real`` frames, ``blank``
frames, or ``shuffled`` (the same moments of another video).
"""

from __future__ import annotations

import json
import logging
import time
from collections import defaultdict
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

from step_ray.config import StepRayConfig
from step_ray.eval.score import Executor
from step_ray.models.inputs import VisionControl

logger = logging.getLogger(__name__)


def steps_bucket(steps: Any) -> str:
    """'1', '2' or '3+' (the paper reports >= 3 steps together)."""
    try:
        n = int(steps)
    except (TypeError, ValueError):
        return "unknown"
    return "3+" if n >= 3 else str(max(n, 1))


def load_rows(qra_path: str | Path, split: str = "test", max_samples: int = 0) -> list[dict[str, Any]]:
    """The QRA rows of ``split`` (a QRA output folder of parts, or one file), in a stable order (by id)."""
    from step_ray.eval.benchmarks.qra import read_rows

    rows = read_rows(qra_path, split)
    return rows[:max_samples] if max_samples > 0 else rows


def summarise(predictions: list[Mapping[str, Any]]) -> dict[str, Any]:
    """Accuracy overall, by steps bucket and by family, each ``{accuracy, correct, n, low, high}`` (95% Wilson)."""
    from step_ray.eval.stats import accuracy_cell

    def acc(items: list[Mapping[str, Any]]) -> dict[str, Any]:
        return accuracy_cell([bool(p["correct"]) for p in items])

    by_steps: dict[str, list] = defaultdict(list)
    by_family: dict[str, list] = defaultdict(list)
    for p in predictions:
        by_steps[p["steps_bucket"]].append(p)
        by_family[str(p["family"])].append(p)
    overall = acc(list(predictions))
    return {
        **overall,
        "by_steps": {k: acc(by_steps[k]) for k in sorted(by_steps, key=lambda s: (len(s), s))},
        "by_family": {k: acc(by_family[k]) for k in sorted(by_family)},
    }


def evaluate(
    cfg: StepRayConfig,
    model_source: Optional[str | Path],
    qra_path: str | Path,
    split: str = "test",
    out_path: Optional[str | Path] = None,
    vision: VisionControl = "real",
    executor: Optional[Executor] = None,
) -> dict[str, Any]:
    """Multiple-choice accuracy of a model on the ``split`` questions of ``qra_path``, by option likelihood.

    Returns ``{"accuracy", "correct", "n", "low", "high", "by_steps": {"1"|"2"|"3+": {...}}, "by_family",
    "skipped", "skipped_rows", "predictions": [per question: id, steps, family, pred_index, answer_index,
    correct, scores, rationale], "model", "vision", "chance", "seconds"}``; with ``out_path`` also written there
    as JSON. Questions whose video is missing or cannot be decoded are skipped and counted. ``executor`` runs
    the ``eval-score`` stage (the pipeline's actor pool; None: in this process).
    """
    result = evaluate_visions(cfg, model_source, qra_path, [vision], split, executor)[vision]
    if out_path is not None:
        Path(out_path).parent.mkdir(parents=True, exist_ok=True)
        Path(out_path).write_text(json.dumps(result, indent=1))
    return result


def evaluate_visions(cfg: StepRayConfig, model_source: Optional[str | Path], qra_path: str | Path,
                     visions: Sequence[str] = ("real",), split: str = "test",
                     executor: Optional[Executor] = None) -> dict[str, dict[str, Any]]:
    """:func:`evaluate` under each of ``visions`` (real frames and vision controls), all scored in one run of
    the stage (one model load per actor); vision -> result. The shuffled control shows each question the same
    moments of another of the questions' videos (a seeded derangement over the videos that exist)."""
    from step_ray.eval.benchmarks.qra import load as load_qra
    from step_ray.eval.run import score_questions
    from step_ray.models.sources import resolve_model

    started = time.perf_counter()
    source = None if model_source is None else str(model_source)
    resolved = resolve_model(source, cfg.model.name_or_path)  # the reference and its card: no weights here
    card = resolved.card
    answer_format = card.loss_format if card is not None and card.loss_format else "multitask"
    questions = load_qra(str(qra_path), split=split)
    if cfg.eval.max_samples > 0:
        questions = questions[:cfg.eval.max_samples]
    results = score_questions(cfg, source, ("likelihood",), questions, visions, executor)
    seconds = round(time.perf_counter() - started, 2)
    return {v: qra_result(questions, results, v, resolved.description, answer_format, split, seconds)
            for v in visions}


def qra_result(questions: Sequence[Any], results: Mapping[str, Mapping[str, Any]], vision: str, model: str,
               answer_format: str, split: str, seconds: float) -> dict[str, Any]:
    """The result of :func:`evaluate` from the ``eval-score`` rows of ``questions`` under ``vision``."""
    from step_ray.eval.results import likelihood_outcome
    from step_ray.eval.score import row_key

    predictions, skipped = [], []
    placements = set()
    for q in questions:
        res = results.get(row_key(vision, q.id)) if q.askable else None
        if res is not None and res.get("placement"):
            placements.add(res["placement"])
        reason = q.skip_reason if not q.askable else (res or {}).get("error") or (None if res else "no_result")
        outcome = likelihood_outcome(res["scores"] or [], res.get("rationale")) if reason is None else None
        if outcome is not None and outcome.reason:
            reason = outcome.reason
        if reason is not None:
            logger.warning("eval: skipping %s: %s", q.id, reason)
            skipped.append({"id": q.id, "reason": reason})
            continue
        pred = int(outcome.pred_index)
        predictions.append({
            "id": q.id,
            "video_id": q.video_id,
            "steps": q.steps,
            "steps_bucket": steps_bucket(q.steps),
            "family": q.family,
            "question": q.question,
            "options": list(q.options),
            "pred_index": pred,
            "prediction": str(q.options[pred]),
            "answer_index": q.answer_index,
            "answer": q.answer,
            "correct": pred == q.answer_index,
            "scores": list(outcome.scores),
            "rationale": outcome.rationale,
        })
    result = summarise(predictions)
    result.update({
        "chance": chance_of(predictions),
        "skipped": len(skipped),
        "skipped_rows": skipped,
        "predictions": predictions,
        "model": model,
        "answer_format": answer_format,
        "vision": vision,
        "split": split,
        "placement": sorted(placements),
        "seconds": seconds,
    })
    return result


def chance_of(predictions: list[Mapping[str, Any]]) -> Optional[float]:
    """Accuracy of guessing: the mean over questions of one over their number of options."""
    preds = [p for p in predictions if p.get("scores")]
    return sum(1.0 / len(p["scores"]) for p in preds) / len(preds) if preds else None
