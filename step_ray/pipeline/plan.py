"""``step-ray plan``: how long a corpus takes on a cluster, which stage bottlenecks, how to size the pools.

The cost model of ``docs/scaling.md``: every stage is a throughput per resource (a *rate*), the corpus a
number of videos of a mean length, the cluster a number of GPUs and CPUs. A stage's time is its work over
its rate times the resources it gets; the pipeline streams, so the stsg step takes as long as its slowest
pool, and the steps run one after another. The rates are of two kinds, and every one says which:

* **measured** here by the benchmarks (``benchmarks/``; 2 x86 cores, no GPU): decoding + splitting, graph
  building, QRA sampling, the per-input cost of the driver and Ray Data;
* **anchored** where no GPU is here: the detector from Ultralytics' published YOLO11n latency, the Video-LLM's
  generation and training from the model's FLOPs and a GPU's published peak at an assumed utilisation.
  Replace them with the GPU benchmark's figures (``benchmarks/gpu/run.py``) for your hardware: every rate is
  a flag.

    step-ray plan --videos 1000000 --seconds 60 --gpus 64 --cpus-per-gpu 12
    step-ray plan --videos 1000000 --seconds 60 --gpus 64 --semantics --max-keyframes 8 --train-samples 2e6
"""

from __future__ import annotations

import argparse
import dataclasses
import math
from dataclasses import dataclass, field
from typing import Optional


@dataclass
class Rates:
    """Throughputs per resource (see the module docstring for where each comes from)."""

    decode_video_s_per_core_s: float = field(default=45.0, metadata={"source": (
        "measured: benchmarks/bench_stsg_front.py, 1-min 720p H.264, sampled at 5 fps, shots + keyframes, one core")})
    detect_frames_per_gpu_s: float = field(default=1000.0, metadata={"source": (
        "anchor: YOLO11n 1.5 ms/frame at 640 px on a T4 with TensorRT (Ultralytics' model table); taken as "
        "1000 frames/s at 320 px in batches of 16 with PyTorch on a data-centre GPU")})
    track_frames_per_core_s: float = field(default=2000.0, metadata={"source": (
        "measured: tracking + merging share of the stsg stage's time on this machine (ByteTrack on a few boxes)")})
    graph_videos_per_core_s: float = field(default=40.0, metadata={"source": (
        "measured: the stsg-graph stage (build + write a 1-min graph), benchmarks/bench_driver_scale.py rows")})
    qra_samples_per_core_s: float = field(default=5200.0, metadata={"source": (
        "measured: benchmarks/bench_qra.py, the sampler at the demo setting")})
    driver_cpu_ms_per_input: float = field(default=1.0, metadata={"source": (
        "measured: benchmarks/bench_driver_scale.py, the driver process's CPU time per input of the stsg + qra "
        "steps (planning, scheduling blocks, summaries); one core of the head node does it all")})
    flow_core_ms_per_input: float = field(default=5.0, metadata={"source": (
        "measured: benchmarks/bench_driver_scale.py, wall time per input with trivial stage work on 2 cores "
        "(listing, ids, tables, Ray's processes): spread over the cluster's CPUs")})
    gpu_peak_tflops: float = field(default=312.0, metadata={"source": "anchor: A100 dense bf16 peak"})
    gpu_memory_tb_s: float = field(default=2.0, metadata={"source": "anchor: A100-80GB HBM bandwidth"})
    train_mfu: float = field(default=0.35, metadata={"source": "anchor: model-FLOPs utilisation of LoRA fine-tuning"})
    decode_batch: int = field(default=12, metadata={"source": (
        "semantics.batch_size x semantics.samples sequences generated together (4 keyframes x 3 samples)")})


@dataclass
class Corpus:
    videos: int
    seconds: float  # mean length of a video
    sample_fps: float = 5.0
    keyframe_fps: float = 1.0
    max_keyframes: int = 0  # semantics.max_keyframes (0: all)
    samples_per_video: int = 24
    semantics: bool = False
    samples_new_tokens: int = 3 * 160  # semantics.samples x semantics.max_new_tokens per keyframe
    train_samples: float = 0.0  # questions trained on (train.steps x batch x workers x grad_accum)


