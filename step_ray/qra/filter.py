"""STEP's model-side filter, its rules: keep the QRA samples the Video-LLM answers consistently.

Each sample is put to the model ``qra.filter.asks`` times, each time with its options in another order
(:func:`permutations`: seeded by the sample id and ``run.seed``), and scored the way the evaluation scores
questions (option likelihood, asked the way the model was trained, frames at the moments the question names).
The option picked most often is the model's answer; ``consistency`` is the share of asks that picked it
(:func:`verdict`). A sample below ``qra.filter.min_agreement`` is flagged ``inconsistent``; with
``require_correct`` also ``model_disagrees`` when the consistent pick is not the graph's answer; ``action:
drop`` removes flagged samples (:func:`apply_verdict`). A sample whose video cannot be decoded is flagged
``unreadable_video`` (never dropped for that); one the filter failed on is kept, flagged ``filter_error``.

This module holds the decisions only, with no model: the stage that asks the model (``qra-filter``, its own
actor pool ``qra.filter.pool``: give it ``num_gpus`` on a GPU cluster) stands above the model layer, in
:mod:`step_ray.pipeline.qra_filter`; ``step-ray qra-filter`` runs it, and so does ``step-ray qra`` at its end
when ``qra.filter.enabled``.
"""

from __future__ import annotations

import random
from collections import Counter
from typing import Any, Mapping, Optional

#: Flags that never drop a sample (they say the filter could not judge it, not that the model disagrees).
NOT_A_VERDICT = frozenset({"unreadable_video"})


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


def apply_verdict(rec: Mapping[str, Any], res: Mapping[str, Any], action: str
                  ) -> tuple[Optional[dict[str, Any]], list[str]]:
    """A record with the filter's verdict ``res`` (status, consistency, flags) applied, or None when
    ``action`` is drop and the verdict flags it; and the verdict's flags (none when the filter failed)."""
    old = set(rec.get("flags") or [])
    if res.get("status") != "ok":
        return dict(rec, flags=sorted(old | {"filter_error"})), []
    flags = list(res.get("flags") or [])
    if action == "drop" and set(flags) - NOT_A_VERDICT:
        return None, flags
    return dict(rec, consistency=res.get("consistency"), flags=sorted(old | set(flags))), flags
