"""Reasoning paths as small programs over an STSG, and the executor that runs them.

A :class:`Program` is an *anchor* (a node the question names by a unique description), a chain of typed
*hops* over graph edges, and a *query* that reads the answer off the last entity. The number of hops is the
question's number of reasoning steps.

Anchors
    ``object``  ``{"color", "category", "clip"}``: the object described "colour category"; ``clip`` is None
                when the description is unique in the whole video, else the clip (scene) it is unique in.
    ``event``   ``{"kind", "participants", "time"}``: an event of that kind whose participants include the
                named ones (descriptions); ``time`` (seconds, 0.1 s precision) may be None.

Hops (``op``: source type -> result type, parameters; the edge type walked)
    ``relation``    object -> object ``{predicate, time}``: the object that is ``predicate`` the current one at
                    ``time`` (a ``relation`` edge into the current object whose span holds ``time``).
    ``participant`` event -> object ``{}``: the participant of the event (``participates_in``), leaving out the
                    ones the question already names (see :func:`_excluded`).
    ``event_of``    object -> event ``{kind, time?}``: the event of that kind the object takes part in.
    ``next_event``  event -> event ``{}``: the first event strictly later in time (``before`` edges).
    ``prev_event``  event -> event ``{}``: the last event strictly earlier in time (``after`` edges).
    ``same_as``     object -> object ``{clip}``: the same physical object in another clip (``same_as``).
    ``motion``      object -> direction ``{time}``: the direction of a ``motion`` self-loop whose span holds
                    ``time``. Yields a value, not a node, so it can only be the last hop.

Queries: ``object`` (description), ``color``, ``shape`` on objects; ``event`` (description) on events;
``direction`` on directions.

The executor (:func:`execute`, :func:`trace`) reads only the program and the graph, never how the program was
sampled. A program *denotes* an answer only if every step resolves to exactly one entity (a referring
expression that matches two objects is ambiguous even when both lead to the same answer), no node is visited
twice, and the query has a value. New hop types are added by subclassing :class:`Op` and calling
:func:`register`; the sampler and renderer pick them up from :data:`OPS`.
"""

from __future__ import annotations

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
#: Which queries read an answer off which entity type.
QUERIES: dict[str, tuple[str, ...]] = {
    "object": ("object", "color", "shape"),
    "event": ("event",),
    "direction": ("direction",),
}
#: The type of answer each query gives (what the options are drawn from).
ANSWER_TYPE = {"object": "object", "color": "color", "shape": "shape", "event": "event", "direction": "direction"}

