"""Training speed and memory of the step-ray stack, against baselines measured in the same run.

1. Speed: samples/s (training sequences per second, both workers together) of the full stack - Ray Train
   ``TorchTrainer``, DeepSpeed ZeRO-2, LoRA, frames decoded and encoded by a Ray Data actor and streamed to the
   workers - against a plain PyTorch DDP loop (two ``torch.multiprocessing`` processes, gloo, torch AdamW) on
   the same tiny model, the same LoRA, the same batch size and the same questions, decoding and encoding its
   batches in the loop (the same decoder and processor code, as a PyTorch ``DataLoader`` with no worker
   processes would). A second DDP figure trains on sequences encoded beforehand: the compute-only ceiling.
   All exclude start-up: the stack's figure is the mean of its logged windows after the first; the DDP
   loops' clocks start after their warm-up steps. Goal: stack >= 0.85 x DDP.
2. Memory: per-worker peak RSS and per-worker model + optimizer state (MiB) of full fine-tuning (LoRA off,
   where ZeRO has something to partition) under ZeRO-3 against ZeRO-0 (plain data parallel).

    flock /tmp/step-ray-heavy.lock .venv/bin/python benchmarks/bench_train.py [--steps 30] [--out FILE]

Prints a table and writes JSON (default ``benchmarks/results/bench_train.json``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("DS_ACCELERATOR", "cpu")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from step_ray.config import load_config  # noqa: E402

BATCH = 4  # questions per worker per micro-batch (two sequences each)
COMMON = ["train.num_workers=2", "train.cpus_per_worker=0.5", "train.data.num_cpus=0.5", "train.warmup_steps=2",
          f"train.batch_size={BATCH}", "train.lr=5e-3", "train.progress=false", "train.lora.r=8"]


# ------------------------------------------------------------------------------------------------ DDP baseline


def _ddp_worker(rank: int, world: int, port: int, cfg_data: dict, seq_file: str, steps: int, warmup: int,
                result_file: str, preencoded: bool) -> None:
    import torch.distributed as dist
    from peft import LoraConfig, get_peft_model
    from torch.nn.parallel import DistributedDataParallel

    from step_ray.config import from_dict
    from step_ray.models.families import family_of
    from step_ray.models.loading import load_model_and_processor
    from step_ray.models.encoding import collate
    from step_ray.train.loss import step_loss

    torch.set_num_threads(1)  # as the stack's 0.5-CPU workers
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    cfg = from_dict(cfg_data)
    model, processor = load_model_and_processor(cfg.model, seed=cfg.run.seed)
    model.requires_grad_(False)
    torch.manual_seed(cfg.run.seed)
    lora = cfg.train.lora
    model = get_peft_model(model, LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                                             target_modules=family_of(cfg.model).lora_target_regex(
                                                 lora.target_modules), bias="none"))
    model.train()
    ddp = DistributedDataParallel(model)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=cfg.train.lr)
    pad = int(processor.tokenizer.pad_token_id or 0)
    if preencoded:
        seqs = torch.load(seq_file, weights_only=True)
        mine, per_batch = seqs[rank::world], 2 * BATCH
    else:
        import pyarrow.parquet as pq

        from step_ray.train.data import RowEncoder

        encoder = RowEncoder(processor, cfg.model, cfg.train.rationale_weight, cfg.train.loss_format)
        rows = [r for r in pq.read_table(seq_file).to_pylist() if r["split"] == "train"]
        mine, per_batch = rows[rank::world], BATCH
    samples, start = 0, None
    for step in range(warmup + steps):
        if step == warmup:
            dist.barrier()
            start = time.perf_counter()
        i = (step * per_batch) % max(1, len(mine) - per_batch)
        chunk = mine[i:i + per_batch]
        batch = collate(chunk, pad) if preencoded else encoder(chunk)
        labels, task = batch.pop("labels"), batch.pop("task")
        batch.pop("label_task", None)
        out = step_loss(ddp(**batch, use_cache=False).logits, labels, task, cfg.train.rationale_weight)
        optimizer.zero_grad(set_to_none=True)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        if step >= warmup:
            samples += labels.shape[0]
    elapsed = time.perf_counter() - start
    total = torch.tensor([samples], dtype=torch.float64)
    dist.all_reduce(total)
    if rank == 0:
        Path(result_file).write_text(json.dumps({"samples_per_s": total.item() / elapsed, "seconds": elapsed}))
    dist.destroy_process_group()


def ddp_baseline(cfg, qra: Path, steps: int, warmup: int, work: Path, preencoded: bool) -> dict:
    """samples/s of the plain DDP loop (decoding in the loop, or on sequences encoded beforehand)."""
    import pyarrow.parquet as pq
    import torch.multiprocessing as mp

    from step_ray.models.loading import load_processor, resolve_base
    from step_ray.train.data import RowEncoder

    from step_ray.config import to_dict

    result_file = work / f"ddp_{preencoded}.json"
    seq_file = work / "seqs.pt"
    if preencoded:
        processor = load_processor(resolve_base(cfg.model, cfg.run.seed))
        encoder = RowEncoder(processor, cfg.model, cfg.train.rationale_weight, cfg.train.loss_format)
        rows = [r for r in pq.read_table(qra).to_pylist() if r["split"] == "train"]
        torch.save([s for r in rows for s in encoder.sequences(r)], seq_file)
    port = 29500 + (os.getpid() + int(preencoded)) % 1000
    mp.spawn(_ddp_worker, args=(2, port, to_dict(cfg), str(seq_file if preencoded else qra), steps, warmup,
                                str(result_file), preencoded), nprocs=2, join=True)
    return json.loads(result_file.read_text())


# ------------------------------------------------------------------------------------------------ main


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=30, help="optimizer steps of the speed runs")
    parser.add_argument("--videos", type=int, default=16, help="toy videos (3 questions each)")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "bench_train.json"))
    args = parser.parse_args()

    import ray

    from step_ray.train.toy import make_toy_qra
    from step_ray.train.trainer import run_training
    from step_ray.utils.env import worker_env

    work = Path(tempfile.mkdtemp(prefix="bench_train_"))
    os.environ.setdefault("STEP_RAY_CACHE", str(work / "cache"))
    qra = make_toy_qra(work / "toy", videos=args.videos, seed=0)
    ray.init(num_cpus=2, dashboard_host="127.0.0.1", runtime_env={"env_vars": worker_env()},
             _temp_dir=tempfile.mkdtemp(prefix="ray_"))
    results: dict = {"machine": {"cpus": os.cpu_count(), "ray_cpus": 2}, "steps": args.steps, "batch": BATCH}
    try:
        log = max(1, args.steps // 6)
        speed_cfg = load_config(None, COMMON + ["train.zero_stage=2", f"train.steps={args.steps}",
                                                f"train.log_every={log}", f"train.checkpoint_every={args.steps}"])
        started = time.perf_counter()
        stack = run_training(speed_cfg, qra, work / "stack", name="speed")
        results["stack_zero2"] = {"samples_per_s": stack["samples_per_s"], "tokens_per_s": stack["tokens_per_s"],
                                  "wall_seconds": time.perf_counter() - started}
        results["ddp"] = ddp_baseline(speed_cfg, qra, steps=args.steps - log, warmup=log, work=work,
                                      preencoded=False)
        results["ddp_preencoded"] = ddp_baseline(speed_cfg, qra, steps=args.steps - log, warmup=log, work=work,
                                                 preencoded=True)
        results["speed_ratio"] = results["stack_zero2"]["samples_per_s"] / results["ddp"]["samples_per_s"]
        results["speed_ratio_vs_preencoded"] = (results["stack_zero2"]["samples_per_s"]
                                                / results["ddp_preencoded"]["samples_per_s"])

        for stage in (0, 3):
            cfg = load_config(None, COMMON + [f"train.zero_stage={stage}", "train.lora.enabled=false",
                                              "train.lr=1e-4", "train.steps=3", "train.log_every=1",
                                              "train.checkpoint_every=3"])
            summary = run_training(cfg, qra, work / f"mem{stage}", name=f"mem{stage}")
            results[f"memory_zero{stage}"] = {"peak_rss_mb": summary["peak_rss_mb"], "state_mb": summary["state_mb"]}
        z0, z3 = results["memory_zero0"], results["memory_zero3"]
        results["memory_ratio"] = {"peak_rss": z3["peak_rss_mb"] / z0["peak_rss_mb"],
                                   "state": z3["state_mb"] / z0["state_mb"]}
    finally:
        ray.shutdown()

    print("\nstep-ray training benchmark (tiny Qwen2.5-VL, 2 workers, CPU)")
    print(f"{'':36}{'samples/s':>12}{'ratio':>10}")
    ddp, pre = results["ddp"]["samples_per_s"], results["ddp_preencoded"]["samples_per_s"]
    print(f"{'plain PyTorch DDP, decoding in loop':36}{ddp:>12.2f}{1.0:>10.2f}")
    print(f"{'Ray Train + ZeRO-2 + Ray Data':36}{results['stack_zero2']['samples_per_s']:>12.2f}"
          f"{results['speed_ratio']:>10.2f}   (goal >= 0.85)")
    print(f"{'plain PyTorch DDP, pre-encoded':36}{pre:>12.2f}{pre / ddp:>10.2f}   (compute-only ceiling)")
    print(f"\n{'full fine-tune, per worker':36}{'peak RSS MiB':>14}{'state MiB':>12}")
    for stage in (0, 3):
        m = results[f"memory_zero{stage}"]
        print(f"{'ZeRO-' + str(stage):36}{m['peak_rss_mb']:>14.0f}{m['state_mb']:>12.1f}")
    r = results["memory_ratio"]
    print(f"{'ZeRO-3 / ZeRO-0':36}{r['peak_rss']:>14.2f}{r['state']:>12.2f}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=1))
    print(f"\nwritten: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
