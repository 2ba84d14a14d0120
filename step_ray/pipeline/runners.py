"""Run a stage over rows: sequentially in this process (tests, debugging) or on a Ray Data actor pool.

Both runners guarantee one output row per input row, in input order for the sequential runner and in
any order on Ray (callers key rows by id). An exception that escapes ``process`` becomes an error row.
"""

from __future__ import annotations

import time
import traceback
from typing import Any

from tqdm import tqdm

from step_ray.config import StepRayConfig, from_dict, to_dict
from step_ray.pipeline.stage import Row, Stage, error_row


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
    for row in tqdm(rows, desc="+".join(c.name for c, _ in chain), disable=not progress, unit="row"):
        for stage in stages:
            row = _safe_process(stage, row)
        out.append(row)
    return out


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
        return pd.DataFrame([_safe_process(self.stage, r) for r in rows], columns=list(self.stage.columns))


def run_on_ray(stage_cls: type, cfg: StepRayConfig, rows: list[Row], **stage_kwargs: Any) -> list[Row]:
    """Map the stage over ``rows`` on a Ray Data actor pool (see :func:`run_chain_on_ray`)."""
    return run_chain_on_ray([(stage_cls, stage_kwargs)], cfg, rows)


def run_chain_on_ray(chain: Chain, cfg: StepRayConfig, rows: list[Row]) -> list[Row]:
    """One ``map_batches`` per stage, each with ``compute=ActorPoolStrategy(min_size, max_size)`` and its own
    CPU / GPU request per actor (GPU perception actors feed CPU graph builders, streaming); heavy state is
    built inside the actors, never on the driver."""
    import ray
    import ray.data

    if not rows:
        return []
    first_pool = chain[0][0](cfg, **chain[0][1]).pool()
    ds = ray.data.from_items(rows, override_num_blocks=min(len(rows), max(1, first_pool.max_size * 4)))
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
        )
    last = chain[-1][0]
    return [{c: _plain(r.get(c)) for c in last.columns} for r in ds.take_all()]


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
