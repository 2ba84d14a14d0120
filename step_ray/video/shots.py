"""Visual splitting: a stream of sampled frames -> shots (clips) with keyframes chosen by clustering.

Shots: a cut is where the colour histograms of two consecutive sampled frames differ by more than
``video.shot_threshold`` (Bhattacharyya distance).

Keyframes, in the style of Hecate (Song et al., "To Click or Not To Click", 2016): each sampled frame of a shot
gets a small feature vector (an HSV colour histogram, an edge-orientation histogram weighted by gradient
strength, and its relative time, so clusters also spread over the shot); blurred frames are set aside; the
rest are clustered with k-means, ``k = ceil(shot length x video.keyframe_fps)`` clamped to
``[1, video.max_keyframes_per_shot]``, and each cluster gives the frame nearest its centre. Only the feature vectors
are kept (a few hundred floats per frame), never the frames, so a long shot costs little memory.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import cv2
import numpy as np

from step_ray.config import VideoConfig
from step_ray.video.clips import Clip

FEATURE_SIZE = (96, 64)  # (w, h) the features are computed at: cuts and clusters need no detail
TIME_WEIGHT = 0.5  # weight of the relative-time feature against the (unit-norm) appearance features
KMEANS_ITERATIONS = 20


def frame_features(frame: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """(colour histogram for cuts, appearance vector for clustering, sharpness) of one RGB frame."""
    small = cv2.resize(frame, FEATURE_SIZE, interpolation=cv2.INTER_AREA)
    hsv = cv2.cvtColor(small, cv2.COLOR_RGB2HSV)
    hist = cv2.calcHist([hsv], [0, 1, 2], None, [8, 8, 8], [0, 180, 0, 256, 0, 256])
    cut_hist = cv2.normalize(hist, hist).flatten()
    coarse = cv2.calcHist([hsv], [0, 1, 2], None, [6, 3, 3], [0, 180, 0, 256, 0, 256]).flatten()
    gray = cv2.cvtColor(small, cv2.COLOR_RGB2GRAY).astype(np.float32)
    gx, gy = cv2.Sobel(gray, cv2.CV_32F, 1, 0), cv2.Sobel(gray, cv2.CV_32F, 0, 1)
    mag, ang = cv2.cartToPolar(gx, gy, angleInDegrees=True)
    edges, _ = np.histogram(ang % 180, bins=8, range=(0, 180), weights=mag)
    appearance = np.concatenate([coarse / max(coarse.sum(), 1e-6), edges / max(edges.sum(), 1e-6)])
    sharpness = float(cv2.Laplacian(gray, cv2.CV_32F).var())
    return cut_hist, appearance.astype(np.float32), sharpness


def cut_distance(a: np.ndarray, b: np.ndarray) -> float:
    return float(cv2.compareHist(a, b, cv2.HISTCMP_BHATTACHARYYA))


def kmeans(x: np.ndarray, k: int, iterations: int = KMEANS_ITERATIONS) -> np.ndarray:
    """Cluster labels of the rows of ``x`` (in time order). Deterministic: the centres start at evenly spaced
    rows, which for a shot means evenly spaced in time, and a lone odd frame cannot grab a centre at the
    start the way farthest-point seeding lets it."""
    n = len(x)
    k = min(k, n)
    c = x[np.unique(np.linspace(0, n - 1, k).round().astype(int))].copy()
    labels = np.full(n, -1)
    for _ in range(iterations):
        new = np.linalg.norm(x[:, None, :] - c[None, :, :], axis=2).argmin(axis=1)
        if np.array_equal(new, labels):
            break
        labels = new
        for j in range(len(c)):
            members = x[labels == j]
            if len(members):
                c[j] = members.mean(axis=0)
    return labels


def choose_keyframes(times: list[float], appearance: np.ndarray, sharpness: np.ndarray, count: int) -> list[float]:
    """One keyframe per k-means cluster of a shot's frames: the member nearest the centre. Blurred frames
    (sharpness under half the shot's median) are left out first, as long as enough frames remain."""
    if not times:
        return []
    span = max(times[-1] - times[0], 1e-6)
    rel = np.array([(t - times[0]) / span for t in times], dtype=np.float32)[:, None]
    x = np.concatenate([appearance, TIME_WEIGHT * rel], axis=1)
    keep = np.flatnonzero(sharpness >= 0.5 * np.median(sharpness))
    if len(keep) < count:
        keep = np.arange(len(times))
    labels = kmeans(x[keep], count)
    chosen = []
    for j in sorted(set(labels.tolist())):
        members = keep[labels == j]
        centre = x[members].mean(axis=0)
        chosen.append(times[int(members[np.argmin(np.linalg.norm(x[members] - centre, axis=1))])])
    return sorted(set(chosen))


def keyframe_count(start: float, end: float, cfg: VideoConfig) -> int:
    return max(1, min(cfg.max_keyframes_per_shot, int(math.ceil((end - start) * cfg.keyframe_fps - 1e-9))))


@dataclass
class ShotSplitter:
    """Feed sampled frames in order; :meth:`add` says whether a frame starts a new shot, :meth:`finish_shot`
    closes the current one into a :class:`Clip`."""

    cfg: VideoConfig
    clips: list[Clip] = field(default_factory=list)
    _times: list[float] = field(default_factory=list)
    _appearance: list[np.ndarray] = field(default_factory=list)
    _sharpness: list[float] = field(default_factory=list)
    _last_hist: np.ndarray | None = None

    def add(self, frame: np.ndarray, time: float) -> bool:
        """Take one frame; True if it starts a new shot (the caller first closes the previous one with
        :meth:`finish_shot`, which this has already done)."""
        hist, appearance, sharpness = frame_features(frame)
        cut = self._last_hist is not None and cut_distance(self._last_hist, hist) > self.cfg.shot_threshold
        if cut:
            self.finish_shot()
        self._last_hist = hist
        self._times.append(time)
        self._appearance.append(appearance)
        self._sharpness.append(sharpness)
        return cut

    def finish_shot(self) -> Clip | None:
        """Close the current shot (its keyframes by clustering); None if it has no frames."""
        if not self._times:
            return None
        times = self._times
        kfs = choose_keyframes(times, np.stack(self._appearance), np.array(self._sharpness),
                               keyframe_count(times[0], times[-1], self.cfg))
        clip = Clip(index=len(self.clips), start=times[0], end=times[-1], frame_times=list(times), keyframe_times=kfs)
        self.clips.append(clip)
        self._times, self._appearance, self._sharpness = [], [], []
        return clip


def split_shots(frames: np.ndarray, times: list[float], cfg: VideoConfig) -> list[Clip]:
    """Clips covering the sampled frames in order (frames all in memory: tests and tools)."""
    splitter = ShotSplitter(cfg)
    for frame, t in zip(frames, times):
        splitter.add(frame, t)
    splitter.finish_shot()
    return splitter.clips
