"""step-ray's own QRA questions (``step-ray qra`` output) as benchmark records, so the held-out split is scored by
the same actor pool, outputs and intervals as the public benchmarks.

The input is a ``step-ray qra`` output folder (its ``part-*.parquet``), an older run's ``qra.parquet`` (or
its folder), or one Parquet file, locally or on an object store (docs/qra_schema.md); the questions are those of one split
(``test`` by default), in id order. Each record carries its video's URI as the QRA wrote it (``--videos`` is not
needed; given, it is the folder a relative ``video_uri`` is resolved under), its clip span, and the moments the
question names (``times``: frames are taken there, as in training). Groups: ``family`` (the reasoning-path
family); ``steps`` as sampled, reported 1 / 2 / 3+.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

from step_ray.eval.benchmarks.common import BenchmarkFormatError, BenchmarkQuestion, VideoResolver
from step_ray.utils import storage

NAME = "qra"
REQUIRED = ("id", "video_id", "video_uri", "question", "options", "answer_index", "steps", "family", "split")
#: QRA fields kept in the predictions table beside the record (the rest are training material).
KEPT = ("program", "graph_source")


def qra_file(path: str) -> str:
    """A QRA output: a folder of parts (``part-*.parquet``; local or ``s3://`` / ``gs://``), a folder holding an
    older run's ``qra.parquet``, or one Parquet file; :class:`BenchmarkFormatError` when there is none."""
    from step_ray.qra.records import qra_files

    try:
        qra_files(path)
    except FileNotFoundError as err:
        raise BenchmarkFormatError(f"--input {err}") from None
    return str(path)


def read_rows(path: str | Path, split: str = "test") -> list[dict[str, Any]]:
    """The QRA rows of ``split`` in a stable order (by id), from a QRA output (see :func:`qra_file`): only its
    parts are read, never the results / errors tables or the card beside them."""
    import pyarrow as pa
    import pyarrow.compute as pc

    from step_ray.qra.records import qra_dataset

    try:
        ds = qra_dataset(path)
        if "split" not in ds.schema.names:
            raise BenchmarkFormatError(f"{path}: not a QRA file: no column split")
        table = ds.to_table(filter=pc.field("split") == split)
    except (OSError, pa.ArrowInvalid) as err:
        raise BenchmarkFormatError(f"{path}: not a QRA Parquet file ({err})") from None
    return sorted(table.to_pylist(), key=lambda r: str(r["id"]))


def load(input_uri: str, videos: Optional[str] = None, split: str = "test") -> list[BenchmarkQuestion]:
    """The ``split`` questions of a QRA output as records (see the module docstring)."""
    path = qra_file(input_uri)
    rows = read_rows(path, split)
    if not rows:
        raise BenchmarkFormatError(f"{path}: no questions in split {split!r}")
    missing = [c for c in REQUIRED if c not in rows[0]]
    if missing:
        raise BenchmarkFormatError(f"{path}: not a QRA file: no column {', '.join(missing)}")
    resolver = VideoResolver(videos) if videos else None
    return [_question(r, split, resolver) for r in rows]


def _question(row: dict[str, Any], split: str, resolver: Optional[VideoResolver]) -> BenchmarkQuestion:
    uri = str(row["video_uri"])
    if resolver is not None and not storage.is_remote(uri) and not Path(uri).is_absolute():
        found, reason = resolver.resolve(uri)
    elif storage.is_remote(uri) or Path(uri).is_absolute():
        try:
            found, reason = (uri, None) if storage.exists(uri) else (None, f"video_missing: {uri}")
        except OSError as err:
            found, reason = None, f"video_unreachable: {uri}: {err}"
    else:
        found, reason = None, f"video_missing: {uri} is relative and no --videos folder was given"
    options = tuple(str(o) for o in row["options"])
    index = int(row["answer_index"])
    times = row.get("times")
    return BenchmarkQuestion(
        id=str(row["id"]),
        benchmark=NAME,
        split=split,
        question=str(row["question"]),
        options=options,
        answer=options[index],
        answer_index=index,
        video_id=str(row["video_id"]),
        video_uri=found,
        start=row.get("start"),
        end=row.get("end"),
        times=tuple(float(t) for t in times) if times else None,
        steps=int(row["steps"]),
        groups={"family": (str(row["family"]),)},
        fields={k: row[k] for k in KEPT if k in row},
        skip_reason=reason,
    )