EVENT_VERBS = {"enter": "entered the scene", "leave": "left the scene", "collide": "collided"}


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

    @property
    def steps(self) -> int:
        """Reasoning steps = edges walked = hops."""
        return len(self.hops)

    def to_dict(self) -> dict[str, Any]:
        return {
            "anchor": {"type": self.anchor.type, **self.anchor.params},
            "hops": [{"op": h.op, **h.params} for h in self.hops],
            "query": self.query,
        }

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
            return cls(anchor, tuple(hops), data["query"])
        except (KeyError, TypeError) as err:
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
        self.duration: float = float(g.graph.get("duration", 0.0) or 0.0)
        # Sorted node lists: iteration order must not depend on how the graph was assembled (determinism).
        self.objects: list[str] = sorted(schema.nodes_of(g, "object"))
        self.events: list[str] = sorted(schema.nodes_of(g, "event"), key=lambda e: (g.nodes[e]["time"], e))
        self.desc: dict[str, str] = {o: schema.describe_object(g, o) for o in self.objects}
        self.out: dict[tuple[str, str], list[tuple[str, dict]]] = defaultdict(list)
        self.inc: dict[tuple[str, str], list[tuple[str, dict]]] = defaultdict(list)
        for u, v, d in g.edges(data=True):
            self.out[(u, d.get("type"))].append((v, d))
            self.inc[(v, d.get("type"))].append((u, d))
        for lst in list(self.out.values()) + list(self.inc.values()):
            lst.sort(key=lambda x: (x[0], json.dumps(x[1], sort_keys=True, default=str)))
        self.clips: dict[int, tuple[float, float]] = {}
        for c in schema.nodes_of(g, "clip"):
            d = g.nodes[c]
            self.clips[int(d["index"])] = (float(d["start"]), float(d["end"]))
        kfs: dict[int, list[float]] = defaultdict(list)
        for k in schema.nodes_of(g, "keyframe"):
            d = g.nodes[k]
            kfs[int(d["clip"])].append(float(d["time"]))
        self.keyframes: dict[int, list[float]] = {c: sorted(ts) for c, ts in kfs.items()}
        #: Derived per-graph data other modules cache here (the option pools of :mod:`step_ray.qra.render`).
        self.memo: dict[str, Any] = {}

    def type_of(self, n: str) -> str:
        return self.g.nodes[n].get("type", "")

    def clip_of(self, n: str) -> Optional[int]:
        c = self.g.nodes[n].get("clip")
        return None if c is None else int(c)

    def color(self, o: str) -> Optional[str]:
        return self.g.nodes[o].get("attributes", {}).get("color")

    def category(self, o: str) -> str:
        return str(self.g.nodes[o].get("category", ""))

    def time(self, e: str) -> float:
        return float(self.g.nodes[e]["time"])

    def kind(self, e: str) -> str:
        return str(self.g.nodes[e]["kind"])

    def participants(self, e: str) -> list[str]:
        return [o for o, _ in self.inc[(e, "participates_in")]]

    def event_text(self, e: str) -> str:
        """The event as an answer option: 'blue square entered the scene', 'blue square and red circle collided'."""
        names = sorted(self.desc.get(o, o) for o in self.participants(e))
        kind = self.kind(e)
        who = " and ".join(names) if names else "an object"
        return f"{who} {EVENT_VERBS.get(kind, kind)}"

    def times_in(self, clip: Optional[int], start: float, end: float) -> list[float]:
        """Keyframe times of a clip inside ``[start, end]`` as questions state them; ``start`` if none."""
        ts = [t for t in self.keyframes.get(clip, []) if start - 1e-6 <= t <= end + 1e-6] if clip is not None else []
        return sorted({round_time(t) for t in ts}) or [round_time(start)]


def _holds(d: dict, t: float) -> bool:
    return float(d["start"]) - TIME_TOL <= t <= float(d["end"]) + TIME_TOL


# --------------------------------------------------------------------------------------------- hop operations


class Op:
    """One hop type. ``apply`` is its meaning (used by the executor); ``moves`` proposes parameters from the
    edges at a node (used by the sampler, whose proposals the executor re-checks); ``relaxed`` lists what the
    hop reaches anywhere in the graph with the same predicate/kind (compositional distractors)."""

    name: ClassVar[str]
    src: ClassVar[str]  # "object" | "event"
    dst: ClassVar[str]  # "object" | "event" | "direction"

    def apply(self, ix: GraphIndex, node: str, params: dict[str, Any], excluded: set[str]) -> list[str]:
        raise NotImplementedError

    def moves(self, ix: GraphIndex, node: str) -> list[dict[str, Any]]:
        raise NotImplementedError

    def relaxed(self, ix: GraphIndex, params: dict[str, Any]) -> list[str]:
        raise NotImplementedError


OPS: dict[str, Op] = {}


def register(op: Op) -> Op:
    OPS[op.name] = op
    return op


class RelationOp(Op):
    name, src, dst = "relation", "object", "object"

    def apply(self, ix, node, params, excluded):
        p, t = params["predicate"], float(params["time"])
        # An edge y -> node with predicate p means "y is p node": the hop answers "what is p node at t?".
        return sorted({y for y, d in ix.inc[(node, "relation")] if d.get("predicate") == p and _holds(d, t) and y != node})

    def moves(self, ix, node):
        seen = set()
        for y, d in ix.inc[(node, "relation")]:
            for t in ix.times_in(ix.clip_of(node), float(d["start"]), float(d["end"])):
                seen.add((d.get("predicate"), t))
        return [{"predicate": p, "time": t} for p, t in sorted(seen)]

    def relaxed(self, ix, params):
        return sorted({u for u, _, d in schema.edges_of(ix.g, "relation") if d.get("predicate") == params["predicate"]})


