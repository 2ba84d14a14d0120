"""The one typed config tree of step-ray.

Every knob lives in a dataclass below with a ``help`` text. YAML files, ``key=value`` command-line
overrides and the docs all go through this module, so they cannot drift apart. A bad value fails fast
with a :class:`ConfigError` that names the field (``train.zero_stage: must be one of 0, 1, 2, 3``); the
CLI turns it into a one-line message and exit code 2.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional, Union

import yaml


class ConfigError(ValueError):
    """A config value is unknown or invalid; ``str(err)`` starts with the dotted field name."""

    def __init__(self, field_path: str, message: str):
        self.field_path = field_path
        super().__init__(f"{field_path}: {message}" if field_path else message)


#: Field metadata key of settings that say how work runs (threads, actors), never what it computes: keys of
#: outputs (a graph's settings key, :meth:`step_ray.stage.Stage.key`) leave them out. Resource pools
#: (:class:`PoolConfig`) are runtime settings by their type.
RUNTIME = "runtime"


def _f(default: Any = dataclasses.MISSING, help: str = "", factory: Any = dataclasses.MISSING, runtime: bool = False):
    """A dataclass field with its help text (shown by ``step-ray config --help-fields`` and the docs);
    ``runtime=True`` marks a setting that cannot change any output (see :data:`RUNTIME`)."""
    metadata = {"help": help, RUNTIME: runtime}
    if factory is not dataclasses.MISSING:
        return field(default_factory=factory, metadata=metadata)
    return field(default=default, metadata=metadata)


# --------------------------------------------------------------------------------------------- sections


@dataclass
class RunConfig:
    """Where a run writes and how it is seeded."""

    output_dir: str = _f("runs/demo", "Run directory: round_<r>/ (stsg/, qra/, train/, eval/), report.md and "
                                      "report.html go here. A local or shared folder, or s3:// / gs://.")
    seed: int = _f(0, "Global seed for sampling, splits, training and evaluation.")
    rounds: int = _f(1, "Self-training rounds: round r+1 mines its QRA with the model of round r (its semantics "
                        "parsing when semantics.enabled, its self-consistency filter when qra.filter.enabled) and "
                        "fine-tunes that model further.")

    def validate(self, path: str) -> None:
        _require(bool(self.output_dir), f"{path}.output_dir", "must not be empty")
        _require(self.rounds >= 1, f"{path}.rounds", "must be >= 1")
        _require(self.seed >= 0, f"{path}.seed", "must be >= 0")


@dataclass
class RayConfig:
    """How to reach Ray. With no address, an embedded local Ray is started (laptop mode)."""

    address: Optional[str] = _f(
        None,
        "Ray address. None: join the cluster in RAY_ADDRESS (set by `ray job submit`), else start an embedded "
        "Ray; 'local': always start an embedded Ray; 'auto' or an address: join that cluster.",
    )
    num_cpus: Optional[int] = _f(None, "CPUs for an embedded Ray (None: all cores). Ignored on a cluster.")
    num_gpus: Optional[float] = _f(
        None,
        "Logical GPUs for an embedded Ray (None: what the machine has). Setting it on a CPU machine exercises "
        "the GPU scheduling (fractional GPU actors) while the models fall back to CPU.",
    )
    object_store_memory: Optional[int] = _f(None, "Object store bytes for an embedded Ray (None: Ray's default).")

    def validate(self, path: str) -> None:
        _require(self.num_cpus is None or self.num_cpus >= 1, f"{path}.num_cpus", "must be >= 1")
        _require(self.num_gpus is None or self.num_gpus >= 0, f"{path}.num_gpus", "must be >= 0")


@dataclass
class SynthConfig:
    """The synthetic world: coloured shapes that move, collide, enter, leave and reappear after scene cuts."""

    videos: int = _f(12, "Number of videos to write.")
    seed: int = _f(0, "Seed of the world; the same seed gives the same videos and ground truth.")
    width: int = _f(224, "Frame width in pixels (even, for H.264).")
    height: int = _f(160, "Frame height in pixels (even, for H.264).")
    fps: int = _f(10, "Frames per second of the written videos.")
    scene_seconds: float = _f(4.0, "Length of each scene (shot) in seconds.")
    scenes: int = _f(2, "Scenes per video; a hard cut separates them and some objects reappear after it.")
    min_objects: int = _f(2, "Fewest objects in a scene.")
    max_objects: int = _f(4, "Most objects in a scene.")
    object_size: int = _f(28, "Typical object size in pixels (sizes vary by +-25%).")
    pause_prob: float = _f(0.3, "Chance that an object bouncing in a scene stops for a while and then moves on.")
    recolor_prob: float = _f(0.25, "Chance that an object bouncing in a scene changes its colour once.")
    shapes: list[str] = _f(factory=lambda: ["circle", "square", "triangle"],
                           help="Shapes objects may have (one shape: objects differ by colour alone, and questions "
                                "about shape are trivial, so none are asked).")
    motion: bool = _f(True, "Objects move (bounce, enter, leave, collide, pause). false: every object stands still "
                            "where it is placed, so a scene is one configuration and its relations hold throughout.")
    layout: Literal["free", "grid", "row"] = _f(
        "free", "Where objects start: 'free' anywhere apart from the others; 'grid' at the centres of distinct cells "
                "of a synth.grid x synth.grid grid (crisp left / right / above / below relations); 'row' in one "
                "horizontal row of synth.grid slots, a random slot each.")
    grid: int = _f(4, "Cells per side of the 'grid' layout; slots of the 'row' layout.")

    def validate(self, path: str) -> None:
        _require(self.videos >= 1, f"{path}.videos", "must be >= 1")
        _require(self.seed >= 0, f"{path}.seed", "must be >= 0")
        for name in ("width", "height"):
            v = getattr(self, name)
            _require(v >= 64 and v % 2 == 0, f"{path}.{name}", "must be even and >= 64")
        _require(self.fps >= 1, f"{path}.fps", "must be >= 1")
        _require(self.scene_seconds > 0, f"{path}.scene_seconds", "must be > 0")
        _require(self.scenes >= 1, f"{path}.scenes", "must be >= 1")
        _require(1 <= self.min_objects <= self.max_objects, f"{path}.min_objects", "must be in 1..max_objects")
        _require(self.max_objects <= 8, f"{path}.max_objects", "must be <= 8 (the palette has 8 colour-shape kinds per scene)")
        _require(8 <= self.object_size <= min(self.width, self.height) // 3, f"{path}.object_size",
                 "must be between 8 and a third of the frame's short side")
        for name in ("pause_prob", "recolor_prob"):
            _require(0 <= getattr(self, name) <= 1, f"{path}.{name}", "must be in [0, 1]")
        _require(bool(self.shapes) and set(self.shapes) <= {"circle", "square", "triangle"}
                 and len(set(self.shapes)) == len(self.shapes), f"{path}.shapes",
                 "must be a non-empty list of distinct shapes among circle, square, triangle")
        _require(self.max_objects <= 8 * len(self.shapes), f"{path}.max_objects",
                 f"must be <= {8 * len(self.shapes)}: 8 colours x {len(self.shapes)} shape(s) distinct kinds")
        if self.layout in ("grid", "row"):
            cells = self.grid * self.grid if self.layout == "grid" else self.grid
            _require(2 <= self.grid <= 8, f"{path}.grid", "must be in 2..8")
            _require(self.max_objects <= cells, f"{path}.max_objects",
                     f"must be <= {cells} (one object per {'cell' if self.layout == 'grid' else 'slot'})")
            cell = min(self.width, self.height) / self.grid if self.layout == "grid" else self.width / self.grid
            _require(self.object_size * 1.25 <= 0.9 * cell, f"{path}.object_size",
                     f"objects (up to 1.25 x object_size) must fit a grid cell of {cell:.0f} px: at most "
                     f"{int(0.9 * cell / 1.25)}")


@dataclass
class VideoConfig:
    """Decoding and visual splitting."""

    sample_fps: float = _f(5.0, "Frames per second sampled from each video for perception.")
    max_frames: int = _f(
        0, "Cap on sampled frames per video (the sampling rate is lowered to fit); 0: no cap. Perception streams "
           "frames, so memory does not depend on it.")
    max_side: int = _f(320, "Pixel cap: frames are resized so their longer side is at most this.")
    shot_threshold: float = _f(
        0.5, "Shot cut when the colour-histogram distance (0..1, Bhattacharyya) between sampled frames exceeds this."
    )
    keyframe_fps: float = _f(
        1.0, "Keyframes per second of shot: a shot of L seconds gets ceil(L x keyframe_fps) keyframes (at least one), "
             "chosen by clustering its frames' colour and edge features (k-means).")
    max_keyframes_per_shot: int = _f(16, "Most keyframes per shot (long static shots need few).")
    backend: Literal["auto", "decord", "pyav", "pyav-refs", "pyav-sparse"] = _f(
        "auto",
        "Decoder. 'decord': exact sampled frames by random access; 'pyav': the same, decoding every frame; "
        "'pyav-refs': the same frames exactly, skipping the frames nothing refers to unless they are sampled; "
        "'pyav-sparse': reference frames only and no deblocking (fastest; lossy, and a sampled frame may come a "
        "frame or two late); 'auto': pyav-refs at <= 1/3 of the native rate, else decord (never the lossy "
        "pyav-sparse). Every choice falls back to the others for files it cannot open.")
    decode_threads: int = _f(0, "Decoder threads per video (0: one per core the actor may use).", runtime=True)

    def validate(self, path: str) -> None:
        _require(self.sample_fps > 0, f"{path}.sample_fps", "must be > 0")
        _require(self.max_frames >= 0, f"{path}.max_frames", "must be >= 0 (0: no cap)")
        _require(self.decode_threads >= 0, f"{path}.decode_threads", "must be >= 0")
        _require(self.max_side >= 32, f"{path}.max_side", "must be >= 32")
        _require(0 < self.shot_threshold <= 1, f"{path}.shot_threshold", "must be in (0, 1]")
        _require(0 < self.keyframe_fps <= self.sample_fps, f"{path}.keyframe_fps", "must be in (0, sample_fps]")
        _require(self.max_keyframes_per_shot >= 1, f"{path}.max_keyframes_per_shot", "must be >= 1")


@dataclass
class PoolConfig:
    """An actor pool of Ray Data (``compute=ActorPoolStrategy(min_size, max_size)``)."""

    min_size: int = _f(1, "Fewest actors.")
    max_size: int = _f(2, "Most actors (the autoscaler adds actors up to this).")
    num_cpus: float = _f(1.0, "CPUs per actor.")
    num_gpus: float = _f(0.0, "GPUs per actor; a fraction (0.5) lets several actors share a GPU.")
    batch_size: int = _f(1, "Rows per batch handed to an actor.")
    max_retries: int = _f(2, "Times a row whose actor died on it (a segfault, an out-of-memory kill) is run again, "
                             "each time on a restarted actor, before it becomes an error row and the run goes on.")

    def validate(self, path: str) -> None:
        _require(self.min_size >= 1, f"{path}.min_size", "must be >= 1")
        _require(self.max_retries >= 0, f"{path}.max_retries", "must be >= 0")
        _require(self.max_size >= self.min_size, f"{path}.max_size", "must be >= min_size")
        _require(self.num_cpus > 0, f"{path}.num_cpus", "must be > 0 (Ray needs an explicit CPU count per actor)")
        _require(self.num_gpus >= 0, f"{path}.num_gpus", "must be >= 0")
        for name in ("num_cpus", "num_gpus"):  # Ray's own rule for resource requests
            value = getattr(self, name)
            _require(value <= 1 or value == int(value), f"{path}.{name}",
                     f"must be a fraction below 1 or a whole number (Ray refuses {value:g})")
        _require(self.batch_size >= 1, f"{path}.batch_size", "must be >= 1")


@dataclass
class PerceptionConfig:
    """Detection and tracking."""

    detector: Literal["color", "yolo"] = _f(
        "color",
        "'color': OpenCV colour and shape segmentation, exact on the synthetic world; 'yolo': ultralytics YOLO.",
    )
    yolo_weights: str = _f(
        "yolo11n.yaml",
        "YOLO weights: a local .pt path, or a model .yaml (random weights, for tests). Nothing is downloaded.",
    )
    imgsz: int = _f(320, "YOLO inference size (a multiple of 32).")
    conf: float = _f(0.25, "Minimum detection confidence.")
    batch: int = _f(16, "Frames per detector forward pass (bounds GPU memory on long videos).")
    tracker: Literal["bytetrack", "botsort"] = _f("bytetrack", "ultralytics tracker that assigns identities.")
    device: str = _f("auto", "'auto' (CUDA if torch sees it, else CPU), 'cpu', or 'cuda:N'.")
    min_area: int = _f(30, "Colour detector: smallest blob area in pixels.")
    pool: PoolConfig = _f(factory=lambda: PoolConfig(min_size=1, max_size=2, num_cpus=1.0, num_gpus=0.0),
                          help="Actor pool of the perception + STSG stage (GPU actors on a cluster).")

    def validate(self, path: str) -> None:
        _require(self.imgsz >= 32 and self.imgsz % 32 == 0, f"{path}.imgsz", "must be a multiple of 32")
        _require(0 <= self.conf <= 1, f"{path}.conf", "must be in [0, 1]")
        _require(self.batch >= 1, f"{path}.batch", "must be >= 1")
        _require(self.min_area >= 1, f"{path}.min_area", "must be >= 1 (pixels)")
        _require(self.device == "auto" or self.device == "cpu" or self.device.startswith("cuda"),
                 f"{path}.device", "must be 'auto', 'cpu' or 'cuda[:N]'")
        _require(not self.device.startswith("cuda") or self.pool.num_gpus > 0, f"{path}.device",
                 f"{self.device!r} needs GPUs for the actors: set {path}.pool.num_gpus > 0 (or use 'auto')")


@dataclass
class StsgConfig:
    """Building the spatio-temporal scene graph from tracks."""

    min_track_keyframes: int = _f(1, "Drop tracks seen on fewer keyframes than this (tracker noise).")
    near_factor: float = _f(1.5, "Two objects are 'near' when their centre distance < near_factor x mean box size.")
    relations: Literal["all", "nearest"] = _f(
        "all", "Spatial relations at keyframes. 'all': every pair of objects has its dominant direction (left_of, "
               "right_of, above, below); 'nearest': directions hold only between an object and its nearest neighbour "
               "that way (directly_left_of, ...), so walks along them always have one answer.")
    motion_min_px_per_s: float = _f(8.0, "Speed (pixels/s at the sampled size) above which an object is moving.")
    min_pause_seconds: float = _f(
        0.5, "An object that stands still at least this long between two moves stops and starts moving (events).")
    merge_max_jump: float = _f(
        3.0, "Dynamic merging: how far (in box sizes) an object may seem to jump between two fragments of its track.")
    merge_max_speed: float = _f(
        80.0, "Dynamic merging: extra reach (pixels per second of the gap) for fragments separated in time.")
    same_as_threshold: float = _f(
        0.75, "Cross-clip identity: minimum appearance similarity (0..1; half class, half colour) for same_as.")
    pool: PoolConfig = _f(factory=lambda: PoolConfig(min_size=1, max_size=1, num_cpus=0.25, num_gpus=0.0, batch_size=4),
                          help="CPU actor pool that builds and writes the graphs from the perception actors' tracks.")

    def validate(self, path: str) -> None:
        _require(self.min_track_keyframes >= 1, f"{path}.min_track_keyframes", "must be >= 1")
        _require(self.near_factor > 0, f"{path}.near_factor", "must be > 0")
        _require(self.motion_min_px_per_s >= 0, f"{path}.motion_min_px_per_s", "must be >= 0")
        _require(self.min_pause_seconds > 0, f"{path}.min_pause_seconds", "must be > 0")
        _require(self.merge_max_jump >= 0, f"{path}.merge_max_jump", "must be >= 0")
        _require(self.merge_max_speed >= 0, f"{path}.merge_max_speed", "must be >= 0")
        _require(0 <= self.same_as_threshold <= 1, f"{path}.same_as_threshold", "must be in [0, 1]")
        _require(self.pool.num_gpus == 0, f"{path}.pool.num_gpus", "graphs are built on CPU actors: must be 0")


@dataclass
class SemanticsConfig:
    """Semantics parsing by the Video-LLM itself: attributes, relations and actions of the tracked objects at
    each keyframe, asked of ``model`` (in self-training round r+1: the model trained in round r)."""

    enabled: bool = _f(False, "Parse the keyframes with the Video-LLM (costly: n generations per keyframe).")
    model_path: Optional[str] = _f(
        None, "Model to ask (a local directory or hub id, e.g. an exported merged model); None: model.name_or_path.")
    prompt: str = _f("semantics/1", "Versioned prompt template (step_ray/perception/prompts/<name>.txt).")
    samples: int = _f(3, "n: generations per keyframe for self-consistency.")
    min_agreement: float = _f(0.5, "Keep a fact that more than this share of the n samples state.")
    temperature: float = _f(0.7, "Sampling temperature of the n generations.")
    max_new_tokens: int = _f(160, "Token cap of each generated answer.")
    batch_size: int = _f(4, "Keyframes per generate() call (each with its n samples).")
    max_keyframes: int = _f(0, "Parse at most this many keyframes per video, evenly spread (0: all).")
    image_size: int = _f(224, "Keyframes are shown to the model at most this size (longer side, pixels).")

    def validate(self, path: str) -> None:
        _require(self.samples >= 1, f"{path}.samples", "must be >= 1")
        _require(0 <= self.min_agreement < 1, f"{path}.min_agreement", "must be in [0, 1)")
        _require(self.temperature > 0, f"{path}.temperature", "must be > 0")
        _require(self.max_new_tokens >= 8, f"{path}.max_new_tokens", "must be >= 8")
        _require(self.batch_size >= 1, f"{path}.batch_size", "must be >= 1")
        _require(self.max_keyframes >= 0, f"{path}.max_keyframes", "must be >= 0")
        _require(self.image_size >= 56, f"{path}.image_size", "must be >= 56")
        _require("/" in self.prompt and ".." not in self.prompt, f"{path}.prompt",
                 "must name a versioned template like 'semantics/1'")


@dataclass
class FamilyWeights:
    """Relative share of each question family among a step count's samples (0 switches a family off)."""

    relation: float = _f(1.0, "Which object stands in a spatial relation.")
    attribute: float = _f(1.0, "Colour or shape of an object reached by hops.")
    event_participant: float = _f(1.0, "Who entered, left, collided, stopped, changed colour.")
    temporal: float = _f(1.0, "What happened right after / before an event.")
    sequence: float = _f(1.0, "What an object did right after one of its own events.")
    motion: float = _f(1.0, "Which direction an object moves.")
    attribute_change: float = _f(1.0, "What colour an object turns into (stsg/2 attr_change edges).")
    counting: float = _f(1.0, "How many times an object does something / how many objects stand in a relation.")
    cross_clip: float = _f(1.0, "Questions whose path crosses a scene cut by same_as.")
    verify: float = _f(1.0, "Yes / no: does a path lead to the stated object or value.")
    comparison: float = _f(1.0, "Yes / no over two paths: which event came first, same colour, same shape.")

    def validate(self, path: str) -> None:
        for f in dataclasses.fields(self):
            _require(getattr(self, f.name) >= 0, f"{path}.{f.name}", "must be >= 0")
        _require(any(getattr(self, f.name) > 0 for f in dataclasses.fields(self)), path,
                 "at least one family needs a weight > 0")


