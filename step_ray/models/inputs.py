"""The frames the model sees for a QRA row, and the vision controls that tell seeing from guessing.

Frames come from the moments the question names (its record's ``times``), one slot of the model's temporal
patch per moment (:func:`step_ray.video.frames.question_times`), else spread over the row's span.

A *vision control* asks the same questions without the evidence: ``blank`` gives black frames, ``shuffled``
the same moments of another video (:func:`shuffled_sources`). A model whose accuracy does not drop under a
control answers from text priors, not from what it sees.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from typing import Any, Literal, Mapping, Optional, Sequence

import numpy as np

from step_ray.config import ModelConfig
from step_ray.video.frames import FrameDecodeError, question_times, read_frames

VisionControl = Literal["real", "blank", "shuffled"]
VISION_CONTROLS: tuple[str, ...] = ("real", "blank", "shuffled")


def _num(x: Any) -> Optional[float]:
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return v if np.isfinite(v) else None


def frame_times(row: Mapping[str, Any], model_cfg: ModelConfig) -> Optional[list[float]]:
    """The ``model.frames`` times of a row's frames, or None to spread them over its span."""
    from step_ray.models.families import family_of

    times = row.get("times")
    if times is None or len(times) == 0:
        return None
    return question_times(list(times), model_cfg.frames, family_of(model_cfg).temporal_patch)


def frames_for_row(row: Mapping[str, Any], model_cfg: ModelConfig, vision: VisionControl = "real",
                   uri: Optional[str] = None) -> np.ndarray:
    """``(model.frames, frame_size, frame_size, 3)`` uint8 frames of ``row`` (``uri`` overrides its video:
    the ``shuffled`` control); black frames for ``blank`` (the video is still read, so a question whose video
    is missing is skipped under every control alike)."""
    frames = read_frames(str(uri or row["video_uri"]), _num(row.get("start")), _num(row.get("end")),
                         model_cfg.frames, model_cfg.frame_size, times=frame_times(row, model_cfg))
    if vision == "blank":
        return np.zeros_like(frames)
    return frames


class FrameCache:
    """Decoded frames by (video, times, size), least recently used first out, within ``max_bytes``.

    Training reads every question once per pass, and the questions of one video often share its moments:
    decoding is most of the cost of encoding a row (the processor is a few milliseconds), so the encode actors
    keep what they decoded for the next pass. ``max_bytes`` 0 disables it.
    """

    def __init__(self, max_bytes: int):
        self.max_bytes = max(0, int(max_bytes))
        self.items: OrderedDict[tuple, np.ndarray] = OrderedDict()
        self.bytes = 0
        self.hits = self.misses = 0

    def get(self, row: Mapping[str, Any], model_cfg: ModelConfig) -> np.ndarray:
        times = frame_times(row, model_cfg)
        key = (str(row["video_uri"]), None if times is None else tuple(times), _num(row.get("start")),
               _num(row.get("end")) if times is None else None, model_cfg.frames, model_cfg.frame_size)
        frames = self.items.get(key)
        if frames is not None:
            self.items.move_to_end(key)
            self.hits += 1
            return frames
        self.misses += 1
        frames = frames_for_row(row, model_cfg)
        if self.max_bytes and frames.nbytes <= self.max_bytes:
            self.items[key] = frames
            self.bytes += frames.nbytes
            while self.bytes > self.max_bytes:
                _, old = self.items.popitem(last=False)
                self.bytes -= old.nbytes
        return frames


def shuffled_sources(rows: Sequence[Mapping[str, Any]], seed: int) -> list[Optional[str]]:
    """For each row, the video of another row (a seeded derangement over the distinct videos), so the
    ``shuffled`` control shows real frames of the wrong video; None when there is only one video."""
    videos = sorted({str(r["video_uri"]) for r in rows})
    if len(videos) < 2:
        return [None] * len(rows)
    order = sorted(videos, key=lambda v: hashlib.sha256(f"{seed}\x1f{v}".encode()).hexdigest())
    other = {v: order[(i + 1) % len(order)] for i, v in enumerate(order)}  # a cycle: nobody keeps its own
    return [other[str(r["video_uri"])] for r in rows]


__all__ = ["FrameCache", "FrameDecodeError", "VISION_CONTROLS", "VisionControl", "frame_times", "frames_for_row",
           "shuffled_sources"]
