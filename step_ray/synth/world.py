"""The synthetic world's objects, scenes and physics (no pixels: see :mod:`step_ray.synth.render`).

A video is a sequence of scenes (shots). Each scene has a background and a few *actors*: physical objects
(:class:`WorldObject`, the same across scene cuts) with a role, a depth layer, a start position and a
constant velocity. Roles:

- ``bounce``: starts inside the frame and bounces off its walls, so its full shape always stays in view;
- ``enter``: starts fully outside one edge and moves in; once fully inside it behaves like ``bounce``;
- ``leave``: starts inside, the walls do not hold it, and it is aimed so that it crosses an edge and is
  gone before the scene ends (unless a collision turns it away first).

Actors on the same layer collide when their boxes touch (both bounce, speeds unchanged); an actor partly
outside the frame keeps its course and only the one inside bounces off it. Actors on different layers pass
over each other (the front layer occludes). A bouncer may also *pause* (stop for a while, then move on with
its old velocity: ``stop_moving`` / ``start_moving`` events) and *change colour* once (an attribute change).
All randomness comes from the ``rng`` passed in, so a seed fixes the world.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from step_ray.perception.colors import COLOR_NAMES

SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
ROLES: tuple[str, ...] = ("bounce", "enter", "leave")
LAYERS = 2  # 0 = back, 1 = front
SUBSTEPS = 4  # fewest physics steps per video frame: collision times accurate to a quarter frame
MAX_STEP_PX = 1.5  # more substeps at low fps, so boxes never sink deeper than this into each other
BASE_SPEED = (20.0, 60.0)  # px/s at a 160 px short side: clearly moving, never a blur
MARGIN = 2.0  # px kept between a placed box and the frame edge
COLLISION_COOLDOWN = 0.3  # s: one contact between a pair is one collide event, even if it re-touches at once


@dataclass(frozen=True)
class WorldObject:
    """A physical object: the same identity, colour, shape and size in every scene it appears in."""

    identity: str  # "o3": unique within the video
    shape: str  # one of SHAPES
    color: str  # a PALETTE name
    size: int  # side of its bounding square in pixels


@dataclass
class Actor:
    """An object's part in one scene: role, depth layer and motion at the scene's start."""

    obj: WorldObject
    role: str
    layer: int
    pos: tuple[float, float]  # centre (x, y) in pixels at scene time 0
    vel: tuple[float, float]  # pixels per second
    pause: tuple[float, float] | None = None  # (stop, resume) in scene seconds: it stands still in between
    recolor: tuple[int, str] | None = None  # (scene frame, colour): from that frame on it has this colour

    def color_at(self, frame: int) -> str:
        """Its colour at scene frame ``frame``."""
        return self.recolor[1] if self.recolor is not None and frame >= self.recolor[0] else self.obj.color


@dataclass(frozen=True)
class Background:
    """A dark, low-saturation backdrop: grey ``level`` plus a small ``tint`` and an optional linear ramp."""

    level: float  # 0..255 grey level
    tint: tuple[float, float, float]  # per-channel offsets (small against level: stays unsaturated)
    ramp: tuple[float, float]  # (dx, dy): added level from the frame's centre to its right / bottom edge


@dataclass(frozen=True)
class Collision:
    """Two same-layer actors' boxes touched while approaching; ``time`` is seconds from the scene start."""

    time: float
    a: int  # actor indices within the scene, a < b
    b: int


@dataclass
class SceneMotion:
    """Where every actor is at every frame of a scene, and which collisions happened."""

    positions: np.ndarray  # (frames, actors, 2) float centres
    collisions: list[Collision]


# --------------------------------------------------------------------------------------------- planning


def speed_range(width: int, height: int) -> tuple[float, float]:
    """Speeds scale with the frame so motion looks the same at any resolution (20-60 px/s at 160 px)."""
    k = min(width, height) / 160.0
    return BASE_SPEED[0] * k, BASE_SPEED[1] * k


