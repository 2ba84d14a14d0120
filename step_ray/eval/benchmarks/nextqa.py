"""NExT-QA multiple choice (Xiao et al., CVPR 2021), read from its files as distributed.

* ``train.csv`` / ``val.csv`` / ``test.csv``: one question a row, columns
  ``video, frame_count, width, height, question, answer, qid, type, a0, a1, a2, a3, a4``; ``answer`` is the index
  (0-4) of the correct option among ``a0..a4``; ``type`` one of the codes below.
* ``map_vid_vidorID.json``: ``{"<video>": "<dir>/<video>"}``; the video is ``ROOT/<dir>/<video>.mp4`` (the
  VidOR layout NExT-QA's videos ship in). By default it is read from the CSV's folder, as distributed.

Questions are keyed ``<video>_<qid>``, as NExT-QA's own ``eval_mc.py`` keys its results file. Groups follow
``eval_mc.py``: ``TP`` (previous) is counted with ``TN`` (next) as one temporal group, and the first letter of the
code gives the Causal / Temporal / Descriptive totals. NExT-QA asks about the whole video: no clip span.
"""

from __future__ import annotations

import csv
import io
from typing import Optional

from step_ray.eval.benchmarks.common import (
    BenchmarkFormatError,
    BenchmarkQuestion,
    VideoResolver,
    read_input,
    read_json,
    sibling,
    split_from_name,
)

NAME = "nextqa"
OPTION_COLUMNS = ("a0", "a1", "a2", "a3", "a4")
COLUMNS = ("video", "frame_count", "width", "height", "question", "answer", "qid", "type") + OPTION_COLUMNS
MAP_FILE = "map_vid_vidorID.json"
#: Question type code -> the group it is scored in (eval_mc.py merges TP into TN).
TYPE_GROUPS = {"CW": "CW", "CH": "CH", "TN": "TN", "TP": "TN", "TC": "TC", "DC": "DC", "DL": "DL", "DO": "DO"}
#: The groups' names in NExT-QA's tables.
GROUP_NAMES = {"CW": "Why", "CH": "How", "TN": "Bef&Aft", "TC": "When", "DC": "Cnt", "DL": "Loc", "DO": "Other",
               "C": "Acc_C", "T": "Acc_T", "D": "Acc_D"}
FAMILIES = {"C": "causal", "T": "temporal", "D": "descriptive"}
INT_COLUMNS = ("frame_count", "width", "height", "answer", "qid")


def load(input_uri: str, videos: str, map_uri: Optional[str] = None) -> list[BenchmarkQuestion]:
    """The questions of a NExT-QA CSV, in file order, with their videos resolved under ``videos``."""
    rows = read_rows(input_uri)
    map_uri = map_uri or sibling(input_uri, MAP_FILE)
    video_map = read_map(map_uri)
    resolver = VideoResolver(videos)
    split = split_from_name(input_uri)
    return [_question(row, split, video_map, resolver) for row in rows]


def read_rows(uri: str) -> list[dict]:
    """The CSV's rows with the integer columns parsed; a malformed row is an error naming its line."""
    reader = csv.reader(io.StringIO(read_input(uri, "NExT-QA questions")))
    header = next(reader, [])
    missing = [c for c in COLUMNS if c not in header]
    if missing:
        raise BenchmarkFormatError(f"{uri}: not a NExT-QA question file: no column {', '.join(missing)}")
    rows, seen = [], set()
    for fields in reader:
        line = reader.line_num
        if not fields:
            continue
        if len(fields) != len(header):
            raise BenchmarkFormatError(f"{uri}: line {line}: {len(fields)} fields, want {len(header)}")
        row: dict = dict(zip(header, fields))
        for col in INT_COLUMNS:
            try:
                row[col] = int(row[col].strip())
            except ValueError:
                raise BenchmarkFormatError(f"{uri}: line {line}: {col} {row[col]!r} is not an integer") from None
        if row["type"] not in TYPE_GROUPS:
            raise BenchmarkFormatError(f"{uri}: line {line}: type {row['type']!r} is not a NExT-QA type code "
                                       f"({', '.join(TYPE_GROUPS)})")
        if not 0 <= row["answer"] < len(OPTION_COLUMNS):
            raise BenchmarkFormatError(f"{uri}: line {line}: answer {row['answer']} is not an option index 0-4")
        key = question_key(row["video"], row["qid"])
        if key in seen:
            raise BenchmarkFormatError(f"{uri}: line {line}: question {key} appears twice")
        seen.add(key)
        rows.append(row)
    return rows


def read_map(uri: str) -> dict[str, str]:
    """``map_vid_vidorID.json``: video id -> ``dir/id``."""
    data = read_json(uri, "NExT-QA video map")
    if not isinstance(data, dict) or not all(isinstance(v, str) for v in data.values()):
        raise BenchmarkFormatError(f"{uri}: not a {MAP_FILE} (want an object of video id -> 'dir/id')")
    return {str(k): v for k, v in data.items()}


def question_key(video: str, qid: int) -> str:
    """The id eval_mc.py gives a question: ``str(video) + '_' + str(qid)``."""
    return f"{video}_{qid}"


def _question(row: dict, split: Optional[str], video_map: dict[str, str],
              resolver: VideoResolver) -> BenchmarkQuestion:
    video = str(row["video"])
    options = tuple(str(row[c]) for c in OPTION_COLUMNS)
    code = row["type"]
    uri, reason = None, None
    if video not in video_map:
        reason = f"video_not_in_map: {video} has no entry in {MAP_FILE}"
    else:
        uri, reason = resolver.resolve(f"{video_map[video]}.mp4")
    return BenchmarkQuestion(
        id=question_key(video, row["qid"]),
        benchmark=NAME,
        split=split,
        question=str(row["question"]),
        options=options,
        answer=options[row["answer"]],
        answer_index=row["answer"],
        video_id=video,
        video_uri=uri,
        groups={"type": (TYPE_GROUPS[code],), "family": (code[0],)},
        fields={"video": video, "qid": row["qid"], "type": code, "frame_count": row["frame_count"],
                "width": row["width"], "height": row["height"]},
        skip_reason=reason,
    )
