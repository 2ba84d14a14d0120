"""Launch a training run on Ray Train (``TorchTrainer`` + DeepSpeed) and export what it produced.

``run_training`` is called on the driver of an already running Ray (the caller owns ``ray.init`` /
``ray.shutdown``: one Ray per session). It first runs :func:`preflight` (incompatible options fail here, naming
the option, before any worker starts), then fits a ``TorchTrainer`` fed by the Ray Data stream of
:mod:`step_ray.train.stream`. The same ``RunConfig(name, storage_path)`` on a second call resumes the run from
its latest checkpoint and continues at the saved step; within a run, ``FailureConfig(max_failures)`` restarts
the worker group after a worker dies, and every rank restores the latest checkpoint.

Outputs in ``out_dir`` (a local folder, or an object-store prefix such as ``s3://bucket/run``):

* ``adapter/`` - the peft adapter of the final checkpoint (``PeftModel.from_pretrained(base, out_dir/adapter)``),
  or ``model/`` - the full model when LoRA is off;
* ``base/``    - the base model + processor the adapter applies to (a copy of the tiny build, or a symlink to a
  local checkpoint directory; nothing for a hub id, whose name is in the summary);
* ``merged/``  - with ``merged=True``, base + adapter merged into one ``from_pretrained`` directory;
* ``step_ray_model.json`` in ``adapter/`` / ``model/`` / ``merged/`` - the model card: the prompt and loss
  format the model was trained with (:mod:`step_ray.models.card`), which evaluation follows;
* ``train_summary.json`` - the summary dict returned;
* ``tensorboard/`` - the reported metrics as TensorBoard scalars (``train.tensorboard``);
* ``checkpoints/`` - Ray Train's run folder (``step-ray-train/checkpoint_*``), unless ``storage_path`` says
  otherwise.

The reported metrics also go to MLflow when ``train.mlflow.tracking_uri`` is set (:mod:`step_ray.train.tracking`).

On an object store, Ray Train writes the checkpoints there itself (pyarrow's S3 / GCS filesystem, the endpoint
resolved on the driver) and a re-run resumes from the latest one there; the rest is written into a local
staging folder on the driver (under ``$TMPDIR``) and uploaded when the run ends: the exports and the summary
only when it succeeds, the TensorBoard files also when it fails or is interrupted. ``base/`` is uploaded when
it is a copy (the tiny model); a local model folder is named by its path (in the adapter's config and the
summary), not copied into the bucket. ``train.init`` must then be a model folder, not an adapter: its merge
would need a local output folder.

Ctrl-C (SIGINT) raises ``KeyboardInterrupt`` here as anywhere else in step-ray: the workers stop with the driver,
the checkpoints already reported stay, and the same call resumes from the latest one. (``fit()`` runs in a
helper thread for that: in the main thread Ray Train installs its own SIGINT handler, which aborts the run and
exits the process with code 1 and no message.)
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import threading
import time
from pathlib import Path
from typing import Any, Optional

from step_ray.config import StepRayConfig, to_dict
from step_ray.train.loop import ADAPTER_DIR, MODEL_DIR, STATE_FILE, model_fingerprint, train_loop_per_worker
from step_ray.utils.errors import NothingUsable

logger = logging.getLogger(__name__)

DEFAULT_RUN_NAME = "step-ray-train"


def preflight(cfg: StepRayConfig, qra_path: str | Path) -> Optional[dict]:
    """Everything that can be checked before a worker starts; the user's DeepSpeed JSON (or None).

    Raises :class:`~step_ray.config.ConfigError` naming the option: an unknown model family, LoRA targets the
    model lacks, an unreadable DeepSpeed JSON, more CPUs/GPUs than a fixed-size Ray has, fewer train rows
    than workers. (fp16 on CPU and offload without ZeRO are caught by the config's own validation.)
    """
    import ray

    from step_ray.models.families import family_of
    from step_ray.train.deepspeed_config import load_user_config
    from step_ray.train.stream import check_resources, train_rows

    family_of(cfg.model)
    if cfg.train.lora.enabled:
        check_lora_targets(cfg)
    user_ds = load_user_config(cfg.train.deepspeed_config) if cfg.train.deepspeed_config else None
    if not cluster_autoscales(cfg):
        check_resources(cfg, ray.cluster_resources())
    rows = train_rows(qra_path)
    if rows < cfg.train.num_workers:
        raise ValueError(f"{qra_path}: {rows} train rows, fewer than train.num_workers={cfg.train.num_workers}")
    return user_ds


def cluster_autoscales(cfg: StepRayConfig) -> bool:
    """Whether this driver joined a cluster (which may add nodes) rather than an embedded, fixed-size Ray."""
    return bool(os.environ.get("RAY_ADDRESS")) or cfg.ray.address not in (None, "local")


def check_lora_targets(cfg: StepRayConfig) -> None:
    """Fail (naming ``train.lora.target_modules``) when a LoRA target is not a projection of the model's
    language model. The model is built on the meta device: no weights are read or allocated."""
    from step_ray.config import ConfigError
    from step_ray.models.families import language_module_names

    skeleton = model_skeleton(cfg)
    have = language_module_names(skeleton)
    missing = sorted(set(cfg.train.lora.target_modules) - have)
    if missing:
        raise ConfigError("train.lora.target_modules",
                          f"{', '.join(missing)} not in the language model of {cfg.model.name_or_path!r} "
                          f"(it has: {', '.join(sorted(have))})")


def model_skeleton(cfg: StepRayConfig) -> Any:
    """The model's module tree on the meta device (from the tiny config or the checkpoint's config.json)."""
    import torch
    from transformers import AutoConfig, AutoModelForImageTextToText

    from step_ray.models.loading import resolve_base

    source = resolve_base(cfg.model, cfg.run.seed)  # (the tiny model's folder; an object store's local copy)
    config = AutoConfig.from_pretrained(source, trust_remote_code=cfg.model.trust_remote_code)
    with torch.device("meta"):
        return AutoModelForImageTextToText.from_config(config, trust_remote_code=cfg.model.trust_remote_code)


def worker_env(cfg: StepRayConfig) -> dict[str, str]:
    """Environment of the training workers (set before DeepSpeed is imported there)."""
    from step_ray.utils.env import worker_env as common_env

    env = common_env()  # the offline settings and caches every step-ray worker gets
    # Compiled DeepSpeed ops are cached here across runs (20-60 s to build the first time).
    env.setdefault("TORCH_EXTENSIONS_DIR", str(Path.home() / ".cache" / "torch_extensions"))
    env["TOKENIZERS_PARALLELISM"] = "false"
    if not cfg.train.use_gpu:
        env["DS_ACCELERATOR"] = "cpu"  # per run: the driver's own setting says nothing about the workers
    for name in ("HF_HOME", "TRANSFORMERS_OFFLINE"):
        if os.environ.get(name):
            env[name] = os.environ[name]
    # Local runs import step_ray from the source tree: make it importable in the workers too.
    src = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (src, os.environ.get("PYTHONPATH", "")) if p)
    return env


def build_trainer(cfg: StepRayConfig, dataset: Any, name: str, storage_path: str,
                  user_ds: Optional[dict] = None, callbacks: Optional[list] = None,
                  storage_filesystem: Any = None, cache_blocks: Optional[list] = None) -> Any:
    """The ``TorchTrainer`` of this run (not started): checkpoints under ``storage_path/name`` (a path within
    the pyarrow ``storage_filesystem`` when given), the reports also to the tracking ``callbacks``;
    ``cache_blocks``: the encode cache the replayed stream points into (``build_stream``'s notes)."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    tc = cfg.train
    resources = {"CPU": tc.cpus_per_worker, **({"GPU": tc.gpus_per_worker} if tc.use_gpu else {})}
    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"cfg": to_dict(cfg), "ds": user_ds, "cache_blocks": cache_blocks},
        # Ray Train sets up the process group (gloo without GPUs, nccl with), which DeepSpeed then adopts.
        scaling_config=ScalingConfig(
            num_workers=tc.num_workers, use_gpu=tc.use_gpu, resources_per_worker=resources,
            accelerator_type=tc.accelerator_type,
        ),
        run_config=RunConfig(
            name=name,
            storage_path=storage_path,
            storage_filesystem=storage_filesystem,
            checkpoint_config=CheckpointConfig(num_to_keep=tc.keep_checkpoints),
            failure_config=FailureConfig(max_failures=tc.max_failures),
            worker_runtime_env={"env_vars": worker_env(cfg)},
            callbacks=callbacks or None,
        ),
        datasets={"train": dataset},
    )