def plan_background(rng: np.random.Generator, previous: Background | None) -> Background:
    """A backdrop whose grey level differs from the previous scene's by at least 40, so a colour histogram
    sees the cut, and that stays dark and unsaturated, so colour segmentation never takes it for an object
    (``colors.color_name`` gives None: value < 0.25 or saturation < 0.35)."""
    lo, hi, min_step = 28.0, 120.0, 40.0
    for _ in range(100):
        level = float(rng.uniform(lo, hi))
        if previous is None or abs(level - previous.level) >= min_step:
            break
    else:  # unreachable in practice: [28, 120] always leaves room 40 away from any level
        level = hi if previous.level < (lo + hi) / 2 else lo
    # A tint direction (neutral, cool, green, warm, magenta) scaled to <= 12% of the level: saturation stays
    # below ~0.22 however it adds up per channel.
    directions = ((0.0, 0.0, 0.0), (-1.0, 0.0, 1.0), (-0.5, 1.0, -0.5), (1.0, 0.3, -1.0), (0.6, -1.0, 0.6))
    d = directions[int(rng.integers(len(directions)))]
    amp = float(rng.uniform(0.04, 0.12)) * level
    tint = (d[0] * amp, d[1] * amp, d[2] * amp)
    if rng.random() < 0.5:
        ramp = (0.0, 0.0)  # plain
    else:  # a faint gradient along one axis
        a = float(rng.uniform(4.0, 10.0)) * (1 if rng.random() < 0.5 else -1)
        ramp = (a, 0.0) if rng.random() < 0.5 else (0.0, a)
    return Background(level=level, tint=tint, ramp=ramp)


def new_objects(rng: np.random.Generator, count: int, used_kinds: set[tuple[str, str]], scene_colors: set[str],
                object_size: int, first_id: int, shapes: tuple[str, ...] = SHAPES) -> list[WorldObject]:
    """Up to ``count`` new objects whose (colour, shape) is unused in the video (``used_kinds``, updated).

    Colours are also kept distinct within a scene when the palette allows, so "the red object" names one
    thing in a scene and a colour detector does not merge two objects. Fewer are returned when the video has
    used up all colour-shape kinds; the caller then brings back earlier objects instead.
    """
    out: list[WorldObject] = []
    for _ in range(count):
        free = [(c, s) for c in COLOR_NAMES for s in shapes if (c, s) not in used_kinds]
        if not free:
            break
        fresh = [k for k in free if k[0] not in scene_colors]
        pool = fresh or free
        color, shape = pool[int(rng.integers(len(pool)))]
        size = max(6, int(round(object_size * rng.uniform(0.75, 1.25))))
        used_kinds.add((color, shape))
        scene_colors.add(color)
        out.append(WorldObject(identity=f"o{first_id + len(out)}", shape=shape, color=color, size=size))
    return out


def _random_velocity(rng: np.random.Generator, speeds: tuple[float, float], around: float | None = None,
                     spread: float = math.pi) -> tuple[float, float]:
    """A velocity of random speed in ``speeds``; direction uniform, or within ``spread`` of ``around``."""
    speed = float(rng.uniform(*speeds))
    angle = float(rng.uniform(-math.pi, math.pi)) if around is None else around + float(rng.uniform(-spread, spread))
    return speed * math.cos(angle), speed * math.sin(angle)


def _overlaps(pos: tuple[float, float], half: float, others: list[tuple[tuple[float, float], float]],
              gap: float) -> bool:
    return any(abs(pos[0] - p[0]) < half + h + gap and abs(pos[1] - p[1]) < half + h + gap for p, h in others)


# Outward normals of the four edges, as angles (image coordinates: y grows downwards).
_EDGE_ANGLE = {"left": math.pi, "right": 0.0, "top": -math.pi / 2, "bottom": math.pi / 2}


def place_on_grid(rng: np.random.Generator, objects: list[WorldObject], width: int, height: int, grid: int,
                  still: bool, rows: int | None = None) -> list[Actor]:
    """Each object at the centre of its own cell of a ``rows`` x ``grid`` grid (``rows`` None: square; 1: one
    horizontal row of ``grid`` slots), jittered by up to a tenth of a cell, all on one layer; still objects have
    no velocity, moving ones a random one (they bounce as usual)."""
    rows = grid if rows is None else rows
    cells = rng.permutation(rows * grid)[:len(objects)]
    speeds = speed_range(width, height)
    actors = []
    for obj, cell in zip(objects, cells):
        row, col = divmod(int(cell), grid)
        jitter = 0.1 * min(width / grid, height / rows)  # a tenth of the cell's short side, both ways
        x = (col + 0.5) * width / grid + float(rng.uniform(-jitter, jitter))
        y = (row + 0.5) * height / rows + float(rng.uniform(-jitter, jitter))
        vel = (0.0, 0.0) if still else _random_velocity(rng, speeds)
        actors.append(Actor(obj=obj, role="bounce", layer=0, pos=(x, y), vel=vel))
    return actors


