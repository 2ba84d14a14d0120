"""A shot as visual splitting delivers it (:mod:`step_ray.video.shots`); perception and graph building read it."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Clip:
    """A shot: ``start`` / ``end`` are the times (s) of its first and last sampled frame, both included; with
    the times of all its sampled frames and of its keyframes."""

    index: int
    start: float
    end: float
    frame_times: list[float]
    keyframe_times: list[float]
