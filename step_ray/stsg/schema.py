"""The STSG data contract: a ``networkx.MultiDiGraph`` with typed nodes and edges, stored as node-link JSON.

Version ``stsg/2``. Documented in ``docs/stsg_schema.md``; bump :data:`SCHEMA_VERSION` on any change that
an older reader would misread.

Graph attributes: ``schema_version``, ``video_id``, ``uri``, ``duration`` (s), ``width``/``height`` (the frame
size boxes refer to), ``source`` (``ground_truth`` or ``perception``), ``provenance`` (a dict of what built it).

Nodes (``type`` attribute; ids are stable strings):

=============  ======================  ==================================================================
type           id                      attributes
=============  ======================  ==================================================================
``video``      ``video``               ``uri``, ``duration``
``clip``       ``clip:{c}``            ``index``, ``start``, ``end`` (a shot)
``keyframe``   ``kf:{c}:{k}``          ``clip``, ``time``
``object``     ``obj:{c}:{t}``         ``clip``, ``track_id``, ``category`` (class / shape), ``attributes``
                                        (``{"color": ...}`` at first sight), ``boxes`` (``[[time, x1, y1, x2,
                                        y2], ...]`` at keyframes), ``track`` (the same at every sampled frame
                                        where it was seen), ``first``, ``last`` (s); ground truth: ``identity``
``event``      ``ev:{n}``              ``kind`` in :data:`EVENT_KINDS`, ``clip``, ``time``; ``change``:
                                        ``attribute``, ``from``, ``to``; ``action``: ``label``
=============  ======================  ==================================================================

Edges (each has a ``type`` attribute; two objects may be joined by several edges, e.g. ``left_of`` over one
time span and ``near`` over another):

- ``contains``: video -> clip, clip -> keyframe, clip -> object.
- ``relation``: object -> object, ``predicate`` in :data:`RELATIONS`, ``start``/``end`` (s). Stored in both
  directions (``a left_of b`` and ``b right_of a``).
- ``motion``: object -> itself, ``direction`` in :data:`DIRECTIONS`, ``start``/``end``.
- ``attr_change``: object -> itself, ``attribute``, ``from``, ``to``, ``time`` (first seen with the new value),
  ``start``/``end`` (last seen with the old value / first seen with the new one).
- ``participates_in``: object -> event.
- ``before`` / ``after``: event -> the next / previous event of the video in time.
- ``same_as``: object -> object of another clip, the same physical object (both directions).

Every node and edge carries ``source`` (what produced it: ``synth``, ``detector:color``, ``tracker:bytetrack``,
``geometry``, ...) and ``conf`` (0..1).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterator

import networkx as nx

from step_ray.perception import tracks as _tracks

SCHEMA_VERSION = "stsg/2"

NODE_TYPES = ("video", "clip", "keyframe", "object", "event")
EDGE_TYPES = ("contains", "relation", "motion", "attr_change", "participates_in", "before", "after", "same_as")
#: The predicates of relation edges: those perception states (:data:`step_ray.perception.tracks.RELATIONS`)
#: and, with ``stsg.relations: nearest``, their ``directly_*`` forms (nearest neighbour that way).
RELATIONS = _tracks.RELATIONS + ("directly_left_of", "directly_right_of", "directly_above", "directly_below")
INVERSE_RELATION = {"left_of": "right_of", "right_of": "left_of", "above": "below", "below": "above", "near": "near"}
DIRECTIONS = ("left", "right", "up", "down")
EVENT_KINDS = ("enter", "leave", "collide", "start_moving", "stop_moving", "change", "action")


class StsgFormatError(ValueError):
    """A file is not a readable STSG of this schema version."""


def clip_id(c: int) -> str:
    return f"clip:{c}"


def keyframe_id(c: int, k: int) -> str:
    return f"kf:{c}:{k}"


def object_id(c: int, track_id: int) -> str:
    return f"obj:{c}:{track_id}"


def event_id(n: int) -> str:
    return f"ev:{n}"


def new_graph(video_id: str, uri: str, duration: float, width: int, height: int, source: str,
              provenance: dict[str, Any] | None = None) -> nx.MultiDiGraph:
    g = nx.MultiDiGraph(schema_version=SCHEMA_VERSION, video_id=video_id, uri=uri, duration=round(duration, 3),
                        width=width, height=height, source=source, provenance=dict(provenance or {}))
    g.add_node("video", type="video", uri=uri, duration=round(duration, 3), source=source, conf=1.0)
    return g


def nodes_of(g: nx.MultiDiGraph, node_type: str) -> list[str]:
    return [n for n, d in g.nodes(data=True) if d.get("type") == node_type]


def edges_of(g: nx.MultiDiGraph, edge_type: str) -> list[tuple[str, str, dict]]:
    return [(u, v, d) for u, v, d in g.edges(data=True) if d.get("type") == edge_type]


def describe_object(g: nx.MultiDiGraph, node: str) -> str:
    """'red circle': the object's colour and category, as questions and answers name it."""
    d = g.nodes[node]
    color = d.get("attributes", {}).get("color")
    return f"{color} {d['category']}" if color else str(d["category"])


