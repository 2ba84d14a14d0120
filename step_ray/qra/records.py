"""The QRA sample record (a data contract: the trainer and the evaluator read it) and its Parquet I/O.

Version ``qra/1``, stored in the Parquet schema metadata. One row per question:

==============  ==============  ===========================================================================
field           type            meaning
==============  ==============  ===========================================================================
id              str             stable hash of video_id + program + seed
video_id        str             the video
video_uri       str             where the video is (the graph's ``uri``)
start, end      float           seconds: the span of the clip(s) the path touches (frames are sampled here)
question        str             the question
options         list[str]       ``num_options`` distinct options, shuffled
answer          str             the answer; equals ``options[answer_index]``
answer_index    int             index of the answer in ``options``
rationale       list[str]       one sentence per reasoning step, then the conclusion
steps           int             reasoning steps (edges walked) = ``len(rationale) - 1``
family          str             question family (:mod:`step_ray.qra.families`)
program         str             the program as canonical JSON (:class:`step_ray.qra.paths.Program`)
path_nodes      list[str]       the STSG node ids the path visits, in order
seed            int             the sampling seed
split           str             "train" or "test", by a stable hash of the video id (no video in both)
==============  ==============  ===========================================================================
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path
from typing import Any, Iterable

import pyarrow as pa
import pyarrow.parquet as pq

QRA_SCHEMA_VERSION = "qra/1"

QRA_SCHEMA = pa.schema(
    [
        pa.field("id", pa.string(), nullable=False),
        pa.field("video_id", pa.string(), nullable=False),
        pa.field("video_uri", pa.string(), nullable=False),
        pa.field("start", pa.float64(), nullable=False),
        pa.field("end", pa.float64(), nullable=False),
        pa.field("question", pa.string(), nullable=False),
        pa.field("options", pa.list_(pa.string()), nullable=False),
        pa.field("answer", pa.string(), nullable=False),
        pa.field("answer_index", pa.int64(), nullable=False),
        pa.field("rationale", pa.list_(pa.string()), nullable=False),
        pa.field("steps", pa.int64(), nullable=False),
        pa.field("family", pa.string(), nullable=False),
        pa.field("program", pa.string(), nullable=False),
        pa.field("path_nodes", pa.list_(pa.string()), nullable=False),
        pa.field("seed", pa.int64(), nullable=False),
        pa.field("split", pa.string(), nullable=False),
    ],
    metadata={"qra_schema_version": QRA_SCHEMA_VERSION},
)
FIELDS: tuple[str, ...] = tuple(QRA_SCHEMA.names)
SPLITS = ("train", "test")


class QraFormatError(ValueError):
    """A record or file does not follow the QRA contract."""


def record_id(video_id: str, program_json: str, seed: int) -> str:
    """Stable across runs and machines (no Python ``hash``): 16 hex digits of SHA-1."""
    return hashlib.sha1(f"{video_id}\x1f{program_json}\x1f{seed}".encode()).hexdigest()[:16]


def split_of(video_id: str, val_fraction: float) -> str:
    """'test' for a stable ``val_fraction`` share of video ids, else 'train'. Depends on the id alone, so every
    sample of a video lands in the same split in every run and round."""
    h = int(hashlib.sha1(f"split\x1f{video_id}".encode()).hexdigest()[:12], 16) / float(16 ** 12)
    return "test" if h < val_fraction else "train"


def check_record(rec: dict[str, Any]) -> list[str]:
    """Problems with a record (empty list: it follows the contract)."""
    problems = [f"missing field {f!r}" for f in FIELDS if f not in rec]
    problems += [f"unknown field {f!r}" for f in rec if f not in FIELDS]
    if problems:
        return problems
    opts = rec["options"]
    if len(set(opts)) != len(opts):
        problems.append("options are not distinct")
    if not (isinstance(rec["answer_index"], int) and 0 <= rec["answer_index"] < len(opts)):
        problems.append(f"answer_index {rec['answer_index']!r} out of range")
    elif opts[rec["answer_index"]] != rec["answer"]:
        problems.append("options[answer_index] != answer")
    if rec["steps"] < 1 or len(rec["rationale"]) != rec["steps"] + 1:
        problems.append(f"steps={rec['steps']} but {len(rec['rationale'])} rationale sentences (want steps + 1)")
    if rec["split"] not in SPLITS:
        problems.append(f"split {rec['split']!r} not in {SPLITS}")
    if not rec["start"] <= rec["end"]:
        problems.append(f"start {rec['start']} > end {rec['end']}")
    return problems


def to_table(records: Iterable[dict[str, Any]]) -> pa.Table:
    """Records -> a table with :data:`QRA_SCHEMA`, rows sorted by (video_id, id) so that equal sets of records
    give equal files whatever order they were produced in (Ray Data does not keep order)."""
    rows = sorted(records, key=lambda r: (r["video_id"], r["id"]))
    for r in rows:
        problems = check_record(r)
        if problems:
            raise QraFormatError(f"record {r.get('id')!r}: {'; '.join(problems)}")
    return pa.Table.from_pylist(rows, schema=QRA_SCHEMA)


def write_parquet(records: Iterable[dict[str, Any]], path: str | Path) -> Path:
    """Write records atomically (a temp file in the same directory, then a rename): a reader never sees a
    half-written file, and an interrupted run leaves the old file or none."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    table = to_table(records)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        pq.write_table(table, tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def read_parquet(path: str | Path) -> list[dict[str, Any]]:
    """Records of a QRA Parquet file (or directory of files), in file order."""
    table = pq.read_table(path)
    missing = [f for f in FIELDS if f not in table.column_names]
    if missing:
        raise QraFormatError(f"{path}: not a QRA file (missing {', '.join(missing)})")
    version = (table.schema.metadata or {}).get(b"qra_schema_version", b"").decode()
    if version and version != QRA_SCHEMA_VERSION:
        raise QraFormatError(f"{path}: QRA schema {version!r}, this reader knows {QRA_SCHEMA_VERSION!r}")
    return table.select(list(FIELDS)).to_pylist()
