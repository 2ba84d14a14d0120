"""The synthetic world: determinism, ground-truth graphs, real H.264 files, colours, idempotent re-runs."""

from __future__ import annotations

import dataclasses
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch  # noqa: F401  - import torch before decord (see DESIGN.md)
import decord  # noqa: E402

from step_ray.config import StsgConfig, SynthConfig, VideoConfig
from step_ray.perception.colors import PALETTE, color_name
from step_ray.stsg import schema
from step_ray.synth import render, world
from step_ray.synth.corpus import (
    MANIFEST, VISIBLE_FRACTION, frames_per_scene, generate_corpus, iter_scenes, params_hash, scene_truth,
)
from step_ray.video.sampling import keyframe_times, sample_indices

TINY = SynthConfig(videos=4, seed=3, width=128, height=96, fps=10, scene_seconds=2.0, scenes=2, min_objects=3,
                   max_objects=5, object_size=16)
VIDEO = VideoConfig()
STSG = StsgConfig()


def _decode(path: str | Path) -> tuple[np.ndarray, float]:
    vr = decord.VideoReader(str(path))
    return vr.get_batch(list(range(len(vr)))).asnumpy(), vr.get_avg_fps()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> tuple[Path, list[dict]]:
    out = tmp_path_factory.mktemp("synth")
    return out, generate_corpus(out, TINY, VIDEO, STSG)


# --------------------------------------------------------------------------------------------- files


def test_corpus_layout_and_summaries(corpus):
    out, summaries = corpus
    assert [s["video_id"] for s in summaries] == [f"synth_{i:04d}" for i in range(TINY.videos)]
    for s in summaries:
        assert Path(s["path"]) == out / "videos" / f"{s['video_id']}.mp4" and Path(s["path"]).is_file()
        assert Path(s["gt_path"]) == out / "gt" / f"{s['video_id']}.stsg.json" and Path(s["gt_path"]).is_file()
        assert s["frames"] == TINY.scenes * frames_per_scene(TINY) == 40
        assert s["objects"] >= TINY.min_objects
        g = schema.read(s["gt_path"])
        assert s["events"] == len(schema.nodes_of(g, "event")) == sum(s["event_counts"].values())
    assert not list(out.rglob("*.tmp")), "temp files must be renamed or removed"
    manifest = json.loads((out / MANIFEST).read_text())
    assert set(manifest["videos"]) == {s["video_id"] for s in summaries}


def test_video_decodes_with_expected_frames_size_and_fps(corpus):
    _, summaries = corpus
    for s in summaries:
        frames, fps = _decode(s["path"])
        assert frames.shape == (s["frames"], TINY.height, TINY.width, 3)
        assert fps == pytest.approx(TINY.fps)


def test_colours_survive_compression(corpus):
    """At the centre of every fully visible object the decoded pixel still has the object's colour name, and
    the backdrop away from objects is never named a colour."""
    _, summaries = corpus
    checked = 0
    for index, s in enumerate(summaries):
        frames, _ = _decode(s["path"])
        for scene in iter_scenes(index, TINY, VIDEO, STSG):
            for f in range(scene.masks.shape[0]):
                frame = frames[scene.first_frame + f]
                for i, actor in enumerate(scene.actors):
                    if scene.visible[f, i] == scene.areas[i]:
                        x, y = scene.motion.positions[f, i]
                        assert color_name(tuple(frame[int(round(y)), int(round(x))])) == actor.color_at(f)
                        checked += 1
                # Backdrop pixels at least 3 px from any object (chroma is subsampled 2x2 in yuv420p).
                far = np.ones_like(scene.masks[f], dtype=bool)
                ys, xs = np.nonzero(scene.masks[f])
                for dy in range(-3, 4):
                    for dx in range(-3, 4):
                        far[np.clip(ys + dy, 0, TINY.height - 1), np.clip(xs + dx, 0, TINY.width - 1)] = False
                bg = frame[far][::17]
                named = sum(color_name(tuple(px)) is not None for px in bg)
                assert named <= 0.01 * len(bg)
    assert checked > 100


def test_rendered_frames_use_exact_palette_colours():
    scene = next(iter_scenes(0, TINY, VIDEO, STSG))
    frames = scene.frames()
    for i, actor in enumerate(scene.actors):
        pixels = frames[scene.masks == i + 1]
        assert len(pixels) and (pixels == np.array(PALETTE[actor.obj.color], dtype=np.uint8)).all()
    assert ((scene.masks == 0) | (scene.masks <= len(scene.actors))).all()


# --------------------------------------------------------------------------------------------- determinism


