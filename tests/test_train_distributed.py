"""Distributed training on a local Ray (2 CPUs, 2 logical GPUs): a worker killed mid-run and the run recovering
from its latest checkpoint; the export round trip (adapter and merged model, same logits); every model
family's tiny config through a short training run; the joint format with full fine-tuning."""

from __future__ import annotations

import json
import os

os.environ.setdefault("DS_ACCELERATOR", "cpu")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import signal
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from step_ray.config import load_config
from step_ray.train.toy import make_toy_qra

# A 2-CPU Ray: two 0.5-CPU trainers and one 0.5-CPU decode/encode actor (see step_ray/train/stream.py).
BASE = ["train.num_workers=2", "train.cpus_per_worker=0.5", "train.data.num_cpus=0.5", "train.log_every=1",
        "train.warmup_steps=0", "train.lr=5e-3", "train.progress=false"]


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    return make_toy_qra(tmp_path_factory.mktemp("toy_dist"), videos=8, seed=1)


def _train_worker_pids() -> list[int]:
    from ray.util.state import list_actors

    actors = list_actors(filters=[("class_name", "=", "RayTrainWorker"), ("state", "=", "ALIVE")], detail=True)
    return [int(a.pid) for a in actors if a.pid]


def _committed_checkpoints(storage: Path) -> int:
    """How many checkpoints Ray Train's controller has registered in the run's storage folder.

    A checkpoint folder appears as soon as a worker has uploaded it, but the checkpoint is committed (and so
    restorable after a failure) only once the controller has taken the report off the worker's queue and
    written its snapshot. The workers report metrics at most once per poll interval, so two folders in a row
    can both still be in flight: count what the snapshot lists instead."""
    import json

    from step_ray.train.trainer import CHECKPOINT_SNAPSHOT

    snapshot = storage / CHECKPOINT_SNAPSHOT
    try:
        state = json.loads(snapshot.read_text())
    except (OSError, ValueError):  # not written yet, or caught mid-write
        return 0
    return len(state.get("checkpoint_results") or [])


def test_killed_worker_recovers_from_the_latest_checkpoint(ray_session, toy, tmp_path, monkeypatch):
    """SIGKILL one training worker after the first checkpoint: Ray Train restarts the group
    (FailureConfig.max_failures), every rank restores the checkpoint, and the run ends at the right step."""
    from step_ray.train.trainer import run_training

    monkeypatch.setenv("STEP_RAY_CACHE", str(tmp_path / "cache"))
    cfg = load_config(None, BASE + ["train.steps=8", "train.checkpoint_every=2", "train.keep_checkpoints=2",
                                    "train.max_failures=1", "train.batch_size=2", "train.lora.r=4"])
    out = tmp_path / "run"
    storage = out / "checkpoints" / "killed"
    result: dict = {}

    def train():
        try:
            result["summary"] = run_training(cfg, toy, out, name="killed")
        except BaseException as err:  # noqa: BLE001 - re-raised in the test thread
            result["error"] = err

    thread = threading.Thread(target=train, daemon=True)
    thread.start()
    killed = None
    deadline = time.time() + 300
    while thread.is_alive() and time.time() < deadline:
        # Kill once a checkpoint is committed and training has gone on past it.
        folders = sum(p.name.startswith("checkpoint_") for p in storage.iterdir()) if storage.is_dir() else 0
        if _committed_checkpoints(storage) >= 1 and folders >= 2:
            pids = _train_worker_pids()
            if pids:
                killed = pids[-1]
                os.kill(killed, signal.SIGKILL)
                break
        time.sleep(0.2)
    thread.join(timeout=600)
    assert not thread.is_alive(), "training did not finish"
    if "error" in result:
        raise result["error"]
    assert killed is not None, "no checkpoint appeared while the run was alive: nothing was killed"
    summary = result["summary"]
    assert summary["steps"] == 8 and summary["restores"] >= 1
    steps = [h["step"] for h in summary["history"]]
    assert steps == list(range(1, 9))  # restored history + the steps after the restart, each once
    # The restarted workers' stream began at the restored checkpoint's position, not at 0 again (the dataset
    # restarts from where the driver started it; positions the checkpoint covers are dropped).
    resumes = summary["resumes"]
    assert len(resumes) >= 2 and resumes[0][:2] == [0, 0], resumes
    assert all(step > 0 and position > 0 and first >= position for step, position, first in resumes[1:]), resumes
    kept = {p.name for p in storage.iterdir() if p.name.startswith("checkpoint_") and p.is_dir()}
    # The last N (2) that Ray Train registered, and nothing else: the folders the killed attempt uploaded but
    # never got registered (zero to two, by timing) were removed after the run.
    from step_ray.train.trainer import CHECKPOINT_SNAPSHOT

    snapshot = json.loads((storage / CHECKPOINT_SNAPSHOT).read_text())
    assert kept == {c["checkpoint_dir_name"] for c in snapshot["checkpoint_results"]}, kept
    assert Path(summary["checkpoint"]).name in kept and len(kept) == 2
    assert not kept & set(summary["orphan_checkpoints_removed"])


