"""Multiple-choice scoring by option likelihood.

Each option is scored by the mean log-likelihood of its tokens after the *answer-task* prompt (the same
``[answer]`` prompt, video included, that training used), and the prediction is the best-scoring option. The mean
(not the sum) keeps long options from being penalised for their length.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np
import torch

from step_ray.config import ModelConfig
from step_ray.train.data import (
    TASK_ANSWER,
    build_sequence,
    collate,
    encode_prompt,
    prompt_text,
    video_kwargs,
)
from step_ray.train.loss import token_nll


def option_sequences(
    row: Mapping[str, Any], frames: np.ndarray, processor: Any, model_cfg: ModelConfig
) -> list[dict[str, Any]]:
    """One sequence per option: answer prompt + option tokens (labels on the option tokens only)."""
    vkw = video_kwargs(model_cfg, row.get("start"), row.get("end"))
    text = prompt_text(processor, TASK_ANSWER, row["question"], list(row["options"]))
    prompt = encode_prompt(processor, text, frames, vkw)
    seqs = []
    for option in row["options"]:
        ids = processor.tokenizer(str(option), add_special_tokens=False)["input_ids"]
        seq = build_sequence(prompt, ids, TASK_ANSWER, max_length=10**9)  # never cut an option: score it all
        if seq is None:
            raise ValueError(f"option {option!r} of question {row.get('id')} has no tokens")
        seqs.append(seq)
    return seqs


@torch.no_grad()
def sequence_scores(model: Any, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Mean log-likelihood of the labelled tokens of each sequence of ``batch``: shape ``(B,)``."""
    labels = batch["labels"]
    inputs = {k: v for k, v in batch.items() if k not in ("labels", "task")}
    logits = model(**inputs, use_cache=False).logits
    nll, mask = token_nll(logits, labels)
    return -(nll.sum(dim=1) / mask.sum(dim=1).clamp_min(1))


def score_questions(
    model: Any,
    processor: Any,
    model_cfg: ModelConfig,
    rows: Sequence[Mapping[str, Any]],
    frames: Sequence[np.ndarray],
) -> list[list[float]]:
    """Per question, the score of each of its options (one forward pass for all options of all ``rows``)."""
    device = next(model.parameters()).device
    dtype = next(model.parameters()).dtype
    seqs, counts = [], []
    for row, fr in zip(rows, frames):
        s = option_sequences(row, fr, processor, model_cfg)
        seqs.extend(s)
        counts.append(len(s))
    batch = collate(seqs, int(processor.tokenizer.pad_token_id or 0))
    batch = {k: v.to(device) for k, v in batch.items()}
    batch["pixel_values_videos"] = batch["pixel_values_videos"].to(dtype)
    scores = sequence_scores(model, batch).float().cpu().tolist()
    out, i = [], 0
    for c in counts:
        out.append(scores[i:i + c])
        i += c
    return out
