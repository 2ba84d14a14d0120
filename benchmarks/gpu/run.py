"""The GPU benchmark of step-ray, in one go: each part of the product against a plain-PyTorch baseline doing the
same work on the same GPU, with peak GPU memory per actor / worker, as a printed table and a JSON file.

Parts (``--parts``, in this order):

``perception``  videos / hour / GPU of the STSG step (Ray Data GPU actors: decode, YOLO + ByteTrack, graphs) and
                of the same with the Video-LLM parsing keyframes; baseline: a plain loop (PyAV, batched YOLO,
                ByteTrack; the same generate() calls);
``train``       samples/s, tokens/s and MFU per GPU of the training step (Ray Train + DeepSpeed, bf16, gradient
                checkpointing) for LoRA and full fine-tuning under ZeRO-2 and ZeRO-3, with a Qwen2.5-VL-shaped
                model built from its config with random weights (``--size 3b`` or ``7b``); baseline: a plain
                PyTorch loop on one GPU;
``eval``        questions/s of multiple-choice evaluation; baseline: the same scoring as a plain loop.

Every rate is taken at steady state (warm-up excluded) by the rules of ``benchmarks/common.py``; a part that
does not fit the time budget (``--budget-s``, default 600 s, model building included) is skipped and says so.
The last line is ``ratio=<x>``: the geometric mean of every stack / baseline ratio measured (each is in the
table). ``--device cpu --size tiny`` runs the same code on a CPU at toy sizes (the test suite does).

    python benchmarks/gpu/run.py --device cuda --size 3b [--gpus N] [--out results/gpu.json]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Optional

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent), str(HERE.parents[1])]

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("RAY_DEDUP_LOGS", "0")

from common import RESULTS, format_table, machine  # noqa: E402

PARTS = ("perception", "train", "eval")


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    ap.add_argument("--size", choices=("tiny", "3b", "7b"), default="3b", help="model shape (default 3b)")
    ap.add_argument("--gpus", type=int, default=0, help="GPUs the stack may use (default: all visible)")
    ap.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated, of {', '.join(PARTS)}")
    ap.add_argument("--train-configs", default="lora-zero2,lora-zero3,full-zero2,full-zero3")
    ap.add_argument("--budget-s", type=float, default=600.0, help="time budget of the whole run (default 600)")
    ap.add_argument("--steps", type=int, default=8, help="timed training steps per configuration (default 8)")
    ap.add_argument("--warmup-steps", type=int, default=3, help="training steps before the window (default 3)")
    ap.add_argument("--batch", type=int, default=4, help="questions per GPU per step (2 sequences each)")
    ap.add_argument("--frames", type=int, default=4, help="frames per clip (model.frames)")
    ap.add_argument("--frame-size", type=int, default=224, help="model.frame_size")
    ap.add_argument("--videos", type=int, default=8, help="perception videos (default 8)")
    ap.add_argument("--video-seconds", type=int, default=20)
    ap.add_argument("--keyframes", type=int, default=4, help="parsed keyframes per video (semantics.max_keyframes)")
    ap.add_argument("--parse-tokens", type=int, default=160, help="tokens per parser answer (semantics.max_new_tokens)")
    ap.add_argument("--eval-questions", type=int, default=16)
    ap.add_argument("--yolo-weights", help="a local YOLO .pt (default: random yolo11n with a biased head)")
    ap.add_argument("--peak-tflops", type=float, help="the GPU's dense bf16 peak, if not in the table")
    ap.add_argument("--work", default=os.environ.get("STEP_RAY_BENCH_DIR", str(Path(tempfile.gettempdir()) / "step-ray-gpu-bench")))
    ap.add_argument("--out", default=str(RESULTS / "gpu.json"))
    return ap.parse_args(argv)


class Budget:
    def __init__(self, seconds: float):
        self.start, self.seconds = time.perf_counter(), seconds

    def left(self) -> float:
        return self.seconds - (time.perf_counter() - self.start)


def main(argv: Optional[list[str]] = None) -> int:
    args = parse_args(argv)
    if args.device == "cpu":
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    import ray
    import torch

    from shapes import SHAPES, build_checkpoint, peak_tflops, train_flops_per_token

    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: torch sees no CUDA device (use --device cpu for a toy run)")
    gpus = args.gpus or (torch.cuda.device_count() if args.device == "cuda" else 1)
    budget = Budget(args.budget_s)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    parts = [p for p in args.parts.split(",") if p]
    unknown = set(parts) - set(PARTS)
    if unknown:
        raise SystemExit(f"--parts: unknown {sorted(unknown)} (choose from {', '.join(PARTS)})")
    started_ray = False
    if not ray.is_initialized():
        from step_ray.utils.env import worker_env

        ray.init(num_gpus=gpus if args.device == "cuda" else 0, include_dashboard=False,
                 runtime_env={"env_vars": worker_env()}, logging_level="ERROR")
        started_ray = True
    cpus = float(ray.cluster_resources().get("CPU", 1))
    ckpt, meta = build_checkpoint(args.size, work / f"model_{args.size}", args.device, args.frame_size)
    results: dict[str, Any] = {"args": vars(args), "model": meta, "gpus": gpus, "machine": machine(),
                               "peak_tflops": peak_tflops(args.device, args.peak_tflops), "rows": []}
    rows: list[dict[str, Any]] = results["rows"]

    def record(part: str, case: str, stack: Optional[dict], base: Optional[dict], unit: str, key: str,
               extra: Optional[dict] = None) -> None:
        row = {"part": part, "case": case, "unit": unit,
               "stack": stack.get(key) if stack and "error" not in stack else None,
               "baseline": base.get(key) if base and "error" not in base else None}
        row["ratio"] = row["stack"] / row["baseline"] if row["stack"] and row["baseline"] else None
        row["stack_peak_gpu_mb"] = (stack or {}).get("peak_gpu_mb")
        row["baseline_peak_gpu_mb"] = (base or {}).get("peak_gpu_mb")
        for side, res in (("stack", stack), ("baseline", base)):
            if res and "error" in res:
                row[f"{side}_error"] = res["error"]
        row.update(extra or {})
        rows.append({**row, "stack_detail": stack, "baseline_detail": base})
        print(f"[{time.strftime('%H:%M:%S')}] {part} {case}: stack {row['stack']} baseline {row['baseline']} {unit}",
              flush=True)

    def guarded(fn: Callable[[], dict]) -> dict:
        try:
            return fn()
        except Exception as err:  # noqa: BLE001 - one failed case (an OOM) is a result, not the end of the run
            return {"error": f"{type(err).__name__}: {str(err).splitlines()[0][:300] if str(err) else ''}"}

    def skipped(part: str, case: str) -> bool:
        if budget.left() > 0:
            return False
        rows.append({"part": part, "case": case, "skipped": "time budget"})
        print(f"{part} {case}: skipped (time budget)", flush=True)
        return True

    try:
        if "perception" in parts:
            perception(args, ckpt, work, gpus, cpus, record, guarded, skipped)
        if "train" in parts:
            training(args, ckpt, meta, work, gpus, cpus, record, guarded, skipped, results["peak_tflops"],
                     SHAPES[args.size], train_flops_per_token)
        if "eval" in parts and not skipped("eval", "multiple choice"):
            evaluation(args, ckpt, work, record, guarded)
    finally:
        if started_ray:
            ray.shutdown()
    ratios = [r["ratio"] for r in rows if r.get("ratio")]
    results["ratio_geomean"] = math.exp(sum(math.log(r) for r in ratios) / len(ratios)) if ratios else None
    results["seconds"] = round(time.perf_counter() - budget.start, 1)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=1, default=str))
    table = [{k: v for k, v in r.items() if not k.endswith("_detail")} for r in rows]
    print(format_table(table))
    print(f"model: {args.size} ({meta['params'] / 1e9:.2f} B parameters), {gpus} x {args.device}, "
          f"{results['seconds']} s; written: {out}")
    if results["ratio_geomean"] is not None:
        print(f"ratio={results['ratio_geomean']:.3f}")
    return 0


def _common_overrides(args: argparse.Namespace, ckpt: Path) -> list[str]:
    return [f"model.name_or_path={ckpt}", f"model.frames={args.frames}", f"model.frame_size={args.frame_size}",
            "model.family=qwen2_5_vl"]


def perception(args, ckpt, work, gpus, cpus, record, guarded, skipped) -> None:
    from perception import PlainParser, biased_yolo_weights, corpus, plain_run, stack_run

    from step_ray.config import load_config

    weights = args.yolo_weights or str(biased_yolo_weights(work))
    videos = corpus(work / "perception_corpus", args.videos, args.video_seconds, 640, 352)
    on_gpu = args.device == "cuda"
    actor_cpus = max(0.25, min(2.0, (cpus - 0.5) / max(1, gpus)))
    if actor_cpus > 1:  # Ray takes fractions below 1 or whole numbers (the config refuses 1.5)
        actor_cpus = float(int(actor_cpus))
    base = _common_overrides(args, ckpt) + [
        "perception.detector=yolo", f"perception.yolo_weights={weights}", "perception.conf=0.25",
        f"perception.device={'cuda' if on_gpu else 'cpu'}", f"perception.pool.min_size={gpus}",
        f"perception.pool.max_size={gpus}", f"perception.pool.num_gpus={1 if on_gpu else 0}",
        f"perception.pool.num_cpus={actor_cpus}", "stsg.pool.num_cpus=0.25", "video.sample_fps=5",
        f"ray.num_gpus={gpus if on_gpu else 0}"]
    device = "cuda:0" if on_gpu else "cpu"
    for case, extra in (("YOLO + tracker", []), ("+ Video-LLM parser", [
            "semantics.enabled=true", f"semantics.max_keyframes={args.keyframes}",
            f"semantics.max_new_tokens={args.parse_tokens}"])):
        if skipped("perception", case):
            continue
        cfg = load_config(None, base + extra)
        stack = guarded(lambda: stack_run(cfg, videos, work / "perception_out", warmup=0.25))
        parser = PlainParser.load(str(ckpt), cfg.semantics, args.keyframes, device) if extra else None
        plain = guarded(lambda: plain_run(cfg, videos, device, warmup=0.25, parser=parser))
        parser = None  # (frees the parser model before the next case)
        for res, n in ((stack, gpus), (plain, 1)):
            if "videos_per_s" in res:
                res["videos_per_hour_per_gpu"] = res["videos_per_s"] * 3600 / n
        record("perception", case, stack, plain, "videos/h/GPU", "videos_per_hour_per_gpu")


def training(args, ckpt, meta, work, gpus, cpus, record, guarded, skipped, peak, shape, flops_per_token) -> None:
    from training import CONFIGS, plain_child, stack_run

    from step_ray.train.toy import make_toy_qra

    qra = make_toy_qra(work / "toy", videos=max(8, 2 * gpus), seed=0)
    on_gpu = args.device == "cuda"
    worker_cpus = max(0.5, min(4.0, (cpus - 1.0) / max(1, gpus)))
    total = args.warmup_steps + args.steps
    base = _common_overrides(args, ckpt) + [
        f"train.num_workers={gpus}", f"train.use_gpu={str(on_gpu).lower()}", f"train.cpus_per_worker={worker_cpus}",
        "train.data.num_cpus=1" if cpus >= gpus * worker_cpus + 1 else "train.data.num_cpus=0.5",
        "train.precision=bf16", "train.gradient_checkpointing=true", f"train.batch_size={args.batch}",
        f"train.steps={total}", "train.log_every=1", f"train.checkpoint_every={total}", "train.progress=false",
        "train.warmup_steps=1", "train.lr=1e-4", "train.lora.r=16"]
    wanted = set(args.train_configs.split(","))
    plain_done: dict[bool, dict] = {}
    for name, lora, zero in CONFIGS:
        if name not in wanted or skipped("train", name):
            continue
        stack = guarded(lambda: stack_run(base, name, lora, zero, qra, work, gpus, args.warmup_steps))
        if lora not in plain_done:  # the plain loop has no ZeRO: one run per LoRA / full
            plain_done[lora] = plain_child({
                "checkpoint": str(ckpt), "qra": str(qra), "device": "cuda:0" if on_gpu else "cpu", "lora": lora,
                "lora_r": 16, "steps": args.steps, "warmup": args.warmup_steps, "batch": args.batch,
                "frames": args.frames, "frame_size": args.frame_size, "threads": 1})
        plain = plain_done[lora]
        for res in (stack, plain):
            if "tokens_per_s_per_gpu" in res:
                flops = flops_per_token(shape, res["tokens_per_sample"], lora)
                res["model_tflops_per_gpu"] = res["tokens_per_s_per_gpu"] * flops / 1e12
                res["mfu"] = res["model_tflops_per_gpu"] / peak if peak else None
        record("train", name, stack, plain, "tokens/s/GPU", "tokens_per_s_per_gpu",
               {"stack_samples_per_s_per_gpu": stack.get("samples_per_s_per_gpu"),
                "baseline_samples_per_s_per_gpu": plain.get("samples_per_s_per_gpu"),
                "stack_mfu": stack.get("mfu"), "baseline_mfu": plain.get("mfu")})


def evaluation(args, ckpt, work, record, guarded) -> None:
    from evaluation import plain_rate, stack_rate

    from step_ray.train.toy import make_toy_qra

    qra = make_toy_qra(work / "toy_eval", videos=max(2, -(-args.eval_questions // 3)), seed=1, test_every=1)
    n2 = args.eval_questions
    n1 = max(1, n2 // 4)
    over = _common_overrides(args, ckpt) + ["eval.batch_size=8"]
    stack = guarded(lambda: stack_rate(over, qra, n1, n2))
    plain = guarded(lambda: plain_rate(str(ckpt), qra, "cuda:0" if args.device == "cuda" else "cpu", n2, 8,
                                       args.frames, args.frame_size))
    record("eval", "multiple choice", stack, plain, "questions/s", "questions_per_s")


if __name__ == "__main__":
    sys.exit(main())
