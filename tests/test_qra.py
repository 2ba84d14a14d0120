"""QRA: path programs, executor, sampling, rendering and the record file, on small hand-built scene graphs."""

from __future__ import annotations

import json
import random
import re

import pyarrow.parquet as pq
import pytest

from step_ray.config import QraConfig, StsgConfig
from step_ray.perception.colors import COLOR_NAMES
from step_ray.qra import (
    FAMILIES, QRA_SCHEMA, ExecutionError, Program, execute, family_of, read_parquet, sample_qra, trace, write_parquet,
)
from step_ray.qra.paths import Anchor, GraphIndex, Hop
from step_ray.qra.records import QraFormatError, check_record, split_of
from step_ray.qra.render import EXTRA_SHAPES, SHAPES, is_trivial, render_question
from step_ray.stsg import schema
from step_ray.stsg.build import build_stsg
from step_ray.perception.tracks import Clip, Event, Perceived, Track

W, H = 224, 160


# --------------------------------------------------------------------------------------------- scenes


def _clip(index: int, start: float, n: int = 20, dt: float = 0.2) -> Clip:
    ft = [round(start + i * dt, 3) for i in range(n)]
    return Clip(index, ft[0], ft[-1], ft, [round(start + k, 3) for k in (0.4, 1.4, 2.4, 3.4)])


def _track(clip: int, tid: int, color: str, shape: str, p0, p1, t0: float, t1: float, identity: str,
           size: float = 24, dt: float = 0.2) -> Track:
    """A box moving in a straight line from p0 (at t0) to p1 (at t1), sampled every dt."""
    n = int(round((t1 - t0) / dt))
    boxes = {}
    for i in range(n + 1):
        a = i / n if n else 0.0
        x, y = p0[0] + a * (p1[0] - p0[0]), p0[1] + a * (p1[1] - p0[1])
        boxes[round(t0 + i * dt, 3)] = (x - size / 2, y - size / 2, x + size / 2, y + size / 2)
    return Track(clip, tid, shape, boxes, color=color, identity=identity)


def two_scene_graph(video_id: str = "vid-a"):
    """Scene 1 (0-3.8 s): a red circle moving right, a blue square moving left that collides with it at 2.0 s
    and leaves at 3.0 s, a green triangle that enters at 1.0 s and moves up. Scene 2 (4-7.8 s): the red circle
    again (moving down, colliding with a still purple triangle at 5.6 s) and the blue square (moving left,
    leaving at 7.0 s). same_as links the red circles and the blue squares."""
    tracks = [
        _track(0, 1, "red", "circle", (20, 40), (100, 40), 0.0, 3.8, "A"),
        _track(0, 2, "blue", "square", (200, 40), (130, 40), 0.0, 3.0, "B"),
        _track(0, 3, "green", "triangle", (60, 130), (60, 90), 1.0, 3.8, "C"),
        _track(1, 1, "red", "circle", (100, 30), (100, 120), 4.0, 7.8, "A"),
        _track(1, 2, "purple", "triangle", (180, 80), (180, 80), 4.0, 7.8, "D"),
        _track(1, 3, "blue", "square", (200, 60), (120, 60), 4.0, 7.0, "B"),
    ]
    events = [Event("enter", 0, 1.0, [3]), Event("collide", 0, 2.0, [1, 2]), Event("leave", 0, 3.0, [2]),
              Event("collide", 1, 5.6, [1, 2]), Event("leave", 1, 7.0, [3])]
    p = Perceived(video_id, f"file:///videos/{video_id}.mp4", 8.0, W, H, [_clip(0, 0.0), _clip(1, 4.0)], tracks, events)
    return build_stsg(p, StsgConfig(), source="ground_truth")


