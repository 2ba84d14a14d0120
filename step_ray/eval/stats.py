"""Intervals for accuracies, and for the difference between two models asked the same questions.

* :func:`wilson_interval`: the Wilson score interval of a proportion (Wilson 1927; method 3 of Newcombe 1998,
  "Two-sided confidence intervals for the single proportion"). Unlike the normal ("Wald") interval it stays
  inside [0, 1] and keeps its coverage at small n and at accuracies near 0 or 1.
* :func:`bootstrap_interval`: the percentile bootstrap of an accuracy. Resampling n questions with replacement
  and counting the correct ones is drawing ``Binomial(n, k/n)``, so it is drawn that way: the same distribution
  as resampling rows, at a cost independent of n.
* :func:`paired_difference`: accuracy of B minus accuracy of A on the same questions. Only the questions one
  model gets right and the other wrong (the discordant pairs) move the difference, so its interval is much
  narrower than two independent intervals suggest. Intervals: Newcombe's method 10 (Wilson intervals of both
  margins, corrected for their correlation; Newcombe 1998, "Improved confidence intervals for the difference
  between binomial proportions based on paired data"), the Wald interval, or a paired bootstrap (the four cells
  of the 2x2 table redrawn as a multinomial, i.e. questions resampled as pairs); with McNemar's exact test.

Every function takes ``confidence`` (0.95 by default) and is deterministic (bootstrap draws are seeded).
"""

from __future__ import annotations

import math
from statistics import NormalDist
from typing import Any, Hashable, Mapping, Optional, Sequence

import numpy as np

INTERVAL_METHODS = ("wilson", "bootstrap")
PAIRED_METHODS = ("newcombe", "wald", "bootstrap")
DEFAULT_BOOTSTRAP = 10_000


def z_value(confidence: float) -> float:
    """The two-sided standard-normal quantile: 1.959964 for 0.95."""
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence {confidence} is not in (0, 1)")
    return NormalDist().inv_cdf(0.5 + confidence / 2.0)


def _check_counts(correct: int, n: int) -> None:
    if n < 0 or not 0 <= correct <= n:
        raise ValueError(f"{correct} correct of {n}: want 0 <= correct <= n")


def wilson_interval(correct: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of ``correct / n``; ``(0, 1)`` when ``n == 0`` (nothing is known)."""
    _check_counts(correct, n)
    if n == 0:
        return 0.0, 1.0
    z = z_value(confidence)
    p, z2 = correct / n, z * z
    denom = 1.0 + z2 / n
    centre = (p + z2 / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def _percentiles(draws: np.ndarray, confidence: float) -> tuple[float, float]:
    alpha = 1.0 - confidence
    lo, hi = np.quantile(draws, [alpha / 2, 1 - alpha / 2])
    return float(lo), float(hi)


def bootstrap_interval(correct: int, n: int, confidence: float = 0.95, n_boot: int = DEFAULT_BOOTSTRAP,
                       seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of ``correct / n`` (``n_boot`` resamples of the n questions)."""
    _check_counts(correct, n)
    z_value(confidence)
    if n_boot < 1:
        raise ValueError(f"n_boot {n_boot} is not >= 1")
    if n == 0:
        return 0.0, 1.0
    draws = np.random.default_rng(seed).binomial(n, correct / n, size=n_boot) / n
    return _percentiles(draws, confidence)


def accuracy_cell(flags: Sequence[bool], method: str = "wilson", confidence: float = 0.95,
                  n_boot: int = DEFAULT_BOOTSTRAP, seed: int = 0) -> dict[str, Any]:
    """``{"accuracy", "correct", "n", "low", "high"}`` of a list of right / wrong answers."""
    n, correct = len(flags), int(sum(bool(f) for f in flags))
    if method == "wilson":
        low, high = wilson_interval(correct, n, confidence)
    elif method == "bootstrap":
        low, high = bootstrap_interval(correct, n, confidence, n_boot, seed)
    else:
        raise ValueError(f"interval method {method!r} is not one of {', '.join(INTERVAL_METHODS)}")
    return {"accuracy": correct / n if n else None, "correct": correct, "n": n, "low": low, "high": high}


def mcnemar_exact_p(a_only: int, b_only: int) -> float:
    """Two-sided exact McNemar test: under "A and B are equally accurate" each discordant question is a fair
    coin, so the p-value is twice the binomial tail of the smaller count (at most 1)."""
    if a_only < 0 or b_only < 0:
        raise ValueError("discordant counts must be >= 0")
    n = a_only + b_only
    if n == 0:
        return 1.0
    k = min(a_only, b_only)
    # log-space sum of C(n, i) / 2^n for i <= k: exact to float precision for any n, without big numbers
    logs = [math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1) - n * math.log(2) for i in range(k + 1)]
    top = max(logs)
    tail = math.exp(top) * sum(math.exp(x - top) for x in logs)
    return min(1.0, 2.0 * tail)


