"""QRA rows -> model inputs: prompts with their video, labelled target sequences, batches.

Training (:func:`row_sequences`), option scoring (:func:`option_sequences`) and generation encode prompts the
same way, through :func:`encode_prompt` and the :class:`~step_ray.models.prompts.PromptFormat` of the model.

* ``multitask`` (Distilling Step-by-Step): an ``[answer]`` sequence (target: the answer) and, when ``λ > 0``,
  an ``[explain]`` sequence (target: the rationale) over the same frames;
* ``joint``: one ``[explain]`` sequence whose target is the rationale, then ``Answer: <answer>``; its rationale
  tokens belong to the rationale term of the loss and its answer tokens to the answer term (every target token
  carries its task, see :mod:`step_ray.train.loss`).

The target is appended token by token and closed with the end-of-turn token; labels are -100 everywhere
except the target tokens. Every sequence carries its video, so every micro-batch has visual input (ZeRO-3
hangs on mixed text / video batches, see DESIGN). Sequences travel between processes as ``safetensors`` bytes
(:func:`pack_sequence`): one binary column holds any family's tensors, and nothing is unpickled.
"""

from __future__ import annotations

from typing import Any, Mapping, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from step_ray.config import ModelConfig
from step_ray.models.prompts import (
    TASK_ANSWER, TASK_JOINT, TASK_RATIONALE, PromptFormat, answer_text, end_of_turn_id, joint_text, prompt_text,
    rationale_text, target_ids,
)

IGNORE_INDEX = -100
TOKEN_KEYS = ("input_ids", "attention_mask", "mm_token_type_ids")  # per-token processor outputs


def video_kwargs(model_cfg: ModelConfig, start: Optional[float], end: Optional[float]) -> dict:
    """Processor kwargs for our pre-sampled frames (the model family decides; see
    :meth:`step_ray.models.families.Family.video_kwargs`)."""
    from step_ray.models.families import family_of

    return family_of(model_cfg).video_kwargs(model_cfg, start, end)


def encode_prompt(processor: Any, text: str, frames: np.ndarray, vkw: dict) -> dict[str, torch.Tensor]:
    """The processor's output for one prompt + one video (batch dimension 1)."""
    out = processor(text=[text], videos=[frames], return_tensors="pt", videos_kwargs=vkw)
    return dict(out)


def encode_question(processor: Any, model_cfg: ModelConfig, fmt: PromptFormat, task: int, row: Mapping[str, Any],
                    frames: np.ndarray) -> dict[str, torch.Tensor]:
    """The encoded ``task`` prompt of a QRA row over its frames."""
    text = prompt_text(processor, task, row["question"], list(row["options"]), fmt)
    return encode_prompt(processor, text, frames, video_kwargs(model_cfg, row.get("start"), row.get("end")))


def build_sequence(
    prompt: Mapping[str, torch.Tensor],
    target: Sequence[int],
    task: int,
    max_length: int,
    target_tasks: Optional[Sequence[int]] = None,
) -> Optional[dict[str, Any]]:
    """One sequence: prompt ids + target ids, labels only on the target.

    ``target_tasks`` gives each target token its loss term (default: all ``task``). The target is cut to fit
    ``max_length`` (the prompt never is: cutting it could split the video tokens); returns None when not even
    one target token fits. Every non-token output of the processor (pixels, grids, frame timings) is kept
    as it is, so any model family's visual inputs pass through.
    """
    ids = prompt["input_ids"][0]
    room = max_length - ids.shape[0]
    if room < 1 or not target:
        return None
    tail = torch.tensor(list(target)[:room], dtype=ids.dtype)
    input_ids = torch.cat([ids, tail])
    labels = torch.cat([torch.full_like(ids, IGNORE_INDEX), tail])
    seq = {
        "input_ids": input_ids,
        "labels": labels,
        "attention_mask": torch.ones_like(input_ids),
        "task": torch.tensor(task, dtype=torch.long),
    }
    if target_tasks is not None:  # per-token tasks (joint); otherwise the sequence's task covers every token
        per_token = torch.tensor(list(target_tasks)[:room], dtype=ids.dtype)
        seq["label_task"] = torch.cat([torch.full_like(ids, -1), per_token])
    if "mm_token_type_ids" in prompt:  # 0 = text: the target is text
        seq["mm_token_type_ids"] = torch.cat([prompt["mm_token_type_ids"][0], torch.zeros_like(tail)])
    for key, value in prompt.items():
        if key not in TOKEN_KEYS:
            seq[key] = torch.as_tensor(value)
    if "second_per_grid_ts" in seq:
        seq["second_per_grid_ts"] = seq["second_per_grid_ts"].to(torch.float32).reshape(-1)
    return seq


def joint_target(tok: Any, row: Mapping[str, Any], eot: int, room: int) -> Optional[tuple[list[int], list[int]]]:
    """(target ids, per-token tasks) of the ``joint`` format: rationale + ``Answer:`` then the answer.

    When the target must be cut to ``room`` tokens the rationale loses its end, never the answer; None when
    not even the answer fits.
    """
    rationale_part, answer_part = joint_text(row)
    answer = list(tok(answer_part, add_special_tokens=False)["input_ids"]) + [eot]
    rationale = list(tok(rationale_part, add_special_tokens=False)["input_ids"])
    if len(answer) > room:
        return None
    rationale = rationale[: room - len(answer)]
    return rationale + answer, [TASK_RATIONALE] * len(rationale) + [TASK_ANSWER] * len(answer)


