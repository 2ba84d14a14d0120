"""The benchmarks' shared machinery: one way to measure a candidate against its baseline fairly.

Every benchmark under ``benchmarks/`` follows the same rules, enforced by the helpers here:

1. **The same work.** Candidate and baseline process the same inputs in the same run (same machine, same
   sitting), each case in its own code path but measured by the same code.
2. **The same steady-state window.** A run is timed as a stream of completions (``Stream.tick``: a frame, a
   video, a pass); its window starts once ``warmup`` of the run's work is done and ends at its last completion,
   on both sides alike (:meth:`Stream.window`). A case whose run is one indivisible unit is warmed up by whole
   runs instead (``measure(..., warmup_runs=1)``: discarded before the first round).
3. **One rate formula.** ``rate = items in the window / seconds in the window`` (:func:`rate_run`), for every
   case; seconds are wall or CPU time as the benchmark states (one clock for all its cases).
4. **Repeats.** ``repeats`` rounds; each round runs every case once, in an order that is reversed every other
   round, so drift in the machine's load hits both sides alike. A case's figure is the **median** of its rounds;
   the **spread** is min..max over the rounds (and the relative spread, (max - min) / median).
5. **A headline.** ``ratio = median(candidate) / median(baseline)`` (``baseline / candidate`` for figures where
   lower is better, such as memory): higher is better. The per-round ratios (candidate and baseline of the
   same round) give its spread. The ratio is the last line printed: ``ratio=<x>``.

Results go to ``benchmarks/results/<name>.json`` (every run's raw figures, the summaries, the notes) and as a
table on stdout.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Optional, Sequence

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
WORK = Path(os.environ.get("STEP_RAY_BENCH_DIR", "/tmp/step-ray-bench"))


# --------------------------------------------------------------------------------------------- one run


@dataclass
class Run:
    """What one run of a case measured: ``value`` (a rate, items / seconds over its window, or another figure
    such as a peak), and the window it came from."""

    value: float
    items: Optional[float] = None
    seconds: Optional[float] = None
    info: dict[str, Any] = field(default_factory=dict)


def rate_run(items: float, seconds: float, **info: Any) -> Run:
    """The one rate formula of the benchmarks: items done in the window / the window's seconds."""
    if seconds <= 0:
        raise ValueError(f"a rate needs a window longer than 0 s (got {seconds} s for {items} items)")
    return Run(items / seconds, items, seconds, info)


def value_run(value: float, **info: Any) -> Run:
    """A run whose figure is not a rate (a peak memory, a quality score)."""
    return Run(float(value), info=info)


class Stream:
    """The completions of one run, timed: ``tick(n)`` when ``n`` more items are done. ``window(warmup)`` is the
    run's steady-state :class:`Run`: from the completion at which ``warmup`` (a share, 0..1) of the run's items
    were done to the last one. ``clock`` is ``time.perf_counter`` (wall) unless a benchmark measures CPU time."""

    def __init__(self, clock: Callable[[], float] = time.perf_counter):
        self.clock = clock
        self.t0 = clock()
        self.events: list[tuple[float, float]] = []  # (time, items completed at it)

    def tick(self, items: float = 1.0, at: Optional[float] = None) -> None:
        self.events.append((self.clock() if at is None else at, float(items)))

    def window(self, warmup: float, **info: Any) -> Run:
        return steady_window(self.events, warmup, start=self.t0, **info)


def steady_window(events: Sequence[tuple[float, float]], warmup: float, start: Optional[float] = None,
                  **info: Any) -> Run:
    """The steady-state rate of a run given its completions ``(time, items)``: the window opens at the first
    completion by which at least ``warmup`` of all items are done (``warmup=0``: at ``start``, the run's
    beginning) and closes at the last completion; the items are those completed inside it."""
    if not 0 <= warmup < 1:
        raise ValueError(f"warmup is a share of the work in [0, 1), got {warmup}")
    evs = sorted(events)
    if not evs:
        raise ValueError("a run with no completions has no rate")
    total = sum(n for _, n in evs)
    if warmup == 0:
        if start is None:
            raise ValueError("warmup=0 needs the run's start time")
        return rate_run(total, evs[-1][0] - start, window_start=0.0, total_items=total,
                        run_seconds=evs[-1][0] - start, **info)
    done, opened = 0.0, None
    for t, n in evs:
        done += n
        if done >= warmup * total - 1e-9:
            opened = (t, done)
            break
    assert opened is not None
    t_open, done_open = opened
    if evs[-1][0] <= t_open:
        raise ValueError(f"warm-up {warmup:.0%} leaves no window: the last completion is the one that ends it "
                         f"(make the run longer or the warm-up shorter)")
    run_seconds = evs[-1][0] - start if start is not None else None
    return rate_run(total - done_open, evs[-1][0] - t_open, window_start=t_open - (start or evs[0][0]),
                    total_items=total, run_seconds=run_seconds, **info)


