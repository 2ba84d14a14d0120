"""Tracks -> spatio-temporal scene graph.

The same builder makes the ground-truth graphs of the synthetic world and the predicted graphs of the
perception stage: relations from box geometry at keyframes, motion from the tracks' centres between sampled
frames, attribute changes, enter / leave / collide / stop / start / change events, before / after order, and
``same_as`` identity across clips.
"""

from __future__ import annotations

from collections import defaultdict
from itertools import permutations
from typing import Any

import networkx as nx

from step_ray.config import StsgConfig
from step_ray.stsg import schema
from step_ray.perception.tracks import Box, Clip, Event, Perceived, Track, center, gap, size

_T = 3  # decimals kept for times (ms)
BORDER_MARGIN = 3.0  # px: a box this close to the frame edge touches it (enter / leave)
TOUCH_PX = 2.0  # px: boxes this close touch (collisions)


def build_stsg(p: Perceived, cfg: StsgConfig, source: str, semantics: Any = None) -> nx.MultiDiGraph:
    """Build the graph of one video. ``source`` is ``ground_truth`` or ``perception``; ``semantics`` (a
    :class:`step_ray.perception.semantics.ParsedSemantics`) adds what the Video-LLM agreed on."""
    g = schema.new_graph(p.video_id, p.uri, p.duration, p.width, p.height, source,
                         {**p.provenance, "near_factor": cfg.near_factor,  # relations depend on them (scoring)
                          "relations": cfg.relations})
    clips = {c.index: c for c in p.clips}
    for c in p.clips:
        cid = schema.clip_id(c.index)
        g.add_node(cid, type="clip", index=c.index, start=round(c.start, _T), end=round(c.end, _T),
                   source="splitter", conf=1.0)
        g.add_edge("video", cid, type="contains", source="splitter", conf=1.0)
        for k, t in enumerate(c.keyframe_times):
            kid = schema.keyframe_id(c.index, k)
            g.add_node(kid, type="keyframe", clip=c.index, time=round(t, _T), source="splitter", conf=1.0)
            g.add_edge(cid, kid, type="contains", source="splitter", conf=1.0)

    tracks = [t for t in p.tracks if t.clip in clips and _keyframes_seen(t, clips[t.clip]) >= cfg.min_track_keyframes]
    for t in tracks:
        _add_object(g, t, clips[t.clip])
    by_clip: dict[int, list[Track]] = defaultdict(list)
    for t in tracks:
        by_clip[t.clip].append(t)
    for c in p.clips:
        _add_relations(g, c, by_clip[c.index], cfg)
    for t in tracks:
        _add_motion(g, t, cfg)
        _add_changes(g, t)
    events = p.events if p.events is not None else _infer_events(p, clips, by_clip, cfg)
    if semantics is not None:
        _add_semantics(g, semantics)
        events = list(events) + list(semantics.actions)
    _add_events(g, events, {(t.clip, t.track_id) for t in tracks})
    _add_same_as(g, tracks, cfg)
    return g


# --------------------------------------------------------------------------------------------- objects


def _nearest(times: list[float], t: float, tol: float) -> float | None:
    best = min(times, key=lambda x: abs(x - t), default=None)
    return best if best is not None and abs(best - t) <= tol else None


def _frame_tol(c: Clip) -> float:
    if len(c.frame_times) < 2:
        return 1e-3
    return 0.51 * min(b - a for a, b in zip(c.frame_times, c.frame_times[1:]))


def _box_at(t: Track, time: float, c: Clip) -> Box | None:
    found = _nearest(t.times, time, _frame_tol(c))
    return None if found is None else t.boxes[found]


def _keyframes_seen(t: Track, c: Clip) -> int:
    return sum(_box_at(t, k, c) is not None for k in c.keyframe_times)


