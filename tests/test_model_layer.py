"""The model layer: one tokenisation, option scoring as the summed log-probability under the trained prompt,
joint models answering after their rationale, frames at the question's moments, model sources, controls."""

from __future__ import annotations

import os

os.environ.setdefault("DS_ACCELERATOR", "cpu")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from step_ray.config import ModelConfig, load_config
from step_ray.models.card import ModelCard, read_card, write_card
from step_ray.models.encoding import encode_question, option_sequences, row_sequences
from step_ray.models.inputs import FrameCache, frames_for_row, shuffled_sources
from step_ray.models.prompts import (
    TASK_ANSWER, TASK_JOINT, TASK_RATIONALE, PromptFormat, end_of_turn_id, prompt_text, target_ids,
)
from step_ray.models.runtime import VideoLLM, load_video_llm, split_joint
from step_ray.models.sources import ModelSourceError, resolve_model
from step_ray.train.toy import make_toy_qra
from step_ray.video.frames import question_times, read_frames

import pyarrow.parquet as pq


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    return make_toy_qra(tmp_path_factory.mktemp("toy_models"), videos=4, seed=2)


@pytest.fixture(scope="module")
def rows(toy):
    return pq.read_table(toy).to_pylist()


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    from step_ray.models.tiny import save_tiny

    return save_tiny(ModelConfig(), tmp_path_factory.mktemp("m") / "base", seed=0)


@pytest.fixture(scope="module")
def llm(tiny_dir):
    cfg = load_config(None, [f"model.name_or_path={tiny_dir}"])
    return load_video_llm(cfg)


# --------------------------------------------------------------------------------------------- tokenisation


def test_answer_rationale_and_options_share_one_tokenisation(rows, llm):
    """The answer target's tokens are the tokens the rationale ("So the answer is X.") and the options line use:
    a rationale can only teach the answer it spells the same way (defect 2 of issue 9)."""
    tok = llm.tokenizer
    for row in rows:
        answer = target_ids(tok, row["answer"])
        rationale = target_ids(tok, " ".join(row["rationale"]))
        assert _contains(rationale, answer), (row["answer"], tok.convert_ids_to_tokens(rationale))
        prompt = tok(prompt_text(llm.processor, TASK_ANSWER, row["question"], row["options"], PromptFormat()),
                     add_special_tokens=False)["input_ids"]
        assert _contains(prompt, answer)
    # Bare "green" is pieces; the target is the word as it stands in running text.
    assert tok("green", add_special_tokens=False)["input_ids"] != target_ids(tok, "green")
    assert len(target_ids(tok, "green")) == 1


def _contains(seq: list[int], sub: list[int]) -> bool:
    return any(seq[i:i + len(sub)] == sub for i in range(len(seq) - len(sub) + 1))


def test_training_targets_use_the_scoring_tokenisation(rows, llm):
    row = rows[0]
    frames = frames_for_row(row, llm.model_cfg)
    seqs = row_sequences(row, frames, llm.processor, llm.model_cfg, 1.0)
    eot = end_of_turn_id(llm.tokenizer)
    answer = seqs[0]["labels"][seqs[0]["labels"] != -100].tolist()
    assert answer == target_ids(llm.tokenizer, row["answer"]) + [eot]
    prompt = encode_question(llm.processor, llm.model_cfg, llm.fmt, TASK_ANSWER, row, frames)
    scored = option_sequences(prompt, [row["answer"]], llm.tokenizer)[0]
    assert scored["labels"][scored["labels"] != -100].tolist() == answer  # what is trained is what is scored
    assert seqs[1]["task"].item() == TASK_RATIONALE


# --------------------------------------------------------------------------------------------- scoring