#: The hop types of QRA paths (``step_ray.qra.paths.OPS``; a test keeps the two equal).
HOP_TYPES: tuple[str, ...] = ("changed_to", "count_events", "count_related", "event_of", "motion", "next_event",
                              "next_own", "participant", "prev_event", "relation", "same_as")


@dataclass
class QraFilterConfig:
    """STEP's model-side self-consistency filter: ask the Video-LLM n times (options in n seeded orders)."""

    enabled: bool = _f(False, "Run the filter at the end of `step-ray qra` (`step-ray qra-filter` runs it anyway).")
    model: Optional[str] = _f(None, "Model to ask: a training output / adapter / HF directory; null: model.name_or_path.")
    asks: int = _f(4, "How many times the model is asked per sample (each time the options in another order).")
    min_agreement: float = _f(0.75, "A sample is consistent if at least this share of the asks pick the same option.")
    require_correct: bool = _f(False, "Also flag samples whose consistent pick is not the answer (model_disagrees).")
    action: Literal["flag", "drop"] = _f("flag", "flag: keep flagged samples with their flags; drop: remove them.")
    pool: PoolConfig = _f(factory=lambda: PoolConfig(min_size=1, max_size=1, num_cpus=1.0, num_gpus=0.0),
                          help="Actor pool of the filter (num_gpus > 0 on a GPU cluster).")

    def validate(self, path: str) -> None:
        _require(self.asks >= 1, f"{path}.asks", "must be >= 1")
        _require(0 < self.min_agreement <= 1, f"{path}.min_agreement", "must be in (0, 1]")


