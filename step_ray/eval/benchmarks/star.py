"""STAR situated reasoning (Wu et al., NeurIPS 2021), read from ``STAR_{train,val,test}.json`` as distributed.

Each file is a JSON list of questions::

    {"question_id": "Interaction_T1_13", "question": "...", "video_id": "6H78U", "start": 11.1, "end": 19.6,
     "answer": "The closet/cabinet.", "question_program": [...],
     "choices": [{"choice_id": 0, "choice": "The closet/cabinet.", "choice_program": [...]}, ...],
     "situations": {...}}

The question type (Interaction, Sequence, Prediction, Feasibility) and template (``T1`` ...) are the first two
parts of ``question_id``, as STAR's own tools split them. The options are the ``choices`` in ``choice_id``
order; the answer is the choice whose text equals ``answer`` (STAR's program executor matches it the same way).
The test split has no ``answer``: its questions are unlabelled (predicted, not scored). The clip is
``start``..``end`` seconds of the Charades video ``ROOT/<video_id>.mp4``. Situation graphs and programs are not
carried into the records (they are annotations, not inputs a model may see).
"""

from __future__ import annotations

import math
from typing import Any, Optional

from step_ray.eval.benchmarks.common import (
    BenchmarkFormatError,
    BenchmarkQuestion,
    VideoResolver,
    read_json,
    split_from_name,
)

NAME = "star"
QUESTION_TYPES = ("Interaction", "Sequence", "Prediction", "Feasibility")


def load(input_uri: str, videos: str) -> list[BenchmarkQuestion]:
    """The questions of a STAR JSON file, in file order, with their videos resolved under ``videos``."""
    data = read_json(input_uri, "STAR questions")
    if not isinstance(data, list):
        raise BenchmarkFormatError(f"{input_uri}: not a STAR question file (want a JSON list of questions)")
    resolver = VideoResolver(videos)
    split = split_from_name(input_uri)
    out, seen = [], set()
    for n, item in enumerate(data):
        q = _question(input_uri, n, item, split, resolver)
        if q.id in seen:
            raise BenchmarkFormatError(f"{input_uri}: question {q.id} appears twice")
        seen.add(q.id)
        out.append(q)
    return out


def _need(uri: str, n: int, item: Any, key: str, kind: type | tuple[type, ...]) -> Any:
    where = f"{uri}: question {n}" + (f" ({item.get('question_id')})" if isinstance(item, dict) else "")
    if not isinstance(item, dict) or key not in item:
        raise BenchmarkFormatError(f"{where}: no field {key!r}")
    value = item[key]
    if not isinstance(value, kind) or isinstance(value, bool):
        raise BenchmarkFormatError(f"{where}: {key} {value!r} is not {getattr(kind, '__name__', kind)}")
    return value


def _question(source: str, n: int, item: Any, split: Optional[str], resolver: VideoResolver) -> BenchmarkQuestion:
    qid = _need(source, n, item, "question_id", str)
    parts = qid.split("_")
    if parts[0] not in QUESTION_TYPES or len(parts) < 3:
        raise BenchmarkFormatError(f"{source}: question {qid}: id does not start with a STAR question type "
                                   f"({', '.join(QUESTION_TYPES)}) and a template (Interaction_T1_13)")
    qtype, template = parts[0], f"{parts[0]}_{parts[1]}"
    question = _need(source, n, item, "question", str)
    video_id = _need(source, n, item, "video_id", str)
    start = float(_need(source, n, item, "start", (int, float)))
    end = float(_need(source, n, item, "end", (int, float)))
    choices = _need(source, n, item, "choices", list)
    if not choices or not all(isinstance(c, dict) and isinstance(c.get("choice"), str)
                              and isinstance(c.get("choice_id"), int) for c in choices):
        raise BenchmarkFormatError(f"{source}: question {qid}: choices must be objects with choice_id and choice")
    ordered = sorted(choices, key=lambda c: c["choice_id"])
    if [c["choice_id"] for c in ordered] != list(range(len(ordered))):
        raise BenchmarkFormatError(f"{source}: question {qid}: choice_id values are not 0..{len(ordered) - 1}")
    options = tuple(c["choice"] for c in ordered)
    answer = item.get("answer")
    answer_index = None
    if answer is not None:
        if not isinstance(answer, str) or answer not in options:
            raise BenchmarkFormatError(f"{source}: question {qid}: answer {answer!r} is not one of its choices")
        answer_index = options.index(answer)
    uri, reason = resolver.resolve(f"{video_id}.mp4")
    if reason is None and not (math.isfinite(start) and math.isfinite(end) and 0 <= start < end):
        reason = f"bad_span: start {start} s, end {end} s"
    return BenchmarkQuestion(
        id=qid,
        benchmark=NAME,
        split=split,
        question=question,
        options=options,
        answer=answer,
        answer_index=answer_index,
        video_id=video_id,
        video_uri=uri,
        start=start,
        end=end,
        groups={"type": (qtype,), "template": (template,)},
        fields={"question_id": qid, "template": template},
        skip_reason=reason,
    )