def export_base(cfg: StepRayConfig, out_dir: Path, fingerprint: Optional[str]) -> Optional[Path]:
    """``out_dir/base``: the base model the adapter applies to (see the module docstring)."""
    from step_ray.models.loading import TINY, ensure_tiny

    target = out_dir / "base"
    if target.is_symlink() or target.is_file():
        target.unlink()
    elif target.exists():
        shutil.rmtree(target)
    if cfg.model.name_or_path == TINY:
        shutil.copytree(ensure_tiny(cfg.model, cfg.run.seed), target)
        if fingerprint is not None:
            check_fingerprint(cfg, target, fingerprint)
        return target
    source = Path(cfg.model.name_or_path)
    if source.is_dir():
        target.symlink_to(source.resolve(), target_is_directory=True)
        return target
    return None  # a hub id: the adapter's base_model_name_or_path names it


def check_fingerprint(cfg: StepRayConfig, base_dir: Path, expected: str) -> None:
    """Fail loudly if the exported base is not the one the workers trained on (it would make eval garbage)."""
    import torch

    from step_ray.models.loading import load_model_and_processor

    model, _ = load_model_and_processor(cfg.model, device="cpu", dtype=torch.float32, path=str(base_dir))
    got = model_fingerprint(model)
    if got != expected:
        raise RuntimeError(f"exported base {base_dir} has weights {got}, the workers trained on {expected}")


