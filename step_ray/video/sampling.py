"""Which frames to look at: the sampling rule shared by the decoder and the synthetic ground truth."""

from __future__ import annotations

import numpy as np


def sampling_step(native_fps: float, sample_fps: float) -> float:
    """Frames of the file per sampled frame (>= 1: never sample above the native rate)."""
    return max(1.0, native_fps / sample_fps) if native_fps > 0 else 1.0


def is_sampled(index: int, step: float) -> bool:
    """Whether frame ``index`` is one of ``floor(k * step)``: lets a sequential decoder pick the same frames."""
    k = int(np.ceil((index - 1e-9) / step))
    return int(np.floor(k * step + 1e-9)) == index


def thin(items: list, max_items: int) -> list:
    """At most ``max_items`` of ``items``, evenly spread, first and last kept."""
    if len(items) <= max_items:
        return list(items)
    keep = np.unique(np.linspace(0, len(items) - 1, max_items).round().astype(int))
    return [items[i] for i in keep]


def sample_indices(num_frames: int, native_fps: float, sample_fps: float, max_frames: int) -> list[int]:
    """Frame indices at ``sample_fps`` (never above the native rate), thinned evenly to at most ``max_frames``
    (0: no cap)."""
    if num_frames <= 0:
        return []
    step = sampling_step(native_fps, sample_fps)
    idx = np.unique(np.floor(np.arange(0.0, num_frames, step) + 1e-9).astype(int))
    kept = [int(i) for i in idx if i < num_frames]
    return thin(kept, max_frames) if max_frames else kept


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
