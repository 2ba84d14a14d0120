"""Score predicted scene graphs against ground truth: objects, identity, relations, events, ``same_as``.

Everything here is a pure function of graphs (``networkx.MultiDiGraph`` of :mod:`step_ray.stsg.schema`), so
the metrics can be tested on graphs built in memory; :func:`evaluate_dirs` adds the file pairing that
``step-ray stsg-eval`` needs (by ``video_id``; missing predictions are misses, unreadable files are reported).

One object matching carries every other metric: predicted object nodes are matched one-to-one to
ground-truth object nodes by the Hungarian method on the mean box IoU over the sampled times both were seen
at (their ``track``; ``boxes`` at keyframes for graphs without one). Pairs below ``iou`` do not match.
Relations, events and ``same_as`` links of predicted objects are then translated into ground-truth objects
through that matching and compared as sets, so a predicted graph is never rewarded for an object it did not
find. Counts are summed over the corpus before precision / recall / F1 are taken (micro average).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import asdict, dataclass, field
from itertools import combinations
from pathlib import Path
from typing import Any, Optional

import networkx as nx
import numpy as np

from step_ray.stsg import schema
from step_ray.stsg.build import keyframe_relations
from step_ray.perception.tracks import Box

STSG_GLOB = "*.stsg.json"
TIME_EPS_MS = 1  # graphs store times in ms (3 decimals): times closer than this are the same sampled frame


@dataclass
class ScoreSettings:
    iou: float = 0.5  # a predicted and a ground-truth box (or object) match at this IoU or more
    time_tol: float = 0.5  # s: an event may be this far from the true time and still match
    near_factor: Optional[float] = None  # None: the ground-truth graph's own, else the builder's default


@dataclass
class Counts:
    """True positives, false positives and false negatives of one metric; they add over videos."""

    tp: int = 0
    fp: int = 0
    fn: int = 0

    def __iadd__(self, other: "Counts") -> "Counts":
        self.tp, self.fp, self.fn = self.tp + other.tp, self.fp + other.fp, self.fn + other.fn
        return self

    @property
    def precision(self) -> float:
        return _ratio(self.tp, self.tp + self.fp, empty=1.0 if self.fn == 0 else 0.0)

    @property
    def recall(self) -> float:
        return _ratio(self.tp, self.tp + self.fn, empty=1.0 if self.fp == 0 else 0.0)

    @property
    def f1(self) -> float:
        p, r = self.precision, self.recall
        return 0.0 if p + r == 0 else 2 * p * r / (p + r)

    def report(self) -> dict:
        return {"tp": self.tp, "fp": self.fp, "fn": self.fn, "precision": round(self.precision, 4),
                "recall": round(self.recall, 4), "f1": round(self.f1, 4)}

    @staticmethod
    def of_sets(pred: set, truth: set) -> "Counts":
        return Counts(len(pred & truth), len(pred - truth), len(truth - pred))


def _ratio(num: int, den: int, empty: float) -> float:
    """num / den; when nothing was predicted (or nothing was there) the score is perfect only if the other
    side is empty too."""
    return num / den if den else empty


@dataclass
class VideoScore:
    """The counts of one video. ``status``: ``ok``, ``missing`` (no prediction) or ``unreadable``."""

    video_id: str
    status: str = "ok"
    error: Optional[str] = None
    objects: Counts = field(default_factory=Counts)
    object_lists_match: bool = False
    id_switches: int = 0
    gt_track_frames: int = 0
    relations: Counts = field(default_factory=Counts)  # between matched objects
    relations_all: Counts = field(default_factory=Counts)  # also those of missed and spurious objects
    events: Counts = field(default_factory=Counts)
    events_by_kind: dict[str, Counts] = field(default_factory=dict)
    same_as: Counts = field(default_factory=Counts)
    matching: dict[str, str] = field(default_factory=dict)  # predicted object -> ground-truth object

    def report(self) -> dict:
        out = {"video_id": self.video_id, "status": self.status}
        if self.error:
            out["error"] = self.error
        out.update(_metrics(self))
        out["matching"] = dict(sorted(self.matching.items()))
        return out


def _metrics(s: VideoScore) -> dict:
    return {
        "objects": s.objects.report(),
        "object_lists_match": s.object_lists_match,
        "id_switches": s.id_switches,
        "gt_track_frames": s.gt_track_frames,
        "id_switches_per_100": round(_per_100(s.id_switches, s.gt_track_frames), 4),
        "relations": s.relations.report(),
        "relations_all": s.relations_all.report(),
        "events": s.events.report(),
        "events_by_kind": {k: c.report() for k, c in sorted(s.events_by_kind.items())},
        "same_as": s.same_as.report(),
    }


def _per_100(n: int, frames: int) -> float:
    return 100.0 * n / frames if frames else 0.0


# --------------------------------------------------------------------------------------------- geometry


def _ms(t: float) -> int:
    return int(round(float(t) * 1000))


def object_track(g: nx.MultiDiGraph, node: str) -> dict[int, Box]:
    """The object's boxes by time (ms): its ``track`` (every sampled frame it was seen at, stsg/2), else
    its ``boxes`` (keyframes only, stsg/1)."""
    d = g.nodes[node]
    rows = d.get("track") or d.get("boxes") or []
    return {_ms(r[0]): (float(r[1]), float(r[2]), float(r[3]), float(r[4])) for r in rows}


def box_iou(a: Box, b: Box) -> float:
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def assign(score: np.ndarray, minimum: float) -> list[tuple[int, int]]:
    """One-to-one (row, column) pairs maximising the total score over entries >= ``minimum`` (Hungarian /
    Jonker-Volgenant via ``lap``); entries below ``minimum`` never pair."""
    import lap

    if score.size == 0:
        return []
    valid = score >= minimum
    if not valid.any():
        return []
    cost = np.where(valid, -score, 0.0).astype(np.float64)
    _, rows, _ = lap.lapjv(np.ascontiguousarray(cost), extend_cost=True)
    return [(i, int(j)) for i, j in enumerate(rows) if j >= 0 and valid[i, j]]


# --------------------------------------------------------------------------------------------- objects


def _objects(g: nx.MultiDiGraph) -> list[str]:
    return sorted(schema.nodes_of(g, "object"))


def mean_track_iou(a: dict[int, Box], b: dict[int, Box]) -> float:
    """Mean IoU over the times both tracks have a box (0 when they never meet)."""
    shared = a.keys() & b.keys()
    return sum(box_iou(a[t], b[t]) for t in shared) / len(shared) if shared else 0.0


def match_objects(pred: nx.MultiDiGraph, gt: nx.MultiDiGraph, iou: float = 0.5, time_tol: float = 0.0
                  ) -> dict[str, str]:
    """Predicted object -> ground-truth object, one-to-one, by mean track IoU (>= ``iou``). ``time_tol`` (s):
    a predicted box counts at the nearest ground-truth time within that distance (graphs whose frames were
    sampled at slightly different times, such as sparse against full decoding); 0: the same sampled frame."""
    p_nodes, g_nodes = _objects(pred), _objects(gt)
    g_tracks = [object_track(gt, n) for n in g_nodes]
    p_tracks = [object_track(pred, n) for n in p_nodes]
    if time_tol > 0:
        times = sorted({t for tr in g_tracks for t in tr})
        p_tracks = [_snapped(tr, times, _ms(time_tol)) for tr in p_tracks]
    score = np.array([[mean_track_iou(a, b) for b in g_tracks] for a in p_tracks]).reshape(len(p_nodes), len(g_nodes))
    return {p_nodes[i]: g_nodes[j] for i, j in assign(score, iou)}


def _snapped(track: dict[int, Box], times: list[int], tol_ms: int) -> dict[int, Box]:
    """The track's boxes moved to the nearest of ``times`` (ms) within ``tol_ms``; boxes with none are dropped."""
    import bisect

    out: dict[int, Box] = {}
    for t, box in sorted(track.items()):
        k = bisect.bisect_left(times, t)
        near = [x for x in times[max(0, k - 1):k + 1] if abs(x - t) <= tol_ms]
        if near:
            out.setdefault(min(near, key=lambda x: (abs(x - t), x)), box)
    return out