def _add_object(g: nx.MultiDiGraph, t: Track, c: Clip) -> None:
    boxes = []
    for k in c.keyframe_times:
        b = _box_at(t, k, c)
        if b is not None:
            boxes.append([round(k, _T)] + [round(float(v), 1) for v in b])
    times = t.times
    track = [[round(x, _T)] + [round(float(v), 1) for v in t.boxes[x]] for x in times]
    extra = {"identity": t.identity} if t.identity is not None else {}
    g.add_node(schema.object_id(t.clip, t.track_id), type="object", clip=t.clip, track_id=t.track_id,
               category=t.category, attributes={"color": t.color} if t.color else {}, boxes=boxes, track=track,
               first=round(times[0], _T), last=round(times[-1], _T), source=t.source, conf=round(t.conf, 3), **extra)
    g.add_edge(schema.clip_id(t.clip), schema.object_id(t.clip, t.track_id), type="contains",
               source=t.source, conf=round(t.conf, 3))


# --------------------------------------------------------------------------------------------- relations


def spatial_predicates(a: Box, b: Box, near_factor: float) -> list[str]:
    """Predicates of ``a`` relative to ``b``: one direction (the dominant axis) and ``near`` if close."""
    (ax, ay), (bx, by) = center(a), center(b)
    dx, dy = bx - ax, by - ay
    preds = [("left_of" if dx > 0 else "right_of") if abs(dx) >= abs(dy) else ("above" if dy > 0 else "below")]
    if (dx * dx + dy * dy) ** 0.5 < near_factor * (size(a) + size(b)) / 2.0:
        preds.append("near")
    return preds


#: 'nearest' scope: a direction holds only for the nearest object that way ("directly left of").
DIRECTLY = {"left_of": "directly_left_of", "right_of": "directly_right_of", "above": "directly_above",
            "below": "directly_below"}
NEAREST_TIE = 1.05  # the nearest must be this much nearer than the next one that way, else neither is "directly"


def keyframe_relations(boxes: list[tuple[Any, Box]], near_factor: float, scope: str = "all"
                       ) -> set[tuple[Any, Any, str]]:
    """(a, b, predicate) of every ordered pair of the objects seen at one keyframe.

    ``scope`` 'all': every pair has its dominant direction (and ``near``); 'nearest': the direction predicates
    become ``directly_*`` and hold only between an object and its nearest neighbour in that direction (unique
    by construction, so walks along them chain: "the object directly right of the object directly right of
    ..."); a near-tie (within :data:`NEAREST_TIE`) is neither's.
    """
    out: set[tuple[Any, Any, str]] = set()
    candidates: dict[tuple[Any, str], list[tuple[float, Any]]] = defaultdict(list)
    for (ta, ba), (tb, bb) in permutations(boxes, 2):
        for pred in spatial_predicates(ba, bb, near_factor):
            if scope == "all" or pred == "near":
                out.add((ta, tb, pred))
            else:
                (ax, ay), (bx, by) = center(ba), center(bb)
                candidates[(tb, pred)].append((((ax - bx) ** 2 + (ay - by) ** 2) ** 0.5, ta))
    for (tb, pred), found in candidates.items():
        found.sort(key=lambda x: x[0])
        if len(found) == 1 or found[1][0] > NEAREST_TIE * found[0][0]:
            out.add((found[0][1], tb, DIRECTLY[pred]))
    return out


def _spans(times: list[float], keyframes: list[float]) -> list[tuple[float, float]]:
    """Merge the keyframe times at which a predicate held into runs of consecutive keyframes."""
    index = {t: i for i, t in enumerate(keyframes)}
    runs: list[list[float]] = []
    for t in sorted(times):
        if runs and index[t] == index[runs[-1][-1]] + 1:
            runs[-1].append(t)
        else:
            runs.append([t])
    return [(r[0], r[-1]) for r in runs]


def _add_relations(g: nx.MultiDiGraph, c: Clip, tracks: list[Track], cfg: StsgConfig) -> None:
    held: dict[tuple[int, int, str], list[float]] = defaultdict(list)
    for k in c.keyframe_times:
        present = [(t.track_id, _box_at(t, k, c)) for t in tracks]
        present = [(t, b) for t, b in present if b is not None]
        for a, b, pred in keyframe_relations(present, cfg.near_factor, cfg.relations):
            held[(a, b, pred)].append(k)
    for (a, b, pred), times in sorted(held.items()):
        for start, end in _spans(times, c.keyframe_times):
            g.add_edge(schema.object_id(c.index, a), schema.object_id(c.index, b), type="relation", predicate=pred,
                       start=round(start, _T), end=round(end, _T), source="geometry", conf=1.0)


