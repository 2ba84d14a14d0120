"""Corpus-wide finishing of QRA samples: answer-prior balancing, options, splits.

The per-graph sampler runs on many actors; what needs the whole corpus runs here, once, on the driver, over
the candidates of every graph (small records: a few hundred bytes each):

* **answer-prior balancing** — within each family, no answer value may hold more than
  ``qra.max_answer_share`` of the family's samples (or ``1 / k`` with ``k`` distinct values, when that is
  larger: a yes / no family can at best be 50 / 50). Samples of over-represented values are dropped in a
  fixed pseudo-random order (by a hash of their id), so the result does not depend on sampling order;
* **options** — the answer, a compositional distractor, the family's most frequent other answer of the same
  type *in the corpus*, random values of the type; shuffled by an RNG seeded by the sample id and seed;
* **split** by video id (train / val / test).

The output depends only on the set of candidates and the seed: byte-identical files for the same graphs and
seed, whatever the number of actors or the order they finish in.
"""

from __future__ import annotations

import hashlib
import math
import random
from collections import Counter, defaultdict
from typing import Any, Iterable

from step_ray.config import QraConfig
from step_ray.qra import records as R
from step_ray.qra.render import draw_options


def _order(rec_id: str, seed: int) -> str:
    return hashlib.sha1(f"balance\x1f{rec_id}\x1f{seed}".encode()).hexdigest()


def balance_answers(records: list[dict[str, Any]], max_share: float, seed: int) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """Drop samples so that within each family no answer exceeds ``max(max_share, 1 / distinct answers)`` of
    the family; (kept records in input order, dropped count per family)."""
    by_family: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in records:
        by_family[r["family"]].append(r)
    drop: set[str] = set()
    dropped: dict[str, int] = {}
    for fam, recs in sorted(by_family.items()):
        counts = Counter(r["answer"] for r in recs)
        cap = max(max_share, 1.0 / len(counts))
        keep = dict(counts)
        while True:  # each round lowers the total, so this ends (at worst with every value equally often)
            limit = max(1, math.floor(cap * sum(keep.values()) + 1e-9))
            over = [v for v, c in keep.items() if c > limit]
            if not over:
                break
            for v in over:
                keep[v] = limit
        by_value: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for r in recs:
            by_value[r["answer"]].append(r)
        for v, rs in by_value.items():
            rs = sorted(rs, key=lambda r: _order(r["id"], seed))
            drop.update(r["id"] for r in rs[keep[v]:])
        if len(recs) - sum(keep.values()):
            dropped[fam] = len(recs) - sum(keep.values())
    return [r for r in records if r["id"] not in drop], dropped


def answer_shares(records: Iterable[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per family: samples, distinct answers, the top answer and its share."""
    by_family: dict[str, Counter] = defaultdict(Counter)
    for r in records:
        by_family[r["family"]][r["answer"]] += 1
    out = {}
    for fam, c in sorted(by_family.items()):
        n = sum(c.values())
        top, k = max(sorted(c.items()), key=lambda kv: kv[1])
        out[fam] = {"samples": n, "distinct": len(c), "top": top, "top_share": round(k / n, 4)}
    return out


def finalize(candidates: Iterable[dict[str, Any]], cfg: QraConfig, seed: int, balance: bool = True
             ) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Candidates of any number of graphs -> finished records (sorted by video id, id) and stats
    ``{"candidates", "dropped_balance" (family -> n), "dropped_options", "answer_shares"}``."""
    unique = {r["id"]: r for r in candidates}
    recs = sorted(unique.values(), key=lambda r: (r["video_id"], r["id"]))
    n_candidates = len(recs)
    dropped_balance: dict[str, int] = {}
    if balance:
        recs, dropped_balance = balance_answers(recs, cfg.max_answer_share, seed)
    frequent: dict[tuple[str, str], Counter] = defaultdict(Counter)
    for r in recs:
        frequent[(r["family"], r[R.POOLS]["answer_type"])][r["answer"]] += 1
    ranked = {k: sorted(c.items()) for k, c in frequent.items()}
    out, dropped_options = [], 0
    for r in recs:
        pools = r[R.POOLS]
        rng = random.Random(f"options\x1f{r['id']}\x1f{seed}")
        drawn = draw_options(r["answer"], pools, ranked[(r["family"], pools["answer_type"])], cfg.num_options, rng)
        if drawn is None:
            dropped_options += 1
            continue
        rec = {k: v for k, v in r.items() if k != R.POOLS}
        rec["options"], rec["answer_index"] = drawn
        rec["split"] = R.split_of(r["video_id"], cfg.test_fraction, cfg.val_fraction)
        rec.setdefault("flags", [])
        rec.setdefault("consistency", None)
        out.append(rec)
    stats = {"candidates": n_candidates, "dropped_balance": dropped_balance, "dropped_options": dropped_options,
             "answer_shares": answer_shares(out)}
    return out, stats
