"""Training: loss, data collation, frames, DeepSpeed config, and one Ray Train + DeepSpeed integration run
(ZeRO-2, 2 workers, LoRA; then a resume from the saved step; then base-vs-trained evaluation)."""

from __future__ import annotations

import os

# DeepSpeed reads its accelerator at import time: set before anything imports it (here and in the workers).
os.environ.setdefault("DS_ACCELERATOR", "cpu")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import json
import math
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from step_ray.config import ConfigError, ModelConfig, TrainConfig, load_config
from step_ray.models.encoding import IGNORE_INDEX, collate
from step_ray.models.prompts import (
    TASK_ANSWER, TASK_JOINT, TASK_RATIONALE, answer_text, end_of_turn_id, rationale_text, target_ids,
)
from step_ray.train.data import RowEncoder, rows_from_batch
from step_ray.train.deepspeed_config import deepspeed_config, fill_auto, lr_lambda
from step_ray.video.frames import FrameDecodeError, _decode_pyav, read_frames, span_times
from step_ray.train.loss import step_loss
from step_ray.train.toy import make_toy_qra

# ------------------------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    """8 toy videos (6 train, 2 test), 3 questions each."""
    return make_toy_qra(tmp_path_factory.mktemp("toy"), videos=8, seed=0)


@pytest.fixture(scope="module")
def toy_rows(toy):
    return pq.read_table(toy).to_pylist()


@pytest.fixture(scope="module")
def processor(tmp_path_factory):
    from step_ray.models.tiny import build_tiny

    _, proc = build_tiny(ModelConfig(), seed=0)
    return proc


# ------------------------------------------------------------------------------------------------ loss


def _ce(logits_row: list[float], target: int) -> float:
    return -(logits_row[target] - math.log(sum(math.exp(x) for x in logits_row)))


def test_loss_is_answer_mean_plus_lambda_rationale_mean_by_hand():
    # Two sequences of 4 positions, vocab of 3. Position t predicts label t+1.
    logits = torch.tensor([
        [[0.1, 0.2, 0.3], [1.0, -1.0, 0.5], [0.0, 2.0, -1.0], [0.3, 0.3, 0.3]],   # answer sequence
        [[2.0, 0.0, 0.0], [0.5, 0.5, -0.5], [-1.0, 1.0, 3.0], [0.0, 0.0, 0.0]],  # rationale sequence
    ], requires_grad=True)
    labels = torch.tensor([[IGNORE_INDEX, IGNORE_INDEX, 1, 2], [IGNORE_INDEX, 0, 0, 2]])
    task = torch.tensor([TASK_ANSWER, TASK_RATIONALE])
    lg = logits.tolist()
    answer = (_ce(lg[0][1], 1) + _ce(lg[0][2], 2)) / 2
    rationale = (_ce(lg[1][0], 0) + _ce(lg[1][1], 0) + _ce(lg[1][2], 2)) / 3
    out = step_loss(logits, labels, task, rationale_weight=0.5)
    assert out.answer.item() == pytest.approx(answer, rel=1e-6)
    assert out.rationale.item() == pytest.approx(rationale, rel=1e-6)
    assert out.loss.item() == pytest.approx(answer + 0.5 * rationale, rel=1e-6)
    assert (out.answer_tokens, out.rationale_tokens) == (2, 3)
    # Not a mean over all five target tokens pooled together.
    pooled = (2 * answer + 3 * rationale) / 5
    assert out.loss.item() != pytest.approx(pooled, rel=1e-3)
    # Gradient flows only where targets are; lambda = 0 leaves the rationale logits untouched.
    out0 = step_loss(logits, labels, task, rationale_weight=0.0)
    out0.loss.backward()
    assert out0.loss.item() == pytest.approx(answer, rel=1e-6)
    assert torch.count_nonzero(logits.grad[1]) == 0 and torch.count_nonzero(logits.grad[0]) > 0


def test_loss_with_a_missing_task_is_zero_for_that_term():
    logits = torch.randn(1, 3, 5, requires_grad=True)
    labels = torch.tensor([[IGNORE_INDEX, 2, 4]])
    out = step_loss(logits, labels, torch.tensor([TASK_ANSWER]), rationale_weight=1.0)
    assert out.rationale.item() == 0.0 and out.rationale_tokens == 0
    assert out.loss.item() == pytest.approx(out.answer.item())
    out.loss.backward()
    assert torch.isfinite(logits.grad).all()