class ParticipantOp(Op):
    name, src, dst = "participant", "event", "object"

    def apply(self, ix, node, params, excluded):
        return sorted({o for o in ix.participants(node) if o not in excluded})

    def moves(self, ix, node):
        return [{}]

    def relaxed(self, ix, params):
        return sorted({o for e in ix.events for o in ix.participants(e)})


class EventOfOp(Op):
    name, src, dst = "event_of", "object", "event"

    def apply(self, ix, node, params, excluded):
        kind, t = params["kind"], params.get("time")
        return sorted({e for e, _ in ix.out[(node, "participates_in")]
                       if ix.kind(e) == kind and (t is None or abs(ix.time(e) - float(t)) <= TIME_TOL)})

    def moves(self, ix, node):
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

    def apply(self, ix, node, params, excluded):
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

    def moves(self, ix, node):
        return [{}] if ix.out[(node, self.edge)] else []

    def relaxed(self, ix, params):
        return [e for e in ix.events if ix.inc[(e, self.edge)]]


class NextEventOp(_AdjacentEventOp):
    name, edge, sign = "next_event", "before", 1


class PrevEventOp(_AdjacentEventOp):
    name, edge, sign = "prev_event", "after", -1


class SameAsOp(Op):
    name, src, dst = "same_as", "object", "object"

    def apply(self, ix, node, params, excluded):
        c = int(params["clip"])
        return sorted({y for y, _ in ix.out[(node, "same_as")] if y != node and ix.clip_of(y) == c})

    def moves(self, ix, node):
        return _unique_params([{"clip": ix.clip_of(y)} for y, _ in ix.out[(node, "same_as")]])

    def relaxed(self, ix, params):
        return sorted({v for _, v, _ in schema.edges_of(ix.g, "same_as") if ix.clip_of(v) == int(params["clip"])})


