"""Question families and the phrase templates questions and rationales are rendered from.

A family is *what the question asks for*, fixed by the program's shape (:func:`family_of`), so a program
always carries the same family whoever sampled it. The :class:`Family` records below also tell the sampler
which last hops and queries produce that family. After AGQA (relation, attribute, sequencing, existence,
comparison), STAR (interaction, sequence) and CLEVRER (counting, temporal order, attribute change):

==================  ===========================================================================================
family              question (program)
==================  ===========================================================================================
relation            "At 1.4s, which object is left of the red circle?" (... -> relation; query object)
attribute           "What colour is the object that, at 1.4s, is left of the red circle?" (... -> relation or
                    participant; query colour or shape)
event_participant   "Which object entered the scene at 2.0s?" (... -> participant; query object)
temporal            "What happened right after the entrance of the blue square?" (... -> next/prev event)
sequence            "What did the red circle do right after its collision at 2.0s?" (... object -> event_of ->
                    next_own; query action)
motion              "At 1.0s, which direction does the red circle move?" (... -> motion)
attribute_change    "What colour does the red circle turn into at 2.0s?" (... -> changed_to)
counting            "How many times does the red circle collide?", "At 1.4s, how many objects are left of the
                    red circle?" (... -> count_events / count_related)
cross_clip          any question whose path crosses a cut with ``same_as`` ("At 5.5s, which direction does the
                    object in scene 2 that is the same as the red circle in scene 1 move?")
verify              yes / no: "Is the object that, at 1.4s, is left of the red circle the green triangle?"
                    (any object / colour / shape / direction path + ``check``)
comparison          yes / no over two paths: "Did the entrance of the blue square happen before the collision
                    of the red circle?", "Do A and B have the same shape?" (``other``; query earlier /
                    same_color / same_shape)
==================  ===========================================================================================
"""

from __future__ import annotations

from dataclasses import dataclass

from step_ray.qra.paths import COMPARE, Program

#: Hops allowed before the last one (``same_as`` only in ``cross_clip``; value hops only last).
INTERMEDIATE_OPS: tuple[str, ...] = ("relation", "participant", "event_of", "next_event", "prev_event", "next_own")
#: Last hops and queries of the paths a verify question checks.
VERIFY_FINAL_OPS: tuple[str, ...] = ("relation", "participant", "motion")
VERIFY_QUERIES: tuple[str, ...] = ("object", "color", "shape", "direction")


@dataclass(frozen=True)
class Family:
    name: str
    final_ops: tuple[str, ...]  # hops that may come last
    queries: tuple[str, ...]  # queries on the final entity
    min_steps: int = 1
    needs_same_as: bool = False
    #: "path" (one walk), "verify" (one walk + a checked value), "compare" (two walks + a comparison)
    form: str = "path"
    description: str = ""


FAMILIES: dict[str, Family] = {f.name: f for f in (
    Family("relation", ("relation",), ("object",), description="which object stands in a spatial relation"),
    Family("attribute", ("relation", "participant"), ("color", "shape"),
           description="the colour or shape of an object reached by hops"),
    Family("event_participant", ("participant",), ("object",), description="who entered, left, collided, ..."),
    Family("temporal", ("next_event", "prev_event"), ("event",), description="what happened right after / before"),
    Family("sequence", ("next_own",), ("action",), min_steps=2,
           description="what an object did right after one of its own events"),
    Family("motion", ("motion",), ("direction",), description="which direction an object moves"),
    Family("attribute_change", ("changed_to",), ("color",), description="what colour an object turns into"),
    Family("counting", ("count_events", "count_related"), ("count",),
           description="how many times an object does something, how many objects stand in a relation"),
    # One step would be "which object in scene 2 is the red circle of scene 1": answered by its own name.
    Family("cross_clip", ("relation", "participant", "motion", "next_event", "prev_event", "changed_to",
                          "count_events"),
           ("object", "color", "shape", "event", "direction", "count"), min_steps=2, needs_same_as=True,
           description="what an object of one scene does, or where it is, after a cut"),
    Family("verify", VERIFY_FINAL_OPS, VERIFY_QUERIES, form="verify",
           description="yes / no: does a path lead to the stated object or value"),
    Family("comparison", (), tuple(COMPARE), form="compare",
           description="yes / no over two paths: which event came first, same colour, same shape"),
)}


def family_of(program: Program) -> str:
    """The family of a program (see the table above); 'other' for shapes no family samples."""
    if program.other is not None:
        return "comparison"
    if program.check is not None:
        return "verify"
    ops = [h.op for h in program.hops]
    if "same_as" in ops:
        return "cross_clip"
    last = ops[-1] if ops else ""
    if last == "changed_to":
        return "attribute_change"
    if program.query in ("color", "shape"):
        return "attribute"
    return {"relation": "relation", "participant": "event_participant", "next_event": "temporal",
            "prev_event": "temporal", "next_own": "sequence", "motion": "motion", "count_events": "counting",
            "count_related": "counting"}.get(last, "other")


# --------------------------------------------------------------------------------------------- templates
# Noun phrases nest: each hop turns the phrase of what it starts from ({np}) into the phrase of what it
# reaches. Times come first inside relative clauses ("that, at 1.4s, is left of ...") so that a nested
# phrase's own time never dangles at the end of an outer one.

