"""Identities across frames from an ultralytics tracker (ByteTrack or BoT-SORT), fed by any detector.

The tracker's state belongs to one shot of one video: a :class:`ClipTracker` holds a fresh tracker per clip, so
identities never leak between videos or across a hard cut (``same_as`` links clips later, by appearance).
"""

from __future__ import annotations

from collections import Counter, defaultdict

import numpy as np

from step_ray.perception.detectors import Detections, box_middle
from step_ray.perception.tracks import Clip, Track


def new_tracker(kind: str):
    """A fresh ultralytics tracker with its packaged default settings."""
    from ultralytics.trackers.track import TRACKER_MAP
    from ultralytics.utils import YAML, IterableSimpleNamespace
    from ultralytics.utils.checks import check_yaml

    args = IterableSimpleNamespace(**YAML.load(check_yaml(f"{kind}.yaml")))
    if kind == "botsort":
        args.gmc_method = "none"  # fixed cameras; sparse optical flow per frame costs more than it helps here
    return TRACKER_MAP[kind](args=args)


def _as_boxes(dets: Detections, shape: tuple[int, int]):
    from ultralytics.engine.results import Boxes

    data = np.concatenate([dets.xyxy, dets.conf[:, None], dets.cls[:, None].astype(np.float32)], axis=1)
    return Boxes(data.astype(np.float32), orig_shape=shape).numpy()


class ClipTracker:
    """Identities within one clip, fed frame by frame (the stage streams a video through it).

    The tracker associates boxes by position only, so when one object passes behind another it may hand the
    identity over. A track is therefore cut where its colour changes (an identity switch or a real colour
    change, told apart later by :func:`step_ray.stsg.merge.merge_fragments`). A track's class and colour are
    the majority over its frames, weighted by detection confidence (a partly hidden square may look like a
    triangle for a frame or two, with low confidence); its confidence is the mean detection score.
    """

    def __init__(self, clip: int, names: dict[int, str], kind: str, source: str):
        self.clip, self.names, self.kind, self.source = clip, names, kind, source
        self.tracker = new_tracker(kind)
        self.seen: dict[int, list[tuple[float, tuple, int, str | None, float]]] = defaultdict(list)
        # Running sums of each identity's appearance histogram, per colour name (a track split on a colour
        # change gets the sum of its own colour): a fixed size per identity, however long the shot.
        self.looks: dict[tuple[int, str | None], np.ndarray] = {}

    def update(self, frame: np.ndarray, time: float, dets: Detections) -> None:
        out = self.tracker.update(_as_boxes(dets, frame.shape[:2]), frame[..., ::-1])
        for row in out:
            tid, idx = int(row[4]), int(row[7])
            # Keep the detector's box, not the Kalman-smoothed one: relations need where the object *is*.
            self.seen[tid].append((time, tuple(float(v) for v in dets.xyxy[idx]), int(dets.cls[idx]),
                                   dets.colors[idx], float(dets.conf[idx])))
            hist = appearance_histogram(frame, dets.xyxy[idx])
            if hist is not None:
                key = (tid, dets.colors[idx])
                self.looks[key] = self.looks[key] + hist if key in self.looks else hist

    def tracks(self) -> list[Track]:
        tracks = []
        next_id = max(self.seen, default=0) + 1
        for tid in sorted(self.seen):
            part_id = tid
            for k, part in enumerate(_split_on_color(self.seen[tid])):
                if k:
                    tid, next_id = next_id, next_id + 1
                votes, colors = Counter(), Counter()
                for _, _, cls, color, conf in part:
                    votes[cls] += conf
                    if color:
                        colors[color] += 1
                color = colors.most_common(1)[0][0] if colors else None
                look = self.looks.get((part_id, color))
                tracks.append(Track(clip=self.clip, track_id=tid, category=self.names[votes.most_common(1)[0][0]],
                                    boxes={t: box for t, box, *_ in part}, color=color,
                                    conf=float(np.mean([p[4] for p in part])),
                                    source=f"{self.source}+tracker:{self.kind}",
                                    appearance=None if look is None else _unit(look)))
        return tracks


def track_clip(clip: Clip, frames: np.ndarray, times: list[float], detections: list[Detections],
               names: dict[int, str], kind: str, source: str) -> list[Track]:
    """Run a fresh :class:`ClipTracker` over the frames of ``clip`` (all in memory: tests and tools)."""
    tracker = ClipTracker(clip.index, names, kind, source)
    wanted = set(clip.frame_times)
    for frame, t, dets in zip(frames, times, detections):
        if t in wanted:
            tracker.update(frame, t, dets)
    return tracker.tracks()


APPEARANCE_BINS = (8, 4, 4)  # hue x saturation x value


def appearance_histogram(frame: np.ndarray, box: np.ndarray) -> np.ndarray | None:
    """An HSV histogram of the middle of a box (corners are mostly background): the appearance embedding
    that cross-clip bridging compares (``same_as``)."""
    import cv2

    patch = box_middle(frame, box)
    if patch.size == 0:
        return None
    hsv = cv2.cvtColor(np.ascontiguousarray(patch), cv2.COLOR_RGB2HSV)
    hist = cv2.calcHist([hsv], [0, 1, 2], None, list(APPEARANCE_BINS), [0, 180, 0, 256, 0, 256]).flatten()
    return hist / max(float(hist.sum()), 1.0)


def _unit(v: np.ndarray) -> list[float]:
    n = float(np.linalg.norm(v))
    return [round(float(x) / n, 5) for x in v] if n > 0 else [float(x) for x in v]


def _split_on_color(obs: list[tuple]) -> list[list[tuple]]:
    """Cut a track's observations where the named colour changes (frames without a colour never cut)."""
    parts: list[list[tuple]] = [[]]
    current = None
    for o in obs:
        color = o[3]
        if color is not None and current is not None and color != current:
            parts.append([])
        if color is not None:
            current = color
        parts[-1].append(o)
    return parts