def test_same_seed_gives_identical_files_and_frames(corpus, tmp_path):
    out, summaries = corpus
    again = generate_corpus(tmp_path, TINY, VIDEO, STSG)
    for a, b in zip(summaries, again):
        assert Path(a["gt_path"]).read_bytes() == Path(b["gt_path"]).read_bytes()
        assert Path(a["path"]).read_bytes() == Path(b["path"]).read_bytes()
        fa, _ = _decode(a["path"])
        fb, _ = _decode(b["path"])
        assert np.array_equal(fa, fb)


def test_different_seed_differs(corpus, tmp_path):
    _, summaries = corpus
    other = generate_corpus(tmp_path, dataclasses.replace(TINY, seed=TINY.seed + 1, videos=2), VIDEO, STSG)
    for a, b in zip(summaries, other):
        assert Path(a["gt_path"]).read_text() != Path(b["gt_path"]).read_text()
        fa, _ = _decode(a["path"])
        fb, _ = _decode(b["path"])
        assert not np.array_equal(fa, fb)


def test_videos_are_independent_of_each_other(corpus, tmp_path):
    """Video i depends on (seed, i) only: generating it alone, in a corpus of another size, gives the same."""
    _, summaries = corpus
    alone = generate_corpus(tmp_path, dataclasses.replace(TINY, videos=1), VIDEO, STSG)
    assert Path(alone[0]["gt_path"]).read_bytes() == Path(summaries[0]["gt_path"]).read_bytes()


# --------------------------------------------------------------------------------------------- ground truth


def test_gt_graph_is_valid_and_rich(corpus):
    _, summaries = corpus
    kinds: Counter = Counter()
    same_as = 0
    per = frames_per_scene(TINY)
    sampled = sample_indices(TINY.scenes * per, TINY.fps, VIDEO.sample_fps, VIDEO.max_frames)
    for s in summaries:
        g = schema.read(s["gt_path"])
        assert g.graph["source"] == "ground_truth" and g.graph["video_id"] == s["video_id"]
        assert (g.graph["width"], g.graph["height"]) == (TINY.width, TINY.height)
        clips = schema.nodes_of(g, "clip")
        assert len(clips) == TINY.scenes
        for c in clips:
            d = g.nodes[c]
            times = [i / TINY.fps for i in sampled if d["index"] * per <= i < (d["index"] + 1) * per]
            assert (d["start"], d["end"]) == (round(times[0], 3), round(times[-1], 3))
            kfs = sorted(g.nodes[k]["time"] for k in g.successors(c) if g.nodes[k]["type"] == "keyframe")
            assert kfs == [round(t, 3) for t in keyframe_times(times, times[0], times[-1], VIDEO.keyframe_fps)]
        objects = schema.nodes_of(g, "object")
        assert objects
        for o in objects:
            d = g.nodes[o]
            assert d["category"] in world.SHAPES and d["attributes"]["color"] in PALETTE and d["source"] == "synth"
            assert d["boxes"], "every GT object is seen on a keyframe"
            for t, x1, y1, x2, y2 in d["boxes"]:
                assert 0 <= x1 < x2 <= TINY.width and 0 <= y1 < y2 <= TINY.height
        # Colour-shape kinds are unique within a clip (and so descriptions name one object).
        for c in clips:
            names = [schema.describe_object(g, o) for o in objects if g.nodes[o]["clip"] == g.nodes[c]["index"]]
            assert len(names) == len(set(names))
        assert schema.edges_of(g, "relation")
        for u, v, _ in schema.edges_of(g, "same_as"):
            same_as += 1
            assert g.nodes[u]["clip"] != g.nodes[v]["clip"]
            assert schema.describe_object(g, u) == schema.describe_object(g, v)
        for e in schema.nodes_of(g, "event"):
            d = g.nodes[e]
            kinds[d["kind"]] += 1
            parts = [u for u, _, x in g.in_edges(e, data=True) if x["type"] == "participates_in"]
            assert len(parts) == (2 if d["kind"] == "collide" else 1)
            clip = g.nodes[schema.clip_id(d["clip"])]
            assert clip["start"] - 1e-6 <= d["time"] <= clip["end"] + 0.1
            for p in parts:
                assert g.nodes[p]["clip"] == d["clip"]
                assert g.nodes[p]["first"] - 0.1 <= d["time"] <= g.nodes[p]["last"] + 0.1
    assert same_as >= 2, "returning objects give same_as edges across the cut"
    assert kinds["enter"] and kinds["leave"] and kinds["collide"], kinds


