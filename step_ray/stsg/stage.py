"""The STSG stages: one video in, one scene-graph file out (or an error row with the reason).

Two stages (:mod:`step_ray.stage`), chained on Ray Data by :func:`stsg_stages`:

- :class:`PerceptionStage` (``stsg-perception``; a GPU actor on a cluster): the video streams through in
  chunks of sampled frames, so memory does not grow with its length: decode chunk -> detect (batched) -> per
  frame: shot cut? (close the shot: keyframes by clustering, its tracks merged) -> track -> ... ->
  (optional) semantics parsing of the keyframes by the Video-LLM. Its row carries the tracks (a
  :class:`~step_ray.perception.tracks.Perceived` struct) and the parsed facts (a
  :class:`~step_ray.perception.semantics.SemanticsRecord` struct).
- :class:`GraphStage` (``stsg-graph``; a CPU actor): builds the graph from that row and writes it, so GPU
  actors never wait on graph building and JSON writing.

Outputs are named ``{video_id}.stsg.json`` and carry a key: the video's content fingerprint plus
:func:`settings_key`, the hash of the two stages' own fields (the config sections they read, less runtime
settings such as threads and pools) and the schema version. A re-run skips a video whose last results row
(or, when that row is missing, whose graph file) has the same key and rebuilds it if the video or the
settings changed; the perception stage checks before decoding anything.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Optional

import pyarrow as pa

from step_ray.config import ModelConfig, PerceptionConfig, SemanticsConfig, StepRayConfig, StsgConfig, VideoConfig
from step_ray.perception.semantics import SemanticsRecord
from step_ray.perception.tracks import Perceived, Track
from step_ray.stage import Row, RowStage, config_key, runtime_field
from step_ray.stsg import schema
from step_ray.stsg.build import build_stsg
from step_ray.stsg.merge import merge_fragments
from step_ray.utils import arrow, storage

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


@dataclass
class StsgResult:
    """One row of the ``stsg`` results table: what became of one input video (``status`` ok or error)."""

    video_id: str
    uri: str
    status: str
    name: Optional[str] = None  # the input's name before ids were made unique (manifest id or file stem)
    error: Optional[str] = None
    stsg_path: Optional[str] = None
    key: Optional[str] = None
    skipped: Optional[bool] = None
    decoder: Optional[str] = None
    frames: Optional[int] = None
    duration: Optional[float] = None
    clips: Optional[int] = None
    keyframes: Optional[int] = None
    objects: Optional[int] = None
    events: Optional[int] = None
    relations: Optional[int] = None
    edges: Optional[int] = None
    parse_samples: Optional[int] = None
    parse_malformed: Optional[int] = None
    parse_facts: Optional[int] = None
    seconds_decode: Optional[float] = None
    seconds_detect: Optional[float] = None
    seconds_track: Optional[float] = None
    seconds_parse: Optional[float] = None
    seconds_graph: Optional[float] = None


RESULT_SCHEMA: pa.Schema = arrow.schema_of(StsgResult)
RESULT_COLUMNS: tuple[str, ...] = tuple(RESULT_SCHEMA.names)
COUNT_COLUMNS = ("clips", "keyframes", "objects", "events", "relations", "edges")
#: An input of the perception stage: the listed video, an input error found while listing (an unusable id),
#: and the video's row of the previous run (null on a first run), from which a finished video is skipped.
INPUT_SCHEMA = pa.schema([("video_id", pa.string()), ("uri", pa.string()), ("name", pa.string()),
                          ("input_error", pa.string()), ("previous", arrow.arrow_type(StsgResult))])
PERCEIVED_TYPE = arrow.arrow_type(Perceived)
SEMANTICS_TYPE = arrow.arrow_type(SemanticsRecord)


def _round(v: Any) -> Any:
    return round(v, 4) if isinstance(v, float) else v


def result_row(base: Row, g: Any, skipped: bool, stats: dict[str, Any]) -> Row:
    row = {c: None for c in RESULT_COLUMNS}
    row.update(base)
    row.update(graph_counts(g))
    row.update(status="ok", error=None, skipped=skipped)
    row.update({k: _round(v) for k, v in stats.items() if k in row})
    if skipped:
        row["duration"] = g.graph.get("duration")
    return row


@dataclass
class PerceptionStage(RowStage):
    """Perception: video -> tracks (+ parsed facts) as a typed row; see the module docstring."""

    name: ClassVar[str] = "stsg-perception"
    pool_path: ClassVar[str] = "perception.pool"
    row_key: ClassVar[str] = "video_id"
    inputs: ClassVar[pa.Schema] = INPUT_SCHEMA
    outputs: ClassVar[pa.Schema] = pa.schema(list(RESULT_SCHEMA) + [pa.field("perceived", PERCEIVED_TYPE),
                                                                    pa.field("semantics", SEMANTICS_TYPE)])

    video: VideoConfig
    perception: PerceptionConfig
    stsg: StsgConfig  # dynamic merging of track fragments happens per shot, here
    semantics: Optional[SemanticsConfig] = None  # only when semantics.enabled (parsing shapes the graph then)
    model: Optional[ModelConfig] = None
    seed: Optional[int] = field(default=None, metadata={"config": "run.seed"})
    out_dir: str = runtime_field("")
    settings: str = runtime_field("")  # :func:`settings_key` of the chain, set by :func:`stsg_stages`
    load_model: Optional[Callable[..., Any]] = runtime_field(None)  # the parser's model loader

    @classmethod
    def from_config(cls, cfg: StepRayConfig, **values: Any) -> "PerceptionStage":
        if not cfg.semantics.enabled:  # the parser's sections are not read, so they do not key the graphs
            values = {"semantics": None, "model": None, "seed": None, **values}
        return super().from_config(cfg, **values)

    def setup(self) -> None:
        from step_ray.perception.detectors import build_detector
        from step_ray.utils.env import configure_ultralytics, limit_threads, resolve_device

        configure_ultralytics()
        threads = limit_threads(self.pool.num_cpus)
        if self.video.decode_threads == 0:  # "one per core the actor may use"
            self.video = dataclasses.replace(self.video, decode_threads=threads)
        self.device = resolve_device(self.perception.device)
        self.detector = build_detector(self.perception, self.device)
        self.parser = None
        if self.semantics is not None:
            from step_ray.perception.semantics import SemanticsParser

            if self.load_model is None:
                raise RuntimeError("semantics parsing needs a model loader: build the stages with "
                                   "stsg_stages(..., load_model=...)")
            self.parser = SemanticsParser(self.semantics, self.model, self.device, self.load_model,
                                          seed=self.seed or 0)
            self.parser.setup()

    def process_row(self, row: Row) -> Row:
        from step_ray.perception.semantics import semantics_record, summary_stats
        from step_ray.video.decode import DecodeError

        video_id, uri = row["video_id"], row["uri"]
        if row["input_error"]:
            return self.error_row(row, row["input_error"])
        out_path = stsg_path(self.out_dir, video_id)
        base = {"video_id": video_id, "uri": uri, "name": row["name"], "stsg_path": out_path}
        try:
            key = f"{storage.content_key(uri)[:16]}-{self.settings}"
        except (OSError, ValueError) as err:
            return self.error_row(base, f"cannot read the file: {err}")
        base["key"] = key
        done = self._skip(row["previous"], out_path, key)
        if done is not None:  # idempotent re-run: this video with these settings is finished
            out = {c: None for c in self.outputs.names}
            out.update(done)
            out.update(base, status="ok", error=None, skipped=True)
            return out
        try:
            with storage.local_file(uri) as local:
                perceived, stats = self._perceive(video_id, uri, local)
                parsed = None
                if self.parser is not None:
                    t0 = time.perf_counter()
                    parsed = self.parser.parse(perceived, local, self.video)
                    stats.update(summary_stats(parsed))
                    stats["seconds_parse"] = time.perf_counter() - t0
                    perceived.provenance["parser"] = {"prompt": self.semantics.prompt, **parsed.stats,
                                                      "model": self.semantics.model_path or self.model.name_or_path}
        except DecodeError as err:
            return self.error_row(base, str(err))
        out = {c: None for c in self.outputs.names}
        out.update(base, status="ok", error=None, skipped=False)
        out.update({k: _round(v) for k, v in stats.items() if k in out})
        out["perceived"] = arrow.to_arrow(perceived, Perceived)
        out["semantics"] = arrow.to_arrow(semantics_record(parsed), SemanticsRecord) if parsed is not None else None
        return out

    def _skip(self, previous: Optional[Row], out_path: str, key: str) -> Optional[Row]:
        """The results row of a video finished with this key (a re-run), else None. The previous run's row
        is enough when its graph is still there; without that row the graph file itself is read."""
        if previous and previous.get("status") == "ok" and previous.get("key") == key \
                and previous.get("stsg_path") == out_path and storage.exists(out_path):
            return {c: previous.get(c) for c in RESULT_COLUMNS if not c.startswith(("seconds_", "parse_"))}
        try:
            if storage.exists(out_path):
                g = schema.loads(storage.read_text(out_path))
                if g.graph.get("key") == key:  # written atomically: a graph that is there is whole
                    return result_row({}, g, skipped=True, stats={})
        except (schema.StsgFormatError, OSError):
            pass  # unreadable leftover or another schema version: rebuild it
        return None

    def _perceive(self, video_id: str, uri: str, local: str) -> tuple[Perceived, dict[str, Any]]:
        """Stream the video through splitting, detection and tracking; keep only features, boxes, tracks."""
        from step_ray.perception.tracking import ClipTracker
        from step_ray.video.decode import open_sampled
        from step_ray.video.shots import ShotSplitter

        stats = {"seconds_decode": 0.0, "seconds_detect": 0.0, "seconds_track": 0.0, "frames": 0}
        t0 = time.perf_counter()
        stream = open_sampled(local, self.video)
        splitter = ShotSplitter(self.video)
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
                    tracks += merge_fragments(tracker.tracks(), self.stsg)
                    tracker = None
                if tracker is None:
                    tracker = ClipTracker(len(splitter.clips), self.detector.names, self.perception.tracker,
                                          self.detector.source)
                tracker.update(frame, t, dets)
                stats["frames"] += 1
                last_time = t
            t0 = time.perf_counter()
            stats["seconds_track"] += t0 - t2
        splitter.finish_shot()
        if tracker is not None:
            tracks += merge_fragments(tracker.tracks(), self.stsg)
        info = stream.info
        stats["decoder"] = info.backend
        duration = info.duration or last_time
        perceived = Perceived(
            video_id=video_id, uri=uri, duration=duration, width=info.width, height=info.height,
            clips=splitter.clips, tracks=tracks,
            provenance={"detector": self.detector.source, "tracker": self.perception.tracker,
                        "decoder": info.backend, "sample_fps": self.video.sample_fps,
                        "keyframes": "kmeans(hsv+edges+time)", "device": self.device},
        )
        stats["duration"] = round(duration, 3)
        return perceived, stats


@dataclass
class GraphStage(RowStage):
    """Graph building: a perception row -> the STSG written to ``stsg_path``; error and skipped rows pass."""

    name: ClassVar[str] = "stsg-graph"
    pool_path: ClassVar[str] = "stsg.pool"
    row_key: ClassVar[str] = "video_id"
    inputs: ClassVar[pa.Schema] = PerceptionStage.outputs
    outputs: ClassVar[pa.Schema] = RESULT_SCHEMA

    stsg: StsgConfig

    def setup(self) -> None:
        from step_ray.utils.env import limit_threads

        limit_threads(self.pool.num_cpus)

    def process_row(self, row: Row) -> Row:
        from step_ray.perception.semantics import semantics_from_record

        if row["status"] != "ok" or row["perceived"] is None:
            return {c: row[c] for c in RESULT_COLUMNS}
        t0 = time.perf_counter()
        semantics = None
        if row["semantics"] is not None:
            semantics = semantics_from_record(arrow.from_arrow(row["semantics"], SemanticsRecord))
        g = build_stsg(arrow.from_arrow(row["perceived"], Perceived), self.stsg, source="perception",
                       semantics=semantics)
        g.graph["key"] = row["key"]
        schema.write(g, row["stsg_path"])
        stats = {c: row[c] for c in RESULT_COLUMNS
                 if (c.startswith(("seconds_", "parse_")) or c in ("decoder", "frames", "duration")) and row[c] is not None}
        stats["seconds_graph"] = time.perf_counter() - t0
        base = {k: row[k] for k in ("video_id", "uri", "name", "stsg_path", "key")}
        return result_row(base, g, skipped=False, stats=stats)


def input_table(rows: list[Row]) -> pa.Table:
    """Rows ``{"video_id", "uri"}`` (and optionally the other :data:`INPUT_SCHEMA` columns) as an input batch
    of :class:`PerceptionStage` (tests and small runs; steps list their inputs with
    :mod:`step_ray.pipeline.sources`)."""
    return pa.Table.from_pylist([{c: r.get(c) for c in INPUT_SCHEMA.names} for r in rows], schema=INPUT_SCHEMA)


def settings_key(perception: PerceptionStage, graph: GraphStage) -> str:
    """What a graph depends on besides its video: both stages' own keys and the schema version."""
    return config_key(perception.key(), graph.key(), schema.SCHEMA_VERSION)


def stsg_stages(cfg: StepRayConfig, out_dir: str, load_model: Optional[Callable[..., Any]] = None
                ) -> list[RowStage]:
    """The two stages that turn video rows (:data:`INPUT_SCHEMA`) into written graphs and results rows.
    ``load_model`` is the semantics parser's model loader (needed when ``semantics.enabled``)."""
    perception = PerceptionStage.from_config(cfg, out_dir=str(out_dir), load_model=load_model)
    graph = GraphStage.from_config(cfg)
    return [dataclasses.replace(perception, settings=settings_key(perception, graph)), graph]
