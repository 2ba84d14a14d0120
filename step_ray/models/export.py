"""Turn any step-ray model into one self-contained Hugging Face folder (model + processor + card).

Self-training round r+1 starts from round r's model, and semantics parsing and the QRA filter may ask it
too: all of them load one folder with ``from_pretrained``. :func:`materialize` gives that folder for any model
reference: a full model folder is used as it is; base + adapter are merged (``merge_and_unload``) into
``target``, with the adapter's card (the prompt format it was trained with) carried over.
"""

from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path
from typing import Optional

from step_ray.config import ModelConfig
from step_ray.models.card import read_card, write_card
from step_ray.models.sources import resolve_model


def merge_adapter(base_dir: str | Path, adapter_dir: str | Path, target: str | Path, trust_remote_code: bool = False
                  ) -> Path:
    """Base + LoRA merged into one Hugging Face folder (model, processor, and the adapter's card)."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForImageTextToText, AutoProcessor

    target = Path(target)
    base = AutoModelForImageTextToText.from_pretrained(str(base_dir), dtype=torch.float32,
                                                       trust_remote_code=trust_remote_code)
    merged = PeftModel.from_pretrained(base, str(adapter_dir)).merge_and_unload()
    tmp = target.with_name(f".{target.name}.tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    merged.save_pretrained(str(tmp))
    AutoProcessor.from_pretrained(str(base_dir), trust_remote_code=trust_remote_code).save_pretrained(str(tmp))
    card = read_card(adapter_dir) or read_card(Path(adapter_dir).parent)
    if card is not None:
        write_card(tmp, replace(card, kind="merged"))
    if target.exists():
        shutil.rmtree(target)
    tmp.rename(target)  # complete or absent: a reader never sees half a model
    return target


def materialize(model_cfg: ModelConfig, source: str, target: str | Path, seed: int = 0) -> str:
    """A ``from_pretrained`` folder holding the model ``source`` refers to (merged into ``target`` when it is
    an adapter; ``target`` is reused when it is already there)."""
    from step_ray.models.loading import resolve_base

    resolved = resolve_model(source, model_cfg.name_or_path)
    if resolved.adapter is None:
        assert resolved.base is not None
        return resolved.base
    target = Path(target)
    if (target / "config.json").is_file():
        return str(target)
    base: Optional[str] = resolved.base or resolve_base(model_cfg, seed)
    return str(merge_adapter(base, resolved.adapter, target, model_cfg.trust_remote_code))