# --------------------------------------------------------------------------------------------- motion


def _direction(c0: tuple[float, float], c1: tuple[float, float], dt: float, min_speed: float) -> str | None:
    vx, vy = (c1[0] - c0[0]) / dt, (c1[1] - c0[1]) / dt
    if (vx * vx + vy * vy) ** 0.5 < min_speed:
        return None
    if abs(vx) >= abs(vy):
        return "right" if vx > 0 else "left"
    return "down" if vy > 0 else "up"


def motion_segments(t: Track, min_speed: float) -> list[tuple[str, float, float]]:
    """(direction, start, end) runs of the track's dominant direction of motion between sampled frames."""
    times = t.times
    segs: list[list] = []
    for t0, t1 in zip(times, times[1:]):
        d = _direction(center(t.boxes[t0]), center(t.boxes[t1]), t1 - t0, min_speed)
        if d is None:
            continue
        if segs and segs[-1][0] == d and abs(segs[-1][2] - t0) < 1e-6:
            segs[-1][2] = t1
        else:
            segs.append([d, t0, t1])
    return [(d, s, e) for d, s, e in segs]


def _add_motion(g: nx.MultiDiGraph, t: Track, cfg: StsgConfig) -> None:
    node = schema.object_id(t.clip, t.track_id)
    for d, s, e in motion_segments(t, cfg.motion_min_px_per_s):
        g.add_edge(node, node, type="motion", direction=d, start=round(s, _T), end=round(e, _T),
                   source="geometry", conf=1.0)


def _add_changes(g: nx.MultiDiGraph, t: Track) -> None:
    node = schema.object_id(t.clip, t.track_id)
    for ch in t.changes:
        g.add_edge(node, node, type="attr_change", attribute=ch.attribute, **{"from": ch.before, "to": ch.after},
                   time=round(ch.end, _T), start=round(ch.start, _T), end=round(ch.end, _T), source=t.source,
                   conf=round(t.conf, 3))


def pauses(t: Track, min_speed: float, min_seconds: float) -> list[tuple[float, float | None]]:
    """(stop, start) times of the track's stationary runs that last at least ``min_seconds`` between two
    moving stretches; ``start`` is None when it is still standing at its last sampled frame. A bounce off a
    wall or another object slows one interval at most, so it is no pause."""
    times = t.times
    moving = [_direction(center(t.boxes[a]), center(t.boxes[b]), b - a, min_speed) is not None
              for a, b in zip(times, times[1:])]
    out: list[tuple[float, float | None]] = []
    i = 0
    while i < len(moving):
        if moving[i] or i == 0 or not moving[i - 1]:
            i += 1
            continue
        j = i
        while j < len(moving) and not moving[j]:
            j += 1
        stop, start = times[i], times[j]  # stationary over intervals i..j-1
        if start - stop >= min_seconds - 1e-9:
            out.append((stop, start if j < len(moving) else None))
        i = j
    return out


# --------------------------------------------------------------------------------------------- events


def _touches_border(b: Box, width: int, height: int) -> bool:
    return b[0] <= BORDER_MARGIN or b[1] <= BORDER_MARGIN or b[2] >= width - BORDER_MARGIN or b[3] >= height - BORDER_MARGIN


def _infer_events(p: Perceived, clips: dict[int, Clip], by_clip: dict[int, list[Track]],
                  cfg: StsgConfig) -> list[Event]:
    """Enter / leave where a track starts / ends at the frame border inside a clip (enter at the estimated time
    it began to show); collide where two boxes come (close enough) to touch and one of them turns back; stop /
    start moving around a pause; change where an attribute changed."""
    events: list[Event] = []
    for ci, tracks in by_clip.items():
        c = clips[ci]
        if not c.frame_times:
            continue
        first_frame, last_frame = c.frame_times[0], c.frame_times[-1]
        for t in tracks:
            times = t.times
            if times[0] > first_frame + 1e-6 and _touches_border(t.boxes[times[0]], p.width, p.height):
                events.append(Event("enter", ci, _entry_time(t, p.width, p.height, first_frame), [t.track_id],
                                    source="geometry"))
            if times[-1] < last_frame - 1e-6 and _touches_border(t.boxes[times[-1]], p.width, p.height):
                events.append(Event("leave", ci, times[-1], [t.track_id], source="geometry"))
            for stop, start in pauses(t, cfg.motion_min_px_per_s, cfg.min_pause_seconds):
                events.append(Event("stop_moving", ci, stop, [t.track_id], source="geometry"))
                if start is not None:
                    events.append(Event("start_moving", ci, start, [t.track_id], source="geometry"))
            for ch in t.changes:
                events.append(Event("change", ci, ch.end, [t.track_id], source=t.source, conf=t.conf,
                                    attrs={"attribute": ch.attribute, "from": ch.before, "to": ch.after}))
        for i, a in enumerate(tracks):
            for b in tracks[i + 1:]:
                events += [Event("collide", ci, t, sorted([a.track_id, b.track_id]), source="geometry")
                           for t in _contacts(a, b)]
    return events


