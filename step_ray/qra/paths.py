"""Reasoning paths as small programs over an STSG, and the executor that runs them.

A :class:`Program` is an *anchor* (a node the question names by a unique description), a chain of typed
*hops* over graph edges, and a *query* that reads the answer off the last entity. Two optional parts make
yes / no questions: ``check`` (verify: "is the answer this value?") and ``other`` + a comparison query
(compare the ends of two paths). The number of reasoning steps is the number of hops, plus the other path's
hops and one for the comparison itself.

Programs name nodes only the way questions do (colour + shape + scene, event kind + participants + time),
never by node id, so a program sampled on a predicted graph can be run on the ground-truth graph.

Anchors
    ``object``  ``{"color", "category", "clip"}``: the object described "colour category" (colour at first
                sight); ``clip`` is None when the description is unique in the whole video, else the clip
                (scene) it is unique in.
    ``event``   ``{"kind", "participants", "time"}``: an event of that kind whose participants include the
                named ones (descriptions); ``time`` (seconds, 0.1 s precision) may be None.

Hops (``op``: source type -> result type, parameters; the edge type walked)
    ``relation``      object -> object ``{predicate, time}``: the object that is ``predicate`` the current one
                      at ``time`` (a ``relation`` edge into the current object whose span holds ``time``).
    ``participant``   event -> object ``{}``: the participant of the event (``participates_in``), leaving out
                      the ones the question already names (see :func:`_excluded`).
    ``event_of``      object -> event ``{kind, time?}``: the event of that kind the object takes part in.
    ``next_event``    event -> event ``{}``: the first event strictly later in time (``before`` edges).
    ``prev_event``    event -> event ``{}``: the last event strictly earlier in time (``after`` edges).
    ``next_own``      event -> event ``{}``: the *actor's* next event (the actor is the last object the path
                      visited): "what did X do right after ...".
    ``same_as``       object -> object ``{clip}``: the same physical object in another clip (``same_as``).
    ``motion``        object -> direction ``{time}``: the direction of a ``motion`` self-loop at ``time``.
    ``changed_to``    object -> color ``{attribute, time?}``: the value an ``attr_change`` self-loop turns the
                      attribute into (stsg/2).
    ``count_events``  object -> count ``{kind}``: how many events of that kind the object takes part in.
    ``count_related`` object -> count ``{predicate, time}``: how many objects are ``predicate`` it at ``time``.

Value hops (direction, color, count) end a path. Queries: ``object`` (description), ``color``, ``shape`` on
objects (``color`` only for objects whose colour never changes); ``event`` (description) and ``action`` (what
the actor did) on events; the value itself on values; ``earlier`` (events), ``same_color`` / ``same_shape``
(objects) compare two paths.

The executor (:func:`execute`, :func:`trace`) reads only the program and the graph, never how the program was
sampled. A program *denotes* an answer only if every step resolves to exactly one entity (a referring
expression that matches two objects is ambiguous even when both lead to the same answer), no node is visited
twice, and the query has a value. New hop types are added by subclassing :class:`Op` and calling
:func:`register`; the sampler and renderer pick them up from :data:`OPS`.
"""

from __future__ import annotations

import functools
import json
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, ClassVar, Optional

import networkx as nx

from step_ray.stsg import schema

#: Times in programs and questions have 0.1 s precision; an edge "holds" at a time within half of that.
TIME_DECIMALS = 1
TIME_TOL = 0.05 + 1e-6

NODE_TYPES = ("object", "event")
VALUE_TYPES = ("direction", "color", "count")
#: Which queries read an answer off which entity type.
QUERIES: dict[str, tuple[str, ...]] = {
    "object": ("object", "color", "shape"),
    "event": ("event", "action"),
    "direction": ("direction",),
    "color": ("color",),
    "count": ("count",),
}
#: Comparison queries: the entity type both paths must end at.
COMPARE: dict[str, str] = {"earlier": "event", "same_color": "object", "same_shape": "object"}
#: The type of answer each query gives (what the options are drawn from).
ANSWER_TYPE = {"object": "object", "color": "color", "shape": "shape", "event": "event", "direction": "direction",
               "count": "count", "action": "action"}
YESNO = ("yes", "no")

EVENT_VERBS = {"enter": "entered the scene", "leave": "left the scene", "collide": "collided",
               "start_moving": "started moving", "stop_moving": "stopped moving", "change": "changed"}


class ExecutionError(ValueError):
    """A program does not denote exactly one answer on a graph; ``reason`` is a short machine-readable code
    (``no_anchor``, ``ambiguous_anchor``, ``dead_end``, ``ambiguous_step``, ``cyclic``, ``no_answer``,
    ``bad_program``)."""

    def __init__(self, reason: str, detail: str = ""):
        self.reason = reason
        super().__init__(f"{reason}: {detail}" if detail else reason)


# --------------------------------------------------------------------------------------------- programs


def round_time(t: float) -> float:
    """A time as programs and questions state it (0.1 s)."""
    return round(float(t), TIME_DECIMALS) + 0.0  # + 0.0 turns -0.0 into 0.0 (it would print as "-0.0s")


