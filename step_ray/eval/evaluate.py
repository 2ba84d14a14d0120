"""Evaluate a model on the held-out QRA questions: accuracy overall, by number of steps and by family.

``evaluate`` runs on the driver in one process (CPU is enough for the tiny and demo models). It accepts

* ``None``                   - the base model of ``cfg.model`` (for 'tiny': the build of ``cfg.run.seed``);
* an output dir of ``run_training`` (``adapter/`` + ``base/``, or ``model/``) or a Ray Train checkpoint
  directory of the run (``adapter/`` + ``state.json``; the base is ``cfg.model``);
* a peft adapter directory (``adapter_config.json``; the base is a sibling ``base/``, else the adapter's
  ``base_model_name_or_path`` when that directory exists, else ``cfg.model``);
* a Hugging Face model directory (``config.json``), e.g. a merged export.
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
from step_ray.eval.scoring import score_questions
from step_ray.train.frames import FrameDecodeError, read_frames

logger = logging.getLogger(__name__)


def steps_bucket(steps: Any) -> str:
    """'1', '2' or '3+' (the paper reports >= 3 steps together)."""
    try:
        n = int(steps)
    except (TypeError, ValueError):
        return "unknown"
    return "3+" if n >= 3 else str(max(n, 1))


def load_rows(qra_path: str | Path, split: str = "test", max_samples: int = 0) -> list[dict[str, Any]]:
    """The QRA rows of ``split`` (file or directory of Parquet), in a stable order (by id)."""
    import pyarrow.compute as pc

    from step_ray.qra.records import qra_dataset

    table = qra_dataset(qra_path).to_table(filter=pc.field("split") == split)
    rows = sorted(table.to_pylist(), key=lambda r: str(r["id"]))
    return rows[:max_samples] if max_samples > 0 else rows


def _resolve(cfg: StepRayConfig, source: Optional[str | Path]) -> tuple[Optional[str], Optional[str], str]:
    """(base path or None for cfg.model, adapter path or None, description)."""
    if source is None:
        return None, None, f"base:{cfg.model.name_or_path}"
    path = Path(source)
    if not path.is_dir():
        raise FileNotFoundError(f"no model directory at {source}")
    if (path / "adapter" / "adapter_config.json").is_file():
        base = path / "base"
        return (str(base) if (base / "config.json").is_file() else None), str(path / "adapter"), f"adapter:{path}"
    if (path / "model" / "config.json").is_file():
        return str(path / "model"), None, f"model:{path / 'model'}"
    if (path / "adapter_config.json").is_file():
        sibling = path.parent / "base"
        if (sibling / "config.json").is_file():
            return str(sibling), str(path), f"adapter:{path}"
        named = json.loads((path / "adapter_config.json").read_text()).get("base_model_name_or_path")
        if named and (Path(named) / "config.json").is_file():
            return named, str(path), f"adapter:{path}"
        return None, str(path), f"adapter:{path}"
    if (path / "config.json").is_file():
        return str(path), None, f"model:{path}"
    raise FileNotFoundError(f"{source}: neither a run output, a checkpoint, an adapter nor a model directory")


def load_for_eval(cfg: StepRayConfig, source: Optional[str | Path], device: str = "cpu") -> tuple[Any, Any, str]:
    """(model, processor, description) ready for scoring: base, base + adapter, or a full model."""
    from step_ray.models.loading import load_model_and_processor

    base_path, adapter, what = _resolve(cfg, source)
    model, processor = load_model_and_processor(cfg.model, device=device, dtype=torch.float32,
                                                seed=cfg.run.seed, path=base_path)
    if adapter is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, adapter)
        model.to(device)
    model.eval()
    return model, processor, what


def _batches(items: list, size: int) -> Iterable[list]:
    for i in range(0, len(items), size):
        yield items[i:i + size]


def summarise(predictions: list[Mapping[str, Any]]) -> dict[str, Any]:
    """Accuracy overall, by steps bucket and by family, from per-sample predictions."""
    def acc(items: list[Mapping[str, Any]]) -> dict[str, Any]:
        n = len(items)
        correct = sum(1 for p in items if p["correct"])
        return {"accuracy": correct / n if n else None, "correct": correct, "n": n}

    by_steps: dict[str, list] = defaultdict(list)
    by_family: dict[str, list] = defaultdict(list)
    for p in predictions:
        by_steps[p["steps_bucket"]].append(p)
        by_family[str(p["family"])].append(p)
    overall = acc(list(predictions))
    return {
        "accuracy": overall["accuracy"],
        "correct": overall["correct"],
        "n": overall["n"],
        "by_steps": {k: acc(by_steps[k]) for k in sorted(by_steps, key=lambda s: (len(s), s))},
        "by_family": {k: acc(by_family[k]) for k in sorted(by_family)},
    }


def evaluate(
    cfg: StepRayConfig,
    model_dir_or_checkpoint: Optional[str | Path],
    qra_path: str | Path,
    split: str = "test",
    out_path: Optional[str | Path] = None,
) -> dict[str, Any]:
    """Multiple-choice accuracy of a model on the ``split`` questions of ``qra_path``.

    Returns ``{"accuracy", "correct", "n", "by_steps": {"1"|"2"|"3+": {"accuracy", "correct", "n"}},
    "by_family": {...}, "skipped", "predictions": [per question: id, steps, family, pred_index, answer_index,
    correct, scores], "model", "seconds"}``; with ``out_path`` also written there as JSON. Questions whose
    video cannot be decoded are skipped and counted.
    """
    started = time.perf_counter()
    torch.manual_seed(cfg.run.seed)
    model, processor, what = load_for_eval(cfg, model_dir_or_checkpoint)
    rows = load_rows(qra_path, split, cfg.eval.max_samples)

    usable, frames, skipped = [], [], []
    for row in rows:
        try:
            frames.append(read_frames(str(row["video_uri"]), row.get("start"), row.get("end"),
                                      cfg.model.frames, cfg.model.frame_size))
            usable.append(row)
        except FrameDecodeError as err:
            logger.warning("eval: skipping %s: %s", row.get("id"), err)
            skipped.append({"id": row.get("id"), "reason": str(err)})

    predictions = []
    indices = list(range(len(usable)))
    for chunk in _batches(indices, cfg.eval.batch_size):
        scores = score_questions(model, processor, cfg.model, [usable[i] for i in chunk], [frames[i] for i in chunk])
        for i, sc in zip(chunk, scores):
            row = usable[i]
            pred = int(np.argmax(sc))
            answer_index = int(row["answer_index"])
            predictions.append({
                "id": row["id"],
                "video_id": row.get("video_id"),
                "steps": row.get("steps"),
                "steps_bucket": steps_bucket(row.get("steps")),
                "family": row.get("family"),
                "pred_index": pred,
                "prediction": str(row["options"][pred]),
                "answer_index": answer_index,
                "answer": row.get("answer"),
                "correct": pred == answer_index,
                "scores": [float(s) for s in sc],
            })

    result = summarise(predictions)
    result.update({
        "skipped": len(skipped),
        "skipped_rows": skipped,
        "predictions": predictions,
        "model": what,
        "split": split,
        "seconds": time.perf_counter() - started,
    })
    if out_path is not None:
        Path(out_path).parent.mkdir(parents=True, exist_ok=True)
        Path(out_path).write_text(json.dumps(result, indent=1))
    return result
