"""Dynamic merging (minimal): one identity per object inside a clip.

Trackers fragment an identity when the motion model is surprised (a bounce off a wall at a low sampling
rate) or the object is hidden for a while; the fragments come back with new track ids. An occluder across
the middle of an object splits it into two blobs, which become two tracks at once. Within a clip, fragments
that look the same (class and colour) and either follow each other in time within reach of where the last
one was seen, or overlap in time while touching each other, are one object.
"""

from __future__ import annotations

from step_ray.config import StsgConfig
from step_ray.stsg.tracks import Box, Track, center, gap, size


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


def merge_fragments(tracks: list[Track], cfg: StsgConfig) -> list[Track]:
    """Join fragments in time order; the merged track keeps the first fragment's id, and where two fragments
    were seen at once, the union of their boxes."""
    merged: list[Track] = []
    for t in sorted(tracks, key=lambda t: (t.clip, t.times[0], t.track_id)):
        target = next((m for m in merged if _joinable(m, t, cfg)), None)
        if target is None:
            merged.append(Track(t.clip, t.track_id, t.category, dict(t.boxes), t.color, t.conf, t.source, t.identity))
            continue
        n_a, n_b = len(target.boxes), len(t.boxes)
        for time, box in t.boxes.items():
            target.boxes[time] = _union(target.boxes[time], box) if time in target.boxes else box
        target.conf = (target.conf * n_a + t.conf * n_b) / (n_a + n_b)
    return sorted(merged, key=lambda t: (t.clip, t.track_id))