def test_unregistered_checkpoint_folders_are_removed_and_nothing_else(tmp_path):
    """A failed attempt's uploaded-but-unregistered folders go; registered ones and other files stay; without a
    snapshot that lists the final checkpoint nothing is touched."""
    from ray.train import Checkpoint

    from step_ray.train.trainer import CHECKPOINT_SNAPSHOT, remove_unregistered_checkpoints

    names = ["checkpoint_2026-01-01_00-00-01.0", "checkpoint_2026-01-01_00-00-02.0", "checkpoint_2026-01-01_00-00-03.0"]
    for name in names:
        (tmp_path / name).mkdir()
        (tmp_path / name / "state.json").write_text("{}")
    (tmp_path / "notes").mkdir()  # not a checkpoint folder: never touched
    final = Checkpoint.from_directory(str(tmp_path / names[2]))

    assert remove_unregistered_checkpoints(final) == []  # no snapshot: nothing is deleted
    snapshot = tmp_path / CHECKPOINT_SNAPSHOT
    snapshot.write_text(json.dumps({"checkpoint_results": [{"checkpoint_dir_name": names[0]}]}))
    assert remove_unregistered_checkpoints(final) == []  # the snapshot does not list the final one
    snapshot.write_text(json.dumps({"checkpoint_results": [{"checkpoint_dir_name": n} for n in (names[0], names[2])]}))
    assert remove_unregistered_checkpoints(final) == [names[1]]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([names[0], names[2], "notes", CHECKPOINT_SNAPSHOT])


def test_export_round_trip_adapter_and_merged_logits(ray_session, toy, tmp_path, monkeypatch):
    """ZeRO-3 + LoRA: the gathered adapter loads with PeftModel.from_pretrained, and the merged model loaded
    with from_pretrained gives the logits of base + adapter."""
    from peft import PeftModel
    from safetensors.torch import load_file
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from step_ray.train.data import RowEncoder
    from step_ray.train.trainer import run_training

    monkeypatch.setenv("STEP_RAY_CACHE", str(tmp_path / "cache"))
    cfg = load_config(None, BASE + ["train.zero_stage=3", "train.steps=2", "train.checkpoint_every=2",
                                    "train.batch_size=2", "train.lora.r=4", "train.lr=2e-2"])
    out = tmp_path / "run"
    summary = run_training(cfg, toy, out, name="export", merged=True)
    adapter = load_file(str(out / "adapter" / "adapter_model.safetensors"))
    assert adapter and all(v.numel() > 0 for v in adapter.values())
    assert max(v.abs().max().item() for k, v in adapter.items() if "lora_B" in k) > 0
    for h in summary["history"]:
        assert {"loss_answer", "loss_rationale", "lr", "tokens_per_s", "samples_per_s"} <= set(h)
        assert h["tokens_per_s"] > h["samples_per_s"] > 0

    base = AutoModelForImageTextToText.from_pretrained(out / "base", dtype=torch.float32).eval()
    tuned = PeftModel.from_pretrained(base, str(out / "adapter")).eval()
    merged = AutoModelForImageTextToText.from_pretrained(out / "merged", dtype=torch.float32).eval()
    processor = AutoProcessor.from_pretrained(out / "merged")
    import pyarrow.parquet as pq

    rows = [r for r in pq.read_table(toy).to_pylist() if r["split"] == "test"][:2]
    batch = RowEncoder(processor, cfg.model, 1.0)(rows)
    inputs = {k: v for k, v in batch.items() if k not in ("labels", "task", "label_task")}
    with torch.no_grad():
        with_adapter = tuned(**inputs).logits
        from_merged = merged(**inputs).logits
        with tuned.disable_adapter():
            plain = tuned(**inputs).logits
    assert torch.allclose(with_adapter, from_merged, atol=1e-4)
    assert not torch.allclose(with_adapter, plain, atol=1e-4)  # the adapter changed something


@pytest.mark.parametrize("family, extra", [
    # Qwen2-VL: the joint format, full fine-tuning (no LoRA), gradient checkpointing, ZeRO-2, accumulation.
    ("qwen2_vl", ["train.zero_stage=2", "train.loss_format=joint", "train.lora.enabled=false", "train.lr=1e-3",
                  "train.gradient_checkpointing=true", "train.grad_accum=2"]),
    # LLaVA-OneVision (SigLIP + Qwen2, a non-Qwen-VL family): multitask, LoRA, ZeRO-3, bf16 on the CPU.
    ("llava_onevision", ["train.zero_stage=3", "train.lora.r=4", "train.precision=bf16"]),
])
def test_model_family_tiny_config_trains(ray_session, toy, tmp_path, monkeypatch, family, extra):
    """Each non-default family's tiny config through two optimizer steps on 2 workers; both loss terms logged;
    the export loads with the stock transformers / peft classes."""
    from peft import PeftModel
    from transformers import AutoModelForImageTextToText

    from step_ray.train.trainer import run_training

    monkeypatch.setenv("STEP_RAY_CACHE", str(tmp_path / "cache"))
    cfg = load_config(None, BASE + extra + [f"model.family={family}", "train.steps=2", "train.checkpoint_every=2",
                                            "train.batch_size=2"])
    out = tmp_path / family
    summary = run_training(cfg, toy, out, name=family)
    assert summary["steps"] == 2 and summary["family"] == family
    for h in summary["history"]:
        assert np.isfinite(h["loss"]) and h["loss_answer"] > 0 and h["loss_rationale"] > 0
        assert h["loss"] == pytest.approx(h["loss_answer"] + h["loss_rationale"], rel=1e-5)
    accum = cfg.train.grad_accum
    assert summary["micro_batches"] == 2 * accum * 2  # steps x accumulation x workers
    if cfg.train.lora.enabled:
        base = AutoModelForImageTextToText.from_pretrained(out / "base")
        assert base.config.model_type == family
        assert isinstance(PeftModel.from_pretrained(base, str(out / "adapter")), PeftModel)
    else:
        assert summary["loss_format"] == "joint"
        model = AutoModelForImageTextToText.from_pretrained(Path(summary["model_dir"]))
        assert model.config.model_type == family