# ------------------------------------------------------------------------------------------------ data


def test_targets_from_rows():
    row = {"options": ["red", "blue"], "answer": "blue", "answer_index": 1, "rationale": ["A.", " B. "]}
    assert answer_text(row) == "blue" and rationale_text(row) == "A. B."
    assert rationale_text({"rationale": None}) == ""
    assert rows_from_batch({"a": np.array([1, 2]), "b": np.array(["x", "y"])}) == [
        {"a": 1, "b": "x"}, {"a": 2, "b": "y"}]


def test_collation_masks_labels_and_builds_both_tasks(toy_rows, processor):
    rows = [r for r in toy_rows if r["split"] == "train"][:3]
    encoder = RowEncoder(processor, ModelConfig(), rationale_weight=1.0)
    batch = encoder(rows)
    tok = processor.tokenizer
    eot = end_of_turn_id(tok)
    assert batch["task"].tolist() == [TASK_ANSWER, TASK_RATIONALE] * 3
    assert batch["input_ids"].shape == batch["labels"].shape == batch["attention_mask"].shape
    assert batch["video_grid_thw"].shape == (6, 3)  # every sequence has its video
    video_id = tok.convert_tokens_to_ids("<|video_pad|>")
    assert batch["pixel_values_videos"].shape[0] == int((batch["input_ids"] == video_id).sum()) * 4
    for i, seq_task in enumerate(batch["task"].tolist()):
        row = rows[i // 2]
        target = answer_text(row) if seq_task == TASK_ANSWER else rationale_text(row)
        want = target_ids(tok, target) + [eot]
        labels, ids, mask = batch["labels"][i], batch["input_ids"][i], batch["attention_mask"][i]
        n = int(mask.sum())
        supervised = (labels != IGNORE_INDEX).nonzero().flatten().tolist()
        # Only the target (and its end-of-turn) is supervised, and it is the end of the real sequence.
        assert labels[labels != IGNORE_INDEX].tolist() == want
        assert supervised == list(range(n - len(want), n))
        assert ids[supervised].tolist() == want
        assert (labels[n:] == IGNORE_INDEX).all() and (mask[n:] == 0).all()
        prompt = tok.decode(ids[: n - len(want)])
        assert ("[answer]" if seq_task == TASK_ANSWER else "[explain]") in prompt
        assert row["question"] in prompt and all(o in prompt for o in row["options"])
        assert prompt.endswith("<|im_start|>assistant\n")
        assert int((ids == video_id).sum()) == 16 and (batch["mm_token_type_ids"][i][ids == video_id] == 2).all()


def test_lambda_zero_builds_answer_sequences_only(toy_rows, processor):
    rows = [r for r in toy_rows if r["split"] == "train"][:4]
    batch = RowEncoder(processor, ModelConfig(), rationale_weight=0.0)(rows)
    assert batch["task"].tolist() == [TASK_ANSWER] * 4


def test_missing_and_broken_videos_are_skipped_and_counted(toy_rows, processor, tmp_path):
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"not a video at all")
    good = toy_rows[0]
    rows = [dict(good, video_uri=str(tmp_path / "missing.mp4")), dict(good, video_uri=str(broken)), good]
    encoder = RowEncoder(processor, ModelConfig(), rationale_weight=1.0)
    batch = encoder(rows)
    assert batch["task"].shape[0] == 2
    assert encoder.stats.rows == 3 and encoder.stats.skipped == 2 and encoder.stats.reasons == {"video": 2}
    assert encoder(rows[:2]) is None  # a batch with nothing usable: None, never an exception


def test_overlong_target_is_cut_and_overlong_prompt_skipped(toy_rows, processor):
    row = dict(toy_rows[0], rationale=["word " * 400])
    seqs = RowEncoder(processor, ModelConfig(max_length=128), 1.0).sequences(row)
    assert [s["input_ids"].shape[0] for s in seqs][1] == 128
    encoder = RowEncoder(processor, ModelConfig(max_length=64), 1.0)
    assert encoder.sequences(row) == [] and encoder.stats.reasons == {"too_long": 1}