def object_agreement(pred: nx.MultiDiGraph, ref: nx.MultiDiGraph, iou: float = 0.5, time_tol: float = 0.0) -> Counts:
    """Objects of two graphs of one video matched one-to-one (:func:`match_objects`): matched pairs, objects
    only ``pred`` has, objects only ``ref`` has. Its F1 is how far two ways of building a graph agree."""
    matching = match_objects(pred, ref, iou, time_tol)
    return Counts(len(matching), len(_objects(pred)) - len(matching), len(_objects(ref)) - len(matching))


def object_lists(g: nx.MultiDiGraph) -> list[list[tuple[str, str]]]:
    """Per clip in time order, the sorted (category, colour at first sight) of its objects."""
    clips = sorted(schema.nodes_of(g, "clip"), key=lambda c: (g.nodes[c]["start"], g.nodes[c]["index"]))
    by_clip: dict[Any, list[tuple[str, str]]] = defaultdict(list)
    for n in _objects(g):
        d = g.nodes[n]
        by_clip[d["clip"]].append((str(d["category"]), str(d.get("attributes", {}).get("color"))))
    return [sorted(by_clip[g.nodes[c]["index"]]) for c in clips]


def identity_switches(pred: nx.MultiDiGraph, gt: nx.MultiDiGraph, iou: float = 0.5) -> tuple[int, int]:
    """(switches, ground-truth track-frames), MOT-style: at each sampled time, ground-truth and predicted
    boxes are matched one-to-one (IoU >= ``iou``); a switch is counted each time the predicted object that
    covers a ground-truth object differs from the one that covered it last (gaps in between do not reset it).
    Ground-truth objects live in one clip, so switches are counted within clips."""
    g_nodes, p_nodes = _objects(gt), _objects(pred)
    g_tracks = {n: object_track(gt, n) for n in g_nodes}
    p_tracks = {n: object_track(pred, n) for n in p_nodes}
    p_at: dict[int, list[str]] = defaultdict(list)
    for n, tr in p_tracks.items():
        for t in tr:
            p_at[t].append(n)
    g_at: dict[int, list[str]] = defaultdict(list)
    for n, tr in g_tracks.items():
        for t in tr:
            g_at[t].append(n)
    covered: dict[str, dict[int, str]] = defaultdict(dict)  # gt object -> time -> predicted object
    for t, gs in g_at.items():
        ps = p_at.get(t, [])
        score = np.array([[box_iou(g_tracks[a][t], p_tracks[b][t]) for b in ps] for a in gs]).reshape(len(gs), len(ps))
        for i, j in assign(score, iou):
            covered[gs[i]][t] = ps[j]
    switches = 0
    for n in g_nodes:
        last = None
        for t in sorted(covered[n]):
            cur = covered[n][t]
            switches += last is not None and cur != last
            last = cur
    return switches, sum(len(tr) for tr in g_tracks.values())


