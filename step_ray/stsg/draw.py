"""Draw a scene graph: a timeline of its objects, relations, motion, attribute changes, events and ``same_as``
links, and its keyframes with their boxes, as a PNG (matplotlib, Agg) or a self-contained HTML page.

The point is to see at a glance what perception (or the synthetic world) claims about a video and where it
goes wrong, so the keyframes are the real frames when the video can be decoded (with the project's decoder,
at the sampling the graph was built with) and blank frames with the same boxes when it cannot; the drawing
says which.
"""

from __future__ import annotations

import base64
import html
import io
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Optional

import networkx as nx
import numpy as np

from step_ray.config import VideoConfig
from step_ray.perception.colors import PALETTE
from step_ray.stsg import schema
from step_ray.stsg.scoring import object_track

MAX_KEYFRAMES = 12  # keyframe panels drawn (evenly chosen when there are more)
MAX_RELATION_ROWS = 40  # relation rows in the timeline (the HTML table lists them all)
PANEL_MIN_WIDTH = 320  # keyframes are upscaled to at least this width so labels stay legible
ARROWS = {"left": "\u2190", "right": "\u2192", "up": "\u2191", "down": "\u2193"}
BLANK = 235  # grey of a blank frame
OUTPUT_SUFFIXES = (".png", ".html", ".htm")


@dataclass
class Keyframes:
    """The keyframe images of a graph (RGB at the graph's width x height) and how they were obtained."""

    nodes: list[str]  # keyframe node ids in time order (at most MAX_KEYFRAMES)
    images: dict[str, np.ndarray]
    source: str  # the video path, or "blank"
    note: Optional[str] = None  # why the frames are blank


# --------------------------------------------------------------------------------------------- graph facts


def objects_in_order(g: nx.MultiDiGraph) -> list[str]:
    """Object nodes by clip, then first sight, then track id: the timeline's rows, top to bottom."""
    return sorted(schema.nodes_of(g, "object"),
                  key=lambda n: (g.nodes[n]["clip"], g.nodes[n]["first"], g.nodes[n]["track_id"]))


def keyframes_in_order(g: nx.MultiDiGraph) -> list[str]:
    return sorted(schema.nodes_of(g, "keyframe"), key=lambda k: (g.nodes[k]["time"], k))


def events_in_order(g: nx.MultiDiGraph) -> list[str]:
    """Events along their ``before`` chain (the graph's own order); events off the chain follow by time."""
    events = schema.nodes_of(g, "event")
    nxt = {u: v for u, v, _ in schema.edges_of(g, "before")}
    heads = sorted((e for e in events if e not in set(nxt.values())), key=lambda e: (g.nodes[e]["time"], e))
    order: list[str] = []
    for h in heads:
        e: Optional[str] = h
        while e is not None and e not in order:
            order.append(e)
            e = nxt.get(e)
    return order + sorted(set(events) - set(order), key=lambda e: (g.nodes[e]["time"], e))


def participants(g: nx.MultiDiGraph, event: str) -> list[str]:
    return sorted(u for u, _, d in g.in_edges(event, data=True) if d.get("type") == "participates_in")


def color_spans(g: nx.MultiDiGraph, node: str) -> list[tuple[float, float, Optional[str]]]:
    """(start, end, colour) pieces of an object's life: its first colour, changed by its ``attr_change``
    edges (stsg/2) at their ``time``."""
    d = g.nodes[node]
    changes = sorted((e["time"], e.get("to")) for u, v, e in g.out_edges(node, data=True)
                     if e.get("type") == "attr_change" and v == node and e.get("attribute", "color") == "color")
    spans, start, color = [], float(d["first"]), d.get("attributes", {}).get("color")
    for t, to in changes:
        spans.append((start, float(t), color))
        start, color = float(t), to
    spans.append((start, float(d["last"]), color))
    return spans


def rgb_of(color: Optional[str]) -> tuple[int, int, int]:
    """The palette's RGB for a colour name; matplotlib's for other names; grey when unknown."""
    if color in PALETTE:
        return PALETTE[color]
    try:
        from matplotlib.colors import to_rgb

        return tuple(int(255 * c) for c in to_rgb(str(color)))  # type: ignore[return-value]
    except ValueError:
        return (128, 128, 128)