def _newcombe(both: int, b_only: int, a_only: int, neither: int, confidence: float) -> tuple[float, float]:
    """Newcombe's method 10 for p1 - p2 with p1 = accuracy of B, p2 = accuracy of A."""
    n = both + b_only + a_only + neither
    p1, p2 = (both + b_only) / n, (both + a_only) / n
    l1, u1 = wilson_interval(both + b_only, n, confidence)
    l2, u2 = wilson_interval(both + a_only, n, confidence)
    margins = (both + b_only) * (a_only + neither) * (both + a_only) * (b_only + neither)
    cross = both * neither - b_only * a_only
    corrected = cross - n / 2 if cross > n / 2 else (cross if cross < 0 else 0.0)
    phi = corrected / math.sqrt(margins) if margins > 0 else 0.0
    d = p1 - p2
    low = d - math.sqrt(max(0.0, (p1 - l1) ** 2 - 2 * phi * (p1 - l1) * (u2 - p2) + (u2 - p2) ** 2))
    high = d + math.sqrt(max(0.0, (p2 - l2) ** 2 - 2 * phi * (p2 - l2) * (u1 - p1) + (u1 - p1) ** 2))
    return max(-1.0, low), min(1.0, high)


def paired_difference(a: Sequence[bool], b: Sequence[bool], confidence: float = 0.95, method: str = "newcombe",
                      n_boot: int = DEFAULT_BOOTSTRAP, seed: int = 0) -> dict[str, Any]:
    """Accuracy of B minus accuracy of A on the same questions (``a[i]``, ``b[i]``: question i right?).

    Returns ``{"n", "accuracy_a", "accuracy_b", "difference", "low", "high", "method", "confidence", "both",
    "a_only", "b_only", "neither", "mcnemar_p", "verdict"}``; ``verdict`` is ``"within noise"`` when the interval
    holds 0, else ``"B better"`` or ``"A better"``.
    """
    if len(a) != len(b):
        raise ValueError(f"paired results need the same questions: {len(a)} vs {len(b)}")
    if not a:
        raise ValueError("no paired questions")
    z_value(confidence)
    both = sum(1 for x, y in zip(a, b) if x and y)
    a_only = sum(1 for x, y in zip(a, b) if x and not y)
    b_only = sum(1 for x, y in zip(a, b) if y and not x)
    n = len(a)
    neither = n - both - a_only - b_only
    d = (b_only - a_only) / n
    if method == "newcombe":
        low, high = _newcombe(both, b_only, a_only, neither, confidence)
    elif method == "wald":
        se = math.sqrt(max(0.0, (a_only + b_only) - (b_only - a_only) ** 2 / n)) / n
        z = z_value(confidence)
        low, high = max(-1.0, d - z * se), min(1.0, d + z * se)
    elif method == "bootstrap":
        cells = np.array([both, a_only, b_only, neither], dtype=float) / n
        counts = np.random.default_rng(seed).multinomial(n, cells, size=n_boot)
        low, high = _percentiles((counts[:, 2] - counts[:, 1]) / n, confidence)
    else:
        raise ValueError(f"paired method {method!r} is not one of {', '.join(PAIRED_METHODS)}")
    verdict = "within noise" if low <= 0.0 <= high else ("B better" if d > 0 else "A better")
    return {
        "n": n, "accuracy_a": (both + a_only) / n, "accuracy_b": (both + b_only) / n, "difference": d,
        "low": low, "high": high, "method": method, "confidence": confidence,
        "both": both, "a_only": a_only, "b_only": b_only, "neither": neither,
        "mcnemar_p": mcnemar_exact_p(a_only, b_only), "verdict": verdict,
    }


def pair_outcomes(a: Mapping[Hashable, Optional[bool]], b: Mapping[Hashable, Optional[bool]]
                  ) -> tuple[list[Hashable], list[bool], list[bool], dict[str, int]]:
    """Align two runs' results (question id -> right / wrong, None when not scored) on the questions both
    scored, in sorted id order. Returns ``(ids, a_flags, b_flags, {"only_a": n, "only_b": n})``: the counts of
    questions scored by one run only, which a comparison must report, not hide."""
    scored_a = {k for k, v in a.items() if v is not None}
    scored_b = {k for k, v in b.items() if v is not None}
    ids = sorted(scored_a & scored_b, key=str)
    return (ids, [bool(a[i]) for i in ids], [bool(b[i]) for i in ids],
            {"only_a": len(scored_a - scored_b), "only_b": len(scored_b - scored_a)})
