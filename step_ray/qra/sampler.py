"""Per-graph QRA sampling: random typed walks on the STSG -> programs -> executor check -> rendered records.

For each number of steps ``n`` in ``min_steps..max_steps`` the sampler aims at an equal share of
``samples_per_video`` and cycles through the families that can have ``n`` steps, so that neither the short
questions (far more numerous in any graph) nor one family crowd out the rest. One attempt:

1. walk: pick an anchor (an object with a unique description, or an event) and ``n`` hops, each chosen
   among the hops whose result is unique from the current node and not yet visited; the last hop is one of
   the family's;
2. write the walk as a :class:`~step_ray.qra.paths.Program` (the anchor as the question will name it);
3. run the program with the executor, which knows nothing of the walk: it must denote exactly one answer
   along the same nodes (uniqueness, no cycle);
4. render; drop it if the answer is named in the question (trivial) or the question was already asked;
5. draw the options.

Every rejection is counted by reason in the stats. All randomness comes from one ``random.Random`` seeded by
the video id and ``seed``, and every candidate list is sorted first, so a graph and a seed always give the
same records.
"""

from __future__ import annotations

import random
from collections import Counter
from typing import Any, Optional

import networkx as nx

from step_ray.config import QraConfig
from step_ray.qra import records as R
from step_ray.qra.families import FAMILIES, INTERMEDIATE_OPS, Family, family_of
from step_ray.qra.paths import (
    NODE_TYPES, OPS, QUERIES, Anchor, GraphIndex, Hop, Program, object_anchor, resolve_anchor, round_time, trace,
)
from step_ray.qra.render import is_trivial, make_options, render_question, render_rationale

#: Attempts allowed per wanted sample of a step count before the sampler settles for fewer.
ATTEMPTS_PER_SAMPLE = 25
#: A family that fails this many times in a row at a step count leaves the rotation for that count.
FAMILY_PATIENCE = 30
#: Chance that an event anchor states its time even when it is unique without it (variety of phrasing).
EVENT_TIME_P = 0.5

#: Edge types a question can walk; a graph with none of them has nothing to ask about.
_REASONING_EDGES = ("relation", "motion", "participates_in", "same_as", "before", "after")


def step_targets(cfg: QraConfig) -> dict[int, int]:
    """Samples wanted per step count: ``samples_per_video`` split evenly, the remainder to the fewest steps."""
    counts = list(range(cfg.min_steps, cfg.max_steps + 1))
    base, extra = divmod(cfg.samples_per_video, len(counts))
    return {n: base + (1 if i < extra else 0) for i, n in enumerate(counts)}


def _degenerate(ix: GraphIndex) -> Optional[str]:
    if not ix.objects:
        return "no_objects"
    if len(ix.objects) == 1:
        return "single_object"
    if not any(ix.out[(u, t)] for u in ix.g.nodes for t in _REASONING_EDGES):
        return "no_edges"
    return None


def sample_qra(graph: nx.MultiDiGraph, cfg: QraConfig, seed: int) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """QRA records of one graph and stats: ``{"video_id", "samples", "targets", "by_steps", "by_family",
    "rejected" (reason -> count), "attempts", "reason"}`` (``reason`` says why there are no samples, else None;
    step counts are string keys so the stats are JSON as they are)."""
    ix = GraphIndex(graph)
    targets = step_targets(cfg)
    stats: dict[str, Any] = {"video_id": ix.video_id, "samples": 0, "targets": {str(n): t for n, t in targets.items()},
                             "by_steps": {}, "by_family": {}, "rejected": {}, "attempts": 0, "reason": None}
    stats["reason"] = _degenerate(ix)
    if stats["reason"]:
        return [], stats

    rng = random.Random(f"qra\x1f{ix.video_id}\x1f{seed}")
    rejected: Counter = Counter()
    anchors: dict[str, Anchor] = {}
    for o in ix.objects:
        a = object_anchor(ix, o)
        if a is None:  # looks like another object of its clip: never named as an anchor
            rejected["ambiguous_anchor"] += 1
        else:
            anchors[o] = a
    split = R.split_of(ix.video_id, cfg.val_fraction)
    questions: set[str] = set()
    out: list[dict[str, Any]] = []

    for n, target in targets.items():
        active = sorted(f.name for f in FAMILIES.values() if f.min_steps <= n)
        rng.shuffle(active)
        fails = Counter()
        made = attempts = turn = 0
        while made < target and attempts < ATTEMPTS_PER_SAMPLE * target and active:
            name = active[turn % len(active)]
            attempts += 1
            rec, why = _attempt(ix, FAMILIES[name], n, rng, anchors, questions, cfg, seed, split)
            if rec is None:
                rejected[why] += 1
                fails[name] += 1
                if fails[name] >= FAMILY_PATIENCE:
                    active.remove(name)  # the next family moves into this turn's slot
                    continue
            else:
                fails[name] = 0
                questions.add(rec["question"])
                out.append(rec)
                made += 1
            turn += 1
        stats["attempts"] += attempts

    stats["samples"] = len(out)
    stats["by_steps"] = {str(k): v for k, v in sorted(Counter(r["steps"] for r in out).items())}
    stats["by_family"] = dict(sorted(Counter(r["family"] for r in out).items()))
    stats["rejected"] = dict(sorted(rejected.items()))
    if not out:
        stats["reason"] = "no_valid_path"
    return out, stats


# --------------------------------------------------------------------------------------------- one attempt


def _allowed(fam: Family, n: int, i: int, same_pos: Optional[int]) -> tuple[str, ...]:
    if i == n - 1:
        return fam.final_ops
    if i == same_pos:
        return ("same_as",)
    return INTERMEDIATE_OPS


