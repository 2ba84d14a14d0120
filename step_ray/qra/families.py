"""Question families and the phrase templates questions and rationales are rendered from.

A family is *what the question asks for*, fixed by the program's shape (:func:`family_of`), so a program
always carries the same family whoever sampled it. The :class:`Family` records below also tell the sampler
which last hops and queries produce that family.

==================  ===========================================================================================
family              question (program)
==================  ===========================================================================================
relation            "At 1.4s, which object is left of the red circle?" (... -> relation; query object)
attribute           "What colour is the object that, at 1.4s, is left of the red circle?" (... -> relation or
                    participant; query colour or shape)
event_participant   "Which object entered the scene at 2.0s?" (... -> participant; query object)
temporal            "What happened right after the entrance of the blue square?" (... -> next/prev event)
motion              "At 1.0s, which direction does the red circle move?" (... -> motion)
cross_clip          any question whose path crosses a cut with ``same_as`` ("At 5.5s, which direction does the
                    object in scene 2 that is the same as the red circle in scene 1 move?")
==================  ===========================================================================================
"""

from __future__ import annotations

from dataclasses import dataclass

from step_ray.qra.paths import Program

#: Hops allowed before the last one (``same_as`` only in ``cross_clip``; ``motion`` gives a value: last only).
INTERMEDIATE_OPS: tuple[str, ...] = ("relation", "participant", "event_of", "next_event", "prev_event")


@dataclass(frozen=True)
class Family:
    name: str
    final_ops: tuple[str, ...]  # hops that may come last
    queries: tuple[str, ...]  # queries on the final entity
    min_steps: int = 1
    needs_same_as: bool = False
    description: str = ""


FAMILIES: dict[str, Family] = {f.name: f for f in (
    Family("relation", ("relation",), ("object",), description="which object stands in a spatial relation"),
    Family("attribute", ("relation", "participant"), ("color", "shape"),
           description="the colour or shape of an object reached by hops"),
    Family("event_participant", ("participant",), ("object",), description="who entered, left or collided"),
    Family("temporal", ("next_event", "prev_event"), ("event",), description="what happened right after / before"),
    Family("motion", ("motion",), ("direction",), description="which direction an object moves"),
    # One step would be "which object in scene 2 is the red circle of scene 1": answered by its own name.
    Family("cross_clip", ("relation", "participant", "motion", "next_event", "prev_event"),
           ("object", "color", "shape", "event", "direction"), min_steps=2, needs_same_as=True,
           description="what an object of one scene does, or where it is, after a cut"),
)}


def family_of(program: Program) -> str:
    """The family of a program (see the table above); 'other' for shapes no family samples."""
    ops = [h.op for h in program.hops]
    if "same_as" in ops:
        return "cross_clip"
    if program.query in ("color", "shape"):
        return "attribute"
    last = ops[-1] if ops else ""
    return {"relation": "relation", "participant": "event_participant", "next_event": "temporal",
            "prev_event": "temporal", "motion": "motion"}.get(last, "other")


# --------------------------------------------------------------------------------------------- templates
# Noun phrases nest: each hop turns the phrase of what it starts from ({np}) into the phrase of what it
# reaches. Times come first inside relative clauses ("that, at 1.4s, is left of ...") so that a nested
# phrase's own time never dangles at the end of an outer one.

PREDICATE_TEXT = {"left_of": "left of", "right_of": "right of", "above": "above", "below": "below", "near": "near"}
EVENT_NOUN = {"enter": "entrance", "leave": "exit", "collide": "collision"}

OBJECT_ANCHOR = "the {desc}"
OBJECT_SCOPE = " in scene {scene}"
EVENT_ANCHOR = "the {noun}{of}{at}"  # "the collision of the red circle and the blue square at 2.0s"

# hop -> (noun phrase of the result, question when the hop is last and the query reads the result directly)
NOUN = {
    "relation": "the object that, at {t}, is {pred} {np}",
    "participant": "the object that took part in {np}",
    "participant_enter": "the object that entered the scene{at}",
    "participant_leave": "the object that left the scene{at}",
    "participant_collide": "the object that collided with {other}{at}",
    "participant_collide_np": "the object that collided{at} with {other}",  # time first: {other} is nested
    "event_of": "the {noun}{at} of {np}",
    "next_event": "the event right after {np}",
    "prev_event": "the event right before {np}",
    "same_as": "the object in scene {scene} that is the same as {np}",
}
ASK = {
    "relation": "At {t}, which object is {pred} {np}?",
    "participant": "Which object took part in {np}?",
    "participant_enter": "Which object entered the scene{at}?",
    "participant_leave": "Which object left the scene{at}?",
    "participant_collide": "Which object collided with {other}{at}?",
    "participant_collide_np": "Which object collided{at} with {other}?",
    "next_event": "What happened right after {np}?",
    "prev_event": "What happened right before {np}?",
    "same_as": "Which object in scene {scene} is the same as {np}?",
    "motion": "At {t}, which direction does {np} move?",
    "event_of": "What is {np}?",  # not sampled by any family; kept so every program renders
}
ASK_QUERY = {"color": "What colour is {np}?", "shape": "What shape is {np}?"}

# Rationale: one sentence per hop, grounded on the objects the path actually visits.
SENTENCE = {
    "relation": "At {t}, the {dst} is {pred} the {src}.",
    "participant": "The {dst} is the object that {vp} at {t}.",
    "event": "At {t}, {clause}.",  # event_of: the event told from the object's side
    "next_event": "After {src_clause} at {t0}, the next event is at {t}: {clause}.",
    "prev_event": "Before {src_clause} at {t0}, the previous event is at {t}: {clause}.",
    "same_as": "The {src} in scene {src_scene} is the same object as the {dst} in scene {dst_scene}.",
    "motion": "At {t}, the {src} moves {dst}.",
}
CONCLUSION = "So the answer is {answer}."
