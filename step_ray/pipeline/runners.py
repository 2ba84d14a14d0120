"""Executors of the stage contract (:mod:`step_ray.stage`): kept apart from the stages themselves.

* :func:`run_local` — every stage set up once in this process; Arrow batches go through them in turn
  (tests, debugging, ``--no-ray``). Lazy: it yields each batch as it is done, so a caller can write it out.
* :func:`map_stages` — one Ray Data ``map_batches`` per stage on a lazy dataset, each with its own actor pool,
  shown under the stage's own name, rows that kill their actor bounded by a :class:`CrashLedger`. It lives in
  :mod:`step_ray.ray_executor` (beside the contract, so that ``train`` and ``eval``, below this package, map
  their stages with it too) and is re-exported here.

Both go through :func:`step_ray.stage.run_batch`, the one place where a stage's declared inputs and
outputs are checked, so a stage behaves the same in a test and on a cluster.

:func:`run_stage` is the *compatibility path* for stages that still use the old row-dict protocol (today
only the QRA filter, :class:`step_ray.qra.filter.QraFilterStage`): it collects its (small) input on the
driver and its output with ``take_all``; its rows are guarded by the same :class:`CrashLedger` (keyed by
the row's index). It goes away when the filter adopts the contract (see the module docstring of
:mod:`step_ray.stage`).
"""

from __future__ import annotations

import time
import traceback
from typing import Any, Iterable, Iterator, Sequence

import pyarrow as pa
from tqdm import tqdm

from step_ray.config import StepRayConfig, from_dict, to_dict
from step_ray.ray_executor import MAX_RETRIES, LedgerGuard, StageActor, actor_class, map_stages, new_ledger
from step_ray.stage import ROW_INDEX, CrashLedger, Stage, run_batch
from step_ray.utils.env import configure_ultralytics, show_progress

__all__ = ["CrashLedger", "ROW_INDEX", "StageActor", "actor_class", "map_stages", "new_ledger", "run_local", "run_stage"]


# --------------------------------------------------------------------------------------------- local


def run_local(batches: Iterable[pa.Table], stages: Sequence[Stage]) -> Iterator[pa.Table]:
    """Set every stage up here, push each batch through all of them, yield the results as they come;
    tear the stages down at the end (also when the caller stops early)."""
    for stage in stages:
        stage.setup()
    try:
        for batch in batches:
            for stage in stages:
                batch = run_batch(stage, batch)
            yield batch
    finally:
        for stage in stages:
            stage.teardown()


# --------------------------------------------------------------------------------------------- compatibility


Row = dict[str, Any]


def _safe_process(stage: Any, row: Row) -> Row:
    try:
        out = stage.process(row)
    except Exception as err:  # noqa: BLE001 - the contract: every input ends as a row
        last = traceback.extract_tb(err.__traceback__)[-1]
        return _legacy_error_row(stage.columns, row, f"{type(err).__name__}: {err} (at {last.filename}:{last.lineno})")
    missing = set(stage.columns) - set(out)
    if missing:
        return _legacy_error_row(stage.columns, row, f"stage {stage.name} returned a row without {sorted(missing)}")
    return {c: out[c] for c in stage.columns}


def _legacy_error_row(columns: tuple[str, ...], base: Row, reason: str) -> Row:
    row = {c: None for c in columns}
    row.update({k: v for k, v in base.items() if k in row})
    row["status"] = "error"
    row["error"] = reason
    return row