def _contacts(a: Track, b: Track) -> list[float]:
    """Times two objects collide: their gap reaches a local minimum at which they touch, or would have
    touched between two sampled frames (the gap is within half their relative motion over one interval), and
    at least one of them turns back there (objects of different depth layers just pass)."""
    shared = sorted(set(a.boxes) & set(b.boxes))
    gaps = [gap(a.boxes[t], b.boxes[t]) for t in shared]
    found = []
    for j in range(1, len(shared) - 1):
        if not (gaps[j] <= gaps[j - 1] and gaps[j] < gaps[j + 1]):
            continue
        t0, t1, t2 = shared[j - 1], shared[j], shared[j + 1]
        rel = max(_moved(a, t0, t1) + _moved(b, t0, t1), _moved(a, t1, t2) + _moved(b, t1, t2))
        if gaps[j] > TOUCH_PX + 0.5 * rel:
            continue
        if any(_turns(x, t0, t1, t2) for x in (a, b)):
            found.append(t1)
    return found


def _moved(t: Track, t0: float, t1: float) -> float:
    (x0, y0), (x1, y1) = center(t.boxes[t0]), center(t.boxes[t1])
    return ((x1 - x0) ** 2 + (y1 - y0) ** 2) ** 0.5


def _entry_time(t: Track, width: int, height: int, clip_start: float) -> float:
    """When an object that comes in at the frame border began to show.

    A detector first sees an entering object only once enough of it is in view, and a tracker confirms a new
    identity a frame later still, so the first box comes late. If that box is cut by the border (narrower
    than the object is later on), its inner edge (the one away from the border) moves with the object: the
    visible width over that edge's speed gives the time the object crossed the border. Falls back to the
    first box's time when the box is not cut, the track is too short, or it does not move inward.
    """
    times = t.times[:4]
    if len(times) < 2:
        return times[0]
    b0 = t.boxes[times[0]]
    best = times[0]
    for edge, inward, touching in ((0, 1, b0[0] <= BORDER_MARGIN), (2, -1, b0[2] >= width - BORDER_MARGIN),
                                   (1, 1, b0[1] <= BORDER_MARGIN), (3, -1, b0[3] >= height - BORDER_MARGIN)):
        axis = edge % 2  # 0: x, 1: y
        visible = b0[axis + 2] - b0[axis]
        full = max(b[axis + 2] - b[axis] for b in t.boxes.values())
        if not touching or visible >= 0.9 * full:
            continue
        inner = axis + 2 if inward > 0 else axis  # x2 for the left border, x1 for the right, ...
        speed = inward * (t.boxes[times[-1]][inner] - b0[inner]) / (times[-1] - times[0])
        if speed > 1e-6:
            best = min(best, max(clip_start, times[0] - visible / speed))
    return best


def _turns(t: Track, t0: float, t1: float, t2: float) -> bool:
    (x0, y0), (x1, y1), (x2, y2) = center(t.boxes[t0]), center(t.boxes[t1]), center(t.boxes[t2])
    return (x1 - x0) * (x2 - x1) < 0 or (y1 - y0) * (y2 - y1) < 0