@dataclass
class QraConfig:
    """Reasoning-path sampling and question / rationale / answer rendering."""

    min_steps: int = _f(1, "Fewest reasoning steps (edges) in a sampled path.")
    max_steps: int = _f(5, "Most reasoning steps (edges) in a sampled path (K).")
    samples_per_video: int = _f(24, "Target number of QRA samples per video (fewer if the graph is small).")
    step_weights: list[float] = _f(factory=list, help="Target share of each step count min_steps..max_steps "
                                   "(one weight each; empty: even).")
    family_weights: FamilyWeights = _f(factory=FamilyWeights, help="Target share of each question family.")
    ops: list[str] = _f(factory=list, help="Hop types a path may take (relation, participant, event_of, next_event, "
                        "prev_event, next_own, same_as, motion, changed_to, count_events, count_related); empty: all. "
                        "A family whose paths need another hop is not sampled.")
    times: Literal["when_needed", "always"] = _f(
        "when_needed", "Times in questions and rationales: 'when_needed' leaves out the time of a fact that holds "
                       "throughout its clip (\"Which object is left of the red circle?\"); 'always' states every "
                       "hop's time.")
    max_answer_share: float = _f(0.4, "Answer-prior balancing: within a family no answer may exceed this share "
                                 "(or 1/k for k distinct answers, if larger); extra samples are dropped.")
    num_options: int = _f(4, "Multiple-choice options per question (answer included; yes / no questions have 2).")
    test_fraction: float = _f(0.25, "Share of videos in the held-out test split (split by video: no leakage).")
    val_fraction: float = _f(0.0, "Share of videos in the validation split (after test; 0: none).")
    pool: PoolConfig = _f(factory=lambda: PoolConfig(min_size=1, max_size=2, num_cpus=1.0, num_gpus=0.0,
                                                     batch_size=16),
                          help="CPU actor pool of the QRA stage (a batch: graphs sampled per call, milliseconds "
                               "each).")
    filter: QraFilterConfig = _f(factory=QraFilterConfig, help="Model-side self-consistency filter (off by default).")

    def validate(self, path: str) -> None:
        _require(self.min_steps >= 1, f"{path}.min_steps", "must be >= 1")
        _require(self.max_steps >= self.min_steps, f"{path}.max_steps", "must be >= min_steps")
        _require(self.max_steps <= 8, f"{path}.max_steps", "must be <= 8")
        _require(self.samples_per_video >= 1, f"{path}.samples_per_video", "must be >= 1")
        n = self.max_steps - self.min_steps + 1
        _require(not self.step_weights or len(self.step_weights) == n, f"{path}.step_weights",
                 f"must have one weight per step count ({n}) or be empty")
        _require(all(w >= 0 for w in self.step_weights) and (not self.step_weights or sum(self.step_weights) > 0),
                 f"{path}.step_weights", "must be >= 0 with a positive sum")
        _require(0 < self.max_answer_share <= 1, f"{path}.max_answer_share", "must be in (0, 1]")
        _require(2 <= self.num_options <= 8, f"{path}.num_options", "must be in 2..8")
        _require(0 < self.test_fraction < 1, f"{path}.test_fraction", "must be in (0, 1)")
        _require(0 <= self.val_fraction < 1 and self.test_fraction + self.val_fraction < 1, f"{path}.val_fraction",
                 "must be >= 0 with test_fraction + val_fraction < 1")
        _require(self.pool.num_gpus == 0, f"{path}.pool.num_gpus", "the QRA stage runs on CPU actors: must be 0")
        unknown = sorted(set(self.ops) - set(HOP_TYPES))
        _require(not unknown, f"{path}.ops", f"unknown hop type(s) {', '.join(unknown)} (known: {', '.join(HOP_TYPES)})")


