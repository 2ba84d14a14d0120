"""The QRA sample record (a data contract: the trainer and the evaluator read it) and its Parquet / JSONL I/O.

A QRA output is a folder of parts, ``part-00000.parquet``, ``part-00001.parquet``, ... (each with a
``part-*.jsonl`` twin), every part holding all the samples of a fixed share of the videos, sorted by
(video_id, id); the ``split`` column says train / val / test. Readers go through :func:`qra_files` /
:func:`qra_dataset`, which accept such a folder (local or ``s3://`` / ``gs://``), a folder of an older
run with one ``qra.parquet``, or a single Parquet file, and read only the columns and split they need.

Version ``qra/3``, stored in the Parquet schema metadata; ``docs/qra_schema.md`` documents it. One row per
question. The first sixteen fields are those of ``qra/1`` with the same names and meaning (the trainer and the
evaluator read them); ``qra/2`` adds ``open_answer``, ``answer_type``, ``graph_source``, ``flags``,
``consistency`` and the split ``val``; ``qra/3`` adds ``times``, the moments the question's frames are taken
at. :func:`read_parquet` accepts ``qra/1`` and ``qra/2`` files (the added fields get their defaults; no
``times``: frames spread over the span).

==============  ==============  ===========================================================================
field           type            meaning
==============  ==============  ===========================================================================
id              str             stable hash of video_id + program + seed
video_id        str             the video
video_uri       str             where the video is (the graph's ``uri``)
start, end      float           seconds: the span of the clip(s) the path touches (frames are sampled here)
question        str             the question
options         list[str]       ``num_options`` distinct options, shuffled (yes / no questions: the two)
answer          str             the answer; equals ``options[answer_index]``
answer_index    int             index of the answer in ``options``
rationale       list[str]       one sentence per reasoning step, then the conclusion
steps           int             reasoning steps = ``len(rationale) - 1``
family          str             question family (:mod:`step_ray.qra.families`)
program         str             the program as canonical JSON (:class:`step_ray.qra.paths.Program`)
path_nodes      list[str]       the STSG node ids the path visits, in order
seed            int             the sampling seed
split           str             "train", "val" or "test", by a stable hash of the video id (no video in two)
open_answer     str             the answer without options (yes / no: with the fact it rests on)
answer_type     str             object, color, shape, direction, event, action, count or yesno
graph_source    str             the graph's ``source``: ground_truth or perception
flags           list[str]       set by the model-side filter (``inconsistent``, ``model_disagrees``)
consistency     float or null   the filter's agreement share over its n asks (null: not filtered)
times           list[float]     the moments (s) the path visits, in order: its relation / motion hops'
                                keyframes and its events' times; the model's frames are taken there
==============  ==============  ===========================================================================
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any, Iterable, Optional

import pyarrow as pa

from step_ray.utils import storage

QRA_SCHEMA_VERSION = "qra/3"
#: Versions :func:`read_parquet` reads (older ones get the added fields' defaults).
READABLE_VERSIONS = ("qra/1", "qra/2", "qra/3")

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
        pa.field("open_answer", pa.string(), nullable=False),
        pa.field("answer_type", pa.string(), nullable=False),
        pa.field("graph_source", pa.string(), nullable=False),
        pa.field("flags", pa.list_(pa.string()), nullable=False),
        pa.field("consistency", pa.float64(), nullable=True),
        pa.field("times", pa.list_(pa.float64()), nullable=False),
    ],
    metadata={"qra_schema_version": QRA_SCHEMA_VERSION},
)
FIELDS: tuple[str, ...] = tuple(QRA_SCHEMA.names)
#: The fields of ``qra/1``: the trainer and the evaluator read these; a record must have them.
CORE_FIELDS: tuple[str, ...] = FIELDS[:16]
SPLITS = ("train", "val", "test")
#: Private key of a candidate record: its option pools, dropped when the options are drawn.
POOLS = "_pools"


class QraFormatError(ValueError):
    """A record or file does not follow the QRA contract."""


def record_id(video_id: str, program_json: str, seed: int) -> str:
    """Stable across runs and machines (no Python ``hash``): 16 hex digits of SHA-1."""
    return hashlib.sha1(f"{video_id}\x1f{program_json}\x1f{seed}".encode()).hexdigest()[:16]


def split_of(video_id: str, test_fraction: float, val_fraction: float = 0.0) -> str:
    """'test' for a stable ``test_fraction`` share of video ids, 'val' for the next ``val_fraction``, else
    'train'. Depends on the id alone, so every sample of a video lands in the same split in every run and
    round, and a video's test membership does not change with ``val_fraction``."""
    h = int(hashlib.sha1(f"split\x1f{video_id}".encode()).hexdigest()[:12], 16) / float(16 ** 12)
    if h < test_fraction:
        return "test"
    return "val" if h < test_fraction + val_fraction else "train"


def with_defaults(rec: dict[str, Any]) -> dict[str, Any]:
    """A record with the ``qra/2`` and ``qra/3`` fields it lacks filled in (older files, hand-made rows)."""
    out = dict(rec)
    out.setdefault("open_answer", str(rec.get("answer", "")))
    out.setdefault("answer_type", "")
    out.setdefault("graph_source", "")
    out.setdefault("flags", [])
    out.setdefault("consistency", None)
    out.setdefault("times", [])
    return out


