"""``step-ray pretrain``: a base model that perceives, the laptop's stand-in for a pretrained Video-LLM.

STEP fine-tunes a Video-LLM that already sees: it answers simple questions about a frame and parses
semantics. A random-weight tiny model sees nothing, so a laptop run would measure noise. This step trains the
model of ``model`` (for 'tiny': from random weights) with full fine-tuning, vision tower included, on 1-step
perception questions of a synthetic corpus of its own, through the same pipeline every model goes through:

    synth (pretrain.videos, pretrain.seed)  ->  QRA of the ground-truth graphs (pretrain.families, 1 step)
        ->  Ray Train + DeepSpeed, full fine-tuning  ->  model/ (a Hugging Face folder + its card)
        ->  eval on its held-out videos, with black frames beside it (does it use its eyes?)

Outputs under the pretrain folder: ``corpus/``, ``qra/``, ``train/`` (checkpoints, and ``train/model/``: the
base), ``eval/`` (``held_out.json``, ``held_out_blank.json``) and ``pretrain.json`` (the summary; its presence with the same
settings key means done). With ``pretrain.output`` null the folder is in step-ray's cache, keyed by every
setting that shapes the base, so later runs (the demo's second run, the ablation's seeds) reuse it. The folder
may be an object-store prefix (``pretrain.output`` or ``--output`` ``s3://...``): everything is written there,
and whoever loads the base copies ``train/model/`` to its ``$TMPDIR``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from pathlib import Path
from typing import Any, Optional

from step_ray.config import FamilyWeights, StepRayConfig, to_dict
from step_ray.utils import storage

SUMMARY = "pretrain.json"
MODEL_DIR = "train/model"  # where the trainer exports a full fine-tune


def pretrain_config(cfg: StepRayConfig) -> StepRayConfig:
    """The config tree of the pretraining run derived from ``cfg`` (its corpus, questions and training)."""
    pc = cfg.pretrain
    weights = FamilyWeights(**{f.name: (1.0 if f.name in pc.families else 0.0)
                               for f in dataclasses.fields(FamilyWeights)})
    qra = dataclasses.replace(
        cfg.qra, min_steps=1, max_steps=pc.max_steps, step_weights=[], samples_per_video=pc.samples_per_video,
        family_weights=weights, ops=list(pc.ops or cfg.qra.ops), test_fraction=pc.test_fraction, val_fraction=0.0,
        filter=dataclasses.replace(cfg.qra.filter, enabled=False))
    lora = dataclasses.replace(cfg.train.lora, enabled=False, train_vision=True)
    train = dataclasses.replace(
        cfg.train, steps=pc.steps, batch_size=pc.batch_size, lr=pc.lr, rationale_weight=pc.rationale_weight,
        loss_format="multitask", lora=lora, init=None, warmup_steps=min(cfg.train.warmup_steps, pc.steps),
        checkpoint_every=max(1, min(cfg.train.checkpoint_every, pc.steps)))
    synth = dataclasses.replace(cfg.synth, videos=pc.videos, seed=pc.seed)
    return dataclasses.replace(cfg, synth=synth, qra=qra, train=train,
                               semantics=dataclasses.replace(cfg.semantics, enabled=False))


def pretrain_key(cfg: StepRayConfig) -> str:
    """A content key of every setting that shapes the base (the derived tree, less where it is written)."""
    import transformers

    from step_ray.models import tiny

    derived = to_dict(pretrain_config(cfg))
    for section in ("ray", "eval", "ablation", "stsg", "perception", "semantics"):
        derived.pop(section, None)
    derived["run"] = {"seed": cfg.run.seed}
    derived["pretrain"].pop("enabled", None)
    derived["pretrain"].pop("output", None)
    for field in ("progress", "log_every", "checkpoint_every", "keep_checkpoints", "tensorboard", "mlflow"):
        derived["train"].pop(field, None)  # how the run is watched and kept, not what it learns
    derived["train"].get("data", {}).pop("cache_max_fraction", None)  # how the stream is kept, likewise
    derived["versions"] = {"transformers": transformers.__version__,
                           "tiny": hashlib.sha256(Path(tiny.__file__).read_bytes()).hexdigest()[:16]}
    return hashlib.sha256(json.dumps(derived, sort_keys=True, default=str).encode()).hexdigest()[:16]


def pretrain_dir(cfg: StepRayConfig) -> str:
    """Where the base of ``cfg`` is (or will be) kept: a local folder or an object-store URI."""
    if cfg.pretrain.output:
        return storage.folder(cfg.pretrain.output)
    from step_ray.utils.env import cache_dir

    return str(cache_dir() / "pretrained" / f"base-{pretrain_key(cfg)}")


def finished(out: str | Path, key: str) -> Optional[dict[str, Any]]:
    """The summary of a finished pretraining in ``out`` with settings ``key``, else None."""
    out = storage.folder(out)
    path, model_dir = storage.join(out, SUMMARY), storage.join(out, MODEL_DIR)
    if not storage.exists(path) or not storage.exists(storage.join(model_dir, "config.json")):
        return None
    summary = json.loads(storage.read_text(path))
    # The folder may have moved since (a copied cache): the model is where the folder is now.
    if not storage.is_remote(model_dir):
        model_dir = str(Path(model_dir).resolve())
    return {**summary, "model_dir": model_dir} if summary.get("key") == key else None


def pretrain_step(cfg: StepRayConfig, out_dir: Optional[str | Path] = None, use_ray: bool = True) -> dict[str, Any]:
    """Pretrain (or reuse) the base; returns the summary with ``model_dir``, the folder to load."""
    from step_ray.pipeline import steps

    key = pretrain_key(cfg)
    out = storage.folder(out_dir) if out_dir is not None else pretrain_dir(cfg)
    done = finished(out, key)
    if done is not None:
        return {**done, "reused": True}
    pcfg = pretrain_config(cfg)
    if not storage.is_remote(out):
        Path(out).mkdir(parents=True, exist_ok=True)
    qra_dir = storage.join(out, "qra")
    started = time.perf_counter()
    seconds: dict[str, float] = {}

    def timed(name: str, fn, *args, **kwargs):
        t = time.perf_counter()
        result = fn(*args, **kwargs)
        seconds[name] = round(time.perf_counter() - t, 1)
        return result

    synth = timed("synth", steps.synth_step, pcfg, storage.join(out, "corpus"))
    qra = timed("qra", steps.qra_step, pcfg, [synth["gt_dir"]], qra_dir, use_ray=use_ray)
    if not qra["samples"]:
        raise RuntimeError(f"the perception corpus gave no questions; see {storage.join(qra_dir, 'stats.json')}")
    train = timed("train", steps.train_step, pcfg, qra_dir, storage.join(out, "train"), card_kind="pretrain")
    model_dir = train["model_dir"] if storage.is_remote(train["model_dir"]) else str(Path(train["model_dir"]).resolve())
    evals = {}
    held_out = steps.has_split(qra_dir, "test")
    if held_out:  # the held-out questions and their vision controls, in one run of the eval pool
        names = {("held_out" if v == "real" else f"held_out_{v}"): v for v in ["real", *pcfg.eval.vision_controls]}
        evals = timed("eval", steps.eval_files, pcfg, qra_dir, model_dir, storage.join(out, "eval"), names,
                      use_ray=use_ray)
    summary = {
        "key": key,
        "model_dir": model_dir,
        "videos": synth["videos"],
        "questions": qra["samples"],
        "by_split": qra["by_split"],
        "train_steps": train["steps"],
        "final_loss": train["final_loss"],
        "accuracy": {name: {k: r.get(k) for k in ("accuracy", "low", "high", "n", "chance")}
                     for name, r in evals.items()},
        "note": None if held_out else "no held-out video (raise pretrain.videos or pretrain.test_fraction): "
                                      "not measured how well the base perceives",
        "seconds": {**seconds, "total": round(time.perf_counter() - started, 1)},
        "reused": False,
    }
    steps.write_json(storage.join(out, SUMMARY), summary)
    return summary
