"""The stage protocol: a small class that turns one input row into one output row.

A stage takes its config in the constructor (cheap, runs on the driver), builds heavy state (models,
trackers) in :meth:`Stage.setup` (runs once inside the Ray actor, or once in the sequential runner), and
processes rows in :meth:`Stage.process`. ``process`` never raises for bad input: it returns a row with
``status="error"`` and an ``error`` reason, so every input is accounted for.
"""

from __future__ import annotations

from typing import Any, ClassVar, Protocol

from step_ray.config import PoolConfig, StepRayConfig

Row = dict[str, Any]


class Stage(Protocol):
    name: ClassVar[str]
    #: Output columns, in order; every row ``process`` returns has exactly these keys.
    columns: ClassVar[tuple[str, ...]]

    def __init__(self, cfg: StepRayConfig, **kwargs: Any) -> None: ...

    def pool(self) -> PoolConfig:
        """Actor pool and resources (CPUs, GPUs per actor) this stage asks Ray for."""
        ...

    def setup(self) -> None:
        """Load models and other heavy state. Called once per actor, before the first row."""
        ...

    def process(self, row: Row) -> Row:
        """One input row -> one output row with :attr:`columns`."""
        ...


def error_row(columns: tuple[str, ...], base: Row, reason: str) -> Row:
    """An output row for an input that failed: its identifying fields, ``status='error'`` and the reason."""
    row = {c: None for c in columns}
    row.update({k: v for k, v in base.items() if k in row})
    row["status"] = "error"
    row["error"] = reason
    return row
