"""Dynamic merging: one identity per object inside a clip, with its attribute changes.

Trackers fragment an identity when the motion model is surprised (a bounce off a wall at a low sampling
rate) or the object is hidden for a while; the fragments come back with new track ids. An occluder across
the middle of an object splits it into two blobs, which become two tracks at once. And tracks are cut where
their colour changes (:mod:`step_ray.perception.tracking`), which is either an identity switch (the tracker
handed one object's id to another passing it) or the object really changing colour.

Two passes, within a clip:

1. fragments that look the same (class and colour) and either follow each other in time within reach of where
   the last one was seen, or overlap in time while touching each other, are one object;
2. a fragment that ends where, one sampled frame later, a fragment of the same class but another colour begins
   is the same object changing colour, unless the new colour was already tracked elsewhere while the old one
   was still in view, or the old colour shows up again later (then it was a switch between two objects). The
   joined track keeps its colour at first sight and records an :class:`~step_ray.perception.tracks.AttrChange`.
"""

from __future__ import annotations

import dataclasses

from step_ray.config import StsgConfig
from step_ray.perception.tracks import AttrChange, Box, Track, center, gap, size


def _joinable(a: Track, b: Track, cfg: StsgConfig) -> bool:
    if a.clip != b.clip or a.category != b.category or a.color != b.color:
        return False
    shared = set(a.boxes) & set(b.boxes)
    if shared:  # two blobs of one object: they touch wherever both are seen
        return all(gap(a.boxes[t], b.boxes[t]) <= 0.5 * min(size(a.boxes[t]), size(b.boxes[t])) for t in shared)
    first, second = (a, b) if a.times[0] < b.times[0] else (b, a)
    end, start = first.times[-1], second.times[0]
    (ax, ay), (bx, by) = center(first.boxes[end]), center(second.boxes[start])
    reach = cfg.merge_max_jump * max(size(first.boxes[end]), size(second.boxes[start])) + cfg.merge_max_speed * (start - end)
    return ((ax - bx) ** 2 + (ay - by) ** 2) ** 0.5 <= reach


def _union(a: Box, b: Box) -> Box:
    return (min(a[0], b[0]), min(a[1], b[1]), max(a[2], b[2]), max(a[3], b[3]))


def _last_color(t: Track) -> str | None:
    return t.changes[-1].after if t.changes else t.color


def _sampling_interval(tracks: list[Track]) -> float:
    steps = [b - a for t in tracks for a, b in zip(t.times, t.times[1:])]
    return min(steps) if steps else 0.0


def _changes_color(a: Track, b: Track, others: list[Track], interval: float) -> bool:
    """Whether fragment ``b`` is fragment ``a`` seen with a new colour (see the module docstring)."""
    old, new = _last_color(a), b.color
    if a.clip != b.clip or a.category != b.category or old is None or new is None or old == new:
        return False
    end, start = a.times[-1], b.times[0]
    if not 0 < start - end <= 1.5 * interval + 1e-6:
        return False
    if gap(a.boxes[end], b.boxes[start]) > 0 or _distance(a.boxes[end], b.boxes[start]) > 0.5 * size(a.boxes[end]):
        return False
    for o in others:
        if o is a or o is b:
            continue
        if o.color == new and o.times[0] <= end:  # the new colour was there before: another object
            return False
        if o.color == old and o.times[-1] > end:  # the old colour is still around later: a switch
            return False
    return True


def _distance(p: Box, q: Box) -> float:
    (px, py), (qx, qy) = center(p), center(q)
    return ((px - qx) ** 2 + (py - qy) ** 2) ** 0.5


def _absorb(target: Track, t: Track) -> None:
    n_a, n_b = len(target.boxes), len(t.boxes)
    for time, box in t.boxes.items():
        target.boxes[time] = _union(target.boxes[time], box) if time in target.boxes else box
    target.conf = (target.conf * n_a + t.conf * n_b) / (n_a + n_b)
    if target.appearance is not None and t.appearance is not None:  # weighted by frames seen, unit norm again
        mix = [(x * n_a + y * n_b) for x, y in zip(target.appearance, t.appearance)]
        norm = sum(v * v for v in mix) ** 0.5 or 1.0
        target.appearance = [round(v / norm, 5) for v in mix]
    elif target.appearance is None:
        target.appearance = t.appearance


def merge_fragments(tracks: list[Track], cfg: StsgConfig) -> list[Track]:
    """Join fragments in time order; the merged track keeps the first fragment's id, and where two fragments
    were seen at once, the union of their boxes."""
    merged: list[Track] = []
    for t in sorted(tracks, key=lambda t: (t.clip, t.times[0], t.track_id)):
        target = next((m for m in merged if _joinable(m, t, cfg)), None)
        if target is None:
            merged.append(dataclasses.replace(t, boxes=dict(t.boxes), changes=list(t.changes)))
        else:
            _absorb(target, t)
    interval = _sampling_interval(merged)
    out: list[Track] = []
    for t in sorted(merged, key=lambda t: (t.clip, t.times[0], t.track_id)):
        target = next((m for m in out if _changes_color(m, t, merged, interval)), None)
        if target is None:
            out.append(t)
            continue
        target.changes.append(AttrChange("color", _last_color(target), t.color, target.times[-1], t.times[0]))
        _absorb(target, t)
    return sorted(out, key=lambda t: (t.clip, t.track_id))
