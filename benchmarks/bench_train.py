"""Training speed of the step-ray stack against plain PyTorch DDP on the same work, at steady state, on the
rules of ``benchmarks/common.py`` (README.md); and the memory ZeRO-3 saves against ZeRO-0.

Cases (every round runs each once, the order reversed every other round):

* ``stack`` (candidate): ``run_training`` as users run it - Ray Train ``TorchTrainer`` with 2 workers of 0.5 CPU,
  DeepSpeed ZeRO-2, LoRA, the Ray Data stream on a 0.5-CPU actor with the encode cache (each question encoded
  once, every later pass replayed: ``train.data.cache``), metrics and a checkpoint as configured below.
* ``ddp`` (baseline): two ``torch.multiprocessing`` processes, gloo ``DistributedDataParallel``, torch AdamW, on
  the same tiny model, LoRA, batch and questions; each rank encodes each of its questions once, on first use,
  with the same ``RowEncoder`` (the same work as the stack's cache), and reuses the sequences after.
* ``stack-nocache`` (context, ``--nocache-case``): the stack with ``train.data.cache: false`` (every pass
  decodes and encodes its questions again, frame cache on): what the cache buys.
* ``bare`` (context, ``--bare-case``): Ray Train's ``TorchTrainer`` (2 workers of 0.5 CPU, its gloo process
  group) and the stack's DeepSpeed ZeRO-2 engine, running the baseline's loop on in-process data (no Ray Data,
  no metrics, no checkpoint): splits the stack's gap into Ray Train + DeepSpeed and the rest (the stream, the
  loop's bookkeeping, reports).
* ``stack-zero0`` (context, ``--zero0-case``): the stack with ``train.zero_stage: 0`` (DeepSpeed's plain data
  parallelism: one gradient all-reduce, no partitioned optimizer step): what ZeRO-2's extra collectives cost
  when, as with LoRA, there is next to nothing to partition.

The same work: 4 questions (8 sequences) per worker per step, fp32, one torch thread per worker, ``--steps``
optimizer steps (>= 120). The same window: a run's completions are its optimizer steps with the sequences they
trained (the stack's come from its logged windows, every ``log_every`` steps, which tile its run; DDP's from
every step); the window opens once ``--warmup`` of the run's sequences are trained and closes at its last step;
rate = sequences in the window / the window's wall seconds, both sides. Start-up cost - wall seconds from a
case's launch (``run_training`` called, ``mp.spawn`` called) to its first optimizer step - is reported beside
the rates, not in them. ``ratio=`` is stack / ddp (medians; goal >= 0.95).

    flock /tmp/step-ray-heavy.lock .venv/bin/python benchmarks/bench_train.py [--steps 120] [--repeats 3]

Writes ``benchmarks/results/bench_train.json``; prints a table, the memory figures and ``ratio=<x>`` last.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("DS_ACCELERATOR", "cpu")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from common import Case, Run, case_rows, finish, headline, measure, steady_window  # noqa: E402
from step_ray.config import load_config, to_dict  # noqa: E402

BATCH = 4  # questions per worker per micro-batch (two sequences each)
WORLD = 2
COMMON = [f"train.num_workers={WORLD}", "train.cpus_per_worker=0.5", "train.data.num_cpus=0.5",
          "train.warmup_steps=2", f"train.batch_size={BATCH}", "train.lr=5e-3", "train.progress=false",
          "train.lora.r=8", "train.tensorboard=false"]


# ------------------------------------------------------------------------------------------------ DDP baseline


def _ddp_worker(rank: int, world: int, port: int, cfg_data: dict, qra: str, steps: int, result_file: str) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)  # as the stack's 0.5-CPU workers
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    _train_steps(rank, world, cfg_data, qra, steps, result_file, deepspeed=False)
    dist.destroy_process_group()


def _bare_worker(config: dict) -> None:
    """Ray Train worker of the ``bare`` case: Ray Train's process group, DeepSpeed ZeRO-2 (the stack's
    ``build_engine``), the DDP baseline's loop and in-process data."""
    import ray.train

    torch.set_num_threads(1)
    context = ray.train.get_context()
    _train_steps(context.get_world_rank(), context.get_world_size(), config["cfg"], config["qra"], config["steps"],
                 config["result_file"], deepspeed=True)


