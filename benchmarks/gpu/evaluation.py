"""Evaluation throughput in questions per second: step-ray's ``evaluate`` (multiple-choice scoring by option
likelihood, batches of ``eval.batch_size`` questions, every option a sequence with the clip) against a plain
loop that scores the same questions the same way on one GPU (the options of a batch of questions in one forward
pass, bf16 on a GPU).

``evaluate`` includes loading the model in its time; its steady rate is taken by difference: two runs of
``n1`` and ``n2`` questions, ``(n2 - n1) / (t2 - t1)``, the load cancelling out. The plain loop's clock starts
after its first batch (warm-up). Note: ``evaluate`` loads the model on the driver's CPU in fp32 (step-ray's eval
has no device setting yet); the benchmark measures it as it is.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from common import Stream


def stack_rate(cfg_overrides: list[str], qra: Path, n1: int, n2: int) -> dict[str, Any]:
    from step_ray.config import load_config
    from step_ray.eval.evaluate import evaluate

    runs = []
    for n in (n1, n2):
        cfg = load_config(None, cfg_overrides + [f"eval.max_samples={n}"])
        r = evaluate(cfg, None, qra, split="test")
        runs.append((r["n"], r["seconds"]))
    (a, ta), (b, tb) = runs
    if b <= a or tb <= ta:
        raise RuntimeError(f"evaluation by difference needs more questions in the second run ({runs})")
    return {"questions_per_s": (b - a) / (tb - ta), "questions": b, "seconds_small": ta, "seconds_large": tb}


def plain_rate(checkpoint: str, qra: Path, device: str, n: int, batch_size: int, frames: int, frame_size: int
               ) -> dict[str, Any]:
    import pyarrow.parquet as pq
    import torch
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from step_ray.config import ModelConfig
    from step_ray.models.inputs import frames_for_row

    dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    model = AutoModelForImageTextToText.from_pretrained(checkpoint, dtype=dtype).to(device).eval()
    processor = AutoProcessor.from_pretrained(checkpoint)
    # The stack's own frame choice (the question's moments, else spread over its span), at the same settings.
    frame_cfg = ModelConfig(name_or_path=checkpoint, frames=frames, frame_size=frame_size)
    pad_id = int(processor.tokenizer.pad_token_id or 0)
    rows = sorted((r for r in pq.read_table(qra).to_pylist() if r["split"] == "test"), key=lambda r: str(r["id"]))[:n]
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    s, correct = Stream(), 0
    for i in range(0, len(rows), batch_size):
        part = rows[i:i + batch_size]
        ids, labels, pixels, grids, counts = [], [], [], [], []
        for row in part:
            clip = frames_for_row(row, frame_cfg)
            options = " ".join(f"({chr(65 + k)}) {o}" for k, o in enumerate(row["options"]))
            messages = [{"role": "user", "content": [{"type": "video"},
                                                     {"type": "text", "text": f"{row['question']} Options: {options}"}]}]
            prompt = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
            enc = processor(text=[prompt], videos=[list(clip)], return_tensors="pt")
            for option in row["options"]:
                opt = torch.tensor([processor.tokenizer(str(option), add_special_tokens=False)["input_ids"]])
                ids.append(torch.cat([enc["input_ids"], opt], dim=1)[0])
                labels.append(torch.cat([torch.full_like(enc["input_ids"], -100), opt], dim=1)[0])
                pixels.append(enc["pixel_values_videos"])
                grids.append(enc["video_grid_thw"])
            counts.append(len(row["options"]))
        width = max(len(x) for x in ids)
        input_ids = torch.stack([torch.nn.functional.pad(x, (0, width - len(x)), value=pad_id) for x in ids])
        mask = torch.stack([torch.nn.functional.pad(torch.ones_like(x), (0, width - len(x))) for x in ids])
        lab = torch.stack([torch.nn.functional.pad(x, (0, width - len(x)), value=-100) for x in labels])
        with torch.no_grad():
            logits = model(input_ids=input_ids.to(device), attention_mask=mask.to(device),
                           pixel_values_videos=torch.cat(pixels).to(device, dtype),
                           video_grid_thw=torch.cat(grids).to(device), use_cache=False).logits.float()
        logp = torch.log_softmax(logits[:, :-1], dim=-1)
        target = lab[:, 1:].to(device)
        keep = target != -100
        tok = logp.gather(-1, target.clamp_min(0)[..., None])[..., 0] * keep
        scores = (tok.sum(1) / keep.sum(1).clamp_min(1)).cpu().tolist()
        k = 0
        for row, c in zip(part, counts):
            correct += int(max(range(c), key=lambda j: scores[k + j]) == int(row["answer_index"]))
            k += c
        s.tick(len(part))
    # The window opens after the first batch (its compilation and allocations are warm-up), if there are more.
    total = sum(n for _, n in s.events)
    first = s.events[0][1] / total if len(s.events) > 1 else 0.0
    run = s.window(first)
    peak = torch.cuda.max_memory_allocated() / 2**20 if device.startswith("cuda") else None
    return {"questions_per_s": run.value, "questions": len(rows), "accuracy": correct / max(1, len(rows)),
            "peak_gpu_mb": peak}
