"""Benchmark inputs: long, realistic-looking H.264 videos made on the spot (nothing is downloaded).

The content is the real ``carphone`` clip (``tests/data/carphone_pristine.mp4``), upscaled, played back
and forth (no artificial cuts) with a light per-frame grain, so the encoder sees camera-like residuals and the
decoder does realistic work; a hard cut to a brightened copy every ``cut_every`` seconds gives shots to split.
Encoded with libx264 (yuv420p, CRF 23, ``veryfast``, default GOP and B-frames), the way phones and web
pipelines write video.
"""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np

SOURCE = Path(__file__).resolve().parents[1] / "tests" / "data" / "carphone_pristine.mp4"


def _source_frames() -> list[np.ndarray]:
    with av.open(str(SOURCE)) as c:
        return [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]


def make_video(path: str | Path, seconds: float, width: int = 1280, height: int = 720, fps: int = 30,
               cut_every: float = 7.0, seed: int = 0) -> Path:
    """Write the benchmark video (skipped if it exists with the same parameters in its name)."""
    path = Path(path)
    if path.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    src = _source_frames()
    loop = src + src[-2:0:-1]  # ping-pong: continuous motion
    rng = np.random.default_rng(seed)
    scaled = [cv2.resize(f, (width, height), interpolation=cv2.INTER_CUBIC) for f in loop]
    tmp = path.with_suffix(".tmp.mp4")
    with av.open(str(tmp), "w") as out:
        stream = out.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"crf": "23", "preset": "veryfast"}
        stream.time_base = Fraction(1, fps)
        for i in range(int(round(seconds * fps))):
            frame = scaled[i % len(scaled)].astype(np.int16)
            if int(i / fps / cut_every) % 2 == 1:  # every other shot brighter: a hard cut between shots
                frame = frame + 60
            frame = frame + rng.normal(0, 3, size=(height // 4, width // 4, 1)).repeat(4, 0).repeat(4, 1).astype(np.int16)
            vf = av.VideoFrame.from_ndarray(np.clip(frame, 0, 255).astype(np.uint8), format="rgb24")
            vf.pts = i
            for packet in stream.encode(vf):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    tmp.replace(path)
    return path
