"""Model families: what differs between the Video-LLMs step-ray fine-tunes, in one small record each.

Prompts, targets, the loss and the training loop are the same for every family; what differs is

* how the processor is told to take our pre-sampled, pre-sized frames as they are (``video_kwargs``);
* where the language model's projections live (LoRA targets) and which module is the vision tower (frozen by
  default, and the one a text-only rank would have to run to keep ZeRO-3's collectives matched).

``model.family = auto`` reads ``model_type`` from the checkpoint's ``config.json`` (no weights are loaded).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from step_ray.config import ConfigError, ModelConfig

DEFAULT_LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass(frozen=True)
class Family:
    """One model family (see the module docstring)."""

    name: str
    model_types: tuple[str, ...]  # config.json model_type values of this family
    vision_module: str  # the vision tower's attribute on the inner model (frozen by default)
    qwen_video: bool  # Qwen-VL video processor (pixel budget, temporal metadata) vs a plain resize

    @property
    def temporal_patch(self) -> int:
        """Frames the vision tower merges into one time slot (Qwen-VL: pairs; LLaVA-OneVision: each frame)."""
        return 2 if self.qwen_video else 1

    def lora_target_regex(self, target_modules: list[str]) -> str:
        """A peft ``target_modules`` regex matching only the language model's attention / MLP projections.

        The vision towers (Qwen's blocks, SigLIP) have projections of the same names (``gate_proj``, ``q_proj``
        ...); a plain name list would put adapters on the frozen vision tower too.
        """
        names = "|".join(sorted(set(target_modules)))
        return rf".*language_model\.layers\.\d+\.(self_attn|mlp)\.({names})"

    def video_kwargs(self, model_cfg: ModelConfig, start: Optional[float], end: Optional[float]) -> dict:
        """Processor kwargs for our pre-sampled frames: no resampling, the frame size kept as it is."""
        if not self.qwen_video:
            return {"do_sample_frames": False,
                    "size": {"height": model_cfg.frame_size, "width": model_cfg.frame_size}}
        from transformers.video_utils import VideoMetadata

        n = model_cfg.frames
        span = (end - start) if (start is not None and end is not None and end > start) else float(n)
        # The span's effective frame rate sets the temporal spacing of Qwen2.5-VL's 3-D positions.
        return {
            "do_sample_frames": False,
            "size": {"shortest_edge": 56 * 56, "longest_edge": model_cfg.frame_size * model_cfg.frame_size},
            "video_metadata": [VideoMetadata(total_num_frames=n, fps=n / span)],
        }


FAMILIES: dict[str, Family] = {
    "qwen2_5_vl": Family("qwen2_5_vl", ("qwen2_5_vl",), "visual", qwen_video=True),
    "qwen2_vl": Family("qwen2_vl", ("qwen2_vl",), "visual", qwen_video=True),
    "llava_onevision": Family("llava_onevision", ("llava_onevision",), "vision_tower", qwen_video=False),
}


def checkpoint_model_type(name_or_path: str, trust_remote_code: bool = False) -> str:
    """``model_type`` of a local checkpoint's config.json, or of a hub id through ``AutoConfig`` (cache only
    when offline)."""
    from step_ray.utils import storage

    if storage.is_remote(name_or_path):
        return str(json.loads(storage.read_text(storage.join(name_or_path, "config.json"))).get("model_type", ""))
    config_file = Path(name_or_path) / "config.json"
    if config_file.is_file():
        return str(json.loads(config_file.read_text()).get("model_type", ""))
    from transformers import AutoConfig

    return str(AutoConfig.from_pretrained(name_or_path, trust_remote_code=trust_remote_code).model_type)


def family_of(model_cfg: ModelConfig) -> Family:
    """The :class:`Family` of ``model_cfg`` (``model.family``, or detected from the checkpoint when 'auto')."""
    if model_cfg.family != "auto":
        return FAMILIES[model_cfg.family]
    if model_cfg.name_or_path == "tiny":
        return FAMILIES["qwen2_5_vl"]
    try:
        model_type = checkpoint_model_type(model_cfg.name_or_path, model_cfg.trust_remote_code)
    except (OSError, ValueError) as err:
        raise ConfigError("model.name_or_path", f"cannot read the config of {model_cfg.name_or_path!r}: {err}") \
            from None
    for family in FAMILIES.values():
        if model_type in family.model_types:
            return family
    raise ConfigError("model.family", f"{model_cfg.name_or_path!r} is a {model_type!r} model; supported: "
                                      f"{', '.join(FAMILIES)} (set model.family to one of them if it is one)")


def language_module_names(model: Any) -> set[str]:
    """Leaf names (``q_proj``, ``up_proj`` ...) of the language model's projection layers of ``model`` (the
    modules of its attention and MLP blocks that have weights)."""
    import re

    pattern = re.compile(r".*language_model\.layers\.\d+\.(self_attn|mlp)\.(\w+)$")
    return {m.group(2) for name, module in model.named_modules()
            if (m := pattern.fullmatch(name)) and getattr(module, "weight", None) is not None}