def test_gt_boxes_cover_the_objects_pixels_in_the_video(corpus):
    """Each GT box at a keyframe holds pixels of the object's colour in the decoded video."""
    _, summaries = corpus
    fractions = []
    for s in summaries:
        g = schema.read(s["gt_path"])
        frames, _ = _decode(s["path"])
        for o in schema.nodes_of(g, "object"):
            for t, x1, y1, x2, y2 in g.nodes[o]["boxes"]:
                color = schema.attribute_at(g, o, "color", t)
                crop = frames[int(round(t * TINY.fps))][int(y1):int(y2), int(x1):int(x2)].reshape(-1, 3)
                fractions.append(np.mean([color_name(tuple(px)) == color for px in crop]))
    assert min(fractions) > 0.0
    assert np.median(fractions) > 0.5


def test_gt_tracks_follow_visibility_and_events(corpus):
    """Tracks hold a box exactly where >= 15% of the object shows; enter / leave fall at the first / last box
    of objects that were out of the frame at the clip's start / end; pauses and colour changes fall at their
    simulated times."""
    seen_kinds: set[str] = set()
    for index in range(TINY.videos):
        for scene in iter_scenes(index, TINY, VIDEO, STSG):
            tracks, events = scene_truth(scene)
            by_id = {t.track_id: t for t in tracks}
            for t in tracks:
                i = t.track_id
                assert t.identity == scene.actors[i].obj.identity and t.source == "synth"
                for time in scene.clip.frame_times:
                    f = scene.local_frame(time)
                    shown = scene.visible[f, i] >= VISIBLE_FRACTION * scene.areas[i]
                    assert (time in t.boxes) == bool(shown)
            for e in events:
                if e.kind == "enter":
                    assert e.time == min(by_id[e.participants[0]].boxes)
                    assert scene.actors[e.participants[0]].role == "enter"
                elif e.kind == "leave":
                    assert e.time == max(by_id[e.participants[0]].boxes)
                    assert scene.actors[e.participants[0]].role == "leave"
                elif e.kind in ("stop_moving", "start_moving"):
                    actor = scene.actors[e.participants[0]]
                    when = e.time - scene.first_frame / scene.fps
                    assert actor.role == "bounce" and actor.pause is not None
                    assert abs(when - actor.pause[0 if e.kind == "stop_moving" else 1]) < 1e-6
                elif e.kind == "change":
                    actor = scene.actors[e.participants[0]]
                    assert actor.recolor is not None and e.attrs["to"] == actor.recolor[1]
                    assert e.attrs["from"] == actor.obj.color and by_id[actor_index(scene, actor)].changes
                else:
                    assert e.kind == "collide"
                    a, b = (scene.actors[p] for p in e.participants)
                    assert a.layer == b.layer
                    seen_kinds.add("collide")
                seen_kinds.add(e.kind)
    assert {"stop_moving", "start_moving", "change", "collide", "enter", "leave"} <= seen_kinds


def actor_index(scene, actor) -> int:
    return scene.actors.index(actor)


def test_kinds_unique_in_a_video_and_objects_return_after_cuts():
    for index in range(TINY.videos):
        kind_of: dict[str, tuple[str, str]] = {}
        owner: dict[tuple[str, str], str] = {}
        per_scene = []
        for scene in iter_scenes(index, TINY, VIDEO, STSG):
            ids = set()
            for a in scene.actors:
                kind = (a.obj.color, a.obj.shape)
                assert owner.setdefault(kind, a.obj.identity) == a.obj.identity, "one object per colour-shape kind"
                assert kind_of.setdefault(a.obj.identity, kind) == kind, "an object keeps its looks"
                ids.add(a.obj.identity)
            per_scene.append(ids)
        for prev, cur in zip(per_scene, per_scene[1:]):
            assert prev & cur, "at least one object of the previous scene returns after a cut"


# --------------------------------------------------------------------------------------------- idempotence


