"""Experiment tracking through Ray Train's reporting: every ``ray.train.report`` of the workers reaches these
callbacks on the Ray Train controller (an actor on the driver's node), which write the metrics where tools can
read them. Every rank reports the same all-reduced figures; the callbacks take rank 0's. A report may carry
several log windows (``windows``: the workers report at most once per Ray Train poll interval,
:func:`step_ray.train.loop.report_interval_s`); each is logged at its own step.

* TensorBoard (``train.tensorboard``): event files in ``OUT/tensorboard`` (``tensorboard --logdir OUT``), one
  scalar per metric at its optimizer step. tensorboardX comes with Ray Train; nothing else is needed. With an
  object-store output the files are written in the run's local staging folder on the driver's node and
  uploaded to ``OUT/tensorboard`` when the run ends (also when it fails or is interrupted): TensorBoard
  cannot append to an object.
* MLflow (``train.mlflow.tracking_uri``; ``pip install 'step-ray[mlflow]'``, the small ``mlflow-skinny``
  client): the driver opens one MLflow run per training call and logs the resolved ``train`` section as flat
  parameters (``train.lr``, ``train.lora.r``, ...; plus ``model.name_or_path`` and ``run.seed``);
  :class:`MlflowCallback` logs every numeric metric of each report at its optimizer step (``loss``,
  ``loss_answer``, ``lr``, ``samples_per_s``, ...); the driver ends the run FINISHED, FAILED (an error in
  training or export) or KILLED (Ctrl-C / SIGTERM). A resumed training is a new MLflow run whose metrics
  continue at the checkpoint's step. A driver killed outright (SIGKILL) leaves its run RUNNING. Configured but
  not installed is refused before any work (:func:`check_tracking`). The driver's ``MLFLOW_*`` environment
  (credentials, ``MLFLOW_ALLOW_FILE_STORE``) is handed to the controller with the callback, where it fills
  what the controller's own environment leaves unset. A tracking server that fails mid-run costs a warning in
  the log per failed report, never the training.

Weights & Biases is not wired in: its client (``wandb``, a 20 MB wheel with a bundled Go service) is not a
dependency of step-ray, and a test of it here could only run it offline, where it writes binary run files
that nothing but W&B's own service reads back. Read the TensorBoard files with ``wandb sync --sync-tensorboard``
or use Ray Train's ``ray.air.integrations.wandb`` in your own script.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import numbers
import os
import time
from pathlib import Path
from typing import Any, Optional

from ray.train import UserCallback

from step_ray.config import ConfigError, StepRayConfig, to_dict

logger = logging.getLogger(__name__)

MLFLOW_INSTALL = "pip install 'step-ray[mlflow]' (or: pip install mlflow-skinny)"
# Reported values that are not curves: the step is the x axis, the rest are wall-clock instants.
NOT_METRICS = ("step", "time", "first_step_time")
MLFLOW_BATCH = 100  # MLflow's limit on params per log_batch call
MLFLOW_METRICS_BATCH = 1000  # and its limit on metrics per call


def check_tracking(cfg: StepRayConfig) -> None:
    """Refuse (:class:`~step_ray.config.ConfigError`, exit 2) a configured tracker whose client is not
    installed, before any work starts."""
    if cfg.train.mlflow.tracking_uri and importlib.util.find_spec("mlflow") is None:
        raise ConfigError("train.mlflow.tracking_uri", f"is set but MLflow is not installed: {MLFLOW_INSTALL}")


def numeric_metrics(values: dict[str, Any]) -> dict[str, float]:
    """The reported values that are curves: numbers (not flags), less the step and the wall-clock instants."""
    return {k: float(v) for k, v in values.items()
            if k not in NOT_METRICS and isinstance(v, numbers.Number) and not isinstance(v, bool)}


def rank0_report(metrics: list[dict[str, Any]]) -> tuple[Optional[int], dict[str, Any]]:
    """``(step, values)`` of rank 0's report (``step`` None when the report has none)."""
    values = metrics[0] if metrics else {}
    step = values.get("step")
    return (int(step) if isinstance(step, numbers.Number) else None), values


