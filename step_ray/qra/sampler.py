"""Per-graph QRA sampling: random typed walks on the STSG -> programs -> executor check -> rendered samples.

For each number of steps ``n`` in ``min_steps..max_steps`` the sampler aims at that step count's share of
``samples_per_video`` (``qra.step_weights``) and draws the family of each attempt by ``qra.family_weights``
among the families that can have ``n`` steps, so that neither the short questions (far more numerous in any
graph) nor one family crowd out the rest. One attempt:

1. walk: pick an anchor (an object with a unique description, or an event) and ``n`` hops, each chosen
   among the hops whose result is unique from the current node and not yet visited; the last hop is one of
   the family's (verify: then a value to check, the true one half of the time; comparison: two walks);
2. write the walk as a :class:`~step_ray.qra.paths.Program` (the anchor as the question will name it);
3. run the program with the executor, which knows nothing of the walk: it must denote exactly one answer
   along the same nodes (uniqueness, no cycle);
4. render; drop it if the answer is named in the question (trivial), the question was already asked, or a
   near-duplicate of it (same words but for the times and numbers, same answer) was;
5. keep the option pools; the options themselves are drawn corpus-wide (:mod:`step_ray.qra.corpus`).

Every rejection is counted by reason in the stats. All randomness comes from one ``random.Random`` seeded by
the video id and ``seed``, and every candidate list is sorted first, so a graph and a seed always give the
same samples.
"""

from __future__ import annotations

import random
import re
from collections import Counter
from typing import Any, Optional

import networkx as nx

from step_ray.config import QraConfig
from step_ray.qra import records as R
from step_ray.qra.families import FAMILIES, INTERMEDIATE_OPS, Family, family_of
from step_ray.qra.moments import drop_needless_times, question_moments
from step_ray.qra.paths import (
    COMPARE, NODE_TYPES, OPS, QUERIES, Anchor, Ctx, GraphIndex, Hop, Program, object_anchor, resolve_anchor,
    TIME_TOL, round_time, trace,
)
from step_ray.qra.render import (
    answer_type, is_trivial, open_answer, option_pools, render_question, render_rationale, vocabulary,
)

#: Attempts allowed per wanted sample of a step count before the sampler settles for fewer.
ATTEMPTS_PER_SAMPLE = 25
#: A family that fails this many times in a row at a step count leaves the rotation for that count.
FAMILY_PATIENCE = 30
#: Chance that an event anchor states its time even when it is unique without it (variety of phrasing).
EVENT_TIME_P = 0.5

#: Edge types a question can walk; a graph with none of them has nothing to ask about.
_REASONING_EDGES = ("relation", "motion", "participates_in", "same_as", "before", "after", "attr_change")
_NUMBER = re.compile(r"\d+(?:\.\d+)?s?")

Walk = tuple[str, Optional[set[str]], list[Hop], list[str], str]


def step_targets(cfg: QraConfig) -> dict[int, int]:
    """Samples wanted per step count: ``samples_per_video`` split by ``step_weights`` (even if empty), by
    largest remainder; ties go to the fewest steps."""
    counts = list(range(cfg.min_steps, cfg.max_steps + 1))
    weights = list(cfg.step_weights) or [1.0] * len(counts)
    total = sum(weights)
    exact = [cfg.samples_per_video * w / total for w in weights]
    out = [int(x) for x in exact]
    rest = cfg.samples_per_video - sum(out)
    for i in sorted(range(len(counts)), key=lambda i: (-(exact[i] - out[i]), i))[:rest]:
        out[i] += 1
    return dict(zip(counts, out))


def near_duplicate_key(question: str, answer: str) -> str:
    """Questions equal but for their times and numbers, with the same answer, are near-duplicates."""
    return _NUMBER.sub("#", question.lower()) + "\x1f" + answer


