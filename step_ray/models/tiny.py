"""Random-weight tiny Video-LLMs that build offline: tokenizer, processor and model, one per model family.

Nothing can be downloaded here, so tests and the demo build a real ``Qwen2_5_VLForConditionalGeneration``
(or ``Qwen2VLForConditionalGeneration``, or ``LlavaOnevisionForConditionalGeneration``) from a small config, with

* a byte-level BPE tokenizer trained (deterministically) on a small embedded English text that covers the
  question / rationale vocabulary of the synthetic world, wrapped as transformers' ``Qwen2Tokenizer`` (the
  fast, ``tokenizers``-backed class) with Qwen's special tokens and Qwen2.5-VL's chat template;
* the real ``Qwen2_5_VLProcessor`` / ``Qwen2VLProcessor`` / ``LlavaOnevisionProcessor`` with the family's real
  image and video processors, sized so a ``frame_size`` x ``frame_size`` frame is not resized.

LLaVA-OneVision gets the same tokenizer plus its ``<image>`` / ``<video>`` placeholder tokens and a chat template
of the same (ChatML) shape, so prompts and targets are built the same way for every family.

The pieces are saved with ``save_pretrained`` so that a base model and a model trained from it share the
same weights and tokenizer: see :func:`step_ray.models.loading.load_model_and_processor`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from tokenizers import Regex, Tokenizer, decoders, normalizers, pre_tokenizers
from tokenizers.models import BPE
from tokenizers.trainers import BpeTrainer

from step_ray.config import ModelConfig, TinyModelConfig

# Qwen2/2.5's special tokens, in Qwen's order. The vision ones are what the processor and the model look up.
SPECIAL_TOKENS: tuple[str, ...] = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|object_ref_start|>",
    "<|object_ref_end|>",
    "<|box_start|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
)

# Qwen2's pre-tokenisation regex (split words, single digits, punctuation runs, newlines, spaces).
_PRETOKENIZE_REGEX = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
)

# Qwen2-VL / Qwen2.5-VL's chat template (the one shipped with the instruct checkpoints).
CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}"
    "{% if add_vision_id %}Picture {{ image_count.value }}: {% endif %}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}"
    "{% set video_count.value = video_count.value + 1 %}"
    "{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}"
    "<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

# The text the BPE merges are learned from: the words of the synthetic world's questions, rationales and
# answers (colours, shapes, relations, events, times), plus common English. Any text still tokenises (byte
# level), this only makes the usual words short.
_WORDS = {
    "colours": "red orange yellow green cyan blue purple pink white black gray grey brown",
    "shapes": "circle square triangle rectangle star diamond object objects shape shapes thing things",
    "relations": "left right above below near far next to of the on in at behind front close touching",
    "events": (
        "enter enters entered entering leave leaves left leaving collide collides collided colliding "
        "collision appear appears appeared reappear reappears disappear disappears move moves moved moving "
        "moving stop stops stopped stays still change changes changed turn turns turned becomes became "
        "cut scene scenes clip clips shot shots frame frames video start end first last then after before "
        "while during when until same different again"
    ),
    "questions": (
        "what which who where when why how many much is are was were does do did has have had can "
        "colour color kind type answer question options option rationale explain because so therefore "
        "What Which Who Where When Why How Is Are Was Does Do Did The A An So Then After Before At In It"
    ),
    "common": (
        "a an the and or not no yes it its this that these those there here with from into out by for as "
        "one two three four five six seven eight nine ten zero seconds second time times step steps"
    ),
    "digits": "0 1 2 3 4 5 6 7 8 9 10 11 12 0.0 0.5 1.0 1.5 2.0 2.5 3.0 3.5 4.0 4.5 5.0 6.0 7.5 8.0",
    "punctuation": ". , ; : ? ! ( ) [ ] - ' \" / s t = + * #",
    # The chat template's role names and the joint format's answer mark: whole tokens, not letters (they
    # are in every sequence; spelled out they cost the tiny models ten tokens each).
    "chat": "system user assistant Answer: [answer] [explain] system\n user\n assistant\n",
}

_TEMPLATES = (
    "What colour is the {shape} that is {rel} the {colour2} {shape2}?",
    "Which object is {rel} the {colour} {shape} at {t} s?",
    "What colour is the object that collides with the {colour} {shape} after it enters?",
    "How many objects are {rel} the {colour} {shape}?",
    "Does the {colour} {shape} leave the scene before the {colour2} {shape2} enters?",
    "At {t} s the {colour} {shape} is {rel} the {colour2} {shape2}.",
    "The {colour} {shape} enters at {t} s. Then it collides with the {colour2} {shape2}.",
    "After the cut, the {colour} {shape} reappears; it is the same object as before.",
    "So the answer is {colour}.",
    "[answer] [explain] Options: (A) {colour} (B) {colour2} (C) {shape} (D) {shape2}.",
)


def training_corpus() -> list[str]:
    """The deterministic text the tiny tokenizer's merges are learned from."""
    colours = _WORDS["colours"].split()[:8]
    shapes = ["circle", "square", "triangle"]
    rels = ["left of", "right of", "above", "below", "near"]
    lines = [" ".join(v.split()) for v in _WORDS.values()]
    # The role names start a line in the template (no space before them), "Answer:" follows a newline: as lines
    # of their own, often enough for BPE to merge each into one token.
    lines += [w for w in _WORDS["chat"].split() for _ in range(16)]
    # Every combination once, in a fixed order: a fixed corpus gives the same merges every time.
    for i, template in enumerate(_TEMPLATES):
        for j, colour in enumerate(colours):
            lines.append(
                template.format(
                    colour=colour,
                    colour2=colours[(j + i + 1) % len(colours)],
                    shape=shapes[(i + j) % 3],
                    shape2=shapes[(i + j + 1) % 3],
                    rel=rels[(i + j) % len(rels)],
                    t=f"{(i + j) % 8}.{(5 * j) % 10}",
                )
            )
    return lines