def fmt_time(t: float) -> str:
    return f"{t:.{TIME_DECIMALS}f}s"


@dataclass(frozen=True)
class Anchor:
    type: str  # "object" | "event"
    params: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Hop:
    op: str
    params: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Program:
    anchor: Anchor
    hops: tuple[Hop, ...]
    query: str
    #: verify: the answer is "yes" iff the query's value equals ``check``.
    check: Optional[str] = None
    #: comparison (``query`` in :data:`COMPARE`): the second path; its own ``query`` is the same.
    other: Optional["Program"] = None

    @property
    def steps(self) -> int:
        """Reasoning steps = edges walked (both paths of a comparison) + 1 for the comparison itself."""
        return len(self.hops) + (self.other.steps + 1 if self.other is not None else 0)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "anchor": {"type": self.anchor.type, **self.anchor.params},
            "hops": [{"op": h.op, **h.params} for h in self.hops],
            "query": self.query,
        }
        if self.check is not None:
            out["check"] = self.check
        if self.other is not None:
            out["other"] = self.other.to_dict()
        return out

    def to_json(self) -> str:
        """Canonical JSON (sorted keys, no spaces): equal programs give equal strings (ids hash it)."""
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Program":
        try:
            a = dict(data["anchor"])
            anchor = Anchor(a.pop("type"), a)
            hops = []
            for h in data["hops"]:
                h = dict(h)
                hops.append(Hop(h.pop("op"), h))
            other = cls.from_dict(data["other"]) if data.get("other") is not None else None
            check = data.get("check")
            return cls(anchor, tuple(hops), data["query"], None if check is None else str(check), other)
        except (KeyError, TypeError, AttributeError) as err:
            raise ExecutionError("bad_program", f"malformed program: {err!r}") from None

    @classmethod
    def from_json(cls, text: str) -> "Program":
        try:
            return cls.from_dict(json.loads(text))
        except json.JSONDecodeError as err:
            raise ExecutionError("bad_program", f"not JSON: {err}") from None


# --------------------------------------------------------------------------------------------- graph index


