"""When a question happens: the moments its frames show, and the hops whose time need not be said.

* :func:`question_moments`: the times a path visits, in order (its relation, motion and count hops' times, its
  events' times, the anchor event's time). The model's frames are taken there (``times`` in the record, see
  :func:`step_ray.video.frames.question_times`), so a question about "the object left of the red circle"
  shows the moment the graph says so, not a blind spread over the clip.
* :func:`drop_needless_times` (``qra.times: when_needed``): a relation, motion or count hop whose answer is the
  same at every keyframe of its clip is true *throughout* the clip, so its question and rationale sentence need
  not state a time ("Which object is left of the red circle?" rather than "At 1.4s, which object ..."): six
  tokens less per hop, and no invitation to read the time off the question. The hop is marked ``timeless``;
  it keeps its time (the executor and ``qra-check`` run it at that time, where it gives the same answer).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Optional

from step_ray.qra.paths import OPS, TIME_TOL, Ctx, GraphIndex, Hop, Program, Trace

#: Hops that are facts at a time (their ``time`` parameter) and can hold throughout a clip.
TIMED_OPS = ("relation", "motion", "count_related")


def question_moments(ix: GraphIndex, tr: Trace) -> list[float]:
    """Sorted distinct times (s) the trace visits; empty when it visits none (a path of timeless facts still
    visits the keyframe its hops were sampled at)."""
    times: set[float] = set()

    def visit(t: Optional[float]) -> None:
        if t is not None:
            times.add(round(float(t), 6))

    def walk(trace: Trace) -> None:
        if trace.anchor is not None and ix.type_of(trace.anchor) == "event":
            visit(ix.time(trace.anchor))
        for s in trace.steps:
            if "time" in s.params and s.params["time"] is not None:
                visit(s.params["time"])
            for node in (s.src, s.dst):
                if node in ix.g and ix.type_of(node) == "event":
                    visit(ix.time(node))
        if trace.other is not None:
            walk(trace.other)

    walk(tr)
    return sorted(times)


def _same_throughout(ix: GraphIndex, hop: Hop, src: str) -> bool:
    """Whether ``hop`` from ``src`` gives the same result at every keyframe of ``src``'s clip."""
    clip = ix.clip_of(src)
    if clip is None or clip not in ix.clips:
        return False
    start, end = ix.clips[clip]
    keyframes = ix.times_in(clip, start, end)
    if len(keyframes) < 1:
        return False
    op, ctx = OPS[hop.op], Ctx(frozenset(), None, TIME_TOL)
    results = {tuple(op.apply(ix, src, {**hop.params, "time": t}, ctx)) for t in keyframes}
    return len(results) == 1 and len(next(iter(results))) == 1


def drop_needless_times(program: Program, ix: GraphIndex, tr: Trace) -> Program:
    """``program`` with its timed hops that hold throughout their clip marked ``timeless`` (see above)."""
    hops = list(program.hops)
    changed = False
    for i, (hop, step) in enumerate(zip(program.hops, tr.steps)):
        if hop.op in TIMED_OPS and not hop.params.get("timeless") and _same_throughout(ix, hop, step.src):
            hops[i] = Hop(hop.op, {**hop.params, "timeless": True})
            changed = True
    if program.other is not None and tr.other is not None:
        other = drop_needless_times(program.other, ix, tr.other)
        if other is not program.other:
            return replace(program, hops=tuple(hops), other=other)
    return replace(program, hops=tuple(hops)) if changed else program
