"""The QRA stage: one scene graph in, its candidate question / rationale / answer samples out (CPU actors).

Options, answer balancing and splits are corpus-wide and happen afterwards (:mod:`step_ray.qra.corpus`).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import ClassVar

import networkx as nx

from step_ray.config import PoolConfig, StepRayConfig
from step_ray.pipeline.stage import Row, error_row
from step_ray.stsg import schema

#: STSG versions the QRA stage reads. stsg/2 keeps everything of stsg/1 and adds attribute changes and more
#: event kinds, so a stsg/1 graph is read as a stsg/2 graph without them.
STSG_VERSIONS = ("stsg/1", "stsg/2")


def video_seed(seed: int, video_id: str) -> int:
    """Per-video seed: independent of which actor or in which order a graph is processed."""
    return int.from_bytes(hashlib.sha256(f"{seed}:{video_id}".encode()).digest()[:4], "little")


def read_graph(path: str | Path) -> nx.MultiDiGraph:
    """An STSG file of any version in :data:`STSG_VERSIONS` (others: ``StsgFormatError`` with the reason)."""
    try:
        data = json.loads(Path(path).read_text())
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
        here = Path(path).resolve().parent
        for root in (here, here.parent):
            if (root / uri).is_file():
                g.graph["uri"] = str(root / uri)
                break
    return g


class QraStage:
    name: ClassVar[str] = "qra"
    columns: ClassVar[tuple[str, ...]] = ("video_id", "stsg_path", "status", "error", "samples", "reason", "records",
                                          "stats")

    def __init__(self, cfg: StepRayConfig):
        self.cfg = cfg

    def pool(self) -> PoolConfig:
        return self.cfg.qra.pool

    def setup(self) -> None:
        pass  # pure Python on the graph: nothing heavy to load

    def process(self, row: Row) -> Row:
        from step_ray.qra.sampler import sample_graph

        base = {"video_id": row["video_id"], "stsg_path": row["stsg_path"]}
        try:
            g = read_graph(row["stsg_path"])
        except (schema.StsgFormatError, OSError, UnicodeDecodeError) as err:
            return error_row(self.columns, base, f"unreadable STSG: {err}")
        records, stats = sample_graph(g, self.cfg.qra, video_seed(self.cfg.run.seed, g.graph["video_id"]))
        reason = None if records else stats.get("reason") or "no path passed the checks"
        return {**base, "status": "ok", "error": None, "samples": len(records), "reason": reason,
                "records": json.dumps(records, sort_keys=True), "stats": json.dumps(stats, sort_keys=True)}
