"""Outcomes of a step that are not bugs: the CLI turns each into one line and its own exit code."""

from __future__ import annotations


class NothingUsable(RuntimeError):
    """A step ran to its end but produced nothing the next step could use (every video failed, no QRA sample,
    no training row whose video decodes): exit code 1 with this message, after the step's summary and error
    lists were written."""


# How a training worker's "no row to train on" failure (a NothingUsable raised in the worker) starts.
NO_TRAINABLE_ROWS = "no trainable row in two passes over the training data"
