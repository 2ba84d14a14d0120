"""AGQA compositional spatio-temporal QA (Grunde-McLaughlin et al., CVPR 2021; AGQA 2.0), read from its balanced
question files as distributed (``AGQA_balanced/train_balanced.txt``, ``test_balanced.txt``: JSON despite the
suffix)::

    {"YSKX3-9": {"question": "Was a blanket one of the things they were interacting with?", "answer": "yes",
                 "video_id": "YSKX3", "global": ["exists"], "local": "yes-no-o4-all-", "ans_type": "binary",
                 "steps": 1, "semantic": "object", "structural": "verify", "novel_comp": 0, "more_steps": 0,
                 "program": "Exists(blanket, ...)", "sg_grounding": {...}, ...}, ...}

``steps`` is the number of reasoning steps of the question's program: accuracy is reported by steps (1, 2,
>= 3) as the paper does, and by reasoning category (``global``: a question counts in each of its categories),
``semantic``, ``structural`` and answer type. AGQA's own notes say its ``ans_type`` labels were wrong in the first
release ("questions with the structure 'query' are open answer, while all others are binary"), so the answer
type is taken from ``structural``; the file's ``ans_type`` is kept in the fields as read.

AGQA is open-answer. Each question's ``options`` is the *answer vocabulary of its type*: every distinct answer
(after :func:`~step_ray.eval.answers.normalise_answer`) that questions of the same ``structural`` / ``semantic``
pair have, in a vocabulary source (by default the input file itself; pass the train file to keep test answers
out of it). Scoring by likelihood ranks that vocabulary; a generated answer is mapped onto it with the same
normaliser. A type with fewer than two answers in the source cannot be scored (one candidate is never wrong):
its questions carry the skip reason ``no_vocabulary``. The video is the whole Charades video
``ROOT/<video_id>.mp4``.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any, Mapping, Optional

from step_ray.eval.answers import normalise_answer
from step_ray.eval.benchmarks.common import (
    BenchmarkFormatError,
    BenchmarkQuestion,
    VideoResolver,
    iter_json_object,
    split_from_name,
)

NAME = "agqa"
REQUIRED = {"question": str, "answer": str, "video_id": str, "global": list, "steps": int, "semantic": str,
            "structural": str}
#: Annotations dropped as each question is read (the bulk of the file; not model inputs).
DROPPED = frozenset({"sg_grounding"})
#: Fields carried into the records as read (the scene-graph grounding is an annotation, not an input).
KEPT = ("global", "local", "ans_type", "semantic", "structural", "novel_comp", "more_steps", "nc_seq",
        "nc_sup", "nc_dur", "nc_objrel", "indirect", "i_obj", "i_rel", "i_act", "i_temp", "direct_equiv", "program")


def load(input_uri: str, videos: str, vocabulary_uri: Optional[str] = None) -> list[BenchmarkQuestion]:
    """The questions of an AGQA balanced file, in file order; options are the answer vocabulary of each
    question's type, built from ``vocabulary_uri`` (default: the input itself)."""
    items = read_questions(input_uri)
    vocab = answer_vocabulary(items if vocabulary_uri is None else read_questions(vocabulary_uri))
    resolver = VideoResolver(videos)
    split = split_from_name(input_uri)
    return [_question(key, item, vocab, split, resolver) for key, item in items.items()]


def read_questions(uri: str) -> dict[str, dict[str, Any]]:
    """question id -> question object (without its groundings), checked for the fields the adapter needs; the
    file is streamed, so memory holds the kept fields, not the file."""
    data: dict[str, dict[str, Any]] = {}
    for key, item in iter_json_object(uri, "AGQA questions"):
        if not isinstance(item, dict):
            raise BenchmarkFormatError(f"{uri}: question {key}: not an object")
        for name, kind in REQUIRED.items():
            value = item.get(name)
            if not isinstance(value, kind) or isinstance(value, bool):
                raise BenchmarkFormatError(f"{uri}: question {key}: {name} {value!r} is not {kind.__name__}")
        if item["steps"] < 1:
            raise BenchmarkFormatError(f"{uri}: question {key}: steps {item['steps']} is not >= 1")
        if key in data:
            raise BenchmarkFormatError(f"{uri}: question {key} appears twice")
        data[key] = {k: v for k, v in item.items() if k not in DROPPED}
    return data


def vocabulary_key(item: Mapping[str, Any]) -> str:
    """The question type an answer vocabulary is built for: ``structural/semantic`` (``query/object``)."""
    return f"{item['structural']}/{item['semantic']}"


def answer_type(item: Mapping[str, Any]) -> str:
    """``open`` for query questions, ``binary`` for the others (see the module docstring)."""
    return "open" if item["structural"] == "query" else "binary"


def answer_vocabulary(items: Mapping[str, Mapping[str, Any]]) -> dict[str, tuple[str, ...]]:
    """Question type -> its distinct answers (one spelling per normalised form, the first seen), sorted."""
    spellings: dict[str, dict[str, str]] = defaultdict(dict)
    for item in items.values():
        spellings[vocabulary_key(item)].setdefault(normalise_answer(item["answer"]), item["answer"])
    return {key: tuple(sorted(forms.values(), key=normalise_answer)) for key, forms in sorted(spellings.items())}


def _question(key: str, item: dict[str, Any], vocab: Mapping[str, tuple[str, ...]], split: Optional[str],
              resolver: VideoResolver) -> BenchmarkQuestion:
    options = vocab.get(vocabulary_key(item), ())
    wanted = normalise_answer(item["answer"])
    index = next((i for i, o in enumerate(options) if normalise_answer(o) == wanted), None)
    uri, reason = resolver.resolve(f"{item['video_id']}.mp4")
    if reason is None and len(options) < 2:
        # one candidate answer cannot be wrong under likelihood: such a question measures nothing
        reason = (f"no_vocabulary: {len(options)} distinct answer(s) of type {vocabulary_key(item)} in the "
                  "vocabulary source (want 2 or more)")
    return BenchmarkQuestion(
        id=str(key),
        benchmark=NAME,
        split=split,
        question=item["question"],
        options=options,
        answer=item["answer"],
        answer_index=index,
        video_id=item["video_id"],
        video_uri=uri,
        steps=item["steps"],
        open_answer=True,
        groups={"reasoning": tuple(str(g) for g in item["global"]), "semantic": (item["semantic"],),
                "structural": (item["structural"],), "answer_type": (answer_type(item),)},
        fields={"question_id": str(key), "vocabulary": vocabulary_key(item),
                **{k: item[k] for k in KEPT if k in item}},
        skip_reason=reason,
    )