# --------------------------------------------------------------------------------------------- relations


def near_factor_of(g: nx.MultiDiGraph, default: float) -> float:
    """The near factor the graph was built with, if it records one (graph attribute or provenance)."""
    for holder in (g.graph, g.graph.get("provenance") or {}):
        value = holder.get("near_factor")
        if isinstance(value, (int, float)) and value > 0:
            return float(value)
    return default


def _active_relations(g: nx.MultiDiGraph, t: int) -> set[tuple[str, str, str]]:
    return {(u, v, d["predicate"]) for u, v, d in schema.edges_of(g, "relation")
            if _ms(d["start"]) - TIME_EPS_MS <= t <= _ms(d["end"]) + TIME_EPS_MS}


def true_relations(gt: nx.MultiDiGraph, t: int, near_factor: float,
                   tracks: dict[str, dict[int, Box]] | None = None) -> set[tuple[str, str, str]]:
    """(a, b, predicate) of every ordered pair of ground-truth objects of one clip seen at time ``t`` (ms),
    from their track boxes, with the builder's own geometry. ``tracks``: the objects' tracks, if at hand."""
    tracks = tracks if tracks is not None else {n: object_track(gt, n) for n in _objects(gt)}
    present = [(n, tr[t]) for n, tr in sorted(tracks.items()) if t in tr]
    scope = str((gt.graph.get("provenance") or {}).get("relations", "all"))
    out = set()
    for clip in sorted({gt.nodes[n]["clip"] for n, _ in present}):
        out |= keyframe_relations([(n, b) for n, b in present if gt.nodes[n]["clip"] == clip], near_factor, scope)
    return out