class GraphIndex:
    """Adjacency by edge type and per-node facts of one STSG, built once (O(V + E)) so that sampling many
    programs on a graph does not rescan it. Read-only: rebuild it if the graph changes."""

    def __init__(self, g: nx.MultiDiGraph):
        self.g = g
        self.video_id: str = str(g.graph.get("video_id", ""))
        self.uri: str = str(g.graph.get("uri", ""))
        self.source: str = str(g.graph.get("source", ""))
        self.duration: float = float(g.graph.get("duration", 0.0) or 0.0)
        by_type: dict[str, list[str]] = defaultdict(list)
        for n, d in g.nodes(data=True):
            by_type[d.get("type", "")].append(n)
        # Sorted node lists: iteration order must not depend on how the graph was assembled (determinism).
        self.objects: list[str] = sorted(by_type["object"])
        self.events: list[str] = sorted(by_type["event"], key=lambda e: (float(g.nodes[e]["time"]), e))
        self.desc: dict[str, str] = {o: schema.describe_object(g, o) for o in self.objects}
        self.out: dict[tuple[str, str], list[tuple[str, dict]]] = defaultdict(list)
        self.inc: dict[tuple[str, str], list[tuple[str, dict]]] = defaultdict(list)
        self.edges_by_type: dict[str, list[tuple[str, str, dict]]] = defaultdict(list)
        for u, v, d in g.edges(data=True):
            t = d.get("type")
            self.out[(u, t)].append((v, d))
            self.inc[(v, t)].append((u, d))
            self.edges_by_type[t].append((u, v, d))
        for lst in list(self.out.values()) + list(self.inc.values()):
            # A fixed order, whatever the file's: by neighbour, then (only among parallel edges) by attributes.
            if len({v for v, _ in lst}) == len(lst):
                lst.sort(key=lambda x: x[0])
            else:
                try:  # attribute values compare as they are (repr, the general fallback, cost a third of this)
                    lst.sort(key=lambda x: (x[0], sorted(x[1].items())))
                except TypeError:
                    lst.sort(key=lambda x: (x[0], repr(sorted(x[1].items()))))
        self.clips: dict[int, tuple[float, float]] = {}
        for c in by_type["clip"]:
            d = g.nodes[c]
            self.clips[int(d["index"])] = (float(d["start"]), float(d["end"]))
        kfs: dict[int, list[float]] = defaultdict(list)
        for k in by_type["keyframe"]:
            d = g.nodes[k]
            kfs[int(d["clip"])].append(float(d["time"]))
        self.keyframes: dict[int, list[float]] = {c: sorted(ts) for c, ts in kfs.items()}
        self._times = {e: float(g.nodes[e]["time"]) for e in self.events}
        #: Relation edges into each object as (other, predicate, start, end) with float times (the hot path).
        self.rel_in: dict[str, list[tuple[str, str, float, float]]] = {
            o: [(y, str(d.get("predicate")), float(d["start"]), float(d["end"])) for y, d in self.inc[(o, "relation")]]
            for o in self.objects}
        self._participants = {e: [o for o, _ in self.inc[(e, "participates_in")]] for e in self.events}
        self._type: dict[str, str] = {}
        self._clip: dict[str, Optional[int]] = {}
        self._category: dict[str, str] = {}
        self._kind: dict[str, str] = {}
        # Descriptions are asked for again and again while sampling and rendering (the graph is read-only):
        self._color: dict[str, Optional[str]] = {}
        self._changes: dict[tuple[str, Optional[str]], list[dict]] = {}
        self._verb: dict[tuple[str, Optional[str]], str] = {}
        self._event_text: dict[str, str] = {}
        #: Derived per-graph data other modules cache here (the option pools of :mod:`step_ray.qra.render`).
        self.memo: dict[str, Any] = {}

    def type_of(self, n: str) -> str:
        t = self._type.get(n)
        if t is None:
            t = self._type[n] = self.g.nodes[n].get("type", "")
        return t

    def clip_of(self, n: str) -> Optional[int]:
        try:
            return self._clip[n]  # per-node facts are read many times per sample: cached (the graph is read-only)
        except KeyError:
            c = self.g.nodes[n].get("clip")
            c = self._clip[n] = None if c is None else int(c)
            return c

    def color(self, o: str) -> Optional[str]:
        """The colour at first sight."""
        try:
            return self._color[o]
        except KeyError:
            c = self._color[o] = self.g.nodes[o].get("attributes", {}).get("color")
            return c

    def changes(self, o: str, attribute: Optional[str] = None) -> list[dict]:
        """The object's ``attr_change`` edges (of one attribute), in time order (cached: do not modify)."""
        key = (o, attribute)
        found = self._changes.get(key)
        if found is None:
            found = [d for _, d in self.out[(o, "attr_change")] if attribute is None or d.get("attribute") == attribute]
            found = self._changes[key] = sorted(found, key=lambda d: float(d.get("time", 0.0)))
        return found

    def category(self, o: str) -> str:
        c = self._category.get(o)
        if c is None:
            c = self._category[o] = str(self.g.nodes[o].get("category", ""))
        return c

    def time(self, e: str) -> float:
        t = self._times.get(e)
        return float(self.g.nodes[e]["time"]) if t is None else t

    def kind(self, e: str) -> str:
        k = self._kind.get(e)
        if k is None:
            k = self._kind[e] = str(self.g.nodes[e]["kind"])
        return k

    def participants(self, e: str) -> list[str]:
        p = self._participants.get(e)
        return [o for o, _ in self.inc[(e, "participates_in")]] if p is None else p

    def verb(self, e: str, actor: Optional[str] = None) -> str:
        """What happened, told from ``actor``'s side: 'entered the scene', 'collided with the blue square',
        'turned green', 'stopped moving', or an action label (cached per event and actor)."""
        key = (e, actor)
        text = self._verb.get(key)
        if text is None:
            text = self._verb[key] = self._describe_verb(e, actor)
        return text

    def _describe_verb(self, e: str, actor: Optional[str]) -> str:
        d = self.g.nodes[e]
        kind = self.kind(e)
        if kind == "collide":
            others = sorted(self.desc.get(o, o) for o in self.participants(e) if o != actor)
            return f"collided with {' and '.join('the ' + n for n in others)}" if actor and others else "collided"
        if kind == "change":
            attr, to = d.get("attribute", "color"), d.get("to")
            return f"turned {to}" if attr == "color" and to else f"changed {attr} to {to}"
        if kind == "action":
            return str(d.get("label") or "acted")
        return EVENT_VERBS.get(kind, kind.replace("_", " "))

    def event_text(self, e: str) -> str:
        """The event as an answer option: 'blue square entered the scene', 'blue square and red circle collided'
        (cached per event)."""
        text = self._event_text.get(e)
        if text is None:
            names = sorted(self.desc.get(o, o) for o in self.participants(e))
            who = " and ".join(names) if names else "an object"
            text = self._event_text[e] = f"{who} {self.verb(e)}"
        return text

    def times_in(self, clip: Optional[int], start: float, end: float) -> list[float]:
        """Keyframe times of a clip inside ``[start, end]`` as questions state them; ``start`` if none."""
        ts = [t for t in self.keyframes.get(clip, []) if start - 1e-6 <= t <= end + 1e-6] if clip is not None else []
        return sorted({round_time(t) for t in ts}) or [round_time(start)]


def _holds(d: dict, t: float, tol: float = TIME_TOL) -> bool:
    return float(d["start"]) - tol <= t <= float(d["end"]) + tol


def _nearest(items: list, dt: Any, tol: float) -> list:
    """The items within ``tol`` of a stated time (``dt(item)``: the distance); beyond the questions' own 0.1 s
    precision only the nearest ones: a looser tolerance (checking against another graph) finds the event
    meant, not every event near it."""
    close = [x for x in items if dt(x) <= tol]
    if tol > TIME_TOL and len(close) > 1:
        best = min(dt(x) for x in close)
        close = [x for x in close if dt(x) - best <= TIME_TOL]
    return close