def _mpl(color: Optional[str]) -> tuple[float, float, float]:
    r, g, b = rgb_of(color)
    return (r / 255, g / 255, b / 255)


def object_label(g: nx.MultiDiGraph, node: str) -> str:
    return f"{node} {schema.describe_object(g, node)}"


# --------------------------------------------------------------------------------------------- frames


def resolve_video(g: nx.MultiDiGraph, graph_path: Optional[Path], video: Optional[str]) -> Optional[Path]:
    """--video if given; else the graph's ``uri`` as an absolute path, or relative to the graph's folder or
    its parent (synthetic ground truth: ``gt/x.stsg.json`` with ``uri`` ``videos/x.mp4``), or the cwd."""
    if video:
        return Path(video)
    uri = str(g.graph.get("uri") or "")
    if not uri:
        return None
    p = Path(uri)
    if p.is_absolute():
        return p
    bases = ([graph_path.parent, graph_path.parent.parent] if graph_path is not None else []) + [Path.cwd()]
    return next((b / p for b in bases if (b / p).is_file()), bases[0] / p)


def _pick(nodes: list[str], limit: int) -> list[str]:
    if len(nodes) <= limit:
        return nodes
    idx = np.linspace(0, len(nodes) - 1, limit).round().astype(int)
    return [nodes[i] for i in sorted(set(idx.tolist()))]


def load_keyframes(g: nx.MultiDiGraph, video: Optional[Path], video_cfg: VideoConfig,
                   limit: int = MAX_KEYFRAMES) -> Keyframes:
    """Decode the video at the sampling the graph was built with (``provenance.sample_fps`` if recorded, else
    ``video.sample_fps``) and take the decoded frame nearest each keyframe time; blank frames if the video
    is missing or undecodable (``note`` says why)."""
    nodes = _pick(keyframes_in_order(g), limit)
    w, h = int(g.graph.get("width") or 0) or 320, int(g.graph.get("height") or 0) or 240
    blank = {k: np.full((h, w, 3), BLANK, np.uint8) for k in nodes}
    if video is None:
        return Keyframes(nodes, blank, "blank", "the graph names no video")
    if not video.is_file():
        return Keyframes(nodes, blank, "blank", f"video not found: {video}")
    from step_ray.video.decode import DecodeError, decode_sampled

    fps = (g.graph.get("provenance") or {}).get("sample_fps")
    cfg = replace(video_cfg, max_side=max(w, h, 32),
                  sample_fps=float(fps) if isinstance(fps, (int, float)) and fps > 0 else video_cfg.sample_fps)
    try:
        decoded = decode_sampled(str(video), cfg)
    except DecodeError as err:
        return Keyframes(nodes, blank, "blank", f"video not readable: {err}")
    import cv2

    times = np.asarray(decoded.times)
    images = {}
    for k in nodes:
        frame = decoded.frames[int(np.abs(times - g.nodes[k]["time"]).argmin())]
        images[k] = frame if frame.shape[:2] == (h, w) else cv2.resize(frame, (w, h), interpolation=cv2.INTER_AREA)
    return Keyframes(nodes, images, str(video))


