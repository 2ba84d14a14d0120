"""Peak memory of the STSG stage on a 1-minute and a 10-minute video (goal: <= 1.2x).

Each measurement runs in a fresh Python process (``ru_maxrss`` is per process): it builds the stage, sets it
up (detector loaded), notes the resident memory, processes one video, and reports the peak (``ru_maxrss``). Three modes:
perception only (decode, split, detect, track: the streaming part), the whole stage (plus the graph, which
is output and grows with the video), and, as a contrast, all sampled frames held in memory at once
(``decode_sampled``), the way a stage that does not stream would.

Headline (``ratio=``): the peak of holding all frames / the peak of streaming perception, on the 10-minute
video (higher is better: what streaming saves). Rounds alternate the order; medians with the spread.

    flock /tmp/step-ray-heavy.lock .venv/bin/python benchmarks/bench_stsg_memory.py [--side 640] [--fps 5]
"""

from __future__ import annotations

import argparse
import shutil

from common import WORK, Case, case_rows, finish, headline, measure, run_child, value_run
from videos import make_video

STAGE = r"""
import json, resource, sys, time
from step_ray.config import load_config
from step_ray.stage import run_batch
from step_ray.stsg.stage import input_table, stsg_stages
from step_ray.video.decode import decode_sampled

path, fps, mode = sys.argv[1], sys.argv[2], sys.argv[3]
cfg = load_config(None, [f"video.sample_fps={fps}", "video.max_frames=0"])
def rss_mb():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS"):
            return int(line.split()[1]) / 1024
stage, graph = stsg_stages(cfg, sys.argv[4])
stage.setup()
graph.setup()
before = rss_mb()
t0 = time.perf_counter()
if mode == "stage":
    [row] = run_batch(graph, run_batch(stage, input_table([{"video_id": "v", "uri": path}]))).to_pylist()
    frames = row["frames"]
    assert row["status"] == "ok", row["error"]
elif mode == "perception":
    frames = stage._perceive("v", path, path)[1]["frames"]
else:
    frames = len(decode_sampled(path, cfg.video).times)
print(json.dumps({"rss_after_setup_mb": before, "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "frames": frames, "seconds": time.perf_counter() - t0}))
"""


# perception: decode -> split -> detect -> track (what must not grow); stage: plus building and writing the
# graph, whose size grows with the video like any output; hold-all: every sampled frame in memory at once.
MODES = ("perception", "stage", "hold-all")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--side", type=int, default=640, help="video width (height = 9/16 of it)")
    ap.add_argument("--fps", type=float, default=5.0, help="video.sample_fps")
    ap.add_argument("--repeats", type=int, default=2, help="rounds (default 2)")
    args = ap.parse_args()
    w, h = args.side, args.side * 9 // 16 // 2 * 2
    videos = {m: make_video(WORK / f"carphone_{w}x{h}_{m}min.mp4", 60 * m, width=w, height=h) for m in (1, 10)}

    def child(mode: str, minutes: int):
        def run():
            out = WORK / f"mem_out_{mode}_{minutes}"
            shutil.rmtree(out, ignore_errors=True)
            r = run_child(STAGE, str(videos[minutes]), str(args.fps), mode, str(out))
            return value_run(r["peak_mb"], **r)
        return run

    roles = {("perception", 10): "candidate", ("hold-all", 10): "baseline"}  # the headline: the 10-minute runs
    cases = [Case(f"{mode}, {m} min", child(mode, m), roles.get((mode, m), ""), "peak MB")
             for mode in MODES for m in (10, 1)]
    runs = measure(cases, args.repeats)
    cand, base = "perception, 10 min", "hold-all, 10 min"
    head = headline(runs, cand, base, higher_is_better=False)
    rows = case_rows(cases, runs, baseline=base, higher_is_better=False)

    def med(name: str, key: str) -> float:
        vals = sorted(r.info[key] if key != "peak_mb" else r.value for r in runs[name])
        return vals[len(vals) // 2]

    for row in rows:
        row["rss_after_setup_mb"] = med(row["case"], "rss_after_setup_mb")
        row["frames"] = runs[row["case"]][-1].info["frames"]
    notes = {}
    for mode in MODES:
        a, b = f"{mode}, 1 min", f"{mode}, 10 min"
        notes[f"{mode}: peak 10 min / 1 min"] = round(med(b, "peak_mb") / med(a, "peak_mb"), 3)
        notes[f"{mode}: growth above setup, 10 min / 1 min"] = round(
            (med(b, "peak_mb") - med(b, "rss_after_setup_mb"))
            / max(1e-6, med(a, "peak_mb") - med(a, "rss_after_setup_mb")), 2)
    notes["headline"] = "hold-all peak / perception peak on the 10-minute video (higher: streaming saves more)"
    finish("bench_stsg_memory", rows, notes, head, runs)


if __name__ == "__main__":
    main()