def check_record(rec: dict[str, Any]) -> list[str]:
    """Problems with a record (empty list: it follows the contract)."""
    problems = [f"missing field {f!r}" for f in CORE_FIELDS if f not in rec]
    problems += [f"unknown field {f!r}" for f in rec if f not in FIELDS]
    if problems:
        return problems
    opts = rec["options"]
    if len(set(opts)) != len(opts) or len(opts) < 2:
        problems.append("options are not two or more distinct values")
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
    rows = sorted((with_defaults(r) for r in records), key=lambda r: (r["video_id"], r["id"]))
    for r in rows:
        problems = check_record(r)
        if problems:
            raise QraFormatError(f"record {r.get('id')!r}: {'; '.join(problems)}")
    return pa.Table.from_pylist(rows, schema=QRA_SCHEMA)


#: The options a candidate's are drawn from (filled by the sampler, consumed by the corpus-wide finishing).
POOLS_TYPE = pa.struct([("answer_type", pa.string()), ("compositional", pa.list_(pa.string())),
                        ("random", pa.list_(pa.list_(pa.string())))])
#: Fields a record gets only when the corpus is finished (:mod:`step_ray.qra.corpus`).
FINISHED_FIELDS = ("options", "answer_index", "split", "flags", "consistency")
#: A candidate sample as the sampler makes it: the record without :data:`FINISHED_FIELDS`, plus its pools.
CANDIDATE_SCHEMA = pa.schema([f for f in QRA_SCHEMA if f.name not in FINISHED_FIELDS] + [pa.field(POOLS, POOLS_TYPE)])
CANDIDATE_TYPE = pa.struct(list(CANDIDATE_SCHEMA))

PART_PATTERN = re.compile(r"^part-(\d{5})\.parquet$")


def part_name(index: int, suffix: str = ".parquet") -> str:
    return f"part-{index:05d}{suffix}"


def write_parquet(records: Iterable[dict[str, Any]], path: str | Path) -> str:
    """Write records atomically as one Parquet file (schema :data:`QRA_SCHEMA`), locally or to an object
    store; the same records give the same bytes."""
    storage.write_parquet(str(path), to_table(records))
    return str(path)


def write_jsonl(records: Iterable[dict[str, Any]], path: str | Path) -> str:
    """The same rows as :func:`write_parquet`, one JSON object a line (sorted keys), written atomically."""
    rows = to_table(records).to_pylist()
    storage.write_text(str(path), "".join(json.dumps(r, sort_keys=True, ensure_ascii=False) + "\n" for r in rows))
    return str(path)


def write_part(records: Iterable[dict[str, Any]], folder: str, index: int) -> int:
    """One part of a QRA folder: ``part-NNNNN.parquet`` and its ``.jsonl`` twin; the row count."""
    records = list(records)
    write_parquet(records, storage.join(folder, part_name(index)))
    write_jsonl(records, storage.join(folder, part_name(index, ".jsonl")))
    return len(records)


def part_files(folder: str) -> list[str]:
    """The ``part-NNNNN.parquet`` files of a QRA folder, in order (empty if there are none)."""
    return [storage.join(folder, n) for n in storage.list_dir(folder) if PART_PATTERN.match(n)]


def remove_parts(folder: str, keep: Iterable[str] = ()) -> None:
    """Delete the parts (and their JSONL twins) of ``folder`` other than the file names in ``keep``."""
    keep = set(keep)
    for n in storage.list_dir(folder):
        stem = n[: -len(".jsonl")] + ".parquet" if n.endswith(".jsonl") else n
        if PART_PATTERN.match(stem) and stem not in keep:
            storage.delete_file(storage.join(folder, n))


def qra_files(path: str | Path) -> list[str]:
    """The Parquet files of a QRA output: a folder's parts, else its ``qra.parquet`` (runs before parts),
    else ``path`` itself if it is a file. ``FileNotFoundError`` (with the reason) when there is none."""
    path = str(path)
    if storage.is_dir(path):
        parts = part_files(path)
        if parts:
            return parts
        legacy = storage.join(path, "qra.parquet")
        if storage.exists(legacy):
            return [legacy]
        raise FileNotFoundError(f"{path}: no part-*.parquet (nor qra.parquet) there (run `step-ray qra` first)")
    if storage.exists(path):
        return [path]
    raise FileNotFoundError(f"{path}: no such QRA file or folder")


def qra_dataset(path: str | Path):
    """A ``pyarrow.dataset`` over the QRA files of ``path`` (see :func:`qra_files`): read what you need,
    e.g. ``qra_dataset(p).to_table(filter=pc.field("split") == "train")``."""
    import pyarrow.dataset as pads

    files = qra_files(path)
    fs, _ = storage.filesystem(files[0])
    return pads.dataset([storage.filesystem(f)[1] for f in files], filesystem=fs, format="parquet")


def check_schema(schema: pa.Schema, path: str | Path) -> None:
    """:class:`QraFormatError` unless ``schema`` (of a file at ``path``) is a QRA schema this code reads."""
    missing = [f for f in CORE_FIELDS if f not in schema.names]
    if missing:
        raise QraFormatError(f"{path}: not a QRA file (missing {', '.join(missing)})")
    version = (schema.metadata or {}).get(b"qra_schema_version", b"").decode()
    if version and version not in READABLE_VERSIONS:
        raise QraFormatError(f"{path}: QRA schema {version!r}, this reader knows {', '.join(READABLE_VERSIONS)}")


def read_parquet(path: str | Path, split: Optional[str] = None) -> list[dict[str, Any]]:
    """Records of a QRA output (folder of parts, ``qra.parquet``, or one file), in file order; only ``split``
    if given."""
    import pyarrow.compute as pc

    ds = qra_dataset(path)
    check_schema(ds.schema, path)
    present = [f for f in FIELDS if f in ds.schema.names]
    table = ds.to_table(columns=present, filter=(pc.field("split") == split) if split else None)
    return [with_defaults(r) for r in table.to_pylist()]
