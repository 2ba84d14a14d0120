"""QRA rendering: a program and its execution trace -> question, rationale and the option pools.

The question is rendered from the program alone (what the reader is told); the rationale from the trace (what
the graph says at each step, with times and the objects the path really visits). Options follow STAR: the
answer, a compositional distractor (a value the last hop gives elsewhere in the graph), the family's most
frequent answer in the corpus, and a random one of the right type. The graph-side pools are built here per
sample (:func:`option_pools`); the corpus-side choice is made once all graphs are sampled
(:func:`draw_options`, called by :mod:`step_ray.qra.corpus`). Yes / no questions have the two options.
"""

from __future__ import annotations

import random
import re
from typing import Any, Callable, Optional

from step_ray.perception.colors import COLOR_NAMES
from step_ray.qra import families as F
from step_ray.qra.paths import (
    ANSWER_TYPE, COMPARE, EVENT_VERBS, OPS, YESNO, GraphIndex, Program, Trace, fmt_time, project,
)
from step_ray.stsg.schema import DIRECTIONS

SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
#: Further shape names, used only as random distractors: with three shapes alone a four-option shape
#: question would have no fourth option.
EXTRA_SHAPES: tuple[str, ...] = ("diamond", "hexagon", "star")
COUNTS: tuple[str, ...] = tuple(str(n) for n in range(0, 7))
ACTIONS: tuple[str, ...] = ("entered the scene", "left the scene", "started moving", "stopped moving")


def _cap(s: str) -> str:
    return s[:1].upper() + s[1:]


def _at(t: Any) -> str:
    return "" if t is None else f" at {fmt_time(float(t))}"


def answer_type(program: Program) -> str:
    """The type of a program's answer: ``yesno`` for verify and comparison, else the query's type."""
    if program.check is not None or program.query in COMPARE:
        return "yesno"
    return ANSWER_TYPE[program.query]


# --------------------------------------------------------------------------------------------- question


def anchor_phrase(program: Program) -> str:
    a = program.anchor
    p = a.params
    if a.type == "object":
        desc = f"{p['color']} {p['category']}" if p.get("color") else str(p.get("category"))
        scope = "" if p.get("clip") is None else F.OBJECT_SCOPE.format(scene=int(p["clip"]) + 1)
        return F.OBJECT_ANCHOR.format(desc=desc) + scope
    names = list(p.get("participants", []))
    of = (" of " + " and ".join(f"the {n}" for n in names)) if names else ""
    return F.EVENT_ANCHOR.format(noun=F.EVENT_NOUN.get(p["kind"], p["kind"]), of=of, at=_at(p.get("time")))


def _participant_form(program: Program, i: int, nps: list[str]) -> tuple[str, dict[str, str]]:
    """Template key and fields of a ``participant`` hop: the question names the event's other participants
    exactly when the executor leaves them out (paths._excluded), so phrase and meaning agree."""
    if i == 0 and program.anchor.type == "event":
        p = program.anchor.params
        names, kind, at = list(p.get("participants", [])), p["kind"], _at(p.get("time"))
        if kind != "collide" and kind != "action" and not names:
            return f"participant_{kind}", {"at": at}
        if kind == "collide" and len(names) == 1:
            return "participant_collide", {"at": at, "other": f"the {names[0]}"}
    if i > 0 and program.hops[i - 1].op == "event_of" and program.hops[i - 1].params.get("kind") == "collide":
        return "participant_collide_np", {"at": _at(program.hops[i - 1].params.get("time")), "other": nps[i - 1]}
    return "participant", {"np": nps[i]}


def _actor_np(program: Program, i: int, nps: list[str]) -> str:
    """The phrase of the last object before hop ``i`` (whose own next event ``next_own`` takes)."""
    for j in range(i, 0, -1):
        if OPS[program.hops[j - 1].op].dst == "object":
            return nps[j]
    return nps[0]


def _timed(key: str, params: dict) -> str:
    """The template key of a timed hop: its ``_timeless`` form when the fact holds throughout the clip."""
    return f"{key}_timeless" if params.get("timeless") else key


