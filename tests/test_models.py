"""The tiny offline Qwen2.5-VL: tokenizer, processor, model; build, save, reload, forward."""

from __future__ import annotations

import os

os.environ.setdefault("DS_ACCELERATOR", "cpu")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pytest
import torch

from step_ray.config import ModelConfig, TinyModelConfig
from step_ray.models import tiny
from step_ray.models.loading import ensure_tiny, load_model_and_processor, tiny_key


@pytest.fixture()
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("STEP_RAY_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def _video_inputs(processor, text="[answer] What colour is the square?"):
    frames = np.random.default_rng(0).integers(0, 255, (2, 112, 112, 3), dtype=np.uint8)
    messages = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": text}]}]
    prompt = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return prompt, processor(text=[prompt], videos=[frames], return_tensors="pt",
                             videos_kwargs={"do_sample_frames": False})


def test_tokenizer_is_deterministic_and_has_qwen_special_tokens():
    a, b = tiny.build_tokenizer(), tiny.build_tokenizer()
    assert a.get_vocab() == b.get_vocab()
    for token in tiny.SPECIAL_TOKENS:
        ids = a(token, add_special_tokens=False)["input_ids"]
        assert ids == [a.convert_tokens_to_ids(token)], token  # one id, never split
    assert a.eos_token == "<|im_end|>" and a.pad_token == "<|endoftext|>"
    # The question vocabulary is in the merges: common words are single tokens.
    for word in ["red", "purple", "circle", "triangle", "left", "collide", "What", "colour"]:
        assert len(a(" " + word, add_special_tokens=False)["input_ids"]) == 1, word
    text = "What colour is the cyan square left of 3 objects?"
    assert a.decode(a(text)["input_ids"]) == text


def test_mrope_section_sums_to_half_head_dim():
    for head_dim in (16, 32, 36, 64, 128):
        section = tiny.mrope_section(head_dim)
        assert sum(section) == head_dim // 2 and min(section) > 0
    assert tiny.mrope_section(128) == [16, 24, 24]  # Qwen2.5-VL-7B's split


def test_build_forward_backward_and_video_tokens():
    model, processor = tiny.build_tiny(ModelConfig(), seed=0)
    cfg = model.config
    assert cfg.vision_config.out_hidden_size == cfg.text_config.hidden_size == 128
    assert cfg.text_config.num_hidden_layers == 4 and cfg.vision_config.depth == 2
    assert cfg.video_token_id == processor.tokenizer.convert_tokens_to_ids("<|video_pad|>")
    prompt, inputs = _video_inputs(processor)
    assert "<|vision_start|><|video_pad|><|vision_end|>" in prompt
    # 2 frames of 112x112 -> one temporal patch pair, 8x8 patches, merged 2x2: 16 video tokens, not resized.
    assert inputs["video_grid_thw"].tolist() == [[1, 8, 8]]
    assert int((inputs["input_ids"] == cfg.video_token_id).sum()) == 16
    model.train()
    out = model(**inputs, labels=inputs["input_ids"])
    assert out.logits.shape == (1, inputs["input_ids"].shape[1], len(processor.tokenizer))
    out.loss.backward()
    assert model.model.visual.blocks[0].attn.qkv.weight.grad is not None


def test_same_seed_same_weights_other_seed_other_weights():
    torch.manual_seed(123)
    before = torch.rand(1)
    a, _ = tiny.build_tiny(ModelConfig(), seed=0)
    b, _ = tiny.build_tiny(ModelConfig(), seed=0)
    c, _ = tiny.build_tiny(ModelConfig(), seed=1)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not all(torch.equal(sa[k], sc[k]) for k in sa)
    torch.manual_seed(123)
    assert torch.equal(before, torch.rand(1))  # building does not consume the caller's RNG


def test_save_and_reload_offline(tmp_path):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    directory = tiny.save_tiny(ModelConfig(), tmp_path / "tiny", seed=0)
    model, processor = tiny.build_tiny(ModelConfig(), seed=0)
    loaded = AutoModelForImageTextToText.from_pretrained(directory)
    loaded_proc = AutoProcessor.from_pretrained(directory)
    assert type(loaded).__name__ == "Qwen2_5_VLForConditionalGeneration"
    assert type(loaded_proc).__name__ == "Qwen2_5_VLProcessor"
    assert loaded_proc.tokenizer.get_vocab() == processor.tokenizer.get_vocab()
    assert loaded_proc.tokenizer.chat_template == processor.tokenizer.chat_template
    ref = model.state_dict()
    assert all(torch.equal(ref[k], v) for k, v in loaded.state_dict().items())
    _, inputs = _video_inputs(loaded_proc)
    with torch.no_grad():
        assert torch.allclose(model(**inputs).logits, loaded(**inputs).logits, atol=1e-5)


def test_load_model_and_processor_tiny_uses_a_keyed_cache(cache):
    m1, p1 = load_model_and_processor(ModelConfig(), device="cpu", dtype=torch.float32, seed=0)
    built = ensure_tiny(ModelConfig(), seed=0)
    assert built.parent == cache / "models" and (built / "config.json").is_file()
    assert not any(p.name.startswith(".") for p in built.parent.iterdir())  # no temporary leftovers
    m2, _ = load_model_and_processor(ModelConfig(), seed=0)  # from the cache
    assert all(torch.equal(a, b) for a, b in zip(m1.state_dict().values(), m2.state_dict().values()))
    assert not m1.training
    # A different size or seed is a different cache entry.
    other = ModelConfig(tiny=TinyModelConfig(hidden_size=64, num_heads=4))
    assert tiny_key(other, 0) != tiny_key(ModelConfig(), 0) != tiny_key(ModelConfig(), 1)
    m3, _ = load_model_and_processor(other, seed=0)
    assert m3.config.text_config.hidden_size == 64
    # bf16 loading works (GPU workers with precision=bf16).
    m4, _ = load_model_and_processor(ModelConfig(), dtype=torch.bfloat16, seed=0)
    assert next(m4.parameters()).dtype == torch.bfloat16


def _build_at_rank(rank: int, port: int, cache_dir: str) -> None:
    """One rank of a 2-process gloo group that builds the tiny model into its own (node-local) cache."""
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), STEP_RAY_CACHE=f"{cache_dir}/{rank}")
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        built = ensure_tiny(ModelConfig(), seed=0)
        assert {"config.json", "model.safetensors"} <= set(os.listdir(built)), sorted(os.listdir(built))
        load_model_and_processor(ModelConfig(), seed=0)
    finally:
        dist.destroy_process_group()