PREDICATE_TEXT = {"left_of": "left of", "right_of": "right of", "above": "above", "below": "below", "near": "near",
                  "directly_left_of": "directly left of", "directly_right_of": "directly right of",
                  "directly_above": "directly above", "directly_below": "directly below"}
EVENT_NOUN = {"enter": "entrance", "leave": "exit", "collide": "collision", "start_moving": "start of motion",
              "stop_moving": "stop", "change": "colour change", "action": "action"}
#: "How many times does X {verb}?" per event kind.
COUNT_VERB = {"enter": "enter the scene", "leave": "leave the scene", "collide": "collide",
              "start_moving": "start moving", "stop_moving": "stop moving", "change": "change colour",
              "action": "act"}

OBJECT_ANCHOR = "the {desc}"
OBJECT_SCOPE = " in scene {scene}"
EVENT_ANCHOR = "the {noun}{of}{at}"  # "the collision of the red circle and the blue square at 2.0s"

# hop -> (noun phrase of the result, question when the hop is last and the query reads the result directly)
NOUN = {
    "relation": "the object that, at {t}, is {pred} {np}",
    "relation_timeless": "the object that is {pred} {np}",  # true throughout the clip (qra/moments.py)
    "participant": "the object that took part in {np}",
    "participant_enter": "the object that entered the scene{at}",
    "participant_leave": "the object that left the scene{at}",
    "participant_start_moving": "the object that started moving{at}",
    "participant_stop_moving": "the object that stopped moving{at}",
    "participant_change": "the object that changed colour{at}",
    "participant_collide": "the object that collided with {other}{at}",
    "participant_collide_np": "the object that collided{at} with {other}",  # time first: {other} is nested
    "event_of": "the {noun}{at} of {np}",
    "event_of_own": "its {noun}{at}",  # before next_own: "what X did right after its collision at 2.0s"
    "next_event": "the event right after {np}",
    "prev_event": "the event right before {np}",
    "next_own": "what {actor} did right after {np}",
    "same_as": "the object in scene {scene} that is the same as {np}",
}
ASK = {
    "relation": "At {t}, which object is {pred} {np}?",
    "relation_timeless": "Which object is {pred} {np}?",
    "participant": "Which object took part in {np}?",
    "participant_enter": "Which object entered the scene{at}?",
    "participant_leave": "Which object left the scene{at}?",
    "participant_start_moving": "Which object started moving{at}?",
    "participant_stop_moving": "Which object stopped moving{at}?",
    "participant_change": "Which object changed colour{at}?",
    "participant_collide": "Which object collided with {other}{at}?",
    "participant_collide_np": "Which object collided{at} with {other}?",
    "next_event": "What happened right after {np}?",
    "prev_event": "What happened right before {np}?",
    "next_own": "What did {actor} do right after {np}?",
    "same_as": "Which object in scene {scene} is the same as {np}?",
    "motion": "At {t}, which direction does {np} move?",
    "motion_timeless": "Which direction does {np} move?",
    "changed_to": "What colour does {np} turn into{at}?",
    "count_events": "How many times does {np} {verb}?",
    "count_related": "At {t}, how many objects are {pred} {np}?",
    "count_related_timeless": "How many objects are {pred} {np}?",
    "event_of": "What is {np}?",  # not sampled by any family; kept so every program renders
}
ASK_QUERY = {"color": "What colour is {np}?", "shape": "What shape is {np}?"}
#: Verify questions: the checked value stated.
VERIFY = {
    "object": "Is {np} the {v}?",
    "color": "Is {np} {v}?",
    "shape": "Is {np} a {v}?",
    "direction": "At {t}, does {np} move {v}?",
    "direction_timeless": "Does {np} move {v}?",
}
COMPARE_ASK = {
    "earlier": "Did {a} happen before {b}?",
    "same_color": "Do {a} and {b} have the same colour?",
    "same_shape": "Do {a} and {b} have the same shape?",
}

# Rationale: one sentence per hop, grounded on the objects the path actually visits.
SENTENCE = {
    "relation": "At {t}, the {dst} is {pred} the {src}.",
    "relation_timeless": "The {dst} is {pred} the {src}.",
    "participant": "The {dst} is the object that {vp} at {t}.",
    "event": "At {t}, {clause}.",  # event_of: the event told from the object's side
    "next_event": "After {src_clause} at {t0}, the next event is at {t}: {clause}.",
    "prev_event": "Before {src_clause} at {t0}, the previous event is at {t}: {clause}.",
    "next_own": "After that ({t0}), the next thing the {actor} does is at {t}: it {vp}.",
    "same_as": "The {src} in scene {src_scene} is the same object as the {dst} in scene {dst_scene}.",
    "motion": "At {t}, the {src} moves {dst}.",
    "motion_timeless": "The {src} moves {dst}.",
    "changed_to": "At {t}, the {src} changes {attr} from {old} to {dst}.",
    "count_events": "The {src} {vp} {n} time{s}{when}.",
    "count_related": "At {t}, {n} object{s} {be} {pred} the {src}{who}.",
    "count_related_timeless": "{n} object{s} {be} {pred} the {src}{who}.",
    "earlier": "The first event is at {ta} and the second at {tb}, so the first is {order}.",
    "same_color": "The {a} is {va} and the {b} is {vb}.",
    "same_shape": "The {a} is a {va} and the {b} is a {vb}.",
}
CONCLUSION = "So the answer is {answer}."
