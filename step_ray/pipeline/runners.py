"""Run a stage over rows: sequentially in this process (tests, debugging) or on a Ray Data actor pool.

Both runners guarantee one output row per input row, in input order for the sequential runner and in
any order on Ray (callers key rows by id). An exception that escapes ``process`` becomes an error row.

On Ray, an input that kills the process working on it (a decoder segfault, an out-of-memory kill) is retried a
bounded number of times (``pool.max_retries``, each time on a restarted actor) and then becomes an error row
while the run goes on: Ray Data alone would retry it forever. The other rows of its batch are simply run again.
"""

from __future__ import annotations

import time
import traceback
from typing import Any

from tqdm import tqdm

from step_ray.config import StepRayConfig, from_dict, to_dict
from step_ray.pipeline.stage import Row, Stage, error_row
from step_ray.utils.env import show_progress


def _safe_process(stage: Stage, row: Row) -> Row:
    try:
        out = stage.process(row)
    except Exception as err:  # noqa: BLE001 - the contract: every input ends as a row
        last = traceback.extract_tb(err.__traceback__)[-1]
        return error_row(stage.columns, row, f"{type(err).__name__}: {err} (at {last.filename}:{last.lineno})")
    missing = set(stage.columns) - set(out)
    if missing:
        return error_row(stage.columns, row, f"stage {stage.name} returned a row without {sorted(missing)}")
    return {c: out[c] for c in stage.columns}


Chain = list[tuple[type, dict[str, Any]]]  # stages and their constructor kwargs, applied in order


def run_sequential(stage_cls: type, cfg: StepRayConfig, rows: list[Row], progress: bool = True,
                   **stage_kwargs: Any) -> list[Row]:
    """Set the stage up once and process every row here, in order."""
    return run_chain_sequential([(stage_cls, stage_kwargs)], cfg, rows, progress)


def run_chain_sequential(chain: Chain, cfg: StepRayConfig, rows: list[Row], progress: bool = True) -> list[Row]:
    """Every stage of ``chain`` set up once here; each row goes through all of them in turn."""
    stages = [cls(cfg, **kwargs) for cls, kwargs in chain]
    for stage in stages:
        stage.setup()
    out = []
    for row in tqdm(rows, desc="+".join(c.name for c, _ in chain), disable=not (progress and show_progress()),
                    unit="row"):
        for stage in stages:
            row = _safe_process(stage, row)
        out.append(row)
    return out


#: Internal column that carries each input row's index through a chain on Ray (stages drop unknown keys).
ROW_INDEX = "_step_ray_row"


class CrashLedger:
    """A small Ray actor (no CPU) that counts, per stage and input row, the attempts that began and never ended:
    each one is a death of the process working on that row (a segfault, an OOM kill; an exception ends its
    attempt normally, as an error row). Ray Data restarts the dead actor and retries its batch as often as it
    takes; the adapter asks the ledger first and turns a row that has already killed ``max_retries + 1``
    processes into an error row instead of running it again. Counting per row keeps the other rows of the
    batch out of it: they are simply run again (stages are idempotent)."""

    def __init__(self) -> None:
        self.begun: dict[tuple[str, int], int] = {}
        self.ended: dict[tuple[str, int], int] = {}

    def begin(self, stage: str, row: int) -> int:
        """Count an attempt; return how many earlier attempts died."""
        key = (stage, row)
        deaths = self.begun.get(key, 0) - self.ended.get(key, 0)
        self.begun[key] = self.begun.get(key, 0) + 1
        return deaths

    def end(self, stage: str, row: int) -> None:
        key = (stage, row)
        self.ended[key] = self.ended.get(key, 0) + 1

    def deaths(self) -> int:
        return sum(self.begun.values()) - sum(self.ended.values())


class _ActorAdapter:
    """What Ray Data instantiates in each actor: builds the stage from plain data and maps batches through it."""

    def __init__(self, stage_cls: type, cfg_data: dict, stage_kwargs: dict, ledger: Any = None,
                 max_retries: int = 0):
        from step_ray.utils.env import configure_ultralytics

        configure_ultralytics()
        self.stage = stage_cls(from_dict(cfg_data), **stage_kwargs)
        self.stage.setup()
        self.ledger, self.max_retries = ledger, max_retries

    def _process(self, row: Row) -> Row:
        import ray

        index = row.get(ROW_INDEX)
        if self.ledger is None or index is None:
            return _safe_process(self.stage, row)
        deaths = ray.get(self.ledger.begin.remote(self.stage.name, int(index)))
        if deaths > self.max_retries:
            out = error_row(self.stage.columns, row, (
                f"the process working on it died {deaths} times (a crash such as a decoder segfault, or an "
                f"out-of-memory kill); {self.stage.name}'s pool.max_retries is {self.max_retries}, the run went on "
                f"without it"))
        else:
            out = _safe_process(self.stage, row)
        ray.get(self.ledger.end.remote(self.stage.name, int(index)))
        return out

    def __call__(self, batch):
        import pandas as pd

        rows = [{k: _plain(v) for k, v in r.items()} for r in batch.to_dict("records")]
        out = [{**self._process(r), ROW_INDEX: r.get(ROW_INDEX)} for r in rows]
        return pd.DataFrame(out, columns=[*self.stage.columns, ROW_INDEX])


