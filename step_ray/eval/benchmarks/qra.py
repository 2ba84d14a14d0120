"""step-ray's own QRA questions (``step-ray qra`` output) as benchmark records, so the held-out split is scored by
the same actor pool, outputs and intervals as the public benchmarks.

The input is ``qra.parquet`` or the folder holding it (docs/qra_schema.md); the questions are those of one split
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


def qra_file(path: str) -> Path:
    """``qra.parquet`` itself, or the one in the folder ``path``."""
    p = Path(path)
    if p.is_dir():
        p = p / "qra.parquet"
    if not p.is_file():
        raise BenchmarkFormatError(f"--input {path}: no qra.parquet there (run `step-ray qra` first)")
    return p


def read_rows(path: str | Path, split: str = "test") -> list[dict[str, Any]]:
    """The QRA rows of ``split`` in a stable order (by id), from a Parquet file or a folder of Parquet parts."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.dataset as pads

    path = Path(path)
    # A folder holds the QRA parts beside other files (the card, stats): read only its Parquet files.
    source = sorted(str(p) for p in path.rglob("*.parquet")) if path.is_dir() else str(path)
    try:
        table = pads.dataset(source, format="parquet").to_table()
    except (OSError, pa.ArrowInvalid) as err:
        raise BenchmarkFormatError(f"{path}: not a QRA Parquet file ({err})") from None
    if "split" not in table.column_names:
        raise BenchmarkFormatError(f"{path}: not a QRA file: no column split")
    table = table.filter(pc.equal(table["split"], split))
    return sorted(table.to_pylist(), key=lambda r: str(r["id"]))


def load(input_uri: str, videos: Optional[str] = None, split: str = "test") -> list[BenchmarkQuestion]:
    """The ``split`` questions of a QRA file as records (see the module docstring)."""
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