def _strict_first(found: Any, tol: float) -> list:
    """What holds at the stated time itself, else (a looser tolerance) what holds within ``tol`` of it."""
    exact = found(TIME_TOL)
    return exact if exact or tol <= TIME_TOL else found(tol)


# --------------------------------------------------------------------------------------------- hop operations


@dataclass(frozen=True)
class Ctx:
    """What a hop may know of the path before it: the objects the question already names for this event
    (``participant``), and the actor (the last object the path visited; ``next_own``)."""

    excluded: frozenset = frozenset()
    actor: Optional[str] = None
    #: How far a stated time may be from the graph's: an event's time, or the span of a relation / motion
    #: (checking against another graph: see :func:`trace`'s ``time_tol``).
    time_tol: float = TIME_TOL


NO_CTX = Ctx()


class Op:
    """One hop type. ``apply`` is its meaning (used by the executor); ``moves`` proposes parameters from the
    edges at a node (used by the sampler, whose proposals the executor re-checks); ``relaxed`` lists what the
    hop reaches anywhere in the graph with the same predicate/kind (compositional distractors)."""

    name: ClassVar[str]
    src: ClassVar[str]  # "object" | "event"
    dst: ClassVar[str]  # "object" | "event" | a value type
    #: The edge type the hop walks (a graph without such edges has no move of it); None: not declared.
    edge_type: ClassVar[Optional[str]] = None

    def apply(self, ix: GraphIndex, node: str, params: dict[str, Any], ctx: Ctx) -> list[str]:
        raise NotImplementedError

    def moves(self, ix: GraphIndex, node: str, ctx: Ctx) -> list[dict[str, Any]]:
        raise NotImplementedError

    def relaxed(self, ix: GraphIndex, params: dict[str, Any]) -> list[str]:
        raise NotImplementedError

    def __init_subclass__(cls, **kwargs: Any) -> None:
        # Every sample's options ask its last hop what it reaches elsewhere: one scan of the graph per op and
        # parameters, so a subclass's ``relaxed`` is memoised per graph index (the result is shared: read only).
        super().__init_subclass__(**kwargs)
        if "relaxed" in cls.__dict__:
            cls.relaxed = _memoised_relaxed(cls.__dict__["relaxed"])  # type: ignore[method-assign]


def _memoised_relaxed(fn: Any) -> Any:
    @functools.wraps(fn)
    def relaxed(self: Op, ix: GraphIndex, params: dict[str, Any]) -> list[str]:
        try:
            key = ("relaxed", self.name, tuple(sorted(params.items())))
            hash(key)
        except TypeError:  # unhashable parameters (a malformed program): not memoised
            return fn(self, ix, params)
        hit = ix.memo.get(key)
        if hit is None:
            hit = ix.memo[key] = fn(self, ix, params)
        return hit

    return relaxed


OPS: dict[str, Op] = {}


def register(op: Op) -> Op:
    OPS[op.name] = op
    return op


class RelationOp(Op):
    name, src, dst = "relation", "object", "object"
    edge_type = "relation"

    def apply(self, ix, node, params, ctx):
        p, t = params["predicate"], float(params["time"])
        # An edge y -> node with predicate p means "y is p node": the hop answers "what is p node at t?".
        rel = [(y, s, e) for y, q, s, e in ix.rel_in.get(node, ()) if q == p and y != node]
        return _strict_first(lambda tol: sorted({y for y, s, e in rel if s - tol <= t <= e + tol}),
                             ctx.time_tol if ctx is not None else TIME_TOL)

    def moves(self, ix, node, ctx):
        seen = set()
        for y, d in ix.inc[(node, "relation")]:
            for t in ix.times_in(ix.clip_of(node), float(d["start"]), float(d["end"])):
                seen.add((d.get("predicate"), t))
        return [{"predicate": p, "time": t} for p, t in sorted(seen)]

    def relaxed(self, ix, params):
        return sorted({u for u, _, d in ix.edges_by_type["relation"] if d.get("predicate") == params["predicate"]})


class ParticipantOp(Op):
    name, src, dst = "participant", "event", "object"
    edge_type = "participates_in"

    def apply(self, ix, node, params, ctx):
        return sorted({o for o in ix.participants(node) if o not in ctx.excluded})

    def moves(self, ix, node, ctx):
        return [{}]

    def relaxed(self, ix, params):
        return sorted({o for e in ix.events for o in ix.participants(e)})


class EventOfOp(Op):
    name, src, dst = "event_of", "object", "event"
    edge_type = "participates_in"

    def apply(self, ix, node, params, ctx):
        kind, t = params["kind"], params.get("time")
        found = sorted({e for e, _ in ix.out[(node, "participates_in")] if ix.kind(e) == kind})
        return found if t is None else _nearest(found, lambda e: abs(ix.time(e) - float(t)), ctx.time_tol)

    def moves(self, ix, node, ctx):
        out = []
        for e, _ in ix.out[(node, "participates_in")]:
            out.append({"kind": ix.kind(e)})
            out.append({"kind": ix.kind(e), "time": round_time(ix.time(e))})
        return _unique_params(out)

    def relaxed(self, ix, params):
        return [e for e in ix.events if ix.kind(e) == params["kind"]]


