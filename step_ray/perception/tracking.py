"""Identities across frames from an ultralytics tracker (ByteTrack or BoT-SORT), fed by any detector.

The tracker's state belongs to one shot of one video: :func:`track_clip` makes a fresh tracker per clip, so
identities never leak between videos or across a hard cut (``same_as`` links clips later, by appearance).
"""

from __future__ import annotations

from collections import Counter, defaultdict

import numpy as np

from step_ray.perception.detectors import Detections
from step_ray.stsg.tracks import Clip, Track


def new_tracker(kind: str):
    """A fresh ultralytics tracker with its packaged default settings."""
    from ultralytics.engine.results import Boxes  # noqa: F401  (import check: fails early if ultralytics is broken)
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


def track_clip(clip: Clip, frames: np.ndarray, times: list[float], detections: list[Detections],
               names: dict[int, str], kind: str, source: str) -> list[Track]:
    """Run a fresh tracker over the frames of ``clip`` and return one :class:`Track` per identity.

    A track's class and colour are the majority over its frames (a partly hidden square may look like a
    triangle for a frame or two); its confidence is the mean detection score.
    """
    tracker = new_tracker(kind)
    boxes: dict[int, dict[float, tuple]] = defaultdict(dict)
    votes: dict[int, Counter] = defaultdict(Counter)
    colors: dict[int, Counter] = defaultdict(Counter)
    scores: dict[int, list[float]] = defaultdict(list)
    wanted = set(clip.frame_times)
    for frame, t, dets in zip(frames, times, detections):
        if t not in wanted:
            continue
        if len(dets) == 0:
            tracker.update(_as_boxes(Detections.empty(), frame.shape[:2]), frame[..., ::-1])
            continue
        out = tracker.update(_as_boxes(dets, frame.shape[:2]), frame[..., ::-1])
        for row in out:
            x1, y1, x2, y2, tid, score, cls, idx = row[:8]
            tid, idx = int(tid), int(idx)
            # Report the detector's box, not the Kalman-smoothed one: relations need where the object *is*.
            boxes[tid][t] = tuple(float(v) for v in dets.xyxy[idx])
            votes[tid][int(dets.cls[idx])] += 1
            if dets.colors[idx]:
                colors[tid][dets.colors[idx]] += 1
            scores[tid].append(float(dets.conf[idx]))
    tracks = []
    for tid in sorted(boxes):
        tracks.append(Track(clip=clip.index, track_id=tid, category=names[votes[tid].most_common(1)[0][0]],
                            boxes=boxes[tid], color=colors[tid].most_common(1)[0][0] if colors[tid] else None,
                            conf=float(np.mean(scores[tid])), source=f"{source}+tracker:{kind}"))
    return tracks