def run_on_ray(stage_cls: type, cfg: StepRayConfig, rows: list[Row], **stage_kwargs: Any) -> list[Row]:
    """Map the stage over ``rows`` on a Ray Data actor pool (see :func:`run_chain_on_ray`)."""
    return run_chain_on_ray([(stage_cls, stage_kwargs)], cfg, rows)


def run_chain_on_ray(chain: Chain, cfg: StepRayConfig, rows: list[Row]) -> list[Row]:
    """One ``map_batches`` per stage, each with ``compute=ActorPoolStrategy(min_size, max_size)`` and its own
    CPU / GPU request per actor (GPU perception actors feed CPU graph builders, streaming); heavy state is
    built inside the actors, never on the driver. A row that keeps killing its actor becomes an error row
    (:class:`CrashLedger`)."""
    import ray
    import ray.data

    if not rows:
        return []
    indexed = [{**r, ROW_INDEX: i} for i, r in enumerate(rows)]
    ledger = ray.remote(num_cpus=0)(CrashLedger).remote()
    first_pool = chain[0][0](cfg, **chain[0][1]).pool()
    ds = ray.data.from_items(indexed, override_num_blocks=min(len(rows), max(1, first_pool.max_size * 4)))
    for stage_cls, stage_kwargs in chain:
        pool = stage_cls(cfg, **stage_kwargs).pool()
        resources = {"num_gpus": pool.num_gpus} if pool.num_gpus > 0 else {}
        ds = ds.map_batches(
            _ActorAdapter,
            fn_constructor_kwargs={"stage_cls": stage_cls, "cfg_data": to_dict(cfg), "stage_kwargs": stage_kwargs,
                                   "ledger": ledger, "max_retries": pool.max_retries},
            compute=ray.data.ActorPoolStrategy(min_size=pool.min_size, max_size=pool.max_size),
            num_cpus=pool.num_cpus,
            **resources,
            batch_size=pool.batch_size,
            batch_format="pandas",
        )
    last = chain[-1][0]
    done: dict[int, Row] = {}
    try:
        for r in ds.take_all():
            index = _plain(r.get(ROW_INDEX))
            if index is not None:
                done.setdefault(int(index), {c: _plain(r.get(c)) for c in last.columns})
    finally:
        ray.kill(ledger)
    for r in indexed:  # never expected: the contract is one output row per input row, so say so if not
        if r[ROW_INDEX] not in done:
            base = {k: v for k, v in r.items() if k != ROW_INDEX}
            done[r[ROW_INDEX]] = error_row(last.columns, base, "no output came back for it from Ray Data")
    return [done[i] for i in range(len(rows))]


def _plain(value: Any) -> Any:
    """Ray hands back numpy scalars and arrays; rows leave the runner as plain Python."""
    import numpy as np

    if isinstance(value, np.ndarray):
        return [_plain(v) for v in value.tolist()]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and value != value:  # pandas fills missing values with NaN
        return None
    return value


def run_stage(stage_cls: type, cfg: StepRayConfig, rows: list[Row], use_ray: bool = True, **stage_kwargs: Any) -> tuple[list[Row], float]:
    """Run on Ray or sequentially; return the rows and the wall time in seconds."""
    return run_chain([(stage_cls, stage_kwargs)], cfg, rows, use_ray)


def run_chain(chain: Chain, cfg: StepRayConfig, rows: list[Row], use_ray: bool = True) -> tuple[list[Row], float]:
    """Run a chain of stages on Ray or sequentially; return the last stage's rows and the wall time (s)."""
    start = time.perf_counter()
    if use_ray:
        from step_ray.utils.ray_session import init_ray

        init_ray(cfg.ray)
        out = run_chain_on_ray(chain, cfg, rows)
    else:
        out = run_chain_sequential(chain, cfg, rows)
    return out, time.perf_counter() - start