def annotate(g: nx.MultiDiGraph, keyframe: str, frame: np.ndarray) -> np.ndarray:
    """The frame (upscaled for legibility) with the box and label of every object seen at the keyframe."""
    import cv2

    scale = max(1, -(-PANEL_MIN_WIDTH // frame.shape[1]))
    img = np.ascontiguousarray(cv2.resize(frame, None, fx=scale, fy=scale, interpolation=cv2.INTER_NEAREST)
                               if scale > 1 else frame.copy())
    t = int(round(float(g.nodes[keyframe]["time"]) * 1000))
    clip = g.nodes[keyframe]["clip"]
    for n in objects_in_order(g):
        box = object_track(g, n).get(t) if g.nodes[n]["clip"] == clip else None
        if box is None:
            continue
        x1, y1, x2, y2 = (int(round(v * scale)) for v in box)
        color_name = schema.attribute_at(g, n, "color", t / 1000)
        color = rgb_of(color_name)
        cv2.rectangle(img, (x1, y1), (x2 - 1, y2 - 1), (20, 20, 20), 4)
        cv2.rectangle(img, (x1, y1), (x2 - 1, y2 - 1), color, 2)
        label = f"{g.nodes[n]['clip']}:{g.nodes[n]['track_id']} {color_name or ''} {g.nodes[n]['category']}"
        (tw, th), _ = cv2.getTextSize(label, cv2.FONT_HERSHEY_SIMPLEX, 0.4, 1)
        ty = y1 - 3 if y1 - th - 4 >= 0 else min(img.shape[0] - 2, y2 + th + 3)
        cv2.rectangle(img, (x1, ty - th - 2), (x1 + tw + 2, ty + 2), (255, 255, 255), -1)
        cv2.putText(img, label, (x1 + 1, ty), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 0, 0), 1, cv2.LINE_AA)
    return img


# --------------------------------------------------------------------------------------------- timeline


def relation_rows(g: nx.MultiDiGraph) -> list[tuple[str, str, str, list[tuple[float, float]]]]:
    """(a, predicate, b, spans) once per pair and predicate: relations are stored in both directions, the
    ``right_of``/``below`` halves and the second ``near`` are the same facts."""
    rows: dict[tuple[str, str, str], list[tuple[float, float]]] = {}
    for u, v, d in schema.edges_of(g, "relation"):
        p = d["predicate"]
        if p in ("right_of", "below") or (p == "near" and u > v):
            continue
        rows.setdefault((u, p, v), []).append((float(d["start"]), float(d["end"])))
    return [(u, p, v, sorted(s)) for (u, p, v), s in sorted(rows.items())]


def draw_timeline(g: nx.MultiDiGraph, ax_obj, ax_rel) -> None:
    """Objects (one row each), clips, keyframes, motion, attribute changes, events and same_as on
    ``ax_obj``; relation spans on ``ax_rel``."""
    objs = objects_in_order(g)
    row = {n: i for i, n in enumerate(objs)}
    duration = float(g.graph.get("duration") or 0) or max([g.nodes[n]["last"] for n in objs] + [1.0])
    clips = sorted(schema.nodes_of(g, "clip"), key=lambda c: g.nodes[c]["start"])
    for ax in (ax_obj, ax_rel):
        for i, c in enumerate(clips):
            d = g.nodes[c]
            ax.axvspan(d["start"], d["end"], color="0.93" if i % 2 == 0 else "0.86", zorder=0)
            ax.axvline(d["start"], color="0.4", lw=0.8, ls="--", zorder=1)
        ax.set_xlim(-0.05 * duration, duration * 1.05)
    top = -0.9
    for c in clips:
        ax_obj.text(g.nodes[c]["start"], top - 0.35, f"clip {g.nodes[c]['index']}", fontsize=8, va="bottom")
    kf_times = [g.nodes[k]["time"] for k in keyframes_in_order(g)]
    ax_obj.plot(kf_times, [top] * len(kf_times), "v", color="black", ms=5, label="keyframe")
    for n in objs:
        y = row[n]
        times = sorted(object_track(g, n))
        for s, e, color in color_spans(g, n):
            ax_obj.hlines(y, s, e, color=_mpl(color), lw=7, alpha=0.45, zorder=2)
            pts = [t / 1000 for t in times if s - 1e-6 <= t / 1000 <= e + 1e-6]
            ax_obj.plot(pts, [y] * len(pts), "o", ms=3, color=_mpl(color), mec="black", mew=0.3, zorder=3)
        for u, v, d in g.out_edges(n, data=True):
            if d.get("type") == "motion":
                ax_obj.hlines(y + 0.3, d["start"], d["end"], color="0.25", lw=1, zorder=3)
                ax_obj.text((d["start"] + d["end"]) / 2, y + 0.3, ARROWS.get(d["direction"], "?"), fontsize=9,
                            ha="center", va="center", zorder=4)
            elif d.get("type") == "attr_change":
                ax_obj.plot([d["time"]], [y], "D", ms=6, color=_mpl(d.get("to")), mec="black", zorder=5)
                ax_obj.annotate(f"{d.get('from')}\u2192{d.get('to')}", (d["time"], y), xytext=(3, -9),
                                textcoords="offset points", fontsize=7)
    for u, v, _ in schema.edges_of(g, "same_as"):
        if u in row and v in row and g.nodes[u]["clip"] < g.nodes[v]["clip"]:
            ax_obj.annotate("", xy=(g.nodes[v]["first"], row[v]), xytext=(g.nodes[u]["last"], row[u]),
                            arrowprops={"arrowstyle": "-", "ls": ":", "color": "purple", "lw": 1.2,
                                        "connectionstyle": "arc3,rad=0.2"}, zorder=2)
    stacked: dict[tuple[float, int], int] = {}  # labels of events at one place are stacked, not overprinted
    for i, e in enumerate(events_in_order(g), start=1):
        d, who = g.nodes[e], [p for p in participants(g, e) if p in row]
        ys = [row[p] for p in who] or [top]
        if len(ys) > 1:
            ax_obj.vlines(d["time"], min(ys), max(ys), color="crimson", lw=1, zorder=4)
        ax_obj.plot([d["time"]] * len(ys), ys, "*", ms=11, color="crimson", mec="black", mew=0.4, zorder=6)
        name = d.get("label") or d["kind"]
        place = (round(float(d["time"]), 1), min(ys))
        stacked[place] = stacked.get(place, -1) + 1
        ax_obj.annotate(f"{i}. {name}", (d["time"], min(ys)), xytext=(2, 6 + 9 * stacked[place]), textcoords="offset points",
                        fontsize=7, color="crimson", zorder=7)
    ax_obj.set_yticks(range(len(objs)), [object_label(g, n) for n in objs], fontsize=8)
    ax_obj.set_ylim(len(objs) - 0.4, top - 0.8)
    ax_obj.set_title(f"{g.graph.get('video_id')} ({g.graph.get('source')}, {g.graph.get('schema_version')}): "
                     f"objects, motion (arrows), events (* numbered in before/after order), same_as (dotted)",
                     fontsize=9)
    rels = relation_rows(g)
    shown = rels[:MAX_RELATION_ROWS]
    for i, (u, p, v, spans) in enumerate(shown):
        ax_rel.broken_barh([(s - 0.05, max(e - s, 0) + 0.1) for s, e in spans], (i - 0.35, 0.7),
                           color="steelblue" if p != "near" else "darkorange", zorder=2)
    ax_rel.set_yticks(range(len(shown)), [f"{u} {p} {v}" for u, p, v, _ in shown], fontsize=7)
    ax_rel.set_ylim(max(len(shown), 1) - 0.5, -0.5)
    more = f" (first {len(shown)} of {len(rels)})" if len(rels) > len(shown) else ""
    ax_rel.set_title(f"relation spans{more}", fontsize=9)
    ax_rel.set_xlabel("time (s)")


def _figure(g: nx.MultiDiGraph, keyframes: Optional[Keyframes], cols: int = 4):
    """A bare ``Figure`` on the Agg canvas: no pyplot state, no GUI backend, safe in workers and threads."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    n_obj = max(1, len(schema.nodes_of(g, "object")))
    n_rel = max(1, min(MAX_RELATION_ROWS, len(relation_rows(g))))
    kf_rows = -(-len(keyframes.nodes) // cols) if keyframes and keyframes.nodes else 0
    heights = [1.2 + 0.38 * n_obj, 0.8 + 0.22 * n_rel] + [2.4] * kf_rows
    fig = Figure(figsize=(13, sum(heights) + 0.6), layout="constrained")
    FigureCanvasAgg(fig)
    grid = fig.add_gridspec(len(heights), cols, height_ratios=heights)
    ax_obj = fig.add_subplot(grid[0, :])
    ax_rel = fig.add_subplot(grid[1, :], sharex=ax_obj)
    draw_timeline(g, ax_obj, ax_rel)
    if keyframes:
        for i, k in enumerate(keyframes.nodes):
            ax = fig.add_subplot(grid[2 + i // cols, i % cols])
            ax.imshow(annotate(g, k, keyframes.images[k]))
            ax.set_title(f"{k}  t={g.nodes[k]['time']:.2f}s", fontsize=8)
            ax.set_axis_off()
        if keyframes.note:
            fig.suptitle(f"keyframes drawn on blank frames: {keyframes.note}", fontsize=9, color="darkred")
    return fig


def _png_bytes(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    return buf.getvalue()


def _image_png(img: np.ndarray) -> bytes:
    import cv2

    ok, data = cv2.imencode(".png", cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
    if not ok:
        raise RuntimeError("PNG encoding failed")
    return data.tobytes()


# --------------------------------------------------------------------------------------------- outputs


def render_png(g: nx.MultiDiGraph, keyframes: Keyframes, out: Path) -> None:
    """Timeline, relation spans and keyframe panels in one PNG."""
    data = _png_bytes(_figure(g, keyframes))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(data)


def _table(headers: list[str], rows: list[list]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def render_html(g: nx.MultiDiGraph, keyframes: Keyframes, out: Path) -> None:
    """One self-contained page: the timeline (inline PNG), keyframes with boxes (inline PNGs) and tables of
    objects, events, relations, motion, attribute changes and same_as links."""
    def img(data: bytes, alt: str) -> str:
        return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{base64.b64encode(data).decode()}">'

    objs = objects_in_order(g)
    sections = [f"<h1>{html.escape(str(g.graph.get('video_id')))}</h1>",
                _table(["attribute", "value"], [[k, g.graph.get(k)] for k in
                                                ("schema_version", "source", "uri", "duration", "width", "height",
                                                 "provenance")]),
                "<h2>Timeline</h2>", img(_png_bytes(_figure(g, None)), "timeline")]
    sections.append(f"<h2>Keyframes</h2><p>frames: {html.escape(keyframes.source)}"
                    + (f" &mdash; <b>{html.escape(keyframes.note)}</b>; boxes drawn on blank frames" if keyframes.note else "")
                    + "</p>")
    sections.append('<div class="kf">' + "".join(
        f"<figure>{img(_image_png(annotate(g, k, keyframes.images[k])), k)}"
        f"<figcaption>{html.escape(k)} t={g.nodes[k]['time']:.2f}s</figcaption></figure>" for k in keyframes.nodes)
        + "</div>")
    sections += ["<h2>Objects</h2>", _table(
        ["id", "clip", "track", "category", "colour", "first", "last", "frames", "identity", "source", "conf"],
        [[n, d["clip"], d["track_id"], d["category"], d.get("attributes", {}).get("color", ""), d["first"], d["last"],
          len(object_track(g, n)), d.get("identity", ""), d.get("source", ""), d.get("conf", "")]
         for n in objs for d in [g.nodes[n]]])]
    sections += ["<h2>Events (before/after order)</h2>", _table(
        ["#", "id", "kind", "clip", "time", "participants", "details"],
        [[i, e, d["kind"], d["clip"], d["time"], ", ".join(participants(g, e)),
          " ".join(f"{k}={d[k]}" for k in ("attribute", "from", "to", "label") if k in d)]
         for i, e in enumerate(events_in_order(g), start=1) for d in [g.nodes[e]]])]
    sections += ["<h2>Relations</h2>", _table(["subject", "predicate", "object", "spans (s)"],
                                              [[u, p, v, "; ".join(f"{s}-{e}" for s, e in spans)]
                                               for u, p, v, spans in relation_rows(g)])]
    sections += ["<h2>Motion</h2>", _table(["object", "direction", "start", "end"], sorted(
        [u, d["direction"], d["start"], d["end"]] for u, _, d in schema.edges_of(g, "motion"))),
        "<h2>Attribute changes</h2>", _table(["object", "attribute", "from", "to", "time", "start", "end"], sorted(
            [u, d.get("attribute"), d.get("from"), d.get("to"), d.get("time"), d.get("start"), d.get("end")]
            for u, _, d in schema.edges_of(g, "attr_change"))),
        "<h2>same_as</h2>", _table(["object", "object", "source", "conf"], sorted(
            [u, v, d.get("source", ""), d.get("conf", "")] for u, v, d in schema.edges_of(g, "same_as") if u < v))]
    style = ("body{font-family:sans-serif;margin:1.5em}table{border-collapse:collapse;margin-bottom:1em;font-size:13px}"
             "td,th{border:1px solid #ccc;padding:2px 6px}th{background:#eee}img{max-width:100%}"
             ".kf{display:flex;flex-wrap:wrap;gap:8px}figure{margin:0}figcaption{font-size:12px}")
    page = (f"<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>{html.escape(str(g.graph.get('video_id')))}"
            f" scene graph</title><style>{style}</style></head><body>{''.join(sections)}</body></html>")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(page, encoding="utf-8")


def render_scores(report: dict, out: Path) -> None:
    """A bar chart of a ``stsg-eval`` report: corpus precision / recall / F1 per metric and F1 per event kind,
    each bar labelled with its counts."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    c = report["corpus"]
    fig = Figure(figsize=(12, 4.2), layout="constrained")
    FigureCanvasAgg(fig)
    ax_m, ax_k = fig.subplots(1, 2, width_ratios=[3, 2])
    names = ["objects", "relations", "relations_all", "events", "same_as"]
    x = np.arange(len(names))
    for i, (part, color) in enumerate((("precision", "steelblue"), ("recall", "darkorange"), ("f1", "seagreen"))):
        ax_m.bar(x + (i - 1) * 0.27, [c[n][part] for n in names], 0.27, label=part, color=color)
    for j, n in enumerate(names):
        ax_m.text(j, 1.02, f"tp {c[n]['tp']} fp {c[n]['fp']} fn {c[n]['fn']}", ha="center", fontsize=7)
    ax_m.set_xticks(x, names)
    ax_m.set_ylim(0, 1.12)
    ax_m.legend(loc="lower right", fontsize=8)
    ax_m.set_title(f"{c['videos']} videos ({c['videos_missing']} missing or unreadable); "
                   f"ID switches / 100 track-frames {c['id_switches_per_100']:.2f}; "
                   f"object lists exact {c['object_lists_exact_share']:.0%}", fontsize=9)
    kinds = list(c["events_by_kind"])
    ax_k.bar(range(len(kinds)), [c["events_by_kind"][k]["f1"] for k in kinds], color="seagreen")
    for j, k in enumerate(kinds):
        m = c["events_by_kind"][k]
        ax_k.text(j, m["f1"] + 0.02, f"{m['tp']}/{m['tp'] + m['fn']}", ha="center", fontsize=7)
    ax_k.set_xticks(range(len(kinds)), kinds, rotation=30, ha="right", fontsize=8)
    ax_k.set_ylim(0, 1.12)
    ax_k.set_title(f"event F1 by kind (time tolerance {report['settings']['time_tol']} s)", fontsize=9)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(_png_bytes(fig))


def show(graph_path: str | Path, output: str | Path, video: Optional[str], video_cfg: VideoConfig) -> dict:
    """Read a graph file and draw it to ``output`` (``.png`` or ``.html``); returns a summary. Raises
    :class:`schema.StsgFormatError` / ``OSError`` for an unreadable graph, ``ValueError`` for another suffix."""
    out = Path(output)
    kind = out.suffix.lower()
    if kind not in OUTPUT_SUFFIXES:
        raise ValueError(f"{output}: must end in .png or .html")
    graph_path = Path(graph_path)
    g = schema.read(graph_path)
    keyframes = load_keyframes(g, resolve_video(g, graph_path, video), video_cfg)
    (render_png if kind == ".png" else render_html)(g, keyframes, out)
    return {"output": str(out), "objects": len(schema.nodes_of(g, "object")), "events": len(schema.nodes_of(g, "event")),
            "relations": len(relation_rows(g)), "keyframes_drawn": len(keyframes.nodes),
            "frames": keyframes.source if not keyframes.note else f"blank ({keyframes.note})"}
