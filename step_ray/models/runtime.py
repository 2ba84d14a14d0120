"""The model layer every step shares: load any step-ray model, and ask it questions the way it was trained.

:class:`VideoLLM` wraps a loaded Video-LLM (base, base + adapter, merged or full model, from any
:mod:`~step_ray.models.sources` reference) with its processor and its card, and answers QRA rows in two modes:

* **likelihood** (:meth:`VideoLLM.score_options`): every option is scored by the *summed* log-probability of
  its tokens plus the end-of-turn token, after the prompt the model was trained with. The sum, not the mean:
  under a mean, options split into more tokens win (later sub-tokens are nearly certain), and without the
  end-of-turn token "red" scores as a prefix of "red circle". A ``joint`` model (trained to explain, then
  answer) first writes its rationale, greedily, and the options are scored after ``<rationale>\\nAnswer:``.
* **generation** (:meth:`VideoLLM.generate_answers`): the model writes a free-form answer (a ``joint`` model:
  its rationale, then ``Answer: ...``), which the caller maps to an option.

Training (:mod:`step_ray.train`), evaluation (:mod:`step_ray.eval`), the QRA filter and semantics parsing load
models through :func:`load_video_llm`, so "which weights, which prompt" is decided in one place.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import Any, Mapping, Optional, Sequence

import numpy as np
import torch

from step_ray.config import ModelConfig, StepRayConfig
from step_ray.models.card import ModelCard
from step_ray.models.encoding import collate, encode_question, option_sequences, token_nll
from step_ray.models.prompts import (
    JOINT_ANSWER_MARK, TASK_ANSWER, TASK_JOINT, PromptFormat, end_of_turn_id, prompt_text,
)
from step_ray.models.sources import ResolvedModel, resolve_model

logger = logging.getLogger(__name__)


def pick_device(device: str = "auto") -> str:
    """'auto': CUDA when torch sees a GPU, else the CPU."""
    if device != "auto":
        return device
    return "cuda" if torch.cuda.is_available() else "cpu"


def pick_dtype(device: str, precision: str = "auto") -> torch.dtype:
    """'auto': bf16 on a GPU (half the memory, the precision Video-LLMs are trained in), fp32 on the CPU."""
    if precision == "auto":
        return torch.bfloat16 if str(device).startswith("cuda") else torch.float32
    return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


class VideoLLM:
    """A loaded Video-LLM, its processor, and how to prompt it (see the module docstring)."""

    def __init__(self, model: Any, processor: Any, model_cfg: ModelConfig, card: Optional[ModelCard],
                 description: str, max_new_tokens: int = 128):
        self.model = model
        self.processor = processor
        self.card = card
        self.description = description
        self.max_new_tokens = max_new_tokens
        # Frames and their size as the model was trained on them (a card overrides the caller's config).
        if card is not None and card.frames and card.frame_size:
            model_cfg = replace(model_cfg, frames=card.frames, frame_size=card.frame_size)
        self.model_cfg = model_cfg
        self.fmt = card.prompt if card is not None else PromptFormat.of(model_cfg)
        self.answer_format = (card.loss_format if card is not None and card.loss_format else "multitask")
        self.tokenizer = processor.tokenizer
        self.eot = end_of_turn_id(self.tokenizer)
        self.pad_id = int(self.tokenizer.pad_token_id or 0)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    # --------------------------------------------------------------------------------------------- inputs

    def _to_device(self, batch: Mapping[str, Any]) -> dict[str, Any]:
        out = {}
        for k, v in batch.items():
            if torch.is_tensor(v):
                v = v.to(self.device)
                if k.startswith("pixel_values"):
                    v = v.to(self.dtype)
            out[k] = v
        return out

    # --------------------------------------------------------------------------------------------- scoring

    @torch.no_grad()
    def _sequence_logprob(self, seqs: list[dict[str, Any]]) -> list[float]:
        """Summed log-probability of the labelled tokens of each sequence."""
        batch = collate(seqs, self.pad_id)
        labels = batch.pop("labels")
        batch.pop("task", None)
        batch.pop("label_task", None)
        logits = self.model(**self._to_device(batch), use_cache=False).logits
        nll, _ = token_nll(logits, labels.to(logits.device))
        return (-nll.sum(dim=1)).float().cpu().tolist()

    def score_options(self, rows: Sequence[Mapping[str, Any]], frames: Sequence[np.ndarray],
                      rationales: Optional[Sequence[str]] = None, fmt: Optional[PromptFormat] = None,
                      max_sequences: int = 0) -> list[list[float]]:
        """Per row, the score of each of its options (see the module docstring). ``rationales``: the joint
        model's already generated rationales (else generated here when the model is a joint one). ``fmt``
        overrides the prompt format's style / options line (an open-answer vocabulary is not shown as options);
        ``max_sequences`` > 0 bounds the option sequences per forward pass (a vocabulary of hundreds of answers
        would not fit in one)."""
        if not rows:
            return []
        fmt = fmt or self.fmt
        prefixes: list[list[int]] = [[] for _ in rows]
        task = TASK_ANSWER
        if self.answer_format == "joint":
            task = TASK_JOINT
            if rationales is None:
                rationales = [split_joint(t)[0] for t in self.generate(rows, frames, TASK_JOINT, fmt=fmt)]
            prefixes = [list(self.tokenizer(r + JOINT_ANSWER_MARK, add_special_tokens=False)["input_ids"])
                        for r in rationales]
        seqs, counts = [], []
        for row, fr, prefix in zip(rows, frames, prefixes):
            prompt = encode_question(self.processor, self.model_cfg, fmt, task, row, fr)
            s = option_sequences(prompt, list(row["options"]), self.tokenizer, prefix)
            seqs.extend(s)
            counts.append(len(s))
        step = max_sequences if max_sequences > 0 else len(seqs)
        scores = [x for i in range(0, len(seqs), step) for x in self._sequence_logprob(seqs[i:i + step])]
        out, i = [], 0
        for c in counts:
            out.append(scores[i:i + c])
            i += c
        return out

    # --------------------------------------------------------------------------------------------- generation

    @torch.no_grad()
    def generate(self, rows: Sequence[Mapping[str, Any]], frames: Sequence[np.ndarray], task: int,
                 max_new_tokens: Optional[int] = None, sample: bool = False, temperature: float = 1.0,
                 seed: int = 0, fmt: Optional[PromptFormat] = None) -> list[str]:
        """The model's continuation of each row's ``task`` prompt (greedy unless ``sample``), without the
        end-of-turn token; ``fmt`` overrides the model's prompt format (see :meth:`score_options`)."""
        from step_ray.models.encoding import video_kwargs

        if not rows:
            return []
        fmt = fmt or self.fmt
        texts = [prompt_text(self.processor, task, r["question"], list(r["options"]), fmt) for r in rows]
        # One video-kwargs for the batch: the processor takes one; rows of a batch share the frame count.
        vkw = video_kwargs(self.model_cfg, rows[0].get("start"), rows[0].get("end"))
        if "video_metadata" in vkw:  # one entry per video of the batch
            vkw["video_metadata"] = [video_kwargs(self.model_cfg, r.get("start"), r.get("end"))["video_metadata"][0]
                                     for r in rows]
        side = self.tokenizer.padding_side
        self.tokenizer.padding_side = "left"  # batched generation continues every prompt at its end
        try:
            inputs = self.processor(text=texts, videos=list(frames), return_tensors="pt", padding=True,
                                    videos_kwargs=vkw)
        finally:
            self.tokenizer.padding_side = side
        inputs = self._to_device(dict(inputs))
        if sample:
            torch.manual_seed(seed)
        out = self.model.generate(
            **inputs, max_new_tokens=max_new_tokens or self.max_new_tokens, do_sample=sample,
            temperature=temperature if sample else None, top_p=None, top_k=None,
            eos_token_id=self.eot, pad_token_id=self.pad_id)
        new = out[:, inputs["input_ids"].shape[1]:]
        return [self.tokenizer.decode([t for t in ids.tolist() if t not in (self.eot, self.pad_id)],
                                      skip_special_tokens=True) for ids in new]

    def generate_answers(self, rows: Sequence[Mapping[str, Any]], frames: Sequence[np.ndarray],
                         fmt: Optional[PromptFormat] = None) -> list[tuple[str, Optional[str]]]:
        """(answer text, rationale or None) the model writes for each row: a ``joint`` model explains first."""
        if self.answer_format == "joint":
            texts = self.generate(rows, frames, TASK_JOINT, fmt=fmt)
            return [split_joint(t)[::-1] for t in texts]  # type: ignore[misc]
        return [(t.strip(), None) for t in self.generate(rows, frames, TASK_ANSWER, fmt=fmt)]