def test_collate_pads_right():
    a = {"input_ids": torch.tensor([5, 6, 7]), "labels": torch.tensor([-100, 6, 7]),
         "attention_mask": torch.ones(3, dtype=torch.long), "task": 0,
         "pixel_values_videos": torch.zeros(4, 2), "video_grid_thw": torch.tensor([[1, 2, 2]])}
    b = dict(a, input_ids=torch.tensor([5]), labels=torch.tensor([5]), attention_mask=torch.ones(1, dtype=torch.long),
             task=1)
    batch = collate([a, b], pad_id=0)
    assert batch["input_ids"].tolist() == [[5, 6, 7], [5, 0, 0]]
    assert batch["labels"].tolist() == [[-100, 6, 7], [5, -100, -100]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert batch["pixel_values_videos"].shape == (8, 2) and batch["task"].tolist() == [0, 1]


# ------------------------------------------------------------------------------------------------ frames


def test_span_times_and_frames(toy_rows):
    assert span_times(1.0, 3.0, 10.0, 2) == [1.5, 2.5]
    assert span_times(None, None, 4.0, 2) == [1.0, 3.0]
    assert span_times(5.0, 20.0, 10.0, 2) == [6.25, 8.75]  # clipped to the video
    frames = read_frames(toy_rows[0]["video_uri"], 0.0, 2.0, 2, 112)
    assert frames.shape == (2, 112, 112, 3) and frames.dtype == np.uint8 and frames.max() > 100
    with pytest.raises(FrameDecodeError):
        read_frames("/no/such/video.mp4", 0, 1, 2, 112)


def test_decord_and_pyav_agree_on_a_real_video(real_video):
    a = read_frames(str(real_video), 1.0, 3.0, 2, 112)
    b = _decode_pyav(str(real_video), 1.0, 3.0, 2, 112)
    assert np.abs(a.astype(int) - b.astype(int)).mean() < 8
    at = read_frames(str(real_video), None, None, 2, 112, times=[0.5, 2.0])  # the frames shown at those times
    assert np.abs(at.astype(int) - _decode_pyav(str(real_video), None, None, 2, 112, [0.5, 2.0]).astype(int)).mean() < 8


# ------------------------------------------------------------------------------------------------ deepspeed


def test_deepspeed_config_and_schedule():
    tc = TrainConfig(zero_stage=3, batch_size=4, grad_accum=2, lr=1e-3, warmup_steps=4, steps=20)
    ds = deepspeed_config(tc, use_bf16=False)
    assert ds["zero_optimization"]["stage"] == 3 and ds["optimizer"]["params"]["torch_adam"] is True
    assert ds["train_micro_batch_size_per_gpu"] == 4 and ds["gradient_accumulation_steps"] == 2
    assert ds["bf16"]["enabled"] is False and ds["fp16"]["enabled"] is False
    f = lr_lambda(tc)
    warm = [f(s) for s in range(4)]
    assert warm == sorted(warm) and 0 < warm[0] < warm[-1] < 1
    assert f(4) == pytest.approx(1.0) and f(12) == pytest.approx(0.5) and f(20) == pytest.approx(0.0, abs=1e-12)
    assert all(f(s) >= f(s + 1) for s in range(4, 20))


def test_deepspeed_offload_precision_and_user_json():
    ds = deepspeed_config(TrainConfig(zero_stage=3, offload_optimizer=True, offload_params=True), use_bf16=True)
    zero = ds["zero_optimization"]
    assert zero["offload_optimizer"]["device"] == "cpu" and zero["offload_param"]["device"] == "cpu"
    assert ds["optimizer"]["params"]["torch_adam"] is False  # DeepSpeed's CPU Adam steps offloaded states
    assert ds["bf16"]["enabled"] is True and ds["fp16"]["enabled"] is False
    assert "offload_optimizer" not in deepspeed_config(TrainConfig(zero_stage=2), False)["zero_optimization"]
    user = {"train_micro_batch_size_per_gpu": "auto", "gradient_accumulation_steps": "auto",
            "optimizer": {"type": "AdamW", "params": {"lr": "auto", "weight_decay": 0.1}},
            "bf16": {"enabled": "auto"}, "zero_optimization": {"stage": 3}}
    tc = TrainConfig(batch_size=3, grad_accum=4, lr=2e-4, num_workers=2)
    filled = deepspeed_config(tc, use_bf16=False, user=user)
    assert filled["train_micro_batch_size_per_gpu"] == 3 and filled["gradient_accumulation_steps"] == 4
    assert filled["train_batch_size"] == 24 and filled["optimizer"]["params"] == {"lr": 2e-4, "weight_decay": 0.1}
    assert filled["bf16"]["enabled"] is False and filled["zero_optimization"] == {"stage": 3}
    assert user["optimizer"]["params"]["lr"] == "auto"  # the user's dict is not modified
    assert fill_auto({"train_micro_batch_size_per_gpu": 7}, tc, False, False)["train_micro_batch_size_per_gpu"] == 7


@pytest.mark.parametrize("overrides, field", [
    (["train.precision=fp16"], "train.precision"),
    (["train.offload_optimizer=true", "train.zero_stage=0"], "train.offload_optimizer"),
    (["train.offload_params=true", "train.zero_stage=2"], "train.offload_params"),
    (["train.loss_format=both"], "train.loss_format"),
    (["train.data.max_actors=0"], "train.data.max_actors"),
])
def test_incompatible_training_options_name_the_field(overrides, field):
    with pytest.raises(ConfigError) as err:
        load_config(None, overrides)
    assert err.value.field_path == field and str(err.value).startswith(field)


def test_preflight_rejects_bad_options_before_any_worker(toy, tmp_path, monkeypatch):
    """LoRA targets the model lacks, a broken DeepSpeed JSON, more CPUs than Ray has: caught on the driver."""
    from step_ray.train.stream import check_resources
    from step_ray.train.trainer import check_lora_targets

    monkeypatch.setenv("STEP_RAY_CACHE", str(tmp_path / "cache"))
    check_lora_targets(load_config(None, []))  # the default targets exist
    with pytest.raises(ConfigError, match=r"^train\.lora\.target_modules: qkv_proj not in the language model"):
        check_lora_targets(load_config(None, ["train.lora.target_modules=[q_proj, qkv_proj]"]))
    for family in ("qwen2_vl", "llava_onevision"):
        check_lora_targets(load_config(None, [f"model.family={family}"]))
    with pytest.raises(ConfigError, match=r"^train\.cpus_per_worker: 2 workers x 1.0 CPUs"):
        check_resources(load_config(None, []), {"CPU": 2.0})
    check_resources(load_config(None, ["train.cpus_per_worker=0.5"]), {"CPU": 2.0})
    with pytest.raises(ConfigError, match=r"^train\.gpus_per_worker"):
        check_resources(load_config(None, ["train.use_gpu=true", "train.cpus_per_worker=0.5"]), {"CPU": 8, "GPU": 1})
    from step_ray.train.deepspeed_config import load_user_config

    bad = tmp_path / "ds.json"
    bad.write_text("{not json")
    with pytest.raises(ConfigError, match=r"^train\.deepspeed_config: .* is not valid JSON"):
        load_user_config(str(bad))
    with pytest.raises(ConfigError, match=r"^train\.deepspeed_config: no such file"):
        load_user_config(str(tmp_path / "none.json"))


def test_lora_targets_only_the_language_model(processor):
    import re

    from step_ray.models.tiny import build_tiny
    from step_ray.train.loop import lora_target_regex

    model, _ = build_tiny(ModelConfig(), seed=0)
    pattern = re.compile(lora_target_regex(TrainConfig().lora.target_modules))
    hits = [n for n, _ in model.named_modules() if pattern.fullmatch(n)]
    assert len(hits) == 4 * 7 and all("language_model" in n for n in hits)


# ------------------------------------------------------------------------------------------------ joint format


def test_per_token_tasks_split_one_sequence_into_both_terms():
    """joint: the rationale and the answer tokens of one sequence go to their own terms, each its own mean."""
    logits = torch.randn(1, 6, 4, requires_grad=True)
    labels = torch.tensor([[IGNORE_INDEX, 1, 2, 3, 0, 1]])
    token_task = torch.tensor([[-1, TASK_RATIONALE, TASK_RATIONALE, TASK_RATIONALE, TASK_ANSWER, TASK_ANSWER]])
    lg = logits.tolist()[0]
    rationale = sum(_ce(lg[t], labels[0, t + 1].item()) for t in range(0, 3)) / 3
    answer = sum(_ce(lg[t], labels[0, t + 1].item()) for t in range(3, 5)) / 2
    out = step_loss(logits, labels, token_task, rationale_weight=2.0)
    assert out.answer.item() == pytest.approx(answer, rel=1e-5)
    assert out.rationale.item() == pytest.approx(rationale, rel=1e-5)
    assert out.loss.item() == pytest.approx(answer + 2.0 * rationale, rel=1e-5)
    assert (out.answer_tokens, out.rationale_tokens) == (2, 3)


def test_joint_format_builds_one_sequence_rationale_then_answer(toy_rows, processor):
    row = [r for r in toy_rows if r["split"] == "train"][1]
    encoder = RowEncoder(processor, ModelConfig(), rationale_weight=1.0, loss_format="joint")
    batch = encoder([row])
    tok = processor.tokenizer
    assert batch["task"].tolist() == [TASK_JOINT]
    labels, tasks = batch["labels"][0], batch["label_task"][0]
    target = labels[labels != IGNORE_INDEX]
    text = tok.decode(target)
    assert text.lstrip().startswith(rationale_text(row)) and text.endswith(f"Answer: {answer_text(row)}<|im_end|>")
    # Every target token has a task: the rationale ones first, then the answer ones (answer + end of turn).
    target_tasks = tasks[labels != IGNORE_INDEX].tolist()
    n_answer = len(tok(" " + answer_text(row), add_special_tokens=False)["input_ids"]) + 1
    assert target_tasks == [TASK_RATIONALE] * (len(target_tasks) - n_answer) + [TASK_ANSWER] * n_answer
    assert (tasks[labels == IGNORE_INDEX] == -1).all()
    assert "[explain]" in tok.decode(batch["input_ids"][0])
    # lambda = 0 in the joint format: the answer conditioned on the rationale, the rationale unsupervised.
    logits = torch.randn(1, labels.shape[0], len(tok))
    out = step_loss(logits, batch["labels"], batch["label_task"], 0.0)
    assert out.rationale_tokens > 0 and out.loss.item() == pytest.approx(out.answer.item())


def test_joint_target_cuts_the_rationale_never_the_answer(toy_rows, processor):
    row = dict(toy_rows[0], rationale=["word " * 400])
    seq = RowEncoder(processor, ModelConfig(max_length=128), 1.0, "joint").sequences(row)[0]
    assert seq["input_ids"].shape[0] == 128
    tail = processor.tokenizer.decode(seq["input_ids"][-4:])
    assert tail.endswith(answer_text(row) + "<|im_end|>")


def test_sequences_survive_the_stream_encoding(toy_rows, processor):
    from step_ray.models.encoding import pack_sequence, unpack_sequence

    seqs = RowEncoder(processor, ModelConfig(), 1.0).sequences(toy_rows[0])
    back = [unpack_sequence(pack_sequence(s)) for s in seqs]
    a, b = collate(seqs, 0), collate(back, 0)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# ------------------------------------------------------------------------------------------------ Ray


def test_ray_train_zero2_lora_resume_and_eval(ray_session, toy, tmp_path, monkeypatch):
    from peft import PeftModel
    from safetensors.torch import load_file
    from transformers import AutoModelForImageTextToText

    from step_ray.eval.evaluate import evaluate
    from step_ray.train.trainer import run_training

    monkeypatch.setenv("STEP_RAY_CACHE", str(tmp_path / "cache"))  # workers inherit it
    # Train rows whose video is missing or broken: skipped and counted, never a crash. (20 train rows: an
    # even count, so Ray's equal split over 2 workers drops none of them.)
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"\x00" * 64)
    table = pq.read_table(toy).to_pylist()
    table[:0] = [dict(table[0], id="missing", video_uri=str(tmp_path / "missing.mp4")),
                 dict(table[0], id="broken", video_uri=str(broken))]
    qra = tmp_path / "qra"
    qra.mkdir()
    import pyarrow as pa

    pq.write_table(pa.Table.from_pylist(table), qra / "part-00000.parquet")

    overrides = ["train.num_workers=2", "train.cpus_per_worker=0.5", "train.data.num_cpus=0.5", "train.progress=false",
                 "train.zero_stage=2", "train.batch_size=4", "train.log_every=1",
                 "train.checkpoint_every=2", "train.warmup_steps=1", "train.lr=5e-3", "train.keep_checkpoints=2"]
    out = tmp_path / "run"
    first = run_training(load_config(None, overrides + ["train.steps=3"]), str(qra), out, name="t", merged=True)
    assert first["steps"] == 3 and first["start_step"] == 0
    assert first["final_loss"] == first["history"][-1]["loss"] and first["adapter_dir"] == str(out / "adapter")
    assert first["base_dir"] == str(out / "base") and first["seconds_per_step"] > 0
    assert [h["step"] for h in first["history"]] == [1, 2, 3]
    for h in first["history"]:
        assert {"loss", "loss_answer", "loss_rationale", "lr", "samples_per_s", "tokens_per_s"} <= set(h)
        assert h["loss"] == pytest.approx(h["loss_answer"] + h["loss_rationale"], rel=1e-5)
    assert first["skipped_rows"] >= 2  # the missing and the broken video (read again every epoch)
    assert Path(first["checkpoint"]).is_dir()
    ckpt_files = {p.name for p in Path(first["checkpoint"], "ds").iterdir()}
    assert {"zero_pp_rank_0_mp_rank_00_optim_states.pt", "zero_pp_rank_1_mp_rank_00_optim_states.pt",
            "mp_rank_00_model_states.pt"} <= ckpt_files  # the merged checkpoint of both ranks

    # The export: the adapter applies to the exported base with peft.
    adapter = load_file(str(out / "adapter" / "adapter_model.safetensors"))
    assert adapter and any("language_model" in k for k in adapter) and not any("visual" in k for k in adapter)
    assert max(v.abs().max().item() for k, v in adapter.items() if "lora_B" in k) > 0  # trained
    base = AutoModelForImageTextToText.from_pretrained(out / "base")
    assert isinstance(PeftModel.from_pretrained(base, str(out / "adapter")), PeftModel)
    assert (out / "merged" / "config.json").is_file()
    assert json.loads((out / "train_summary.json").read_text())["steps"] == 3

    # Same name and storage, more steps: resumes at step 3, not 0.
    second = run_training(load_config(None, overrides + ["train.steps=5"]), str(qra), out, name="t")
    assert second["start_step"] == 3 and second["steps"] == 5
    assert [h["step"] for h in second["history"]] == [1, 2, 3, 4, 5]
    assert second["history"][3]["loss"] < first["history"][0]["loss"]

    # Base vs trained: accuracy by number of steps and by family on the held-out videos.
    cfg = load_config(None, [])
    base_eval = evaluate(cfg, None, str(qra))
    trained_eval = evaluate(cfg, str(out), str(qra), out_path=out / "eval.json")
    for result in (base_eval, trained_eval):
        assert result["n"] == 6 and set(result["by_steps"]) == {"1", "2", "3+"}
        assert set(result["by_family"]) == {"attribute", "relation", "temporal"}
        assert 0.0 <= result["accuracy"] <= 1.0 and len(result["predictions"]) == 6
    assert trained_eval["model"].startswith("adapter:")
    assert base_eval["predictions"][0]["scores"] != trained_eval["predictions"][0]["scores"]


