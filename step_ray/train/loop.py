"""The per-worker training recipe: what every Ray Train worker runs (``train_loop_per_worker``).

Read it top to bottom, like a torchtune recipe:

1. ``setup_environment``  - DeepSpeed's accelerator, threads, the device, the process group.
2. ``build_model``        - the base Video-LLM, vision tower frozen, LoRA on the language model.
3. ``build_engine``       - DeepSpeed ZeRO (stage from the config) with AdamW and warm-up + cosine.
4. ``restore``            - resume from the run's latest Ray Train checkpoint, if there is one.
5. the loop               - micro-batches from this worker's Ray Data shard -> loss -> backward -> step;
                            metrics every ``log_every`` steps, a checkpoint every ``checkpoint_every``.

Frames are decoded here, on the training worker, rather than in a Ray Data ``map_batches`` stage before the
trainer: a question needs only ``model.frames`` (2) small frames, decoding them costs a few milliseconds next
to a training step, and a separate decode stage would need CPU slots of its own beside the training workers
(on a 2-core machine the workers hold them all, and the stage would starve). The dataset that reaches the
trainer is the materialised train split of the QRA table (compact text rows), so the shards need no CPU either.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator, Optional

import torch

from step_ray.config import StepRayConfig, from_dict

logger = logging.getLogger(__name__)

DS_TAG = "ds"  # DeepSpeed checkpoint tag inside every Ray checkpoint directory
STATE_FILE = "state.json"  # step, metric history and counters, written by rank 0
ADAPTER_DIR = "adapter"  # the peft adapter (LoRA) or the full model (no LoRA), written by rank 0
MODEL_DIR = "model"


# ------------------------------------------------------------------------------------------------ setup


def quiet_ray_train_reports() -> None:
    """Ray Train logs every ``report`` of every worker at INFO (with the whole metrics dict); this recipe logs
    one metrics line per log step itself. Ray names that logger after its source file, hence the lookup."""
    try:
        from ray.train.v2._internal.execution import context
    except ImportError:  # another Ray layout: keep its logging as it is
        return
    logging.getLogger(context.__file__).setLevel(logging.WARNING)


def setup_environment(cfg: StepRayConfig) -> tuple[torch.device, int, int]:
    """(device, rank, world size). Must run before DeepSpeed is imported."""
    import ray.train

    quiet_ray_train_reports()
    use_cuda = cfg.train.use_gpu and torch.cuda.is_available()
    if not use_cuda:
        # DeepSpeed picks its accelerator at import time; on CPU hosts it must be told (DESIGN).
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    # One thread per reserved CPU: two workers on two cores must not each spawn a thread per core.
    torch.set_num_threads(max(1, int(cfg.train.cpus_per_worker)))
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    if use_cuda:
        device = torch.device("cuda", ctx.get_local_rank())
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")

    import deepspeed

    # Ray Train already created the process group (gloo on CPU, nccl on GPU): DeepSpeed adopts it.
    deepspeed.init_distributed(dist_backend="nccl" if use_cuda else "gloo", auto_mpi_discovery=False)
    return device, rank, world


def lora_target_regex(target_modules: list[str]) -> str:
    """A peft ``target_modules`` regex that matches only the language model's projections.

    Qwen2.5-VL's vision blocks also have ``gate_proj``/``up_proj``/``down_proj``; a plain name list would put
    adapters on the (frozen) vision tower too.
    """
    names = "|".join(sorted(set(target_modules)))
    return rf".*language_model\.layers\.\d+\.(self_attn|mlp)\.({names})"


def build_model(cfg: StepRayConfig, device: torch.device) -> tuple[Any, Any]:
    """(model, processor): the base in fp32, everything frozen but LoRA (or the whole language model)."""
    from step_ray.models.loading import load_model_and_processor

    model, processor = load_model_and_processor(cfg.model, device=device, dtype=torch.float32, seed=cfg.run.seed)
    model.requires_grad_(False)
    lora = cfg.train.lora
    # Same seed on every rank: the LoRA A matrices must start identical on all data-parallel replicas.
    torch.manual_seed(cfg.run.seed)
    if lora.enabled:
        from peft import LoraConfig, get_peft_model

        peft_cfg = LoraConfig(
            r=lora.r,
            lora_alpha=lora.alpha,
            lora_dropout=lora.dropout,
            target_modules=lora_target_regex(lora.target_modules),
            bias="none",
        )
        model = get_peft_model(model, peft_cfg)
    else:
        for name, param in model.named_parameters():
            if "language_model" in name or name.startswith("lm_head"):
                param.requires_grad_(True)
    model.train()
    return model, processor


def build_engine(cfg: StepRayConfig, model: Any, use_bf16: bool) -> Any:
    """The DeepSpeed engine (optimizer and LR schedule inside)."""
    import deepspeed
    from torch.optim.lr_scheduler import LambdaLR

    from step_ray.train.deepspeed_config import deepspeed_config, lr_lambda

    params = [p for p in model.parameters() if p.requires_grad]
    schedule = lr_lambda(cfg.train)
    engine, _, _, _ = deepspeed.initialize(
        model=model,
        model_parameters=params,
        config=deepspeed_config(cfg.train, use_bf16=use_bf16),
        lr_scheduler=lambda optimizer: LambdaLR(optimizer, schedule),
    )
    return engine


def restore(engine: Any) -> dict[str, Any]:
    """Load the run's latest Ray Train checkpoint into ``engine``; its ``state.json`` ({} when starting fresh).

    Every rank reads the *merged* checkpoint (with ZeRO-1/2 only rank 0 wrote the module states, each rank its
    own optimizer partition), not a directory of its own.
    """
    import ray.train

    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None:
        return {}
    with checkpoint.as_directory() as directory:
        load_path, _ = engine.load_checkpoint(
            directory, tag=DS_TAG, load_module_strict=False,  # frozen base weights are not in it
            load_optimizer_states=True, load_lr_scheduler_states=True,
        )
        if load_path is None:
            raise RuntimeError(f"DeepSpeed found no checkpoint '{DS_TAG}' in {directory}")
        state = json.loads((Path(directory) / STATE_FILE).read_text())
    logger.info("resumed from step %s", state.get("step"))
    return state


# ------------------------------------------------------------------------------------------------ data


def micro_batches(
    shard: Any, encoder: Any, batch_size: int, seed: int
) -> Iterator[Optional[dict[str, torch.Tensor]]]:
    """Endless micro-batches from this worker's shard (epoch after epoch); None for a batch with no usable row.

    One raw batch of rows becomes exactly one item, usable or not, so all workers advance through their
    (equal-size, ``equal=True``) shards in lockstep and meet at the same epoch boundaries: Ray Data's split
    coordinator makes every split wait there for the others, and a worker waiting there while another waits in
    a gradient all-reduce would deadlock. Rows are shuffled within a small buffer, differently every epoch
    (the row count, and so the batch count, stays the same).
    """
    from step_ray.train.data import rows_from_batch

    epoch = 0
    while True:
        produced = 0
        for raw in shard.iter_batches(batch_size=batch_size, batch_format="pyarrow", drop_last=False,
                                      local_shuffle_buffer_size=4 * batch_size, local_shuffle_seed=seed + epoch):
            produced += 1
            yield encoder(rows_from_batch(raw))
        epoch += 1
        if produced == 0:
            raise RuntimeError("this worker's data shard is empty: the train split has fewer rows than workers")


def all_ranks_have_data(batch: Optional[dict], device: torch.device) -> bool:
    """True when every rank has a usable micro-batch; otherwise all ranks skip it together (collectives
    stay matched: a rank that ran forward/backward alone would hang the others)."""
    import torch.distributed as dist

    flag = torch.tensor([0 if batch is None else 1], dtype=torch.int32, device=device)
    if dist.is_initialized():
        dist.all_reduce(flag, op=dist.ReduceOp.MIN)
    return bool(flag.item())


# ------------------------------------------------------------------------------------------------ checkpoint


def export_weights(engine: Any, cfg: StepRayConfig, directory: Path, rank: int, processor: Any) -> None:
    """Rank 0 writes the Hugging Face adapter (or the full model and its processor, without LoRA).

    Collective under ZeRO-3: the partitioned parameters are gathered on every rank first (without the gather,
    ``get_peft_model_state_dict`` returns empty tensors).
    """
    import deepspeed

    module = engine.module
    if cfg.train.zero_stage == 3:
        params = [p for p in module.parameters() if p.requires_grad] if cfg.train.lora.enabled else list(
            module.parameters())
        gather = deepspeed.zero.GatheredParameters(params, modifier_rank=None)
    else:
        gather = contextlib.nullcontext()
    with gather:
        if rank == 0:
            target = directory / (ADAPTER_DIR if cfg.train.lora.enabled else MODEL_DIR)
            module.save_pretrained(str(target), safe_serialization=True)
            if not cfg.train.lora.enabled:
                processor.save_pretrained(str(target))  # a complete from_pretrained directory


def save_checkpoint(
    engine: Any, cfg: StepRayConfig, processor: Any, state: dict, metrics: dict, rank: int
) -> None:
    """Every rank saves its DeepSpeed state, rank 0 adds the adapter and ``state.json``; one Ray report."""
    import ray.train
    import torch.distributed as dist
    from ray.train import Checkpoint

    with tempfile.TemporaryDirectory(prefix="step_ray_ckpt_") as tmp:
        # Frozen base weights are rebuilt from the config on resume: keep checkpoints adapter-sized.
        engine.save_checkpoint(tmp, tag=DS_TAG, exclude_frozen_parameters=True)
        export_weights(engine, cfg, Path(tmp), rank, processor)
        if rank == 0:
            (Path(tmp) / STATE_FILE).write_text(json.dumps(state, indent=1))
        dist.barrier()
        ray.train.report(metrics, checkpoint=Checkpoint.from_directory(tmp))


# ------------------------------------------------------------------------------------------------ the loop


def train_loop_per_worker(config: dict) -> None:
    """The Ray Train worker function. ``config``: ``{"cfg": to_dict(StepRayConfig)}``."""
    cfg = from_dict(config["cfg"])
    tc = cfg.train
    device, rank, world = setup_environment(cfg)

    import ray.train
    import torch.distributed as dist

    from step_ray.train.data import RowEncoder
    from step_ray.train.loss import step_loss

    use_bf16 = tc.precision == "bf16" and device.type == "cuda"
    model, processor = build_model(cfg, device)
    # Before DeepSpeed: ZeRO-3 partitions the parameters in place.
    base_fingerprint = model_fingerprint(model) if cfg.model.name_or_path == "tiny" else None
    engine = build_engine(cfg, model, use_bf16)
    state = restore(engine)
    step = int(engine.global_steps)  # restored with the checkpoint; 0 on a fresh start
    if state and int(state.get("step", step)) != step:
        raise RuntimeError(f"checkpoint state step {state.get('step')} != DeepSpeed step {step}")
    if state.get("base_fingerprint") and base_fingerprint and state["base_fingerprint"] != base_fingerprint:
        # The adapter would be continued on other base weights (e.g. the tiny recipe changed): refuse.
        raise RuntimeError(
            f"the checkpoint was trained on base weights {state['base_fingerprint']}, this base is "
            f"{base_fingerprint}: use a new run name (or the old model) instead of resuming")
    history: list[dict] = list(state.get("history", []))
    counters = {k: int(state.get(k, 0)) for k in ("rows", "skipped")}
    if rank == 0 and tc.lora.enabled:
        engine.module.print_trainable_parameters()

    encoder = RowEncoder(processor, cfg.model, tc.rationale_weight)
    batches = micro_batches(ray.train.get_dataset_shard("train"), encoder, tc.batch_size,
                            seed=cfg.run.seed * 100_003 + rank * 1009 + step)

    # Running sums since the last log: loss, answer, rationale, micro-batches, rows seen, rows skipped.
    window = torch.zeros(6, dtype=torch.float64)
    window_start = time.perf_counter()
    run_start = time.perf_counter()
    start_step = step
    while step < tc.steps:
        rows_before, skipped_before = encoder.stats.rows, encoder.stats.skipped
        batch = next(batches)
        window[4] += encoder.stats.rows - rows_before
        window[5] += encoder.stats.skipped - skipped_before
        if not all_ranks_have_data(batch, device):
            continue
        batch = {k: v.to(device) for k, v in batch.items()}
        task, labels = batch.pop("task"), batch.pop("labels")
        if use_bf16:
            batch["pixel_values_videos"] = batch["pixel_values_videos"].to(torch.bfloat16)
        logits = engine(**batch, use_cache=False).logits
        out = step_loss(logits, labels, task, tc.rationale_weight)
        engine.backward(out.loss)
        boundary = engine.is_gradient_accumulation_boundary()
        engine.step()  # an optimizer step (and an LR step) only at the accumulation boundary
        window[:4] += torch.tensor([out.loss.item(), out.answer.item(), out.rationale.item(), 1.0],
                                   dtype=torch.float64)
        if not boundary:
            continue
        step = int(engine.global_steps)

        log_now = step % tc.log_every == 0 or step == tc.steps
        ckpt_now = step % tc.checkpoint_every == 0 or step == tc.steps
        if not (log_now or ckpt_now):
            continue
        totals = window.to(device)  # nccl reduces device tensors only; gloo takes CPU ones
        dist.all_reduce(totals)  # sums over ranks
        totals = totals.cpu()
        elapsed = time.perf_counter() - window_start
        n = max(totals[3].item(), 1.0)
        metrics = {
            "step": step,
            "loss": totals[0].item() / n,
            "loss_answer": totals[1].item() / n,
            "loss_rationale": totals[2].item() / n,
            "lr": float(engine.get_lr()[0]),
            "samples_per_s": (totals[4].item() - totals[5].item()) / max(elapsed, 1e-9),
            "skipped_rows": counters["skipped"] + int(totals[5].item()),
        }
        counters["rows"] += int(totals[4].item())
        counters["skipped"] += int(totals[5].item())
        history.append(metrics)
        window.zero_()
        window_start = time.perf_counter()
        if rank == 0:
            logger.info("step %d %s", step, {k: round(v, 4) for k, v in metrics.items() if k != "step"})
        if ckpt_now:
            state = {"step": step, "history": history, **counters, "world_size": world,
                     "seconds": time.perf_counter() - run_start, "start_step": start_step,
                     "base_fingerprint": base_fingerprint}
            save_checkpoint(engine, cfg, processor, state, metrics, rank)
        else:
            ray.train.report(metrics)


def model_fingerprint(module: Any) -> str:
    """A short hash of the base weights (LoRA excluded, peft's renaming undone), so the driver can check that
    the base it exports is the one the workers trained on."""
    import hashlib

    digest = hashlib.sha256()
    named = {}
    for name, param in module.named_parameters():
        if "lora_" in name:
            continue
        name = name.removeprefix("base_model.model.").replace(".base_layer.", ".")
        named[name] = param
    for name in sorted(named):
        digest.update(name.encode())
        digest.update(named[name].detach().float().cpu().numpy().tobytes())
    return digest.hexdigest()[:16]