class _LegacyActor:
    """Compatibility path: a row-dict stage (``cls(cfg, **kwargs)``, ``pool()``, ``process(row)``), its rows
    guarded by the :class:`CrashLedger` like a :class:`~step_ray.stage.RowStage`'s."""

    def __init__(self, stage_cls: type, cfg_data: dict, stage_kwargs: dict, ledger: Any = None,
                 max_retries: int = MAX_RETRIES):
        configure_ultralytics()
        self.stage = stage_cls(from_dict(cfg_data), **stage_kwargs)
        self.stage.setup()
        self.guard = LedgerGuard(ledger, stage_cls.name, max_retries) if ledger is not None else None

    def _process(self, row: Row) -> Row:
        index = row.get(ROW_INDEX)
        if self.guard is None or index is None:
            return _safe_process(self.stage, row)
        key = str(int(index))
        deaths = self.guard.begin(key)
        if deaths > self.guard.max_retries:
            out = _legacy_error_row(self.stage.columns, row, (
                f"the process working on it died {deaths} times (a crash such as a decoder segfault, or an "
                f"out-of-memory kill); {self.stage.name}'s pool.max_retries is {self.guard.max_retries}, the run "
                f"went on without it"))
        else:
            out = _safe_process(self.stage, row)
        self.guard.end(key)
        return out

    def __call__(self, batch):
        import pandas as pd

        rows = [{k: _plain(v) for k, v in r.items()} for r in batch.to_dict("records")]
        out = [{**self._process(r), ROW_INDEX: r.get(ROW_INDEX)} for r in rows]
        return pd.DataFrame(out, columns=[*self.stage.columns, ROW_INDEX])


def _plain(value: Any) -> Any:
    """Ray hands pandas batches back with numpy scalars and arrays; the compatibility path wants plain Python."""
    import numpy as np

    if isinstance(value, np.ndarray):
        return [_plain(v) for v in value.tolist()]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and value != value:  # pandas fills missing values with NaN
        return None
    return value


def run_stage(stage_cls: type, cfg: StepRayConfig, rows: list[Row], use_ray: bool = True,
              **stage_kwargs: Any) -> tuple[list[Row], float]:
    """Compatibility path for a row-dict stage (the QRA filter): run it over ``rows`` on a Ray Data actor
    pool or in this process; (its rows in input order, wall seconds). On Ray a row that keeps killing its
    actor becomes an error row (:class:`CrashLedger`), and so does a row Ray Data never handed back."""
    start = time.perf_counter()
    if not use_ray:
        stage = stage_cls(cfg, **stage_kwargs)
        stage.setup()
        out = [_safe_process(stage, r) for r in tqdm(rows, desc=stage_cls.name, unit="row",
                                                     disable=not show_progress())]
        return out, time.perf_counter() - start
    import ray
    import ray.data

    from step_ray.utils.ray_session import init_ray

    init_ray(cfg.ray)
    if not rows:
        return [], time.perf_counter() - start
    pool = stage_cls(cfg, **stage_kwargs).pool()
    resources = {"num_gpus": pool.num_gpus} if pool.num_gpus > 0 else {}
    indexed = [{**r, ROW_INDEX: i} for i, r in enumerate(rows)]
    ledger = new_ledger()
    ds = ray.data.from_items(indexed, override_num_blocks=min(len(rows), max(1, pool.max_size * 4)))
    ds = ds.map_batches(
        _LegacyActor,
        fn_constructor_kwargs={"stage_cls": stage_cls, "cfg_data": to_dict(cfg), "stage_kwargs": stage_kwargs,
                               "ledger": ledger, "max_retries": getattr(pool, "max_retries", MAX_RETRIES)},
        compute=ray.data.ActorPoolStrategy(min_size=pool.min_size, max_size=pool.max_size),
        num_cpus=pool.num_cpus, batch_size=pool.batch_size, batch_format="pandas", **resources,
    )
    done: dict[int, Row] = {}
    try:
        for r in ds.take_all():
            index = _plain(r.get(ROW_INDEX))
            if index is not None:
                done.setdefault(int(index), {c: _plain(r.get(c)) for c in stage_cls.columns})
    finally:
        ray.kill(ledger)
    for i, r in enumerate(rows):  # never expected: the contract is one output row per input row, so say so if not
        if i not in done:
            done[i] = _legacy_error_row(stage_cls.columns, r, "no output came back for it from Ray Data")
    return [done[i] for i in range(len(rows))], time.perf_counter() - start
