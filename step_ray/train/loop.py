"""The per-worker training recipe: what every Ray Train worker runs (``train_loop_per_worker``).

Read it top to bottom, like a torchtune recipe:

1. ``setup_environment``  - DeepSpeed's accelerator, threads, the device, the process group.
2. ``build_model``        - the base Video-LLM, vision tower frozen, LoRA on the language model (or full
                            fine-tuning), gradient checkpointing when asked.
3. ``build_engine``       - DeepSpeed ZeRO (stage, offload, precision from the config, or the user's JSON) with
                            AdamW and warm-up + cosine.
4. ``restore``            - resume from the run's latest Ray Train checkpoint, if there is one (a re-run with the
                            same run name, or Ray Train restarting the worker group after a worker died).
5. the loop               - micro-batches from this worker's Ray Data shard (``iter_torch_batches``; frames are
                            decoded and encoded by the data stream's CPU actors, see :mod:`step_ray.train.stream`)
                            -> loss -> backward -> step; metrics every ``log_every`` steps (handed to Ray Train
                            at most once per its poll interval, see ``report_interval_s``), a checkpoint every
                            ``checkpoint_every``; a progress bar on rank 0.
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
from step_ray.utils.errors import NO_TRAINABLE_ROWS, NothingUsable

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
    """A peft ``target_modules`` regex that matches only the language model's projections (every supported
    family names them alike; see :meth:`step_ray.models.families.Family.lora_target_regex`)."""
    from step_ray.models.families import FAMILIES

    return FAMILIES["qwen2_5_vl"].lora_target_regex(target_modules)


def load_dtype(cfg: StepRayConfig) -> torch.dtype:
    """The dtype the base is loaded in: the training precision for a real checkpoint (a 7B model in fp32 is
    33 GB, more than a 24 GB GPU or a 32 GB node holds before DeepSpeed would cast it), fp32 for the tiny model
    (its exported base is checked against the workers' weights by fingerprint, in fp32)."""
    from step_ray.models.loading import TINY

    if cfg.model.name_or_path == TINY:
        return torch.float32
    return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(cfg.train.precision, torch.float32)


def build_model(cfg: StepRayConfig, device: torch.device) -> tuple[Any, Any]:
    """(model, processor): the base in :func:`load_dtype`, everything frozen but LoRA (or the whole language
    model)."""
    from step_ray.models.families import family_of
    from step_ray.models.loading import load_model_and_processor

    family = family_of(cfg.model)
    model, processor = load_model_and_processor(cfg.model, device=device, dtype=load_dtype(cfg), seed=cfg.run.seed)
    model.requires_grad_(False)
    if cfg.train.gradient_checkpointing:
        # Non-reentrant: works with frozen inputs (LoRA) and under ZeRO-3's parameter hooks.
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.config.use_cache = False
    lora = cfg.train.lora
    # Same seed on every rank: the LoRA A matrices must start identical on all data-parallel replicas.
    torch.manual_seed(cfg.run.seed)
    if lora.enabled:
        from peft import LoraConfig, get_peft_model

        peft_cfg = LoraConfig(
            r=lora.r,
            lora_alpha=lora.alpha,
            lora_dropout=lora.dropout,
            target_modules=family.lora_target_regex(lora.target_modules),
            bias="none",
        )
        model = get_peft_model(model, peft_cfg)
    else:
        vision = f".{family.vision_module}."
        for name, param in model.named_parameters():
            if "language_model" in name or name.startswith("lm_head") or (lora.train_vision and vision in name):
                param.requires_grad_(True)
    model.train()
    return model, processor


def build_engine(cfg: StepRayConfig, model: Any, use_bf16: bool, use_fp16: bool = False,
                 user_ds: Optional[dict] = None) -> Any:
    """The DeepSpeed engine (optimizer and LR schedule inside); ``user_ds``: the user's DeepSpeed JSON."""
    import deepspeed
    from torch.optim.lr_scheduler import LambdaLR

    from step_ray.train.deepspeed_config import deepspeed_config, lr_lambda

    params = [p for p in model.parameters() if p.requires_grad]
    schedule = lr_lambda(cfg.train)
    engine, _, _, _ = deepspeed.initialize(
        model=model,
        model_parameters=params,
        config=deepspeed_config(cfg.train, use_bf16=use_bf16, use_fp16=use_fp16, user=user_ds),
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
    shard: Any, collate: Any, batch_size: int, prefetch: int, shuffle_batches: int, seed: int
) -> Iterator[tuple[Optional[dict[str, torch.Tensor]], int, int, int, int]]:
    """Endless ``(micro-batch or None, questions, skipped rows, lowest stream position or -1, epoch)`` from this
    worker's shard, epoch after epoch.

    ``batch_size`` stream rows (sequences) become exactly one item, usable or not, so all workers advance
    through their (equal-size, ``equal=True``) shards in lockstep and meet at the same epoch boundaries: Ray
    Data's split coordinator makes every split wait there for the others, and a worker waiting there while
    another waits in a gradient all-reduce would deadlock. With ``shuffle_batches > 0`` rows are shuffled within a
    buffer of that many micro-batches, differently every epoch (the row count, and so the batch count, stays the
    same).
    """
    epoch = 0
    while True:
        produced = 0
        for item in shard.iter_torch_batches(
            batch_size=batch_size, collate_fn=collate, drop_last=False, prefetch_batches=prefetch,
            local_shuffle_buffer_size=(shuffle_batches * batch_size) or None, local_shuffle_seed=seed + epoch,
        ):
            produced += 1
            yield (*item, epoch)
        epoch += 1
        if produced == 0:
            raise RuntimeError("this worker's data shard is empty: the train split has fewer rows than workers")


def agreed_batches(batches: Iterator[tuple], device: torch.device) -> Iterator[tuple[tuple, bool, float]]:
    """``(item of batches, whether every rank has a usable micro-batch, seconds waited for it)``, one item at a
    time. When a rank has none, all ranks skip that micro-batch together: a rank that ran forward and backward
    alone would hang the others in the gradient reduction.

    The ranks agree one micro-batch ahead: the next item is fetched, and its flag's all-reduce started without
    waiting (``async_op``), before the current one is yielded to train, so the agreement runs under the current
    forward pass instead of as one more collective in every step's critical path (ZeRO-2 already meets three:
    the gradient reduction, the norm for clipping and the parameter all-gather; plain DDP one). The look-ahead
    keeps the ranks in lockstep: every rank fetches item ``i + 1`` at the same point (before training item
    ``i``), so a rank waiting at the shard's epoch boundary never waits for one that is inside a collective. The
    last item fetched ahead is never yielded: what the run counts as consumed is what it was handed.
    """
    import torch.distributed as dist

    def start(item: tuple) -> tuple[torch.Tensor, Any]:
        flag = torch.tensor([0 if item[0] is None else 1], dtype=torch.int32, device=device)
        work = dist.all_reduce(flag, op=dist.ReduceOp.MIN, async_op=True) if dist.is_initialized() else None
        return flag, work

    def fetch() -> tuple[tuple, float]:
        began = time.perf_counter()
        item = next(batches)
        return item, time.perf_counter() - began

    current, waited = fetch()
    flag, work = start(current)
    while True:
        ahead, ahead_waited = fetch()
        ahead_flag, ahead_work = start(ahead)
        if work is not None:
            work.wait()
        yield current, bool(flag.item()), waited
        current, waited, flag, work = ahead, ahead_waited, ahead_flag, ahead_work


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


def cast_visual(batch: dict[str, torch.Tensor], dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """Pixel inputs in the model's dtype (bf16 / fp16 engines); token ids and grids stay as they are."""
    return {k: (v.to(dtype) if k.startswith("pixel_values") else v) for k, v in batch.items()}


def local_state_mb(engine: Any) -> float:
    """MiB of model and optimizer state held by this rank: its parameters (its partition under ZeRO-3), the
    optimizer's fp32 master copies and Adam moments (its partition under ZeRO-1/2/3). The figure ZeRO shrinks;
    peak RSS also holds the libraries, activations and the frozen base."""
    seen: set[int] = set()
    total = 0

    def add(t: Any) -> None:
        nonlocal total
        if torch.is_tensor(t) and id(t) not in seen:
            seen.add(id(t))
            total += t.numel() * t.element_size()

    for p in engine.module.parameters():
        add(p.ds_tensor if hasattr(p, "ds_tensor") else p)
    optimizer = getattr(engine.optimizer, "optimizer", engine.optimizer)
    for group in getattr(optimizer, "param_groups", []):
        for p in group["params"]:
            add(p)
    for state in getattr(optimizer, "state", {}).values():
        for t in state.values():
            add(t)
    return total / 2**20


def peak_rss_mb() -> float:
    """Peak resident memory of this process (Linux reports KiB)."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def peak_gpu_mb(device: torch.device) -> float:
    """Peak GPU memory allocated by this process's tensors on ``device`` (MiB); 0 on CPU."""
    return torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else 0.0


def progress_bar(cfg: StepRayConfig, rank: int, step: int) -> Any:
    """Rank 0's progress bar (``ray.experimental.tqdm_ray``: drawn by the driver, not interleaved logs)."""
    if rank != 0 or not cfg.train.progress:
        return None
    from ray.experimental.tqdm_ray import tqdm

    bar = tqdm(total=cfg.train.steps, desc="train", unit="step")
    if step:
        bar.update(step)  # a resumed run starts where its checkpoint left off
    return bar


def train_loop_per_worker(config: dict) -> None:
    """The Ray Train worker function. ``config``: ``{"cfg": to_dict(StepRayConfig), "ds": user DeepSpeed JSON
    or None, "cache_blocks": the encode cache's ObjectRefs or None}``."""
    cfg = from_dict(config["cfg"])
    tc = cfg.train
    device, rank, world = setup_environment(cfg)

    import ray.train
    import torch.distributed as dist

    from step_ray.train.loss import step_loss
    from step_ray.train.stream import ShardCollate, replay_tables, sequences_per_row

    use_bf16 = tc.precision == "bf16"  # DeepSpeed's CPU backend runs bf16 too
    use_fp16 = tc.precision == "fp16" and device.type == "cuda"
    half = torch.bfloat16 if use_bf16 else torch.float16 if use_fp16 else None
    model, processor = build_model(cfg, device)
    # Before DeepSpeed: ZeRO-3 partitions the parameters in place.
    base_fingerprint = model_fingerprint(model) if cfg.model.name_or_path == "tiny" else None
    engine = build_engine(cfg, model, use_bf16, use_fp16, config.get("ds"))
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
    counters = {k: int(state.get(k, 0)) for k in ("rows", "skipped", "samples", "micro_batches", "restores")}
    counters["restores"] += 1 if state else 0  # a restart after a failure, or a re-run of the same run name
    # Where the stream resumed: (step, the checkpoint's position, the first position this rank trained on).
    resumes: list = list(state.get("resumes", []))
    if rank == 0 and tc.lora.enabled:
        engine.module.print_trainable_parameters()

    batch_rows = tc.batch_size * sequences_per_row(cfg)
    # The checkpoint's stream position (questions consumed, all ranks): positions below it were trained on
    # before this (re)start and are dropped if the stream delivers them again (see step_ray.train.stream).
    position = counters["rows"]
    # The encode cache the replayed stream points into: zero-copy views of the node's object store.
    cache = replay_tables(ray.get(list(config["cache_blocks"]))) if config.get("cache_blocks") else None
    collate = ShardCollate(int(processor.tokenizer.pad_token_id or 0), start=position, cache=cache)
    batches = micro_batches(ray.train.get_dataset_shard("train"), collate,
                            batch_rows, tc.data.prefetch_batches, tc.data.shuffle_buffer,
                            seed=cfg.run.seed * 100_003 + rank * 1009 + step)
    first_position = None
    bar = progress_bar(cfg, rank, step)

    # Running sums since the last log: loss, answer, rationale, micro-batches, questions, skipped rows,
    # sequences trained on, tokens (non-padding) trained on, seconds spent waiting for data.
    window = torch.zeros(9, dtype=torch.float64)
    # The loss terms summed on the device, read back once per log window (not a host sync per micro-batch).
    losses = torch.zeros(3, dtype=torch.float64, device=device)
    # Logged windows not yet handed to Ray Train, and when this worker last reported (see report_interval_s).
    pending: list[dict] = []
    interval = report_interval_s()
    last_report = time.perf_counter()
    window_start = time.perf_counter()
    run_start = time.perf_counter()
    start_step = step
    state_mb = None
    first_step_time: Optional[float] = None
    # The shard epoch in which the current run of unusable micro-batches began (None: the last one was used).
    # Every rank takes the same decision (agreed_batches), so every rank raises at the same micro-batch.
    unusable_since: Optional[int] = None
    agreed = agreed_batches(batches, device)
    while step < tc.steps:
        (batch, questions, skipped, first, epoch), usable, waited = next(agreed)
        if first_position is None and first >= 0:
            first_position = first
        window[8] += waited
        window[4] += questions
        window[5] += skipped
        if not usable:
            if unusable_since is None:
                unusable_since = epoch
            if epoch >= unusable_since + 2:
                # Two whole passes over the shard without one row to train on: every row's video failed to
                # decode (or its sequence to encode). Waiting would loop forever.
                raise NothingUsable(
                    f"{NO_TRAINABLE_ROWS} ({counters['skipped'] + int(window[5])} rows skipped"
                    f"{collate.last_skip_note()}): check the QRA rows' video_uri paths and the videos")
            continue
        unusable_since = None
        window[7] += float(batch["attention_mask"].sum())  # on the host batch: no device sync
        batch = {k: v.to(device) for k, v in batch.items()}
        labels = batch.pop("labels")
        task = batch.pop("label_task", None)
        seq_task = batch.pop("task")
        task = seq_task if task is None else task
        if half is not None:
            batch = cast_visual(batch, half)
        logits = engine(**batch, use_cache=False).logits
        out = step_loss(logits, labels, task, tc.rationale_weight)
        engine.backward(out.loss)
        boundary = engine.is_gradient_accumulation_boundary()
        engine.step()  # an optimizer step (and an LR step) only at the accumulation boundary
        losses += torch.stack([out.loss.detach(), out.answer, out.rationale]).to(torch.float64)
        window[3] += 1.0
        window[6] += labels.shape[0]
        if not boundary:
            continue
        step = int(engine.global_steps)
        if first_step_time is None:
            first_step_time = time.time()
        if state_mb is None:
            state_mb = local_state_mb(engine)  # after the first step: the optimizer states exist now
        if bar is not None:
            bar.update(1)

        log_now = step % tc.log_every == 0 or step == tc.steps
        ckpt_now = step % tc.checkpoint_every == 0 or step == tc.steps
        if not (log_now or ckpt_now):
            continue
        totals = window.to(device)  # nccl reduces device tensors only; gloo takes CPU ones
        totals[:3] += losses
        dist.all_reduce(totals)  # sums over ranks
        totals = totals.cpu()
        now = time.perf_counter()
        elapsed = max(now - window_start, 1e-9)
        n = max(totals[3].item(), 1.0)
        # The largest worker's figures, and whether any worker is due to report (the same answer on every rank:
        # ray.train.report is collective, every rank must call it at the same steps).
        maxima = torch.tensor([peak_rss_mb(), state_mb, peak_gpu_mb(device), float(now - last_report >= interval)],
                              dtype=torch.float64, device=device)
        dist.all_reduce(maxima, op=dist.ReduceOp.MAX)
        report_due = maxima[3].item() > 0
        metrics = {
            "step": step,
            "loss": totals[0].item() / n,
            "loss_answer": totals[1].item() / n,
            "loss_rationale": totals[2].item() / n,
            "lr": float(engine.get_lr()[0]),
            "samples_per_s": totals[6].item() / elapsed,
            "tokens_per_s": totals[7].item() / elapsed,
            "questions_per_s": (totals[4].item() - totals[5].item()) / elapsed,
            "skipped_rows": counters["skipped"] + int(totals[5].item()),
            # Share of the wall time the workers waited for the data stream (input-bound when high).
            "data_wait": totals[8].item() / world / elapsed,
            "peak_rss_mb": maxima[0].item(),
            "state_mb": maxima[1].item(),
            "peak_gpu_mb": maxima[2].item(),  # 0 on CPU
            # The window itself, so a benchmark can take rates over any run of windows (totals / seconds).
            "window_seconds": elapsed,
            "window_samples": totals[6].item(),
            "window_tokens": totals[7].item(),
            # Wall-clock (epoch) seconds at the window's end and at this (re)start's first optimizer step:
            # comparable with the driver's clock (a benchmark's start-up cost, the first step's wall time).
            "time": time.time(),
            "first_step_time": first_step_time,
            "restores": counters["restores"],
        }
        counters["rows"] += int(totals[4].item())
        counters["skipped"] += int(totals[5].item())
        counters["samples"] += int(totals[6].item())
        counters["micro_batches"] += int(totals[3].item())
        history.append(metrics)
        pending.append(metrics)
        window.zero_()
        losses.zero_()
        # Windows tile the run: the time spent logging and checkpointing below counts in the next window.
        window_start = now
        if rank == 0:
            logger.info("step %d %s", step, {k: round(v, 4) for k, v in metrics.items() if k != "step"})
            if bar is not None:
                bar.set_description(f"train loss {metrics['loss']:.3f} {metrics['samples_per_s']:.1f} samples/s")
        if ckpt_now:
            if not any(r[0] == start_step for r in resumes):  # the same on every rank: a matched collective
                # The lowest first position over the ranks: where this (re)start's stream began.
                none = 2**62
                low = torch.tensor([none if first_position is None else first_position], dtype=torch.int64,
                                   device=device)
                dist.all_reduce(low, op=dist.ReduceOp.MIN)
                resumes.append([start_step, position, -1 if int(low.item()) == none else int(low.item())])
            state = {"step": step, "history": history, **counters, "world_size": world, "resumes": resumes,
                     "seconds": time.perf_counter() - run_start, "start_step": start_step,
                     "base_fingerprint": base_fingerprint}
            save_checkpoint(engine, cfg, processor, state, report_of(pending), rank)
        elif report_due:
            ray.train.report(report_of(pending))
        else:
            continue  # the window waits for the next report
        pending = []
        last_report = time.perf_counter()
    if bar is not None:
        bar.close()


def report_interval_s() -> float:
    """The least seconds between two metrics reports of a worker (checkpoints are reported at once).

    Ray Train's controller takes one report off each worker's result queue (of size 1) per poll, every
    ``RAY_TRAIN_HEALTH_CHECK_INTERVAL_S`` (2 s by default): a worker that reports more often blocks in
    ``ray.train.report`` until the controller comes by. Measured on the toy run (2 CPU workers, ~7 steps/s,
    ``log_every`` 10): reporting every log step capped the run at 10 steps per 2 s and kept the workers
    waiting there ~19% of the time (``benchmarks/bench_train.py``). So the log windows are gathered and
    reported together, at most once per poll interval (:func:`report_of`); the metrics still reach the
    tracking callbacks one window at a time, each at its step."""
    try:
        from ray.train.v2._internal.constants import DEFAULT_HEALTH_CHECK_INTERVAL_S as default
        from ray.train.v2._internal.constants import HEALTH_CHECK_INTERVAL_S_ENV_VAR as name
    except ImportError:  # another Ray layout: its documented default
        name, default = "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", 2.0
    try:
        return float(os.environ.get(name, default))
    except ValueError:
        return float(default)


def report_of(windows: list[dict]) -> dict:
    """One ``ray.train.report`` for the log ``windows`` gathered since the last: the latest window's metrics
    (what Ray Train's ``Result.metrics`` shows) and, under ``windows``, every one of them in step order (what
    the tracking callbacks log, :func:`step_ray.train.tracking.report_windows`)."""
    return {**windows[-1], "windows": list(windows)}


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