class _AdjacentEventOp(Op):
    """The nearest event strictly later (``before`` edges) or earlier (``after`` edges) than the current one.
    Events at the same time as the current one are walked past (they are neither after nor before it); if
    several events share the nearest time, the step is ambiguous, as "what happened right after" would be."""

    src, dst = "event", "event"
    edge: ClassVar[str]
    sign: ClassVar[int]  # +1: later, -1: earlier

    def apply(self, ix, node, params, ctx):
        t0 = ix.time(node)
        seen, frontier = {node}, [node]
        while frontier:
            nxt = sorted({v for u in frontier for v, _ in ix.out[(u, self.edge)]} - seen)
            seen.update(nxt)
            strict = [v for v in nxt if self.sign * (ix.time(v) - t0) > TIME_TOL]
            if strict:
                t1 = min(ix.time(v) for v in strict) if self.sign > 0 else max(ix.time(v) for v in strict)
                found = {v for v in strict if abs(ix.time(v) - t1) <= TIME_TOL}
                tie = list(found)
                while tie:  # events simultaneous with the first one found are equally "right after"
                    more = {v for u in tie for v, _ in ix.out[(u, self.edge)] if abs(ix.time(v) - t1) <= TIME_TOL} - found
                    found |= more
                    tie = sorted(more)
                return sorted(found)
            frontier = nxt
        return []

    def moves(self, ix, node, ctx):
        return [{}] if ix.out[(node, self.edge)] else []

    def relaxed(self, ix, params):
        return [e for e in ix.events if ix.inc[(e, self.edge)]]


class NextEventOp(_AdjacentEventOp):
    name, edge, sign = "next_event", "before", 1
    edge_type = "before"


class PrevEventOp(_AdjacentEventOp):
    name, edge, sign = "prev_event", "after", -1
    edge_type = "after"


class NextOwnOp(Op):
    """The actor's first event strictly later than the current one (ties: ambiguous). Needs an actor: the path
    must have visited an object (``... -> X -event_of-> e -next_own-> e'``: what X did right after e)."""

    name, src, dst = "next_own", "event", "event"
    edge_type = "participates_in"

    def apply(self, ix, node, params, ctx):
        if ctx.actor is None:
            return []
        t0 = ix.time(node)
        later = [e for e, _ in ix.out[(ctx.actor, "participates_in")] if ix.time(e) - t0 > TIME_TOL]
        if not later:
            return []
        t1 = min(ix.time(e) for e in later)
        return sorted(e for e in later if abs(ix.time(e) - t1) <= TIME_TOL)

    def moves(self, ix, node, ctx):
        return [{}] if ctx.actor is not None and node in {e for e, _ in ix.out[(ctx.actor, "participates_in")]} else []

    def relaxed(self, ix, params):
        return list(ix.events)


class SameAsOp(Op):
    name, src, dst = "same_as", "object", "object"
    edge_type = "same_as"

    def apply(self, ix, node, params, ctx):
        c = int(params["clip"])
        return sorted({y for y, _ in ix.out[(node, "same_as")] if y != node and ix.clip_of(y) == c})

    def moves(self, ix, node, ctx):
        return _unique_params([{"clip": ix.clip_of(y)} for y, _ in ix.out[(node, "same_as")]])

    def relaxed(self, ix, params):
        return sorted({v for _, v, _ in ix.edges_by_type["same_as"] if ix.clip_of(v) == int(params["clip"])})


