"""The STSG stages: one video in, one scene-graph file out (or an error row with the reason).

Two stages, chained on Ray Data:

- :class:`StsgStage` (perception; a GPU actor on a cluster): the video streams through in chunks of sampled
  frames, so memory does not grow with its length: decode chunk -> detect (batched) -> per frame: shot cut?
  (close the shot: keyframes by clustering, its tracks merged) -> track -> ... -> (optional) semantics parsing
  of the keyframes by the Video-LLM. Its row carries the tracks and parsed facts as compact JSON.
- :class:`GraphStage` (a CPU actor): builds the graph from that row and writes it, so GPU actors never wait on
  graph building and JSON writing.

Outputs are named ``{video_id}.stsg.json`` and carry a key: the video's content fingerprint plus a hash of
every setting that shapes the graph. A re-run skips a video whose graph has the same key (the perception
stage checks before decoding anything), and rebuilds it if the video or the settings changed.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from typing import Any, ClassVar

from step_ray.config import PoolConfig, StepRayConfig
from step_ray.pipeline.stage import Row, error_row
from step_ray.stsg import schema
from step_ray.stsg.build import build_stsg
from step_ray.stsg.merge import merge_fragments
from step_ray.stsg.tracks import Perceived, Track, perceived_from_json, perceived_to_json
from step_ray.utils import storage

STSG_SUFFIX = ".stsg.json"


def stsg_path(out_dir: str, video_id: str) -> str:
    return storage.join(str(out_dir), f"{video_id}{STSG_SUFFIX}")


def graph_counts(g) -> dict[str, int]:
    return {
        "clips": len(schema.nodes_of(g, "clip")),
        "keyframes": len(schema.nodes_of(g, "keyframe")),
        "objects": len(schema.nodes_of(g, "object")),
        "events": len(schema.nodes_of(g, "event")),
        "relations": len(schema.edges_of(g, "relation")),
        "edges": g.number_of_edges(),
    }


def settings_hash(cfg: StepRayConfig) -> str:
    """Hash of the settings a graph depends on (decoding, perception, graph building, semantics parsing)."""
    parts = {name: dataclasses.asdict(getattr(cfg, name)) for name in ("video", "perception", "stsg", "semantics")}
    for name in ("perception", "stsg"):  # how many actors ran it does not change a graph
        parts[name].pop("pool", None)
    parts["video"].pop("decode_threads", None)  # nor how many threads decoded the frames
    if cfg.semantics.enabled:
        parts["model"] = cfg.model.name_or_path
    parts["schema"] = schema.SCHEMA_VERSION
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


RESULT_COLUMNS: tuple[str, ...] = (
    "video_id", "uri", "status", "error", "stsg_path", "key", "skipped", "decoder", "frames", "duration",
    "clips", "keyframes", "objects", "events", "relations", "edges", "parse_samples", "parse_malformed",
    "parse_facts", "seconds_decode", "seconds_detect", "seconds_track", "seconds_parse", "seconds_graph",
)


class StsgStage:
    """Perception: video -> tracks (+ parsed facts) as a compact row; see the module docstring."""

    name: ClassVar[str] = "stsg"
    columns: ClassVar[tuple[str, ...]] = RESULT_COLUMNS + ("perceived",)

    def __init__(self, cfg: StepRayConfig, out_dir: str):
        self.cfg = cfg
        self.out_dir = str(out_dir)
        self.settings = settings_hash(cfg)
        self.detector = None
        self.parser = None

    def pool(self) -> PoolConfig:
        return self.cfg.perception.pool

    def setup(self) -> None:
        from step_ray.perception.detectors import build_detector
        from step_ray.utils.env import configure_ultralytics, limit_threads, resolve_device

        configure_ultralytics()
        threads = limit_threads(self.pool().num_cpus)
        if self.cfg.video.decode_threads == 0:  # "one per core the actor may use"
            self.cfg.video = dataclasses.replace(self.cfg.video, decode_threads=threads)
        self.device = resolve_device(self.cfg.perception.device)
        self.detector = build_detector(self.cfg.perception, self.device)
        if self.cfg.semantics.enabled:
            from step_ray.perception.semantics import SemanticsParser

            self.parser = SemanticsParser(self.cfg.semantics, self.cfg.model, self.device, seed=self.cfg.run.seed)
            self.parser.setup()

    def process(self, row: Row) -> Row:
        from step_ray.video.decode import DecodeError

        video_id, uri = row["video_id"], row["uri"]
        out_path = stsg_path(self.out_dir, video_id)
        base = {"video_id": video_id, "uri": uri, "stsg_path": out_path}
        try:
            key = f"{storage.content_key(uri)[:16]}-{self.settings}"
        except (OSError, ValueError) as err:
            return error_row(self.columns, base, f"cannot read the file: {err}")
        base["key"] = key
        done = self._finished(out_path, key)
        if done is not None:  # idempotent re-run: this video with these settings is done (written atomically)
            return result_row(self.columns, base, done, skipped=True, stats={})
        try:
            with storage.local_file(uri) as local:
                perceived, stats = self._perceive(video_id, uri, local)
                parsed = None
                if self.parser is not None:
                    from step_ray.perception.semantics import semantics_to_json, summary_stats

                    t0 = time.perf_counter()
                    parsed = self.parser.parse(perceived, local, self.cfg.video)
                    stats.update(summary_stats(parsed))
                    stats["seconds_parse"] = time.perf_counter() - t0
                    perceived.provenance["parser"] = {"prompt": self.cfg.semantics.prompt, **parsed.stats,
                                                      "model": self.cfg.semantics.model_path or self.cfg.model.name_or_path}
        except DecodeError as err:
            return error_row(self.columns, base, str(err))
        row = {c: None for c in self.columns}
        row.update(base, status="ok", error=None, skipped=False)
        row.update({k: round(v, 4) if isinstance(v, float) else v for k, v in stats.items() if k in row})
        row["perceived"] = json.dumps({"perceived": perceived_to_json(perceived),
                                       "semantics": semantics_to_json(parsed) if parsed is not None else None})
        return row

    def _finished(self, out_path: str, key: str):
        try:
            if storage.exists(out_path):
                g = schema.loads(storage.read_text(out_path))
                return g if g.graph.get("key") == key else None
        except (schema.StsgFormatError, OSError):
            pass  # unreadable leftover or another schema version: rebuild it
        return None

    def _perceive(self, video_id: str, uri: str, local: str) -> tuple[Perceived, dict[str, Any]]:
        """Stream the video through splitting, detection and tracking; keep only features, boxes, tracks."""
        from step_ray.perception.tracking import ClipTracker
        from step_ray.video.decode import open_sampled
        from step_ray.video.shots import ShotSplitter

        stats = {"seconds_decode": 0.0, "seconds_detect": 0.0, "seconds_track": 0.0, "frames": 0}
        cfg = self.cfg
        t0 = time.perf_counter()
        stream = open_sampled(local, cfg.video)
        splitter = ShotSplitter(cfg.video)
        tracks: list[Track] = []
        tracker: ClipTracker | None = None
        last_time = 0.0
        chunks = iter(stream)
        while True:
            try:
                chunk = next(chunks)
            except StopIteration:
                break
            t1 = time.perf_counter()
            stats["seconds_decode"] += t1 - t0
            detections = self.detector.detect(chunk.frames)
            t2 = time.perf_counter()
            stats["seconds_detect"] += t2 - t1
            for frame, t, dets in zip(chunk.frames, chunk.times, detections):
                if splitter.add(frame, t) and tracker is not None:  # a cut: the previous shot is closed
                    tracks += merge_fragments(tracker.tracks(), cfg.stsg)
                    tracker = None
                if tracker is None:
                    tracker = ClipTracker(len(splitter.clips), self.detector.names, cfg.perception.tracker,
                                          self.detector.source)
                tracker.update(frame, t, dets)
                stats["frames"] += 1
                last_time = t
            t0 = time.perf_counter()
            stats["seconds_track"] += t0 - t2
        splitter.finish_shot()
        if tracker is not None:
            tracks += merge_fragments(tracker.tracks(), cfg.stsg)
        info = stream.info
        stats["decoder"] = info.backend
        duration = info.duration or last_time
        perceived = Perceived(
            video_id=video_id, uri=uri, duration=duration, width=info.width, height=info.height,
            clips=splitter.clips, tracks=tracks,
            provenance={"detector": self.detector.source, "tracker": cfg.perception.tracker, "decoder": info.backend,
                        "sample_fps": cfg.video.sample_fps, "keyframes": "kmeans(hsv+edges+time)",
                        "device": self.device},
        )
        stats["duration"] = round(duration, 3)
        return perceived, stats


def result_row(columns: tuple[str, ...], base: Row, g: Any, skipped: bool, stats: dict[str, Any]) -> Row:
    row = {c: None for c in columns}
    row.update(base)
    row.update(graph_counts(g))
    row.update(status="ok", error=None, skipped=skipped)
    for k, v in stats.items():
        if k in row:
            row[k] = round(v, 4) if isinstance(v, float) else v
    if skipped:
        row["duration"] = g.graph.get("duration")
    return row


class GraphStage:
    """Graph building: a perception row -> the STSG written to ``stsg_path``; error and skipped rows pass."""

    name: ClassVar[str] = "stsg-graph"
    columns: ClassVar[tuple[str, ...]] = RESULT_COLUMNS

    def __init__(self, cfg: StepRayConfig, out_dir: str):
        self.cfg = cfg

    def pool(self) -> PoolConfig:
        return self.cfg.stsg.pool

    def setup(self) -> None:
        from step_ray.utils.env import limit_threads

        limit_threads(self.pool().num_cpus)

    def process(self, row: Row) -> Row:
        payload = row.get("perceived")
        if row["status"] != "ok" or not payload:
            return {c: row.get(c) for c in self.columns}
        t0 = time.perf_counter()
        data = json.loads(payload)
        semantics = None
        if data["semantics"] is not None:
            from step_ray.perception.semantics import semantics_from_json

            semantics = semantics_from_json(data["semantics"])
        g = build_stsg(perceived_from_json(data["perceived"]), self.cfg.stsg, source="perception", semantics=semantics)
        g.graph["key"] = row["key"]
        schema.write(g, row["stsg_path"])
        stats = {c: row[c] for c in self.columns if c.startswith(("seconds_", "parse_")) or c in ("decoder", "frames", "duration")}
        stats["seconds_graph"] = time.perf_counter() - t0
        base = {k: row[k] for k in ("video_id", "uri", "stsg_path", "key")}
        return result_row(self.columns, base, g, skipped=False, stats={k: v for k, v in stats.items() if v is not None})


def stsg_chain(out_dir: str) -> list[tuple[type, dict]]:
    """The two stages that turn video rows into written graphs, for :func:`step_ray.pipeline.runners.run_chain`."""
    return [(StsgStage, {"out_dir": str(out_dir)}), (GraphStage, {"out_dir": str(out_dir)})]