def test_ray_train_zero3_lora_grad_accum_exports_a_whole_adapter(ray_session, toy, tmp_path, monkeypatch):
    """ZeRO-3 partitions the parameters: the exported adapter must still be whole (gathered), and gradient
    accumulation counts optimizer steps, not micro-batches; resume works from the per-rank ZeRO-3 states."""
    from safetensors.torch import load_file

    from step_ray.train.trainer import run_training

    monkeypatch.setenv("STEP_RAY_CACHE", str(tmp_path / "cache"))
    overrides = ["train.num_workers=2", "train.cpus_per_worker=0.5", "train.data.num_cpus=0.5", "train.progress=false",
                 "train.zero_stage=3", "train.batch_size=2", "train.grad_accum=2",
                 "train.log_every=1", "train.checkpoint_every=2", "train.warmup_steps=0", "train.lora.r=4"]
    out = tmp_path / "run3"
    first = run_training(load_config(None, overrides + ["train.steps=2"]), str(toy), out, name="z3")
    assert first["steps"] == 2 and [h["step"] for h in first["history"]] == [1, 2]
    # Two micro-batches (of up to 2 questions = 4 sequences) on each of 2 workers per optimizer step.
    assert first["micro_batches"] == 2 * 2 * 2
    assert 2 * 2 * 2 < first["samples_seen"] <= 4 * 2 * 2 * 2
    ds_files = {p.name for p in Path(first["checkpoint"], "ds").iterdir()}
    assert {"zero_pp_rank_0_mp_rank_00_model_states.pt", "zero_pp_rank_1_mp_rank_00_model_states.pt"} <= ds_files
    adapter = load_file(str(out / "adapter" / "adapter_model.safetensors"))
    assert adapter and all(v.numel() > 0 for v in adapter.values())
    assert {tuple(v.shape) for k, v in adapter.items() if "q_proj.lora_A" in k} == {(4, 128)}
    assert max(v.abs().max().item() for k, v in adapter.items() if "lora_B" in k) > 0
    second = run_training(load_config(None, overrides + ["train.steps=3"]), str(toy), out, name="z3")
    assert second["start_step"] == 2 and second["steps"] == 3