def test_a_worker_at_a_nonzero_rank_builds_a_complete_tiny_model(tmp_path):
    """transformers saves weights on global rank 0 only: a rank-1 worker first on its node (its own cache) must
    still build a loadable model, not a folder holding just the processor."""
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_build_at_rank, args=(port, str(tmp_path)), nprocs=2, join=True)
    for rank in (0, 1):
        assert (tmp_path / str(rank) / "models").is_dir()


def test_non_tiny_name_goes_to_from_pretrained(tmp_path):
    directory = tiny.save_tiny(ModelConfig(), tmp_path / "local_model", seed=3)
    model, processor = load_model_and_processor(ModelConfig(name_or_path=str(directory)))
    assert type(processor).__name__ == "Qwen2_5_VLProcessor"
    ref, _ = tiny.build_tiny(ModelConfig(), seed=3)
    assert torch.equal(model.lm_head.weight, ref.lm_head.weight)


@pytest.mark.parametrize("family, model_class, processor_class", [
    ("qwen2_vl", "Qwen2VLForConditionalGeneration", "Qwen2VLProcessor"),
    ("llava_onevision", "LlavaOnevisionForConditionalGeneration", "LlavaOnevisionProcessor"),
])
def test_other_families_build_offline_train_and_reload(tmp_path, family, model_class, processor_class):
    """Each family's tiny build: a real model class and processor, video tokens where the processor puts them,
    forward + backward through the vision tower, save and reload with the Auto classes."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from step_ray.models.families import DEFAULT_LORA_TARGETS, FAMILIES, family_of, language_module_names

    cfg = ModelConfig(family=family)
    fam = family_of(cfg)
    model, processor = tiny.build_tiny(cfg, seed=0)
    assert type(model).__name__ == model_class and type(processor).__name__ == processor_class
    frames = np.random.default_rng(0).integers(0, 255, (2, 112, 112, 3), dtype=np.uint8)
    messages = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": "[answer] What colour?"}]}]
    prompt = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    inputs = processor(text=[prompt], videos=[frames], return_tensors="pt",
                       videos_kwargs=fam.video_kwargs(cfg, 0.0, 2.0))
    video_id = model.config.video_token_id if family == "qwen2_vl" else model.config.video_token_index
    # Qwen2-VL: 2 frames -> 1 temporal patch of 8x8 merged 2x2 = 16; LLaVA-OV: 2 x (4x4 pooled) + 1 newline.
    assert int((inputs["input_ids"] == video_id).sum()) == (16 if family == "qwen2_vl" else 33)
    model.train()
    out = model(**inputs, labels=inputs["input_ids"])
    out.loss.backward()
    vision = getattr(model.model, fam.vision_module)
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in vision.parameters())
    assert language_module_names(model) == set(DEFAULT_LORA_TARGETS)
    import re

    lora = re.compile(FAMILIES[family].lora_target_regex(list(DEFAULT_LORA_TARGETS)))
    hits = [n for n, _ in model.named_modules() if lora.fullmatch(n)]
    assert len(hits) == 4 * 7 and not any(fam.vision_module in n for n in hits)  # never the vision tower
    directory = tmp_path / family
    model.save_pretrained(directory)
    processor.save_pretrained(directory)
    loaded = AutoModelForImageTextToText.from_pretrained(directory)
    assert type(loaded).__name__ == model_class
    assert type(AutoProcessor.from_pretrained(directory)).__name__ == processor_class
    # auto detects the family from the checkpoint's config.json.
    assert family_of(ModelConfig(name_or_path=str(directory))).name == family