def place_actors(rng: np.random.Generator, objects: list[WorldObject], roles: list[str], width: int, height: int,
                 duration: float, still: bool = False) -> list[Actor]:
    """Give each object a layer, a start position and a velocity that fit its role.

    ``bounce`` actors start fully inside and apart from same-layer actors; ``enter`` actors start outside an
    edge, aimed to come in between 15% and 50% of the scene; ``leave`` actors start inside, aimed to be
    fully out between 45% and 85% of the scene. ``still``: every actor is a bouncer without velocity, placed
    apart from every other actor (no layer passes over another: nothing moves to uncover it).
    """
    if still:
        roles = ["bounce"] * len(roles)
    speeds = (0.0, 0.0) if still else speed_range(width, height)
    placed: dict[int, list[tuple[tuple[float, float], float]]] = {layer: [] for layer in range(LAYERS)}
    actors: list[Actor] = []
    for obj, role in zip(objects, roles):
        half = obj.size / 2.0
        layer = 0 if still else int(rng.integers(LAYERS))
        pos, vel = (width / 2.0, height / 2.0), _random_velocity(rng, speeds)
        for attempt in range(400):
            if attempt == 200 and role != "bounce":
                role = "bounce"  # no path fits (a very short scene): the object just stays in view
            if role == "bounce":
                pos = (float(rng.uniform(half + MARGIN, width - half - MARGIN)),
                       float(rng.uniform(half + MARGIN, height - half - MARGIN)))
                vel = _random_velocity(rng, speeds)
            elif role == "enter":
                pos, vel = _enter_path(rng, half, width, height, duration, speeds)
            else:
                pos, vel = _leave_path(rng, half, width, height, duration, speeds)
            if pos is not None and (role == "enter" or not _overlaps(pos, half, placed[layer], 4.0)):
                break
        # After 400 draws a bouncer may overlap a neighbour: the collision rule then pushes them apart.
        assert pos is not None and vel is not None
        placed[layer].append((pos, half))
        actors.append(Actor(obj=obj, role=role, layer=layer, pos=pos, vel=vel))
    return actors


def plan_changes(rng: np.random.Generator, actors: list[Actor], duration: float, frames: int,
                 used_kinds: set[tuple[str, str]], pause_prob: float, recolor_prob: float) -> None:
    """Give some bouncers a pause and some a colour change (in place; ``used_kinds`` is updated).

    A pause starts at 20-50% of the scene and lasts 25-40% of it, long enough to be seen at a low sampling
    rate. A colour change happens at 30-70% of the scene, to a colour no other actor of the scene has and to a
    (colour, shape) kind unused in the video, so the colour detector never mixes up two objects.
    """
    scene_colors = {a.obj.color for a in actors}
    for a in actors:
        if a.role != "bounce":
            continue
        if rng.random() < pause_prob and (a.vel[0] or a.vel[1]):  # a still object has no motion to pause
            stop = float(rng.uniform(0.2, 0.5)) * duration
            a.pause = (round(stop, 6), round(stop + float(rng.uniform(0.25, 0.4)) * duration, 6))
        if rng.random() < recolor_prob:
            free = [c for c in COLOR_NAMES if c not in scene_colors and (c, a.obj.shape) not in used_kinds]
            if free:
                color = free[int(rng.integers(len(free)))]
                a.recolor = (int(rng.integers(int(0.3 * frames), max(int(0.3 * frames), int(0.7 * frames)) + 1)), color)
                scene_colors.add(color)
                used_kinds.add((color, a.obj.shape))


