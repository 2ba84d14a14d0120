"""What the graph builder consumes: clips (shots with keyframe times) and object tracks.

Both the perception stage (detector + tracker) and the synthetic world (ground truth) produce these, so one
builder (:mod:`step_ray.stsg.build`) makes predicted and ground-truth graphs alike, and they compare fairly.
They are typed records (:mod:`step_ray.utils.arrow`): the perception actors hand :class:`Perceived` to the
graph-building actors as an Arrow struct.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import pyarrow as pa

from step_ray.video.clips import Clip

__all__ = ["RELATIONS", "Box", "Clip", "AttrChange", "Track", "Event", "Perceived", "center", "size", "gap"]

# x1, y1, x2, y2 in pixels of the frame size the graph declares; x2 / y2 exclusive (x + w, as cv2 gives them)
Box = tuple[float, float, float, float]

#: The spatial relations perception states (geometry and the Video-LLM's parsing); the STSG stores them.
RELATIONS = ("left_of", "right_of", "above", "below", "near")

#: Kind-specific fields of an :class:`Event` (``change``: attribute / from / to; ``action``: label).
EVENT_ATTRS = pa.struct([("attribute", pa.string()), ("from", pa.string()), ("to", pa.string()),
                         ("label", pa.string())])

#: What built a :class:`Perceived` (the graph's ``provenance``), as the typed struct it travels in.
PROVENANCE = pa.struct([
    ("detector", pa.string()), ("tracker", pa.string()), ("decoder", pa.string()), ("sample_fps", pa.float64()),
    ("keyframes", pa.string()), ("device", pa.string()),
    ("parser", pa.struct([("prompt", pa.string()), ("model", pa.string()), ("keyframes", pa.int64()),
                          ("samples", pa.int64()), ("malformed", pa.int64()), ("invalid_items", pa.int64()),
                          ("facts", pa.int64())])),
])


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
    attrs: dict = field(default_factory=dict, metadata={"arrow": EVENT_ATTRS})  # kind-specific (EVENT_ATTRS)


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
    provenance: dict = field(default_factory=dict, metadata={"arrow": PROVENANCE})


def center(b: Box) -> tuple[float, float]:
    return ((b[0] + b[2]) / 2.0, (b[1] + b[3]) / 2.0)


def size(b: Box) -> float:
    return ((b[2] - b[0]) + (b[3] - b[1])) / 2.0


def gap(a: Box, b: Box) -> float:
    """Distance between two boxes' edges (0 when they touch or overlap)."""
    dx = max(0.0, max(a[0], b[0]) - min(a[2], b[2]))
    dy = max(0.0, max(a[1], b[1]) - min(a[3], b[3]))
    return (dx * dx + dy * dy) ** 0.5