def random_graph(seed: int, objects: int = 6):
    """A one-scene video of ``objects`` shapes moving in straight lines (distinct colour-shape pairs); events
    are inferred by the builder (enter / leave at the border, collisions), like a perceived graph."""
    rng = random.Random(seed)
    kinds = rng.sample([(c, s) for c in COLOR_NAMES for s in SHAPES], objects)
    tracks = []
    for tid, (color, shape) in enumerate(kinds, start=1):
        t0 = rng.choice([0.0, 0.0, 1.0, 2.0])
        p0 = (rng.uniform(14, W - 14), rng.uniform(14, H - 14))
        p1 = (rng.uniform(14, W - 14), rng.uniform(14, H - 14))
        if t0 > 0:  # enters from the left border
            p0 = (12.0, p0[1])
        tracks.append(_track(0, tid, color, shape, p0, p1, t0, 3.8, f"o{tid}"))
    p = Perceived(f"rand-{seed}", f"file:///videos/rand-{seed}.mp4", 4.0, W, H, [_clip(0, 0.0)], tracks, None)
    return build_stsg(p, StsgConfig(), source="ground_truth")


def to_stsg2(g):
    """stsg/2 additions (what the lead's synthetic world will produce): the red circle of scene 1 turns green
    at 2.4s, the green triangle stops moving at 3.2s, the purple triangle starts moving at 6.0s."""
    g = g.copy()
    g.graph["schema_version"] = "stsg/2"
    def event(eid, kind, clip, t, who, **attrs):
        g.add_node(eid, type="event", kind=kind, clip=clip, time=t, source="synth", conf=1.0, **attrs)
        g.add_edge(who, eid, type="participates_in", source="synth", conf=1.0)
    g.add_edge("obj:0:1", "obj:0:1", type="attr_change", attribute="color", time=2.4, start=2.4, end=3.8,
               source="synth", conf=1.0, **{"from": "red", "to": "green"})
    event("ev:100", "change", 0, 2.4, "obj:0:1", attribute="color", **{"from": "red", "to": "green"})
    event("ev:101", "stop_moving", 0, 3.2, "obj:0:3")
    event("ev:102", "start_moving", 1, 6.0, "obj:1:2")
    for u, v, k in [(u, v, k) for u, v, k, d in g.edges(keys=True, data=True) if d.get("type") in ("before", "after")]:
        g.remove_edge(u, v, k)
    evs = sorted((n for n, d in g.nodes(data=True) if d.get("type") == "event"), key=lambda e: (g.nodes[e]["time"], e))
    for a, b in zip(evs, evs[1:]):
        g.add_edge(a, b, type="before", source="geometry", conf=1.0)
        g.add_edge(b, a, type="after", source="geometry", conf=1.0)
    return g


def _reload(g):
    """The graph as a reader of its file sees it (a stsg/2 graph only once the schema module is stsg/2)."""
    try:
        return schema.loads(schema.dumps(g))
    except schema.StsgFormatError:
        return g.copy()


@pytest.fixture(scope="module")
def graph1():
    return two_scene_graph()


@pytest.fixture(scope="module")
def graph():
    return to_stsg2(two_scene_graph())


SAMPLES = 55  # 11 per step count 1..5


@pytest.fixture(scope="module")
def sampled(graph):
    return sample_qra(graph, QraConfig(samples_per_video=SAMPLES), seed=7)


def _assert_valid(records, g, num_options=4):
    fresh = _reload(g)  # the executor sees the graph as a reader of the file would
    for r in records:
        assert check_record(r) == [], (r["question"], check_record(r))
        if r["answer_type"] == "yesno":
            assert sorted(r["options"]) == ["no", "yes"], r["options"]
        else:
            assert len(r["options"]) == num_options and len(set(r["options"])) == num_options
            if r["answer_type"] != "count":  # counts may appear in times ("0" in "0.4s")
                assert not re.search(rf"\b{re.escape(r['answer'])}\b", r["question"]), r["question"]  # not trivial
        assert r["options"][r["answer_index"]] == r["answer"]
        program = Program.from_json(r["program"])
        assert program.steps == r["steps"] == len(r["rationale"]) - 1
        assert execute(program, fresh) == r["answer"], r["question"]
        assert trace(program, fresh).nodes == r["path_nodes"]
        assert render_question(program) == r["question"]
        assert family_of(program) == r["family"]
        assert 1 <= r["steps"] <= 5
        assert r["rationale"][-1] == f"So the answer is {r['answer']}."
        assert r["family"] in FAMILIES
        if program.query == "event":  # no "what happened after X?" -> "X" (an event text of the path itself)
            ix = GraphIndex(fresh)
            assert r["answer"] not in {ix.event_text(n) for n in r["path_nodes"][:-1] if n.startswith("ev:")}
        assert r["video_uri"] == g.graph["uri"] and r["video_id"] == g.graph["video_id"]


