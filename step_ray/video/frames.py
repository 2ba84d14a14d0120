"""The frames a question is asked about, decoded at the moments it names.

A QRA record carries ``times``: the moments its reasoning path visits (the keyframes of its relation hops,
its events' times, in order). :func:`question_times` turns them into the model's ``n`` frames: each moment gets
a *slot* of ``group`` identical frames (``group`` is the model's temporal patch: Qwen-VL merges frame pairs
into one time slot, so a pair of two different moments would blend them), moments beyond the slots are thinned
evenly (first and last kept), and spare slots repeat the moments in order. A record without times (older data,
public benchmarks) gets ``n`` frames spread evenly over its ``[start, end]`` span.

decord decodes (it seeks straight to the wanted frames); PyAV is the fallback for files decord cannot open.
Both resize to ``size`` x ``size`` RGB (the model's processor then sees exactly the pixel budget it was
configured for). Local paths are opened directly; other URIs (``s3://``, ``gs://``, ...) are read through
``pyarrow.fs`` into memory (clips are small). A missing or undecodable file raises :class:`FrameDecodeError`,
which training counts and skips and evaluation reports as a skipped question.
"""

from __future__ import annotations

import io
import os
from typing import Optional, Sequence

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


def question_times(times: Optional[Sequence[float]], n: int, group: int = 1) -> Optional[list[float]]:
    """The ``n`` frame times for a question that names ``times`` (see the module docstring); None when it
    names none. ``n`` must be a multiple of ``group``."""
    moments = sorted({round(float(t), 6) for t in (times or []) if t is not None and np.isfinite(float(t))})
    if not moments:
        return None
    group = max(1, int(group))
    slots = max(1, n // group)
    if len(moments) > slots:  # thin evenly, keeping the first and the last moment
        idx = np.unique(np.round(np.linspace(0, len(moments) - 1, slots)).astype(int))
        moments = [moments[i] for i in idx]
    # Spread the slots over the moments in order: the earlier moments get the extra slots first.
    per = [slots // len(moments) + (1 if i < slots % len(moments) else 0) for i in range(len(moments))]
    out = [t for t, k in zip(moments, per) for _ in range(k * group)]
    return out + [out[-1]] * (n - len(out))


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


def _decode_decord(source: str | io.BytesIO, start, end, n: int, size: int,
                   at: Optional[list[float]] = None) -> np.ndarray:
    import decord

    # One thread: a training worker owns one CPU; decord's default (all cores) oversubscribes it.
    reader = decord.VideoReader(source, width=size, height=size, num_threads=1)
    total = len(reader)
    fps = float(reader.get_avg_fps()) or 1.0
    if total <= 0:
        raise FrameDecodeError("video has no frames")
    times = at if at is not None else span_times(start, end, total / fps, n)
    # The frame shown at time t: the last one that started at or before t.
    indices = [min(total - 1, max(0, int(np.floor(t * fps + 1e-6)))) for t in times] if at is not None else \
        [min(total - 1, max(0, int(round(t * fps - 0.5)))) for t in times]
    return reader.get_batch(indices).asnumpy()


def _decode_pyav(source: str | io.BytesIO, start, end, n: int, size: int,
                 at: Optional[list[float]] = None) -> np.ndarray:
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
        if at is not None:
            for t in at:
                i = int(np.searchsorted(times_all, t + 1e-6, side="right")) - 1  # shown at t
                out.append(frames[max(0, i)][1].to_ndarray(format="rgb24", width=size, height=size))
        else:
            for t in span_times(start, end, duration, n):
                _, frame = frames[int(np.argmin(np.abs(times_all + 0.5 / rate - t)))]
                out.append(frame.to_ndarray(format="rgb24", width=size, height=size))
        return np.stack(out)


def read_frames(uri: str, start: Optional[float], end: Optional[float], n: int, size: int,
                times: Optional[Sequence[float]] = None) -> np.ndarray:
    """``(n, size, size, 3)`` uint8 RGB frames of ``uri`` (decord, then PyAV): at ``times`` (exactly ``n`` of
    them, e.g. from :func:`question_times`), else spread evenly over ``[start, end]`` seconds."""
    at = [float(t) for t in times] if times is not None else None
    if at is not None and len(at) != n:
        raise ValueError(f"read_frames: {len(at)} times for {n} frames")
    source = _open_source(uri)

    def checked(decode):
        frames = decode(source, start, end, n, size, at)
        if frames.shape != (n, size, size, 3):
            raise FrameDecodeError(f"got frames of shape {frames.shape}")
        return frames.astype(np.uint8, copy=False)

    try:
        return first_decoded([("decord", lambda: checked(_decode_decord)), ("pyav", lambda: checked(_decode_pyav))],
                             uri)
    except DecodeError as err:
        raise FrameDecodeError(str(err)) from None