def relation_counts(pred: nx.MultiDiGraph, gt: nx.MultiDiGraph, matching: dict[str, str],
                    near_factor: float) -> tuple[Counts, Counts]:
    """(between matched objects, all) relation counts at each predicted keyframe time. The first compares
    the predicates of matched pairs only (relation quality given detection); the second also counts the
    relations of spurious objects as false and those of missed objects as missed."""
    matched_gt = set(matching.values())
    tracks = {n: object_track(gt, n) for n in _objects(gt)}
    only_matched, every = Counts(), Counts()
    for t in sorted({_ms(pred.nodes[k]["time"]) for k in schema.nodes_of(pred, "keyframe")}):
        truth = true_relations(gt, t, near_factor, tracks)
        claimed = {(matching.get(u, "pred:" + u), matching.get(v, "pred:" + v), p)
                   for u, v, p in _active_relations(pred, t)}
        every += Counts.of_sets(claimed, truth)
        only_matched += Counts.of_sets({r for r in claimed if r[0] in matched_gt and r[1] in matched_gt},
                                       {r for r in truth if r[0] in matched_gt and r[1] in matched_gt})
    return only_matched, every


# --------------------------------------------------------------------------------------------- events


EVENT_DETAILS = ("attribute", "to", "label")  # a change must reach the same value, an action have the same label


def _events(g: nx.MultiDiGraph) -> list[tuple[str, str, float, frozenset[str], tuple]]:
    out = []
    for e in sorted(schema.nodes_of(g, "event")):
        d = g.nodes[e]
        who = frozenset(u for u, _ in g.in_edges(e) if g.nodes[u].get("type") == "object")
        out.append((e, d["kind"], float(d["time"]), who, tuple(d.get(k) for k in EVENT_DETAILS)))
    return out


def event_counts(pred: nx.MultiDiGraph, gt: nx.MultiDiGraph, matching: dict[str, str],
                 time_tol: float) -> tuple[Counts, dict[str, Counts]]:
    """Events match one-to-one when the kind is the same (and for ``change`` the attribute and new value, for
    ``action`` the label), the participants are the same objects through the object matching, and the times
    differ by at most ``time_tol``; as many as possible match, the closest in time preferred. Returns the
    overall counts and the counts per kind."""
    p_ev, g_ev = _events(pred), _events(gt)
    big = float(len(p_ev) + len(g_ev) + 1)  # every match outweighs any closeness: the most matches win

    def weight(p, g) -> float:
        who = frozenset(matching.get(n) for n in p[3])
        if p[1] != g[1] or p[4] != g[4] or who != g[3] or None in who or abs(p[2] - g[2]) > time_tol + 1e-9:
            return 0.0
        return big + 1.0 - abs(p[2] - g[2]) / (time_tol + 1e-9)

    score = np.array([[weight(p, g) for g in g_ev] for p in p_ev]).reshape(len(p_ev), len(g_ev))
    pairs = assign(score, big)
    by_kind: dict[str, Counts] = {k: Counts() for k in sorted({e[1] for e in p_ev + g_ev})}
    for i, _ in pairs:
        by_kind[p_ev[i][1]].tp += 1
    for i in set(range(len(p_ev))) - {i for i, _ in pairs}:
        by_kind[p_ev[i][1]].fp += 1
    for j in set(range(len(g_ev))) - {j for _, j in pairs}:
        by_kind[g_ev[j][1]].fn += 1
    total = Counts()
    for c in by_kind.values():
        total += c
    return total, by_kind


# --------------------------------------------------------------------------------------------- identity


def true_same_as(gt: nx.MultiDiGraph) -> set[frozenset[str]]:
    """Pairs of ground-truth objects (of different clips) that are one physical object: those sharing an
    ``identity``; graphs without identities fall back to their ``same_as`` edges."""
    objs = _objects(gt)
    if objs and all(gt.nodes[n].get("identity") is not None for n in objs):
        return {frozenset((a, b)) for a, b in combinations(objs, 2)
                if gt.nodes[a]["identity"] == gt.nodes[b]["identity"] and gt.nodes[a]["clip"] != gt.nodes[b]["clip"]}
    return {frozenset((u, v)) for u, v, _ in schema.edges_of(gt, "same_as") if u != v}