def point_adapter_at(adapter_dir: Path, base_dir: Path | str) -> None:
    """Make the exported adapter name the exported base (the workers wrote their cache path into it)."""
    config_file = adapter_dir / "adapter_config.json"
    config = json.loads(config_file.read_text())
    config["base_model_name_or_path"] = str(base_dir)
    config_file.write_text(json.dumps(config, indent=2, sort_keys=True))


def run_training(
    cfg: StepRayConfig,
    qra_path: str | Path,
    out_dir: str | Path,
    name: Optional[str] = None,
    storage_path: Optional[str] = None,
    merged: bool = False,
    card_kind: str = "train",
) -> dict[str, Any]:
    """Train ``cfg.model`` on the train split of ``qra_path`` with Ray Train + DeepSpeed; export; summarise.

    ``out_dir`` is a local folder or an object-store URI (``s3://bucket/run``). ``name`` / ``storage_path``
    are Ray Train's run name and storage (default: ``step-ray-train`` under ``out_dir/checkpoints``, on the
    object store too: Ray Train writes the checkpoints through a pyarrow filesystem); calling again with the
    same pair resumes from the latest checkpoint. With an object-store ``out_dir`` the exports, the summary and
    the TensorBoard files are written into a local staging folder and uploaded when the run ends
    (:func:`step_ray.utils.storage.staged_folder`). Ray must already be initialised. Returns the summary (also
    written to ``out_dir/train_summary.json``): the final step, the final losses, the logged history (for
    plots), times, and the checkpoint / adapter / base paths.
    """
    import ray

    from step_ray.train.tracking import MlflowRun, check_tracking
    from step_ray.utils import storage as store

    called = time.time()  # wall clock: compared with the workers' first_step_time
    if not ray.is_initialized():
        raise RuntimeError("run_training needs a running Ray: call ray.init() (or join a cluster) first")
    check_tracking(cfg)
    remote = store.is_remote(str(out_dir))
    out_uri = str(out_dir).rstrip("/") if remote else str(Path(out_dir).resolve())
    name = name or DEFAULT_RUN_NAME
    storage = str(Path(storage_path).resolve()) if storage_path and "://" not in storage_path else (
        storage_path or store.join(out_uri, "checkpoints"))
    # On an object store Ray Train gets the filesystem the driver resolved (its endpoint included; credentials
    # are not part of it: every node reads its own, as pyarrow does).
    storage_fs, storage_in_fs = store.filesystem(storage) if store.is_remote(storage) else (None, storage)

    if cfg.model.name_or_path == "tiny":
        from step_ray.models.loading import ensure_tiny

        ensure_tiny(cfg.model, cfg.run.seed)  # build once here, not concurrently in every worker

    from step_ray.train.stream import resume_position
    from step_ray.utils.env import show_progress

    if cfg.train.progress and not show_progress():  # no bar redraws in non-interactive logs
        cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, progress=False))
    user_ds = preflight(cfg, qra_path)
    # A re-run of the same run starts the data stream where its latest checkpoint left it (no replay).
    start = resume_position(storage_in_fs.rstrip("/") + "/" + name, storage_fs)
    tracker = MlflowRun.start(cfg, out_uri, name) if cfg.train.mlflow.tracking_uri else None
    try:
        with store.staged_folder(out_uri, logs=("tensorboard",)) as out:
            summary = _train_and_export(cfg, qra_path, out, out_uri, name, storage, storage_in_fs, storage_fs,
                                        user_ds, start, tracker, merged, card_kind, called)
    except BaseException as err:
        if tracker is not None:
            status = "KILLED" if isinstance(err, KeyboardInterrupt) else "FAILED"
            tracker.end(status, {"step_ray.error": repr(err)[:500]})
        raise
    if tracker is not None:
        tracker.end("FINISHED", {"step_ray.steps": str(summary["steps"])})
    return summary


