"""Shared bits of the benchmarks: where results go, a table printer, peak memory of a child process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
WORK = Path(os.environ.get("STEP_RAY_BENCH_DIR", "/tmp/step-ray-bench"))


def report(name: str, rows: list[dict], notes: dict) -> Path:
    """Print ``rows`` as a table and write them with ``notes`` to ``benchmarks/results/<name>.json``."""
    keys = list(dict.fromkeys(k for r in rows for k in r))
    widths = {k: max(len(k), *(len(_fmt(r.get(k))) for r in rows)) for k in keys}
    print("  ".join(k.ljust(widths[k]) for k in keys))
    for r in rows:
        print("  ".join(_fmt(r.get(k)).ljust(widths[k]) for k in keys))
    for k, v in notes.items():
        print(f"{k}: {_fmt(v)}")
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps({"rows": rows, **notes}, indent=2, default=str))
    print(f"written: {path}")
    return path


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.3g}" if abs(v) < 1000 else f"{v:.0f}"
    return "" if v is None else str(v)


def run_child(code: str, *args: str) -> dict:
    """Run ``code`` in a fresh Python (so peak memory is its own) and return the JSON it prints last."""
    env = dict(os.environ, PYTHONPATH=str(ROOT / "benchmarks") + os.pathsep + os.environ.get("PYTHONPATH", ""))
    out = subprocess.run([sys.executable, "-c", code, *args], check=True, capture_output=True, text=True, env=env)
    return json.loads(out.stdout.strip().splitlines()[-1])