def build_tokenizer(vocab_size: int = 1024, extra_special: tuple[str, ...] = (),
                    chat_template: str = CHAT_TEMPLATE) -> Any:
    """Train a byte-level BPE on :func:`training_corpus` and wrap it as transformers' ``Qwen2Tokenizer``.

    The trainer sees a fixed corpus in a fixed order and runs single-threaded for the merge counts, so the
    vocabulary is the same on every machine; the model dimension follows ``len(tokenizer)``.
    """
    from transformers import AddedToken
    from transformers.models.qwen2.tokenization_qwen2 import Qwen2Tokenizer

    raw = Tokenizer(BPE(unk_token=None, continuing_subword_prefix="", end_of_word_suffix="", fuse_unk=False))
    raw.normalizer = normalizers.NFC()
    # The same pre-tokenisation as Qwen2Tokenizer, so the learned merges apply unchanged after wrapping.
    raw.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(_PRETOKENIZE_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    raw.decoder = decoders.ByteLevel()
    trainer = BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=1,
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=[],
    )
    raw.train_from_iterator(training_corpus(), trainer=trainer)
    model_json = json.loads(raw.to_str())["model"]
    vocab: dict[str, int] = model_json["vocab"]
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in model_json["merges"]]

    tokenizer = Qwen2Tokenizer(
        vocab=vocab,
        merges=merges,
        unk_token=None,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        bos_token=None,
        model_max_length=32768,
    )
    # Qwen's special tokens come after the BPE vocabulary, as in the real checkpoints.
    tokenizer.add_special_tokens(
        {"additional_special_tokens": [AddedToken(t, special=True, normalized=False)
                                       for t in SPECIAL_TOKENS + tuple(extra_special)]}
    )
    tokenizer.chat_template = chat_template
    return tokenizer


def build_processor(tokenizer: Any, frame_size: int, family: str = "qwen2_5_vl") -> Any:
    """The family's real processor around ``tokenizer``; its pixel budget keeps a ``frame_size`` square."""
    if family == "llava_onevision":
        return build_llava_onevision_processor(tokenizer, frame_size)
    from transformers import Qwen2_5_VLProcessor, Qwen2VLProcessor
    from transformers.models.qwen2_vl.image_processing_qwen2_vl import Qwen2VLImageProcessor
    from transformers.models.qwen2_vl.video_processing_qwen2_vl import Qwen2VLVideoProcessor

    size = pixel_budget(frame_size)
    image_processor = Qwen2VLImageProcessor(size=dict(size))
    # cap_pixels_per_frame=False: the frames are already sized; no per-frame cap (and no deprecation warning).
    video_processor = Qwen2VLVideoProcessor(size=dict(size), cap_pixels_per_frame=False)
    cls = Qwen2VLProcessor if family == "qwen2_vl" else Qwen2_5_VLProcessor
    return cls(
        image_processor=image_processor,
        tokenizer=tokenizer,
        video_processor=video_processor,
        chat_template=CHAT_TEMPLATE,
    )


def pixel_budget(frame_size: int) -> dict[str, int]:
    """Qwen2-VL processors resize to keep ``shortest_edge <= H*W <= longest_edge`` pixels (names kept for BC)."""
    return {"shortest_edge": 56 * 56, "longest_edge": frame_size * frame_size}