def _train_and_export(cfg: StepRayConfig, qra_path: str | Path, out: Path, out_uri: str, name: str, storage: str,
                      storage_in_fs: str, storage_fs: Any, user_ds: Optional[dict], start: int, tracker: Any,
                      merged: bool, card_kind: str, called: float) -> dict[str, Any]:
    """Fit, export into the local folder ``out`` (the output itself, or its staging folder for ``out_uri``
    on an object store) and write the summary there; the summary names the paths at ``out_uri``."""
    from step_ray.train.stream import build_stream
    from step_ray.train.tracking import tracking_callbacks
    from step_ray.utils import storage as store

    staged = out_uri != str(out)
    at = (lambda p: store.join(out_uri, Path(p).relative_to(out).as_posix())) if staged else str
    started = time.perf_counter()
    callbacks = tracking_callbacks(str(out / "tensorboard") if cfg.train.tensorboard else None, tracker)
    stream_notes: dict[str, Any] = {}
    dataset = build_stream(cfg, qra_path, start=start, notes=stream_notes)
    trainer = build_trainer(cfg, dataset, name, storage_in_fs, user_ds, callbacks, storage_fs,
                            cache_blocks=stream_notes.pop("cache_blocks", None))
    try:
        result = fit_interruptible(trainer)
        if result.error is not None:
            raise result.error
    except Exception as err:  # noqa: BLE001 - only the workers' "nothing to train on" is translated
        raise_nothing_trainable(err)
        raise
    wall = time.perf_counter() - started
    checkpoint = result.checkpoint
    if checkpoint is None:
        raise RuntimeError(f"run {name} finished without a checkpoint")
    orphans = remove_unregistered_checkpoints(checkpoint)

    weights_name = ADAPTER_DIR if cfg.train.lora.enabled else MODEL_DIR
    with checkpoint.as_directory() as directory:
        state = json.loads((Path(directory) / STATE_FILE).read_text())
        weights = out / weights_name
        if weights.exists():
            shutil.rmtree(weights)
        shutil.copytree(Path(directory) / weights_name, weights)
    base = export_base(cfg, out, state.get("base_fingerprint"))
    # The base as the adapter names it: the exported copy where it will be read (the bucket for an object
    # store), or the local model folder that base/ links to (a link is not uploaded to an object store).
    base_ref = (str(base.resolve()) if staged and base.is_symlink() else at(base)) if base is not None else None
    if base is None and store.is_remote(cfg.model.name_or_path):
        # A base on an object store (a self-training round's merged model): the adapter names it there; the
        # merged export reads its local copy.
        from step_ray.models.loading import resolve_base

        base, base_ref = Path(resolve_base(cfg.model, cfg.run.seed)), cfg.model.name_or_path.rstrip("/")
    if base_ref is not None and cfg.train.lora.enabled:
        point_adapter_at(weights, base_ref)
    from step_ray.models.card import ModelCard, write_card

    # How the model was trained (prompt format, loss format, frames): evaluation asks it the same way.
    write_card(weights, ModelCard.of_training(cfg, kind=card_kind, base=cfg.model.name_or_path,
                                              steps=int(state["step"])))
    merged_dir = None
    if merged and cfg.train.lora.enabled and base is not None:
        from step_ray.models.export import merge_adapter

        merged_dir = merge_adapter(base, weights, out / "merged", cfg.model.trust_remote_code)

    from step_ray.models.families import family_of

    history = state.get("history", [])
    last = history[-1] if history else {}
    steps_run = int(state["step"]) - int(state.get("start_step", 0))
    this_call = [h for h in history if h.get("first_step_time") and h["first_step_time"] >= called]
    scheme = storage.split("://", 1)[0] + "://" if storage_fs is not None else ""
    summary = {
        "steps": int(state["step"]),
        "start_step": int(state.get("start_step", 0)),
        "final_loss": last.get("loss"),
        "final_loss_answer": last.get("loss_answer"),
        "final_loss_rationale": last.get("loss_rationale"),
        "history": history,
        "rows_seen": state.get("rows", 0),
        "samples_seen": state.get("samples", 0),
        "micro_batches": state.get("micro_batches", 0),
        "restores": state.get("restores", 0),
        "samples_per_s": _mean_after_first(history, "samples_per_s"),
        "tokens_per_s": _mean_after_first(history, "tokens_per_s"),
        "peak_rss_mb": max((h.get("peak_rss_mb", 0) for h in history), default=None),
        "state_mb": last.get("state_mb"),
        "skipped_rows": state.get("skipped", 0),
        "stream_start": start,
        "encode_cache": stream_notes.get("encode_cache"),
        "resumes": state.get("resumes", []),
        "train_seconds": state.get("seconds"),
        "seconds_per_step": (state["seconds"] / steps_run) if steps_run > 0 and state.get("seconds") else None,
        "wall_seconds": wall,
        # From this call to its first optimizer step: Ray Train's start, the model, the encode cache, the stream.
        "startup_seconds": (this_call[0]["first_step_time"] - called) if this_call else None,
        "checkpoint": scheme + checkpoint.path,
        # Folders a failed attempt uploaded that Ray Train never registered, removed after the run.
        "orphan_checkpoints_removed": orphans,
        "storage_path": storage,
        "name": name,
        "output": out_uri,
        "adapter_dir": at(weights) if cfg.train.lora.enabled else None,
        "model_dir": at(weights) if not cfg.train.lora.enabled else None,
        "base_dir": base_ref if base_ref is not None else cfg.model.name_or_path,
        "merged_dir": at(merged_dir) if merged_dir else None,
        "mlflow_run_id": tracker.run_id if tracker is not None else None,
        "rationale_weight": cfg.train.rationale_weight,
        "zero_stage": cfg.train.zero_stage,
        "loss_format": cfg.train.loss_format,
        "family": family_of(cfg.model).name,
        "num_workers": cfg.train.num_workers,
    }
    (out / "train_summary.json").write_text(json.dumps(summary, indent=1))
    return summary