def _degenerate(ix: GraphIndex) -> Optional[str]:
    if not ix.objects:
        return "no_objects"
    if len(ix.objects) == 1:
        return "single_object"
    if not any(ix.edges_by_type[t] for t in _REASONING_EDGES):
        return "no_edges"
    return None


def family_weight(cfg: QraConfig, name: str) -> float:
    return float(getattr(cfg.family_weights, name, 1.0))


def _eligible(cfg: QraConfig, n: int) -> list[str]:
    out = []
    for f in FAMILIES.values():
        if f.min_steps > n or family_weight(cfg, f.name) <= 0:
            continue
        out.append(f.name)
    return sorted(out)


class Plan:
    """A walk's remaining hops, interned (one object per distinct plan and final types, graph-independent), so
    the memo keys of the walks hash by identity and the per-plan facts are computed once."""

    __slots__ = ("ops", "finals", "head", "tail", "empty", "uses_actor", "head_participant", "head_to_node",
                 "next_own_next", "steps")

    def __init__(self, ops: tuple[tuple[str, ...], ...], finals: tuple[str, ...]):
        self.ops, self.finals, self.empty = ops, finals, not ops
        self.head = tuple((name, OPS[name]) for name in ops[0]) if ops else ()
        self.tail: Optional[Plan] = plan_of(ops[1:], finals) if ops else None
        self.uses_actor = any("next_own" in o for o in ops)
        self.head_participant = bool(ops) and "participant" in ops[0]
        self.head_to_node = bool(ops) and any(OPS[n].dst in NODE_TYPES for n in ops[0])
        self.next_own_next = len(ops) > 1 and "next_own" in ops[1]
        #: The head's hops for the feasibility check: (name, source type, result type, result is an object,
        #: whether the result ends the walk well when it is the last hop, else None).
        last = len(ops) == 1
        self.steps = tuple((name, op.src, op.dst, op.dst == "object", (op.dst in finals) if last else None)
                           for name, op in self.head
                           if last or op.dst in NODE_TYPES)  # a value mid-walk leads nowhere


_PLANS: dict[tuple, Plan] = {}


def plan_of(ops: tuple[tuple[str, ...], ...], finals: tuple[str, ...]) -> Plan:
    key = (ops, finals)
    p = _PLANS.get(key)
    if p is None:
        p = _PLANS[key] = Plan(ops, finals)
    return p


