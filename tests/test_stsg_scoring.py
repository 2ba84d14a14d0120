"""Scoring predicted scene graphs against ground truth: real graphs from the builder, errors injected into the
tracks or the graph, exact counts expected."""

import json
from pathlib import Path

import pytest

from step_ray.cli import main
from step_ray.config import load_config
from step_ray.stsg import schema
from step_ray.stsg.build import build_stsg
from step_ray.stsg.scoring import ScoreSettings, evaluate_dirs, match_objects, score_video
from step_ray.perception.tracks import Clip, Event, Perceived, Track

FPS = 5
CLIP0 = [round(i / FPS, 3) for i in range(10)]  # 0.0 .. 1.8
CLIP1 = [round(2 + i / FPS, 3) for i in range(10)]  # 2.0 .. 3.8
CLIPS = [Clip(0, 0.0, 1.8, CLIP0, [0.2, 1.0, 1.8]), Clip(1, 2.0, 3.8, CLIP1, [2.2, 3.0, 3.8])]
CFG = load_config().stsg


def box(cx, cy, r=10):
    return (cx - r, cy - r, cx + r, cy + r)


def world(identity=True, drop=(), split_a_at=None, collide_at=1.0):
    """Clip 0: A (red circle) moves right along y=40, B (blue square) stands at (180, 40), C (green triangle)
    appears at 0.4 s at (100, 120). Clip 1: A again, D (yellow circle) seen until 3.0 s. Events: C enters,
    A and B collide, D leaves."""
    def ident(x):
        return x if identity else None

    tracks = [
        Track(0, 0, "circle", {t: box(30 + 50 * t, 40) for t in CLIP0}, "red", identity=ident("A")),
        Track(0, 1, "square", {t: box(180, 40) for t in CLIP0}, "blue", identity=ident("B")),
        Track(0, 2, "triangle", {t: box(100, 120) for t in CLIP0 if t >= 0.4}, "green", identity=ident("C")),
        Track(1, 0, "circle", {t: box(60, 80) for t in CLIP1}, "red", identity=ident("A")),
        Track(1, 3, "circle", {t: box(160, 120) for t in CLIP1 if t <= 3.0}, "yellow", identity=ident("D")),
    ]
    if split_a_at is not None:  # the tracker loses A and picks it up again under a new id
        a = tracks[0]
        tracks[0] = Track(0, 0, "circle", {t: b for t, b in a.boxes.items() if t < split_a_at}, "red")
        tracks.append(Track(0, 7, "circle", {t: b for t, b in a.boxes.items() if t >= split_a_at}, "red"))
    tracks = [t for t in tracks if (t.clip, t.track_id) not in drop]
    events = [Event("enter", 0, 0.4, [2]), Event("collide", 0, collide_at, [0, 1]), Event("leave", 1, 3.0, [3])]
    return Perceived("v", "/nowhere/v.mp4", 4.0, 224, 160, CLIPS, tracks, events)


@pytest.fixture(scope="module")
def gt():
    return build_stsg(world(), CFG, "ground_truth")


def predicted(**kw):
    return build_stsg(world(identity=False, **kw), CFG, "perception")


def test_perfect_prediction_scores_one(gt):
    for pred in (gt, predicted()):  # the truth itself, and perception that sees exactly what is there
        s = score_video(pred, gt)
        assert s.objects.tp == 5 and s.objects.fp == s.objects.fn == 0
        assert s.object_lists_match
        assert s.id_switches == 0 and s.gt_track_frames == 10 + 10 + 8 + 10 + 6
        for c in (s.relations, s.relations_all, s.events, s.same_as):
            assert (c.fp, c.fn, c.f1) == (0, 0, 1.0) and c.tp > 0
        assert s.same_as.tp == 1  # A in clip 0 is A in clip 1: one pair
    assert set(s.events_by_kind) == {"enter", "collide", "leave"}