def _fields(program: Program, i: int, nps: list[str]) -> tuple[str, dict[str, str]]:
    hop = program.hops[i]
    p, np = hop.params, nps[i]
    if hop.op in ("relation", "count_related"):
        return _timed(hop.op, p), {"t": fmt_time(p["time"]), "pred": F.PREDICATE_TEXT.get(p["predicate"], p["predicate"]),
                                   "np": np}
    if hop.op == "participant":
        return _participant_form(program, i, nps)
    if hop.op == "event_of":
        if i + 1 < len(program.hops) and program.hops[i + 1].op == "next_own":
            return "event_of_own", {"noun": F.EVENT_NOUN.get(p["kind"], p["kind"]), "at": _at(p.get("time"))}
        return "event_of", {"noun": F.EVENT_NOUN.get(p["kind"], p["kind"]), "at": _at(p.get("time")), "np": np}
    if hop.op == "next_own":
        return "next_own", {"actor": _actor_np(program, i, nps), "np": np}
    if hop.op == "same_as":
        return "same_as", {"scene": str(int(p["clip"]) + 1), "np": np}
    if hop.op == "motion":
        return _timed("motion", p), {"t": fmt_time(p["time"]), "np": np}
    if hop.op == "changed_to":
        return "changed_to", {"np": np, "at": _at(p.get("time"))}
    if hop.op == "count_events":
        return "count_events", {"np": np, "verb": F.COUNT_VERB.get(p["kind"], p["kind"])}
    return hop.op, {"np": np}


def noun_phrases(program: Program) -> list[str]:
    """The phrase of the anchor and of every entity a hop reaches (value hops: their source's phrase)."""
    nps = [anchor_phrase(program)]
    for i, hop in enumerate(program.hops):
        key, fields = _fields(program, i, nps)
        nps.append(F.NOUN[key].format(**fields) if key in F.NOUN else nps[-1])
    return nps


def _ask(program: Program) -> str:
    """The question of a one-path program (no check)."""
    nps = [anchor_phrase(program)]
    for i in range(len(program.hops)):
        key, fields = _fields(program, i, nps)
        last = i == len(program.hops) - 1
        if last and (program.query not in F.ASK_QUERY or OPS[program.hops[i].op].dst != "object"):
            return _cap(F.ASK[key].format(**fields))
        nps.append(F.NOUN[key].format(**fields))
    if program.query in F.ASK_QUERY:
        return F.ASK_QUERY[program.query].format(np=nps[-1])
    return f"What is {nps[-1]}?"  # a program without hops (never sampled): still renders


def render_question(program: Program) -> str:
    """The question a program asks. Deterministic: equal programs give equal questions."""
    if program.other is not None:
        return _cap(F.COMPARE_ASK[program.query].format(a=noun_phrases(program)[-1],
                                                          b=noun_phrases(program.other)[-1]))
    if program.check is not None:
        nps = noun_phrases(program)
        last = program.hops[-1] if program.hops else None
        if last is not None and last.op == "motion":
            return _cap(F.VERIFY[_timed("direction", last.params)].format(t=fmt_time(last.params["time"]), np=nps[-1],
                                                                           v=program.check))
        return _cap(F.VERIFY[program.query].format(np=nps[-1], v=program.check))
    return _ask(program)


_NON_WORD = re.compile(r"[^\w-]+")


def is_trivial(question: str, answer: str) -> bool:
    """The answer is already named in the question (as a whole phrase: words and hyphens delimit it)."""
    words = f" {_NON_WORD.sub(' ', question.lower())} "
    return f" {_NON_WORD.sub(' ', answer.lower()).strip()} " in words


# --------------------------------------------------------------------------------------------- rationale


def event_clause(ix: GraphIndex, e: str, subject: Optional[str] = None, with_subject: bool = True) -> str:
    """'the blue square entered the scene', 'the red circle collided with the blue square' (``subject`` first);
    without the subject: 'entered the scene', 'collided with the blue square'."""
    people = ix.participants(e)
    ordered = sorted(people, key=lambda o: (o != subject, ix.desc.get(o, o), o))
    names = [f"the {ix.desc.get(o, o)}" for o in ordered] or ["an object"]
    if ix.kind(e) == "collide":
        head = names[0]
        pred = ix.verb(e, ordered[0]) if ordered else "collided"
    else:
        head, pred = " and ".join(names), ix.verb(e)
    return f"{head} {pred}" if with_subject else pred


