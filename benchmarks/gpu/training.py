"""Training throughput (samples/s, tokens/s, MFU) and peak GPU memory per worker: step-ray's training step (Ray
Train + DeepSpeed ZeRO-2/3, LoRA or full fine-tuning, bf16, gradient checkpointing, frames streamed by Ray Data)
against a plain PyTorch loop on one GPU (the same model and data, peft LoRA or full, bf16 weights, torch AdamW,
gradient checkpointing, frames decoded in the loop).

Both sides train on the same toy questions (``step_ray.train.toy``: real H.264 clips, 3 questions each) with the
same frames per clip, frame size and questions per step; each question gives two sequences (the answer, and the
rationale + answer), as step-ray's multitask format does. The plain loop writes its own prompts (a chat turn with
the video, the question and the options), so its sequences are close to, not exactly, step-ray's: compare
tokens/s (and MFU) first. Rates are taken over the steps after the warm-up steps (one window per step); the
stack's run is one Ray Train job per configuration; the plain loop runs in a fresh process per configuration, so
its peak memory is its own. With several GPUs the stack uses all of them; its figures are per GPU.

The plain loop cannot do ZeRO: it runs the LoRA / full configurations once each, on one GPU, and full fine-tuning
of a multi-billion-parameter model may not fit one GPU (then it reports the out-of-memory error).
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

#: (name, LoRA, ZeRO stage) of the stack's configurations.
CONFIGS = (("lora-zero2", True, 2), ("lora-zero3", True, 3), ("full-zero2", False, 2), ("full-zero3", False, 3))


def steady(windows: list[dict[str, float]], warmup: int) -> dict[str, Any]:
    """Totals over the windows after the first ``warmup`` (one rate formula: items / seconds), with the spread of
    the windows' own rates."""
    kept = windows[warmup:] or windows[-1:]
    seconds = sum(w["seconds"] for w in kept)
    samples, tokens = sum(w["samples"] for w in kept), sum(w["tokens"] for w in kept)
    rates = [w["samples"] / w["seconds"] for w in kept if w["seconds"] > 0]
    return {"samples_per_s": samples / seconds, "tokens_per_s": tokens / seconds, "tokens_per_sample": tokens / samples,
            "windows": len(kept), "window_rate_min": min(rates), "window_rate_max": max(rates),
            "window_rate_median": statistics.median(rates)}


def stack_run(base_overrides: list[str], name: str, lora: bool, zero: int, qra: Path, work: Path, gpus: int,
              warmup: int) -> dict[str, Any]:
    """One Ray Train + DeepSpeed run of the training step; its steady-state rates from the per-step windows."""
    import shutil

    from step_ray.config import load_config
    from step_ray.train.trainer import run_training

    cfg = load_config(None, base_overrides + [f"train.lora.enabled={str(lora).lower()}", f"train.zero_stage={zero}"])
    out = work / f"stack_{name}"
    shutil.rmtree(out, ignore_errors=True)
    try:
        summary = run_training(cfg, qra, out, name=f"bench-{name}")
    finally:
        shutil.rmtree(out / "checkpoints", ignore_errors=True)  # full fine-tuning states are large
    history = summary["history"]
    windows = [{"seconds": h["window_seconds"], "samples": h["window_samples"], "tokens": h["window_tokens"]}
               for h in history]
    res = steady(windows, warmup)
    per_gpu = max(1, gpus)
    res.update({"samples_per_s_per_gpu": res["samples_per_s"] / per_gpu, "tokens_per_s_per_gpu": res["tokens_per_s"] / per_gpu,
                "peak_gpu_mb": max(h.get("peak_gpu_mb", 0.0) for h in history),
                "peak_rss_mb": max(h.get("peak_rss_mb", 0.0) for h in history), "workers": cfg.train.num_workers,
                "wall_seconds": summary["wall_seconds"], "steps": summary["steps"]})
    return res


# ------------------------------------------------------------------------------------------------ the plain loop


def plain_sequences(processor: Any, row: dict, frames: Any) -> list[dict[str, Any]]:
    """Two training sequences of one question (answer; rationale + answer): the prompt (video, question, options)
    encoded once by the processor, each target's tokens after it, labels on the target tokens only."""
    import torch

    options = " ".join(f"({chr(65 + i)}) {o}" for i, o in enumerate(row["options"]))
    messages = [{"role": "user", "content": [{"type": "video"},
                                             {"type": "text", "text": f"{row['question']} Options: {options}"}]}]
    prompt = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    enc = processor(text=[prompt], videos=[list(frames)], return_tensors="pt")
    out = []
    for target in (f"{row['answer']}", " ".join(row["rationale"]) + f" {row['answer']}"):
        ids = torch.tensor([processor.tokenizer(target + "<|im_end|>", add_special_tokens=False)["input_ids"]])
        input_ids = torch.cat([enc["input_ids"], ids], dim=1)
        labels = torch.cat([torch.full_like(enc["input_ids"], -100), ids], dim=1)
        out.append({"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids), "labels": labels,
                    "pixel_values_videos": enc["pixel_values_videos"], "video_grid_thw": enc["video_grid_thw"]})
    return out


