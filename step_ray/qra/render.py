"""QRA rendering: a program and its execution trace -> question, rationale and multiple-choice options.

The question is rendered from the program alone (what the reader is told); the rationale from the trace (what
the graph says at each step, with times and the objects the path really visits); the options follow STAR:
the answer, a compositional distractor (a value the last hop gives elsewhere in the graph), a frequent
answer of the same type, and random ones from a fixed vocabulary of that type.
"""

from __future__ import annotations

import random
import re
from collections import Counter
from typing import Any, Callable, Optional

from step_ray.perception.colors import COLOR_NAMES
from step_ray.qra import families as F
from step_ray.qra.paths import ANSWER_TYPE, EVENT_VERBS, OPS, GraphIndex, Program, Trace, fmt_time, project
from step_ray.stsg.schema import DIRECTIONS, EVENT_KINDS

SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
#: Further shape names, used only as random distractors: with three shapes alone a four-option shape
#: question would have no fourth option.
EXTRA_SHAPES: tuple[str, ...] = ("diamond", "hexagon", "star")


def _cap(s: str) -> str:
    return s[:1].upper() + s[1:]


def _at(t: Any) -> str:
    return "" if t is None else f" at {fmt_time(float(t))}"


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
        if kind in ("enter", "leave") and not names:
            return f"participant_{kind}", {"at": at}
        if kind == "collide" and len(names) == 1:
            return "participant_collide", {"at": at, "other": f"the {names[0]}"}
    if i > 0 and program.hops[i - 1].op == "event_of" and program.hops[i - 1].params.get("kind") == "collide":
        return "participant_collide_np", {"at": _at(program.hops[i - 1].params.get("time")), "other": nps[i - 1]}
    return "participant", {"np": nps[i]}


def _fields(program: Program, i: int, nps: list[str]) -> tuple[str, dict[str, str]]:
    hop = program.hops[i]
    p, np = hop.params, nps[i]
    if hop.op == "relation":
        return "relation", {"t": fmt_time(p["time"]), "pred": F.PREDICATE_TEXT.get(p["predicate"], p["predicate"]), "np": np}
    if hop.op == "participant":
        return _participant_form(program, i, nps)
    if hop.op == "event_of":
        return "event_of", {"noun": F.EVENT_NOUN.get(p["kind"], p["kind"]), "at": _at(p.get("time")), "np": np}
    if hop.op == "same_as":
        return "same_as", {"scene": str(int(p["clip"]) + 1), "np": np}
    if hop.op == "motion":
        return "motion", {"t": fmt_time(p["time"]), "np": np}
    return hop.op, {"np": np}


def render_question(program: Program) -> str:
    """The question a program asks. Deterministic: equal programs give equal questions."""
    nps = [anchor_phrase(program)]
    for i in range(len(program.hops)):
        key, fields = _fields(program, i, nps)
        last = i == len(program.hops) - 1
        if last and program.query not in F.ASK_QUERY:
            return _cap(F.ASK[key].format(**fields))
        nps.append(F.NOUN[key].format(**fields))
    if program.query in F.ASK_QUERY:
        return F.ASK_QUERY[program.query].format(np=nps[-1])
    return f"What is {nps[-1]}?"  # a program without hops (never sampled): still renders


def is_trivial(question: str, answer: str) -> bool:
    """The answer is already named in the question (as a whole phrase)."""
    return re.search(r"(?<![\w-])" + re.escape(answer.lower()) + r"(?![\w-])", question.lower()) is not None


# --------------------------------------------------------------------------------------------- rationale


def event_clause(ix: GraphIndex, e: str, subject: Optional[str] = None, with_subject: bool = True) -> str:
    """'the blue square entered the scene', 'the red circle collided with the blue square' (``subject`` first);
    without the subject: 'entered the scene', 'collided with the blue square'."""
    people = ix.participants(e)
    ordered = sorted(people, key=lambda o: (o != subject, ix.desc.get(o, o), o))
    names = [f"the {ix.desc.get(o, o)}" for o in ordered] or ["an object"]
    kind = ix.kind(e)
    if kind == "collide":
        head, pred = names[0], (f"collided with {' and '.join(names[1:])}" if len(names) > 1 else "collided")
    else:
        head, pred = " and ".join(names), EVENT_VERBS.get(kind, kind)
    return f"{head} {pred}" if with_subject else pred


def render_rationale(ix: GraphIndex, tr: Trace) -> list[str]:
    """One sentence per executed hop (times, grounded names), then the conclusion."""
    out = []
    for s in tr.steps:
        p = s.params
        if s.op == "relation":
            out.append(F.SENTENCE["relation"].format(t=fmt_time(p["time"]), dst=ix.desc[s.dst],
                                                     pred=F.PREDICATE_TEXT.get(p["predicate"], p["predicate"]),
                                                     src=ix.desc[s.src]))
        elif s.op == "participant":
            clause = event_clause(ix, s.src, s.dst, with_subject=False)
            out.append(F.SENTENCE["participant"].format(dst=ix.desc[s.dst], vp=clause, t=fmt_time(ix.time(s.src))))
        elif s.op == "event_of":
            out.append(F.SENTENCE["event"].format(t=fmt_time(ix.time(s.dst)), clause=event_clause(ix, s.dst, s.src)))
        elif s.op in ("next_event", "prev_event"):
            out.append(F.SENTENCE[s.op].format(src_clause=event_clause(ix, s.src), t0=fmt_time(ix.time(s.src)),
                                               t=fmt_time(ix.time(s.dst)), clause=event_clause(ix, s.dst)))
        elif s.op == "same_as":
            out.append(F.SENTENCE["same_as"].format(src=ix.desc[s.src], dst=ix.desc[s.dst],
                                                    src_scene=(ix.clip_of(s.src) or 0) + 1,
                                                    dst_scene=(ix.clip_of(s.dst) or 0) + 1))
        elif s.op == "motion":
            out.append(F.SENTENCE["motion"].format(t=fmt_time(p["time"]), src=ix.desc[s.src], dst=s.dst))
        else:  # a hop registered later without a sentence template: still one sentence per hop
            out.append(f"Following {s.op} from {s.src} leads to {s.dst}.")
    out = [_cap(x) for x in out]
    out.append(F.CONCLUSION.format(answer=tr.answer))
    return out


