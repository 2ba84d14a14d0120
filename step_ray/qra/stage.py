"""The QRA stage: one scene graph in, its question / rationale / answer samples out (CPU actors)."""

from __future__ import annotations

import hashlib
import json
from typing import ClassVar

from step_ray.config import PoolConfig, StepRayConfig
from step_ray.pipeline.stage import Row, error_row
from step_ray.stsg import schema


def video_seed(seed: int, video_id: str) -> int:
    """Per-video seed: independent of which actor or in which order a graph is processed."""
    return int.from_bytes(hashlib.sha256(f"{seed}:{video_id}".encode()).digest()[:4], "little")


class QraStage:
    name: ClassVar[str] = "qra"
    columns: ClassVar[tuple[str, ...]] = ("video_id", "stsg_path", "status", "error", "samples", "reason", "records")

    def __init__(self, cfg: StepRayConfig):
        self.cfg = cfg

    def pool(self) -> PoolConfig:
        return self.cfg.qra.pool

    def setup(self) -> None:
        pass  # pure Python on the graph: nothing heavy to load

    def process(self, row: Row) -> Row:
        from step_ray.qra.sampler import sample_qra

        base = {"video_id": row["video_id"], "stsg_path": row["stsg_path"]}
        try:
            g = schema.read(row["stsg_path"])
        except (schema.StsgFormatError, OSError, UnicodeDecodeError) as err:
            return error_row(self.columns, base, f"unreadable STSG: {err}")
        records, stats = sample_qra(g, self.cfg.qra, video_seed(self.cfg.run.seed, g.graph["video_id"]))
        reason = None if records else stats.get("reason") or "no path passed the checks"
        return {**base, "status": "ok", "error": None, "samples": len(records), "reason": reason,
                "records": json.dumps(records, sort_keys=True)}