def row_sequences(
    row: Mapping[str, Any],
    frames: np.ndarray,
    processor: Any,
    model_cfg: ModelConfig,
    rationale_weight: float,
    loss_format: str = "multitask",
    fmt: Optional[PromptFormat] = None,
) -> list[dict[str, Any]]:
    """The training sequences of one QRA row: ``multitask``: the answer one, and the rationale one when
    ``λ > 0``; ``joint``: one sequence with both targets."""
    fmt = fmt or PromptFormat.of(model_cfg)
    tok = processor.tokenizer
    eot = end_of_turn_id(tok)
    if loss_format == "joint":
        prompt = encode_question(processor, model_cfg, fmt, TASK_JOINT, row, frames)
        target = joint_target(tok, row, eot, model_cfg.max_length - prompt["input_ids"].shape[1])
        if target is None:
            return []
        seq = build_sequence(prompt, target[0], TASK_JOINT, model_cfg.max_length, target_tasks=target[1])
        return [seq] if seq is not None else []
    tasks = [(TASK_ANSWER, answer_text(row))]
    if rationale_weight > 0:
        rationale = rationale_text(row)
        if rationale:
            tasks.append((TASK_RATIONALE, rationale))
    out = []
    for task, text in tasks:
        prompt = encode_question(processor, model_cfg, fmt, task, row, frames)
        seq = build_sequence(prompt, target_ids(tok, text) + [eot], task, model_cfg.max_length)
        if seq is not None:
            out.append(seq)
    return out


def option_sequences(prompt: Mapping[str, torch.Tensor], options: Sequence[str], tokenizer: Any,
                     prefix: Sequence[int] = ()) -> list[dict[str, Any]]:
    """One sequence per option over an encoded prompt: ``prefix`` (e.g. a generated rationale and
    ``Answer:``, unlabelled) + the option's target tokens + the end-of-turn token (labelled)."""
    eot = end_of_turn_id(tokenizer)
    seqs = []
    for option in options:
        ids = target_ids(tokenizer, str(option)) + [eot]
        seq = build_sequence(prompt, list(prefix) + ids, TASK_ANSWER, max_length=10**9)  # never cut an option
        assert seq is not None
        if prefix:  # the prefix is context, not a scored target
            n = seq["labels"].shape[0]
            seq["labels"][n - len(ids) - len(prefix): n - len(ids)] = IGNORE_INDEX
        seqs.append(seq)
    return seqs


def collate(sequences: Sequence[Mapping[str, Any]], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad the per-token tensors to the longest sequence; every other (visual) tensor is concatenated
    along its first dimension in sequence order (Qwen's flat patches and LLaVA's per-video frames alike)."""
    if not sequences:
        raise ValueError("collate: no sequences")
    longest = max(s["input_ids"].shape[0] for s in sequences)

    def pad(key: str, value: int) -> torch.Tensor:
        rows = []
        for s in sequences:
            x = s[key]
            rows.append(torch.cat([x, torch.full((longest - x.shape[0],), value, dtype=x.dtype)]))
        return torch.stack(rows)

    batch = {
        "input_ids": pad("input_ids", pad_id),
        "labels": pad("labels", IGNORE_INDEX),
        "attention_mask": pad("attention_mask", 0),
        "task": torch.stack([torch.as_tensor(s["task"], dtype=torch.long).reshape(()) for s in sequences]),
    }
    if all("label_task" in s for s in sequences):
        batch["label_task"] = pad("label_task", -1)
    if all("mm_token_type_ids" in s for s in sequences):
        batch["mm_token_type_ids"] = pad("mm_token_type_ids", 0)
    skip = set(batch) | {"label_task", "mm_token_type_ids"}
    for key in sequences[0]:
        if key not in skip and all(key in s for s in sequences):
            batch[key] = torch.cat([torch.as_tensor(s[key]) for s in sequences])
    return batch


def token_nll(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token negative log-likelihood of the next token, and the mask of target positions.

    ``logits[:, t]`` predicts ``labels[:, t + 1]`` (causal shift); both results have shape ``(B, T - 1)``.
    """
    shift_logits = logits[:, :-1, :].float()  # fp32 log-softmax even when the model runs in bf16
    shift_labels = labels[:, 1:]
    mask = shift_labels != IGNORE_INDEX
    nll = F.cross_entropy(
        shift_logits.reshape(-1, shift_logits.shape[-1]),
        shift_labels.clamp_min(0).reshape(-1),
        reduction="none",
    ).view_as(shift_labels)
    return nll * mask, mask


def pack_sequence(seq: Mapping[str, Any]) -> bytes:
    """One sequence as ``safetensors`` bytes (a Ray Data binary cell)."""
    from safetensors.torch import save

    return save({k: torch.as_tensor(v).contiguous() for k, v in seq.items()})


def unpack_sequence(data: bytes) -> dict[str, torch.Tensor]:
    """Inverse of :func:`pack_sequence`."""
    from safetensors.torch import load

    return load(bytes(data))
