"""Tallies: counts by a kind and up to three keys, as small Arrow tables that map-reduce passes sum.

A pass over many parts (the QRA finishing, a step's summary) returns one tally table per part; the flows
(:mod:`step_ray.pipeline.dataflow`) sum them by key, on Ray Data or in this process, and only the sums
(a few rows per distinct key, never per sample) reach the driver.
"""

from __future__ import annotations

from collections import Counter
from typing import Any, Iterable

import pyarrow as pa

#: ``kind`` and up to three keys (strings; "" when unused), counted in ``n``.
TALLY_SCHEMA = pa.schema([("kind", pa.string()), ("a", pa.string()), ("b", pa.string()), ("c", pa.string()),
                          ("n", pa.int64())])
TALLY_KEYS = ["kind", "a", "b", "c"]


class Tally:
    """Counts by ``(kind, a, b, c)``; :meth:`table` is what a pass returns."""

    def __init__(self) -> None:
        self.counts: Counter = Counter()

    def add(self, kind: str, a: Any = "", b: Any = "", c: Any = "", n: int = 1) -> None:
        self.counts[(kind, str(a), str(b), str(c))] += n

    def table(self) -> pa.Table:
        rows = [{"kind": k, "a": a, "b": b, "c": c, "n": n} for (k, a, b, c), n in sorted(self.counts.items())]
        return pa.Table.from_pylist(rows, schema=TALLY_SCHEMA)


def tally_dict(rows: Iterable[dict]) -> dict[str, Counter]:
    """Summed tally rows as ``{kind: Counter({(a, b, c): n})}``."""
    out: dict[str, Counter] = {}
    for r in rows:
        out.setdefault(r["kind"], Counter())[(r["a"], r["b"], r["c"])] += int(r["n"])
    return out
