"""The DeepSpeed JSON config of a run, from :class:`~step_ray.config.TrainConfig`.

* ZeRO stage from the config (2 by default). Stage 3 gathers the 16-bit weights on save so the exported
  adapter is whole.
* The optimizer is DeepSpeed-managed AdamW with ``"torch_adam": true``: PyTorch's Adam, so no C++ Adam op is
  compiled (the CPU Adam op build is slow and not needed at these sizes).
* fp32 on CPU; bf16 on GPU when ``precision == 'bf16'`` (fp16 is unsupported on CPU and not offered).
* The learning-rate schedule (linear warm-up then cosine) is a ``LambdaLR`` handed to ``deepspeed.initialize``
  (see :func:`lr_lambda`), so its state is saved in and restored from DeepSpeed checkpoints with the rest.
"""

from __future__ import annotations

import math
from typing import Any, Callable

from step_ray.config import TrainConfig


def deepspeed_config(train: TrainConfig, use_bf16: bool) -> dict[str, Any]:
    """DeepSpeed's config dict for ``train`` (``use_bf16``: the caller decided bf16 is available)."""
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
    return {
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
                "torch_adam": True,
            },
        },
        "bf16": {"enabled": bool(use_bf16)},
        "fp16": {"enabled": False},
        "zero_optimization": zero,
        "zero_allow_untested_optimizer": True,
        # Our own logging reports throughput; DeepSpeed's per-step prints would flood the worker logs.
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }


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