def same_as_counts(pred: nx.MultiDiGraph, gt: nx.MultiDiGraph, matching: dict[str, str]) -> Counts:
    claimed = set()
    for u, v, _ in schema.edges_of(pred, "same_as"):
        if u == v:
            continue
        a, b = matching.get(u, "pred:" + u), matching.get(v, "pred:" + v)
        claimed.add(frozenset((a, b)))
    return Counts.of_sets(claimed, true_same_as(gt))


# --------------------------------------------------------------------------------------------- one video


def _empty_like(gt: nx.MultiDiGraph) -> nx.MultiDiGraph:
    """A prediction that found nothing (for a missing or unreadable file): every true thing is a miss."""
    return schema.new_graph(gt.graph.get("video_id", ""), gt.graph.get("uri", ""), gt.graph.get("duration", 0.0),
                            gt.graph.get("width", 0), gt.graph.get("height", 0), "perception")


def score_video(pred: Optional[nx.MultiDiGraph], gt: nx.MultiDiGraph, settings: ScoreSettings | None = None,
                default_near_factor: float = 1.5, status: str = "ok", error: str | None = None) -> VideoScore:
    """All counts of one video; ``pred=None`` scores an empty prediction (status ``missing``)."""
    settings = settings or ScoreSettings()
    if pred is None:
        pred, status = _empty_like(gt), status if status != "ok" else "missing"
    near = settings.near_factor if settings.near_factor is not None else near_factor_of(gt, default_near_factor)
    matching = match_objects(pred, gt, settings.iou)
    s = VideoScore(str(gt.graph.get("video_id", "")), status=status, error=error, matching=matching)
    s.objects = Counts(len(matching), len(_objects(pred)) - len(matching), len(_objects(gt)) - len(matching))
    s.object_lists_match = status == "ok" and object_lists(pred) == object_lists(gt)
    s.id_switches, s.gt_track_frames = identity_switches(pred, gt, settings.iou)
    s.relations, s.relations_all = relation_counts(pred, gt, matching, near)
    s.events, s.events_by_kind = event_counts(pred, gt, matching, settings.time_tol)
    s.same_as = same_as_counts(pred, gt, matching)
    return s


def summarize(scores: list[VideoScore]) -> dict:
    """Micro averages over the corpus: counts summed over videos, then the ratios."""
    total = VideoScore("corpus")
    lists = 0
    for s in scores:
        for name in ("objects", "relations", "relations_all", "events", "same_as"):
            acc = getattr(total, name)
            acc += getattr(s, name)
        for k, c in s.events_by_kind.items():
            acc = total.events_by_kind.setdefault(k, Counts())
            acc += c
        total.id_switches += s.id_switches
        total.gt_track_frames += s.gt_track_frames
        lists += s.object_lists_match
    out = _metrics(total)
    out.pop("object_lists_match")
    out["object_lists_exact_share"] = round(lists / len(scores), 4) if scores else 0.0
    out["videos"] = len(scores)
    out["videos_missing"] = sum(s.status != "ok" for s in scores)
    return out


# --------------------------------------------------------------------------------------------- files


MALFORMED = (KeyError, TypeError, ValueError, IndexError)  # what a graph with missing or mistyped fields raises


def _malformed(err: Exception) -> str:
    return f"malformed graph: {type(err).__name__}: {err}"


def _stem(path: Path) -> str:
    return path.name[: -len(".stsg.json")] if path.name.endswith(".stsg.json") else path.stem


def _read_all(folder: Path, side: str, errors: list[dict]) -> dict[str, tuple[Path, nx.MultiDiGraph | None]]:
    """video_id -> (path, graph or None if unreadable). Unreadable files are keyed by their file stem."""
    out: dict[str, tuple[Path, nx.MultiDiGraph | None]] = {}
    for path in sorted(folder.glob(STSG_GLOB)):
        try:
            g = schema.read(path)
            vid = str(g.graph.get("video_id") or _stem(path))
        except (OSError, UnicodeDecodeError, schema.StsgFormatError) as err:
            errors.append({"side": side, "path": str(path), "error": f"{type(err).__name__}: {err}"})
            out.setdefault(_stem(path), (path, None))
            continue
        if vid in out and out[vid][1] is not None:
            errors.append({"side": side, "path": str(path), "error": f"duplicate video_id {vid!r} (also in {out[vid][0]})"})
            continue
        out[vid] = (path, g)
    return out


