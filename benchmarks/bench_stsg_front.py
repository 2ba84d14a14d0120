"""Speed of the STSG stage's front (decoding the sampled frames + shot splitting + keyframe features) on a
1-minute 720p H.264 video, in video-seconds per second, every decoding path measured in the same run.

Headline (``ratio=``): the front as configured by default (``video.backend: auto``) against the same front
decoding every sampled frame exactly (decord random access), at 1 fps: the same work, only the decoder differs
(the like-for-like speed-up). Beside it, every case's speed-up over ``ray.data.read_videos`` (which decodes
every frame of the file into a row) and over plain decord ``get_batch`` at 1 fps (decoding only, no splitting).

Each run is a stream of decoded frames; its window opens once ``--warmup`` of the video is done (file opening,
Ray Data's start-up for ``read_videos``) and closes at the last frame; rate = video-seconds in the window /
seconds. One warm-up run of every case first (file cache), then ``--repeats`` rounds alternating the order;
medians with the spread. What the fast paths cost in picture and graph quality is ``bench_decode_quality.py``.

    flock /tmp/step-ray-heavy.lock .venv/bin/python benchmarks/bench_stsg_front.py [--repeats 3]
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("RAY_DEDUP_LOGS", "0")

import torch  # noqa: F401,E402  -- before decord (see step_ray.video.decode)

from common import WORK, Case, Stream, case_rows, finish, headline, measure  # noqa: E402
from videos import make_video  # noqa: E402

FPS = 30.0  # the benchmark video's native rate


def read_videos(path: str, warmup: float):
    import ray

    s = Stream()
    for batch in ray.data.read_videos(path).iter_batches(batch_size=32, batch_format="numpy"):
        s.tick(len(batch["frame"]) / FPS)
    return s.window(warmup)


def decord_get_batch(path: str, warmup: float, sample_fps: float):
    import decord

    s = Stream()
    vr = decord.VideoReader(path, ctx=decord.cpu(0), num_threads=0)
    step = int(round(vr.get_avg_fps() / sample_fps))
    idx = list(range(0, len(vr), step))
    for i in range(0, len(idx), 16):
        n = len(vr.get_batch(idx[i:i + 16]).asnumpy())
        s.tick(n / sample_fps)
    return s.window(warmup)


def front(path: str, warmup: float, overrides: list[str]):
    from step_ray.config import load_config
    from step_ray.video.decode import open_sampled
    from step_ray.video.shots import ShotSplitter

    cfg = load_config(None, overrides).video
    s = Stream()
    splitter = ShotSplitter(cfg)
    stream = open_sampled(path, cfg)
    backend = stream.info.backend
    for chunk in stream:
        for frame, t in zip(chunk.frames, chunk.times):
            splitter.add(frame, t)
        s.tick(len(chunk.times) / cfg.sample_fps)
    splitter.finish_shot()
    return s.window(warmup, backend=backend)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=3, help="rounds (default 3)")
    ap.add_argument("--warmup", type=float, default=0.1, help="share of each run before its window (default 0.1)")
    args = ap.parse_args()
    path = str(make_video(WORK / "carphone_1280x720_1min.mp4", 60))
    import ray

    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, logging_level="ERROR")
    w = args.warmup

    def fr(backend: str, fps: int):
        return lambda: front(path, w, [f"video.sample_fps={fps}", f"video.backend={backend}"])

    cases = [
        Case("front, auto, 1 fps", fr("auto", 1), "candidate", "video-s/s", "the default decoder choice"),
        Case("front, decord (exact), 1 fps", fr("decord", 1), "baseline", "video-s/s", "like for like"),
        Case("front, pyav-refs, 1 fps", fr("pyav-refs", 1), "", "video-s/s", "reference frames only, exact pixels"),
        Case("front, pyav-sparse, 1 fps", fr("pyav-sparse", 1), "", "video-s/s", "also no deblocking"),
        Case("front, auto, 5 fps", fr("auto", 5), "", "video-s/s"),
        Case("front, decord (exact), 5 fps", fr("decord", 5), "", "video-s/s"),
        Case("decord get_batch, 1 fps", lambda: decord_get_batch(path, w, 1), "", "video-s/s", "decoding only"),
        Case("ray.data.read_videos", lambda: read_videos(path, w), "", "video-s/s", "every frame, a row each"),
    ]
    try:
        runs = measure(cases, args.repeats, warmup_runs=1)
    finally:
        ray.shutdown()
    head = headline(runs, cases[0].name, cases[1].name)
    rows = case_rows(cases, runs, baseline=cases[1].name)
    rv = next(r["median"] for r in rows if r["case"] == "ray.data.read_videos")
    db = next(r["median"] for r in rows if r["case"] == "decord get_batch, 1 fps")
    for r in rows:
        r["x_read_videos"] = r["median"] / rv
        r["x_decord_get_batch"] = r["median"] / db
        r["backend"] = runs[r["case"]][-1].info.get("backend", "")
    notes = {"video": path, "video_seconds": 60, "x_baseline": "speed-up over the exact front at 1 fps (like for like)"}
    finish("bench_stsg_front", rows, notes, head, runs)


if __name__ == "__main__":
    main()