@dataclass
class Cluster:
    gpus: int
    cpus_per_gpu: float = 12.0
    model_params_b: float = 7.6  # the Video-LLM (Qwen2.5-VL-7B: 7.6 B)
    tokens_per_sample: int = 1400  # two sequences (answer, rationale) of ~700 tokens: 4 frames + text


@dataclass
class StageCost:
    stage: str
    resource: str  # "gpu" or "cpu"
    resource_seconds: float  # GPU- or core-seconds of work
    units: float  # GPUs or cores the stage gets
    note: str = ""

    @property
    def hours(self) -> float:
        return self.resource_seconds / max(self.units, 1e-9) / 3600


def estimate(corpus: Corpus, cluster: Cluster, rates: Rates) -> dict:
    """Per-stage resource-seconds and hours, the bottleneck of each step, and pool sizes."""
    video_s = corpus.videos * corpus.seconds
    frames = video_s * corpus.sample_fps
    cpus = cluster.gpus * cluster.cpus_per_gpu
    keyframes = video_s * corpus.keyframe_fps
    if corpus.max_keyframes:
        keyframes = min(keyframes, corpus.videos * corpus.max_keyframes)
    detect_gpu_s = frames / rates.detect_frames_per_gpu_s
    parse_gpu_s = 0.0
    if corpus.semantics:
        # Generation is bound by reading the weights once per step for the whole batch of sequences.
        steps_per_s = rates.gpu_memory_tb_s * 1e12 / (2 * cluster.model_params_b * 1e9)
        tokens_per_gpu_s = steps_per_s * rates.decode_batch
        parse_gpu_s = keyframes * corpus.samples_new_tokens / tokens_per_gpu_s
    gpu_s = detect_gpu_s + parse_gpu_s
    decode_core_s = video_s / rates.decode_video_s_per_core_s
    track_core_s = frames / rates.track_frames_per_core_s
    # Perception actors: the GPUs, and with them the cores that keep them fed; what is left builds graphs.
    perception_cores = min(cpus * 0.75, (decode_core_s + track_core_s) / max(gpu_s, 1e-9) * cluster.gpus)
    graph_core_s = corpus.videos / rates.graph_videos_per_core_s
    graph_cores = max(1.0, min(cpus - perception_cores, graph_core_s / max(gpu_s, 1e-9) * cluster.gpus * 1.2))
    stsg = [
        StageCost("stsg-perception (GPU: detect" + (" + parse" if corpus.semantics else "") + ")", "gpu", gpu_s,
                  cluster.gpus, f"{detect_gpu_s / 3600:.0f} GPU-h detection" +
                  (f", {parse_gpu_s / 3600:.0f} GPU-h semantics parsing" if corpus.semantics else "")),
        StageCost("stsg-perception (CPU: decode, split, track)", "cpu", decode_core_s + track_core_s,
                  perception_cores, f"{perception_cores / cluster.gpus:.1f} cores per GPU"),
        StageCost("stsg-graph", "cpu", graph_core_s, graph_cores),
        StageCost("driver (one core)", "cpu", corpus.videos * rates.driver_cpu_ms_per_input / 1000, 1.0,
                  "planning and scheduling blocks of several inputs"),
        StageCost("Ray Data bookkeeping (listing, ids, tables)", "cpu",
                  corpus.videos * rates.flow_core_ms_per_input / 1000, max(1.0, cpus - perception_cores)),
    ]
    samples = corpus.videos * corpus.samples_per_video
    qra = [StageCost("qra-sample + corpus passes", "cpu", samples / rates.qra_samples_per_core_s * 1.5, cpus,
                     f"{samples:.2e} candidate samples; the passes over parts add about half the sampling")]
    train: list[StageCost] = []
    if corpus.train_samples:
        flops = 4 * cluster.model_params_b * 1e9 * cluster.tokens_per_sample  # LoRA: forward + activation grads
        per_gpu = rates.train_mfu * rates.gpu_peak_tflops * 1e12 / flops
        train = [StageCost("train (LoRA, ZeRO)", "gpu", corpus.train_samples / per_gpu, cluster.gpus,
                           f"{per_gpu:.1f} samples/s per GPU")]
    steps = {"stsg": stsg, "qra": qra, "train": train}
    out = {"steps": {}, "total_hours": 0.0, "gpu_hours": 0.0}
    for name, costs in steps.items():
        if not costs:
            continue
        slowest = max(costs, key=lambda c: c.hours)
        out["steps"][name] = {"hours": slowest.hours, "bottleneck": slowest.stage,
                              "stages": [dataclasses.asdict(c) | {"hours": c.hours} for c in costs]}
        out["total_hours"] += slowest.hours
        if any(c.resource == "gpu" for c in costs):
            out["gpu_hours"] += slowest.hours * cluster.gpus
    out["pools"] = {
        "perception.pool": {"max_size": cluster.gpus, "num_gpus": 1.0,
                            "num_cpus": round(perception_cores / cluster.gpus, 1)},
        "stsg.pool": {"max_size": max(1, math.ceil(graph_cores)), "num_cpus": 1.0},
        "qra.pool": {"max_size": int(cpus), "num_cpus": 1.0},
    }
    return out