# --------------------------------------------------------------------------------------------- options


def _memo(ix: GraphIndex, key: str, fn: Callable[[], Any]) -> Any:
    """Graph-wide option pools are the same for every question on a graph: compute them once per index."""
    if key not in ix.memo:
        ix.memo[key] = fn()
    return ix.memo[key]


def type_counts(ix: GraphIndex, answer_type: str) -> Counter:
    """How often each value of a type occurs in the graph (objects weighted by the edges they take part in)."""
    def build() -> Counter:
        c: Counter = Counter()
        if answer_type == "object":
            for o in ix.objects:
                deg = sum(len(ix.out[(o, t)]) + len(ix.inc[(o, t)]) for t in ("relation", "participates_in", "same_as"))
                c[ix.desc[o]] += 1 + deg
        elif answer_type == "color":
            c.update(col for o in ix.objects if (col := ix.color(o)))
        elif answer_type == "shape":
            c.update(ix.category(o) for o in ix.objects)
        elif answer_type == "direction":
            c.update(str(d["direction"]) for o in ix.objects for _, d in ix.out[(o, "motion")])
        elif answer_type == "event":
            c.update(ix.event_text(e) for e in ix.events)
        return c
    return _memo(ix, f"counts:{answer_type}", build)


def vocabulary(ix: GraphIndex, answer_type: str) -> list[list[str]]:
    """Random-distractor pools of a type, most plausible first: a pool is used only when the earlier ones are
    exhausted (objects: the graph's objects, then other colour-shape pairs)."""
    def build() -> list[list[str]]:
        counts = sorted(type_counts(ix, answer_type))
        if answer_type == "color":
            return [sorted(set(COLOR_NAMES) | set(counts))]
        if answer_type == "shape":
            return [sorted(set(SHAPES) | set(counts)), sorted(set(EXTRA_SHAPES) - set(SHAPES) - set(counts))]
        if answer_type == "direction":
            return [sorted(DIRECTIONS)]
        descs = sorted(set(ix.desc.values()))
        if answer_type == "object":
            return [descs, sorted({f"{c} {s}" for c in COLOR_NAMES for s in SHAPES} - set(descs))]
        if answer_type == "event":
            # Answer texts are written as GraphIndex.event_text writes them.
            made = {f"{d} {EVENT_VERBS[k]}" for d in descs for k in ("enter", "leave")}
            made |= {f"{a} and {b} collided" for i, a in enumerate(descs) for b in descs[i + 1:]}
            palette = sorted({f"{c} {s}" for c in COLOR_NAMES for s in SHAPES})
            return [sorted(set(counts) | made), sorted({f"{d} {EVENT_VERBS[k]}" for d in palette
                                                         for k in ("enter", "leave")} - made)]
        return [counts]
    return _memo(ix, f"vocab:{answer_type}", build)


def make_options(ix: GraphIndex, program: Program, answer: str, num_options: int,
                 rng: random.Random) -> Optional[tuple[list[str], int]]:
    """``num_options`` distinct options (the answer, a compositional, a frequent, then random distractors),
    shuffled; the answer's index. None if the type has too few distinct values."""
    answer_type = ANSWER_TYPE[program.query]
    chosen = [answer]
    last = program.hops[-1] if program.hops else None

    def take(pool: list[str]) -> bool:
        free = [v for v in pool if v not in chosen]
        if free:
            chosen.append(rng.choice(free))
        return bool(free)

    # 1. Compositional: what the last hop (same predicate / kind) gives elsewhere in the graph, read the same way.
    if last is not None and len(chosen) < num_options:
        reached = OPS[last.op].relaxed(ix, last.params)
        take(sorted({v for r in reached if (v := project(ix, r, program.query)) is not None}))
    # 2. Frequent: the most common value of the type in the graph. Ties are drawn at random: broken by name,
    #    the same value (say "blue") would be the frequent distractor of nearly every question, and a model
    #    could learn that it is never the answer.
    if len(chosen) < num_options:
        counts = {v: c for v, c in type_counts(ix, answer_type).items() if v not in chosen}
        if counts:
            top = max(counts.values())
            chosen.append(rng.choice(sorted(v for v, c in counts.items() if c == top)))
    # 3. Random from the type's vocabulary, until there are enough.
    for pool in vocabulary(ix, answer_type):
        while len(chosen) < num_options and take(pool):
            pass
    if len(chosen) < num_options:
        return None
    options = chosen[:num_options]
    rng.shuffle(options)
    return options, options.index(answer)