# --------------------------------------------------------------------------------------------- sampling


def test_samples_are_valid_and_reexecute(graph, sampled):
    records, stats = sampled
    assert stats["reason"] is None and stats["samples"] == len(records) == SAMPLES
    _assert_valid(records, graph)
    assert len({r["question"] for r in records}) == len(records)  # deduplicated
    assert len({r["id"] for r in records}) == len(records)


def test_steps_balanced_and_all_families(graph, sampled):
    records, stats = sampled
    by_steps = {n: sum(r["steps"] == n for r in records) for n in range(1, 6)}
    assert by_steps == {n: 11 for n in range(1, 6)}, by_steps
    assert stats["by_steps"] == {str(n): 11 for n in range(1, 6)}
    assert set(stats["by_family"]) == set(FAMILIES), stats["by_family"]
    assert len(FAMILIES) >= 8
    # Which families a single draw of 55 samples has at 3+ steps is luck (about one seed in six misses one of
    # these, before and after the lazy feasibility checks): over three seeds each of them shows up.
    long = {r["family"] for r in records if r["steps"] >= 3}
    for seed in (8, 9):
        long |= {r["family"] for r in sample_qra(graph, QraConfig(samples_per_video=SAMPLES), seed=seed)[0]
                 if r["steps"] >= 3}
    assert long >= {"cross_clip", "relation", "temporal", "verify"}


def test_rationale_is_grounded(graph, sampled):
    records, _ = sampled
    ix = GraphIndex(graph)
    names = set(ix.desc.values())
    timeless_seen = 0
    for r in records:
        program = json.loads(r["program"])
        hops = program["hops"] + (program.get("other") or {}).get("hops", [])
        for i, sentence in enumerate(r["rationale"][:-1]):
            # each hop's sentence names a real object of the graph, and a time or a scene (a comparison's
            # sentence compares the times or values of the two paths' ends, named in the sentences before),
            # unless its fact holds throughout the clip (qra.times: when_needed leaves that time out)
            if r["family"] == "comparison" and sentence == r["rationale"][-2]:
                continue
            assert any(f"the {n}" in sentence.lower() for n in names), sentence
            if i < len(hops) and hops[i].get("timeless"):
                timeless_seen += 1
                assert not re.search(r"\d\.\ds", sentence), sentence
                continue
            assert re.search(r"\d\.\ds|scene \d", sentence), sentence
    assert timeless_seen > 0  # the test graph has facts that hold through a clip


def test_option_types(graph, sampled):
    records, _ = sampled
    descs = set(GraphIndex(graph).desc.values())
    for r in records:
        query = json.loads(r["program"])["query"] if r["answer_type"] != "yesno" else "yesno"
        vocab = {"yesno": {"yes", "no"}, "count": {str(n) for n in range(10)}, "color": set(COLOR_NAMES),
                 "shape": set(SHAPES) | set(EXTRA_SHAPES),
                 "direction": set(schema.DIRECTIONS)}.get(query)
        if vocab is not None:
            assert set(r["options"]) <= vocab, r["options"]
        elif query == "object":
            assert all(o in descs or len(o.split()) == 2 for o in r["options"]), r["options"]


def test_options_are_shuffled_and_compositional(graph, sampled):
    records, _ = sampled
    assert len({r["answer_index"] for r in records}) >= 3  # the answer is not always in the same place
    descs = set(GraphIndex(graph).desc.values())
    relation = [r for r in records if r["family"] == "relation"]
    assert relation
    for r in relation:  # graph objects are the distractors first; palette pairs only pad
        assert len([o for o in r["options"] if o in descs]) >= 3, r["options"]