# --------------------------------------------------------------------------------------------- cases and rounds


@dataclass
class Case:
    """One thing measured: ``run()`` does the work once and returns its :class:`Run`. ``role``: ``candidate``,
    ``baseline`` or ``""`` (shown for context, not in the headline)."""

    name: str
    run: Callable[[], Run]
    role: str = ""
    unit: str = ""
    note: str = ""


def measure(cases: Sequence[Case], repeats: int, warmup_runs: int = 0,
            progress: Callable[[str], None] = lambda s: print(s, file=sys.stderr, flush=True)
            ) -> dict[str, list[Run]]:
    """Run every case ``warmup_runs`` times (discarded), then ``repeats`` rounds of every case, alternating
    the order each round (A B, B A, A B, ...). Returns each case's runs, in round order."""
    if repeats < 1:
        raise ValueError("repeats must be >= 1")
    for _ in range(warmup_runs):
        for c in cases:
            progress(f"warm-up: {c.name}")
            c.run()
    runs: dict[str, list[Run]] = {c.name: [] for c in cases}
    for r in range(repeats):
        order = list(cases) if r % 2 == 0 else list(reversed(cases))
        for c in order:
            progress(f"round {r + 1}/{repeats}: {c.name}")
            runs[c.name].append(c.run())
    return runs


def spread(values: Iterable[float]) -> dict[str, Any]:
    """Median, min, max and relative spread ((max - min) / median) of repeated figures."""
    v = [float(x) for x in values]
    if not v:
        return {"n": 0, "median": None, "min": None, "max": None, "spread": None}
    med = statistics.median(v)
    return {"n": len(v), "median": med, "min": min(v), "max": max(v),
            "spread": (max(v) - min(v)) / med if med else None}


def headline(runs: dict[str, list[Run]], candidate: str, baseline: str, higher_is_better: bool = True
             ) -> dict[str, Any]:
    """The headline ratio (higher is better) from the medians, and the spread of the per-round ratios."""
    c = [r.value for r in runs[candidate]]
    b = [r.value for r in runs[baseline]]
    mc, mb = statistics.median(c), statistics.median(b)
    ratio = (mc / mb) if higher_is_better else (mb / mc)
    per_round = [(x / y) if higher_is_better else (y / x) for x, y in zip(c, b)]
    return {"candidate": candidate, "baseline": baseline, "higher_is_better": higher_is_better,
            "ratio": ratio, "per_round": per_round, **{f"round_{k}": v for k, v in spread(per_round).items()
                                                        if k in ("min", "max")}}


def case_rows(cases: Sequence[Case], runs: dict[str, list[Run]], baseline: Optional[str] = None,
              higher_is_better: bool = True) -> list[dict[str, Any]]:
    """One table row per case: its median and spread, and its ratio to the baseline's median."""
    base = statistics.median(r.value for r in runs[baseline]) if baseline else None
    rows = []
    for c in cases:
        s = spread(r.value for r in runs[c.name])
        row = {"case": c.name, "role": c.role, "unit": c.unit, "median": s["median"], "min": s["min"],
               "max": s["max"], "spread": f"{100 * s['spread']:.1f}%" if s["spread"] is not None else None,
               "runs": s["n"]}
        if base:
            row["x_baseline"] = (s["median"] / base) if higher_is_better else (base / s["median"])
        if c.note:
            row["note"] = c.note
        rows.append(row)
    return rows


def machine() -> dict[str, Any]:
    return {"python": platform.python_version(), "machine": platform.machine(), "cpus": os.cpu_count(),
            "load_avg_at_end": [round(x, 2) for x in os.getloadavg()]}


