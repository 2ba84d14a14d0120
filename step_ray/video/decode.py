"""Decode only the frames perception needs: sampled at a configured rate, capped in count and in pixels.

decord is the fast path (random access to the sampled indices); PyAV is the fallback for files decord
cannot open. Both failing is a :class:`DecodeError` whose message says why, which the stage turns into an
error row.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, TypeVar

import torch  # noqa: F401  -- must be imported before decord: the other order segfaults with the CUDA torch wheel

import cv2
import numpy as np

from step_ray.config import VideoConfig
from step_ray.video.sampling import is_sampled, sample_indices, sampling_step, thin


class DecodeError(RuntimeError):
    """A video cannot be decoded; the message is the reason shown in the errors table."""


T = TypeVar("T")
DECODE_CHUNK = 16  # frames decoded at full size at once


@dataclass
class DecodedFrames:
    """Sampled RGB frames of one video, already resized to the pixel cap."""

    frames: np.ndarray  # (N, H, W, 3) uint8, RGB
    times: list[float]  # seconds, one per frame
    native_fps: float
    num_frames: int  # frames in the file
    duration: float  # seconds
    backend: str

    @property
    def height(self) -> int:
        return int(self.frames.shape[1])

    @property
    def width(self) -> int:
        return int(self.frames.shape[2])


def target_size(width: int, height: int, max_side: int) -> tuple[int, int]:
    """(w, h) with the longer side at most ``max_side``, both even (H.264 and resizers like even sizes)."""
    scale = min(1.0, max_side / float(max(width, height)))
    w = max(2, int(round(width * scale / 2)) * 2)
    h = max(2, int(round(height * scale / 2)) * 2)
    return w, h


def _resize(frames: np.ndarray, max_side: int) -> np.ndarray:
    n, h, w, _ = frames.shape
    tw, th = target_size(w, h, max_side)
    if (tw, th) == (w, h):
        return np.ascontiguousarray(frames)
    return np.stack([cv2.resize(f, (tw, th), interpolation=cv2.INTER_AREA) for f in frames])


def _decode_decord(path: str, cfg: VideoConfig) -> DecodedFrames:
    import decord

    vr = decord.VideoReader(path, ctx=decord.cpu(0), num_threads=1)
    n = len(vr)
    fps = float(vr.get_avg_fps() or 0.0)
    if n <= 0:
        raise DecodeError("no video frames")
    if fps <= 0:
        raise DecodeError("the video stream declares no frame rate")
    idx = sample_indices(n, fps, cfg.sample_fps, cfg.max_frames)
    # Decode in small chunks and shrink each at once: max_frames full-size 4K frames would not fit in memory.
    frames = np.concatenate([_resize(vr.get_batch(idx[i:i + DECODE_CHUNK]).asnumpy(), cfg.max_side)
                             for i in range(0, len(idx), DECODE_CHUNK)])
    return DecodedFrames(frames, [i / fps for i in idx], fps, n, n / fps, "decord")


def _decode_pyav(path: str, cfg: VideoConfig) -> DecodedFrames:
    import av

    with av.open(path) as container:
        if not container.streams.video:
            raise DecodeError("the file has no video stream")
        stream = container.streams.video[0]
        fps = float(stream.average_rate or stream.guessed_rate or 0.0)
        if fps <= 0:
            raise DecodeError("the video stream declares no frame rate")
        # With a frame count in the header, keep exactly the frames the decord path picks. Without one, keep
        # the sampled frames and, whenever they grow past twice the cap, drop every other one and sample half
        # as often from there on: memory stays bounded however long the video is.
        wanted = set(sample_indices(stream.frames, fps, cfg.sample_fps, cfg.max_frames)) if stream.frames else None
        step = sampling_step(fps, cfg.sample_fps)
        frames, indices, n = [], [], 0
        for frame in container.decode(stream):
            if (n in wanted) if wanted is not None else is_sampled(n, step):
                frames.append(_resize(frame.to_ndarray(format="rgb24")[None], cfg.max_side)[0])
                indices.append(n)
                if len(frames) > 2 * cfg.max_frames:
                    frames, indices, step = frames[::2], indices[::2], step * 2
            n += 1
    if not frames:
        raise DecodeError("no decodable video frames")
    keep = thin(list(range(len(frames))), cfg.max_frames)
    return DecodedFrames(np.stack([frames[i] for i in keep]), [indices[i] / fps for i in keep], fps, n, n / fps, "pyav")


def first_decoded(attempts: list[tuple[str, Callable[[], T]]], what: str) -> T:
    """Run each ``(name, decode)`` in turn and return the first result; if all fail, raise one
    :class:`DecodeError` that gives every decoder's reason (what a user needs to see in an error row)."""
    errors = []
    for name, decode in attempts:
        try:
            return decode()
        except Exception as err:  # noqa: BLE001 - decoders raise many types; each becomes part of the reason
            text = str(err).strip().splitlines()[0] if str(err).strip() else ""
            errors.append(f"{name}: {text}" if isinstance(err, DecodeError) else f"{name}: {type(err).__name__}: {text}")
    raise DecodeError(f"cannot decode {what} (" + "; ".join(errors) + ")")


def decode_sampled(path: str, cfg: VideoConfig) -> DecodedFrames:
    """Decode the sampled frames of ``path``; raise :class:`DecodeError` with a reason if no backend can."""
    attempts = [("pyav", lambda: _decode_pyav(path, cfg))]
    if cfg.backend == "decord":
        attempts.insert(0, ("decord", lambda: _decode_decord(path, cfg)))
    return first_decoded(attempts, "video")
