"""The STSG stage: one video in, one scene-graph file out (or an error row with the reason).

decode (sampled frames) -> shots and keyframes -> detection -> tracking per shot -> graph -> JSON.
Runs as a GPU actor on a cluster (the detector uses the actor's GPU), on CPU here.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, ClassVar

from step_ray.config import PoolConfig, StepRayConfig
from step_ray.pipeline.stage import Row, error_row
from step_ray.stsg import schema
from step_ray.stsg.build import build_stsg
from step_ray.stsg.merge import merge_fragments
from step_ray.stsg.tracks import Perceived

STSG_SUFFIX = ".stsg.json"


def stsg_path(out_dir: str | Path, video_id: str) -> Path:
    return Path(out_dir) / f"{video_id}{STSG_SUFFIX}"


def graph_counts(g) -> dict[str, int]:
    return {
        "clips": len(schema.nodes_of(g, "clip")),
        "objects": len(schema.nodes_of(g, "object")),
        "events": len(schema.nodes_of(g, "event")),
        "relations": len(schema.edges_of(g, "relation")),
        "edges": g.number_of_edges(),
    }


class StsgStage:
    name: ClassVar[str] = "stsg"
    columns: ClassVar[tuple[str, ...]] = (
        "video_id", "uri", "status", "error", "stsg_path", "skipped", "frames", "clips", "objects", "events",
        "relations", "edges", "seconds_decode", "seconds_detect", "seconds_graph",
    )

    def __init__(self, cfg: StepRayConfig, out_dir: str):
        self.cfg = cfg
        self.out_dir = Path(out_dir)
        self.detector = None

    def pool(self) -> PoolConfig:
        return self.cfg.perception.pool

    def setup(self) -> None:
        from step_ray.perception.detectors import build_detector
        from step_ray.utils.env import configure_ultralytics, resolve_device

        configure_ultralytics()
        self.device = resolve_device(self.cfg.perception.device)
        self.detector = build_detector(self.cfg.perception, self.device)

    def process(self, row: Row) -> Row:
        from step_ray.perception.tracking import track_clip
        from step_ray.video.decode import DecodeError, decode_sampled
        from step_ray.video.shots import split_shots

        video_id, uri = row["video_id"], row["uri"]
        out_path = stsg_path(self.out_dir, video_id)
        base = {"video_id": video_id, "uri": uri, "stsg_path": str(out_path)}
        if out_path.exists():  # idempotent re-run: a finished graph is kept (written atomically, so complete)
            try:
                return self._row(base, schema.read(out_path), skipped=True, frames=None, timings=(0.0, 0.0, 0.0))
            except schema.StsgFormatError:
                pass  # unreadable leftover of another version: rebuild it
        t0 = time.perf_counter()
        try:
            decoded = decode_sampled(uri, self.cfg.video)
        except DecodeError as err:
            return error_row(self.columns, base, str(err))
        t1 = time.perf_counter()
        clips = split_shots(decoded.frames, decoded.times, self.cfg.video)
        detections = self.detector.detect(decoded.frames)
        tracks = []
        for clip in clips:
            tracks += merge_fragments(track_clip(clip, decoded.frames, decoded.times, detections, self.detector.names,
                                                 self.cfg.perception.tracker, self.detector.source), self.cfg.stsg)
        t2 = time.perf_counter()
        perceived = Perceived(
            video_id=video_id, uri=uri, duration=decoded.duration, width=decoded.width, height=decoded.height,
            clips=clips, tracks=tracks,
            provenance={"detector": self.detector.source, "tracker": self.cfg.perception.tracker,
                        "decoder": decoded.backend, "sample_fps": self.cfg.video.sample_fps,
                        "device": self.device},
        )
        g = build_stsg(perceived, self.cfg.stsg, source="perception")
        schema.write(g, out_path)
        t3 = time.perf_counter()
        return self._row(base, g, skipped=False, frames=len(decoded.times), timings=(t1 - t0, t2 - t1, t3 - t2))

    def _row(self, base: Row, g: Any, skipped: bool, frames: int | None, timings: tuple[float, float, float]) -> Row:
        row = {c: None for c in self.columns}
        row.update(base)
        row.update(graph_counts(g))
        row.update(status="ok", error=None, skipped=skipped, frames=frames, seconds_decode=round(timings[0], 4),
                   seconds_detect=round(timings[1], 4), seconds_graph=round(timings[2], 4))
        return row