CHECKPOINT_SNAPSHOT = "checkpoint_manager_snapshot.json"  # Ray Train's registry of a run's checkpoints


def remove_unregistered_checkpoints(checkpoint: Any) -> list[str]:
    """Delete the run's checkpoint folders that Ray Train never registered; their names (sorted).

    A worker uploads a checkpoint folder first and reports it after; the controller registers it when it takes
    the report off the worker's (size-1) queue, at most once per poll. A worker killed in between leaves up to
    two folders behind (one report queued, one upload done while the put waited) that no restart restores
    from and that ``CheckpointConfig.num_to_keep`` never deletes: with full fine-tuning each holds the
    optimizer states. Run after ``fit()`` returned (no worker writes any more). Nothing is deleted unless
    Ray Train's snapshot lists ``checkpoint`` (the run's final one) among the registered folders: a snapshot
    in another layout leaves the storage as it is.
    """
    import pyarrow.fs as pafs

    fs, final = checkpoint.filesystem, checkpoint.path.rstrip("/")
    root, _, final_name = final.rpartition("/")
    try:
        with fs.open_input_stream(f"{root}/{CHECKPOINT_SNAPSHOT}") as stream:
            registered = {entry["checkpoint_dir_name"] for entry in json.loads(stream.read())["checkpoint_results"]}
    except (OSError, ValueError, KeyError, TypeError):
        return []
    if final_name not in registered:
        return []
    removed = []
    for info in fs.get_file_info(pafs.FileSelector(root)):
        if info.type == pafs.FileType.Directory and info.base_name.startswith("checkpoint_") \
                and info.base_name not in registered:
            fs.delete_dir(info.path)
            removed.append(info.base_name)
    if removed:
        logger.info("removed %d checkpoint folder(s) Ray Train never registered: %s", len(removed), removed)
    return sorted(removed)


