"""Run the CPU benchmarks one after another in one sitting and write their headline figures as a Markdown table
(each with its command, its median, its spread over the rounds and the number of rounds), for the README.

    flock /tmp/step-ray-heavy.lock .venv/bin/python benchmarks/sitting.py [--only qra,front] [--out FILE]

Each benchmark runs as its own process (``python benchmarks/<script>``), prints its table, and ends with
``ratio=<x>``; its JSON in ``benchmarks/results/`` holds the details read here.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from common import RESULTS, ROOT

#: name -> (script and arguments, JSON name, what the headline compares)
BENCHMARKS = {
    "qra": (["bench_qra.py"], "bench_qra", "QRA samples/s per core, this sampler / the sampler before the speed work"),
    "front": (["bench_stsg_front.py"], "bench_stsg_front",
              "STSG front at 1 fps, video.backend auto / exact decord (like for like)"),
    "decode_quality": (["bench_decode_quality.py"], "bench_decode_quality",
                       "objects F1 of the graph from auto's decoder vs full decoding (lowest corpus)"),
    "scaling": (["bench_stsg_scaling.py"], "bench_stsg_scaling", "STSG videos/s, 2 / 1 perception actors, 2 cores"),
    "memory": (["bench_stsg_memory.py"], "bench_stsg_memory",
               "peak memory on a 10-min video, all frames held / streaming perception"),
    "train": (["bench_train.py"], "bench_train",
              "training sequences/s at steady state, the stack / plain PyTorch DDP (same work)"),
}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", help=f"comma-separated subset of {', '.join(BENCHMARKS)}")
    ap.add_argument("--out", default=str(RESULTS / "sitting.md"))
    args = ap.parse_args()
    names = args.only.split(",") if args.only else list(BENCHMARKS)
    unknown = set(names) - set(BENCHMARKS)
    if unknown:
        raise SystemExit(f"--only: unknown {sorted(unknown)}")
    lines = ["| benchmark | headline (candidate / baseline) | ratio | per round | rounds | seconds |",
             "|---|---|---|---|---|---|"]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p))
    for name in names:
        script, result, what = BENCHMARKS[name]
        cmd = [sys.executable, str(ROOT / "benchmarks" / script[0]), *script[1:]]
        print(f"== {name}: {' '.join(cmd)}", flush=True)
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, env=env, cwd=str(ROOT))
        seconds = time.perf_counter() - t0
        if proc.returncode != 0:
            lines.append(f"| `{script[0]}` | {what} | failed ({proc.returncode}) | | | {seconds:.0f} |")
            continue
        head = json.loads((RESULTS / f"{result}.json").read_text())["headline"]
        rounds = len(head.get("per_round", []))
        lines.append(f"| `benchmarks/{' '.join(script)}` | {what} | **{head['ratio']:.3g}** | "
                     f"{head['round_min']:.3g}-{head['round_max']:.3g} | {rounds} | {seconds:.0f} |")
    text = "\n".join(lines) + "\n"
    Path(args.out).write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