def test_option_score_is_the_summed_log_probability_with_end_of_turn(rows, llm):
    """By hand, unbatched: log-softmax at the positions that predict the option's tokens and then <|im_end|>,
    summed (defect 3: a mean favours options of more tokens, and without the end-of-turn token "red" scores as
    a prefix of "red circle")."""
    row = rows[1]
    frames = frames_for_row(row, llm.model_cfg)
    (scores,) = llm.score_options([row], [frames])
    prompt = encode_question(llm.processor, llm.model_cfg, llm.fmt, TASK_ANSWER, row, frames)
    n_prompt = prompt["input_ids"].shape[1]
    eot = end_of_turn_id(llm.tokenizer)
    for option, score in zip(row["options"], scores):
        target = target_ids(llm.tokenizer, option) + [eot]
        ids = torch.cat([prompt["input_ids"], torch.tensor([target])], dim=1)
        inputs = dict(prompt, input_ids=ids, attention_mask=torch.ones_like(ids),
                      mm_token_type_ids=torch.cat([prompt["mm_token_type_ids"],
                                                   torch.zeros(1, len(target), dtype=torch.long)], dim=1))
        with torch.no_grad():
            logp = torch.log_softmax(llm.model(**inputs).logits[0].float(), -1)
        want = sum(logp[n_prompt - 1 + j, t].item() for j, t in enumerate(target))
        assert score == pytest.approx(want, abs=1e-3)
    # The batch size does not change a score.
    (again,) = llm.score_options([row], [frames])
    pair = llm.score_options([rows[0], row], [frames_for_row(rows[0], llm.model_cfg), frames])
    assert pair[1] == pytest.approx(again, abs=1e-3)


def test_the_card_decides_the_prompt_and_a_joint_model_answers_after_its_rationale(tiny_dir, rows, tmp_path):
    """A model is asked the way its card says it was trained: options shown or not, and a joint model scores
    the options after ``<its generated rationale>\\nAnswer:`` (defect 1)."""
    import shutil

    model_dir = tmp_path / "joint_model"
    shutil.copytree(tiny_dir, model_dir)
    fmt = PromptFormat(style="compact", options=False)
    write_card(model_dir, ModelCard(prompt=fmt, loss_format="joint", frames=2, frame_size=112))
    assert read_card(model_dir).loss_format == "joint"
    cfg = load_config(None, ["model.prompt=chat", "model.options_in_prompt=true"])  # the card overrides these
    llm = load_video_llm(cfg, str(model_dir), max_new_tokens=12)
    assert llm.answer_format == "joint" and llm.fmt == fmt
    row = rows[2]
    frames = frames_for_row(row, llm.model_cfg)
    text = prompt_text(llm.processor, TASK_JOINT, row["question"], row["options"], fmt)
    assert "Options:" not in text and "You are a helpful assistant" not in text and "[explain]" in text
    (generated,) = llm.generate([row], [frames], TASK_JOINT)
    rationale = split_joint(generated)[0]
    (scores,) = llm.score_options([row], [frames])
    prefix = llm.tokenizer(rationale + "\nAnswer:", add_special_tokens=False)["input_ids"]
    prompt = encode_question(llm.processor, llm.model_cfg, fmt, TASK_JOINT, row, frames)
    by_hand = llm._sequence_logprob(option_sequences(prompt, row["options"], llm.tokenizer, prefix))
    assert scores == pytest.approx(by_hand, abs=1e-3)
    # The prefix is context, not scored.
    seq = option_sequences(prompt, [row["options"][0]], llm.tokenizer, prefix)[0]
    assert int((seq["labels"] != -100).sum()) == len(target_ids(llm.tokenizer, row["options"][0])) + 1


def test_split_joint():
    assert split_joint(" The red square is left.\nAnswer: red") == (" The red square is left.", "red")
    assert split_joint("no mark at all") == ("no mark at all", "")
    assert split_joint("x Answer: blue") == ("x", "blue")


# --------------------------------------------------------------------------------------------- frames


