"""Decode only the frames perception needs, as a stream: sampled at a configured rate, capped in pixels.

Memory never grows with the video's length: frames come out in chunks of :data:`DECODE_CHUNK`, already
shrunk to ``video.max_side``, and the caller keeps only what it derives from them (features, boxes).

Backends (``video.backend``):

- ``decord``: random access to the sampled indices (exact frames);
- ``pyav``: sequential decoding of every frame, the same frame choice; the fallback for files decord cannot open;
- ``pyav-refs``: sequential, but a packet that no other frame refers to (a non-reference B-frame: about half
  of a typical H.264 stream) is skipped unless sampling wants its frame, so the sampled frames are exactly
  those of full decoding, at the same times (the tests check it pixel for pixel); only the sampled frames are
  converted, straight to the small size;
- ``pyav-sparse``: reference frames only and no in-loop deblocking: the fastest, and lossy. A sampled frame
  that is skipped is replaced by the next decoded one (a frame or two later; its real time is reported), and
  pixels carry blocking (38-39 dB PSNR against full decoding on 720p footage). Never chosen by ``auto``;
- ``auto`` (default): ``pyav-refs`` when sampling at a third of the native rate or less, else ``decord``. It keeps a
  sparse path only where it agrees with full decoding: ``pyav-refs`` gives full decoding's own frames, so its
  graphs are full decoding's graphs (agreement 1 by construction); ``pyav-sparse``'s agreement was measured
  below 0.98 on real footage (``benchmarks/bench_decode_quality.py``), so ``auto`` does not use it.

All failing to open the file is a :class:`DecodeError` whose message gives every backend's reason, which the
stage turns into an error row; a failure in the middle of a file is a :class:`DecodeError` too, saying where.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, TypeVar

import torch  # noqa: F401  -- must be imported before decord: the other order segfaults with the CUDA torch wheel

import cv2
import numpy as np

from step_ray.config import VideoConfig
from step_ray.video.sampling import is_sampled, sample_indices, sampling_step


class DecodeError(RuntimeError):
    """A video cannot be decoded; the message is the reason shown in the errors table."""


T = TypeVar("T")
DECODE_CHUNK = 16  # frames decoded at full size at once
SPARSE_RATIO = 3.0  # auto: pyav-refs when the native rate is at least this many times the sample rate


@dataclass
class Chunk:
    """Consecutive sampled frames: RGB ``(n, H, W, 3)`` uint8 at the pixel cap, with their times (s)."""

    frames: np.ndarray
    times: list[float]


@dataclass
class VideoInfo:
    """What the container says about the video, and the size frames come out at."""

    native_fps: float
    num_frames: int  # frames in the file (0 if the header does not say)
    duration: float  # seconds
    width: int  # output width (after the pixel cap)
    height: int
    backend: str


@dataclass
class DecodedFrames:
    """Sampled RGB frames of one (short) video, all in memory: :func:`decode_sampled`'s result."""

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


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


@dataclass
class SampledStream:
    """An open video: :attr:`info` at once, then the sampled frames chunk by chunk (iterate once)."""

    info: VideoInfo
    _chunks: Iterator[Chunk]
    _close: Callable[[], None] = field(default=lambda: None)

    def __iter__(self) -> Iterator[Chunk]:
        try:
            yield from self._chunks
        except DecodeError:
            raise
        except Exception as err:  # noqa: BLE001 - a decoder failing mid-file: say where, as an error row can
            raise DecodeError(f"{self.info.backend}: decoding failed part-way: {_first_line(err)}") from err
        finally:
            self.close()

    def close(self) -> None:
        self._close()


