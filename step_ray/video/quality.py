"""How close a decoding backend's frames are to full decoding: the PSNR of each sampled frame against the frame
a full decode gives at the same timestamp, and how late (in frames) it comes after the one sampling wanted.

The reference decodes every frame of the file with PyAV (non-reference frames and the in-loop deblocking
filter included) and converts the frames at the backend's own timestamps to the same output size with the same
conversion (libswscale, area), so what differs is the decoding alone. The PSNR is taken at the size perception
sees (after ``video.max_side``); identical frames count as :data:`PSNR_IDENTICAL` dB.
"""

from __future__ import annotations

import bisect
import dataclasses
from dataclasses import dataclass
from typing import Optional

import numpy as np

from step_ray.config import VideoConfig
from step_ray.video.decode import open_sampled
from step_ray.video.sampling import sample_indices

#: The PSNR given to a frame identical to the reference (a finite stand-in for infinity; JSON has no inf).
PSNR_IDENTICAL = 100.0


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """Peak signal-to-noise ratio (dB) of two uint8 images of one shape."""
    if a.shape != b.shape:
        raise ValueError(f"frames of different shapes: {a.shape} vs {b.shape}")
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return PSNR_IDENTICAL if mse == 0 else min(PSNR_IDENTICAL, 10.0 * np.log10(255.0 ** 2 / mse))


@dataclass
class FrameQuality:
    """One video decoded by one backend, against full decoding at the same timestamps."""

    backend: str
    frames: int
    mean_psnr: float  # dB over the sampled frames (identical frames: PSNR_IDENTICAL)
    min_psnr: float
    identical: int  # frames equal to the reference, pixel for pixel
    late_frames_mean: float  # how many frames after the wanted one the returned frame is
    late_frames_max: int

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def reference_frames(path: str, indices: set[int], width: int, height: int) -> dict[int, np.ndarray]:
    """Full decoding (every frame, deblocking on) of the frames at ``indices``, at ``width`` x ``height``."""
    import av

    out: dict[int, np.ndarray] = {}
    with av.open(path) as container:
        stream = container.streams.video[0]
        fps = float(stream.average_rate or stream.guessed_rate)
        for n, frame in enumerate(container.decode(stream)):
            index = int(round(float(frame.time) * fps)) if frame.time is not None else n
            if index in indices:
                out[index] = frame.to_ndarray(format="rgb24", width=width, height=height, interpolation="AREA")
            if len(out) == len(indices):
                break
    return out


def frame_quality(path: str, cfg: VideoConfig, backend: Optional[str] = None) -> FrameQuality:
    """Decode ``path`` as ``cfg`` says (``backend`` overrides ``cfg.backend``) and compare every sampled frame
    with full decoding at its timestamp."""
    if backend is not None:
        cfg = dataclasses.replace(cfg, backend=backend)
    stream = open_sampled(path, cfg)
    info = stream.info
    frames, indices = [], []
    for chunk in stream:
        frames += list(chunk.frames)
        indices += [int(round(t * info.native_fps)) for t in chunk.times]
    ref = reference_frames(path, set(indices), info.width, info.height)
    missing = sorted(set(indices) - set(ref))
    if missing:
        raise ValueError(f"{path}: full decoding has no frame at indices {missing[:5]}")
    scores = [psnr(f, ref[i]) for f, i in zip(frames, indices)]
    wanted = sample_indices(info.num_frames or max(indices) + 1, info.native_fps, cfg.sample_fps, cfg.max_frames)
    late = [i - wanted[k - 1] if (k := bisect.bisect_right(wanted, i)) else 0 for i in indices]
    return FrameQuality(info.backend, len(frames), float(np.mean(scores)), float(np.min(scores)),
                        int(sum(s >= PSNR_IDENTICAL for s in scores)), float(np.mean(late)), int(max(late)))