def test_time_span_is_the_clips_touched(graph, sampled):
    records, _ = sampled
    spans = {0: (0.0, 3.8), 1: (4.0, 7.8)}
    records = [r for r in records if r["family"] != "comparison"]  # two paths: checked below
    seen = set()
    for r in records:
        clips = {graph.nodes[n]["clip"] for n in r["path_nodes"]}
        assert (r["start"], r["end"]) == (min(spans[c][0] for c in clips), max(spans[c][1] for c in clips)), r["question"]
        seen.add((r["start"], r["end"]))
        if r["family"] == "cross_clip":
            assert (r["start"], r["end"]) == (0.0, 7.8), r["question"]
    assert seen >= {(0.0, 3.8), (4.0, 7.8), (0.0, 7.8)}
    for r in sampled[0]:
        if r["family"] == "comparison":
            clips = {graph.nodes[n]["clip"] for n in r["path_nodes"]}
            assert (r["start"], r["end"]) == (min(spans[c][0] for c in clips), max(spans[c][1] for c in clips))


def test_deterministic(graph, sampled):
    again = sample_qra(_reload(graph), QraConfig(samples_per_video=SAMPLES), seed=7)
    assert again == sampled
    other, _ = sample_qra(graph, QraConfig(samples_per_video=SAMPLES), seed=8)
    assert [r["question"] for r in other] != [r["question"] for r in sampled[0]]
    assert {r["seed"] for r in other} == {8}


def test_min_steps_and_num_options_respected(graph):
    records, stats = sample_qra(graph, QraConfig(min_steps=2, max_steps=3, samples_per_video=8, num_options=3), seed=1)
    assert {r["steps"] for r in records} == {2, 3} and len(records) == 8
    _assert_valid(records, graph, num_options=3)


def test_random_graphs_hold_the_invariants():
    for seed in range(4):
        g = random_graph(seed)
        records, stats = sample_qra(g, QraConfig(), seed=seed)
        assert records, stats
        _assert_valid(records, g)


# --------------------------------------------------------------------------------------------- executor


def _obj(color, category, clip=None):
    return Anchor("object", {"color": color, "category": category, "clip": clip})


def test_executor_on_known_programs(graph1):
    graph = graph1
    red0, blue0 = _obj("red", "circle", 0), _obj("blue", "square", 0)
    enter = Anchor("event", {"kind": "enter", "participants": [], "time": 1.0})
    collide = Anchor("event", {"kind": "collide", "participants": ["blue square", "red circle"], "time": 2.0})
    cases = [
        (Program(blue0, (Hop("relation", {"predicate": "left_of", "time": 0.4}),), "object"), "red circle"),
        (Program(red0, (Hop("motion", {"time": 1.0}),), "direction"), "right"),
        (Program(enter, (Hop("participant"),), "object"), "green triangle"),
        (Program(collide, (Hop("next_event"),), "event"), "blue square left the scene"),
        (Program(collide, (Hop("prev_event"),), "event"), "green triangle entered the scene"),
        # red circle is above the green triangle at 2.4 s: participant + relation + colour = 2 steps
        (Program(enter, (Hop("participant"), Hop("relation", {"predicate": "above", "time": 2.4})), "color"), "red"),
        (Program(red0, (Hop("same_as", {"clip": 1}), Hop("motion", {"time": 6.0})), "direction"), "down"),
        (Program(Anchor("event", {"kind": "collide", "participants": ["purple triangle"], "time": 5.6}),
                 (Hop("participant"),), "object"), "red circle"),
        (Program(Anchor("object", {"color": "purple", "category": "triangle", "clip": None}),
                 (Hop("event_of", {"kind": "collide"}), Hop("participant")), "object"), "red circle"),
    ]
    for program, answer in cases:
        assert execute(program, graph) == answer, program
        assert execute(Program.from_json(program.to_json()), graph) == answer
    assert render_question(cases[-2][0]) == "Which object collided with the purple triangle at 5.6s?"
    q = render_question(cases[5][0])
    assert q == "What colour is the object that, at 2.4s, is above the object that entered the scene at 1.0s?"