def mrope_section(head_dim: int) -> list[int]:
    """Split of the rotary half-dimension over (time, height, width); must sum to head_dim / 2.

    Qwen2.5-VL-7B uses [16, 24, 24] for head_dim 128 (1 : 1.5 : 1.5); the same ratio here.
    """
    half = head_dim // 2
    t = half // 4
    h = (half - t) // 2
    return [t, h, half - t - h]


LLAVA_SPECIAL_TOKENS: tuple[str, ...] = ("<image>", "<video>")

# LLaVA-OneVision's tiny chat template: ChatML like Qwen's, with its ``<image>`` / ``<video>`` placeholders.
LLAVA_CHAT_TEMPLATE = CHAT_TEMPLATE.replace("<|vision_start|><|image_pad|><|vision_end|>", "<image>\n").replace(
    "<|vision_start|><|video_pad|><|vision_end|>", "<video>\n")


def _text_config(tiny: TinyModelConfig, tokenizer: Any, mrope: bool) -> dict[str, Any]:
    """The tiny Qwen2 text decoder shared by every family (M-RoPE sections only for the Qwen-VL families)."""
    head_dim = tiny.hidden_size // tiny.num_heads
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
    rope: dict[str, Any] = {"rope_type": "default", "rope_theta": float(tiny.rope_theta)}
    if mrope:
        rope["mrope_section"] = mrope_section(head_dim)
    return {
        "vocab_size": len(tokenizer),
        "hidden_size": tiny.hidden_size,
        "intermediate_size": tiny.hidden_size * 2,
        "num_hidden_layers": tiny.num_layers,
        "num_attention_heads": tiny.num_heads,
        "num_key_value_heads": tiny.num_heads,
        "max_position_embeddings": 4096,
        "rope_parameters": rope,
        "bos_token_id": ids["<|endoftext|>"],
        "eos_token_id": ids["<|im_end|>"],
        "pad_token_id": ids["<|endoftext|>"],
        "tie_word_embeddings": False,
        # Variance-preserving init (1/sqrt(width)) instead of Qwen's 0.02: with 0.02 the frozen lm_head rows
        # have norm ~0.23, so a unit-RMS hidden state can move a logit by at most ~2.5 and LoRA training of a
        # random tiny model stalls at a token CE of ~4.5 (measured); at 1/sqrt(width) it learns the toy tasks.
        "initializer_range": tiny.hidden_size ** -0.5,
    }