def _add_events(g: nx.MultiDiGraph, events: list[Event], known: set[tuple[int, int]]) -> None:
    events = [e for e in events if all((e.clip, tid) in known for tid in e.participants)]
    events.sort(key=lambda e: (e.time, e.clip, e.kind, e.participants))
    ids = []
    for n, e in enumerate(events):
        eid = schema.event_id(n)
        ids.append(eid)
        g.add_node(eid, type="event", kind=e.kind, clip=e.clip, time=round(e.time, _T), source=e.source,
                   conf=round(e.conf, 3), **e.attrs)
        for tid in e.participants:
            g.add_edge(schema.object_id(e.clip, tid), eid, type="participates_in", source=e.source,
                       conf=round(e.conf, 3))
    for a, b in zip(ids, ids[1:]):
        g.add_edge(a, b, type="before", source="geometry", conf=1.0)
        g.add_edge(b, a, type="after", source="geometry", conf=1.0)


def _add_semantics(g: nx.MultiDiGraph, sem: Any) -> None:
    """Parsed attributes fill in what perception did not measure (never overriding it); parsed relations are
    added where geometry has not already stated the same predicate at that time."""
    for (clip, tid), attrs in sem.attributes.items():
        node = schema.object_id(clip, tid)
        if node not in g:
            continue
        d = g.nodes[node]
        for name, (value, conf) in attrs.items():
            if name not in d["attributes"]:
                d["attributes"][name] = value
                d.setdefault("attribute_sources", {})[name] = {"source": sem.source, "conf": conf}
    for clip, a, pred, b, t, conf in sem.relations:
        na, nb = schema.object_id(clip, a), schema.object_id(clip, b)
        if na not in g or nb not in g:
            continue
        held = any(d.get("type") == "relation" and d["predicate"] == pred and d["start"] - 1e-6 <= t <= d["end"] + 1e-6
                   for d in g.get_edge_data(na, nb, default={}).values())
        if not held:
            g.add_edge(na, nb, type="relation", predicate=pred, start=round(t, _T), end=round(t, _T),
                       source=sem.source, conf=round(conf, 3))


# --------------------------------------------------------------------------------------------- identity


def appearance_similarity(a: Track, b: Track) -> float:
    """Half for the same class, half for looking alike. Looking alike is the cosine of the two tracks'
    appearance embeddings when both have one (perception), else whether their colour names agree; two known
    colour names that differ always count as not alike (a named colour is the sharper cue: a red and an orange
    object have close histograms). The colour compared is the one at the end of ``a`` and at the start of
    ``b`` (an object may have changed colour inside a clip)."""
    same_class = 0.5 * (a.category == b.category)
    end_a = a.changes[-1].after if a.changes else a.color
    if end_a is not None and b.color is not None and end_a != b.color:
        return same_class
    if a.appearance is not None and b.appearance is not None:
        cos = sum(x * y for x, y in zip(a.appearance, b.appearance))
        return same_class + 0.5 * max(0.0, min(1.0, cos))
    return same_class + 0.5 * (end_a is not None and end_a == b.color)


def _add_same_as(g: nx.MultiDiGraph, tracks: list[Track], cfg: StsgConfig) -> None:
    def link(a: Track, b: Track, conf: float, source: str) -> None:
        na, nb = schema.object_id(a.clip, a.track_id), schema.object_id(b.clip, b.track_id)
        g.add_edge(na, nb, type="same_as", source=source, conf=round(conf, 3))
        g.add_edge(nb, na, type="same_as", source=source, conf=round(conf, 3))

    if tracks and all(t.identity is not None for t in tracks):  # ground truth knows who is who
        for i, a in enumerate(tracks):
            for b in tracks[i + 1:]:
                if a.clip != b.clip and a.identity == b.identity:
                    link(a, b, 1.0, "identity")
        return
    # Perception: one-to-one greedy matching between each pair of clips by appearance.
    clips = sorted({t.clip for t in tracks})
    for i, ca in enumerate(clips):
        for cb in clips[i + 1:]:
            pairs = [(appearance_similarity(a, b), a, b) for a in tracks if a.clip == ca for b in tracks if b.clip == cb]
            pairs.sort(key=lambda x: (-x[0], x[1].track_id, x[2].track_id))
            used_a, used_b = set(), set()
            for sim, a, b in pairs:
                if sim < cfg.same_as_threshold or a.track_id in used_a or b.track_id in used_b:
                    continue
                used_a.add(a.track_id)
                used_b.add(b.track_id)
                link(a, b, sim, "appearance")