def evaluate_dirs(pred_dir: str | Path, gt_dir: str | Path, settings: ScoreSettings | None = None,
                  default_near_factor: float = 1.5, progress: bool = False) -> dict:
    """Score every ground-truth graph in ``gt_dir`` against the prediction of the same ``video_id`` in
    ``pred_dir`` (``*.stsg.json``, not recursive). Returns the report: ``corpus`` (micro averages),
    ``videos`` (per video), ``errors`` (unreadable files), ``extra_predictions`` (no ground truth) and the
    ``settings``. A prediction that is missing or unreadable counts as finding nothing."""
    from tqdm import tqdm

    settings = settings or ScoreSettings()
    errors: list[dict] = []
    truths = _read_all(Path(gt_dir), "gt", errors)
    preds = _read_all(Path(pred_dir), "pred", errors)
    scores = []
    for vid in tqdm(sorted(truths), desc="stsg-eval", unit="video", disable=not progress):
        gt = truths[vid][1]
        if gt is None:
            continue  # unreadable ground truth: reported in errors, cannot be scored
        path, pred = preds.get(vid, (None, None))
        if path is not None and pred is None:
            scores.append(score_video(None, gt, settings, default_near_factor, status="unreadable",
                                      error=next(e["error"] for e in errors if e["path"] == str(path))))
            continue
        try:
            scores.append(score_video(pred, gt, settings, default_near_factor))
        except MALFORMED as err:  # a field is missing or mistyped: find out which side, report it, go on
            try:
                score_video(None, gt, settings, default_near_factor)
            except MALFORMED as gt_err:
                errors.append({"side": "gt", "path": str(truths[vid][0]), "error": _malformed(gt_err)})
                continue
            errors.append({"side": "pred", "path": str(path), "error": _malformed(err)})
            scores.append(score_video(None, gt, settings, default_near_factor, status="unreadable",
                                      error=_malformed(err)))
    return {
        "corpus": summarize(scores),
        "videos": [s.report() for s in scores],
        "errors": errors,
        "extra_predictions": sorted(str(p) for vid, (p, _) in preds.items() if vid not in truths),
        "settings": {**asdict(settings), "default_near_factor": default_near_factor},
    }


def format_table(report: dict) -> str:
    """The report as a fixed-width text table: one row per video and the corpus row."""
    head = (f"{'video':<20} {'status':<10} {'obj P':>6} {'obj R':>6} {'obj F1':>6} {'lists':>5} {'IDsw%':>6} "
            f"{'rel F1':>6} {'ev F1':>6} {'same F1':>7}")
    lines = [head, "-" * len(head)]

    def row(name: str, status: str, m: dict, lists: str) -> str:
        return (f"{name[:20]:<20} {status:<10} {m['objects']['precision']:>6.3f} {m['objects']['recall']:>6.3f} "
                f"{m['objects']['f1']:>6.3f} {lists:>5} {m['id_switches_per_100']:>6.2f} {m['relations']['f1']:>6.3f} "
                f"{m['events']['f1']:>6.3f} {m['same_as']['f1']:>7.3f}")

    for v in report["videos"]:
        lines.append(row(v["video_id"], v["status"], v, "yes" if v["object_lists_match"] else "no"))
    c = report["corpus"]
    lines.append("-" * len(head))
    lines.append(row(f"corpus ({c['videos']})", f"{c['videos_missing']} miss", c, f"{c['object_lists_exact_share']:.2f}"))
    kinds = ", ".join(f"{k} {m['f1']:.3f} ({m['tp']}/{m['tp'] + m['fn']})" for k, m in c["events_by_kind"].items())
    lines.append(f"events F1 by kind: {kinds or '-'}")
    lines.append(f"relations F1 counting missed/spurious objects: {c['relations_all']['f1']:.3f}")
    return "\n".join(lines)
