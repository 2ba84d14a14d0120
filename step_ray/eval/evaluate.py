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
from typing import Any, Iterable, Mapping, Optional

import numpy as np
import torch

from step_ray.config import StepRayConfig
from step_ray.models.inputs import FrameDecodeError, VisionControl, frames_for_row, shuffled_sources

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


def _batches(items: list, size: int) -> Iterable[list]:
    for i in range(0, len(items), size):
        yield items[i:i + size]


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
    llm: Any = None,
) -> dict[str, Any]:
    """Multiple-choice accuracy of a model on the ``split`` questions of ``qra_path``, by option likelihood.

    Returns ``{"accuracy", "correct", "n", "low", "high", "by_steps": {"1"|"2"|"3+": {...}}, "by_family",
    "skipped", "skipped_rows", "predictions": [per question: id, steps, family, pred_index, answer_index,
    correct, scores, rationale], "model", "vision", "chance", "seconds"}``; with ``out_path`` also written there
    as JSON. Questions whose video cannot be decoded are skipped and counted. ``llm``: an already loaded
    :class:`~step_ray.models.runtime.VideoLLM` (the controls reuse it).
    """
    from step_ray.models.runtime import load_video_llm

    started = time.perf_counter()
    torch.manual_seed(cfg.run.seed)
    if llm is None:
        llm = load_video_llm(cfg, None if model_source is None else str(model_source))
    rows = load_rows(qra_path, split, cfg.eval.max_samples)

    usable, frames, skipped = [], [], []
    for row in rows:
        try:
            frames.append(frames_for_row(row, llm.model_cfg, "blank" if vision == "blank" else "real"))
            usable.append(row)
        except FrameDecodeError as err:
            logger.warning("eval: skipping %s: %s", row.get("id"), err)
            skipped.append({"id": row.get("id"), "reason": str(err)})
    if vision == "shuffled":
        # The same questions as under real frames (those whose own video reads), each shown the same moments
        # of another readable video.
        frames = [frames_for_row(row, llm.model_cfg, uri=other) if other else np.zeros_like(fr)
                  for row, fr, other in zip(usable, frames, shuffled_sources(usable, cfg.run.seed))]

    predictions = []
    for chunk in _batches(list(range(len(usable))), cfg.eval.batch_size):
        batch_rows = [usable[i] for i in chunk]
        batch_frames = [frames[i] for i in chunk]
        rationales = None
        if llm.answer_format == "joint":
            from step_ray.models.prompts import TASK_JOINT
            from step_ray.models.runtime import split_joint

            rationales = [split_joint(t)[0] for t in llm.generate(batch_rows, batch_frames, TASK_JOINT)]
        scores = llm.score_options(batch_rows, batch_frames, rationales)
        for j, (row, sc) in enumerate(zip(batch_rows, scores)):
            pred = int(np.argmax(sc))
            answer_index = int(row["answer_index"])
            predictions.append({
                "id": row["id"],
                "video_id": row.get("video_id"),
                "steps": row.get("steps"),
                "steps_bucket": steps_bucket(row.get("steps")),
                "family": row.get("family"),
                "question": row.get("question"),
                "options": [str(o) for o in row["options"]],
                "pred_index": pred,
                "prediction": str(row["options"][pred]),
                "answer_index": answer_index,
                "answer": row.get("answer"),
                "correct": pred == answer_index,
                "scores": [float(s) for s in sc],
                "rationale": rationales[j] if rationales is not None else None,
            })

    result = summarise(predictions)
    result.update({
        "chance": chance_of(predictions),
        "skipped": len(skipped),
        "skipped_rows": skipped,
        "predictions": predictions,
        "model": llm.description,
        "answer_format": llm.answer_format,
        "vision": vision,
        "split": split,
        "seconds": time.perf_counter() - started,
    })
    if out_path is not None:
        Path(out_path).parent.mkdir(parents=True, exist_ok=True)
        Path(out_path).write_text(json.dumps(result, indent=1))
    return result


def chance_of(predictions: list[Mapping[str, Any]]) -> Optional[float]:
    """Accuracy of guessing: the mean over questions of one over their number of options."""
    preds = [p for p in predictions if p.get("scores")]
    return sum(1.0 / len(p["scores"]) for p in preds) / len(preds) if preds else None