def test_question_times_give_each_moment_a_slot_in_order():
    assert question_times([2.0, 1.0], 4, group=2) == [1.0, 1.0, 2.0, 2.0]
    assert question_times([1.0], 4, group=2) == [1.0] * 4
    assert question_times([1.0, 2.0, 3.0], 4, group=2) == [1.0, 1.0, 3.0, 3.0]  # thinned: first and last kept
    assert question_times([1.0, 2.0, 3.0], 6, group=2) == [1.0, 1.0, 2.0, 2.0, 3.0, 3.0]
    assert question_times([1.0, 2.0], 3, group=1) == [1.0, 1.0, 2.0]
    assert question_times([], 4) is None and question_times(None, 4) is None


def test_frames_come_from_the_named_moments(rows):
    """A question naming 0.3 s gets the frames shown at 0.3 s, not a spread over its span."""
    row = dict(rows[0], times=[0.3])
    cfg = ModelConfig()
    frames = frames_for_row(row, cfg)
    exact = read_frames(row["video_uri"], None, None, 2, cfg.frame_size, times=[0.3, 0.3])
    assert np.array_equal(frames, exact) and np.array_equal(frames[0], frames[1])
    spread = frames_for_row(dict(rows[0], times=[]), cfg)
    late = read_frames(row["video_uri"], None, None, 2, cfg.frame_size, times=[1.8, 1.8])
    assert not np.array_equal(exact[0], late[0])  # the clip moves: other moments, other frames
    assert spread.shape == frames.shape
    cache = FrameCache(1 << 24)
    assert np.array_equal(cache.get(row, cfg), frames) and np.array_equal(cache.get(row, cfg), frames)
    assert (cache.hits, cache.misses) == (1, 1)


def test_vision_controls(rows):
    cfg = ModelConfig()
    blank = frames_for_row(rows[0], cfg, "blank")
    assert blank.shape == frames_for_row(rows[0], cfg).shape and not blank.any()
    others = shuffled_sources(rows, seed=0)
    assert all(o is not None and o != r["video_uri"] for o, r in zip(others, rows))
    assert shuffled_sources(rows, seed=0) == others  # deterministic
    assert shuffled_sources(rows[:1], seed=0) == [None]


# --------------------------------------------------------------------------------------------- sources


