"""Tracks -> graph: relations, motion, events, identity, and the JSON contract."""

import json

import pytest

from step_ray.config import load_config
from step_ray.stsg import schema
from step_ray.stsg.build import build_stsg, motion_segments, spatial_predicates
from step_ray.perception.tracks import Clip, Event, Perceived, Track

TIMES = [i / 5 for i in range(10)]  # 2 s at 5 fps
KF = [0.2, 1.0, 1.8]


def box(cx, cy, r=10):
    return (cx - r, cy - r, cx + r, cy + r)


def perceived(tracks, clips=None, events=None):
    clips = clips or [Clip(0, TIMES[0], TIMES[-1], TIMES, KF)]
    return Perceived("v", "/videos/v.mp4", 2.0, 224, 160, clips, tracks, events)


def still(tid, cx, cy, color, category="circle", clip=0, times=TIMES, identity=None):
    return Track(clip, tid, category, {t: box(cx, cy) for t in times}, color, identity=identity)


def test_spatial_predicates():
    assert spatial_predicates(box(50, 80), box(150, 80), 1.5) == ["left_of"]
    assert spatial_predicates(box(150, 80), box(50, 80), 1.5) == ["right_of"]
    assert spatial_predicates(box(100, 20), box(100, 120), 1.5) == ["above"]
    assert spatial_predicates(box(100, 80), box(115, 80), 1.5) == ["left_of", "near"]


def test_relations_both_directions_with_spans():
    g = build_stsg(perceived([still(1, 40, 80, "red"), still(2, 180, 80, "blue")]), load_config().stsg, "perception")
    rel = {(u, v, d["predicate"]): (d["start"], d["end"]) for u, v, d in schema.edges_of(g, "relation")}
    assert rel == {("obj:0:1", "obj:0:2", "left_of"): (0.2, 1.8), ("obj:0:2", "obj:0:1", "right_of"): (0.2, 1.8)}
    assert schema.describe_object(g, "obj:0:1") == "red circle"


def test_relation_spans_split_when_the_relation_stops():
    # Object 2 passes from right of 1 to its left between the 2nd and 3rd keyframe.
    mover = Track(0, 2, "square", {t: box(200 - 100 * t, 80) for t in TIMES}, "blue")
    g = build_stsg(perceived([still(1, 80, 80, "red"), mover]), load_config().stsg, "perception")
    spans = sorted((d["predicate"], d["start"], d["end"]) for u, v, d in schema.edges_of(g, "relation") if u == "obj:0:1")
    assert ("left_of", 0.2, 1.0) in spans and ("right_of", 1.8, 1.8) in spans


def test_motion_segments_and_edges():
    mover = Track(0, 1, "circle", {t: box(20 + 50 * t, 80) for t in TIMES[:5]} | {t: box(60, 80 - 40 * (t - 0.8)) for t in TIMES[5:]}, "red")
    segs = motion_segments(mover, 8.0)
    assert [s[0] for s in segs] == ["right", "up"]
    g = build_stsg(perceived([mover]), load_config().stsg, "perception")
    assert [d["direction"] for _, _, d in schema.edges_of(g, "motion")] == ["right", "up"]


def test_enter_leave_and_collide_inferred():
    # 1 enters from the left edge; 2 leaves through the right edge; 3 and 4 meet and bounce.
    enter = Track(0, 1, "circle", {t: box(12 + 40 * (t - 0.6), 40) for t in TIMES[3:]}, "red")
    leave = Track(0, 2, "square", {t: box(172 + 40 * t, 120) for t in TIMES[:6]}, "blue")
    def bounce(x0, v, t):  # moves at v px/s until the collision at 1.0 s, then back
        return x0 + v * (t if t <= 1.0 else 2.0 - t)

    a = Track(0, 3, "circle", {t: box(bounce(40, 40, t), 90) for t in TIMES}, "green")
    b = Track(0, 4, "square", {t: box(bounce(140, -40, t), 90) for t in TIMES}, "yellow")
    g = build_stsg(perceived([enter, leave, a, b]), load_config().stsg, "perception")
    events = {(d["kind"], d["time"]): sorted(u for u, _, e in schema.edges_of(g, "participates_in") if _ == n)
              for n, d in g.nodes(data=True) if d["type"] == "event"}
    assert events[("enter", 0.6)] == ["obj:0:1"]
    assert events[("leave", 1.0)] == ["obj:0:2"]
    assert events[("collide", 1.0)] == ["obj:0:3", "obj:0:4"]
    # before/after chain the events in time.
    assert len(schema.edges_of(g, "before")) == len(events) - 1 == len(schema.edges_of(g, "after"))


