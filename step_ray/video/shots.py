"""Visual splitting: sampled frames -> shots (clips) with keyframes.

A cut is where the colour histograms of two consecutive sampled frames differ by more than
``video.shot_threshold`` (Bhattacharyya distance). Keyframes are spread evenly over each shot.
"""

from __future__ import annotations

import cv2
import numpy as np

from step_ray.config import VideoConfig
from step_ray.stsg.tracks import Clip
from step_ray.video.sampling import keyframe_times


def frame_histogram(frame: np.ndarray) -> np.ndarray:
    """A normalised 8x8x8 HSV histogram of an RGB frame, computed on a small copy (cuts need no detail)."""
    small = cv2.resize(frame, (64, 48), interpolation=cv2.INTER_AREA)
    hsv = cv2.cvtColor(small, cv2.COLOR_RGB2HSV)
    hist = cv2.calcHist([hsv], [0, 1, 2], None, [8, 8, 8], [0, 180, 0, 256, 0, 256])
    return cv2.normalize(hist, hist).flatten()


def cut_scores(frames: np.ndarray) -> list[float]:
    """Distance between each sampled frame and the one before it (the first frame scores 0)."""
    hists = [frame_histogram(f) for f in frames]
    return [0.0] + [float(cv2.compareHist(a, b, cv2.HISTCMP_BHATTACHARYYA)) for a, b in zip(hists, hists[1:])]


def split_shots(frames: np.ndarray, times: list[float], cfg: VideoConfig) -> list[Clip]:
    """Clips covering the sampled frames in order; each with its frame times and keyframes."""
    if len(times) == 0:
        return []
    scores = cut_scores(frames)
    starts = [0] + [i for i in range(1, len(times)) if scores[i] > cfg.shot_threshold]
    clips = []
    for c, (a, b) in enumerate(zip(starts, starts[1:] + [len(times)])):
        ft = list(times[a:b])
        clips.append(Clip(index=c, start=ft[0], end=ft[-1], frame_times=ft,
                          keyframe_times=keyframe_times(ft, ft[0], ft[-1], cfg.keyframe_fps)))
    return clips
