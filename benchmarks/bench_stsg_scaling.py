"""STSG videos per minute with 1 and 2 perception actors on Ray (goal: >= 1.8x), same corpus, same run.

Each actor gets one CPU (and so one decoder, OpenCV and torch thread). Times are wall clock of the whole step
(actor start-up included), so short corpora understate the speed-up: the default corpus is 32 one-minute
videos. On a 2-core machine the driver and Ray's own processes share the cores with the two actors.

    .venv/bin/python benchmarks/bench_stsg_scaling.py [--videos 32]
"""

from __future__ import annotations

import argparse
import os
import shutil

os.environ.setdefault("RAY_DEDUP_LOGS", "0")

from common import WORK, report  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--videos", type=int, default=32)
    args = ap.parse_args()
    import ray

    from step_ray.config import load_config
    from step_ray.pipeline.steps import stsg_step
    from step_ray.synth.corpus import generate_corpus

    base = ["synth.scene_seconds=20", "synth.scenes=3", f"synth.videos={args.videos}", "perception.pool.num_cpus=1"]
    cfg = load_config(None, base)
    corpus = WORK / f"scaling_corpus_{args.videos}"
    generate_corpus(corpus, cfg.synth, cfg.video, cfg.stsg)
    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, logging_level="ERROR")
    rows = []
    for actors in (1, 2):
        out = WORK / f"scaling_out_{actors}"
        shutil.rmtree(out, ignore_errors=True)
        c = load_config(None, base + [f"perception.pool.min_size={actors}", f"perception.pool.max_size={actors}"])
        s = stsg_step(c, [str(corpus / "videos")], out)
        assert s["ok"] == args.videos, s["errors"]
        rows.append({"actors": actors, "videos": s["ok"], "seconds": s["seconds"],
                     "videos_per_min": round(60 * s["ok"] / s["seconds"], 1)})
    ray.shutdown()
    report("stsg_scaling", rows, {"speedup_2_vs_1": round(rows[1]["videos_per_min"] / rows[0]["videos_per_min"], 2),
                                  "cpus": os.cpu_count()})


if __name__ == "__main__":
    main()
