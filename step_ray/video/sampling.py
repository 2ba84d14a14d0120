"""Which frames to look at: the sampling rule shared by the decoder and the synthetic ground truth."""

from __future__ import annotations

import numpy as np


def sample_indices(num_frames: int, native_fps: float, sample_fps: float, max_frames: int) -> list[int]:
    """Frame indices at ``sample_fps`` (never above the native rate), thinned evenly to at most ``max_frames``."""
    if num_frames <= 0:
        return []
    step = max(1.0, native_fps / sample_fps) if native_fps > 0 else 1.0
    idx = np.unique(np.floor(np.arange(0.0, num_frames, step) + 1e-9).astype(int))
    if len(idx) > max_frames:
        idx = idx[np.unique(np.linspace(0, len(idx) - 1, max_frames).round().astype(int))]
    return [int(i) for i in idx if i < num_frames]


def keyframe_times(frame_times: list[float], start: float, end: float, keyframe_fps: float) -> list[float]:
    """Keyframes of a shot: the sampled frame nearest the centre of each of ``ceil(len * keyframe_fps)`` equal
    slices of ``[start, end]`` (at least one), without repeats."""
    inside = [t for t in frame_times if start - 1e-9 <= t <= end + 1e-9]
    if not inside:
        return []
    count = max(1, int(np.ceil((end - start) * keyframe_fps - 1e-9)))
    width = (end - start) / count
    chosen = []
    for i in range(count):
        target = start + (i + 0.5) * width
        t = min(inside, key=lambda x: (abs(x - target), x))
        if t not in chosen:
            chosen.append(t)
    return sorted(chosen)