def report_windows(metrics: list[dict[str, Any]]) -> list[tuple[int, dict[str, Any]]]:
    """``[(step, values)]`` of the log windows in rank 0's report, in step order: the workers gather the windows
    logged between two reports under ``windows`` (:func:`step_ray.train.loop.report_of`); a report without
    them is one window; one without a step, none."""
    _, values = rank0_report(metrics)
    windows = values.get("windows")
    out = []
    for window in windows if isinstance(windows, list) and windows else [values]:
        step, window_values = rank0_report([window])
        if step is not None:
            out.append((step, window_values))
    return out


class TensorBoardCallback(UserCallback):
    """Write rank 0's reported metrics as TensorBoard scalars under ``logdir``, keyed by their ``step``."""

    def __init__(self, logdir: str):
        self.logdir = logdir
        self._writer: Any = None

    def _writer_or_open(self) -> Any:
        if self._writer is None:
            from tensorboardX import SummaryWriter

            self._writer = SummaryWriter(logdir=self.logdir, flush_secs=10)
        return self._writer

    def after_report(self, run_context: Any, metrics: list[dict[str, Any]], checkpoint: Optional[Any]) -> None:
        windows = report_windows(metrics)
        if not windows:
            return
        writer = self._writer_or_open()
        for step, values in windows:
            for key, value in numeric_metrics(values).items():
                writer.add_scalar(f"train/{key}", value, step)
        if checkpoint is not None:
            writer.add_text("train/checkpoint", str(checkpoint.path), step)
        writer.flush()

    def after_exception(self, run_context: Any, worker_exceptions: dict[int, Exception]) -> None:
        if self._writer is not None:
            self._writer.flush()

    def __getstate__(self) -> dict:  # the writer (open files, a thread) stays behind when Ray ships this
        return {"logdir": self.logdir, "_writer": None}


# --------------------------------------------------------------------------------------------- MLflow


def resolve_tracking_uri(uri: str) -> str:
    """``uri`` with a local store made absolute (``mlruns`` or ``file:mlruns`` -> ``file:///abs/mlruns``): the
    controller that logs the metrics does not share the driver's working directory."""
    if uri.startswith("file:"):
        path = uri[len("file:"):]
        if path.startswith("//"):  # file://host/path or file:///path: already absolute
            return uri
        return Path(path).resolve().as_uri()
    if ":" not in uri and uri != "databricks":
        return Path(uri).resolve().as_uri()  # a plain folder: MLflow's file store
    return uri


def flat_params(cfg: StepRayConfig) -> dict[str, str]:
    """The resolved ``train`` section as flat MLflow parameters (``train.lr``, ``train.lora.r``), plus the
    model and the seed; lists, flags and nulls as JSON."""
    def flatten(prefix: str, tree: dict, out: dict[str, str]) -> dict[str, str]:
        for key, value in tree.items():
            name = f"{prefix}{key}"
            if isinstance(value, dict):
                flatten(f"{name}.", value, out)
            else:
                out[name] = value if isinstance(value, str) else json.dumps(value)
        return out

    params = flatten("train.", to_dict(cfg)["train"], {})
    params["model.name_or_path"] = cfg.model.name_or_path
    params["run.seed"] = str(cfg.run.seed)
    return params


def default_run_name(out_uri: str) -> str:
    parts = [p for p in out_uri.replace("://", "/").split("/") if p]
    return "/".join(parts[-2:]) or "step-ray"