def test_model_sources(tiny_dir, tmp_path):
    run = tmp_path / "run"
    (run / "adapter").mkdir(parents=True)
    (run / "adapter" / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": "elsewhere"}))
    import shutil

    shutil.copytree(tiny_dir, run / "base")
    write_card(run / "adapter", ModelCard(loss_format="multitask"))
    r = resolve_model(str(run))
    assert (r.base, r.adapter, r.card.loss_format) == (str(run / "base"), str(run / "adapter"), "multitask")
    assert resolve_model(str(run / "adapter")).base == str(run / "base")
    assert resolve_model(str(tiny_dir)).base == str(tiny_dir) and resolve_model(str(tiny_dir)).card is None
    assert resolve_model(None).description == "base:tiny"
    assert resolve_model("Qwen/Qwen2.5-VL-7B-Instruct").description.startswith("hub:")
    with pytest.raises(ModelSourceError):
        resolve_model(str(tmp_path / "nothing"))


def test_model_sources_on_an_object_store(s3_server, tiny_dir, tmp_path, monkeypatch):
    """A model folder, a training output and an adapter naming an object-store base, all under s3:// (moto): each
    resolves to a local copy under $TMPDIR/step-ray-remote/ (a training output's checkpoints left out, reused
    while the objects stay the same, a new copy once they change), with descriptions naming the bucket; the
    base of a config, its family and shape, and a train.init are read there too."""
    import pyarrow.fs as pafs

    from step_ray.models.families import checkpoint_model_type
    from step_ray.models.loading import resolve_base
    from step_ray.pipeline.steps import with_init
    from step_ray.utils import storage
    from step_ray.utils.memory import model_shape

    monkeypatch.setenv("TMPDIR", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", None)  # re-read $TMPDIR
    fs = pafs.S3FileSystem(endpoint_override=f"http://127.0.0.1:{s3_server}", allow_bucket_creation=True)
    fs.create_dir("models")
    storage.upload_dir(tiny_dir, "s3://models/merged")
    run = tmp_path / "run"
    (run / "adapter").mkdir(parents=True)
    (run / "adapter" / "adapter_config.json").write_text(
        json.dumps({"base_model_name_or_path": "s3://models/merged"}))
    write_card(run / "adapter", ModelCard(loss_format="joint"))
    (run / "checkpoints" / "c1").mkdir(parents=True)
    (run / "checkpoints" / "c1" / "state.json").write_text("{}")
    storage.upload_dir(run, "s3://models/run")

    merged = resolve_model("s3://models/merged/")
    assert merged.description == "model:s3://models/merged" and merged.adapter is None
    assert merged.base.startswith(str(tmp_path / "tmp" / "step-ray-remote")) and (Path(merged.base) / "config.json").is_file()
    assert resolve_model("s3://models/merged").base == merged.base  # the same objects: the same copy
    trained = resolve_model("s3://models/run")
    assert trained.description == "adapter:s3://models/run" and trained.card.loss_format == "joint"
    assert trained.base == merged.base  # the adapter's base, named in the bucket
    assert not (Path(trained.adapter).parent / "checkpoints").exists()
    assert resolve_model("s3://models/run/adapter").base == merged.base
    with pytest.raises(ModelSourceError, match="no model folder at s3://models/nothing"):
        resolve_model("s3://models/nothing")

    cfg = load_config(None, ["model.name_or_path=s3://models/merged"])
    assert resolve_base(cfg.model) == merged.base
    assert checkpoint_model_type("s3://models/merged") == json.loads((tiny_dir / "config.json").read_text())["model_type"]
    assert model_shape("s3://models/merged") == model_shape(str(tiny_dir))
    # train.init on an object store stays named there (every worker copies it), also into a bucket's output.
    init = load_config(None, ["train.init=s3://models/merged"])
    assert with_init(init, "s3://models/out").model.name_or_path == "s3://models/merged"

    with fs.open_output_stream("models/merged/extra.txt") as f:
        f.write(b"changed")
    changed = resolve_model("s3://models/merged").base
    assert changed != merged.base and (Path(changed) / "extra.txt").read_text() == "changed"


def test_merged_export_carries_the_card(tiny_dir, tmp_path):
    """An adapter merged into its base is one from_pretrained folder that keeps the adapter's card."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForImageTextToText

    from step_ray.models.export import materialize
    from step_ray.models.families import FAMILIES

    base = AutoModelForImageTextToText.from_pretrained(tiny_dir)
    peft_model = get_peft_model(base, LoraConfig(r=2, target_modules=FAMILIES["qwen2_5_vl"].lora_target_regex(["q_proj"])))
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    peft_model.save_pretrained(tmp_path / "run" / "adapter")
    import shutil

    shutil.copytree(tiny_dir, tmp_path / "run" / "base")
    write_card(tmp_path / "run" / "adapter", ModelCard(loss_format="joint"))
    folder = materialize(ModelConfig(), str(tmp_path / "run"), tmp_path / "merged")
    assert read_card(folder).loss_format == "joint" and read_card(folder).kind == "merged"
    assert materialize(ModelConfig(), folder, tmp_path / "unused") == folder  # a full folder is used as it is
    cfg = load_config(None, [])
    merged = load_video_llm(cfg, folder)
    adapted = load_video_llm(cfg, str(tmp_path / "run"))
    ids = torch.tensor([[1, 2, 3, 4]])
    with torch.no_grad():
        a = merged.model.model.language_model(input_ids=ids).last_hidden_state
        b = adapted.model.base_model.model.model.language_model(input_ids=ids).last_hidden_state
    assert torch.allclose(a, b, atol=1e-4)
    assert isinstance(merged, VideoLLM) and dataclasses.is_dataclass(merged.card)
