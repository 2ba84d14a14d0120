"""What the graph builder consumes: clips (shots with keyframe times) and object tracks.

Both the perception stage (detector + tracker) and the synthetic world (ground truth) produce these, so one
builder (:mod:`step_ray.stsg.build`) makes predicted and ground-truth graphs alike, and they compare fairly.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Optional

# x1, y1, x2, y2 in pixels of the frame size the graph declares; x2 / y2 exclusive (x + w, as cv2 gives them)
Box = tuple[float, float, float, float]


@dataclass
class Clip:
    """A shot: ``start`` / ``end`` are the times (s) of its first and last sampled frame, both included; with
    the times of all its sampled frames and of its keyframes."""

    index: int
    start: float
    end: float
    frame_times: list[float]
    keyframe_times: list[float]


@dataclass(frozen=True)
class AttrChange:
    """An attribute of a tracked object changed: ``start`` is the last sampled time the old value was seen,
    ``end`` the first time the new one was (the change happened in between)."""

    attribute: str
    before: str
    after: str
    start: float
    end: float


@dataclass
class Track:
    """One object identity inside one clip, with its box at each sampled frame where it was seen."""

    clip: int
    track_id: int
    category: str
    boxes: dict[float, Box]
    color: Optional[str] = None
    conf: float = 1.0
    source: str = "tracker"
    identity: Optional[str] = None  # ground truth only: the physical object, shared across clips
    changes: list[AttrChange] = field(default_factory=list)  # ``color`` is the value at first sight
    appearance: Optional[list[float]] = None  # unit-norm appearance embedding (perception; for same_as)

    @property
    def times(self) -> list[float]:
        return sorted(self.boxes)


@dataclass
class Event:
    """An event given explicitly (the simulator knows its collisions); otherwise the builder infers events."""

    kind: str
    clip: int
    time: float
    participants: list[int]  # track ids within the clip
    source: str = "synth"
    conf: float = 1.0
    attrs: dict = field(default_factory=dict)  # kind-specific: ``change`` has attribute/from/to, ``action`` label


@dataclass
class Perceived:
    """Everything perception knows about one video: the input of :func:`step_ray.stsg.build.build_stsg`."""

    video_id: str
    uri: str
    duration: float
    width: int
    height: int
    clips: list[Clip]
    tracks: list[Track]
    events: Optional[list[Event]] = None
    provenance: dict = field(default_factory=dict)


def center(b: Box) -> tuple[float, float]:
    return ((b[0] + b[2]) / 2.0, (b[1] + b[3]) / 2.0)


def size(b: Box) -> float:
    return ((b[2] - b[0]) + (b[3] - b[1])) / 2.0


def gap(a: Box, b: Box) -> float:
    """Distance between two boxes' edges (0 when they touch or overlap)."""
    dx = max(0.0, max(a[0], b[0]) - min(a[2], b[2]))
    dy = max(0.0, max(a[1], b[1]) - min(a[3], b[3]))
    return (dx * dx + dy * dy) ** 0.5


# --------------------------------------------------------------------------------------------- rows


def perceived_to_json(p: Perceived) -> dict:
    """A JSON-able form of :class:`Perceived`: what a perception actor hands to a graph-building actor."""
    return {
        "video_id": p.video_id, "uri": p.uri, "duration": p.duration, "width": p.width, "height": p.height,
        "clips": [dataclasses.asdict(c) for c in p.clips],
        "tracks": [{**{k: v for k, v in dataclasses.asdict(t).items() if k not in ("boxes", "changes")},
                    "boxes": [[time, *box] for time, box in sorted(t.boxes.items())],
                    "changes": [dataclasses.asdict(c) for c in t.changes]} for t in p.tracks],
        "events": None if p.events is None else [dataclasses.asdict(e) for e in p.events],
        "provenance": p.provenance,
    }


def perceived_from_json(d: dict) -> Perceived:
    tracks = [Track(**{**{k: v for k, v in t.items() if k not in ("boxes", "changes")},
                       "boxes": {b[0]: tuple(b[1:]) for b in t["boxes"]},
                       "changes": [AttrChange(**c) for c in t["changes"]]}) for t in d["tracks"]]
    return Perceived(
        video_id=d["video_id"], uri=d["uri"], duration=d["duration"], width=d["width"], height=d["height"],
        clips=[Clip(**c) for c in d["clips"]], tracks=tracks,
        events=None if d["events"] is None else [Event(**e) for e in d["events"]], provenance=d["provenance"],
    )
