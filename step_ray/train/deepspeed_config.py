"""The DeepSpeed JSON config of a run, from :class:`~step_ray.config.TrainConfig` (or the user's own JSON).

* ZeRO stage from the config (2 by default). Stage 3 gathers the 16-bit weights on save so the exported
  adapter is whole. ``offload_optimizer`` / ``offload_params`` move optimizer states / parameters to the CPU
  (pinned memory on GPU hosts).
* The optimizer is DeepSpeed-managed AdamW with ``"torch_adam": true``: PyTorch's Adam, so no C++ Adam op is
  compiled (the CPU Adam op build is slow and not needed at these sizes) - except with optimizer offload, where
  DeepSpeed's CPU Adam is the point (it is built once, 20-60 s, and cached).
* Precision: fp32; bf16 on GPU or CPU when ``precision == 'bf16'``; fp16 (with dynamic loss scaling) only on GPU.
* The learning-rate schedule (linear warm-up then cosine) is a ``LambdaLR`` handed to ``deepspeed.initialize``
  (see :func:`lr_lambda`), so its state is saved in and restored from DeepSpeed checkpoints with the rest.
* A user JSON (``train.deepspeed_config``) is taken as it is, with DeepSpeed's ``"auto"`` values filled from the
  config (batch sizes, accumulation, lr, weight decay, precision), so the two cannot disagree.
"""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path
from typing import Any, Callable, Optional

from step_ray.config import ConfigError, TrainConfig


def deepspeed_config(train: TrainConfig, use_bf16: bool, use_fp16: bool = False,
                     user: Optional[dict[str, Any]] = None) -> dict[str, Any]:
    """DeepSpeed's config dict for ``train`` (``use_bf16`` / ``use_fp16``: the caller decided the device has
    them); ``user``: the user's own JSON, with its ``"auto"`` values filled instead."""
    if user is not None:
        return fill_auto(user, train, use_bf16, use_fp16)
    zero: dict[str, Any] = {"stage": train.zero_stage}
    if train.zero_stage in (1, 2):
        # Bucket sizes matter only for large models; the defaults (5e8) just allocate big flat buffers.
        zero.update({"overlap_comm": False, "contiguous_gradients": True,
                     "reduce_bucket_size": 5e7, "allgather_bucket_size": 5e7})
    if train.zero_stage == 3:
        zero.update({"overlap_comm": False, "contiguous_gradients": True,
                     "stage3_gather_16bit_weights_on_model_save": True,
                     # Small models: keep every parameter persistent instead of re-gathering tiny tensors.
                     "stage3_param_persistence_threshold": 1e4,
                     "reduce_bucket_size": 5e7})
    pin = bool(train.use_gpu)  # pinned host memory speeds up GPU <-> CPU copies; it means nothing on a CPU run
    if train.offload_optimizer:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": pin}
    if train.offload_params:
        zero["offload_param"] = {"device": "cpu", "pin_memory": pin}
    config: dict[str, Any] = {
        "train_micro_batch_size_per_gpu": train.batch_size,
        "gradient_accumulation_steps": train.grad_accum,
        "gradient_clipping": 1.0,
        "optimizer": {
            "type": "AdamW",
            "params": {
                "lr": train.lr,
                "betas": [0.9, 0.999],
                "eps": 1e-8,
                "weight_decay": train.weight_decay,
                # Offloaded optimizer steps run DeepSpeed's CPU Adam (the reason to offload); else torch's.
                "torch_adam": not train.offload_optimizer,
            },
        },
        "bf16": {"enabled": bool(use_bf16)},
        "fp16": {"enabled": bool(use_fp16), "loss_scale": 0, "initial_scale_power": 16},
        "zero_optimization": zero,
        "zero_allow_untested_optimizer": True,
        # Our own logging reports throughput; DeepSpeed's per-step prints would flood the worker logs.
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }
    return config


def fill_auto(user: dict[str, Any], train: TrainConfig, use_bf16: bool, use_fp16: bool) -> dict[str, Any]:
    """``user`` with DeepSpeed's ``"auto"`` placeholders (HF Trainer convention) replaced from ``train``."""
    out = copy.deepcopy(user)
    values = {
        "train_micro_batch_size_per_gpu": train.batch_size,
        "gradient_accumulation_steps": train.grad_accum,
        "train_batch_size": train.batch_size * train.grad_accum * train.num_workers,
        "gradient_clipping": 1.0,
    }
    for key, value in values.items():
        if out.get(key, "auto") == "auto":
            out[key] = value
    params = out.get("optimizer", {}).get("params", {})
    for key, value in (("lr", train.lr), ("weight_decay", train.weight_decay)):
        if params.get(key) == "auto":
            params[key] = value
    for key, flag in (("bf16", use_bf16), ("fp16", use_fp16)):
        section = out.setdefault(key, {})
        if section.get("enabled", "auto") == "auto":
            section["enabled"] = bool(flag)
    return out


def load_user_config(path: str) -> dict[str, Any]:
    """The user's DeepSpeed JSON, checked on the driver (errors name ``train.deepspeed_config``)."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError("train.deepspeed_config", f"no such file: {path}")
    try:
        data = json.loads(p.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ConfigError("train.deepspeed_config", f"{path} is not valid JSON: {err}") from None
    if not isinstance(data, dict):
        raise ConfigError("train.deepspeed_config", f"{path} must hold a JSON object")
    return data


def lr_lambda(train: TrainConfig) -> Callable[[int], float]:
    """Multiplier of the peak lr at optimizer step ``s``: linear warm-up to 1, then cosine decay to 0."""
    warmup = max(0, train.warmup_steps)
    total = max(train.steps, warmup + 1)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)  # never exactly 0: the first step already moves the weights
        progress = (step - warmup) / max(1, total - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return factor
