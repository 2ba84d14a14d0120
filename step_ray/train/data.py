"""QRA rows -> labelled training sequences, inside the Ray Data encode actors.

The prompts, targets and sequences themselves are the model layer's (:mod:`step_ray.models.encoding`, one
tokenisation for answers, rationales and options); this module decodes each row's frames at the moments its
question names (:func:`step_ray.models.inputs.frames_for_row`), builds the row's sequences for the run's loss
format, and accounts for the rows it cannot use.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Optional

import torch

from step_ray.config import ModelConfig
from step_ray.models.encoding import collate, row_sequences
from step_ray.models.inputs import FrameCache
from step_ray.models.prompts import PromptFormat
from step_ray.video.frames import FrameDecodeError

logger = logging.getLogger(__name__)


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
                 loss_format: str = "multitask", frame_cache_mb: int = 0):
        self.processor = processor
        self.model_cfg = model_cfg
        self.fmt = PromptFormat.of(model_cfg)
        self.rationale_weight = rationale_weight
        self.loss_format = loss_format
        self.pad_id = int(processor.tokenizer.pad_token_id or 0)
        self.stats = EncodeStats()
        self.frames = FrameCache(frame_cache_mb * 2**20)
        self._warned: set = set()

    def encode(self, row: Mapping[str, Any]) -> tuple[list[dict[str, Any]], Optional[str]]:
        """(sequences of ``row``, None) or ([], why it was skipped: ``"video: <the decode error>"`` or
        ``"too_long"``)."""
        self.stats.rows += 1
        try:
            frames = self.frames.get(row, self.model_cfg)
        except FrameDecodeError as err:
            if row.get("id") not in self._warned:  # once per row, not once per epoch
                self._warned.add(row.get("id"))
                logger.warning("skipping QRA row %s: %s", row.get("id"), err)
            self.stats.skip("video")
            return [], f"video: {err}"
        seqs = row_sequences(row, frames, self.processor, self.model_cfg, self.rationale_weight, self.loss_format,
                             self.fmt)
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
