"""STSG videos per minute with 2 perception actors (candidate) against 1 (baseline) on the same corpus, in the
same Ray, at steady state. Goal: >= 1.6x on 2 cores.

The pool plan is sized to fit the cluster (the pool-fit preflight refuses one that does not): on 2 CPUs, each
perception actor asks for ``--actor-cpus`` (default 0.875) and the graph builder for 0.25, so two actors and
the builder start at once (2 x 0.875 + 0.25 = 2). The 1-actor baseline asks for the same per actor. Both sides
get the same corpus, the same settings (colour detector, ByteTrack, 5 fps) and the same window: a video counts
when its graph file is written (its modification time); the window opens once ``--warmup`` of the corpus is
done (actor start-up, first batches) and closes at the last graph. The wall time of the whole step, start-up
included, is reported beside it. Rounds alternate which side goes first; medians over ``--repeats`` rounds,
with the spread.

    flock /tmp/step-ray-heavy.lock .venv/bin/python benchmarks/bench_stsg_scaling.py [--videos 32] [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import shutil
import time

os.environ.setdefault("RAY_DEDUP_LOGS", "0")

from common import WORK, Case, case_rows, finish, headline, measure, steady_window  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--videos", type=int, default=32, help="one-minute synthetic videos (default 32)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--warmup", type=float, default=0.25, help="share of the corpus before the window (default 0.25)")
    ap.add_argument("--actor-cpus", type=float, default=0.875, help="perception.pool.num_cpus (default 0.875)")
    ap.add_argument("--cpus", type=int, default=os.cpu_count(), help="CPUs of the local Ray (default: all cores)")
    args = ap.parse_args()
    import ray

    from step_ray.config import load_config
    from step_ray.pipeline.steps import stsg_step
    from step_ray.synth.corpus import generate_corpus

    base = ["synth.scene_seconds=20", "synth.scenes=3", f"synth.videos={args.videos}", "stsg.pool.batch_size=1",
            f"perception.pool.num_cpus={args.actor_cpus}"]
    cfg = load_config(None, base)
    corpus = WORK / f"scaling_corpus_{args.videos}"
    generate_corpus(corpus, cfg.synth, cfg.video, cfg.stsg)
    ray.init(num_cpus=args.cpus, include_dashboard=False, logging_level="ERROR")

    def side(actors: int):
        def run():
            out = WORK / f"scaling_out_{actors}"
            shutil.rmtree(out, ignore_errors=True)
            c = load_config(None, base + [f"perception.pool.min_size={actors}", f"perception.pool.max_size={actors}"])
            t0 = time.time()
            s = stsg_step(c, [str(corpus / "videos")], out)
            assert s["ok"] == args.videos and not s["skipped_done"], s["errors"]
            done = [(p.stat().st_mtime, 1.0) for p in out.glob("*.stsg.json")]
            return steady_window(done, args.warmup, start=t0, step_seconds=s["seconds"],
                                 videos_per_min_with_startup=60 * s["ok"] / s["seconds"])
        return run

    cases = [Case("2 perception actors", side(2), "candidate", "videos/s"),
             Case("1 perception actor", side(1), "baseline", "videos/s")]
    try:
        runs = measure(cases, args.repeats)
    finally:
        ray.shutdown()
    head = headline(runs, cases[0].name, cases[1].name)
    rows = case_rows(cases, runs, baseline=cases[1].name)
    for row in rows:
        rs = runs[row["case"]]
        row["videos_per_min"] = 60 * row["median"]
        with_startup = sorted(r.info["videos_per_min_with_startup"] for r in rs)
        row["videos_per_min_with_startup"] = with_startup[len(with_startup) // 2]
    notes = {"videos": args.videos, "video_seconds_each": 60, "ray_cpus": args.cpus,
             "plan": f"perception {args.actor_cpus} CPU per actor + graph builder 0.25 CPU",
             "window": f"graphs written after the first {args.warmup:.0%} of the corpus, to the last"}
    finish("bench_stsg_scaling", rows, notes, head, runs)


if __name__ == "__main__":
    main()
