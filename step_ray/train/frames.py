"""The frames a question is asked about: ``n`` frames spread evenly over ``[start, end]`` of its video.

decord decodes (it seeks straight to the wanted frames); PyAV is the fallback for files decord cannot
open. Both resize to ``size`` x ``size`` RGB (the model's processor then sees exactly the pixel budget it
was configured for). Local paths are opened directly; other URIs (``s3://``, ``gs://``, ...) are read through
``pyarrow.fs`` into memory (clips are small). A missing or undecodable file raises :class:`FrameDecodeError`,
which the training data code counts and skips.
"""

from __future__ import annotations

import io
import os
from typing import Optional

import numpy as np
import torch  # noqa: F401  (import torch before decord: the other order segfaults with CUDA torch on CPU hosts)

from step_ray.video.decode import DecodeError, first_decoded


class FrameDecodeError(DecodeError):
    """The video is missing, unreadable, or has no frames in the asked span."""


def span_times(start: Optional[float], end: Optional[float], duration: float, n: int) -> list[float]:
    """``n`` times at the centres of ``n`` equal slices of ``[start, end]`` (clipped to the video)."""
    lo = 0.0 if start is None or not np.isfinite(start) else max(0.0, float(start))
    hi = duration if end is None or not np.isfinite(end) else min(float(end), duration)
    if hi <= lo:  # an empty or inverted span: the frame at its start, repeated
        lo = min(lo, max(duration - 1e-6, 0.0))
        return [lo] * n
    width = (hi - lo) / n
    return [lo + (i + 0.5) * width for i in range(n)]


def _open_source(uri: str) -> str | io.BytesIO:
    """A local path as is (``file://`` stripped); anything else read through pyarrow's filesystems."""
    if uri.startswith("file://"):
        uri = uri[len("file://"):]
    if "://" not in uri:
        if not os.path.isfile(uri):
            raise FrameDecodeError(f"no such video: {uri}")
        return uri
    try:
        from pyarrow import fs as pafs

        filesystem, path = pafs.FileSystem.from_uri(uri)
        with filesystem.open_input_file(path) as f:
            return io.BytesIO(f.read())
    except Exception as err:  # noqa: BLE001 - any storage error is an unreadable video
        raise FrameDecodeError(f"cannot read {uri}: {err}") from err


def _decode_decord(source: str | io.BytesIO, start, end, n: int, size: int) -> np.ndarray:
    import decord

    # One thread: a training worker owns one CPU; decord's default (all cores) oversubscribes it.
    reader = decord.VideoReader(source, width=size, height=size, num_threads=1)
    total = len(reader)
    fps = float(reader.get_avg_fps()) or 1.0
    if total <= 0:
        raise FrameDecodeError("video has no frames")
    times = span_times(start, end, total / fps, n)
    indices = [min(total - 1, max(0, int(round(t * fps - 0.5)))) for t in times]
    return reader.get_batch(indices).asnumpy()


def _decode_pyav(source: str | io.BytesIO, start, end, n: int, size: int) -> np.ndarray:
    import av

    if isinstance(source, io.BytesIO):
        source.seek(0)
    with av.open(source) as container:
        stream = container.streams.video[0]
        frames = [(float(f.time or 0.0), f) for f in container.decode(stream)]
        if not frames:
            raise FrameDecodeError("video has no frames")
        times_all = np.array([t for t, _ in frames])
        last = frames[-1][0]
        rate = float(stream.average_rate or 0) or (len(frames) / max(last, 1e-6))
        duration = last + 1.0 / rate
        out = []
        for t in span_times(start, end, duration, n):
            _, frame = frames[int(np.argmin(np.abs(times_all + 0.5 / rate - t)))]
            out.append(frame.to_ndarray(format="rgb24", width=size, height=size))
        return np.stack(out)


def read_frames(uri: str, start: Optional[float], end: Optional[float], n: int, size: int) -> np.ndarray:
    """``(n, size, size, 3)`` uint8 RGB frames from ``[start, end]`` seconds of ``uri`` (decord, then PyAV)."""
    source = _open_source(uri)

    def checked(decode):
        frames = decode(source, start, end, n, size)
        if frames.shape != (n, size, size, 3):
            raise FrameDecodeError(f"got frames of shape {frames.shape}")
        return frames.astype(np.uint8, copy=False)

    try:
        return first_decoded([("decord", lambda: checked(_decode_decord)), ("pyav", lambda: checked(_decode_pyav))],
                             uri)
    except DecodeError as err:
        raise FrameDecodeError(str(err)) from None
