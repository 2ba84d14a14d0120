"""Speed of the STSG stage's front (decoding sampled frames + shot splitting + keyframe clustering) on a
1-minute 720p H.264 video, in video-seconds per second, against ``ray.data.read_videos`` (which decodes every
frame into a row) and plain decord ``get_batch`` at 1 fps, all measured in the same run.

    .venv/bin/python benchmarks/bench_stsg_front.py [--repeats 2]
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("RAY_DEDUP_LOGS", "0")

import torch  # noqa: F401,E402  -- before decord (see step_ray.video.decode)

from common import WORK, report  # noqa: E402
from videos import make_video  # noqa: E402


def read_videos(path: str) -> int:
    import ray

    ds = ray.data.read_videos(path)
    return sum(len(b["frame"]) for b in ds.iter_batches(batch_size=32, batch_format="numpy"))


def decord_1fps(path: str) -> int:
    import decord

    vr = decord.VideoReader(path, ctx=decord.cpu(0), num_threads=0)
    step = int(round(vr.get_avg_fps()))
    idx = list(range(0, len(vr), step))
    return sum(len(vr.get_batch(idx[i:i + 16]).asnumpy()) for i in range(0, len(idx), 16))


def front(path: str, overrides: list[str]) -> int:
    from step_ray.config import load_config
    from step_ray.video.decode import open_sampled
    from step_ray.video.shots import ShotSplitter

    cfg = load_config(None, overrides).video
    splitter, n = ShotSplitter(cfg), 0
    for chunk in open_sampled(path, cfg):
        for frame, t in zip(chunk.frames, chunk.times):
            splitter.add(frame, t)
            n += 1
    splitter.finish_shot()
    return n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=2, help="runs per case (the best is kept)")
    args = ap.parse_args()
    path = str(make_video(WORK / "carphone_1280x720_1min.mp4", 60))
    seconds = 60.0
    import ray

    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, logging_level="ERROR")
    cases = {
        "ray.data.read_videos (baseline)": lambda: read_videos(path),
        "decord get_batch, 1 fps": lambda: decord_1fps(path),
        "front, decord, 1 fps": lambda: front(path, ["video.sample_fps=1", "video.backend=decord"]),
        "front, auto (sparse), 1 fps": lambda: front(path, ["video.sample_fps=1"]),
        "front, auto (sparse), 5 fps": lambda: front(path, ["video.sample_fps=5"]),
    }
    rows = []
    for name, fn in cases.items():
        best, frames = float("inf"), 0
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            frames = fn()
            best = min(best, time.perf_counter() - t0)
        rows.append({"case": name, "frames": frames, "seconds": round(best, 2), "video_s_per_s": round(seconds / best, 1)})
    ray.shutdown()
    base = rows[0]["video_s_per_s"]
    for r in rows:
        r["x_read_videos"] = round(r["video_s_per_s"] / base, 1)
    report("stsg_front", rows, {"video": path, "cpus": os.cpu_count()})


if __name__ == "__main__":
    main()