def test_training_with_no_decodable_video_fails_with_one_line_instead_of_looping(ray_session, toy, tmp_path,
                                                                                monkeypatch):
    """Every train row's video missing: each micro-batch is skipped on all ranks, which once looped forever.
    After two passes without one row to train on, the run stops with NothingUsable naming the cause."""
    import pyarrow as pa

    from step_ray.train.trainer import run_training
    from step_ray.utils.errors import NO_TRAINABLE_ROWS, NothingUsable

    monkeypatch.setenv("STEP_RAY_CACHE", str(tmp_path / "cache"))
    rows = [dict(r, video_uri=str(tmp_path / f"gone_{i}.mp4")) for i, r in enumerate(pq.read_table(toy).to_pylist())]
    qra = tmp_path / "qra"
    qra.mkdir()
    pq.write_table(pa.Table.from_pylist(rows), qra / "part-00000.parquet")
    overrides = ["train.num_workers=2", "train.cpus_per_worker=0.5", "train.data.num_cpus=0.5", "train.progress=false",
                 "train.batch_size=2", "train.steps=3", "train.max_failures=0", "train.lora.r=4"]
    with pytest.raises(NothingUsable) as caught:
        run_training(load_config(None, overrides), str(qra), tmp_path / "run", name="nothing")
    message = str(caught.value)
    assert message.startswith(NO_TRAINABLE_ROWS) and "\n" not in message
    assert "rows skipped, the last because:" in message and "gone_" in message