def _hop_sentence(ix: GraphIndex, s: Any) -> str:
    p = s.params
    if s.op == "relation":
        return F.SENTENCE[_timed("relation", p)].format(t=fmt_time(p["time"]), dst=ix.desc[s.dst],
                                             pred=F.PREDICATE_TEXT.get(p["predicate"], p["predicate"]), src=ix.desc[s.src])
    if s.op == "participant":
        return F.SENTENCE["participant"].format(dst=ix.desc[s.dst], vp=event_clause(ix, s.src, s.dst, with_subject=False),
                                                t=fmt_time(ix.time(s.src)))
    if s.op == "event_of":
        return F.SENTENCE["event"].format(t=fmt_time(ix.time(s.dst)), clause=event_clause(ix, s.dst, s.src))
    if s.op in ("next_event", "prev_event"):
        return F.SENTENCE[s.op].format(src_clause=event_clause(ix, s.src), t0=fmt_time(ix.time(s.src)),
                                       t=fmt_time(ix.time(s.dst)), clause=event_clause(ix, s.dst))
    if s.op == "next_own":
        return F.SENTENCE["next_own"].format(t0=fmt_time(ix.time(s.src)), actor=ix.desc.get(s.actor, s.actor),
                                             t=fmt_time(ix.time(s.dst)), vp=ix.verb(s.dst, s.actor))
    if s.op == "same_as":
        return F.SENTENCE["same_as"].format(src=ix.desc[s.src], dst=ix.desc[s.dst], src_scene=(ix.clip_of(s.src) or 0) + 1,
                                            dst_scene=(ix.clip_of(s.dst) or 0) + 1)
    if s.op == "motion":
        return F.SENTENCE[_timed("motion", p)].format(t=fmt_time(p["time"]), src=ix.desc[s.src], dst=s.dst)
    if s.op == "changed_to":
        t = p.get("time")
        edges = [d for d in ix.changes(s.src, p["attribute"]) if str(d["to"]) == s.dst]
        d = min(edges, key=lambda d: abs(float(d["time"]) - float(t))) if (edges and t is not None) else (edges or [{}])[0]
        return F.SENTENCE["changed_to"].format(t=fmt_time(float(d.get("time", 0.0))), src=ix.desc[s.src],
                                               attr="colour" if p["attribute"] == "color" else p["attribute"],
                                               old=d.get("from", "?"), dst=s.dst)
    if s.op == "count_events":
        times = sorted(ix.time(e) for e, _ in ix.out[(s.src, "participates_in")] if ix.kind(e) == p["kind"])
        n = len(times)
        return F.SENTENCE["count_events"].format(src=ix.desc[s.src], vp=F.COUNT_VERB.get(p["kind"], p["kind"]) + "s",
                                                 n=n, s="" if n == 1 else "s",
                                                 when=(": at " + ", ".join(fmt_time(t) for t in times)) if times else "")
    if s.op == "count_related":
        objs = OPS["relation"].apply(ix, s.src, p, None)  # type: ignore[arg-type]
        n = len(objs)
        who = (": " + ", ".join(f"the {ix.desc[o]}" for o in objs)) if objs else ""
        return F.SENTENCE[_timed("count_related", p)].format(t=fmt_time(p["time"]), n=n if n else "no",
                                                             s="" if n <= 1 else "s",
                                                  be="is" if n <= 1 else "are",
                                                  pred=F.PREDICATE_TEXT.get(p["predicate"], p["predicate"]),
                                                  src=ix.desc[s.src], who=who)
    return f"Following {s.op} from {s.src} leads to {s.dst}."  # a hop registered later without a template


def render_rationale(ix: GraphIndex, tr: Trace, program: Program) -> list[str]:
    """One sentence per executed hop (times, grounded names), one for a comparison, then the conclusion."""
    out = [_hop_sentence(ix, s) for s in tr.steps]
    if tr.other is not None:
        other = tr.other
        out += [_hop_sentence(ix, s) for s in other.steps]
        a, b = tr.final, other.final
        if program.query == "earlier":
            out.append(F.SENTENCE["earlier"].format(ta=fmt_time(ix.time(a)), tb=fmt_time(ix.time(b)),
                                                    order="earlier" if tr.answer == "yes" else "later"))
        else:
            out.append(F.SENTENCE[program.query].format(a=ix.desc[a], b=ix.desc[b], va=tr.value, vb=other.value))
    out = [_cap(x) for x in out]
    out.append(F.CONCLUSION.format(answer=tr.answer))
    return out


def open_answer(tr: Trace, program: Program) -> str:
    """The answer without options: the value itself; for yes / no, the fact it rests on as well."""
    if program.check is not None:
        return f"{tr.answer} (it is {tr.value})"
    return str(tr.answer)


# --------------------------------------------------------------------------------------------- options