class MotionOp(Op):
    name, src, dst = "motion", "object", "direction"
    #: Probe at most this many times per motion segment (spread over it) when proposing parameters.
    max_times = 5

    def apply(self, ix, node, params, excluded):
        t = float(params["time"])
        return sorted({str(d["direction"]) for _, d in ix.out[(node, "motion")] if _holds(d, t)})

    def moves(self, ix, node):
        times = set()
        for _, d in ix.out[(node, "motion")]:
            s, e = float(d["start"]), float(d["end"])
            grid = [round_time(s + i / 10 ** TIME_DECIMALS) for i in range(int(round((e - s) * 10 ** TIME_DECIMALS)) + 1)]
            grid = [t for t in grid if s - TIME_TOL <= t <= e + TIME_TOL] or [round_time((s + e) / 2)]
            # Prefer inner times: at a segment's ends the next segment may also hold (ambiguous direction).
            inner = grid[1:-1] or grid
            step = max(1, len(inner) // self.max_times)
            times.update(inner[::step][: self.max_times])
        return [{"time": t} for t in sorted(times)]

    def relaxed(self, ix, params):
        return sorted({str(d["direction"]) for _, _, d in schema.edges_of(ix.g, "motion")})


def _unique_params(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    keyed = {json.dumps(p, sort_keys=True): p for p in items}
    return [keyed[k] for k in sorted(keyed)]


for _op in (RelationOp(), ParticipantOp(), EventOfOp(), NextEventOp(), PrevEventOp(), SameAsOp(), MotionOp()):
    register(_op)


# --------------------------------------------------------------------------------------------- anchors


def resolve_anchor(ix: GraphIndex, anchor: Anchor) -> tuple[list[str], set[str]]:
    """The nodes an anchor describes, and the objects it names besides (an event's named participants)."""
    p = anchor.params
    if anchor.type == "object":
        clip = p.get("clip")
        found = [o for o in ix.objects
                 if ix.category(o) == p.get("category") and ix.color(o) == p.get("color")
                 and (clip is None or ix.clip_of(o) == int(clip))]
        return found, set()
    if anchor.type == "event":
        t = p.get("time")
        named = list(p.get("participants", []))
        found, mentioned = [], set()
        for e in ix.events:
            if ix.kind(e) != p.get("kind") or (t is not None and abs(ix.time(e) - float(t)) > TIME_TOL):
                continue
            matched = _match_names(ix, ix.participants(e), named)
            if matched is not None:
                found.append(e)
                mentioned |= matched
        return found, mentioned
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


@dataclass
class Trace:
    """What a program denotes on a graph: the anchor node, each step, the answer; or why it denotes nothing."""

    anchor: Optional[str] = None
    named: set[str] = field(default_factory=set)
    steps: list[Step] = field(default_factory=list)
    answer: Optional[str] = None
    error: Optional[str] = None
    detail: str = ""

    @property
    def nodes(self) -> list[str]:
        """The path's nodes in order: the anchor and every node a hop reached (value hops add none)."""
        out = [self.anchor] if self.anchor else []
        return out + [s.dst for s in self.steps if OPS[s.op].dst in NODE_TYPES]


def check_program(program: Program) -> None:
    """Types line up: each hop starts from what the previous one gave; only the last hop may give a value; the
    query reads the final type. Raises ``ExecutionError('bad_program')``."""
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
    if program.query not in QUERIES.get(cur, ()):
        raise ExecutionError("bad_program", f"query {program.query!r} cannot read a {cur}")


def _excluded(program: Program, i: int, trace: Trace) -> set[str]:
    """Objects a ``participant`` hop leaves out: exactly those the question names for that event — the anchor
    event's named participants (first hop), or the object whose event an ``event_of`` hop just took
    ("which object collided with X")."""
    if i == 0:
        return set(trace.named)
    if program.hops[i - 1].op == "event_of":
        return {trace.steps[i - 1].src}
    return set()


def project(ix: GraphIndex, entity: str, query: str) -> Optional[str]:
    """Read the answer off the final entity."""
    if query == "object":
        return ix.desc.get(entity)
    if query == "color":
        return ix.color(entity)
    if query == "shape":
        return ix.category(entity) or None
    if query == "event":
        return ix.event_text(entity)
    if query == "direction":
        return entity
    return None


def trace(program: Program, graph: nx.MultiDiGraph | GraphIndex) -> Trace:
    """Run ``program``; never raises for programs that merely denote nothing (see ``Trace.error``)."""
    ix = graph if isinstance(graph, GraphIndex) else GraphIndex(graph)
    tr = Trace()
    try:
        check_program(program)
        found, named = resolve_anchor(ix, program.anchor)
    except ExecutionError as err:
        tr.error, tr.detail = err.reason, str(err)
        return tr
    if len(found) != 1:
        tr.error = "no_anchor" if not found else "ambiguous_anchor"
        tr.detail = f"anchor matches {found}"
        return tr
    tr.anchor, tr.named = found[0], named
    visited = {found[0]}
    cur = found[0]
    for i, hop in enumerate(program.hops):
        op = OPS[hop.op]
        try:
            res = op.apply(ix, cur, hop.params, _excluded(program, i, tr) if hop.op == "participant" else set())
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
        tr.steps.append(Step(hop.op, dict(hop.params), cur, nxt))
        cur = nxt
    tr.answer = project(ix, cur, program.query)
    if tr.answer is None:
        tr.error, tr.detail = "no_answer", f"{program.query} of {cur} is unknown"
    return tr


def execute(program: Program, graph: nx.MultiDiGraph | GraphIndex) -> str:
    """The one answer ``program`` denotes on ``graph``; raises :class:`ExecutionError` with the reason if it
    denotes none or several."""
    tr = trace(program, graph)
    if tr.error is not None:
        raise ExecutionError(tr.error, tr.detail)
    assert tr.answer is not None
    return tr.answer
