"""Qwen2.5-VL-shaped models with random weights, built from their configuration alone (nothing is downloaded),
and the arithmetic the GPU benchmark reports: parameters, model FLOPs per token, peak FLOPs of the GPU.

``3b`` and ``7b`` are the published shapes of Qwen2.5-VL-3B / -7B (text decoder and vision tower); ``tiny`` is a
CPU-sized model of the same architecture for tests. The tokenizer and processor are step-ray's offline tiny
ones (a small byte-level BPE with Qwen's special tokens and the real Qwen2.5-VL processor): token ids stay far
below the vocabulary size, which keeps the embedding and output layers at their real size.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Optional


@dataclass(frozen=True)
class Shape:
    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    vocab: int
    tie_embeddings: bool
    vision_depth: int = 32
    vision_hidden: int = 1280
    vision_intermediate: int = 3420
    vision_heads: int = 16
    vision_full_attention: tuple[int, ...] = (7, 15, 23, 31)

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads

    def lm_params(self) -> int:
        """Language-model weights that cost FLOPs per token: the decoder layers and the output projection."""
        d, kv = self.hidden, self.kv_heads * self.head_dim
        attention = d * d + 2 * d * kv + d * d + 2 * kv + d  # q, k, v, o (+ the q / k / v biases)
        mlp = 3 * d * self.intermediate
        return self.layers * (attention + mlp + 2 * d) + self.vocab * d


SHAPES: dict[str, Shape] = {
    # Qwen2.5-VL-3B-Instruct and -7B-Instruct (their config.json): the decoder, and the same 32-block vision tower.
    "3b": Shape(hidden=2048, intermediate=11008, layers=36, heads=16, kv_heads=2, vocab=151936, tie_embeddings=True),
    "7b": Shape(hidden=3584, intermediate=18944, layers=28, heads=28, kv_heads=4, vocab=152064, tie_embeddings=False),
    # CPU-sized, for the tests: the same architecture and code path.
    "tiny": Shape(hidden=128, intermediate=256, layers=2, heads=4, kv_heads=2, vocab=2048, tie_embeddings=False,
                  vision_depth=2, vision_hidden=64, vision_intermediate=128, vision_heads=4,
                  vision_full_attention=(1,)),
}

#: Dense bf16 tensor-core peak (TFLOP/s) by the name torch reports; --peak-tflops overrides it.
PEAK_BF16_TFLOPS = {"H200": 989.0, "H100 PCIe": 756.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "L4": 121.0}


def peak_tflops(device: str, override: Optional[float] = None) -> Optional[float]:
    """The GPU's dense bf16 peak (TFLOP/s): ``override``, else the table by device name; None if unknown/CPU."""
    if override:
        return float(override)
    if not device.startswith("cuda"):
        return None
    import torch

    name = torch.cuda.get_device_name(0)
    for key in sorted(PEAK_BF16_TFLOPS, key=len, reverse=True):  # "H100 PCIe" before "H100"
        if key in name:
            return PEAK_BF16_TFLOPS[key]
    return None


def train_flops_per_token(shape: Shape, seq_len: float, lora: bool) -> float:
    """Model FLOPs per trained token (the MFU convention: recomputation by gradient checkpointing not counted):
    2N forward, 2N for the activations' gradients, and 2N for the weights' gradients unless the weights are
    frozen (LoRA; the adapters' own FLOPs are negligible), plus attention over the sequence (12 L d T, forward
    and backward). The vision tower (frozen, run once per clip) is left out: MFU is of the language model."""
    n = shape.lm_params()
    return (4 if lora else 6) * n + 12 * shape.layers * shape.hidden * seq_len


def qwen_config(shape: Shape, tokenizer: Any) -> Any:
    """A ``Qwen2_5_VLConfig`` of ``shape`` whose special token ids are the tokenizer's."""
    from transformers import Qwen2_5_VLConfig

    from step_ray.models.tiny import SPECIAL_TOKENS, mrope_section

    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
    text = {
        "vocab_size": max(shape.vocab, len(tokenizer)), "hidden_size": shape.hidden,
        "intermediate_size": shape.intermediate, "num_hidden_layers": shape.layers,
        "num_attention_heads": shape.heads, "num_key_value_heads": shape.kv_heads, "max_position_embeddings": 32768,
        "rope_parameters": {"rope_type": "default", "rope_theta": 1_000_000.0,
                            "mrope_section": mrope_section(shape.head_dim)},
        "rms_norm_eps": 1e-6, "bos_token_id": ids["<|endoftext|>"], "eos_token_id": ids["<|im_end|>"],
        "pad_token_id": ids["<|endoftext|>"], "tie_word_embeddings": shape.tie_embeddings,
    }
    vision = {
        "depth": shape.vision_depth, "hidden_size": shape.vision_hidden, "intermediate_size": shape.vision_intermediate,
        "num_heads": shape.vision_heads, "out_hidden_size": shape.hidden, "patch_size": 14, "spatial_merge_size": 2,
        "temporal_patch_size": 2, "window_size": 112, "fullatt_block_indexes": list(shape.vision_full_attention),
        "tokens_per_second": 2,
    }
    return Qwen2_5_VLConfig(text_config=text, vision_config=vision, image_token_id=ids["<|image_pad|>"],
                            video_token_id=ids["<|video_pad|>"], vision_start_token_id=ids["<|vision_start|>"],
                            vision_end_token_id=ids["<|vision_end|>"], tie_word_embeddings=shape.tie_embeddings)


def build_checkpoint(size: str, directory: Path, device: str, frame_size: int) -> tuple[Path, dict]:
    """A ``from_pretrained`` directory with a random-weight model of ``size`` in bf16 (built on ``device``: a 7B
    initialises in seconds on a GPU), the tokenizer and the processor; reused when it exists."""
    import torch
    import transformers

    from step_ray.models.tiny import build_processor, build_tokenizer

    shape = SHAPES[size]
    directory = Path(directory)
    meta_file = directory / "bench_shape.json"
    if meta_file.is_file() and json.loads(meta_file.read_text()).get("shape") == asdict(shape):
        return directory, json.loads(meta_file.read_text())
    t0 = time.perf_counter()
    tokenizer = build_tokenizer()
    processor = build_processor(tokenizer, frame_size)
    config = qwen_config(shape, tokenizer)
    with torch.device(device):
        model = transformers.Qwen2_5_VLForConditionalGeneration._from_config(config, dtype=torch.bfloat16)
    directory.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(directory, safe_serialization=True)
    processor.save_pretrained(directory)
    total = sum(p.numel() for p in model.parameters())
    meta = {"size": size, "shape": asdict(shape), "params": total, "lm_params": shape.lm_params(),
            "build_seconds": round(time.perf_counter() - t0, 1)}
    meta_file.write_text(json.dumps(meta, indent=1))
    del model
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
    return directory, meta