def _walk(ix: GraphIndex, fam: Family, n: int, rng: random.Random, anchors: dict[str, Anchor]
          ) -> tuple[Optional[tuple[str, Optional[set[str]], list[Hop], list[str], str]], str]:
    """A random walk of ``n`` hops shaped by the family: (anchor node, the anchor event's participants to
    name if not all, hops, visited nodes, final type), or None and why."""
    same_pos = rng.randrange(n - 1) if fam.needs_same_as else None
    first = {OPS[o].src for o in _allowed(fam, n, 0, same_pos)}
    kinds = [t for t in ("object", "event") if t in first and (anchors if t == "object" else ix.events)]
    if not kinds:
        return None, "no_anchor"
    cur_type = rng.choice(kinds)
    cur = rng.choice(sorted(anchors)) if cur_type == "object" else rng.choice(ix.events)
    anchor_node, named, visited, hops = cur, None, [cur], []
    for i in range(n):
        need = {OPS[o].src for o in _allowed(fam, n, i + 1, same_pos)} if i < n - 1 else None
        cands: dict[str, list[tuple[dict, str, Optional[set[str]]]]] = {}
        for name in _allowed(fam, n, i, same_pos):
            op = OPS[name]
            if op.src != cur_type or (need is not None and op.dst not in need):
                continue
            # From a named object, its event is better said as an event anchor ("the entrance of the blue
            # square", 0 hops); an event_of first hop would count a step for the same question.
            if name == "event_of" and i == 0:
                continue
            for params in op.moves(ix, cur):
                if name == "participant" and i == 0:
                    # The question names the event's other participants; the answer is the one it leaves out.
                    for y in ix.participants(cur):
                        others = set(ix.participants(cur)) - {y}
                        if op.apply(ix, cur, params, others) == [y] and y not in visited:
                            cands.setdefault(name, []).append((params, y, others))
                    continue
                excluded = {visited[i - 1]} if name == "participant" and hops and hops[-1].op == "event_of" else set()
                res = op.apply(ix, cur, params, excluded)
                if len(res) == 1 and not (op.dst in NODE_TYPES and res[0] in visited):
                    cands.setdefault(name, []).append((params, res[0], None))
        if not cands:  # (the executor's own "dead_end" means a program's hop finds nothing)
            return None, "no_walk"
        name = rng.choice(sorted(cands))
        params, dst, others = rng.choice(cands[name])
        if others is not None:
            named = others
        hops.append(Hop(name, params))
        cur, cur_type = dst, OPS[name].dst
        if cur_type in NODE_TYPES:
            visited.append(dst)
    return (anchor_node, named, hops, visited, cur_type), ""


def _event_anchor(ix: GraphIndex, e: str, named: Optional[set[str]], rng: random.Random) -> Optional[Anchor]:
    """Kind + the participants to name + (if needed for uniqueness, or by chance) the time."""
    people = ix.participants(e) if named is None else sorted(named)
    base = {"kind": ix.kind(e), "participants": sorted(ix.desc[o] for o in people)}
    variants = [None, round_time(ix.time(e))]
    if rng.random() < EVENT_TIME_P:
        variants.reverse()
    for t in variants:
        a = Anchor("event", {**base, "time": t})
        if resolve_anchor(ix, a)[0] == [e]:
            return a
    return None


def _attempt(ix: GraphIndex, fam: Family, n: int, rng: random.Random, anchors: dict[str, Anchor],
             questions: set[str], cfg: QraConfig, seed: int, split: str) -> tuple[Optional[dict[str, Any]], str]:
    walk, why = _walk(ix, fam, n, rng, anchors)
    if walk is None:
        return None, why
    node, named, hops, visited, final_type = walk
    queries = [q for q in fam.queries if q in QUERIES[final_type]]
    if not queries:
        return None, "no_query"
    anchor = anchors[node] if ix.type_of(node) == "object" else _event_anchor(ix, node, named, rng)
    if anchor is None:
        return None, "ambiguous_anchor"
    program = Program(anchor, tuple(hops), rng.choice(queries))
    tr = trace(program, ix)  # the executor re-derives everything from the program text's meaning
    if tr.error is not None:
        return None, tr.error
    if tr.nodes != visited:
        return None, "executor_mismatch"
    question = render_question(program)
    if is_trivial(question, tr.answer):
        return None, "trivial"
    # Event answers carry no time: "the two circles collided" after "the collision of the two circles" reads as
    # the question's own event, even when it is a second collision. Such answers are left out.
    if program.query == "event" and tr.answer in {ix.event_text(x) for x in tr.nodes[:-1] if ix.type_of(x) == "event"}:
        return None, "trivial"
    if question in questions:
        return None, "duplicate"
    drawn = make_options(ix, program, tr.answer, cfg.num_options, rng)
    if drawn is None:
        return None, "too_few_options"
    options, answer_index = drawn
    program_json = program.to_json()
    clips = sorted({c for x in tr.nodes if (c := ix.clip_of(x)) is not None and c in ix.clips})
    start = min((ix.clips[c][0] for c in clips), default=0.0)
    end = max((ix.clips[c][1] for c in clips), default=ix.duration)
    rec = {
        "id": R.record_id(ix.video_id, program_json, seed),
        "video_id": ix.video_id,
        "video_uri": ix.uri,
        "start": float(start),
        "end": float(end),
        "question": question,
        "options": options,
        "answer": tr.answer,
        "answer_index": answer_index,
        "rationale": render_rationale(ix, tr),
        "steps": program.steps,
        "family": family_of(program),
        "program": program_json,
        "path_nodes": tr.nodes,
        "seed": int(seed),
        "split": split,
    }
    return rec, ""