def format_plan(corpus: Corpus, cluster: Cluster, plan: dict) -> str:
    lines = [f"corpus: {corpus.videos:,} videos x {corpus.seconds:g} s = {corpus.videos * corpus.seconds / 3600:,.0f} "
             f"video-hours; cluster: {cluster.gpus} GPUs, {cluster.cpus_per_gpu:g} CPUs per GPU", ""]
    lines.append(f"{'step / stage':<52} {'resource-h':>11} {'units':>7} {'wall':>9}  note")
    for name, step in plan["steps"].items():
        for c in step["stages"]:
            lines.append(f"{c['stage']:<52} {c['resource_seconds'] / 3600:>11,.1f} {c['units']:>7,.0f} "
                         f"{_hms(c['hours']):>9}  {c['note']}")
        lines.append(f"  -> {name}: {_hms(step['hours'])}, bottleneck: {step['bottleneck']}")
    lines += ["", f"total: {_hms(plan['total_hours'])} wall, {plan['gpu_hours']:,.0f} GPU-hours", "pools:"]
    for k, v in plan["pools"].items():
        lines.append(f"  {k}: " + ", ".join(f"{a}={b}" for a, b in v.items()))
    return "\n".join(lines)


def _hms(hours: float) -> str:
    s = hours * 3600
    if s < 90:
        return f"{s:.0f}s"
    if s < 5400:
        return f"{s / 60:.0f}m"
    return f"{int(hours)}h{int(round((hours - int(hours)) * 60)):02d}m"


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="step-ray plan", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--videos", type=float, required=True, help="videos in the corpus")
    ap.add_argument("--seconds", type=float, required=True, help="mean length of a video (s)")
    ap.add_argument("--gpus", type=int, required=True, help="GPUs of the cluster")
    ap.add_argument("--cpus-per-gpu", type=float, default=12.0)
    ap.add_argument("--sample-fps", type=float, default=5.0, help="video.sample_fps")
    ap.add_argument("--semantics", action="store_true", help="semantics parsing by the Video-LLM (rounds >= 2)")
    ap.add_argument("--max-keyframes", type=int, default=0, help="semantics.max_keyframes (0: all)")
    ap.add_argument("--samples-per-video", type=int, default=24, help="qra.samples_per_video")
    ap.add_argument("--train-samples", type=float, default=0.0, help="questions to train on")
    ap.add_argument("--model-params-b", type=float, default=7.6, help="Video-LLM size in billions of weights")
    for f in dataclasses.fields(Rates):
        ap.add_argument("--" + f.name.replace("_", "-"), type=type(f.default), default=f.default,
                        help=f.metadata["source"])
    a = ap.parse_args(argv)
    if a.videos <= 0 or a.seconds <= 0 or a.gpus <= 0:
        ap.error("--videos, --seconds and --gpus must be > 0")
    rates = Rates(**{f.name: getattr(a, f.name) for f in dataclasses.fields(Rates)})
    corpus = Corpus(videos=int(a.videos), seconds=a.seconds, sample_fps=a.sample_fps, semantics=a.semantics,
                    max_keyframes=a.max_keyframes, samples_per_video=a.samples_per_video,
                    train_samples=a.train_samples)
    cluster = Cluster(gpus=a.gpus, cpus_per_gpu=a.cpus_per_gpu, model_params_b=a.model_params_b)
    print(format_plan(corpus, cluster, estimate(corpus, cluster, rates)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