def test_rerun_skips_existing_files(tmp_path):
    cfg = dataclasses.replace(TINY, videos=2)
    first = generate_corpus(tmp_path, cfg, VIDEO, STSG)
    stamps = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*") if p.is_file()}
    again = generate_corpus(tmp_path, cfg, VIDEO, STSG, progress=True)
    assert again == first
    assert {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*") if p.is_file()} == stamps

    # A bigger corpus only adds videos; the existing ones are untouched.
    more = generate_corpus(tmp_path, dataclasses.replace(cfg, videos=3), VIDEO, STSG)
    assert more[:2] == first and Path(more[2]["path"]).is_file()
    for s in first:
        assert Path(s["path"]).stat().st_mtime_ns == stamps[Path(s["path"])]

    # A missing file, or a parameter the videos depend on, makes them be written again.
    Path(first[0]["gt_path"]).unlink()
    generate_corpus(tmp_path, cfg, VIDEO, STSG)
    assert Path(first[0]["gt_path"]).is_file()
    assert Path(first[1]["path"]).stat().st_mtime_ns == stamps[Path(first[1]["path"])]
    changed = dataclasses.replace(cfg, object_size=20)
    assert params_hash(0, changed, VIDEO, STSG) != params_hash(0, cfg, VIDEO, STSG)
    generate_corpus(tmp_path, changed, VIDEO, STSG)
    assert Path(first[1]["path"]).stat().st_mtime_ns != stamps[Path(first[1]["path"])]


# --------------------------------------------------------------------------------------------- the world


def _square(identity: str, color: str, layer: int, pos, vel, size: int = 16) -> world.Actor:
    return world.Actor(obj=world.WorldObject(identity, "square", color, size), role="bounce", layer=layer,
                       pos=pos, vel=vel)


def test_same_layer_objects_collide_and_bounce_back():
    actors = [_square("o0", "red", 0, (30.0, 48.0), (40.0, 0.0)), _square("o1", "blue", 0, (98.0, 48.0), (-40.0, 0.0))]
    motion = world.simulate(actors, 128, 96, fps=10, frames=20)
    # Gap between the boxes is 68 - 16 = 52 px, closing at 80 px/s: contact at 0.65 s.
    assert len(motion.collisions) == 1
    c = motion.collisions[0]
    assert (c.a, c.b) == (0, 1) and c.time == pytest.approx(0.65, abs=0.03)
    x = motion.positions[:, :, 0]
    assert x[-1, 0] < x[7, 0] and x[-1, 1] > x[7, 1], "both turned back"
    assert world.same_layer_overlap(actors, motion.positions, 128, 96) <= 2.0


def test_different_layers_pass_over_each_other_with_occlusion():
    # They meet exactly at frame 9 (x = 66).
    actors = [_square("o0", "red", 0, (30.0, 48.0), (40.0, 0.0)), _square("o1", "blue", 1, (102.0, 48.0), (-40.0, 0.0))]
    motion = world.simulate(actors, 128, 96, fps=10, frames=20)
    assert motion.collisions == []
    masks, visible, in_frame = render.render_masks(actors, motion.positions, 128, 96)
    crossing = int(np.argmin(np.abs(motion.positions[:, 0, 0] - motion.positions[:, 1, 0])))
    assert visible[crossing, 1] == 16 * 16, "the front layer is drawn whole"
    assert crossing == 9 and visible[crossing, 0] == 0 and in_frame[crossing, 0] == 16 * 16, "the back one is hidden"
    assert visible[0, 0] == visible[-1, 0] == 16 * 16


def test_bouncers_stay_in_frame_and_objects_move_clearly():
    lo, hi = world.speed_range(TINY.width, TINY.height)
    for index in range(TINY.videos):
        for scene in iter_scenes(index, TINY, VIDEO, STSG):
            for i, a in enumerate(scene.actors):
                assert lo <= float(np.hypot(*a.vel)) <= hi
                if a.role == "bounce":
                    assert (scene.in_frame[:, i] == scene.areas[i]).all()
            assert world.same_layer_overlap(scene.actors, scene.motion.positions, TINY.width, TINY.height) <= 3.0


def test_backgrounds_are_dark_unsaturated_and_change_at_cuts():
    rng = np.random.default_rng(0)
    prev = None
    for _ in range(200):
        bg = world.plan_background(rng, prev)
        img = render.background_image(bg, 64, 48)
        for px in img[::7, ::7].reshape(-1, 3):
            assert color_name(tuple(px)) is None
        if prev is not None:
            assert abs(bg.level - prev.level) >= 40
        prev = bg


@pytest.mark.parametrize("shape", world.SHAPES)
def test_sprites_fill_their_box(shape):
    s = render.sprite(shape, 17)
    ys, xs = np.nonzero(s)
    assert (xs.min(), ys.min(), xs.max(), ys.max()) == (0, 0, 16, 16)
    assert 0.4 * 17 * 17 < s.sum() <= 17 * 17
    assert render.mask_box(s.astype(np.uint8), 1) == (0.0, 0.0, 17.0, 17.0)


def test_sparse_sampling_still_gives_one_clip_per_scene(tmp_path):
    """max_frames below the scene count leaves a scene unsampled: its clip is still there, just empty."""
    cfg = dataclasses.replace(TINY, videos=1, scenes=3, scene_seconds=1.0)
    [s] = generate_corpus(tmp_path, cfg, dataclasses.replace(VIDEO, max_frames=2), STSG)
    g = schema.read(s["gt_path"])
    assert len(schema.nodes_of(g, "clip")) == 3
    frames, _ = _decode(s["path"])
    assert len(frames) == 30
