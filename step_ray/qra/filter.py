"""STEP's model-side filter: keep the QRA samples the Video-LLM answers consistently.

Each sample is put to the model ``qra.filter.asks`` times, each time with its options in another order (a
permutation seeded by the sample id and ``run.seed``), and scored the way the evaluation scores questions
(option likelihood, asked the way the model was trained: :meth:`step_ray.models.runtime.VideoLLM.score_options`,
frames at the moments the question names: :func:`step_ray.models.inputs.frames_for_row`). The
option picked most often is the model's answer; ``consistency`` is the share of asks that picked it. A
sample below ``qra.filter.min_agreement`` is flagged ``inconsistent``; with ``require_correct`` also
``model_disagrees`` when the consistent pick is not the graph's answer; ``action: drop`` removes flagged
samples. A sample whose video cannot be decoded is flagged ``unreadable_video`` (never dropped for that).

The filter is its own stage with its own actor pool (``qra.filter.pool``: give it ``num_gpus`` on a GPU
cluster), run by ``step-ray qra-filter`` or at the end of ``step-ray qra`` when ``qra.filter.enabled``.
"""

from __future__ import annotations

import json
import random
from collections import Counter
from pathlib import Path
from typing import Any, ClassVar, Optional

from step_ray.config import PoolConfig, StepRayConfig
from step_ray.stage import Row

#: Record fields the filter needs (the row it ships to the actor).
_FIELDS = ("id", "video_uri", "start", "end", "times", "question", "options", "answer", "answer_index")


def permutations(rec_id: str, n_options: int, asks: int, seed: int) -> list[list[int]]:
    """``asks`` orders of the options (the first is the stored order), seeded by the sample."""
    rng = random.Random(f"filter\x1f{rec_id}\x1f{seed}")
    out = [list(range(n_options))]
    for _ in range(asks - 1):
        perm = list(range(n_options))
        rng.shuffle(perm)
        out.append(perm)
    return out[:asks]


def verdict(picks: list[int], answer_index: int, min_agreement: float, require_correct: bool
            ) -> tuple[float, int, list[str]]:
    """(consistency, the consistent pick, flags) from the option index picked at each ask."""
    counts = Counter(picks)
    top = max(counts.values())
    pick = min(i for i, c in counts.items() if c == top)
    consistency = top / len(picks)
    flags = []
    if consistency < min_agreement:
        flags.append("inconsistent")
    if require_correct and pick != answer_index:
        flags.append("model_disagrees")
    return consistency, pick, flags


class QraFilterStage:
    name: ClassVar[str] = "qra-filter"
    columns: ClassVar[tuple[str, ...]] = ("id", "status", "error", "consistency", "pick", "flags")

    def __init__(self, cfg: StepRayConfig, model: Optional[str] = None):
        self.cfg = cfg
        self.source = model if model is not None else cfg.qra.filter.model
        self.llm: Any = None

    def pool(self) -> PoolConfig:
        return self.cfg.qra.filter.pool

    def setup(self) -> None:
        import torch

        from step_ray.models.runtime import load_video_llm

        torch.manual_seed(self.cfg.run.seed)
        self.llm = load_video_llm(self.cfg, self.source)

    def process(self, row: Row) -> Row:
        import numpy as np

        from step_ray.models.inputs import FrameDecodeError, frames_for_row

        rec = json.loads(row["record"])
        base = {"id": rec["id"]}
        fcfg = self.cfg.qra.filter
        try:
            frames = frames_for_row(rec, self.llm.model_cfg)
        except FrameDecodeError as err:
            return {**base, "status": "ok", "error": f"unreadable video: {err}", "consistency": None, "pick": None,
                    "flags": json.dumps(["unreadable_video"])}
        options = list(rec["options"])
        perms = permutations(rec["id"], len(options), fcfg.asks, self.cfg.run.seed)
        asked = [dict(rec, options=[options[j] for j in p]) for p in perms]
        scores = self.llm.score_options(asked, [frames] * len(asked))
        picks = [p[int(np.argmax(s))] for p, s in zip(perms, scores)]
        consistency, pick, flags = verdict(picks, int(rec["answer_index"]), fcfg.min_agreement, fcfg.require_correct)
        return {**base, "status": "ok", "error": None, "consistency": consistency, "pick": pick,
                "flags": json.dumps(flags)}


def apply_filter(cfg: StepRayConfig, qra_path: Path, out_dir: Path, use_ray: bool = True,
                 model: Optional[str] = None) -> dict[str, Any]:
    """Filter the samples of ``qra_path`` (a QRA output) into ``out_dir`` (one QRA part); the summary."""
    from step_ray.pipeline.runners import run_stage
    from step_ray.qra.records import read_parquet, write_single_part
    from step_ray.utils.pool_fit import check_pool_fit

    records = read_parquet(qra_path)
    rows = [{"id": r["id"], "record": json.dumps({k: r.get(k) for k in _FIELDS})} for r in records]
    check_pool_fit(cfg, "qra.filter.pool", use_ray=use_ray)
    results, seconds = run_stage(QraFilterStage, cfg, rows, use_ray=use_ray, model=model)
    by_id = {r["id"]: r for r in results}
    kept, flagged, dropped, failed = [], Counter(), 0, 0
    for rec in records:
        res = by_id.get(rec["id"])
        if res is None or res["status"] != "ok":
            failed += 1
            rec = dict(rec, flags=sorted(set(rec.get("flags") or []) | {"filter_error"}))
        else:
            flags = json.loads(res["flags"])
            rec = dict(rec, consistency=res["consistency"], flags=sorted(set(rec.get("flags") or []) | set(flags)))
            flagged.update(flags)
            if cfg.qra.filter.action == "drop" and (set(flags) - {"unreadable_video"}):
                dropped += 1
                continue
        kept.append(rec)
    write_single_part(kept, str(out_dir))
    scored = [r["consistency"] for r in kept if r.get("consistency") is not None]
    return {
        "samples": len(records),
        "kept": len(kept),
        "dropped": dropped,
        "errors": failed,
        "flags": dict(sorted(flagged.items())),
        "mean_consistency": round(sum(scored) / len(scored), 4) if scored else None,
        "asks": cfg.qra.filter.asks,
        "action": cfg.qra.filter.action,
        "model": model or cfg.qra.filter.model or f"base:{cfg.model.name_or_path}",
        "seconds": round(seconds, 2),
    }
