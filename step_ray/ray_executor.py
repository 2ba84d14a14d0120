"""The Ray Data executor of the stage contract (:mod:`step_ray.stage`): every stage on an actor pool of its own.

:func:`map_stages` adds one Ray Data ``map_batches`` per stage to a lazy dataset, each with its own actor pool
(``compute=ActorPoolStrategy(min_size, max_size)``), CPUs / GPUs per actor and rows per batch from the stage's
``pool``, shown by Ray Data under the stage's own name (``MapBatches(stsg-perception)``). Heavy state is built by
``setup()`` inside each actor, never on the driver. An input that kills the process working on it (a decoder
segfault, an out-of-memory kill) is retried a bounded number of times (``pool.max_retries``, each time on a
restarted actor) and then becomes an error row while the run goes on: a :class:`~step_ray.stage.CrashLedger`
actor counts, per row, the attempts that began and never ended (Ray Data alone would retry it forever; bounding
Ray's own restarts instead leaves a pool of dead actors and a hung run).

It sits beside the contract, below every package that maps stages (the STSG and QRA steps of
``pipeline``, the training stream of ``train``, evaluation), so none of them imports a layer above it. The
in-process executor, :func:`step_ray.stage.run_local`, sits with the contract itself; both go through
:func:`step_ray.stage.run_batch`, where a stage's declared inputs and outputs are checked, so a stage behaves
the same in a test and on a cluster.
"""

from __future__ import annotations

from typing import Any, Iterator, Sequence

import pyarrow as pa

from step_ray.config import PoolConfig
from step_ray.stage import CrashLedger, RowGuard, Stage, ledger_key, run_carrying, run_local
from step_ray.utils.env import configure_ultralytics, quiet_library_bars

#: Times a row whose process died on it is run again before it becomes an error row, where the pool config
#: does not say (``pool.max_retries``).
MAX_RETRIES = 2

__all__ = ["MAX_RETRIES", "LedgerGuard", "StageActor", "actor_class", "map_stages", "map_tables", "new_ledger"]


class LedgerGuard(RowGuard):
    """The Ray executor's row guard: one round trip per row to begin it, a message to end it (calls from one
    actor reach the ledger in order, so an end always lands before the next begin)."""

    def __init__(self, ledger: Any, stage: str, max_retries: int):
        self.ledger, self.stage, self.max_retries = ledger, stage, max_retries

    def begin(self, key: str) -> int:
        import ray

        return ray.get(self.ledger.begin.remote(ledger_key(self.stage, key)))

    def end(self, key: str) -> None:
        self.ledger.end.remote(ledger_key(self.stage, key))


def new_ledger() -> Any:
    """A :class:`~step_ray.stage.CrashLedger` actor (no CPU: it only counts)."""
    import ray

    return ray.remote(num_cpus=0)(CrashLedger).remote()


class StageActor:
    """What Ray Data instantiates in each actor of a stage's pool: sets the stage up once, maps batches."""

    def __init__(self, stage: Stage, ledger: Any = None, carry: Sequence[str] = ()):
        configure_ultralytics()  # before any stage can load a YOLO checkpoint (safe loading, no downloads)
        quiet_library_bars()  # inside `ray job submit` the driver's settings do not reach the actors: a log, not bars
        self.stage, self.carry = stage, tuple(carry)
        if ledger is not None and stage.row_key:
            stage.row_guard = LedgerGuard(ledger, stage.name, getattr(stage.pool, "max_retries", MAX_RETRIES))
        stage.setup()

    def __call__(self, batch: pa.Table) -> pa.Table:
        return run_carrying(self.stage, batch, self.carry)

    def __del__(self):
        try:
            self.stage.teardown()
        except Exception:  # noqa: BLE001 - best effort while the actor goes away
            pass


def actor_class(stage: Stage) -> type:
    """A :class:`StageActor` subclass named after the stage: Ray Data names the operator after the class."""
    return type(stage.name, (StageActor,), {"__module__": __name__, "__qualname__": stage.name})


def map_stages(ds: Any, stages: Sequence[Stage], ledger: Any = None, carry: Sequence[str] = ()) -> Any:
    """``ds`` mapped through ``stages`` on Ray Data actor pools (lazy: nothing runs until a sink pulls). Rows
    of stages with a ``row_key`` are guarded by a :class:`~step_ray.stage.CrashLedger` (``ledger``, or a new
    one that lives as long as the dataset; none when no stage has a row key). ``carry``: input columns
    handed on beside each stage's outputs, unseen by the stages (:func:`~step_ray.stage.run_carrying`)."""
    if ledger is None and any(stage.row_key for stage in stages):
        ledger = new_ledger()
    for stage in stages:
        pool = stage.pool
        resources = {"num_gpus": pool.num_gpus} if pool.num_gpus > 0 else {}
        ds = _map_stage(ds, stage, pool, resources, ledger, carry)
    return ds


def map_tables(tables: Sequence[pa.Table], stages: Sequence[Stage], use_ray: bool = True) -> Iterator[pa.Table]:
    """``stages`` over in-memory input ``tables`` (a few thousand rows: an evaluation set), the output batches
    as they come: on their Ray Data actor pools (one block per table; Ray must be initialised), or with
    :func:`~step_ray.stage.run_local` in this process when not ``use_ray``."""
    if not use_ray:
        return run_local(tables, stages)
    import ray.data

    tables = [t for t in tables if t.num_rows]
    if not tables:
        return iter(())
    ds = map_stages(ray.data.from_arrow(list(tables)), stages)
    return ds.iter_batches(batch_size=None, batch_format="pyarrow")


def _map_stage(ds: Any, stage: Stage, pool: PoolConfig, resources: dict, ledger: Any, carry: Sequence[str]) -> Any:
    import ray.data

    return ds.map_batches(
        actor_class(stage),
        fn_constructor_kwargs={"stage": stage, "ledger": ledger, "carry": tuple(carry)},
        compute=ray.data.ActorPoolStrategy(min_size=pool.min_size, max_size=pool.max_size),
        num_cpus=pool.num_cpus,
        batch_size=pool.batch_size,
        batch_format="pyarrow",
        zero_copy_batch=True,
        **resources,
    )