def _primed(info: VideoInfo, chunks: Iterator[Chunk], close: Callable[[], None] = lambda: None) -> SampledStream:
    """Decode the first chunk now, so a file that opens but does not decode fails inside
    :func:`first_decoded` (and the next backend gets its turn) instead of in the middle of the stage."""
    first, ok = None, False
    try:
        first = next(chunks, None)
        ok = first is not None
    finally:
        if not ok:  # an empty stream or a decoder error: release the file before the next backend tries
            close()
    if first is None:
        raise DecodeError("no decodable video frames")

    def all_chunks() -> Iterator[Chunk]:
        yield first
        yield from chunks

    return SampledStream(info, all_chunks(), close)


def _open_decord(path: str, cfg: VideoConfig) -> SampledStream:
    import decord

    vr = decord.VideoReader(path, ctx=decord.cpu(0), num_threads=cfg.decode_threads)
    n = len(vr)
    fps = float(vr.get_avg_fps() or 0.0)
    if n <= 0:
        raise DecodeError("no video frames")
    if fps <= 0:
        raise DecodeError("the video stream declares no frame rate")
    h, w = vr[0].shape[:2]
    vr.seek(0)
    idx = sample_indices(n, fps, cfg.sample_fps, cfg.max_frames)
    tw, th = target_size(w, h, cfg.max_side)

    def times(part: list[int]) -> list[float]:
        """``index / fps`` for constant-rate files; the frames' own timestamps where the rate varies."""
        stamps = vr.get_frame_timestamp(part)[:, 0]
        nominal = [j / fps for j in part]
        if np.abs(stamps - np.array(nominal)).max(initial=0.0) > 0.5 / fps:
            return [float(x) for x in stamps]
        return nominal

    def chunks() -> Iterator[Chunk]:
        for i in range(0, len(idx), DECODE_CHUNK):
            part = idx[i:i + DECODE_CHUNK]
            yield Chunk(_resize(vr.get_batch(part).asnumpy(), cfg.max_side), times(part))

    return _primed(VideoInfo(fps, n, n / fps, tw, th, "decord"), chunks())


def _open_pyav(path: str, cfg: VideoConfig, mode: str = "pyav") -> SampledStream:
    """PyAV decoding. ``mode``: ``pyav`` (every frame), ``pyav-refs`` (every reference frame and every sampled
    frame: the others are skipped at the packet, so the sampled frames are exactly full decoding's) or
    ``pyav-sparse`` (reference frames only, no deblocking: a sampled non-reference frame is replaced by the
    next decoded one)."""
    import av

    container = av.open(path)
    stream = container.streams.video[0] if container.streams.video else None
    fps = float(stream.average_rate or stream.guessed_rate or 0.0) if stream is not None else 0.0
    problem = ("the file has no video stream" if stream is None
               else "the video stream declares no frame rate" if fps <= 0
               else "the video stream declares no frame size" if not stream.width or not stream.height else None)
    if problem:
        container.close()
        raise DecodeError(problem)
    n = int(stream.frames or 0)
    if not n and stream.duration is not None and stream.time_base:
        n = int(round(float(stream.duration * stream.time_base) * fps))
    elif not n and container.duration:
        n = int(round(container.duration / 1e6 * fps))
    tw, th = target_size(stream.width, stream.height, cfg.max_side)
    step = sampling_step(fps, cfg.sample_fps)
    if cfg.max_frames and n:  # the cap lowers the rate: sample ``max_frames`` frames over the whole file
        step = max(step, n / cfg.max_frames)
    sparse = mode != "pyav"
    if mode == "pyav-sparse":
        stream.codec_context.skip_frame = "NONREF"
        stream.codec_context.options = {"skip_loop_filter": "all"}
    if cfg.decode_threads != 1 and not sparse:
        # Frame threading pays off when every frame is decoded; with non-reference frames skipped it made
        # decoding slower here (1280x720 H.264: 55 vs 74 video-s/s single-threaded), so sparse mode runs on one
        # thread, which also leaves the other cores to the other actors of the node.
        stream.thread_type = "AUTO"
        stream.codec_context.thread_count = cfg.decode_threads  # 0: one per core

    def decoded() -> Iterator[Any]:
        if mode != "pyav-refs":
            yield from container.decode(stream)
            return
        # Per packet: decode it unless no other frame refers to it and sampling does not want it (the
        # decoder's skip setting is read as each packet is sent; packets without a timestamp are decoded).
        ctx, base = stream.codec_context, stream.time_base
        for packet in container.demux(stream):
            wanted = packet.pts is None or not base or is_sampled(int(round(float(packet.pts * base) * fps)), step)
            ctx.skip_frame = "DEFAULT" if wanted else "NONREF"
            yield from packet.decode()

    def chunks() -> Iterator[Chunk]:
        frames, times, kept = [], [], 0
        k = 0  # the k-th wanted frame is index floor(k * step); take the first decoded frame at or after it
        for n_decoded, frame in enumerate(decoded()):
            # Frame times come from the timestamps (variable frame rate files); index = time x average rate.
            t = float(frame.time) if frame.time is not None else n_decoded / fps
            index = int(round(t * fps))
            if index < np.floor(k * step + 1e-9):
                continue
            while np.floor(k * step + 1e-9) <= index:
                k += 1
            if abs(t - index / fps) < 0.25 / fps:
                t = index / fps  # constant rate: exactly the time the decord path and the ground truth use
            if cfg.max_frames and kept >= cfg.max_frames:
                break
            frames.append(frame.to_ndarray(format="rgb24", width=tw, height=th, interpolation="AREA"))
            times.append(t)
            kept += 1
            if len(frames) == DECODE_CHUNK:
                yield Chunk(np.stack(frames), times)
                frames, times = [], []
        if frames:
            yield Chunk(np.stack(frames), times)
        if not kept:
            raise DecodeError("no decodable video frames")

    return _primed(VideoInfo(fps, n, (n / fps) if n else 0.0, tw, th, mode), chunks(), container.close)


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


