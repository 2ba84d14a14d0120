"""The synthetic corpus: mp4 videos of moving coloured shapes and their ground-truth scene graphs.

``generate_corpus`` writes ``videos/synth_{i:04d}.mp4`` (H.264) and ``gt/synth_{i:04d}.stsg.json`` (an STSG
built by :func:`step_ray.stsg.build.build_stsg` from the simulator's exact tracks and events) for each video,
plus ``manifest.json`` that records a hash of every parameter a video depends on, so a re-run skips what is
already there and regenerates what changed. Each video depends only on ``(seed, index)`` and the config, so
videos are independent: :func:`generate_video` is the unit a parallel runner can farm out.

Ground truth follows the decoder's sampling rule (:func:`step_ray.video.sampling.sample_indices` over the
whole video, time = index / fps): boxes are the tight pixel box of each object's *visible* part at each
sampled frame, and an object counts as present when at least :data:`VISIBLE_FRACTION` of its pixels show.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
from tqdm import tqdm

from step_ray.config import StsgConfig, SynthConfig, VideoConfig
from step_ray.stsg import schema
from step_ray.stsg.build import build_stsg
from step_ray.perception.tracks import AttrChange, Clip, Event, Perceived, Track
from step_ray.synth import render, world
from step_ray.synth.world import Actor, Background, SceneMotion, WorldObject
from step_ray.video.sampling import keyframe_times, sample_indices

GENERATOR_VERSION = "synth/2"  # bump when the world, the rendering or the ground truth changes
VISIBLE_FRACTION = 0.15  # an object is present at a frame when at least this share of its pixels is visible
ROLE_WEIGHTS = {"bounce": 0.55, "enter": 0.25, "leave": 0.20}  # for objects new to a scene
MAX_SCENE_ATTEMPTS = 20  # redraws of a scene whose returning object is not seen or whose objects overlap
MAX_OVERLAP_PX = 3.0  # same-layer boxes may interpenetrate this much (a quarter-frame physics step)
MANIFEST = "manifest.json"


def video_id(index: int) -> str:
    return f"synth_{index:04d}"


def frames_per_scene(synth: SynthConfig) -> int:
    return max(1, int(round(synth.scene_seconds * synth.fps)))


# --------------------------------------------------------------------------------------------- scenes


@dataclass
class Scene:
    """One simulated and rendered shot, with what ground truth needs from it."""

    index: int
    fps: int
    first_frame: int  # index of its first frame in the video
    background: Background
    actors: list[Actor]
    motion: SceneMotion
    masks: np.ndarray  # (frames, H, W) uint8 id masks: 0 background, i + 1 actor i
    visible: np.ndarray  # (frames, actors) visible pixels
    in_frame: np.ndarray  # (frames, actors) pixels inside the frame, occlusion ignored
    areas: np.ndarray  # (actors,) pixels of each whole shape
    clip: Clip

    def local_frame(self, t: float) -> int:
        """Index within the scene of the video frame at time ``t`` (s, from the video's start)."""
        return int(round(t * self.fps)) - self.first_frame

    @property
    def present(self) -> np.ndarray:
        """(frames, actors) bool: at least VISIBLE_FRACTION of the shape is visible."""
        return self.visible >= VISIBLE_FRACTION * self.areas[None, :]

    def frames(self) -> np.ndarray:
        """The scene's RGB frames ``(frames, H, W, 3)``."""
        h, w = self.masks.shape[1:]
        return render.compose(self.masks, self.actors, render.background_image(self.background, w, h))


def _clips(synth: SynthConfig, video: VideoConfig) -> list[Clip]:
    """The clips the decoder will see: sampled frames of each scene (time = index / fps), their keyframes."""
    per = frames_per_scene(synth)
    total = per * synth.scenes
    sampled = sample_indices(total, synth.fps, video.sample_fps, video.max_frames)
    clips = []
    for k in range(synth.scenes):
        times = [i / synth.fps for i in sampled if k * per <= i < (k + 1) * per]
        if times:
            start, end = times[0], times[-1]
            kfs = keyframe_times(times, start, end, video.keyframe_fps)
        else:  # sampling so sparse that no frame of this scene is looked at
            start, end, kfs = k * per / synth.fps, ((k + 1) * per - 1) / synth.fps, []
        clips.append(Clip(index=k, start=start, end=end, frame_times=times, keyframe_times=kfs))
    return clips


def _rng(synth: SynthConfig, index: int, *more: int) -> np.random.Generator:
    """Independent stream per (seed, video, scene, attempt): videos can be made in any order or in parallel."""
    return np.random.default_rng([synth.seed % (2**63), index, *more])


def _keyframes_seen(scene: Scene, actor: int) -> int:
    """On how many of the clip's keyframes the actor is present (the builder drops tracks seen on fewer
    than ``stsg.min_track_keyframes``)."""
    present = scene.present
    return sum(bool(present[scene.local_frame(t), actor]) for t in scene.clip.keyframe_times)


def iter_scenes(index: int, synth: SynthConfig, video: VideoConfig, stsg: StsgConfig) -> Iterator[Scene]:
    """Plan, simulate and render the scenes of video ``index`` one at a time (masks of one scene in memory).

    After each cut one or two objects of the previous scene return (same identity, colour, shape, size) as
    bouncers. A scene is redrawn (up to :data:`MAX_SCENE_ATTEMPTS` times, else the last draw is kept) until
    one of them is seen on enough keyframes to form a track, so the ground truth has a ``same_as`` across
    the cut, and until no object comes in on top of another of its layer.
    """
    per = frames_per_scene(synth)
    duration = per / synth.fps
    clips = _clips(synth, video)
    used_kinds: set[tuple[str, str]] = set()
    seen: list[WorldObject] = []  # every object so far, in order of first appearance
    changed: set[str] = set()  # identities that changed colour: they do not come back (their colour is ambiguous)
    prev: Scene | None = None
    background: Background | None = None
    for k in range(synth.scenes):
        candidates = [] if prev is None else [a.obj for i, a in enumerate(prev.actors)
                                              if _keyframes_seen(prev, i) >= stsg.min_track_keyframes
                                              and a.obj.identity not in changed]
        scene = None
        for attempt in range(MAX_SCENE_ATTEMPTS):
            rng = _rng(synth, index, k, attempt)
            kinds = set(used_kinds)
            bg = world.plan_background(rng, background)
            actors, carried = _plan_actors(rng, k, synth, prev, candidates, seen, changed, kinds, duration)
            scene = _render_scene(k, k * per, bg, actors, synth, clips[k])
            seen_again = (not carried or not scene.clip.keyframe_times  # an unsampled scene cannot show it
                          or any(_keyframes_seen(scene, i) >= stsg.min_track_keyframes for i in carried))
            overlap = world.same_layer_overlap(actors, scene.motion.positions, synth.width, synth.height)
            if seen_again and overlap <= MAX_OVERLAP_PX:
                break
        assert scene is not None
        used_kinds = kinds
        for a in scene.actors:
            if a.obj not in seen:
                seen.append(a.obj)
            if a.recolor is not None:
                changed.add(a.obj.identity)
        background = scene.background
        yield scene
        prev = scene


def _plan_actors(rng: np.random.Generator, k: int, synth: SynthConfig, prev: Scene | None,
                 candidates: list[WorldObject], seen: list[WorldObject], changed: set[str],
                 kinds: set[tuple[str, str]], duration: float) -> tuple[list[Actor], list[int]]:
    """Choose the scene's objects and roles and place them; returns the actors and the indices of the
    returning ones. Objects in ``changed`` (they changed colour) never return."""
    n = int(rng.integers(synth.min_objects, synth.max_objects + 1))
    carried: list[WorldObject] = []
    if prev is not None:
        pool = candidates or [a.obj for a in prev.actors if a.obj.identity not in changed]
        count = min(n, len(pool), 1 + int(rng.random() < 0.3))
        carried = [pool[i] for i in sorted(rng.choice(len(pool), size=count, replace=False))]
    colors = {o.color for o in carried}
    fresh = world.new_objects(rng, n - len(carried), kinds, colors, synth.object_size, first_id=len(seen),
                              shapes=tuple(synth.shapes))
    # The video ran out of unused colour-shape kinds: bring back earlier objects (they are the same
    # physical objects, so uniqueness of kinds still holds), preferring colours not in the scene yet.
    back = [o for o in seen if o not in carried and o.identity not in changed]
    back.sort(key=lambda o: o.color in colors)
    extra = back[: n - len(carried) - len(fresh)]
    objects = carried + extra + fresh
    roles = ["bounce"] * (len(carried) + len(extra))
    names, weights = list(ROLE_WEIGHTS), np.array(list(ROLE_WEIGHTS.values()))
    for j in range(len(fresh)):
        first_of_video = prev is None and j == 0  # someone is in view from the first frame
        roles.append("bounce" if first_of_video else names[int(rng.choice(len(names), p=weights / weights.sum()))])
    order = [int(i) for i in rng.permutation(len(objects))]  # track ids need not reveal who returned
    objects, roles = [objects[i] for i in order], [roles[i] for i in order]
    if synth.layout in ("grid", "row"):
        actors = world.place_on_grid(rng, objects, synth.width, synth.height, synth.grid, still=not synth.motion,
                                     rows=1 if synth.layout == "row" else None)
    else:
        actors = world.place_actors(rng, objects, roles, synth.width, synth.height, duration, still=not synth.motion)
    world.plan_changes(rng, actors, duration, frames_per_scene(synth), kinds, synth.pause_prob, synth.recolor_prob)
    returning = [i for i, o in enumerate(objects) if o in carried]
    return actors, returning


def _render_scene(k: int, first_frame: int, bg: Background, actors: list[Actor], synth: SynthConfig,
                  clip: Clip) -> Scene:
    per = frames_per_scene(synth)
    motion = world.simulate(actors, synth.width, synth.height, synth.fps, per)
    masks, visible, in_frame = render.render_masks(actors, motion.positions, synth.width, synth.height)
    return Scene(index=k, fps=synth.fps, first_frame=first_frame, background=bg, actors=actors, motion=motion,
                 masks=masks, visible=visible, in_frame=in_frame, areas=render.sprite_areas(actors), clip=clip)


# --------------------------------------------------------------------------------------------- ground truth


def scene_truth(scene: Scene) -> tuple[list[Track], list[Event]]:
    """Ground-truth tracks and events of one scene (= clip ``scene.index``); track id = actor index.

    - ``enter``: an object out of the frame at the clip's first sampled frame, at its first sampled frame
      with a track box; ``leave``: one out of the frame at the clip's last sampled frame, at its last box.
    - ``collide``, ``stop_moving``, ``start_moving``: the simulator's contacts and pauses at their exact time,
      kept when the objects are visible at the nearest video frame (a hidden event is no fact anyone could see).
    - ``change`` (colour): at the first video frame with the new colour, when the object is seen with its old
      colour before and its new colour after (on sampled frames); the track carries the change, and its
      ``color`` is the colour at first sight.
    """
    k, clip = scene.index, scene.clip
    if not clip.frame_times:
        return [], []  # no frame of this scene is sampled: nothing is seen
    present = scene.present
    fps = scene.fps
    start = scene.first_frame / fps
    last = present.shape[0] - 1
    local = [scene.local_frame(t) for t in clip.frame_times]
    tracks: list[Track] = []
    events: list[Event] = []

    def seen_at(i: int, scene_time: float) -> bool:
        return bool(present[min(last, int(round(scene_time * fps))), i])

    for i, a in enumerate(scene.actors):
        boxes, colors = {}, {}
        for f, t in zip(local, clip.frame_times):
            if present[f, i]:
                box = render.mask_box(scene.masks[f], i + 1)
                if box is not None:
                    boxes[t], colors[t] = box, a.color_at(f)
        if not boxes:
            continue
        times = sorted(boxes)
        changes = []
        if a.recolor is not None:
            old = [t for t in times if colors[t] == a.obj.color]
            new = [t for t in times if colors[t] != a.obj.color]
            if old and new:
                changes.append(AttrChange("color", a.obj.color, a.recolor[1], old[-1], new[0]))
                events.append(Event("change", k, round(start + a.recolor[0] / fps, 6), [i], source="synth",
                                    attrs={"attribute": "color", "from": a.obj.color, "to": a.recolor[1]}))
        tracks.append(Track(clip=k, track_id=i, category=a.obj.shape, boxes=boxes, color=colors[times[0]], conf=1.0,
                            source="synth", identity=a.obj.identity, changes=changes))
        out = scene.in_frame[:, i] < VISIBLE_FRACTION * scene.areas[i]
        if out[local[0]]:
            events.append(Event("enter", k, min(boxes), [i], source="synth"))
        if out[local[-1]]:
            events.append(Event("leave", k, max(boxes), [i], source="synth"))
        if a.pause is not None:
            for kind, when in (("stop_moving", a.pause[0]), ("start_moving", a.pause[1])):
                if when <= last / fps and seen_at(i, when):
                    events.append(Event(kind, k, round(start + when, 6), [i], source="synth"))
    tracked = {t.track_id for t in tracks}
    for c in scene.motion.collisions:
        if c.a in tracked and c.b in tracked and seen_at(c.a, c.time) and seen_at(c.b, c.time):
            events.append(Event("collide", k, round(start + c.time, 6), [c.a, c.b], source="synth"))
    return tracks, events


# --------------------------------------------------------------------------------------------- one video


def params_hash(index: int, synth: SynthConfig, video: VideoConfig, stsg: StsgConfig) -> str:
    """Hash of everything video ``index`` and its ground truth depend on (not the corpus size)."""
    payload = {
        "generator": GENERATOR_VERSION,
        "encoder": {"crf": render.CRF, "preset": render.PRESET},
        "synth": {k: v for k, v in dataclasses.asdict(synth).items() if k != "videos"},
        "video": {"sample_fps": video.sample_fps, "max_frames": video.max_frames, "keyframe_fps": video.keyframe_fps},
        "stsg": dataclasses.asdict(stsg),
        "index": index,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def generate_video(index: int, synth: SynthConfig, video: VideoConfig, stsg: StsgConfig,
                   out_dir: str | Path) -> dict:
    """Write video ``index`` and its ground-truth graph under ``out_dir``; return its summary (paths relative
    to ``out_dir``). Both files are written atomically, the graph last."""
    out_dir = Path(out_dir)
    vid = video_id(index)
    rel_mp4, rel_gt = f"videos/{vid}.mp4", f"gt/{vid}.stsg.json"
    per = frames_per_scene(synth)
    tracks: list[Track] = []
    events: list[Event] = []
    clips: list[Clip] = []
    identities: set[str] = set()
    with render.Mp4Writer(out_dir / rel_mp4, synth.width, synth.height, synth.fps) as writer:
        for scene in iter_scenes(index, synth, video, stsg):
            writer.write(scene.frames())
            t, e = scene_truth(scene)
            tracks += t
            events += e
            clips.append(scene.clip)
            identities.update(a.obj.identity for a in scene.actors)
    perceived = Perceived(video_id=vid, uri=rel_mp4, duration=per * synth.scenes / synth.fps, width=synth.width,
                          height=synth.height, clips=clips, tracks=tracks, events=events,
                          provenance={"generator": GENERATOR_VERSION, "seed": synth.seed, "index": index,
                                      "params": params_hash(index, synth, video, stsg)})
    g = build_stsg(perceived, stsg, source="ground_truth")
    schema.write(g, out_dir / rel_gt)
    kinds = Counter(d["kind"] for _, d in g.nodes(data=True) if d.get("type") == "event")
    return {
        "video_id": vid, "path": rel_mp4, "gt_path": rel_gt, "frames": per * synth.scenes, "fps": synth.fps,
        "width": synth.width, "height": synth.height, "duration": perceived.duration, "clips": synth.scenes,
        "objects": len(identities), "events": sum(kinds.values()), "event_counts": dict(sorted(kinds.items())),
    }


# --------------------------------------------------------------------------------------------- the corpus


def _load_manifest(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
        return data if isinstance(data, dict) and isinstance(data.get("videos"), dict) else {"videos": {}}
    except (OSError, ValueError):
        return {"videos": {}}  # missing or unreadable: everything is regenerated


def _write_manifest(path: Path, manifest: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=1, sort_keys=True))
    os.replace(tmp, path)


def _absolute(summary: dict, out_dir: Path) -> dict:
    return {**summary, "path": str(out_dir / summary["path"]), "gt_path": str(out_dir / summary["gt_path"])}


def generate_corpus(out_dir: str | Path, synth: SynthConfig, video: VideoConfig, stsg: StsgConfig,
                    progress: bool = False) -> list[dict]:
    """Write ``synth.videos`` videos and their ground truth under ``out_dir``; one summary dict per video
    (``video_id``, absolute ``path`` and ``gt_path``, ``frames``, ``objects``, ``events``, ...).

    Idempotent: a video whose manifest entry has the same parameter hash and whose two files exist is not
    rewritten. The manifest is saved after every video, so an interrupted run resumes where it stopped.
    """
    out_dir = Path(out_dir).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    manifest_path = out_dir / MANIFEST
    manifest = _load_manifest(manifest_path)
    manifest["generator"] = GENERATOR_VERSION
    summaries = []
    for index in tqdm(range(synth.videos), desc="synth videos", unit="video", disable=not progress):
        vid = video_id(index)
        h = params_hash(index, synth, video, stsg)
        entry = manifest["videos"].get(vid)
        if (isinstance(entry, dict) and entry.get("hash") == h and isinstance(entry.get("summary"), dict)
                and all((out_dir / entry["summary"][key]).is_file() for key in ("path", "gt_path"))):
            summaries.append(_absolute(entry["summary"], out_dir))
            continue
        summary = generate_video(index, synth, video, stsg, out_dir)
        manifest["videos"][vid] = {"hash": h, "summary": summary}
        _write_manifest(manifest_path, manifest)
        summaries.append(_absolute(summary, out_dir))
    return summaries