def _memo(ix: GraphIndex, key: str, fn: Callable[[], Any]) -> Any:
    """Graph-wide option pools are the same for every question on a graph: compute them once per index."""
    if key not in ix.memo:
        ix.memo[key] = fn()
    return ix.memo[key]


def vocabulary(ix: GraphIndex, atype: str) -> list[list[str]]:
    """Random-distractor pools of a type, most plausible first: a pool is used only when the earlier ones are
    exhausted (objects: the graph's objects, then other colour-shape pairs)."""
    def build() -> list[list[str]]:
        descs = sorted(set(ix.desc.values()))
        if atype == "color":
            seen = {c for o in ix.objects if (c := ix.color(o))}
            return [sorted(set(COLOR_NAMES) | seen)]
        if atype == "shape":
            seen = {ix.category(o) for o in ix.objects}
            return [sorted(set(SHAPES) | seen), sorted(set(EXTRA_SHAPES) - set(SHAPES) - seen)]
        if atype == "direction":
            return [sorted(DIRECTIONS)]
        if atype == "count":
            return [list(COUNTS)]
        if atype == "yesno":
            return [list(YESNO)]
        if atype == "object":
            return [descs, sorted({f"{c} {s}" for c in COLOR_NAMES for s in SHAPES} - set(descs))]
        if atype == "action":
            made = set(ACTIONS) | {f"collided with the {d}" for d in descs} | {f"turned {c}" for c in COLOR_NAMES}
            return [sorted(made)]
        if atype == "event":
            # Answer texts are written as GraphIndex.event_text writes them.
            made = {ix.event_text(e) for e in ix.events}
            made |= {f"{d} {EVENT_VERBS[k]}" for d in descs for k in ("enter", "leave", "start_moving", "stop_moving")}
            made |= {f"{a} and {b} collided" for i, a in enumerate(descs) for b in descs[i + 1:]}
            palette = sorted({f"{c} {s}" for c in COLOR_NAMES for s in SHAPES})
            return [sorted(made), sorted({f"{d} {EVENT_VERBS[k]}" for d in palette for k in ("enter", "leave")} - made)]
        return [[]]
    return _memo(ix, f"vocab:{atype}", build)


def option_pools(ix: GraphIndex, program: Program, tr: Trace) -> dict[str, Any]:
    """What the options of one sample are drawn from: its answer type, the compositional distractors (what the
    last hop, same predicate / kind, reaches elsewhere in the graph, read the same way) and the random pools."""
    atype = answer_type(program)
    comp: list[str] = []
    last = program.hops[-1] if program.hops else None
    if atype != "yesno" and last is not None:
        op = OPS[last.op]
        if op.dst in ("object", "event"):
            vals = {project(ix, r, program.query, op.dst, None) for r in op.relaxed(ix, last.params)}
            if program.query == "action":
                vals = {ix.verb(e, o) for e in op.relaxed(ix, last.params) for o in ix.participants(e)}
        else:
            vals = set(op.relaxed(ix, last.params))
        comp = sorted(v for v in vals if v is not None and v != tr.answer)
    return {"answer_type": atype, "compositional": comp, "random": vocabulary(ix, atype)}


def draw_options(answer: str, pools: dict[str, Any], frequent: list[tuple[str, int]], num_options: int,
                 rng: random.Random) -> Optional[tuple[list[str], int]]:
    """The options, shuffled, and the answer's index: the answer, a compositional distractor, the most frequent
    other answer of the family in the corpus (``frequent``: (value, count), any order), then random values of
    the type. Yes / no questions get the two. None if the type has too few distinct values."""
    if pools["answer_type"] == "yesno":
        options = list(YESNO)
        rng.shuffle(options)
        return options, options.index(answer)
    chosen = [answer]

    def take(pool: list[str]) -> bool:
        free = [v for v in pool if v not in chosen]
        if free:
            chosen.append(rng.choice(free))
        return bool(free)

    if len(chosen) < num_options:
        take(pools["compositional"])
    if len(chosen) < num_options:
        counts = {v: c for v, c in frequent if v not in chosen}
        if counts:
            # Ties are drawn at random: broken by name, one value would be the frequent distractor of nearly
            # every question, and a model could learn that it is never the answer.
            top = max(counts.values())
            chosen.append(rng.choice(sorted(v for v, c in counts.items() if c == top)))
    for pool in pools["random"]:
        while len(chosen) < num_options and take(pool):
            pass
    if len(chosen) < num_options:
        return None
    options = chosen[:num_options]
    rng.shuffle(options)
    return options, options.index(answer)