def _enter_path(rng: np.random.Generator, half: float, width: int, height: int, duration: float,
                speeds: tuple[float, float]) -> tuple:
    """Start just outside an edge, moving in within 45 degrees of the inward normal; (None, None) if the
    draw would slide along the edge out of the frame before being fully in."""
    edge = ("left", "right", "top", "bottom")[int(rng.integers(4))]
    inward = _EDGE_ANGLE[edge] + math.pi
    vx, vy = _random_velocity(rng, speeds, around=inward, spread=math.pi / 4)
    horizontal = edge in ("left", "right")
    length = height if horizontal else width  # the edge's length
    along = float(rng.uniform(half + MARGIN, length - half - MARGIN))
    v_in, v_along = (abs(vx), vy) if horizontal else (abs(vy), vx)
    t_touch = float(rng.uniform(0.15, 0.5)) * duration  # when its leading edge reaches the frame
    t_full = t_touch + 2 * half / v_in  # when it is fully inside
    # Along the edge it must be inside the frame by the time it is fully in (then the walls hold it).
    along_full = along + v_along * (t_full - t_touch)
    if not half + MARGIN <= along_full <= length - half - MARGIN:
        return None, None
    depth = half + v_in * t_touch  # centre's distance outside the edge at t = 0
    along0 = along - v_along * t_touch
    if edge == "left":
        return (-depth, along0), (vx, vy)
    if edge == "right":
        return (width + depth, along0), (vx, vy)
    if edge == "top":
        return (along0, -depth), (vx, vy)
    return (along0, height + depth), (vx, vy)


def _leave_path(rng: np.random.Generator, half: float, width: int, height: int, duration: float,
                speeds: tuple[float, float]) -> tuple:
    """Aim at an edge so the box is fully outside at 45-85% of the scene; (None, None) if that would need
    a start outside the frame."""
    edge = ("left", "right", "top", "bottom")[int(rng.integers(4))]
    vx, vy = _random_velocity(rng, speeds, around=_EDGE_ANGLE[edge], spread=math.pi / 4)
    t_out = float(rng.uniform(0.45, 0.85)) * duration
    horizontal = edge in ("left", "right")
    length = height if horizontal else width
    along_out = float(rng.uniform(half, length - half))
    # Centre when the box has just fully crossed the edge, then back along the velocity to t = 0.
    if edge == "left":
        out = (-half, along_out)
    elif edge == "right":
        out = (width + half, along_out)
    elif edge == "top":
        out = (along_out, -half)
    else:
        out = (along_out, height + half)
    x0, y0 = out[0] - vx * t_out, out[1] - vy * t_out
    if not (half + MARGIN <= x0 <= width - half - MARGIN and half + MARGIN <= y0 <= height - half - MARGIN):
        return None, None
    return (x0, y0), (vx, vy)


# --------------------------------------------------------------------------------------------- physics


def simulate(actors: list[Actor], width: int, height: int, fps: int, frames: int) -> SceneMotion:
    """Integrate the scene in substeps of at most ``MAX_STEP_PX``; positions are recorded at each frame."""
    n = len(actors)
    pos = np.array([a.pos for a in actors], dtype=np.float64).reshape(n, 2)
    vel = np.array([a.vel for a in actors], dtype=np.float64).reshape(n, 2)
    half = np.array([a.obj.size / 2.0 for a in actors], dtype=np.float64)
    layer = [a.layer for a in actors]
    # Walls hold bouncers always and enterers once they are fully in; leavers never.
    held = np.array([a.role == "bounce" for a in actors], dtype=bool)
    can_enter = np.array([a.role == "enter" for a in actors], dtype=bool)
    limit = np.array([width, height], dtype=np.float64)
    # A pausing actor's velocity is parked while it stands still (collisions then see it at rest) and given
    # back when it moves on.
    pauses = [(i, a.pause) for i, a in enumerate(actors) if a.pause is not None]
    parked: dict[int, np.ndarray] = {}
    top_speed = float(np.abs(vel).max(initial=0.0))
    substeps = max(SUBSTEPS, math.ceil(top_speed / (fps * MAX_STEP_PX)))
    dt = 1.0 / (fps * substeps)
    out = np.empty((frames, n, 2), dtype=np.float64)
    collisions: list[Collision] = []
    last_contact: dict[tuple[int, int], float] = {}
    for f in range(frames):
        out[f] = pos
        if f == frames - 1:
            break
        for s in range(substeps):
            t = (f * substeps + s + 1) * dt
            for i, (stop, resume) in pauses:
                if stop <= t < resume and i not in parked:
                    parked[i] = vel[i].copy()
                    vel[i] = 0.0
                elif t >= resume and i in parked:
                    vel[i] = parked.pop(i)
            pos += vel * dt
            inside = np.all((pos - half[:, None] >= 0) & (pos + half[:, None] <= limit), axis=1)
            held |= can_enter & inside
            _bounce_walls(pos, vel, half, held, limit)
            for i in range(n):
                for j in range(i + 1, n):
                    if layer[i] != layer[j] or not (inside[i] or inside[j]):
                        continue
                    # An actor partly outside (coming in or going out) keeps its course, so it is never
                    # pushed back out or in; the one inside bounces off it.
                    if _collide(pos, vel, half, i, j, move_i=bool(inside[i]), move_j=bool(inside[j])):
                        if t - last_contact.get((i, j), -1e9) > COLLISION_COOLDOWN:
                            collisions.append(Collision(time=round(t, 6), a=i, b=j))
                        last_contact[(i, j)] = t
    return SceneMotion(positions=out, collisions=collisions)