def _probe(path: str) -> float:
    """The declared frame rate from the container header (0 if unknown or unreadable by PyAV); a file that
    opens but holds no video stream fails here with that reason rather than every decoder's own wording."""
    import av

    try:
        with av.open(path) as c:
            streams, audio = c.streams.video, bool(c.streams.audio)
            fps = float(streams[0].average_rate or streams[0].guessed_rate or 0.0) if streams else None
    except (av.FFmpegError, OSError, ValueError):  # not readable by PyAV: the decoders below give the reason
        return 0.0
    if fps is None:
        raise DecodeError("cannot decode video: the file has no video stream" + (" (audio only)" if audio else ""))
    return fps


def open_sampled(path: str, cfg: VideoConfig) -> SampledStream:
    """Open ``path`` for sampled decoding (see the module docstring for the backend choice); raise
    :class:`DecodeError` with every backend's reason if none can open it."""
    fps = _probe(path)
    backend = cfg.backend
    if backend == "auto":  # (see the module docstring for why auto never picks the lossy pyav-sparse)
        backend = "pyav-refs" if fps and fps >= SPARSE_RATIO * cfg.sample_fps else "decord"
    attempts = [("pyav", lambda: _open_pyav(path, cfg))]
    if backend == "decord":
        attempts.insert(0, ("decord", lambda: _open_decord(path, cfg)))
    elif backend in ("pyav-sparse", "pyav-refs"):
        attempts.insert(0, (backend, lambda: _open_pyav(path, cfg, backend)))
        attempts.append(("decord", lambda: _open_decord(path, cfg)))
    return first_decoded(attempts, "video")


def decode_sampled(path: str, cfg: VideoConfig) -> DecodedFrames:
    """All sampled frames of ``path`` in memory (short videos, tests, tools); the stage streams instead."""
    stream = open_sampled(path, cfg)
    chunks = list(stream)
    info = stream.info
    frames = np.concatenate([c.frames for c in chunks])
    times = [t for c in chunks for t in c.times]
    return DecodedFrames(frames, times, info.native_fps, info.num_frames, info.duration, info.backend)