class _Sampler:
    """The state of sampling one graph: its index, the RNG, the named anchors and what was asked already."""

    def __init__(self, ix: GraphIndex, cfg: QraConfig, seed: int):
        self.ix, self.cfg, self.seed = ix, cfg, seed
        # The hop types paths may take (qra.ops; empty: all), in the order the families list them.
        allowed = set(cfg.ops) if cfg.ops else None
        self.intermediate = tuple(o for o in INTERMEDIATE_OPS if allowed is None or o in allowed)
        self.finals = {f.name: tuple(o for o in f.final_ops if allowed is None or o in allowed)
                       for f in FAMILIES.values()}
        self.same_as_allowed = allowed is None or "same_as" in allowed
        self.rng = random.Random(f"qra\x1f{ix.video_id}\x1f{seed}")
        self.rejected: Counter = Counter()
        self.anchors: dict[str, Anchor] = {}
        for o in ix.objects:
            a = object_anchor(ix, o)
            if a is None:  # looks like another object of its clip: never named as an anchor
                self.rejected["ambiguous_anchor"] += 1
            else:
                self.anchors[o] = a
        self.anchor_nodes = sorted(self.anchors)
        self.questions: set[str] = set()
        self.near: set[str] = set()
        self.cands_memo: dict[tuple, list] = {}
        self.feasible_memo: dict[tuple, bool] = {}
        self.dsts_memo: dict[tuple, tuple[str, ...]] = {}
        self.moves_memo: dict[tuple, list] = {}
        self.starts_memo: dict[tuple, list] = {}

    # ------------------------------------------------------------------------------------------- walking

    def _cands(self, name: str, cur: str, actor: Optional[str], first: bool, prev_src: Optional[str]
               ) -> list[tuple[dict, str, Optional[set[str]]]]:
        """The moves of hop ``name`` from ``cur`` whose result is unique: (params, result, the participants the
        question names when it is a first ``participant`` hop). Memoised per graph."""
        key = (name, cur, actor if name == "next_own" else None, first, prev_src)
        found = self.cands_memo.get(key)
        if found is not None:
            return found
        ix, op, found = self.ix, OPS[name], []
        ctx: Optional[Ctx] = None
        by_pred: Optional[dict[str, list[tuple[str, float, float]]]] = None
        for params in op.moves(ix, cur, Ctx(frozenset(), actor)):
            if name == "participant" and first:
                # The question names the event's other participants; the answer is the one it leaves out.
                people = ix.participants(cur)
                for y in people:
                    others = set(people) - {y}
                    if op.apply(ix, cur, params, Ctx(frozenset(others), actor)) == [y]:
                        found.append((params, y, others))
                continue
            if ctx is None:
                excluded = frozenset({prev_src}) if name == "participant" and prev_src is not None else frozenset()
                ctx = Ctx(excluded, actor)
            if name == "relation":  # RelationOp.apply at the default tolerance, the edges grouped once
                if by_pred is None:
                    by_pred = {}
                    for y, q, s0, e0 in ix.rel_in.get(cur, ()):
                        if y != cur:
                            by_pred.setdefault(q, []).append((y, s0 - TIME_TOL, e0 + TIME_TOL))
                t = float(params["time"])
                res = sorted({y for y, s0, e0 in by_pred.get(params["predicate"], ()) if s0 <= t <= e0})
            else:
                res = op.apply(ix, cur, params, ctx)
            if len(res) == 1:
                found.append((params, res[0], None))
        self.cands_memo[key] = found
        return found

    def _feasible(self, p: Optional["Plan"], first: bool, node: str, ntype: str, actor: Optional[str],
                  prev_src: Optional[str] = None, back: Optional[str] = None) -> bool:
        """Can a walk that is at ``node`` (of type ``ntype``) with the hops of plan ``p`` still to go end at one
        of its final types? An upper bound: it rules out stepping straight back to ``back`` but not longer
        cycles (the walk itself avoids every visited node). Memoised per graph on the remaining plan, so walks
        of different families and lengths share their common tails; the actor and the object an ``event_of``
        hop came from are part of the key only where a later hop can use them."""
        if p is None:
            return False
        if p.empty:
            return ntype in p.finals
        memo = self.feasible_memo
        key = (p, first, node, actor if p.uses_actor else None, prev_src if p.head_participant else None,
               back if p.head_to_node else None)
        ok = memo.get(key)
        if ok is not None:
            return ok
        ok = False
        tail = p.tail
        assert tail is not None
        # The children's memo keys are built here and looked up inline (most are hits): a recursive call per
        # child cost more than the check itself. Only the distinct destinations of a hop matter here.
        for name, op_src, op_dst, to_object, ends_ok in p.steps:
            if op_src != ntype or (name == "event_of" and first and not p.next_own_next):
                continue
            if ends_ok is not None:  # the tail is empty: any destination but the way back ends the walk
                if ends_ok and any(d != node and d != back for d in
                                   self._dsts(name, node, actor, first, prev_src if name == "participant" else None)):
                    ok = True
                    break
                continue
            c_prev = node if (name == "event_of" and tail.head_participant) else None
            c_back = node if tail.head_to_node else None
            for dst in self._dsts(name, node, actor, first, prev_src if name == "participant" else None):
                if dst == node or dst == back:
                    continue
                c_actor = (dst if to_object else actor) if tail.uses_actor else None
                child = memo.get((tail, False, dst, c_actor, c_prev, c_back))
                if child is None:
                    child = self._feasible(tail, False, dst, op_dst, dst if to_object else actor,
                                           node if name == "event_of" else None, node)
                if child:
                    ok = True
                    break
            if ok:
                break
        memo[key] = ok
        return ok

    def _dsts(self, name: str, cur: str, actor: Optional[str], first: bool, prev_src: Optional[str]
              ) -> tuple[str, ...]:
        """The distinct results of :meth:`_cands` (all that feasibility needs), memoised per graph."""
        key = (name, cur, actor if name == "next_own" else None, first, prev_src)
        found = self.dsts_memo.get(key)
        if found is None:
            found = self.dsts_memo[key] = tuple(dict.fromkeys(d for _, d, _ in self._cands(name, cur, actor, first,
                                                                                              prev_src)))
        return found

    def _moves(self, p: "Plan", first: bool, cur: str, cur_type: str, actor: Optional[str], prev_src: Optional[str]
               ) -> list[tuple[str, str, list[tuple[dict, str, Optional[set[str]]]]]]:
        """The moves of the next hop (the head of ``p``) from ``cur`` whose result is unique, per op sorted by op
        name: (op, result type, moves); memoised per graph. Feasibility is checked by the walk, lazily."""
        key = (p, first, cur, actor if p.uses_actor else None, prev_src)
        found = self.moves_memo.get(key)
        if found is None:
            found = []
            for name, op in sorted(p.head):
                if op.src != cur_type or (name == "event_of" and first and not p.next_own_next):
                    continue
                lst = self._cands(name, cur, actor, first, prev_src if name == "participant" else None)
                if lst:
                    found.append((name, op.dst, lst))
            self.moves_memo[key] = found
        return found

    def walk(self, plan: tuple[tuple[str, ...], ...], final_types: tuple[str, ...]) -> tuple[Optional[Walk], str]:
        """A random walk of ``len(plan)`` hops, hop ``i`` one of the ops ``plan[i]``, ending at one of
        ``final_types``: (anchor node, the anchor event's participants to name if not all, hops, visited nodes,
        final type), or None and why (``infeasible``: no anchor of this graph starts such a walk). Every
        choice is among moves from which the walk can still be completed (as far as :meth:`_feasible` sees)."""
        ix, rng, n, memo = self.ix, self.rng, len(plan), self.feasible_memo
        root = plan_of(plan, final_types)
        # The anchors not yet known to fail this plan. An anchor is drawn uniformly among them and checked;
        # one that cannot start the walk leaves the list for good. That is a uniform draw among the feasible
        # anchors, like checking them all first, but only the drawn ones are checked: most plans are tried a
        # few times per graph, and checking every anchor was a third of the sampling time.
        starts = self.starts_memo.get(root)
        if starts is None:
            first = set(final_types) if n == 0 else {OPS[o].src for o in plan[0]}
            starts = self.starts_memo[root] = \
                ([("object", o) for o in self.anchor_nodes] if "object" in first else []) + \
                ([("event", e) for e in ix.events] if "event" in first else [])
        while starts:
            i = rng.randrange(len(starts))
            cur_type, cur = starts[i]
            if self._feasible(root, True, cur, cur_type, cur if cur_type == "object" else None):
                break
            del starts[i]
        else:
            return None, "infeasible"
        anchor_node, named, visited, hops = cur, None, [cur], []
        actor = cur if cur_type == "object" else None
        prev_src: Optional[str] = None
        p = root
        for i in range(n):
            tail = p.tail

            def completes(m: tuple, name: str, dst_type: str) -> bool:
                if tail.empty:
                    return dst_type in tail.finals
                dst, c_actor = m[1], (m[1] if dst_type == "object" else actor)
                ok = memo.get((tail, False, dst, c_actor if tail.uses_actor else None,
                               cur if (name == "event_of" and tail.head_participant) else None,
                               cur if tail.head_to_node else None))  # _feasible's own key, looked up inline
                if ok is None:
                    ok = self._feasible(tail, False, dst, dst_type, c_actor, cur if name == "event_of" else None, cur)
                return ok

            # The ops with a move that is not a visited node and from which the walk can still be completed
            # (the first such move found is enough to know); then one of the op's moves, drawn uniformly
            # among those (an infeasible draw is dropped and the draw repeated): only what is drawn is checked.
            ops = []
            for name, dst_type, lst in self._moves(p, i == 0, cur, cur_type, actor, prev_src):
                if i == 1 and hops[0].op == "event_of" and name != "next_own":
                    continue  # (a first event_of hop is there only for the next_own after it)
                keep = [m for m in lst if m[1] not in visited] if dst_type in NODE_TYPES else lst
                if any(completes(m, name, dst_type) for m in keep):
                    ops.append((name, dst_type, keep))
            p = tail
            if not ops:  # every continuation revisits a node (the executor's own "dead_end": finds nothing)
                return None, "no_walk"
            name, dst_type, keep = rng.choice(ops)
            keep = list(keep)
            while True:
                j = rng.randrange(len(keep))
                if completes(keep[j], name, dst_type):
                    break
                del keep[j]
            params, dst, others = keep[j]
            if others is not None:
                named = others
            hops.append(Hop(name, params))
            prev_src = cur if name == "event_of" else None
            cur, cur_type = dst, OPS[name].dst
            if cur_type in NODE_TYPES:
                visited.append(dst)
            if cur_type == "object":
                actor = dst
        if hops and hops[0].op == "event_of" and (len(hops) < 2 or hops[1].op != "next_own"):
            return None, "redundant_hop"  # "the entrance of the X" is an anchor, not a step
        return (anchor_node, named, hops, visited, cur_type), ""

    def anchor_of(self, node: str, named: Optional[set[str]]) -> Optional[Anchor]:
        if self.ix.type_of(node) == "object":
            return self.anchors.get(node)
        return self._event_anchor(node, named)

    def _event_anchor(self, e: str, named: Optional[set[str]]) -> Optional[Anchor]:
        """Kind + the participants to name + (if needed for uniqueness, or by chance) the time."""
        ix = self.ix
        people = ix.participants(e) if named is None else sorted(named)
        base = {"kind": ix.kind(e), "participants": sorted(ix.desc[o] for o in people)}
        variants = [None, round_time(ix.time(e))]
        if self.rng.random() < EVENT_TIME_P:
            variants.reverse()
        for t in variants:
            a = Anchor("event", {**base, "time": t})
            if resolve_anchor(ix, a)[0] == [e]:
                return a
        return None

    # ------------------------------------------------------------------------------------------- programs

    def program(self, fam: Family, n: int) -> tuple[Optional[tuple[Program, list[str]]], str]:
        """A program of family ``fam`` with ``n`` steps and the nodes its walk visited, or None and why."""
        if fam.form == "compare":
            return self._compare(n)
        final_ops = self.finals[fam.name]
        if not final_ops or not self.intermediate and n > 1 or fam.needs_same_as and not self.same_as_allowed:
            return None, "infeasible"  # qra.ops leaves this family no path of n hops
        same_pos = self.rng.randrange(n - 1) if fam.needs_same_as else None
        plan = tuple(final_ops if i == n - 1 else ("same_as",) if i == same_pos else self.intermediate
                     for i in range(n))
        finals = tuple(sorted({OPS[o].dst for o in final_ops}))
        walk, why = self.walk(plan, finals)
        if walk is None:
            return None, why
        node, named, hops, visited, ftype = walk
        queries = [q for q in fam.queries if q in QUERIES[ftype]]
        if not queries:
            return None, "no_query"
        anchor = self.anchor_of(node, named)
        if anchor is None:
            return None, "ambiguous_anchor"
        query = self.rng.choice(queries)
        if fam.form == "verify":
            return self._verify(Program(anchor, tuple(hops), query), visited)
        return (Program(anchor, tuple(hops), query), visited), ""

    def _verify(self, base: Program, visited: list[str]) -> tuple[Optional[tuple[Program, list[str]]], str]:
        """Check the true value half of the time, else a compositional distractor (or a random value)."""
        tr = trace(base, self.ix)
        if tr.error is not None or tr.value is None:
            return None, tr.error or "no_answer"
        if self.rng.random() < 0.5:
            check = tr.value
        else:
            pools = option_pools(self.ix, base, tr)
            wrong = [v for v in pools["compositional"] if v != tr.value]
            if not wrong:
                wrong = [v for pool in vocabulary(self.ix, answer_type(base)) for v in pool if v != tr.value]
            if not wrong:
                return None, "too_few_options"
            check = self.rng.choice(wrong)
        return (Program(base.anchor, base.hops, base.query, check=check), visited), ""

    def _compare(self, n: int) -> tuple[Optional[tuple[Program, list[str]]], str]:
        """Two walks of ``n - 1`` hops in all, ending at two events (earlier) or two objects reached by at least
        one hop each (same colour / shape: a named object would give its colour away)."""
        ops = [q for q in sorted(COMPARE) if q == "earlier" or n >= 3]
        query = self.rng.choice(ops)
        etype = COMPARE[query]
        lo = 0 if query == "earlier" else 1
        if n - 1 - lo < lo:
            return None, "no_walk"
        n1 = self.rng.randint(lo, n - 1 - lo)
        parts = []
        for k in (n1, n - 1 - n1):
            if k and not self.intermediate:
                return None, "infeasible"
            walk, why = self.walk((self.intermediate,) * k, (etype,))
            if walk is None:
                return None, why
            node, named, hops, visited, _ = walk
            anchor = self.anchor_of(node, named)
            if anchor is None:
                return None, "ambiguous_anchor"
            parts.append((Program(anchor, tuple(hops), query), visited))
        (a, va), (b, vb) = parts
        return (Program(a.anchor, a.hops, query, other=b), va + vb), ""

    # ------------------------------------------------------------------------------------------- one attempt

    def attempt(self, fam: Family, n: int) -> tuple[Optional[dict[str, Any]], str]:
        ix = self.ix
        made, why = self.program(fam, n)
        if made is None:
            return None, why
        program, visited = made
        tr = trace(program, ix)  # the executor re-derives everything from the program text's meaning
        if tr.error is not None:
            return None, tr.error
        if tr.nodes != visited:
            return None, "executor_mismatch"
        if family_of(program) != fam.name or program.steps != n:
            return None, "wrong_shape"
        if self.cfg.times == "when_needed":
            timeless = drop_needless_times(program, ix, tr)
            if timeless is not program:  # the same denotation (the hops keep their times), fewer words
                program, tr = timeless, trace(timeless, ix)
        question = render_question(program)
        atype = answer_type(program)
        assert tr.answer is not None
        if atype not in ("yesno", "count") and is_trivial(question, tr.answer):
            return None, "trivial"
        # Event answers carry no time: "the two circles collided" after "the collision of the two circles" reads
        # as the question's own event, even when it is a second collision. Such answers are left out.
        if program.query == "event" and tr.answer in {ix.event_text(x) for x in tr.nodes[:-1] if ix.type_of(x) == "event"}:
            return None, "trivial"
        if question in self.questions:
            return None, "duplicate"
        near = near_duplicate_key(question, tr.answer)
        if near in self.near:
            return None, "near_duplicate"
        program_json = program.to_json()
        clips = sorted({c for x in tr.nodes if (c := ix.clip_of(x)) is not None and c in ix.clips})
        start = min((ix.clips[c][0] for c in clips), default=0.0)
        end = max((ix.clips[c][1] for c in clips), default=ix.duration)
        self.questions.add(question)
        self.near.add(near)
        rec = {
            "id": R.record_id(ix.video_id, program_json, self.seed),
            "video_id": ix.video_id,
            "video_uri": ix.uri,
            "start": float(start),
            "end": float(end),
            "question": question,
            "answer": tr.answer,
            "open_answer": open_answer(tr, program),
            "answer_type": atype,
            "rationale": render_rationale(ix, tr, program),
            "steps": program.steps,
            "family": fam.name,
            "program": program_json,
            "path_nodes": tr.nodes,
            "seed": int(self.seed),
            "graph_source": ix.source,
            "times": question_moments(ix, tr),
            R.POOLS: option_pools(ix, program, tr),
        }
        return rec, ""