@dataclass
class TinyModelConfig:
    """Sizes of the random-weight tiny Qwen2.5-VL used when ``model.name_or_path`` is 'tiny'."""

    hidden_size: int = _f(128, "Text hidden size (= vision output size).")
    num_layers: int = _f(4, "Text decoder layers.")
    num_heads: int = _f(4, "Attention heads (head_dim = hidden_size / num_heads).")
    vision_depth: int = _f(2, "Vision transformer blocks.")
    vision_hidden_size: int = _f(64, "Vision transformer width.")
    rope_theta: float = _f(10000.0, "Rotary base of the text decoder. The rows and columns of a small frame's "
                                    "visual tokens are positions 0..5 of M-RoPE's slowest frequencies: a small base "
                                    "(20) lets a tiny model tell them apart.")

    def validate(self, path: str) -> None:
        for name in ("hidden_size", "num_layers", "num_heads", "vision_depth", "vision_hidden_size"):
            _require(getattr(self, name) >= 1, f"{path}.{name}", "must be >= 1")
        _require(self.rope_theta > 1, f"{path}.rope_theta", "must be > 1")
        _require(self.hidden_size % self.num_heads == 0, f"{path}.hidden_size", "must be divisible by num_heads")
        _require((self.hidden_size // self.num_heads) % 4 == 0, f"{path}.num_heads",
                 "head_dim (hidden_size / num_heads) must be a multiple of 4 for mrope")


@dataclass
class ModelConfig:
    """The Video-LLM that is fine-tuned and that (in later rounds) parses semantics."""

    name_or_path: str = _f(
        "tiny",
        "'tiny' builds a random-weight tiny model of model.family offline (tests, demo); otherwise a local "
        "directory or a hub id of a Qwen2.5-VL, Qwen2-VL or LLaVA-OneVision checkpoint (loaded with "
        "from_pretrained; nothing is downloaded on machines without the network).",
    )
    family: Literal["auto", "qwen2_5_vl", "qwen2_vl", "llava_onevision"] = _f(
        "auto",
        "Model family: how prompts, video inputs and LoRA targets are laid out. 'auto' reads model_type from the "
        "checkpoint's config.json (and means qwen2_5_vl for 'tiny', which builds a tiny model of this family).",
    )
    trust_remote_code: bool = _f(False, "Allow model code from the checkpoint. Off unless you trust the source.")
    frames: int = _f(2, "Video frames given to the model per question: one slot of the model's temporal patch "
                        "(Qwen-VL: 2 frames) per moment the question names (its path's keyframes and event "
                        "times, in order); rows that name no moment get frames spread over their span.")
    prompt: Literal["chat", "compact"] = _f(
        "chat", "Prompt format. 'chat': the model's chat template with its default system prompt; 'compact': no "
                "system prompt (what the tiny laptop models use: every token is compute). A trained model "
                "records the format it was trained with, and is always asked that way.")
    options_in_prompt: bool = _f(True, "Show the lettered options in the prompt (scoring by likelihood does "
                                       "not need them).")
    frame_size: int = _f(112, "Frames are resized to frame_size x frame_size (a multiple of 28): the pixel cap "
                              "handed to the processor, so no frame exceeds frame_size^2 pixels.")
    max_length: int = _f(768, "Token cap per training sequence.")
    tiny: TinyModelConfig = _f(factory=TinyModelConfig, help="Sizes of the tiny model.")

    def validate(self, path: str) -> None:
        _require(bool(self.name_or_path), f"{path}.name_or_path", "must not be empty")
        _require(self.frames >= 2 and self.frames % 2 == 0, f"{path}.frames",
                 "must be an even number >= 2 (Qwen2.5-VL groups frames in pairs)")
        _require(self.frame_size >= 56 and self.frame_size % 28 == 0, f"{path}.frame_size",
                 "must be a multiple of 28 and >= 56")
        _require(self.max_length >= 64, f"{path}.max_length", "must be >= 64")


@dataclass
class LoraConfig:
    """LoRA adapters (peft)."""

    enabled: bool = _f(True, "Train LoRA adapters; false fine-tunes all language-model weights.")
    r: int = _f(16, "LoRA rank.")
    alpha: int = _f(32, "LoRA alpha (scale = alpha / r).")
    dropout: float = _f(0.0, "LoRA dropout.")
    target_modules: list[str] = _f(
        factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        help="Language-model modules that get adapters (the vision tower stays frozen). Checked against the "
             "model before any worker starts.",
    )
    train_vision: bool = _f(False, "Also train the vision tower (full fine-tuning only; with LoRA it stays "
                                   "frozen).")

    def validate(self, path: str) -> None:
        _require(self.r >= 1, f"{path}.r", "must be >= 1")
        _require(self.alpha >= 1, f"{path}.alpha", "must be >= 1 (the adapter's scale is alpha / r)")
        _require(0 <= self.dropout < 1, f"{path}.dropout", "must be in [0, 1)")
        _require(len(self.target_modules) > 0, f"{path}.target_modules", "must name at least one module")


@dataclass
class TrainDataConfig:
    """The Ray Data stream that feeds training: QRA Parquet -> decode + encode actors -> the workers' shards."""

    num_cpus: float = _f(0.5, "CPUs per decode/encode actor (decord frames + the model's processor), and per "
                              "replay actor of the encode cache (cache: true). These are reserved beside the "
                              "training workers' CPUs: the run fails before it starts when the cluster cannot hold "
                              "both.")
    min_actors: int = _f(1, "Fewest decode/encode actors.")
    max_actors: int = _f(1, "Most decode/encode actors (Ray Data adds actors up to this when training waits).")
    batch_size: int = _f(4, "QRA rows per batch handed to a decode/encode actor.")
    cache: bool = _f(True, "Encode each train question once per run and replay the encoded rows on every later "
                           "pass (held in Ray's object store, spilled to disk when it fills). It costs about "
                           "questions x sequences per question x bytes per sequence (token ids, labels and the "
                           "frames' pixel values; the run logs the figure): turn it off for a train split too "
                           "large to hold, and every pass decodes and encodes its questions again.",
                     runtime=True)
    cache_max_fraction: float = _f(0.5, "The most of the cluster's object store memory the encode cache may fill. "
                                        "The cache is measured as it is built; past this share it is dropped and "
                                        "the run streams instead (every pass encodes again), saying so in the "
                                        "log and in train_summary.json (encode_cache): a cache that would spill "
                                        "to disk costs more than it saves.", runtime=True)
    frame_cache_mb: int = _f(512, "Decoded frames each decode/encode actor keeps for the later passes over the data "
                                  "(MiB; decoding is most of an encode's cost). 0: decode on every pass. With "
                                  "cache: true it only serves the questions of a video that share moments (each "
                                  "question is decoded once anyway).")
    prefetch_batches: int = _f(2, "Micro-batches each training worker prefetches from its shard.")
    shuffle_buffer: int = _f(0, "Local shuffle buffer in the workers, in micro-batches. 0: stream order, which keeps "
                                "a question's answer and rationale sequences in one micro-batch (the questions "
                                "themselves are shuffled once on the driver).")

    def validate(self, path: str) -> None:
        _require(self.num_cpus > 0, f"{path}.num_cpus", "must be > 0 (Ray needs an explicit CPU count per actor)")
        _require(self.min_actors >= 1, f"{path}.min_actors", "must be >= 1")
        _require(self.max_actors >= self.min_actors, f"{path}.max_actors", "must be >= min_actors")
        _require(self.batch_size >= 1, f"{path}.batch_size", "must be >= 1")
        _require(0 < self.cache_max_fraction <= 1, f"{path}.cache_max_fraction", "must be in (0, 1]")
        _require(self.frame_cache_mb >= 0, f"{path}.frame_cache_mb", "must be >= 0")
        _require(self.prefetch_batches >= 0, f"{path}.prefetch_batches", "must be >= 0")
        _require(self.shuffle_buffer >= 0, f"{path}.shuffle_buffer", "must be >= 0")


@dataclass
class MlflowConfig:
    """Experiment tracking to MLflow (``pip install 'step-ray[mlflow]'``): one MLflow run per training call, with
    the resolved train section as its parameters and rank 0's reported metrics at every ``train.log_every``."""

    tracking_uri: str = _f("", "MLflow tracking URI: a tracking server ('http://mlflow.internal:5000'), "
                               "'databricks', a database ('sqlite:////abs/mlflow.db', needs the full mlflow "
                               "package) or a local store ('file:/abs/mlruns'; MLflow 3 wants "
                               "MLFLOW_ALLOW_FILE_STORE=true for it). Empty: MLflow is off. Credentials come from "
                               "the driver's MLFLOW_* environment (MLFLOW_TRACKING_TOKEN, "
                               "MLFLOW_TRACKING_USERNAME / _PASSWORD).")
    experiment: str = _f("step-ray", "MLflow experiment of the runs (created when missing).")
    run_name: str = _f("", "MLflow run name; empty: the last two parts of the output location "
                           "('round_1/train' for runs/demo/round_1/train). Its full URI is the run's tag "
                           "step_ray.output.")

    def validate(self, path: str) -> None:
        _require(self.tracking_uri == self.tracking_uri.strip(), f"{path}.tracking_uri",
                 "must not start or end with spaces")
        _require(bool(self.experiment.strip()), f"{path}.experiment", "must not be empty")


@dataclass
class TrainConfig:
    """Ray Train + DeepSpeed fine-tuning with the answer + rationale loss."""

    num_workers: int = _f(2, "Ray Train workers (one process per GPU on a cluster).")
    use_gpu: bool = _f(False, "GPUs for the workers, NCCL; false runs on CPU with gloo.")
    gpus_per_worker: float = _f(1.0, "GPUs per worker when use_gpu (ScalingConfig resources_per_worker).")
    cpus_per_worker: float = _f(1.0, "CPUs reserved per training worker (torch uses max(1, int(this)) threads).")
    accelerator_type: Optional[str] = _f(None, "Ray accelerator type the workers need (e.g. 'A100'), or None.")
    zero_stage: int = _f(2, "DeepSpeed ZeRO stage (0, 1, 2 or 3).")
    offload_optimizer: bool = _f(False, "ZeRO-Offload: optimizer states (and the step) on the CPU. Needs "
                                        "zero_stage >= 1.")
    offload_params: bool = _f(False, "ZeRO-Infinity style parameter offload to the CPU. Needs zero_stage 3.")
    deepspeed_config: Optional[str] = _f(
        None,
        "Path of your own DeepSpeed JSON, used instead of the generated one. 'auto' values for the batch sizes, "
        "gradient accumulation, lr, weight decay and bf16 are filled from this section.")
    precision: Literal["fp32", "bf16", "fp16"] = _f(
        "fp32", "Training precision. bf16 works on GPU and CPU; fp16 only on GPU (DeepSpeed's CPU backend lacks it).")
    gradient_checkpointing: bool = _f(False, "Recompute activations in the backward pass (less memory, ~30% "
                                             "more compute).")
    steps: int = _f(200, "Optimizer steps.")
    batch_size: int = _f(8, "QRA rows per micro-batch per worker (multitask with lambda > 0: two sequences each).")
    grad_accum: int = _f(1, "Gradient accumulation steps.")
    lr: float = _f(1e-3, "Peak learning rate (linear warm-up, cosine decay).")
    warmup_steps: int = _f(10, "Warm-up steps.")
    weight_decay: float = _f(0.0, "AdamW weight decay.")
    loss_format: Literal["multitask", "joint"] = _f(
        "multitask",
        "'multitask': an [answer] and an [explain] sequence per question (Distilling Step-by-Step); 'joint': one "
        "sequence whose target is the rationale, then the answer.")
    rationale_weight: float = _f(1.0, "lambda in L = L_answer + lambda * L_rationale; 0 is the answer-only baseline.")
    checkpoint_every: int = _f(50, "Save a checkpoint every N steps (and at the end).")
    keep_checkpoints: int = _f(2, "Checkpoints kept by Ray Train (the last N).")
    max_failures: int = _f(1, "Worker-group restarts Ray Train tries before failing the run (each restart resumes "
                              "from the latest checkpoint).")
    log_every: int = _f(10, "Report metrics every N steps.")
    progress: bool = _f(True, "Show a progress bar (rank 0) while training, when stderr is a terminal (never in "
                              "job or CI logs; STEP_RAY_PROGRESS=1 forces bars).")
    tensorboard: bool = _f(True, "Write the reported metrics as TensorBoard scalars to OUT/tensorboard "
                                 "(`tensorboard --logdir OUT/tensorboard`; with an object-store output, written "
                                 "locally during the run and uploaded when it ends).")
    init: Optional[str] = _f(None, "Start from this model instead of model.name_or_path: any model reference (a "
                                   "training or pretraining output, an adapter, a merged or HF folder; adapters are "
                                   "merged into its base first). Self-training rounds set it to the last round's model.")
    lora: LoraConfig = _f(factory=LoraConfig, help="LoRA settings.")
    data: TrainDataConfig = _f(factory=TrainDataConfig, help="The Ray Data stream that feeds the workers.")
    mlflow: MlflowConfig = _f(factory=MlflowConfig, help="Experiment tracking to MLflow (off unless "
                                                         "tracking_uri is set).")

    def validate(self, path: str) -> None:
        _require(self.num_workers >= 1, f"{path}.num_workers", "must be >= 1")
        _require(self.gpus_per_worker > 0, f"{path}.gpus_per_worker", "must be > 0")
        _require(self.cpus_per_worker > 0, f"{path}.cpus_per_worker", "must be > 0")
        _require(self.zero_stage in (0, 1, 2, 3), f"{path}.zero_stage", "must be one of 0, 1, 2, 3")
        _require(not self.offload_optimizer or self.zero_stage >= 1, f"{path}.offload_optimizer",
                 "needs ZeRO: set train.zero_stage to 1, 2 or 3 (stage 0 has no optimizer partition to offload)")
        _require(not self.offload_params or self.zero_stage == 3, f"{path}.offload_params",
                 f"needs train.zero_stage=3 (got {self.zero_stage}): only ZeRO-3 partitions the parameters")
        _require(self.precision != "fp16" or self.use_gpu, f"{path}.precision",
                 "fp16 needs GPUs (train.use_gpu=true): DeepSpeed's CPU backend has no fp16; use bf16 or fp32")
        _require(self.steps >= 1, f"{path}.steps", "must be >= 1")
        _require(self.batch_size >= 1, f"{path}.batch_size", "must be >= 1")
        _require(self.grad_accum >= 1, f"{path}.grad_accum", "must be >= 1")
        _require(self.lr > 0, f"{path}.lr", "must be > 0")
        _require(self.warmup_steps >= 0, f"{path}.warmup_steps", "must be >= 0")
        _require(self.weight_decay >= 0, f"{path}.weight_decay", "must be >= 0")
        _require(self.rationale_weight >= 0, f"{path}.rationale_weight", "must be >= 0")
        _require(self.checkpoint_every >= 1, f"{path}.checkpoint_every", "must be >= 1")
        _require(self.keep_checkpoints >= 1, f"{path}.keep_checkpoints", "must be >= 1")
        _require(self.max_failures >= 0, f"{path}.max_failures", "must be >= 0")
        _require(self.log_every >= 1, f"{path}.log_every", "must be >= 1")


@dataclass
class EvalConfig:
    """Evaluation: QRA held-out questions and public benchmarks, by option likelihood and by generation."""

    max_samples: int = _f(0, "Cap on evaluated samples (0: all of the held-out split).")
    batch_size: int = _f(8, "Questions per forward pass of the scoring model (each actor of eval.pool splits the "
                            "eval.pool.batch_size questions it is handed into passes of this many; the same "
                            "passes run in process with --no-ray).")
    vision_controls: list[str] = _f(
        factory=lambda: ["blank"],
        help="Vision controls evaluated beside each evaluation of self-train and ablate: 'blank' (black frames) "
             "and / or 'shuffled' (the same moments of another video). A model that keeps its accuracy without "
             "its video answers from text priors.")
    pool: PoolConfig = _f(factory=lambda: PoolConfig(min_size=1, max_size=1, num_cpus=1.0, num_gpus=0.0, batch_size=8),
                          help="Actor pool of every evaluation (`step-ray eval`, and those of self-train, ablate "
                               "and pretrain with their vision controls): each actor loads the model once, the "
                               "driver never does; pool.batch_size questions are handed to an actor at a time. "
                               "num_gpus > 0 on a GPU cluster (a fraction shares a GPU between actors).")
    device: str = _f("auto", "Device of the eval actors' model: 'auto' (CUDA if the actor sees it, else CPU), "
                             "'cpu', or 'cuda:N'.")
    precision: Literal["auto", "bf16", "fp32"] = _f(
        "auto", "Weights' dtype in the eval actors: 'auto' is bf16 on a GPU, fp32 on the CPU.")
    max_new_tokens: int = _f(64, "Generation mode: most tokens a model writes per answer (a joint model: its "
                                 "rationale and answer).")
    max_sequences: int = _f(64, "Likelihood mode: most option sequences per forward pass (AGQA's answer "
                                "vocabularies run to hundreds of options per question).")

    def validate(self, path: str) -> None:
        _require(self.max_samples >= 0, f"{path}.max_samples", "must be >= 0")
        _require(self.batch_size >= 1, f"{path}.batch_size", "must be >= 1")
        _require(self.device in ("auto", "cpu") or self.device.startswith("cuda"), f"{path}.device",
                 "must be 'auto', 'cpu' or 'cuda[:N]'")
        _require(not self.device.startswith("cuda") or self.pool.num_gpus > 0, f"{path}.device",
                 f"{self.device!r} needs GPUs for the actors: set {path}.pool.num_gpus > 0 (or use 'auto')")
        _require(self.max_new_tokens >= 1, f"{path}.max_new_tokens", "must be >= 1")
        _require(self.max_sequences >= 1, f"{path}.max_sequences", "must be >= 1")
        bad = sorted(set(self.vision_controls) - {"blank", "shuffled"})
        _require(not bad, f"{path}.vision_controls", f"unknown control(s) {', '.join(bad)} (known: blank, shuffled)")


@dataclass
class PretrainConfig:
    """A base model that perceives: the laptop's stand-in for a pretrained Video-LLM checkpoint.

    `step-ray pretrain` trains the model of ``model`` (for 'tiny': from random weights) with full fine-tuning,
    vision tower included, on 1-step perception questions of a synthetic corpus of its own (the world of
    ``synth`` with this section's videos and seed, ground-truth graphs), and saves a Hugging Face model folder
    that every other step loads like any checkpoint. On GPUs, skip it and point ``model.name_or_path`` at a
    real checkpoint (Qwen2.5-VL or the like)."""

    enabled: bool = _f(False, "self-train: pretrain (or reuse) this base first and fine-tune it instead of model.")
    output: Optional[str] = _f(None, "Where the base is kept (a folder, or s3:// / gs://); null: step-ray's cache, "
                                     "keyed by every setting that shapes it (a second run with the same settings "
                                     "reuses it).")
    videos: int = _f(2000, "Videos of the perception corpus (synthetic, ground-truth graphs).")
    seed: int = _f(1000, "World seed of the perception corpus (keep it apart from synth.seed: other videos).")
    samples_per_video: int = _f(4, "Questions per video.")
    max_steps: int = _f(1, "Reasoning steps of its questions (1: perception).")
    families: list[str] = _f(factory=lambda: ["relation", "attribute"],
                             help="Question families of the perception corpus.")
    ops: list[str] = _f(factory=list, help="Hop types of its questions (empty: qra.ops).")
    steps: int = _f(3000, "Optimizer steps.")
    batch_size: int = _f(16, "Questions per micro-batch per worker.")
    lr: float = _f(1e-3, "Peak learning rate.")
    rationale_weight: float = _f(0.0, "lambda of the pretraining loss (0: answers only).")
    test_fraction: float = _f(0.1, "Share of its videos held out to measure how well the base perceives.")

    def validate(self, path: str) -> None:
        _require(self.videos >= 2, f"{path}.videos", "must be >= 2")
        _require(self.samples_per_video >= 1, f"{path}.samples_per_video", "must be >= 1")
        _require(1 <= self.max_steps <= 8, f"{path}.max_steps", "must be in 1..8")
        _require(len(self.families) > 0, f"{path}.families", "must name at least one family")
        unknown = sorted(set(self.families) - {f.name for f in dataclasses.fields(FamilyWeights)})
        _require(not unknown, f"{path}.families", f"unknown famil(y/ies) {', '.join(unknown)}")
        bad_ops = sorted(set(self.ops) - set(HOP_TYPES))
        _require(not bad_ops, f"{path}.ops", f"unknown hop type(s) {', '.join(bad_ops)}")
        _require(self.steps >= 1, f"{path}.steps", "must be >= 1")
        _require(self.batch_size >= 1, f"{path}.batch_size", "must be >= 1")
        _require(self.lr > 0, f"{path}.lr", "must be > 0")
        _require(self.rationale_weight >= 0, f"{path}.rationale_weight", "must be >= 0")
        _require(0 < self.test_fraction < 1, f"{path}.test_fraction", "must be in (0, 1)")


@dataclass
class AblationConfig:
    """`step-ray ablate`: the same QRA, the same base, several lambdas, loss formats and seeds."""

    rationale_weights: list[float] = _f(factory=lambda: [0.0, 1.0], help="The lambdas to train.")
    loss_formats: list[str] = _f(factory=lambda: ["multitask"], help="Loss formats to train (multitask, joint). "
                                                                     "lambda 0 is trained once (answers only).")
    seeds: list[int] = _f(factory=lambda: [0, 1, 2], help="Training seeds (the seed of each run's LoRA init, data "
                                                           "order and dropout; the data and the base stay the same).")

    def validate(self, path: str) -> None:
        _require(len(self.rationale_weights) > 0 and all(w >= 0 for w in self.rationale_weights),
                 f"{path}.rationale_weights", "must be a non-empty list of numbers >= 0")
        bad = sorted(set(self.loss_formats) - {"multitask", "joint"})
        _require(self.loss_formats and not bad, f"{path}.loss_formats", "must be a non-empty list of multitask / joint")
        _require(len(self.seeds) > 0 and len(set(self.seeds)) == len(self.seeds), f"{path}.seeds",
                 "must be a non-empty list of distinct integers")


@dataclass
class StepRayConfig:
    """The whole tree: one YAML file holds any subset of these sections."""

    run: RunConfig = _f(factory=RunConfig, help="Run directory and seed.")
    ray: RayConfig = _f(factory=RayConfig, help="Ray connection.")
    synth: SynthConfig = _f(factory=SynthConfig, help="Synthetic corpus.")
    video: VideoConfig = _f(factory=VideoConfig, help="Decoding and visual splitting.")
    perception: PerceptionConfig = _f(factory=PerceptionConfig, help="Detection and tracking.")
    stsg: StsgConfig = _f(factory=StsgConfig, help="Scene-graph building.")
    semantics: SemanticsConfig = _f(factory=SemanticsConfig, help="Semantics parsing by the Video-LLM.")
    qra: QraConfig = _f(factory=QraConfig, help="QRA sampling.")
    model: ModelConfig = _f(factory=ModelConfig, help="The Video-LLM.")
    train: TrainConfig = _f(factory=TrainConfig, help="Fine-tuning.")
    eval: EvalConfig = _f(factory=EvalConfig, help="Evaluation.")
    pretrain: PretrainConfig = _f(factory=PretrainConfig, help="A base model that perceives (tiny models).")
    ablation: AblationConfig = _f(factory=AblationConfig, help="Lambda / loss-format / seed ablation.")


# --------------------------------------------------------------------------------------------- machinery


def _require(ok: bool, field_path: str, message: str) -> None:
    if not ok:
        raise ConfigError(field_path, message)


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is list:
        return f"a list of {_type_name(typing.get_args(tp)[0])}"
    if tp is type(None):
        return "null"
    return {int: "an integer", float: "a number", str: "a string", bool: "true or false"}.get(tp, str(tp))


def _coerce(value: Any, tp: Any, path: str, base: Any = None) -> Any:
    """Check ``value`` against the annotation ``tp`` and convert where lossless (int -> float)."""
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if value is None:
            value = {}
        if not isinstance(value, dict):
            raise ConfigError(path, f"must be a mapping of {tp.__name__} fields, got {value!r}")
        return _build(tp, value, path, base)
    if origin in (Union, types.UnionType):
        errors = []
        for arg in typing.get_args(tp):
            try:
                return _coerce(value, arg, path)
            except ConfigError as err:
                errors.append(err)
        raise ConfigError(path, f"must be {_type_name(tp)}, got {value!r}")
    if origin is Literal:
        if value in typing.get_args(tp):
            return value
        raise ConfigError(path, f"must be {_type_name(tp)}, got {value!r}")
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(path, f"must be {_type_name(tp)}, got {value!r}")
        (item_tp,) = typing.get_args(tp)
        return [_coerce(v, item_tp, f"{path}[{i}]") for i, v in enumerate(value)]
    if tp is type(None):
        if value is None:
            return None
        raise ConfigError(path, f"must be null, got {value!r}")
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        number = None
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            number = float(value)
        elif isinstance(value, str):  # YAML 1.1 reads "3e-4" (no dot) as a string
            try:
                number = float(value)
            except ValueError:
                pass
        if number is not None:
            # No knob of step-ray means anything at infinity or NaN (YAML spells them .inf and .nan).
            if not math.isfinite(number):
                raise ConfigError(path, f"must be a finite number, got {value!r}")
            return number
    elif tp is str:
        if isinstance(value, str):
            return value
    else:  # pragma: no cover - every annotation in this module is handled above
        return value
    raise ConfigError(path, f"must be {_type_name(tp)}, got {value!r}")


def _build(cls: type, data: dict, path: str, base: Any = None) -> Any:
    """``cls`` from ``data``; fields that ``data`` omits keep their value in ``base`` (default: ``cls()``),
    so a section whose parent gives it special defaults (the pools) keeps them."""
    base = cls() if base is None else base
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    for key in data:
        if key not in names:
            where = f"{path}.{key}" if path else str(key)
            raise ConfigError(where, f"unknown field (known: {', '.join(sorted(names))})")
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name in data:
            where = f"{path}.{f.name}" if path else f.name
            kwargs[f.name] = _coerce(data[f.name], hints[f.name], where, getattr(base, f.name))
    return dataclasses.replace(base, **kwargs)


def _validate_tree(obj: Any, path: str = "") -> None:
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            _validate_tree(value, f"{path}.{f.name}" if path else f.name)
    if hasattr(obj, "validate"):
        obj.validate(path)


def parse_override(text: str) -> tuple[list[str], Any]:
    """``'train.lr=3e-4'`` -> (['train', 'lr'], 0.0003). Values are parsed as YAML scalars or lists."""
    if "=" not in text:
        raise ConfigError(text, "an override must look like section.field=value")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(key or text, "an override must look like section.field=value")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key.split("."), value


def _set_path(data: dict, keys: list[str], value: Any) -> None:
    node = data
    for i, key in enumerate(keys[:-1]):
        child = node.get(key)
        if child is None:
            child = node[key] = {}
        if not isinstance(child, dict):
            raise ConfigError(".".join(keys[: i + 1]), "is not a section; cannot set a field inside it")
        node = child
    node[keys[-1]] = value


class _UniqueKeyLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses a key given twice in one mapping (plain PyYAML keeps the last one, so a
    section pasted twice would silently override the first)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: dict = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise ConfigError("--config", f"key {key!r} appears twice in one mapping (lines "
                                              f"{seen[key] + 1} and {key_node.start_mark.line + 1})")
            seen[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep=deep)


def safe_load_unique(text: str) -> Any:
    """``yaml.safe_load`` that raises :class:`ConfigError` on duplicated keys."""
    loader = _UniqueKeyLoader(text)  # what yaml.safe_load does, with the duplicate check of the subclass
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> StepRayConfig:
    """Load ``path`` (YAML; None: all defaults), apply ``key=value`` overrides, validate, return the tree."""
    data: dict = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError("--config", f"no such file: {p}")
        try:
            text = p.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as err:
            raise ConfigError("--config", f"cannot read {p}: {err}") from None
        try:
            loaded = safe_load_unique(text)
        except ConfigError as err:
            raise ConfigError("--config", f"{p}: {str(err).removeprefix('--config: ')}") from None
        except yaml.YAMLError as err:
            mark = getattr(err, "problem_mark", None)
            where = f" (line {mark.line + 1})" if mark else ""
            raise ConfigError("--config", f"{p} is not valid YAML{where}") from None
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError("--config", f"{p} must hold a mapping of sections")
        data = loaded
    for text in overrides:
        keys, value = parse_override(text)
        _set_path(data, keys, value)
    cfg = _build(StepRayConfig, data, "")
    _validate_tree(cfg)
    return cfg


def to_dict(cfg: Any) -> dict:
    """The tree as plain data (for YAML dumps, Ray task arguments and run manifests)."""
    return dataclasses.asdict(cfg)


def from_dict(data: dict) -> StepRayConfig:
    """Inverse of :func:`to_dict` (validated)."""
    cfg = _build(StepRayConfig, data, "")
    _validate_tree(cfg)
    return cfg


def dump_config(cfg: StepRayConfig) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)


def field_docs(obj: Any = None, prefix: str = "") -> list[tuple[str, str, str]]:
    """(dotted name, default, help) for every leaf field: the source of `step-ray config --fields` and docs."""
    obj = StepRayConfig() if obj is None else obj
    rows = []
    for f in dataclasses.fields(obj):
        name = f"{prefix}{f.name}"
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            rows.extend(field_docs(value, name + "."))
        else:
            rows.append((name, repr(value), f.metadata.get("help", "")))
    return rows
