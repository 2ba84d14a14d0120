"""GPU memory estimates for a config, per perception actor and per training worker, to check before a cluster
run that what each actor holds fits the GPU its node has.

The figures are estimates of the steady-state peak (about +-25%), from the model's shape and the config:

* **weights**: parameters x bytes of the precision they are loaded in;
* **training state** (trainable parameters only): bf16/fp16 weight and gradient, fp32 master copy and Adam's two
  moments, 16 bytes a parameter with mixed precision (12 in fp32), divided by the data-parallel ranks where ZeRO
  partitions them (optimizer states from stage 1, gradients from 2, weights from 3) and left on the CPU where
  ``offload_optimizer`` / ``offload_params`` put them;
* **activations** for one micro-batch of ``batch_size x sequences x max_length`` tokens: every layer's saved
  tensors (2 bytes x (8 x hidden + 3 x intermediate) a token), or only each layer's input plus one layer's
  tensors with gradient checkpointing; and the logits, which in float32 with their gradient dominate for a
  150k-token vocabulary (10 bytes x vocab a token);
* **runtime**: the CUDA context, NCCL buffers and allocator slack, a flat 1.5 GiB.

Only the language model is trained; the frozen vision tower keeps no activations for the backward pass.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from step_ray.config import StepRayConfig

GIB = 2**30

#: GPU memory of the accelerators Ray names (``accelerator_type``), in GiB.
GPU_MEMORY_GIB: dict[str, float] = {
    "T4": 16, "A10G": 24, "L4": 24, "L40S": 48, "A100-40G": 40, "A100-80G": 80, "H100": 80, "H200": 141,
}
#: Instance types of the cluster files: (accelerator, GPUs per node).
INSTANCE_GPUS: dict[str, tuple[str, int]] = {
    "g5.xlarge": ("A10G", 1), "g5.2xlarge": ("A10G", 1), "g5.4xlarge": ("A10G", 1), "g5.8xlarge": ("A10G", 1),
    "g5.12xlarge": ("A10G", 4), "g5.24xlarge": ("A10G", 4), "g5.48xlarge": ("A10G", 8),
    "g6.2xlarge": ("L4", 1), "g6.12xlarge": ("L4", 4), "p4d.24xlarge": ("A100-40G", 8),
    "p4de.24xlarge": ("A100-80G", 8), "p5.48xlarge": ("H100", 8),
}
RUNTIME_BYTES = 1.5 * GIB
YOLO_ACTOR_BYTES = 0.75 * GIB  # yolo11n-x weights + a batch of 16 640px frames' activations, measured order


@dataclass(frozen=True)
class ModelShape:
    """What the estimate needs of a Video-LLM (language model + vision tower)."""

    params: float  # all parameters
    vision_params: float
    hidden: int
    intermediate: int
    layers: int
    vocab: int
    kv_heads: int
    head_dim: int

    @property
    def language_params(self) -> float:
        return self.params - self.vision_params


#: Shapes of the public checkpoints the GPU configs name (from their config.json), by directory / hub name.
KNOWN_SHAPES: dict[str, ModelShape] = {
    "Qwen2.5-VL-3B-Instruct": ModelShape(3.75e9, 0.67e9, 2048, 11008, 36, 151936, 2, 128),
    "Qwen2.5-VL-7B-Instruct": ModelShape(8.29e9, 0.68e9, 3584, 18944, 28, 152064, 4, 128),
    "Qwen2-VL-7B-Instruct": ModelShape(8.29e9, 0.68e9, 3584, 18944, 28, 152064, 4, 128),
    "Qwen2.5-VL-72B-Instruct": ModelShape(73.4e9, 0.68e9, 8192, 29568, 80, 152064, 8, 128),
}


def model_shape(name_or_path: str) -> ModelShape:
    """The shape of a checkpoint: from a known name (the last path component), else from its config.json."""
    name = Path(name_or_path.rstrip("/")).name
    if name in KNOWN_SHAPES:
        return KNOWN_SHAPES[name]
    from step_ray.utils import storage

    config_file = storage.join(name_or_path, "config.json")  # (a folder on an object store: read there)
    if not storage.exists(config_file):
        raise ValueError(f"no known shape for {name_or_path!r} and no config.json there")
    cfg = json.loads(storage.read_text(config_file))
    text = cfg.get("text_config", cfg)
    h, i, n, v = text["hidden_size"], text["intermediate_size"], text["num_hidden_layers"], text["vocab_size"]
    heads = text["num_attention_heads"]
    kv = text.get("num_key_value_heads", heads)
    head_dim = h // heads
    language = n * (h * h * 2 + 2 * h * kv * head_dim + 3 * h * i) + 2 * v * h
    vis = cfg.get("vision_config", {})
    vd = vis.get("hidden_size", vis.get("embed_dim", 0))
    vision = vis.get("depth", vis.get("num_hidden_layers", 0)) * 12 * vd * vd
    return ModelShape(language + vision, vision, h, i, n, v, kv, head_dim)


@dataclass(frozen=True)
class Estimate:
    """Bytes an actor or worker holds on its GPU, by part."""

    parts: dict[str, float]

    @property
    def total(self) -> float:
        return sum(self.parts.values())

    def gib(self) -> float:
        return self.total / GIB

    def describe(self) -> str:
        return " + ".join(f"{k} {v / GIB:.1f}" for k, v in self.parts.items()) + f" = {self.gib():.1f} GiB"


def _precision_bytes(precision: str) -> int:
    return 4 if precision == "fp32" else 2


def training_worker(cfg: StepRayConfig, shape: Optional[ModelShape] = None) -> Estimate:
    """GPU bytes of one Ray Train worker of ``cfg.train`` (see the module docs)."""
    tc, shape = cfg.train, shape or model_shape(cfg.model.name_or_path)
    world = tc.num_workers
    wbytes = _precision_bytes(tc.precision)
    if tc.lora.enabled:
        # LoRA on the targeted projections of every layer: r x (in + out) parameters each.
        h, i, kvd = shape.hidden, shape.intermediate, shape.kv_heads * shape.head_dim
        sizes = {"q_proj": (h, h), "k_proj": (h, kvd), "v_proj": (h, kvd), "o_proj": (h, h),
                 "gate_proj": (h, i), "up_proj": (h, i), "down_proj": (i, h)}
        trainable = shape.layers * sum(tc.lora.r * (a + b) for m, (a, b) in sizes.items()
                                       if m in tc.lora.target_modules)
    else:
        trainable = shape.language_params + (shape.vision_params if tc.lora.train_vision else 0)
    # Weights: the frozen base (and, without LoRA, the trained weights themselves) in the training precision.
    weights = shape.params * wbytes
    if tc.zero_stage == 3:
        # Partitioned; the layers being computed are gathered whole (about two layers in flight with prefetch).
        layer = shape.language_params / shape.layers
        weights = 0.0 if tc.offload_params else weights / world
        weights += 2 * layer * wbytes
    mixed = tc.precision != "fp32"
    master_and_moments = trainable * (12 if mixed else 8)  # fp32 copy (mixed precision) + Adam's m and v
    grads = trainable * 4.0  # accumulated in fp32
    lora_weights = trainable * wbytes if tc.lora.enabled else 0.0
    if tc.zero_stage >= 1:
        master_and_moments /= world
    if tc.zero_stage >= 2:
        grads /= world
    if tc.zero_stage == 3:
        lora_weights /= world
    if tc.offload_optimizer:  # ZeRO-Offload: optimizer states and the fp32 gradients live in CPU memory
        master_and_moments = grads = 0.0
    sequences = 2 if tc.loss_format == "multitask" and tc.rationale_weight > 0 else 1  # answer + rationale
    tokens = tc.batch_size * sequences * cfg.model.max_length
    per_layer = 2 * (8 * shape.hidden + 3 * shape.intermediate)  # bytes a token keeps for backward, one layer
    if tc.gradient_checkpointing:
        activations = tokens * (shape.layers * shape.hidden * 2 + per_layer)
    else:
        activations = tokens * shape.layers * per_layer
    logits = tokens * shape.vocab * 10  # bf16 logits, their float32 copy for the loss, and its gradient
    return Estimate({
        "weights": weights, "trainable": lora_weights, "optimizer": master_and_moments, "gradients": grads,
        "activations": activations, "logits": logits, "runtime": RUNTIME_BYTES,
    })


def perception_actor(cfg: StepRayConfig, shape: Optional[ModelShape] = None) -> Estimate:
    """GPU bytes of one perception actor: the detector, and with ``semantics.enabled`` the Video-LLM parser
    (bf16 weights + the KV cache of one generate() call of ``batch_size x samples`` sequences)."""
    parts = {"detector": YOLO_ACTOR_BYTES if cfg.perception.detector == "yolo" else 0.0}
    if cfg.semantics.enabled:
        name = cfg.semantics.model_path or cfg.model.name_or_path
        shape = shape or model_shape(name)
        sc = cfg.semantics
        # Prompt: the keyframe's visual tokens (28 px patches after merging) + ~400 text tokens; then the answer.
        visual = math.ceil(sc.image_size / 28) ** 2
        seq = visual + 400 + sc.max_new_tokens
        sequences = sc.batch_size * sc.samples
        parts["parser weights"] = shape.params * 2
        parts["kv cache"] = sequences * seq * shape.layers * 2 * shape.kv_heads * shape.head_dim * 2
        parts["logits"] = sequences * shape.vocab * 4 * 2  # the last position's logits, float32, two copies
    parts["runtime"] = RUNTIME_BYTES
    return Estimate(parts)


def gpu_memory_bytes(accelerator: str) -> float:
    if accelerator not in GPU_MEMORY_GIB:
        raise ValueError(f"unknown accelerator {accelerator!r} (known: {', '.join(sorted(GPU_MEMORY_GIB))})")
    return GPU_MEMORY_GIB[accelerator] * GIB


def actors_per_gpu(num_gpus: float) -> int:
    """How many actors asking for ``num_gpus`` each Ray packs onto one GPU (0: not a GPU actor)."""
    if num_gpus <= 0:
        return 0
    return 1 if num_gpus >= 1 else int(math.floor(1 / num_gpus + 1e-9))