def sample_graph(graph: nx.MultiDiGraph, cfg: QraConfig, seed: int) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Candidate samples of one graph (no options or split yet: :func:`step_ray.qra.corpus.finalize` draws
    those corpus-wide) and stats: ``{"video_id", "samples", "targets", "by_steps", "by_family", "rejected"
    (reason -> count), "attempts", "reason"}`` (``reason`` says why there are no samples, else None; step
    counts are string keys so the stats are JSON as they are)."""
    ix = GraphIndex(graph)
    targets = step_targets(cfg)
    stats: dict[str, Any] = {"video_id": ix.video_id, "samples": 0, "targets": {str(n): t for n, t in targets.items()},
                             "by_steps": {}, "by_family": {}, "rejected": {}, "attempts": 0, "reason": None}
    stats["reason"] = _degenerate(ix)
    if stats["reason"]:
        return [], stats
    s = _Sampler(ix, cfg, seed)
    out: list[dict[str, Any]] = []
    weights = {f: family_weight(cfg, f) for f in FAMILIES}
    made_by: Counter = Counter()
    for n, target in targets.items():
        active = _eligible(cfg, n)
        fails: Counter = Counter()
        made = attempts = 0
        while made < target and attempts < ATTEMPTS_PER_SAMPLE * target and active:
            # A family's chance falls with the samples it already has in this graph: the easy ones (a graph
            # has many cross-clip paths) do not crowd out the rest, and the weights still set the mix.
            name = s.rng.choices(active, weights=[weights[a] / (1 + made_by[a]) for a in active])[0]
            attempts += 1
            rec, why = s.attempt(FAMILIES[name], n)
            if rec is None:
                s.rejected[why] += 1
                fails[name] += 1
                # No anchor starts this family's walk at all (e.g. no attribute change in a stsg/1 graph): the
                # family leaves at once, unless its walks vary in shape (the same_as position, the split of a
                # comparison) and another shape may still fit.
                fixed = not FAMILIES[name].needs_same_as and FAMILIES[name].form != "compare"
                if fails[name] >= FAMILY_PATIENCE or (why == "infeasible" and fixed):
                    active.remove(name)
            else:
                fails[name] = 0
                out.append(rec)
                made += 1
                made_by[name] += 1
        stats["attempts"] += attempts
    stats["samples"] = len(out)
    stats["by_steps"] = {str(k): v for k, v in sorted(Counter(r["steps"] for r in out).items())}
    stats["by_family"] = dict(sorted(Counter(r["family"] for r in out).items()))
    stats["rejected"] = dict(sorted(s.rejected.items()))
    if not out:
        stats["reason"] = "no_valid_path"
    return out, stats


def sample_qra(graph: nx.MultiDiGraph, cfg: QraConfig, seed: int) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Finished QRA records of one graph (options drawn with this graph as the corpus, split by its video id;
    no answer balancing, which is a corpus-wide step) and the sampling stats."""
    from step_ray.qra.corpus import finalize

    candidates, stats = sample_graph(graph, cfg, seed)
    records, _ = finalize(candidates, cfg, seed, balance=False)
    return records, stats