@pytest.mark.parametrize("program, reason", [
    # at 2.4 s both the red circle and the green triangle are left of the blue square
    (Program(_obj("blue", "square", 0), (Hop("relation", {"predicate": "left_of", "time": 2.4}),), "object"),
     "ambiguous_step"),
    # "red circle" alone names two objects (one per scene)
    (Program(_obj("red", "circle"), (Hop("motion", {"time": 1.0}),), "direction"), "ambiguous_anchor"),
    (Program(_obj("pink", "circle"), (Hop("motion", {"time": 1.0}),), "direction"), "no_anchor"),
    # the purple triangle stands still
    (Program(_obj("purple", "triangle"), (Hop("motion", {"time": 5.0}),), "direction"), "dead_end"),
    (Program(_obj("red", "circle", 0), (Hop("same_as", {"clip": 1}), Hop("same_as", {"clip": 0})), "object"), "cyclic"),
    (Program(_obj("red", "circle", 0), (Hop("teleport"),), "object"), "bad_program"),
    (Program(_obj("red", "circle", 0), (Hop("motion", {"time": 1.0}),), "color"), "bad_program"),
])
def test_executor_rejects(graph1, program, reason):
    graph = graph1
    with pytest.raises(ExecutionError) as err:
        execute(program, graph)
    assert err.value.reason == reason
    assert trace(program, graph).error == reason


def test_simultaneous_events_are_neither_before_nor_after():
    """Two entrances at 2.0 s: "right after the entrance at 1.0 s" is ambiguous; right after one of the 2.0 s
    entrances comes the exit at 3.0 s (the other 2.0 s entrance is not after it)."""
    tracks = [_track(0, 1, "red", "circle", (12, 40), (100, 40), 1.0, 3.8, "A"),
              _track(0, 2, "blue", "square", (12, 80), (100, 80), 2.0, 3.8, "B"),
              _track(0, 3, "green", "triangle", (12, 120), (100, 120), 2.0, 3.8, "C"),
              _track(0, 4, "pink", "circle", (150, 40), (210, 40), 0.0, 3.0, "D")]
    events = [Event("enter", 0, 1.0, [1]), Event("enter", 0, 2.0, [2]), Event("enter", 0, 2.0, [3]),
              Event("leave", 0, 3.0, [4])]
    g = build_stsg(Perceived("tie", "file:///t.mp4", 4.0, W, H, [_clip(0, 0.0)], tracks, events), StsgConfig(),
                   source="ground_truth")

    def enter(name, t):
        return Anchor("event", {"kind": "enter", "participants": [name], "time": t})

    with pytest.raises(ExecutionError) as err:
        execute(Program(enter("red circle", 1.0), (Hop("next_event"),), "event"), g)
    assert err.value.reason == "ambiguous_step"
    for name in ("blue square", "green triangle"):
        assert execute(Program(enter(name, 2.0), (Hop("next_event"),), "event"), g) == "pink circle left the scene"
        assert execute(Program(enter(name, 2.0), (Hop("prev_event"),), "event"), g) == "red circle entered the scene"
    leave = Anchor("event", {"kind": "leave", "participants": [], "time": 3.0})
    assert trace(Program(leave, (Hop("prev_event"),), "event"), g).error == "ambiguous_step"
    records, _ = sample_qra(g, QraConfig(), seed=0)
    _assert_valid(records, g)


def test_trivial_questions_are_detected():
    assert is_trivial("What colour is the object in scene 2 that is the same as the red circle in scene 1?", "red")
    assert is_trivial("Which object is left of the red circle?", "red circle")
    assert not is_trivial("What colour is the object left of the reddish circle?", "red")
    assert not is_trivial("Which object is left of the red circle?", "blue square")