def test_one_object_removed(gt):
    s = score_video(predicted(drop={(0, 2)}), gt)  # C is never detected (nor its enter event)
    assert (s.objects.tp, s.objects.fp, s.objects.fn) == (4, 0, 1)
    assert not s.object_lists_match
    assert (s.events.tp, s.events.fp, s.events.fn) == (2, 0, 1)
    assert (s.events_by_kind["enter"].tp, s.events_by_kind["enter"].fn) == (0, 1)
    # Between matched objects the relations are all right; counting C, its relations with A and B (one
    # direction predicate each way, never near) at the keyframes 1.0 and 1.8 are missed: 2 x 4.
    perfect = score_video(gt, gt).relations_all.tp
    assert (s.relations.fp, s.relations.fn) == (0, 0)
    assert (s.relations_all.tp, s.relations_all.fp, s.relations_all.fn) == (perfect - 8, 0, 8)
    assert s.id_switches == 0 and (s.same_as.tp, s.same_as.fp, s.same_as.fn) == (1, 0, 0)


def test_identity_switch_is_counted_once(gt):
    s = score_video(predicted(split_a_at=1.0), gt)
    assert s.id_switches == 1
    assert (s.objects.tp, s.objects.fp, s.objects.fn) == (5, 1, 0)  # the second fragment of A is spurious


def test_relation_flipped(gt):
    pred = predicted()
    flipped = [d for u, v, d in schema.edges_of(pred, "relation")
               if (u, v, d["predicate"]) == ("obj:0:0", "obj:0:1", "left_of")]
    assert len(flipped) == 1 and (flipped[0]["start"], flipped[0]["end"]) == (0.2, 1.8)
    flipped[0]["predicate"] = "right_of"  # wrong at all three keyframes of clip 0
    s = score_video(pred, gt)
    perfect = score_video(gt, gt).relations.tp
    assert (s.relations.tp, s.relations.fp, s.relations.fn) == (perfect - 3, 3, 3)
    assert s.objects.f1 == 1.0 and s.events.f1 == 1.0


def test_event_shift_beyond_and_within_tolerance(gt):
    late = score_video(predicted(collide_at=1.6), gt, ScoreSettings(time_tol=0.5))
    assert (late.events.tp, late.events.fp, late.events.fn) == (2, 1, 1)
    c = late.events_by_kind["collide"]
    assert (c.tp, c.fp, c.fn) == (0, 1, 1)
    near = score_video(predicted(collide_at=1.4), gt, ScoreSettings(time_tol=0.5))
    assert (near.events.tp, near.events.fp, near.events.fn) == (3, 0, 0)


def test_events_need_the_same_participants(gt):
    pred = predicted()
    # Make the collision A-B a collision A-C: right kind and time, wrong object.
    ev = next(e for e in schema.nodes_of(pred, "event") if pred.nodes[e]["kind"] == "collide")
    pred.remove_edge("obj:0:1", ev)
    pred.add_edge("obj:0:2", ev, type="participates_in", source="test", conf=1.0)
    s = score_video(pred, gt)
    assert (s.events.tp, s.events.fp, s.events.fn) == (2, 1, 1)


def test_matching_prefers_overlap_and_rejects_low_iou(gt):
    # Shift every predicted box by 15 px: IoU of 20 px boxes drops to 1/7, no match at 0.5, all at 0.1.
    shifted = world(identity=False)
    for t in shifted.tracks:
        t.boxes = {k: (b[0] + 15, b[1], b[2] + 15, b[3]) for k, b in t.boxes.items()}
    pred = build_stsg(shifted, CFG, "perception")
    assert match_objects(pred, gt, 0.5) == {}
    assert len(match_objects(pred, gt, 0.1)) == 5


