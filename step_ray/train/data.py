"""QRA rows -> model inputs with labels, in one of two training formats.

``multitask`` (Distilling Step-by-Step): up to two sequences per QRA row over the same video frames,

* ``[answer] question + options``  -> target: the answer text          (task ``answer``)
* ``[explain] question + options`` -> target: the rationale sentences  (task ``rationale``)

``joint``: one sequence per row, ``[explain] question + options`` -> target: the rationale, then
``Answer: <answer>``; its rationale tokens belong to the rationale term of the loss, its answer tokens to the
answer term (every target token carries its task, see :mod:`step_ray.train.loss`).

The prompt is the model's own chat template (user turn = the video + the text, then the assistant header), the
target is appended token by token and closed with the end-of-turn token; labels are -100 everywhere except the
target tokens. With ``rationale_weight == 0`` the multitask rationale sequences are not built at all (the
answer-only baseline costs no compute for a term it ignores). Every sequence carries its video, so every
micro-batch has visual input (ZeRO-3 hangs on mixed text / video batches, see DESIGN).

Sequences travel from the Ray Data encode stage to the training workers as ``safetensors`` bytes
(:func:`pack_sequence` / :func:`unpack_sequence`): one binary column holds any family's tensors, whatever their
shapes, and nothing is unpickled.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Optional, Sequence

import numpy as np
import torch

from step_ray.config import ModelConfig
from step_ray.train.frames import FrameDecodeError, read_frames

logger = logging.getLogger(__name__)

IGNORE_INDEX = -100
TASK_ANSWER = 0
TASK_RATIONALE = 1
TASK_JOINT = 2  # a sequence whose target is the rationale, then the answer (``joint`` format)
TASK_NAMES = ("answer", "rationale", "joint")
TASK_TAGS = ("[answer]", "[explain]", "[explain]")
JOINT_ANSWER_MARK = "\nAnswer:"
TOKEN_KEYS = ("input_ids", "attention_mask", "mm_token_type_ids")  # per-token processor outputs
OPTION_LETTERS = "ABCDEFGH"


# ------------------------------------------------------------------------------------------------ text


def format_question(question: str, options: Sequence[str]) -> str:
    """The question and its lettered options, the way both tasks and the evaluation show them."""
    opts = " ".join(f"({OPTION_LETTERS[i]}) {o}" for i, o in enumerate(options))
    return f"{question}\nOptions: {opts}"


def prompt_text(processor: Any, task: int, question: str, options: Sequence[str]) -> str:
    """The chat-formatted prompt of ``task`` (one video placeholder, then the tagged question)."""
    messages = [
        {
            "role": "user",
            "content": [
                {"type": "video"},
                {"type": "text", "text": f"{TASK_TAGS[task]} {format_question(question, options)}"},
            ],
        }
    ]
    return processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def answer_text(row: Mapping[str, Any]) -> str:
    """The answer target: the correct option's text."""
    options = list(row["options"])
    idx = row.get("answer_index")
    if idx is not None and 0 <= int(idx) < len(options):
        return str(options[int(idx)])
    return str(row["answer"])


def rationale_text(row: Mapping[str, Any]) -> str:
    """The rationale target: the step sentences joined with spaces."""
    steps = row.get("rationale")
    if steps is None:
        return ""
    if isinstance(steps, str):
        return steps.strip()
    return " ".join(str(s).strip() for s in steps if str(s).strip())


def end_of_turn_id(tokenizer: Any) -> int:
    """``<|im_end|>`` (Qwen's end of an assistant turn), else the tokenizer's eos."""
    tid = tokenizer.convert_tokens_to_ids("<|im_end|>")
    if tid is None or tid == tokenizer.unk_token_id:
        tid = tokenizer.eos_token_id
    return int(tid)


# ------------------------------------------------------------------------------------------------ encoding


def video_kwargs(model_cfg: ModelConfig, start: Optional[float], end: Optional[float]) -> dict:
    """Processor kwargs for our pre-sampled frames (the model family decides; see
    :meth:`step_ray.models.families.Family.video_kwargs`)."""
    from step_ray.models.families import family_of

    return family_of(model_cfg).video_kwargs(model_cfg, start, end)


def encode_prompt(processor: Any, text: str, frames: np.ndarray, vkw: dict) -> dict[str, torch.Tensor]:
    """The processor's output for one prompt + one video (batch dimension 1)."""
    out = processor(text=[text], videos=[frames], return_tensors="pt", videos_kwargs=vkw)
    return dict(out)