def test_identical_objects_are_never_anchors():
    """Two red circles in one scene (a perception error): neither may be named "the red circle"."""
    tracks = [
        _track(0, 1, "red", "circle", (30, 40), (90, 40), 0.0, 3.8, "A"),
        _track(0, 2, "red", "circle", (30, 120), (90, 120), 0.0, 3.8, "B"),
        _track(0, 3, "blue", "square", (180, 80), (140, 80), 0.0, 3.8, "C"),
        _track(0, 4, "green", "triangle", (120, 20), (120, 60), 0.0, 3.8, "D"),
    ]
    p = Perceived("dup", "file:///dup.mp4", 4.0, W, H, [_clip(0, 0.0)], tracks, [Event("collide", 0, 2.0, [1, 4])])
    g = build_stsg(p, StsgConfig(), source="ground_truth")
    records, stats = sample_qra(g, QraConfig(), seed=0)
    assert stats["rejected"]["ambiguous_anchor"] >= 2
    assert records
    _assert_valid(records, g)
    for r in records:
        anchor = json.loads(r["program"])["anchor"]
        assert not (anchor["type"] == "object" and anchor["color"] == "red"), r["question"]
        # (an event anchor may still name "the red circle": only one red circle collided, so the event is unique)
    with pytest.raises(ExecutionError) as err:
        execute(Program(_obj("red", "circle", 0), (Hop("motion", {"time": 1.0}),), "direction"), g)
    assert err.value.reason == "ambiguous_anchor"


def test_degenerate_graphs_give_no_samples_and_a_reason():
    cfg = QraConfig()
    empty = schema.new_graph("empty", "file:///e.mp4", 1.0, W, H, "perception")
    assert sample_qra(empty, cfg, 0)[0] == [] and sample_qra(empty, cfg, 0)[1]["reason"] == "no_objects"

    one = build_stsg(Perceived("one", "file:///o.mp4", 4.0, W, H, [_clip(0, 0.0)],
                               [_track(0, 1, "red", "circle", (20, 40), (100, 40), 0.0, 3.8, "A")], []),
                     StsgConfig(), source="ground_truth")
    records, stats = sample_qra(one, cfg, 0)
    assert records == [] and stats["reason"] == "single_object"

    # two still objects in different scenes that are not the same: no edge to walk
    apart = build_stsg(Perceived("apart", "file:///a.mp4", 8.0, W, H, [_clip(0, 0.0), _clip(1, 4.0)],
                                 [_track(0, 1, "red", "circle", (50, 50), (50, 50), 0.0, 3.8, "A"),
                                  _track(1, 1, "blue", "square", (50, 50), (50, 50), 4.0, 7.8, "B")], []),
                       StsgConfig(), source="ground_truth")
    records, stats = sample_qra(apart, cfg, 0)
    assert records == [] and stats["reason"] == "no_edges"


# --------------------------------------------------------------------------------------------- records


def test_parquet_round_trip(tmp_path, sampled):
    records, _ = sampled
    path = tmp_path / "qra" / "qra.parquet"
    shuffled = list(reversed(records))
    write_parquet(shuffled, path)
    back = read_parquet(path)
    assert back == sorted(records, key=lambda r: (r["video_id"], r["id"]))
    assert pq.read_schema(path).remove_metadata().equals(QRA_SCHEMA.remove_metadata())
    first = path.read_bytes()
    write_parquet(records, path)  # any input order gives the same file
    assert path.read_bytes() == first
    assert sorted(p.name for p in path.parent.iterdir()) == ["qra.parquet"]  # no temp file left behind


def test_bad_records_are_refused(tmp_path, sampled):
    rec = dict(sampled[0][0])
    rec["answer_index"] = (rec["answer_index"] + 1) % len(rec["options"])
    assert check_record(rec)
    with pytest.raises(QraFormatError):
        write_parquet([rec], tmp_path / "bad.parquet")
    assert not (tmp_path / "bad.parquet").exists()
    missing = {k: v for k, v in sampled[0][0].items() if k != "rationale"}
    assert check_record(missing) == ["missing field 'rationale'"]


def test_split_is_by_video_and_stable(sampled):
    records, _ = sampled
    assert {r["split"] for r in records} == {split_of("vid-a", 0.25)}
    ids = [f"video-{i}" for i in range(2000)]
    test_share = sum(split_of(v, 0.25) == "test" for v in ids) / len(ids)
    assert 0.2 < test_share < 0.3
    assert [split_of(v, 0.25) for v in ids] == [split_of(v, 0.25) for v in ids]
