"""The QRA sampling stage: one scene graph in, its candidate question / rationale / answer samples out (CPU
actors). The candidates travel as a typed list column (:data:`~step_ray.qra.records.CANDIDATE_TYPE`).

Options, answer balancing and splits are corpus-wide and happen afterwards (:mod:`step_ray.qra.corpus`).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import networkx as nx
import pyarrow as pa

from step_ray.config import QraConfig
from step_ray.qra.records import CANDIDATE_TYPE
from step_ray.stage import Row, RowStage, schema as stage_schema
from step_ray.stsg import schema
from step_ray.utils import storage

#: STSG versions the QRA stage reads. stsg/2 keeps everything of stsg/1 and adds attribute changes and more
#: event kinds, so a stsg/1 graph is read as a stsg/2 graph without them.
STSG_VERSIONS = ("stsg/1", "stsg/2")


def video_seed(seed: int, video_id: str) -> int:
    """Per-video seed: independent of which actor or in which order a graph is processed."""
    return int.from_bytes(hashlib.sha256(f"{seed}:{video_id}".encode()).digest()[:4], "little")


def read_graph(path: str | Path) -> nx.MultiDiGraph:
    """An STSG file (local or on an object store) of any version in :data:`STSG_VERSIONS` (others:
    ``StsgFormatError`` with the reason)."""
    try:
        data = json.loads(storage.read_text(str(path)))
    except json.JSONDecodeError as err:
        raise schema.StsgFormatError(f"not JSON: {err}") from None
    if isinstance(data, dict) and isinstance(data.get("graph"), dict):
        version = data["graph"].get("schema_version")
        if version not in STSG_VERSIONS:
            raise schema.StsgFormatError(f"unsupported STSG schema version {version!r} (the QRA stage reads "
                                         f"{', '.join(STSG_VERSIONS)})")
        if version != schema.SCHEMA_VERSION and STSG_VERSIONS.index(version) < STSG_VERSIONS.index(schema.SCHEMA_VERSION):
            data["graph"]["schema_version"] = schema.SCHEMA_VERSION  # an older subset: valid as the newer one
    g = schema.from_json(data)
    if not g.graph.get("video_id"):
        raise schema.StsgFormatError("graph has no video_id")
    uri = str(g.graph.get("uri") or "")
    if uri and "://" not in uri and not Path(uri).is_absolute():
        # A relative uri (the synthetic corpus's ground truth: gt/x.stsg.json -> videos/x.mp4) is relative to
        # the graph's folder or the one above it; questions need a path that opens from anywhere.
        if storage.is_remote(str(path)):  # a graph on an object store: the video beside it there
            here_uri = str(path).rstrip("/").rsplit("/", 1)[0]
            for root_uri in (here_uri, here_uri.rsplit("/", 1)[0]):
                if "://" in root_uri and storage.exists(storage.join(root_uri, uri)):
                    g.graph["uri"] = storage.join(root_uri, uri)
                    break
            return g
        here = Path(path).resolve().parent
        for root in (here, here.parent):
            if (root / uri).is_file():
                g.graph["uri"] = str(root / uri)
                break
    return g


#: One row per graph: what sampling made of it, and its candidates.
OUTPUTS = stage_schema(
    ("video_id", pa.string()), ("stsg_path", pa.string()), ("status", pa.string()), ("error", pa.string()),
    ("samples", pa.int64()), ("reason", pa.string()), ("attempts", pa.int64()),
    ("rejected", pa.map_(pa.string(), pa.int64())), ("records", pa.list_(CANDIDATE_TYPE)),
)
RESULT_COLUMNS = tuple(n for n in OUTPUTS.names if n != "records")


@dataclass
class QraStage(RowStage):
    """Sampling: an STSG file -> its candidate samples (no options, balance or split yet)."""

    name: ClassVar[str] = "qra-sample"
    pool_path: ClassVar[str] = "qra.pool"
    row_key: ClassVar[str] = "video_id"
    inputs: ClassVar[pa.Schema] = stage_schema(("video_id", pa.string()), ("uri", pa.string()),
                                               ("input_error", pa.string()))
    outputs: ClassVar[pa.Schema] = OUTPUTS

    qra: QraConfig
    seed: int = field(default=0, metadata={"config": "run.seed"})

    def process_row(self, row: Row) -> Row:
        from step_ray.qra.sampler import sample_graph

        base = {"video_id": row["video_id"], "stsg_path": row["uri"]}
        if row["input_error"]:
            return self.error_row(base, row["input_error"])
        try:
            g = read_graph(row["uri"])
        except (schema.StsgFormatError, OSError, UnicodeDecodeError) as err:
            return self.error_row(base, f"unreadable STSG: {err}")
        records, stats = sample_graph(g, self.qra, video_seed(self.seed, g.graph["video_id"]))
        reason = None if records else stats.get("reason") or "no path passed the checks"
        return {**base, "status": "ok", "error": None, "samples": len(records), "reason": reason,
                "attempts": int(stats.get("attempts", 0)), "rejected": sorted(stats.get("rejected", {}).items()),
                "records": records}
