"""Files of every kind a video corpus really contains, made on the spot with PyAV: the bad-input classes."""

from __future__ import annotations

import os
from fractions import Fraction
from pathlib import Path

import av
import numpy as np


def _write_video(path: Path, frames: list[np.ndarray], pts: list[int], time_base: Fraction, rate: int = 10) -> Path:
    with av.open(str(path), "w") as out:
        s = out.add_stream("libx264", rate=rate)
        s.height, s.width = frames[0].shape[:2]
        s.pix_fmt, s.time_base = "yuv420p", time_base
        s.codec_context.time_base = time_base
        for f, t in zip(frames, pts):
            vf = av.VideoFrame.from_ndarray(f, format="rgb24")
            vf.pts, vf.time_base = t, time_base
            for packet in s.encode(vf):
                out.mux(packet)
        for packet in s.encode():
            out.mux(packet)
    return path


def _square_frames(n: int, width: int, height: int) -> list[np.ndarray]:
    """A red square moving right on a dark background."""
    frames = []
    side = max(8, min(width, height) // 5)
    for i in range(n):
        f = np.full((height, width, 3), 40, np.uint8)
        x = int((width - side) * i / max(1, n - 1))
        f[height // 3: height // 3 + side, x: x + side] = (220, 30, 30)
        frames.append(f)
    return frames


def single_frame(path: Path) -> Path:
    return _write_video(path, _square_frames(1, 128, 96), [0], Fraction(1, 10))


def very_large_frames(path: Path) -> Path:
    """Three 4K frames: decoding must shrink them to the pixel cap at once."""
    return _write_video(path, _square_frames(3, 3840, 2160), [0, 1, 2], Fraction(1, 10))


def variable_frame_rate(path: Path) -> Path:
    """40 frames with irregular gaps (timestamps in 1/1000 s): 3.9 s of video."""
    pts, t = [], 0
    for i in range(40):
        pts.append(t)
        t += 50 if i % 3 else 200
    return _write_video(path, _square_frames(40, 128, 96), pts, Fraction(1, 1000), rate=10)


def audio_only(path: Path) -> Path:
    """An mp4 with one AAC audio stream and no video."""
    with av.open(str(path), "w", format="mp4") as out:
        s = out.add_stream("aac", rate=16000)
        s.layout = "mono"
        samples = (np.sin(np.arange(16000) / 10.0) * 0.3).astype(np.float32)[None, :]
        frame = av.AudioFrame.from_ndarray(samples, format="fltp", layout="mono")
        frame.sample_rate = 16000
        for packet in s.encode(frame):
            out.mux(packet)
        for packet in s.encode():
            out.mux(packet)
    return path


def bad_inputs(folder: Path, real_video: Path) -> dict[str, str]:
    """Write one file per bad-input class into ``folder``; returns {video_id: expected outcome}, where the
    outcome is "ok" or a phrase the error reason must contain."""
    folder.mkdir(parents=True, exist_ok=True)
    data = real_video.read_bytes()
    (folder / "zero_bytes.mp4").write_bytes(b"")
    (folder / "random_bytes.mp4").write_bytes(os.urandom(20000))
    (folder / "truncated.mp4").write_bytes(data[: len(data) // 3])
    (folder / "not_a_video.mp4").write_text("this is a text file, not a video\n" * 50)
    audio_only(folder / "audio_only.mp4")
    single_frame(folder / "single_frame.mp4")
    very_large_frames(folder / "very_large.mp4")
    variable_frame_rate(folder / "variable_rate.mp4")
    return {
        "zero_bytes": "cannot decode video",
        "random_bytes": "cannot decode video",
        "truncated": "cannot decode video",
        "not_a_video": "cannot decode video",
        "audio_only": "no video stream",
        "single_frame": "ok",
        "very_large": "ok",
        "variable_rate": "ok",
    }