def attribute_at(g: nx.MultiDiGraph, node: str, attribute: str, time: float) -> Any:
    """The object's ``attribute`` at ``time`` (s): its value at first sight, then its ``attr_change`` edges."""
    value = g.nodes[node].get("attributes", {}).get(attribute)
    changes = sorted((d["time"], d["to"]) for _, _, d in g.out_edges(node, data=True)
                     if d.get("type") == "attr_change" and d.get("attribute") == attribute)
    for when, to in changes:
        if time >= when - 1e-9:
            value = to
    return value


def to_json(g: nx.MultiDiGraph) -> dict:
    data = nx.node_link_data(g, edges="edges")
    data["graph"]["schema_version"] = SCHEMA_VERSION
    return data


def from_json(data: Any) -> nx.MultiDiGraph:
    if not isinstance(data, dict) or "graph" not in data or "nodes" not in data:
        raise StsgFormatError("not an STSG node-link document (missing 'graph' or 'nodes')")
    version = data["graph"].get("schema_version")
    if version != SCHEMA_VERSION:
        raise StsgFormatError(f"unsupported STSG schema version {version!r} (this reader knows {SCHEMA_VERSION!r})")
    try:
        g = nx.node_link_graph(data, directed=True, multigraph=True, edges="edges")
    except (KeyError, TypeError, nx.NetworkXError) as err:
        raise StsgFormatError(f"malformed STSG: {err}") from None
    for n, d in g.nodes(data=True):
        if d.get("type") not in NODE_TYPES:
            raise StsgFormatError(f"node {n!r} has unknown type {d.get('type')!r}")
    for u, v, d in g.edges(data=True):
        if d.get("type") not in EDGE_TYPES:
            raise StsgFormatError(f"edge {u!r}->{v!r} has unknown type {d.get('type')!r}")
    return g


def iter_json(g: nx.MultiDiGraph) -> Iterator[str]:
    """The node-link JSON of :func:`to_json` (keys sorted, no spaces) in pieces, one node or edge at a time,
    so writing a large graph never holds a second copy of it as one string."""
    def enc(obj: Any) -> str:
        return json.dumps(obj, sort_keys=True, separators=(",", ":"))

    graph = dict(g.graph, schema_version=SCHEMA_VERSION)
    yield '{"directed":true,"edges":['
    for i, (u, v, k, d) in enumerate(g.edges(keys=True, data=True)):
        yield ("," if i else "") + enc({**d, "source": u, "target": v, "key": k})
    yield '],"graph":' + enc(graph) + ',"multigraph":true,"nodes":['
    for i, (n, d) in enumerate(g.nodes(data=True)):
        yield ("," if i else "") + enc({**d, "id": n})
    yield "]}"


def dumps(g: nx.MultiDiGraph) -> str:
    """Deterministic JSON text of a graph (sorted keys), so equal graphs give byte-equal files."""
    return "".join(iter_json(g))


def loads(text: str) -> nx.MultiDiGraph:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise StsgFormatError(f"not JSON: {err}") from None
    return from_json(data)


def write(g: nx.MultiDiGraph, path: str | Path) -> None:
    """Write atomically (temp file + rename; an object store's single PUT), so an interrupted run never
    leaves a half-written graph; streamed piece by piece (:func:`iter_json`)."""
    from step_ray.utils import storage

    with storage.open_write(str(path)) as f:
        for piece in iter_json(g):
            f.write(piece.encode())


def read(path: str | Path) -> nx.MultiDiGraph:
    return loads(Path(path).read_text())