def finish(name: str, rows: list[dict], notes: dict[str, Any], head: Optional[dict[str, Any]],
           runs: Optional[dict[str, list[Run]]] = None) -> Path:
    """Print the table, the notes and the headline, write the JSON, and print ``ratio=<x>`` last."""
    payload = {"rows": rows, **notes, "machine": machine()}
    if runs is not None:
        payload["runs"] = {k: [asdict(r) for r in v] for k, v in runs.items()}
    if head is not None:
        payload["headline"] = head
    path = report(name, rows, {**notes, **({"headline": _headline_text(head)} if head else {})}, payload)
    if head is not None:
        print(f"ratio={head['ratio']:.3f}", flush=True)
    return path


def _headline_text(head: dict[str, Any]) -> str:
    return (f"{head['candidate']} / {head['baseline']} = {head['ratio']:.3f} (medians; per round "
            f"{head['round_min']:.3f}..{head['round_max']:.3f}, higher is better)")


# --------------------------------------------------------------------------------------------- output


def report(name: str, rows: list[dict], notes: dict, payload: Optional[dict] = None) -> Path:
    """Print ``rows`` as a table and ``notes``; write ``payload`` (default: rows + notes) to
    ``benchmarks/results/<name>.json``."""
    print(format_table(rows))
    for k, v in notes.items():
        print(f"{k}: {_fmt(v)}")
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(payload if payload is not None else {"rows": rows, **notes}, indent=2, default=str))
    print(f"written: {path}")
    return path


def format_table(rows: list[dict]) -> str:
    keys = list(dict.fromkeys(k for r in rows for k in r))
    if not keys:
        return ""
    widths = {k: max(len(k), *(len(_fmt(r.get(k))) for r in rows)) for k in keys}
    lines = ["  ".join(k.ljust(widths[k]) for k in keys)]
    lines += ["  ".join(_fmt(r.get(k)).ljust(widths[k]) for k in keys) for r in rows]
    return "\n".join(lines)


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.3g}" if abs(v) < 1000 else f"{v:.0f}"
    return "" if v is None else str(v)


# --------------------------------------------------------------------------------------------- processes and trees


def run_child(code: str, *args: str, pythonpath: Optional[str | Path] = None, cwd: Optional[str | Path] = None
              ) -> dict:
    """Run ``code`` in a fresh Python (its own peak memory, its own imports) and return the JSON it prints
    last. ``pythonpath``: the tree whose ``step_ray`` it imports (default: this checkout's, as the parent)."""
    paths = [str(ROOT / "benchmarks"), str(pythonpath or ROOT)]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(paths + [os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep))
    # ``python -c`` puts the working directory first on sys.path: run in the tree itself, so that a checkout
    # in the current directory cannot shadow the tree asked for.
    out = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, env=env,
                         cwd=str(cwd or pythonpath or ROOT))
    if out.returncode != 0:
        raise RuntimeError(f"benchmark child failed ({out.returncode}):\n{out.stderr[-4000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def tree_at(rev: str, dest: Optional[Path] = None) -> Path:
    """The package and configs of git revision ``rev`` of this repository, exported to a folder (a baseline
    "as it was" measured in the same run as the working tree). Raises if ``rev`` is unknown."""
    sha = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--verify", f"{rev}^{{commit}}"],
                         capture_output=True, text=True)
    if sha.returncode != 0:
        raise SystemExit(f"--baseline-rev {rev}: not a commit of {ROOT} ({sha.stderr.strip()})")
    commit = sha.stdout.strip()
    dest = dest or Path(tempfile.gettempdir()) / f"step-ray-tree-{commit[:12]}"
    if not (dest / "step_ray").is_dir():
        tmp = Path(tempfile.mkdtemp(prefix="step-ray-tree-"))
        archive = subprocess.run(["git", "-C", str(ROOT), "archive", commit, "step_ray", "configs"],
                                 capture_output=True, check=True).stdout
        subprocess.run(["tar", "-x", "-C", str(tmp)], input=archive, check=True)
        if dest.exists():
            shutil.rmtree(dest)
        tmp.replace(dest)
    return dest