def _train_steps(rank: int, world: int, cfg_data: dict, qra: str, steps: int, result_file: str,
                 deepspeed: bool) -> None:
    """The baseline's training loop on an initialised process group: torch DDP + AdamW + clipping, or (with
    ``deepspeed``) the stack's DeepSpeed engine in its place; rank 0 writes ``(time, sequences)`` per step."""
    import pyarrow.parquet as pq
    from peft import LoraConfig, get_peft_model
    from torch.nn.parallel import DistributedDataParallel

    from step_ray.config import from_dict
    from step_ray.models.encoding import collate
    from step_ray.models.families import family_of
    from step_ray.models.loading import load_model_and_processor
    from step_ray.train.data import RowEncoder
    from step_ray.train.loop import build_engine
    from step_ray.train.loss import step_loss

    cfg = from_dict(cfg_data)
    model, processor = load_model_and_processor(cfg.model, seed=cfg.run.seed)
    model.requires_grad_(False)
    torch.manual_seed(cfg.run.seed)
    lora = cfg.train.lora
    model = get_peft_model(model, LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                                             target_modules=family_of(cfg.model).lora_target_regex(
                                                 lora.target_modules), bias="none"))
    model.train()
    if deepspeed:
        engine = build_engine(cfg, model, use_bf16=False)  # ZeRO stage, AdamW, clipping: as the stack's
    else:
        ddp = DistributedDataParallel(model)
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=cfg.train.lr)
    pad = int(processor.tokenizer.pad_token_id or 0)
    encoder = RowEncoder(processor, cfg.model, cfg.train.rationale_weight, cfg.train.loss_format)
    rows = [r for r in pq.read_table(qra).to_pylist() if r["split"] == "train"]
    mine = rows[rank::world]
    encoded: dict[int, list] = {}  # each question encoded once, on first use (the stack's encode cache)
    events, tokens = [], 0.0
    for step in range(steps):
        seqs = []
        for j in range(step * BATCH, (step + 1) * BATCH):
            q = j % len(mine)
            if q not in encoded:
                encoded[q] = encoder.sequences(mine[q])
            seqs.extend(encoded[q])
        batch = collate(seqs, pad)
        labels, task = batch.pop("labels"), batch.pop("task")
        batch.pop("label_task", None)
        tokens += float(batch["attention_mask"].sum())
        if deepspeed:
            out = step_loss(engine(**batch, use_cache=False).logits, labels, task, cfg.train.rationale_weight)
            engine.backward(out.loss)
            engine.step()
        else:
            out = step_loss(ddp(**batch, use_cache=False).logits, labels, task, cfg.train.rationale_weight)
            optimizer.zero_grad(set_to_none=True)
            out.loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
        # The gradient all-reduce in backward keeps the ranks within one step: rank 0's clock times both.
        events.append((time.time(), float(labels.shape[0] * world)))
    if rank == 0:
        Path(result_file).write_text(json.dumps({"events": events, "tokens_per_sample": tokens * world / sum(
            n for _, n in events)}))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ddp_run(cfg, qra: Path, steps: int, warmup: float, work: Path) -> Run:
    import torch.multiprocessing as mp

    result_file = work / f"ddp-{time.time_ns()}.json"
    launched = time.time()
    mp.spawn(_ddp_worker, args=(WORLD, _free_port(), to_dict(cfg), str(qra), steps, str(result_file)),
             nprocs=WORLD, join=True)
    return _steps_run(result_file, launched, steps, warmup)


def bare_run(cfg, qra: Path, steps: int, warmup: float, work: Path) -> Run:
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    result_file = work / f"bare-{time.time_ns()}.json"
    launched = time.time()
    TorchTrainer(_bare_worker, train_loop_config={"cfg": to_dict(cfg), "qra": str(qra), "steps": steps,
                                                  "result_file": str(result_file)},
                 scaling_config=ScalingConfig(num_workers=WORLD, resources_per_worker={"CPU": 0.5}),
                 torch_config=TorchConfig(backend="gloo"),
                 run_config=RunConfig(name=result_file.stem, storage_path=str(work / "bare"))).fit()
    return _steps_run(result_file, launched, steps, warmup)


def _steps_run(result_file: Path, launched: float, steps: int, warmup: float) -> Run:
    data = json.loads(result_file.read_text())
    events = [tuple(e) for e in data["events"]]
    return steady_window(events, warmup, start=launched, startup_seconds=events[0][0] - launched,
                         steps=steps, tokens_per_sample=data["tokens_per_sample"])


# ------------------------------------------------------------------------------------------------ the stack


def stack_run(cfg, qra: Path, warmup: float, work: Path, name: str) -> Run:
    from step_ray.train.trainer import run_training

    launched = time.time()
    summary = run_training(cfg, qra, work / name, name=name)
    history = summary["history"]
    events = [(h["time"], h["window_samples"]) for h in history]
    samples = sum(h["window_samples"] for h in history)
    return steady_window(events, warmup, start=launched, startup_seconds=summary["startup_seconds"],
                         steps=summary["steps"], tokens_per_sample=sum(h["window_tokens"] for h in history) / samples,
                         data_wait=statistics.median(h["data_wait"] for h in history[1:] or history),
                         wall_seconds=summary["wall_seconds"])


# ------------------------------------------------------------------------------------------------ memory


def memory(qra: Path, work: Path) -> dict:
    """Per-worker peak RSS and model + optimizer state (MiB) of full fine-tuning (LoRA off: something for ZeRO
    to partition), ZeRO-3 against ZeRO-0; one short run each (the figures are peaks, not rates)."""
    from step_ray.train.trainer import run_training

    out = {}
    for stage in (0, 3):
        cfg = load_config(None, COMMON + [f"train.zero_stage={stage}", "train.lora.enabled=false", "train.lr=1e-4",
                                          "train.steps=3", "train.log_every=1", "train.checkpoint_every=3"])
        summary = run_training(cfg, qra, work / f"mem{stage}", name=f"mem{stage}")
        out[f"zero{stage}"] = {"peak_rss_mb": summary["peak_rss_mb"], "state_mb": summary["state_mb"]}
    out["zero3_over_zero0"] = {k: out["zero3"][k] / out["zero0"][k] for k in ("peak_rss_mb", "state_mb")}
    return out


