"""Experiment tracking through Ray Train's reporting: every ``ray.train.report`` of the workers reaches these
callbacks on the Ray Train controller (the driver's node), which write the metrics where tools can read them.

* TensorBoard (``train.tensorboard``): event files in ``OUT/tensorboard`` (``tensorboard --logdir OUT``), one
  scalar per metric at its optimizer step. tensorboardX comes with Ray Train; nothing else is needed.

MLflow and Weights & Biases are not wired in: neither is a dependency of step-ray. Ray Train's own
integrations (``ray.air.integrations.mlflow`` / ``wandb``) or reading the TensorBoard files serve there.
"""

from __future__ import annotations

import numbers
from typing import Any, Optional

from ray.train import UserCallback


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
        if not metrics:
            return
        values = metrics[0]  # every rank reports the same (all-reduced) figures
        step = values.get("step")
        if not isinstance(step, numbers.Number):
            return
        writer = self._writer_or_open()
        for key, value in values.items():
            if key != "step" and isinstance(value, numbers.Number) and not isinstance(value, bool):
                writer.add_scalar(f"train/{key}", float(value), int(step))
        if checkpoint is not None:
            writer.add_text("train/checkpoint", str(checkpoint.path), int(step))
        writer.flush()

    def after_exception(self, run_context: Any, worker_exceptions: dict[int, Exception]) -> None:
        if self._writer is not None:
            self._writer.flush()

    def __getstate__(self) -> dict:  # the writer (open files, a thread) stays behind when Ray ships this
        return {"logdir": self.logdir, "_writer": None}
