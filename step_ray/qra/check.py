"""Correctness of QRA samples against other graphs: re-run each program with the executor on, say, the
ground-truth graph of its video and count the samples whose answer holds there.

Programs name objects and events the way the questions do (colour + shape + scene, kind + participants +
time), never by node id, so a sample generated from a *predicted* graph can be executed on the *ground-truth*
graph: if it denotes the same answer there, the question, its answer and the options built on it are right
about the video. On QRA generated from the ground truth itself the share must be 100% (a test checks it).
"""

from __future__ import annotations

from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

from step_ray.qra.paths import TIME_TOL, ExecutionError, GraphIndex, Program, trace
from step_ray.qra.records import read_parquet

#: Failures listed in the summary as examples.
EXAMPLES = 10


def _share(ok: int, n: int) -> float | None:
    return round(ok / n, 4) if n else None


def graph_paths(inputs: list[str]) -> dict[str, Path]:
    """STSG files (files, folders, globs) keyed by video id (the file name without ``.stsg.json``)."""
    from step_ray.stsg.stage import STSG_SUFFIX
    from step_ray.utils.inputs import expand

    return {p.name[: -len(STSG_SUFFIX)] if p.name.endswith(STSG_SUFFIX) else p.stem: p
            for p in expand(inputs, (STSG_SUFFIX,))}


def check_records(records: list[dict[str, Any]], graphs: dict[str, Path], time_tol: float = TIME_TOL
                  ) -> dict[str, Any]:
    """Execute every record's program on the graph of its video in ``graphs`` (stated times matching within
    ``time_tol`` seconds); the summary."""
    from step_ray.qra.stage import read_graph
    from step_ray.stsg.schema import StsgFormatError

    index: dict[str, GraphIndex | str] = {}
    reasons: Counter = Counter()
    tally: dict[str, dict[str, list[int]]] = {"by_family": defaultdict(lambda: [0, 0]),
                                              "by_steps": defaultdict(lambda: [0, 0])}
    holds, examples = 0, []
    for rec in records:
        vid = rec["video_id"]
        if vid not in index:
            path = graphs.get(vid)
            try:
                index[vid] = GraphIndex(read_graph(path)) if path is not None else "no_graph"
            except (StsgFormatError, OSError) as err:
                index[vid] = f"unreadable_graph: {err}"
        ix = index[vid]
        if isinstance(ix, str):
            reason = ix.split(":")[0]
        else:
            try:
                tr = trace(Program.from_json(rec["program"]), ix, time_tol)
                reason = tr.error or ("ok" if tr.answer == rec["answer"] else "wrong_answer")
            except ExecutionError as err:
                reason = err.reason
        ok = reason == "ok"
        holds += ok
        for key, val in (("by_family", rec["family"]), ("by_steps", str(rec["steps"]))):
            tally[key][val][0] += ok
            tally[key][val][1] += 1
        if not ok:
            reasons[reason] += 1
            if len(examples) < EXAMPLES:
                examples.append({"id": rec["id"], "video_id": vid, "question": rec["question"],
                                 "answer": rec["answer"], "reason": reason})
    n = len(records)
    return {
        "samples": n,
        "time_tol": round(time_tol, 3),
        "holds": holds,
        "share": _share(holds, n),
        "by_family": {k: {"n": v[1], "holds": v[0], "share": _share(v[0], v[1])} for k, v in sorted(tally["by_family"].items())},
        "by_steps": {k: {"n": v[1], "holds": v[0], "share": _share(v[0], v[1])}
                     for k, v in sorted(tally["by_steps"].items(), key=lambda kv: int(kv[0]))},
        "failures": dict(sorted(reasons.items())),
        "examples": examples,
    }


def check_against(qra_path: str | Path, graph_inputs: list[str], time_tol: float = TIME_TOL) -> dict[str, Any]:
    """:func:`check_records` for a QRA output (a folder of parts, or a Parquet file) and graph files /
    folders."""
    summary = check_records(read_parquet(qra_path), graph_paths(graph_inputs), time_tol)
    summary["qra"] = str(qra_path)
    summary["graphs"] = [str(g) for g in graph_inputs]
    return summary