# ------------------------------------------------------------------------------------------------ main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=120, help="optimizer steps of every speed run (>= 120)")
    parser.add_argument("--repeats", type=int, default=3, help="rounds of every case")
    parser.add_argument("--warmup", type=float, default=0.25, help="share of a run's sequences before its window")
    parser.add_argument("--log-every", type=int, default=10, help="the stack's train.log_every (its windows)")
    parser.add_argument("--videos", type=int, default=16, help="toy videos (3 questions each, 1 in 4 held out)")
    parser.add_argument("--nocache-case", action="store_true", help="add the stack without its encode cache")
    parser.add_argument("--zero0-case", action="store_true", help="add the stack at ZeRO stage 0 (context)")
    parser.add_argument("--bare-case", action="store_true",
                        help="add Ray Train + DeepSpeed with the baseline's loop and in-process data (context)")
    parser.add_argument("--no-memory", action="store_true", help="skip the ZeRO-3 / ZeRO-0 memory runs")
    parser.add_argument("--allow-short", action="store_true", help="allow --steps < 120 (smoke runs, tests)")
    args = parser.parse_args(argv)
    if args.steps < 120 and not args.allow_short:
        raise SystemExit("--steps: the rules ask for >= 120 steps (--allow-short for a smoke run)")

    import ray

    from step_ray.train.toy import make_toy_qra
    from step_ray.utils.env import worker_env

    work = Path(tempfile.mkdtemp(prefix="bench_train_"))
    os.environ.setdefault("STEP_RAY_CACHE", str(work / "cache"))
    qra = make_toy_qra(work / "toy", videos=args.videos, seed=0)
    speed = [f"train.steps={args.steps}", f"train.log_every={args.log_every}",
             f"train.checkpoint_every={args.steps}", "train.zero_stage=2"]
    stack_cfg = load_config(None, COMMON + speed)
    nocache_cfg = load_config(None, COMMON + speed + ["train.data.cache=false"])
    zero0_cfg = load_config(None, COMMON + speed + ["train.zero_stage=0"])
    ray.init(num_cpus=2, dashboard_host="127.0.0.1", runtime_env={"env_vars": worker_env()},
             _temp_dir=tempfile.mkdtemp(prefix="ray_"))
    counter = iter(range(10**6))
    cases = [
        Case("stack", lambda: stack_run(stack_cfg, qra, args.warmup, work, f"stack-{next(counter)}"),
             role="candidate", unit="sequences/s", note="Ray Train + ZeRO-2 + LoRA + Ray Data, encode cache"),
        Case("ddp", lambda: ddp_run(stack_cfg, qra, args.steps, args.warmup, work), role="baseline",
             unit="sequences/s", note="torch DDP (gloo) + LoRA + AdamW, each question encoded once"),
    ]
    if args.nocache_case:
        cases.append(Case("stack-nocache", lambda: stack_run(nocache_cfg, qra, args.warmup, work,
                                                             f"nocache-{next(counter)}"),
                          unit="sequences/s", note="the stack, train.data.cache=false (encodes every pass)"))
    if args.zero0_case:
        cases.append(Case("stack-zero0", lambda: stack_run(zero0_cfg, qra, args.warmup, work,
                                                           f"zero0-{next(counter)}"),
                          unit="sequences/s", note="the stack, train.zero_stage=0 (one all-reduce per step)"))
    if args.bare_case:
        cases.append(Case("bare", lambda: bare_run(stack_cfg, qra, args.steps, args.warmup, work),
                          unit="sequences/s", note="Ray Train + ZeRO-2, the baseline's loop, in-process data"))
    try:
        runs = measure(cases, args.repeats)
        mem = None if args.no_memory else memory(qra, work)
    finally:
        ray.shutdown()

    rows = case_rows(cases, runs, baseline="ddp")
    for row in rows:
        info = [r.info for r in runs[row["case"]]]
        row["startup_s"] = statistics.median(i["startup_seconds"] for i in info)
        row["tokens/seq"] = statistics.median(i["tokens_per_sample"] for i in info)
    notes = {"steps": args.steps, "warmup": args.warmup, "batch": f"{BATCH} questions x 2 sequences per worker",
             "workers": WORLD, "stack_log_every": args.log_every, "rounds": args.repeats,
             "startup": "wall seconds from launch to the first optimizer step (median), outside the rates",
             "goal": "stack / ddp >= 0.95 at steady state"}
    if mem is not None:
        notes["memory_full_finetune_per_worker_mib"] = mem
    head = headline(runs, "stack", "ddp")
    finish("bench_train", rows, notes, head, runs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