class MlflowRun:
    """The driver's side of one MLflow run: opened (parameters logged) before training, ended after it."""

    def __init__(self, tracking_uri: str, run_id: str):
        self.tracking_uri, self.run_id = tracking_uri, run_id

    @classmethod
    def start(cls, cfg: StepRayConfig, out_uri: str, ray_run_name: str) -> "MlflowRun":
        """Open the run (before any training worker starts): a store that refuses it is a
        :class:`~step_ray.config.ConfigError` naming ``train.mlflow.tracking_uri``, with MLflow's reason."""
        uri = resolve_tracking_uri(cfg.train.mlflow.tracking_uri)
        try:
            return cls._start(cfg, uri, out_uri, ray_run_name)
        except Exception as err:  # noqa: BLE001 - MLflow raises its own and its HTTP stack's errors
            reason = " ".join(str(err).split()) or type(err).__name__
            raise ConfigError("train.mlflow.tracking_uri", f"{uri}: MLflow refused to open a run: {reason}") from None

    @classmethod
    def _start(cls, cfg: StepRayConfig, uri: str, out_uri: str, ray_run_name: str) -> "MlflowRun":
        from mlflow import MlflowClient
        from mlflow.entities import Param

        mc = cfg.train.mlflow
        client = MlflowClient(tracking_uri=uri)
        experiment = client.get_experiment_by_name(mc.experiment)
        if experiment is not None:
            experiment_id = experiment.experiment_id
        else:
            try:
                experiment_id = client.create_experiment(mc.experiment)
            except Exception:  # noqa: BLE001 - another driver created it meanwhile
                experiment = client.get_experiment_by_name(mc.experiment)
                if experiment is None:
                    raise
                experiment_id = experiment.experiment_id
        tags = {"step_ray.output": out_uri, "step_ray.ray_train_run": ray_run_name}
        run = client.create_run(experiment_id, run_name=mc.run_name or default_run_name(out_uri), tags=tags)
        params = [Param(k, v) for k, v in sorted(flat_params(cfg).items())]
        for i in range(0, len(params), MLFLOW_BATCH):
            client.log_batch(run.info.run_id, params=params[i:i + MLFLOW_BATCH])
        logger.info("MLflow run %s in experiment %r at %s", run.info.run_id, mc.experiment, uri)
        return cls(uri, run.info.run_id)

    def callback(self) -> "MlflowCallback":
        return MlflowCallback(self.tracking_uri, self.run_id)

    def end(self, status: str, tags: Optional[dict[str, str]] = None) -> None:
        """End the run: FINISHED, FAILED or KILLED. A tracking server that fails here costs a warning."""
        from mlflow import MlflowClient

        try:
            client = MlflowClient(tracking_uri=self.tracking_uri)
            for key, value in (tags or {}).items():
                client.set_tag(self.run_id, key, value)
            client.set_terminated(self.run_id, status=status)
        except Exception as err:  # noqa: BLE001 - the training's own outcome matters more
            logger.warning("MLflow: could not end run %s as %s: %s", self.run_id, status, err)


class MlflowCallback(UserCallback):
    """Log rank 0's reported metrics to the MLflow run ``run_id``, each at its optimizer step."""

    def __init__(self, tracking_uri: str, run_id: str, env: Optional[dict[str, str]] = None):
        self.tracking_uri, self.run_id = tracking_uri, run_id
        # The driver's MLflow settings travel with the callback: the controller's environment is Ray's, not
        # the shell's that launched the driver (a Ray started earlier, a cluster joined).
        self.env = {k: v for k, v in os.environ.items() if k.startswith("MLFLOW_")} if env is None else env
        self._client: Any = None

    def _client_or_open(self) -> Any:
        if self._client is None:
            for key, value in self.env.items():
                os.environ.setdefault(key, value)
            from mlflow import MlflowClient

            self._client = MlflowClient(tracking_uri=self.tracking_uri)
        return self._client

    def after_report(self, run_context: Any, metrics: list[dict[str, Any]], checkpoint: Optional[Any]) -> None:
        windows = report_windows(metrics)
        if not windows:
            return
        from mlflow.entities import Metric

        batch = []
        for step, values in windows:
            stamp = int(1000 * float(values.get("time") or time.time()))
            batch += [Metric(key, value, stamp, step) for key, value in sorted(numeric_metrics(values).items())]
        steps = ", ".join(str(step) for step, _ in windows)
        try:
            for i in range(0, len(batch), MLFLOW_METRICS_BATCH):
                self._client_or_open().log_batch(self.run_id, metrics=batch[i:i + MLFLOW_METRICS_BATCH])
        except Exception as err:  # noqa: BLE001 - a tracking outage must not stop hours of training
            logger.warning("MLflow: metrics of step %s not logged to run %s: %s", steps, self.run_id, err)

    def __getstate__(self) -> dict:  # the client (sessions, a store) stays behind when Ray ships this
        return {"tracking_uri": self.tracking_uri, "run_id": self.run_id, "env": self.env, "_client": None}


def tracking_callbacks(tensorboard_dir: Optional[str], mlflow_run: Optional[MlflowRun]) -> list[UserCallback]:
    """The Ray Train callbacks of a run: TensorBoard into ``tensorboard_dir`` (when given), MLflow into
    ``mlflow_run`` (when open)."""
    callbacks: list[UserCallback] = []
    if tensorboard_dir:
        callbacks.append(TensorBoardCallback(tensorboard_dir))
    if mlflow_run is not None:
        callbacks.append(mlflow_run.callback())
    return callbacks