def test_explicit_events_win_and_unknown_participants_are_dropped():
    ev = [Event("collide", 0, 1.0, [1, 2]), Event("enter", 0, 0.4, [9])]
    g = build_stsg(perceived([still(1, 40, 80, "red"), still(2, 180, 80, "blue")], events=ev), load_config().stsg, "x")
    kinds = [d["kind"] for _, d in g.nodes(data=True) if d["type"] == "event"]
    assert kinds == ["collide"]


def test_same_as_by_identity_and_by_appearance():
    clips = [Clip(0, 0.0, 0.8, TIMES[:5], [0.4]), Clip(1, 1.0, 1.8, TIMES[5:], [1.4])]
    tracks = [still(1, 40, 80, "red", times=TIMES[:5], identity="a"), still(2, 150, 80, "blue", times=TIMES[:5], identity="b"),
              still(7, 100, 80, "red", clip=1, times=TIMES[5:], identity="a")]
    cfg = load_config().stsg
    gt = build_stsg(perceived(tracks, clips), cfg, "ground_truth")
    assert sorted((u, v) for u, v, _ in schema.edges_of(gt, "same_as")) == [("obj:0:1", "obj:1:7"), ("obj:1:7", "obj:0:1")]
    for t in tracks:
        t.identity = None
    pred = build_stsg(perceived(tracks, clips), cfg, "perception")
    links = [(u, v, d["source"]) for u, v, d in schema.edges_of(pred, "same_as")]
    assert ("obj:0:1", "obj:1:7", "appearance") in links and len(links) == 2


def test_provenance_and_confidence_everywhere():
    g = build_stsg(perceived([still(1, 40, 80, "red"), still(2, 180, 80, "blue")]), load_config().stsg, "perception")
    assert all("source" in d and 0 <= d["conf"] <= 1 for _, d in g.nodes(data=True))
    assert all("source" in d and 0 <= d["conf"] <= 1 for _, _, d in g.edges(data=True))


def test_json_round_trip_and_version_check(tmp_path):
    g = build_stsg(perceived([still(1, 40, 80, "red"), still(2, 180, 80, "blue")]), load_config().stsg, "perception")
    path = tmp_path / "v.stsg.json"
    schema.write(g, path)
    g2 = schema.read(path)
    assert schema.dumps(g2) == schema.dumps(g)
    data = json.loads(path.read_text())
    data["graph"]["schema_version"] = "stsg/0"
    with pytest.raises(schema.StsgFormatError, match="unsupported STSG schema version"):
        schema.from_json(data)
    with pytest.raises(schema.StsgFormatError):
        schema.loads("{not json")
    with pytest.raises(schema.StsgFormatError):
        schema.from_json({"nodes": []})


def test_enter_time_is_extrapolated_from_a_box_cut_by_the_border():
    """First seen at 1.0 s with only 8 of its 20 px in view, moving in at 40 px/s: it began to show 0.2 s
    earlier. A box not cut by the border gives its own time (previous test)."""
    def cut(t):  # left edge enters at x = 0 at 0.8 s
        right = 40 * (t - 0.8)
        return (0.0, 30.0, min(right, 20.0) if right < 20 else right, 50.0) if right < 20 else (right - 20, 30.0, right, 50.0)

    track = Track(0, 1, "circle", {t: cut(t) for t in TIMES[5:]}, "red")
    g = build_stsg(perceived([track]), load_config().stsg, "perception")
    [enter] = [d for _, d in g.nodes(data=True) if d["type"] == "event" and d["kind"] == "enter"]
    assert abs(enter["time"] - 0.8) < 1e-6


def test_same_as_uses_appearance_embeddings_and_colour_names():
    """Across a cut, the object that looks alike (cosine of appearance embeddings) is linked, not the one of
    the same class and colour name that looks different; a different colour name never links."""
    from step_ray.stsg.build import appearance_similarity

    def track(clip, tid, color, look):
        n = sum(v * v for v in look) ** 0.5
        return Track(clip, tid, "car", {TIMES[0] + clip: box(50, 50)}, color, appearance=[v / n for v in look])

    a = track(0, 1, "red", [1.0, 0.1, 0.0])
    alike, unlike, other = track(1, 2, "red", [0.9, 0.2, 0.0]), track(1, 3, "red", [0.0, 0.1, 1.0]), track(1, 4, "blue", [1.0, 0.1, 0.0])
    assert appearance_similarity(a, alike) > 0.95 and appearance_similarity(a, unlike) < 0.6
    assert appearance_similarity(a, other) == 0.5
    clips = [Clip(0, 0.0, 0.0, [0.0], [0.0]), Clip(1, 1.0, 1.0, [1.0], [1.0])]
    g = build_stsg(perceived([a, unlike, alike, other], clips=clips), load_config().stsg, "perception")
    assert sorted((u, v) for u, v, _ in schema.edges_of(g, "same_as")) == [("obj:0:1", "obj:1:2"), ("obj:1:2", "obj:0:1")]