def _pad_batch(seqs: list[dict], pad_id: int) -> dict:
    import torch

    width = max(s["input_ids"].shape[1] for s in seqs)

    def pad(t: Any, value: int) -> Any:
        return torch.nn.functional.pad(t, (0, width - t.shape[1]), value=value)

    return {"input_ids": torch.cat([pad(s["input_ids"], pad_id) for s in seqs]),
            "attention_mask": torch.cat([pad(s["attention_mask"], 0) for s in seqs]),
            "labels": torch.cat([pad(s["labels"], -100) for s in seqs]),
            "pixel_values_videos": torch.cat([s["pixel_values_videos"] for s in seqs]),
            "video_grid_thw": torch.cat([s["video_grid_thw"] for s in seqs])}


def plain_run(args: dict[str, Any]) -> dict[str, Any]:
    """The plain PyTorch loop (run in a fresh process by :func:`plain_child`)."""
    import pyarrow.parquet as pq
    import torch
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from step_ray.config import ModelConfig
    from step_ray.models.inputs import frames_for_row

    device = torch.device(args["device"])
    torch.manual_seed(0)
    if device.type == "cpu":
        torch.set_num_threads(max(1, int(args.get("threads", 1))))
    model = AutoModelForImageTextToText.from_pretrained(args["checkpoint"], dtype=torch.bfloat16).to(device)
    processor = AutoProcessor.from_pretrained(args["checkpoint"])
    # The stack's own frame choice (the question's moments, else spread over its span), at the same settings.
    frame_cfg = ModelConfig(name_or_path=args["checkpoint"], frames=args["frames"], frame_size=args["frame_size"])
    model.requires_grad_(False)
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.config.use_cache = False
    if args["lora"]:
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(r=args["lora_r"], lora_alpha=2 * args["lora_r"], bias="none",
                                                 target_modules=r".*language_model.*\.(q_proj|k_proj|v_proj|o_proj|"
                                                                r"gate_proj|up_proj|down_proj)"))
    else:
        for name, param in model.named_parameters():
            if "language_model" in name or name.startswith("lm_head"):
                param.requires_grad_(True)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4, fused=device.type == "cuda")
    rows = [r for r in pq.read_table(args["qra"]).to_pylist() if r["split"] == "train"]
    pad_id = int(processor.tokenizer.pad_token_id or 0)
    windows = []
    step_rows = args["batch"]
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    for step in range(args["warmup"] + args["steps"]):
        t0 = time.perf_counter()
        chunk = [rows[(step * step_rows + i) % len(rows)] for i in range(step_rows)]
        seqs = [s for r in chunk for s in plain_sequences(
            processor, r, frames_for_row(r, frame_cfg))]
        batch = {k: v.to(device) for k, v in _pad_batch(seqs, pad_id).items()}
        batch["pixel_values_videos"] = batch["pixel_values_videos"].to(torch.bfloat16)
        labels = batch.pop("labels")
        logits = model(**batch).logits.float()
        loss = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]),
                                                 labels[:, 1:].reshape(-1), ignore_index=-100)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        windows.append({"seconds": time.perf_counter() - t0, "samples": float(labels.shape[0]),
                        "tokens": float(batch["attention_mask"].sum())})
    res = steady(windows, args["warmup"])
    res.update({"samples_per_s_per_gpu": res["samples_per_s"], "tokens_per_s_per_gpu": res["tokens_per_s"],
                "peak_gpu_mb": torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else 0.0,
                "peak_rss_mb": _rss_mb(), "final_loss": loss.item()})
    return res


def _rss_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def plain_child(args: dict[str, Any]) -> dict[str, Any]:
    """:func:`plain_run` in a fresh Python (its own CUDA context and peak memory); an error becomes a result."""
    import subprocess

    here = Path(__file__).resolve().parent
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(here), str(here.parent), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--plain", json.dumps(args)],
                          capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        tail = proc.stderr.strip().splitlines()[-1:] or ["(no output)"]
        return {"error": tail[0][:300]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--plain":
        print(json.dumps(plain_run(json.loads(sys.argv[2]))))
