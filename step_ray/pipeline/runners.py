"""Run a stage over rows: sequentially in this process (tests, debugging) or on a Ray Data actor pool.

Both runners guarantee one output row per input row, in input order for the sequential runner and in
any order on Ray (callers key rows by id). An exception that escapes ``process`` becomes an error row.

On Ray, an input that kills the process working on it (a decoder segfault, an out-of-memory kill) is retried a
bounded number of times (``pool.max_retries``, each time on a restarted actor) and then becomes an error row
while the run goes on: Ray Data's own default would retry it forever. A failed batch takes the other rows of
its block with it, so those are run once more, one row per block, before any row is declared failed.
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


class _ActorAdapter:
    """What Ray Data instantiates in each actor: builds the stage from plain data and maps batches through it."""

    def __init__(self, stage_cls: type, cfg_data: dict, stage_kwargs: dict):
        from step_ray.utils.env import configure_ultralytics

        configure_ultralytics()
        self.stage = stage_cls(from_dict(cfg_data), **stage_kwargs)
        self.stage.setup()

    def __call__(self, batch):
        import pandas as pd

        rows = [{k: _plain(v) for k, v in r.items()} for r in batch.to_dict("records")]
        out = [{**_safe_process(self.stage, r), ROW_INDEX: r.get(ROW_INDEX)} for r in rows]
        return pd.DataFrame(out, columns=[*self.stage.columns, ROW_INDEX])


def run_on_ray(stage_cls: type, cfg: StepRayConfig, rows: list[Row], **stage_kwargs: Any) -> list[Row]:
    """Map the stage over ``rows`` on a Ray Data actor pool (see :func:`run_chain_on_ray`)."""
    return run_chain_on_ray([(stage_cls, stage_kwargs)], cfg, rows)


def run_chain_on_ray(chain: Chain, cfg: StepRayConfig, rows: list[Row]) -> list[Row]:
    """One ``map_batches`` per stage, each with ``compute=ActorPoolStrategy(min_size, max_size)`` and its own
    CPU / GPU request per actor (GPU perception actors feed CPU graph builders, streaming); heavy state is
    built inside the actors, never on the driver. Rows whose actor kept dying become error rows (module docs)."""
    if not rows:
        return []
    indexed = [{**r, ROW_INDEX: i} for i, r in enumerate(rows)]
    first_pool = chain[0][0](cfg, **chain[0][1]).pool()
    done = _map_chain_on_ray(chain, cfg, indexed, blocks=min(len(rows), max(1, first_pool.max_size * 4)))
    missing = [r for r in indexed if r[ROW_INDEX] not in done]
    if missing:  # failed batches: once more, each row alone, so that one bad input fails only itself
        done.update(_map_chain_on_ray(chain, cfg, missing, blocks=len(missing)))
    last = chain[-1][0]
    tries = 1 + max(cls(cfg, **kwargs).pool().max_retries for cls, kwargs in chain)
    for r in indexed:
        if r[ROW_INDEX] not in done:
            base = {k: v for k, v in r.items() if k != ROW_INDEX}
            done[r[ROW_INDEX]] = error_row(
                last.columns, base, f"the process working on it died {tries} times (a crash such as a decoder "
                                    f"segfault, or an out-of-memory kill); the run went on without it")
    return [done[i] for i in range(len(rows))]


def _map_chain_on_ray(chain: Chain, cfg: StepRayConfig, rows: list[Row], blocks: int) -> dict[int, Row]:
    """The chain over ``rows`` on Ray Data: {input row index: output row} for the rows that came through.

    Every map bounds the retries of a batch whose actor died (``max_task_retries``; Ray restarts the actor
    itself), and the dataset tolerates the blocks that still fail (``max_errored_blocks``): they are simply
    missing from the result, for the caller to account for."""
    import ray
    import ray.data

    ds = ray.data.from_items(rows, override_num_blocks=max(1, blocks))
    for stage_cls, stage_kwargs in chain:
        pool = stage_cls(cfg, **stage_kwargs).pool()
        resources = {"num_gpus": pool.num_gpus} if pool.num_gpus > 0 else {}
        ds = ds.map_batches(
            _ActorAdapter,
            fn_constructor_kwargs={"stage_cls": stage_cls, "cfg_data": to_dict(cfg), "stage_kwargs": stage_kwargs},
            compute=ray.data.ActorPoolStrategy(min_size=pool.min_size, max_size=pool.max_size),
            num_cpus=pool.num_cpus,
            **resources,
            batch_size=pool.batch_size,
            batch_format="pandas",
            max_restarts=-1,  # a dead actor is replaced by a fresh process ...
            max_task_retries=pool.max_retries,  # ... but a batch that kills it is retried only this often
        )
    ds.context.max_errored_blocks = -1  # a batch out of retries drops its block; the run goes on
    last = chain[-1][0]
    out: dict[int, Row] = {}
    for r in ds.take_all():
        index = _plain(r.get(ROW_INDEX))
        if index is not None:
            out.setdefault(int(index), {c: _plain(r.get(c)) for c in last.columns})
    return out


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