def _agree_at_rank(rank: int, port: int, out_dir: str) -> None:
    """One rank of a 2-process gloo group: micro-batches with a hole at a rank-specific place, a sync
    all-reduce (the gradient reduction) between them, as the training loop does."""
    import torch.distributed as dist

    from step_ray.train.loop import agreed_batches

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    fetched = []
    holes = {0: {2, 5}, 1: {4, 5}}[rank]

    def items():
        for i in range(100):
            fetched.append(i)
            yield (None if i in holes else {"i": torch.tensor([i])}, i)

    try:
        seen = []
        for (batch, i), usable, waited in agreed_batches(items(), torch.device("cpu")):
            assert waited >= 0
            seen.append((i, usable))
            if usable:
                grad = torch.tensor([float(i)])
                dist.all_reduce(grad)  # the gradient reduction: only when both ranks train
                assert grad.item() == 2 * i
            if len(seen) == 8:
                break
        Path(out_dir, f"{rank}.json").write_text(json.dumps({"seen": seen, "fetched": fetched}))
    finally:
        dist.destroy_process_group()


def test_ranks_agree_to_skip_a_micro_batch_one_ahead(tmp_path):
    """agreed_batches: every rank skips a micro-batch that any rank lacks, the agreement started one item ahead
    (an async all-reduce beside the loop's own collectives), and the item fetched ahead is never handed out."""
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_agree_at_rank, args=(port, str(tmp_path)), nprocs=2, join=True)
    for rank in (0, 1):
        result = json.loads((tmp_path / f"{rank}.json").read_text())
        assert result["seen"] == [[i, i not in (2, 4, 5)] for i in range(8)]
        assert result["fetched"] == list(range(9))  # one ahead of what was handed out