def build_sequence(
    prompt: Mapping[str, torch.Tensor],
    target_ids: Sequence[int],
    task: int,
    max_length: int,
    target_tasks: Optional[Sequence[int]] = None,
) -> Optional[dict[str, Any]]:
    """One training sequence: prompt ids + target ids, labels only on the target.

    ``target_tasks`` gives each target token its loss term (default: all ``task``). The target is cut to fit
    ``max_length`` (the prompt never is: cutting it could split the video tokens); returns None when not even
    one target token fits. Every non-token output of the processor (pixels, grids, frame timings) is kept
    as it is, so any model family's visual inputs pass through.
    """
    ids = prompt["input_ids"][0]
    room = max_length - ids.shape[0]
    if room < 1 or not target_ids:
        return None
    target = torch.tensor(list(target_ids)[:room], dtype=ids.dtype)
    input_ids = torch.cat([ids, target])
    labels = torch.cat([torch.full_like(ids, IGNORE_INDEX), target])
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
        seq["mm_token_type_ids"] = torch.cat([prompt["mm_token_type_ids"][0], torch.zeros_like(target)])
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
    answer = tok(" " + answer_text(row), add_special_tokens=False)["input_ids"] + [eot]
    rationale = tok(rationale_text(row) + JOINT_ANSWER_MARK, add_special_tokens=False)["input_ids"]
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
) -> list[dict[str, Any]]:
    """The training sequences of one QRA row: ``multitask``: the answer one, and the rationale one when
    ``λ > 0``; ``joint``: one sequence with both targets."""
    tok = processor.tokenizer
    eot = end_of_turn_id(tok)
    vkw = video_kwargs(model_cfg, row.get("start"), row.get("end"))
    if loss_format == "joint":
        prompt = encode_prompt(processor, prompt_text(processor, TASK_JOINT, row["question"], row["options"]),
                               frames, vkw)
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
    for task, target in tasks:
        prompt = encode_prompt(processor, prompt_text(processor, task, row["question"], row["options"]), frames, vkw)
        target_ids = tok(target, add_special_tokens=False)["input_ids"] + [eot]
        seq = build_sequence(prompt, target_ids, task, model_cfg.max_length)
        if seq is not None:
            out.append(seq)
    return out


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


def pack_sequence(seq: Mapping[str, Any]) -> bytes:
    """One sequence as ``safetensors`` bytes (a Ray Data binary cell)."""
    from safetensors.torch import save

    return save({k: torch.as_tensor(v).contiguous() for k, v in seq.items()})


def unpack_sequence(data: bytes) -> dict[str, torch.Tensor]:
    """Inverse of :func:`pack_sequence`."""
    from safetensors.torch import load

    return load(bytes(data))


# ------------------------------------------------------------------------------------------------ rows


@dataclass
class EncodeStats:
    """What happened to the rows of a batch (summed over the run for the logs)."""

    rows: int = 0
    skipped: int = 0
    reasons: dict[str, int] = field(default_factory=dict)

    def skip(self, reason: str) -> None:
        self.skipped += 1
        self.reasons[reason] = self.reasons.get(reason, 0) + 1


def rows_from_batch(batch: Any) -> list[dict[str, Any]]:
    """Ray Data batches (pyarrow, pandas or dict of numpy) -> a list of plain row dicts."""
    if hasattr(batch, "to_pylist"):  # pyarrow: native Python lists for the list columns
        return batch.to_pylist()
    if hasattr(batch, "to_dict"):  # pandas
        return batch.to_dict(orient="records")
    keys = list(batch)
    n = len(batch[keys[0]]) if keys else 0
    return [{k: batch[k][i] for k in keys} for i in range(n)]


class RowEncoder:
    """QRA rows -> training sequences (frames decoded here, in the Ray Data encode actor).

    A row whose video is missing or undecodable, or whose prompt is longer than ``model.max_length``, is
    skipped and counted in :attr:`stats` with its reason; it never stops training.
    """

    def __init__(self, processor: Any, model_cfg: ModelConfig, rationale_weight: float,
                 loss_format: str = "multitask"):
        self.processor = processor
        self.model_cfg = model_cfg
        self.rationale_weight = rationale_weight
        self.loss_format = loss_format
        self.pad_id = int(processor.tokenizer.pad_token_id or 0)
        self.stats = EncodeStats()
        self._warned: set = set()

    def encode(self, row: Mapping[str, Any]) -> tuple[list[dict[str, Any]], Optional[str]]:
        """(sequences of ``row``, None) or ([], the reason it was skipped)."""
        self.stats.rows += 1
        try:
            frames = read_frames(
                str(row["video_uri"]), _num(row.get("start")), _num(row.get("end")),
                self.model_cfg.frames, self.model_cfg.frame_size,
            )
        except FrameDecodeError as err:
            if row.get("id") not in self._warned:  # once per row, not once per epoch
                self._warned.add(row.get("id"))
                logger.warning("skipping QRA row %s: %s", row.get("id"), err)
            self.stats.skip("video")
            return [], "video"
        seqs = row_sequences(row, frames, self.processor, self.model_cfg, self.rationale_weight, self.loss_format)
        if not seqs:
            self.stats.skip("too_long")
            return [], "too_long"
        return seqs, None

    def sequences(self, row: Mapping[str, Any]) -> list[dict[str, Any]]:
        return self.encode(row)[0]

    def __call__(self, rows: Iterable[Mapping[str, Any]]) -> Optional[dict[str, torch.Tensor]]:
        """The collated micro-batch of ``rows``, or None when no row of it could be used."""
        seqs = [s for row in rows for s in self.sequences(row)]
        return collate(seqs, self.pad_id) if seqs else None


def _num(x: Any) -> Optional[float]:
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return v if np.isfinite(v) else None
