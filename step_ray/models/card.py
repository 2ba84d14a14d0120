"""The model card: how a step-ray model was trained, written beside its weights as ``step_ray_model.json``.

Scoring a model under a prompt it never saw measures the prompt, not the model: a model trained with the
``joint`` format must answer after its rationale, and one trained without options in its prompt must be
asked without them. So every export (an adapter, a full model, a merged model, a pretrained base) carries a
card, and the model layer (:mod:`step_ray.models.runtime`) reads it back and asks the questions the way the
card says. A model without a card (a hub checkpoint, a tiny build) is asked the way the config says.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional

from step_ray.models.prompts import PromptFormat

CARD_FILE = "step_ray_model.json"
CARD_VERSION = "step-ray-model/1"


@dataclass(frozen=True)
class ModelCard:
    """What the model layer needs to know to ask a model questions the way it was trained."""

    prompt: PromptFormat = field(default_factory=PromptFormat)
    #: 'multitask', 'joint', or None (never fine-tuned on QRA by step-ray): the answer-producing format.
    loss_format: Optional[str] = None
    rationale_weight: Optional[float] = None
    frames: Optional[int] = None
    frame_size: Optional[int] = None
    family: Optional[str] = None
    #: Where it came from: 'pretrain', 'train', 'merged', with the base it started from.
    kind: str = "train"
    base: Optional[str] = None
    steps: Optional[int] = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["prompt"] = self.prompt.to_json()
        return {"version": CARD_VERSION, **data}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "ModelCard":
        if data.get("version") != CARD_VERSION:
            raise ValueError(f"unsupported model card version {data.get('version')!r} (expected {CARD_VERSION})")
        known = {f for f in cls.__dataclass_fields__}
        kwargs = {k: v for k, v in data.items() if k in known and k != "prompt"}
        return cls(prompt=PromptFormat.from_json(data.get("prompt") or {}), **kwargs)

    @classmethod
    def of_training(cls, cfg: Any, kind: str = "train", base: Optional[str] = None,
                    steps: Optional[int] = None) -> "ModelCard":
        """The card of a model trained with the config tree ``cfg``."""
        from step_ray.models.families import family_of

        return cls(prompt=PromptFormat.of(cfg.model), loss_format=cfg.train.loss_format,
                   rationale_weight=cfg.train.rationale_weight, frames=cfg.model.frames,
                   frame_size=cfg.model.frame_size, family=family_of(cfg.model).name, kind=kind, base=base,
                   steps=steps)


def write_card(directory: str | Path, card: ModelCard) -> Path:
    path = Path(directory) / CARD_FILE
    path.write_text(json.dumps(card.to_json(), indent=1, sort_keys=True))
    return path


def read_card(directory: str | Path) -> Optional[ModelCard]:
    """The card in ``directory``, or None when it has none."""
    path = Path(directory) / CARD_FILE
    if not path.is_file():
        return None
    return ModelCard.from_json(json.loads(path.read_text()))