def _bounce_walls(pos: np.ndarray, vel: np.ndarray, half: np.ndarray, held: np.ndarray, limit: np.ndarray) -> None:
    """Reflect held actors that crossed a wall (mirror the overshoot, flip that velocity component)."""
    for axis in (0, 1):
        lo = held & (pos[:, axis] - half < 0) & (vel[:, axis] < 0)
        pos[lo, axis] = 2 * half[lo] - pos[lo, axis]
        vel[lo, axis] *= -1
        hi = held & (pos[:, axis] + half > limit[axis]) & (vel[:, axis] > 0)
        pos[hi, axis] = 2 * (limit[axis] - half[hi]) - pos[hi, axis]
        vel[hi, axis] *= -1


def _collide(pos: np.ndarray, vel: np.ndarray, half: np.ndarray, i: int, j: int, move_i: bool = True,
             move_j: bool = True) -> bool:
    """If boxes i and j touch while approaching, bounce them apart along the axis of least overlap.

    Each actor's velocity component on that axis is turned to point away from the other, keeping its
    magnitude: energy is conserved per actor, so nobody stalls (an equal-mass exchange could leave one at
    rest) and at least one of them visibly turns back. ``move_i`` / ``move_j`` False keep that actor's course.
    """
    d = pos[j] - pos[i]
    overlap = half[i] + half[j] - np.abs(d)
    if overlap[0] < 0 or overlap[1] < 0:
        return False
    axis = 0 if overlap[0] < overlap[1] else 1
    sign = 1.0 if d[axis] >= 0 else -1.0  # direction from i to j on that axis
    if (vel[j, axis] - vel[i, axis]) * sign >= 0:
        return False  # already separating
    if move_i:
        vel[i, axis] = -sign * abs(vel[i, axis])
    if move_j:
        vel[j, axis] = sign * abs(vel[j, axis])
    return True


def same_layer_overlap(actors: list[Actor], positions: np.ndarray, width: int, height: int) -> float:
    """Deepest overlap (px, along the shallower axis) of two same-layer boxes at any frame where at least one
    of them is fully in view: ~0 when collisions work; larger when an object comes in on top of another
    (the scene planner then redraws the scene)."""
    half = np.array([a.obj.size / 2.0 for a in actors], dtype=np.float64)
    limit = np.array([width, height], dtype=np.float64)
    inside = np.all((positions - half[None, :, None] >= 0) & (positions + half[None, :, None] <= limit), axis=2)
    worst = 0.0
    for i in range(len(actors)):
        for j in range(i + 1, len(actors)):
            if actors[i].layer != actors[j].layer:
                continue
            overlap = half[i] + half[j] - np.abs(positions[:, i] - positions[:, j])  # (frames, 2)
            depth = np.where(inside[:, i] | inside[:, j], overlap.min(axis=1), 0.0)
            worst = max(worst, float(depth.max(initial=0.0)))
    return worst