def split_joint(text: str) -> tuple[str, str]:
    """(rationale, answer) of a joint model's output ``<rationale>\\nAnswer: <answer>``; a text without the
    mark is all rationale (and an empty answer)."""
    i = text.find(JOINT_ANSWER_MARK)
    if i < 0:
        j = text.find(JOINT_ANSWER_MARK.strip())
        if j < 0:
            return text.rstrip(), ""
        return text[:j].rstrip(), text[j + len(JOINT_ANSWER_MARK.strip()):].strip()
    return text[:i].rstrip(), text[i + len(JOINT_ANSWER_MARK):].strip()


def load_model_source(model_cfg: ModelConfig, source: Optional[str], device: str = "auto", precision: str = "auto",
                      seed: int = 0) -> tuple[Any, Any, ResolvedModel]:
    """(model in eval mode, processor, the resolved reference) for any model reference ``source`` (see
    :mod:`step_ray.models.sources`; None: the base of ``model_cfg``) on ``device``."""
    from step_ray.models.loading import load_model_and_processor

    resolved: ResolvedModel = resolve_model(source, model_cfg.name_or_path)
    device = pick_device(device)
    dtype = pick_dtype(device, precision)
    model, processor = load_model_and_processor(model_cfg, device=device, dtype=dtype, seed=seed, path=resolved.base)
    if resolved.adapter is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, resolved.adapter)
        model.to(device)
    model.eval()
    return model, processor, resolved


def load_video_llm(cfg: StepRayConfig, source: Optional[str] = None, device: str = "auto",
                   precision: str = "auto", max_new_tokens: int = 128) -> VideoLLM:
    """Load ``source`` (any model reference, see :mod:`step_ray.models.sources`; None: the base of
    ``cfg.model``) as a :class:`VideoLLM`."""
    return load_llm(cfg.model, source, cfg.run.seed, device, precision, max_new_tokens)


def load_llm(model_cfg: ModelConfig, source: Optional[str] = None, seed: int = 0, device: str = "auto",
             precision: str = "auto", max_new_tokens: int = 128) -> VideoLLM:
    """:func:`load_video_llm` from the sections a stage holds (``model``, ``run.seed``): the loader the
    pipeline hands to stages below the model layer."""
    model, processor, resolved = load_model_source(model_cfg, source, device, precision, seed)
    return VideoLLM(model, processor, model_cfg, resolved.card, resolved.description, max_new_tokens)