def raise_nothing_trainable(err: BaseException) -> None:
    """Raise :class:`NothingUsable` with the workers' one-line reason when ``err`` (Ray Train's failure) is a
    worker finding no row to train on; otherwise return (the caller re-raises ``err``). Ray Train's
    ``WorkerGroupError`` carries each failed worker's own exception by rank (``worker_failures``): every rank
    raises the same one at the same micro-batch (the skip decision is all-reduced), so the lowest rank's is
    the message."""
    failures = getattr(err, "worker_failures", None) or {}
    for rank in sorted(failures):
        if isinstance(failures[rank], NothingUsable):
            raise NothingUsable(str(failures[rank])) from None


def fit_interruptible(trainer: Any) -> Any:
    """``trainer.fit()`` in a helper thread, so that SIGINT raises ``KeyboardInterrupt`` in the caller (see the
    module docstring) instead of Ray Train's handler exiting the process."""
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["result"] = trainer.fit()
        except BaseException as err:  # noqa: BLE001 - handed to the caller's thread
            box["error"] = err

    thread = threading.Thread(target=target, name="ray-train-fit", daemon=True)
    thread.start()
    while thread.is_alive():
        thread.join(timeout=0.5)  # short waits: a pending SIGINT is raised in this (the main) thread
    if "error" in box:
        raise box["error"]
    return box["result"]


def _mean_after_first(history: list[dict], key: str) -> Optional[float]:
    """Mean of a throughput metric over the logged windows, the first (start-up, compilation) left out."""
    values = [h[key] for h in history[1:] if h.get(key) is not None] or [h[key] for h in history if key in h]
    return sum(values) / len(values) if values else None