def test_missing_and_unreadable_predictions(tmp_path, gt):
    gt_dir, pred_dir = tmp_path / "gt", tmp_path / "pred"
    for vid in ("a", "b", "c"):
        g = build_stsg(world(), CFG, "ground_truth")
        g.graph["video_id"] = vid
        schema.write(g, gt_dir / f"{vid}.stsg.json")
    p = predicted()
    p.graph["video_id"] = "a"
    schema.write(p, pred_dir / "a.stsg.json")
    (pred_dir / "b.stsg.json").write_text("{not json")  # c has no prediction at all
    broken = build_stsg(world(), CFG, "ground_truth")  # valid JSON and version, but a field is missing
    broken.graph["video_id"] = "d"
    schema.write(broken, gt_dir / "d.stsg.json")
    broken = predicted()
    broken.graph["video_id"] = "d"
    next(d for _, _, d in schema.edges_of(broken, "relation")).pop("start")
    schema.write(broken, pred_dir / "d.stsg.json")
    extra = predicted()
    extra.graph["video_id"] = "zzz"
    schema.write(extra, pred_dir / "zzz.stsg.json")
    report = evaluate_dirs(pred_dir, gt_dir)
    status = {v["video_id"]: v["status"] for v in report["videos"]}
    assert status == {"a": "ok", "b": "unreadable", "c": "missing", "d": "unreadable"}
    assert [Path(e["path"]).name for e in report["errors"]] == ["b.stsg.json", "d.stsg.json"]
    assert "malformed graph: KeyError" in report["errors"][1]["error"]
    assert report["extra_predictions"][0].endswith("zzz.stsg.json")
    c = report["corpus"]
    assert c["objects"]["tp"] == 5 and c["objects"]["fn"] == 15 and c["objects"]["fp"] == 0
    assert c["events"]["tp"] == 3 and c["events"]["fn"] == 9
    assert c["object_lists_exact_share"] == 0.25
    assert c["videos_missing"] == 3


def test_synthetic_corpus_truth_against_itself(synth_corpus):
    gt_dir = synth_corpus["dir"] / "gt"
    report = evaluate_dirs(gt_dir, gt_dir)
    c = report["corpus"]
    assert c["videos"] == len(synth_corpus["items"]) and not report["errors"]
    for name in ("objects", "relations", "relations_all", "events", "same_as"):
        assert c[name]["f1"] == 1.0, name
    assert c["id_switches"] == 0 and c["gt_track_frames"] > 0 and c["object_lists_exact_share"] == 1.0


def test_cli_stsg_eval(synth_corpus, tmp_path, capsys):
    gt_dir = synth_corpus["dir"] / "gt"
    out, plot = tmp_path / "report.json", tmp_path / "scores.png"
    assert main(["stsg-eval", "--pred", str(gt_dir), "--gt", str(gt_dir), "--output", str(out), "--plot", str(plot)]) == 0
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and plot.stat().st_size > 10_000
    printed = capsys.readouterr().out
    assert "corpus (6)" in printed and "events F1 by kind" in printed
    report = json.loads(out.read_text())
    assert report["corpus"]["objects"]["f1"] == 1.0 and len(report["videos"]) == 6
    assert main(["stsg-eval", "--pred", str(tmp_path / "nope"), "--gt", str(gt_dir)]) == 2
    assert "--pred" in capsys.readouterr().err
    assert main(["stsg-eval", "--pred", str(gt_dir), "--gt", str(gt_dir), "--iou", "0"]) == 2


def test_graphs_without_track_fall_back_to_keyframe_boxes(gt):
    pred, truth = predicted(split_a_at=1.0), gt.copy()
    for g in (pred, truth):
        for n in schema.nodes_of(g, "object"):
            del g.nodes[n]["track"]
    s = score_video(pred, truth)
    assert (s.objects.tp, s.objects.fp, s.objects.fn) == (5, 1, 0)
    assert s.gt_track_frames == 3 + 3 + 2 + 3 + 2  # keyframes each object is seen at
    assert s.id_switches == 1  # A's box at 0.2 s is covered by one fragment, at 1.0 and 1.8 s by the other