def _inner_times(s: float, e: float, most: int) -> list[float]:
    """Up to ``most`` times (0.1 s grid) spread inside ``[s, e]``, avoiding the ends where a neighbouring
    segment may also hold."""
    scale = 10 ** TIME_DECIMALS  # (round_time inlined: this runs for every point of every motion segment)
    grid = [round(s + i / scale, TIME_DECIMALS) + 0.0 for i in range(int(round((e - s) * scale)) + 1)]
    grid = [t for t in grid if s - TIME_TOL <= t <= e + TIME_TOL] or [round_time((s + e) / 2)]
    inner = grid[1:-1] or grid
    step = max(1, len(inner) // most)
    return inner[::step][:most]


class MotionOp(Op):
    name, src, dst = "motion", "object", "direction"
    edge_type = "motion"
    #: Probe at most this many times per motion segment (spread over it) when proposing parameters.
    max_times = 5

    def apply(self, ix, node, params, ctx):
        t = float(params["time"])
        return _strict_first(lambda tol: sorted({str(d["direction"]) for _, d in ix.out[(node, "motion")]
                                                 if _holds(d, t, tol)}), ctx.time_tol)

    def moves(self, ix, node, ctx):
        times = set()
        for _, d in ix.out[(node, "motion")]:
            times.update(_inner_times(float(d["start"]), float(d["end"]), self.max_times))
        return [{"time": t} for t in sorted(times)]

    def relaxed(self, ix, params):
        return sorted({str(d["direction"]) for _, _, d in ix.edges_by_type["motion"]})


class ChangedToOp(Op):
    """The value an attribute changes to (``attr_change`` self-loops, stsg/2). Without ``time`` the object
    must change that attribute to one value only."""

    name, src, dst = "changed_to", "object", "color"
    edge_type = "attr_change"

    def apply(self, ix, node, params, ctx):
        t = params.get("time")
        edges = ix.changes(node, params["attribute"])
        if t is not None:
            edges = _nearest(edges, lambda d: abs(round_time(float(d["time"])) - float(t)), ctx.time_tol)
        return sorted({str(d["to"]) for d in edges})

    def moves(self, ix, node, ctx):
        out = []
        for d in ix.changes(node):
            out.append({"attribute": d.get("attribute")})
            out.append({"attribute": d.get("attribute"), "time": round_time(float(d["time"]))})
        return _unique_params(out)

    def relaxed(self, ix, params):
        return sorted({str(d["to"]) for _, _, d in ix.edges_by_type["attr_change"]
                       if d.get("attribute") == params["attribute"]})


class CountEventsOp(Op):
    """How many events of a kind the object takes part in (within its scene: object nodes are per clip)."""

    name, src, dst = "count_events", "object", "count"
    edge_type = "participates_in"

    def apply(self, ix, node, params, ctx):
        return [str(sum(1 for e, _ in ix.out[(node, "participates_in")] if ix.kind(e) == params["kind"]))]

    def moves(self, ix, node, ctx):
        return _unique_params([{"kind": ix.kind(e)} for e, _ in ix.out[(node, "participates_in")]])

    def relaxed(self, ix, params):
        return [str(sum(1 for e, _ in ix.out[(o, "participates_in")] if ix.kind(e) == params["kind"]))
                for o in ix.objects]


class CountRelatedOp(Op):
    """How many objects are ``predicate`` the current one at ``time`` (0 included)."""

    name, src, dst = "count_related", "object", "count"
    edge_type = "relation"

    def apply(self, ix, node, params, ctx):
        return [str(len(RelationOp.apply(OPS["relation"], ix, node, params, ctx)))]

    def moves(self, ix, node, ctx):
        # Keyframe times of the object's life, for the predicates it stands in at some time: a count of 0 is
        # then a real contrast ("none right now"), and zeros do not swamp the family (every object has none
        # of most predicates most of the time).
        d = ix.g.nodes[node]
        first, last = float(d.get("first", 0.0)), float(d.get("last", 0.0))
        times = ix.times_in(ix.clip_of(node), first, last)
        preds = sorted({q for _, q, _, _ in ix.rel_in.get(node, ())})
        return [{"predicate": p, "time": t} for p in preds for t in times]

    def relaxed(self, ix, params):
        return [str(n) for n in range(0, 4)]


def _unique_params(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Distinct parameter dicts in a fixed order (parameter values are str / int / float, one type per key)."""
    keyed = {tuple(sorted(p.items())): p for p in items}
    return [keyed[k] for k in sorted(keyed)]


for _op in (RelationOp(), ParticipantOp(), EventOfOp(), NextEventOp(), PrevEventOp(), NextOwnOp(), SameAsOp(),
            MotionOp(), ChangedToOp(), CountEventsOp(), CountRelatedOp()):
    register(_op)


# --------------------------------------------------------------------------------------------- anchors


def resolve_anchor(ix: GraphIndex, anchor: Anchor, time_tol: float = TIME_TOL) -> tuple[list[str], set[str]]:
    """The nodes an anchor describes, and the objects it names besides (an event's named participants); an
    event's stated time matches within ``time_tol``. Memoised in ``ix.memo`` (the sampler and the executor ask
    for the same anchors again and again; each answer is a scan of the graph's objects or events)."""
    # The sampler reuses its anchor objects: by identity first (the entry holds the anchor, so its id is not
    # reused while the entry lives), else by content.
    by_id = ix.memo.setdefault("anchor_ids", {})
    seen = by_id.get(id(anchor))
    if seen is not None and seen[0] is anchor and seen[1] == time_tol:
        hit = seen[2]
        return list(hit[0]), set(hit[1])
    try:
        key = (anchor.type, time_tol,
               tuple(sorted((k, tuple(v) if isinstance(v, list) else v) for k, v in anchor.params.items())))
        hash(key)
    except TypeError:  # a malformed program's parameters: resolved (and rejected) without the memo
        return _resolve_anchor(ix, anchor, time_tol)
    memo = ix.memo.setdefault("anchors", {})
    hit = memo.get(key)
    if hit is None:
        hit = memo[key] = _resolve_anchor(ix, anchor, time_tol)
    by_id[id(anchor)] = (anchor, time_tol, hit)
    return list(hit[0]), set(hit[1])


def _resolve_anchor(ix: GraphIndex, anchor: Anchor, time_tol: float) -> tuple[list[str], set[str]]:
    p = anchor.params
    if anchor.type == "object":
        clip = p.get("clip")
        looks = ix.memo.get("objects_by_look")
        if looks is None:  # (colour, category) -> objects, in ix.objects' order: one pass, not one per anchor
            looks = ix.memo["objects_by_look"] = defaultdict(list)
            for o in ix.objects:
                looks[(ix.color(o), ix.category(o))].append(o)
        try:
            same = looks.get((p.get("color"), p.get("category")), ())
        except TypeError:  # a malformed program's description (a list): it names no object
            same = ()
        return [o for o in same if clip is None or ix.clip_of(o) == int(clip)], set()
    if anchor.type == "event":
        t = p.get("time")
        named = list(p.get("participants", []))
        found, picked = [], {}
        for e in ix.events:
            if ix.kind(e) != p.get("kind"):
                continue
            matched = _match_names(ix, ix.participants(e), named)
            if matched is not None:
                found.append(e)
                picked[e] = matched
        if t is not None:
            found = _nearest(found, lambda e: abs(ix.time(e) - float(t)), time_tol)
        return found, set().union(*(picked[e] for e in found)) if found else set()
    raise ExecutionError("bad_program", f"unknown anchor type {anchor.type!r}")


def _match_names(ix: GraphIndex, people: list[str], names: list[str]) -> Optional[set[str]]:
    """The participants the names pick out (each name a distinct participant), or None if some name has none."""
    free, picked = list(people), set()
    for name in names:
        hit = next((o for o in free if ix.desc.get(o) == name), None)
        if hit is None:
            return None
        free.remove(hit)
        picked.add(hit)
    return picked


def object_anchor(ix: GraphIndex, o: str) -> Optional[Anchor]:
    """The narrowest-needed unique description of an object: video-wide if unique there, else within its clip;
    None if another object of its clip looks the same (it cannot be named unambiguously)."""
    base = {"color": ix.color(o), "category": ix.category(o)}
    for clip in (None, ix.clip_of(o)):
        a = Anchor("object", {**base, "clip": clip})
        if resolve_anchor(ix, a)[0] == [o]:
            return a
    return None


# --------------------------------------------------------------------------------------------- executor


@dataclass(frozen=True)
class Step:
    """One executed hop: from ``src`` (a node) to ``dst`` (a node, or a value for value hops)."""

    op: str
    params: dict[str, Any]
    src: str
    dst: str
    actor: Optional[str] = None


@dataclass
class Trace:
    """What a program denotes on a graph: the anchor node, each step, the answer; or why it denotes nothing.
    ``value`` is the query's value on the final entity (the open answer of a verify question); for a
    comparison, ``other`` is the second path's trace."""

    anchor: Optional[str] = None
    named: set[str] = field(default_factory=set)
    steps: list[Step] = field(default_factory=list)
    value: Optional[str] = None
    answer: Optional[str] = None
    other: Optional["Trace"] = None
    error: Optional[str] = None
    detail: str = ""

    @property
    def nodes(self) -> list[str]:
        """The path's nodes in order: the anchor and every node a hop reached (value hops add none); a
        comparison's second path follows the first."""
        out = [self.anchor] if self.anchor else []
        out += [s.dst for s in self.steps if OPS[s.op].dst in NODE_TYPES]
        return out + (self.other.nodes if self.other is not None else [])

    @property
    def final(self) -> Optional[str]:
        """The entity the path ends at (a node, or a value)."""
        return self.steps[-1].dst if self.steps else self.anchor


def final_type(program: Program) -> str:
    """The entity type a program's path ends at (raises ``bad_program`` if the hops do not line up)."""
    if program.anchor.type not in NODE_TYPES:
        raise ExecutionError("bad_program", f"unknown anchor type {program.anchor.type!r}")
    cur = program.anchor.type
    for i, h in enumerate(program.hops):
        op = OPS.get(h.op)
        if op is None:
            raise ExecutionError("bad_program", f"unknown hop {h.op!r}")
        if op.src != cur:
            raise ExecutionError("bad_program", f"hop {i} ({h.op}) needs a {op.src}, has a {cur}")
        cur = op.dst
    return cur


def check_program(program: Program) -> str:
    """Types line up: each hop starts from what the previous one gave; only the last hop may give a value; the
    query reads the final type; a comparison has a second path ending at the same type. Returns the final type
    (both paths'); raises ``ExecutionError('bad_program')``."""
    cur = final_type(program)
    if program.query in COMPARE:
        if program.other is None or program.check is not None:
            raise ExecutionError("bad_program", f"comparison {program.query!r} needs a second path and no check")
        if cur != COMPARE[program.query] or final_type(program.other) != cur or program.other.other is not None:
            raise ExecutionError("bad_program", f"{program.query!r} compares two paths ending at a {COMPARE[program.query]}")
        return cur
    if program.other is not None:
        raise ExecutionError("bad_program", f"query {program.query!r} takes no second path")
    if program.query not in QUERIES.get(cur, ()):
        raise ExecutionError("bad_program", f"query {program.query!r} cannot read a {cur}")
    return cur


def _excluded(program: Program, i: int, trace: Trace) -> frozenset:
    """Objects a ``participant`` hop leaves out: exactly those the question names for that event — the anchor
    event's named participants (first hop), or the object whose event an ``event_of`` hop just took
    ("which object collided with X")."""
    if i == 0:
        return frozenset(trace.named)
    if program.hops[i - 1].op == "event_of":
        return frozenset({trace.steps[i - 1].src})
    return frozenset()


def project(ix: GraphIndex, entity: str, query: str, etype: str, actor: Optional[str] = None) -> Optional[str]:
    """Read the answer off the final entity (of type ``etype``)."""
    if etype in VALUE_TYPES:
        return entity
    if query == "object":
        return ix.desc.get(entity)
    if query == "color":
        # "What colour is X" has one answer only if X's colour never changes (stsg/2 attr_change).
        return None if ix.changes(entity, "color") else ix.color(entity)
    if query in ("shape", "same_shape"):
        return ix.category(entity) or None
    if query == "same_color":
        return None if ix.changes(entity, "color") else ix.color(entity)
    if query == "event":
        return ix.event_text(entity)
    if query == "action":
        return ix.verb(entity, actor) if actor is not None and actor in ix.participants(entity) else None
    if query == "earlier":
        return f"{ix.time(entity):.3f}"
    return None


def _walk(program: Program, ix: GraphIndex, time_tol: float, etype: str) -> Trace:
    tr = Trace()
    found, named = resolve_anchor(ix, program.anchor, time_tol)
    if len(found) != 1:
        tr.error = "no_anchor" if not found else "ambiguous_anchor"
        tr.detail = f"anchor matches {found}"
        return tr
    tr.anchor, tr.named = found[0], named
    visited = {found[0]}
    cur = found[0]
    actor = cur if ix.type_of(cur) == "object" else None
    for i, hop in enumerate(program.hops):
        op = OPS[hop.op]
        ctx = Ctx(_excluded(program, i, tr) if hop.op == "participant" else frozenset(), actor, time_tol)
        try:
            res = op.apply(ix, cur, hop.params, ctx)
        except (KeyError, TypeError, ValueError) as err:
            tr.error, tr.detail = "bad_program", f"hop {i} ({hop.op}): bad parameters {hop.params}: {err!r}"
            return tr
        if len(res) != 1:
            tr.error = "dead_end" if not res else "ambiguous_step"
            tr.detail = f"hop {i} ({hop.op}) from {cur} gives {res}"
            return tr
        nxt = res[0]
        if op.dst in NODE_TYPES:
            if nxt in visited:
                tr.error, tr.detail = "cyclic", f"hop {i} ({hop.op}) returns to {nxt}"
                return tr
            visited.add(nxt)
        tr.steps.append(Step(hop.op, dict(hop.params), cur, nxt, actor))
        if op.dst == "object":
            actor = nxt
        cur = nxt
    tr.value = project(ix, cur, program.query, etype, actor)
    if tr.value is None:
        tr.error, tr.detail = "no_answer", f"{program.query} of {cur} is unknown or not constant"
    return tr


def trace(program: Program, graph: nx.MultiDiGraph | GraphIndex, time_tol: float = TIME_TOL) -> Trace:
    """Run ``program``; never raises for programs that merely denote nothing (see ``Trace.error``).

    ``time_tol``: how far (s) a stated time may be from the graph's (an event's time; the span of a relation
    or a motion). The default matches the 0.1 s precision of questions; checking a program sampled on a
    predicted graph against the ground truth may allow more: perception times an event by the frames it
    samples, and relations are known at its own keyframes."""
    ix = graph if isinstance(graph, GraphIndex) else GraphIndex(graph)
    try:
        etype = check_program(program)
    except ExecutionError as err:
        return Trace(error=err.reason, detail=str(err))
    tr = _walk(program, ix, time_tol, etype)
    if tr.error is not None:
        return tr
    if program.other is not None:
        other = _walk(program.other, ix, time_tol, etype)
        first_nodes = set(tr.nodes)
        tr.other = other
        if other.error is not None:
            tr.error, tr.detail = other.error, f"second path: {other.detail}"
            return tr
        if first_nodes & set(other.nodes):
            tr.error, tr.detail = "cyclic", "the two compared paths meet"
            return tr
        assert tr.value is not None and other.value is not None
        if program.query == "earlier":
            ta, tb = float(tr.value), float(other.value)
            if abs(ta - tb) <= TIME_TOL:
                tr.error, tr.detail = "no_answer", "the two events are simultaneous"
                return tr
            tr.answer = "yes" if ta < tb else "no"
        else:
            tr.answer = "yes" if tr.value == other.value else "no"
        return tr
    tr.answer = tr.value if program.check is None else ("yes" if tr.value == program.check else "no")
    return tr


def execute(program: Program, graph: nx.MultiDiGraph | GraphIndex) -> str:
    """The one answer ``program`` denotes on ``graph``; raises :class:`ExecutionError` with the reason if it
    denotes none or several."""
    tr = trace(program, graph)
    if tr.error is not None:
        raise ExecutionError(tr.error, tr.detail)
    assert tr.answer is not None
    return tr.answer