def build_config(tiny: TinyModelConfig, tokenizer: Any, family: str = "qwen2_5_vl", frame_size: int = 112) -> Any:
    """The tiny config of ``family`` whose token ids match ``tokenizer`` (``frame_size``: SigLIP's fixed image
    size, LLaVA-OneVision only)."""
    from transformers import LlavaOnevisionConfig, Qwen2_5_VLConfig, Qwen2VLConfig

    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
    vision_heads = max(1, tiny.vision_hidden_size // 16)
    if family == "llava_onevision":
        return LlavaOnevisionConfig(
            text_config={"model_type": "qwen2", **_text_config(tiny, tokenizer, mrope=False)},
            vision_config={
                "model_type": "siglip_vision_model",
                "hidden_size": tiny.vision_hidden_size,
                "intermediate_size": tiny.vision_hidden_size * 2,
                "num_hidden_layers": tiny.vision_depth,
                "num_attention_heads": vision_heads,
                "image_size": frame_size,
                "patch_size": 14,
            },
            image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
            video_token_index=tokenizer.convert_tokens_to_ids("<video>"),
            vision_feature_select_strategy="full",
            vision_feature_layer=-1,
            image_grid_pinpoints=[[frame_size, frame_size]],
            tie_word_embeddings=False,
        )
    common = {
        "image_token_id": ids["<|image_pad|>"],
        "video_token_id": ids["<|video_pad|>"],
        "vision_start_token_id": ids["<|vision_start|>"],
        "vision_end_token_id": ids["<|vision_end|>"],
        "tie_word_embeddings": False,
    }
    text_config = _text_config(tiny, tokenizer, mrope=True)
    if family == "qwen2_vl":
        vision_config = {
            "depth": tiny.vision_depth,
            "embed_dim": tiny.vision_hidden_size,
            "hidden_size": tiny.hidden_size,  # the merger projects straight into the text hidden size
            "mlp_ratio": 2,
            "num_heads": vision_heads,
            "patch_size": 14,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
            "initializer_range": tiny.vision_hidden_size ** -0.5,
        }
        return Qwen2VLConfig(text_config=text_config, vision_config=vision_config, **common)
    vision_config = {
        "depth": tiny.vision_depth,
        "hidden_size": tiny.vision_hidden_size,
        "intermediate_size": tiny.vision_hidden_size * 2,
        "num_heads": vision_heads,
        "out_hidden_size": tiny.hidden_size,  # the merger projects straight into the text hidden size
        "patch_size": 14,
        "spatial_merge_size": 2,
        "temporal_patch_size": 2,
        "window_size": 112,
        "fullatt_block_indexes": [tiny.vision_depth - 1],
        "tokens_per_second": 2,
        "initializer_range": tiny.vision_hidden_size ** -0.5,
    }
    return Qwen2_5_VLConfig(text_config=text_config, vision_config=vision_config, **common)


def build_llava_onevision_processor(tokenizer: Any, frame_size: int) -> Any:
    """The real ``LlavaOnevisionProcessor``: frames resized to ``frame_size`` squares, 14-pixel patches."""
    from transformers import LlavaOnevisionImageProcessor, LlavaOnevisionProcessor, LlavaOnevisionVideoProcessor

    size = {"height": frame_size, "width": frame_size}
    patches = (frame_size // 14) ** 2
    return LlavaOnevisionProcessor(
        image_processor=LlavaOnevisionImageProcessor(size=size, image_grid_pinpoints=[[frame_size, frame_size]]),
        tokenizer=tokenizer,
        video_processor=LlavaOnevisionVideoProcessor(size=size),
        num_image_tokens=patches,
        vision_feature_select_strategy="full",
        chat_template=LLAVA_CHAT_TEMPLATE,
    )


MODEL_CLASSES = {
    "qwen2_5_vl": "Qwen2_5_VLForConditionalGeneration",
    "qwen2_vl": "Qwen2VLForConditionalGeneration",
    "llava_onevision": "LlavaOnevisionForConditionalGeneration",
}


def tiny_family(model_cfg: ModelConfig) -> str:
    """The family the tiny build uses: ``model.family``, with 'auto' meaning Qwen2.5-VL."""
    return "qwen2_5_vl" if model_cfg.family == "auto" else model_cfg.family


def build_tiny(model_cfg: ModelConfig, seed: int = 0) -> tuple[Any, Any]:
    """(model, processor): a random-weight tiny model of ``model.family`` in fp32; the same ``seed`` gives the
    same weights."""
    import transformers

    family = tiny_family(model_cfg)
    if family == "llava_onevision":
        tokenizer = build_tokenizer(extra_special=LLAVA_SPECIAL_TOKENS, chat_template=LLAVA_CHAT_TEMPLATE)
    else:
        tokenizer = build_tokenizer()
    processor = build_processor(tokenizer, model_cfg.frame_size, family)
    config = build_config(model_cfg.tiny, tokenizer, family, model_cfg.frame_size)
    # A private generator state: building the model must not disturb (or depend on) the caller's RNG.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = getattr(transformers, MODEL_CLASSES[family])(config)
    model.eval()
    return model, processor


def save_tiny(model_cfg: ModelConfig, directory: str | Path, seed: int = 0) -> Path:
    """Build the tiny model and save model + processor to ``directory`` (``from_pretrained`` loads it).

    In a process where ``torch.distributed`` is up at a rank other than 0 (a train worker that is first on its
    node to need the model), transformers' ``save_pretrained`` writes only on global rank 0 and silently skips
    the config and the weights elsewhere: the build then runs in a fresh child process, which has no process
    group. Either way the saved folder is checked before it is handed back.
    """
    directory = Path(directory)
    if _distributed_rank() not in (None, 0):
        import multiprocessing

        child = multiprocessing.get_context("spawn").Process(target=save_tiny, args=(model_cfg, directory, seed))
        child.start()
        child.join()
        if child.exitcode != 0:
            raise RuntimeError(f"building the tiny model in a child process failed (exit code {child.exitcode})")
    else:
        model, processor = build_tiny(model_cfg, seed=seed)
        directory.mkdir(parents=True, exist_ok=True)
        model.save_pretrained(directory)
        processor.save_pretrained(directory)
    missing = [name for name in ("config.json", "model.safetensors") if not (directory / name).is_file()]
    if missing:
        raise RuntimeError(f"the tiny model saved to {directory} lacks {', '.join(missing)}")
    return directory


def _distributed_rank() -> int | None:
    """This process's ``torch.distributed`` rank, or None without a process group."""
    import torch.distributed as dist

    return dist.get_rank() if dist.is_available() and dist.is_initialized() else None
