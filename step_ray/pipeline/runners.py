"""Executors of the stage contract (:mod:`step_ray.stage`): kept apart from the stages themselves.

* :func:`run_local` — every stage set up once in this process; Arrow batches go through them in turn
  (tests, debugging, ``--no-ray``). Lazy: it yields each batch as it is done, so a caller can write it out.
<<<<<<< HEAD
  (Defined with the contract in :mod:`step_ray.stage`, so packages below the pipeline can run a stage in
  process too; re-exported here.)
* :func:`map_stages` (defined in :mod:`step_ray.ray_executor`, beside the contract, so that ``train`` and
  ``eval`` map stages without importing ``pipeline``; re-exported here) — one Ray Data ``map_batches`` per stage on a lazy dataset, each with its own actor pool
  (``compute=ActorPoolStrategy(min_size, max_size)``), CPUs / GPUs per actor and rows per batch from the
  stage's ``pool``, shown by Ray Data under the stage's own name (``MapBatches(stsg-perception)``). Heavy
  state is built by ``setup()`` inside each actor, never on the driver. An input that kills the process
  working on it (a decoder segfault, an out-of-memory kill) is retried a bounded number of times
  (``pool.max_retries``, each time on a restarted actor) and then becomes an error row while the run goes on:
  a :class:`CrashLedger` actor counts, per row, the attempts that began and never ended (Ray Data alone would
  retry it forever; bounding Ray's own restarts instead leaves a pool of dead actors and a hung run).
* :func:`map_tables` — the stages over a few in-memory tables (an evaluation set), on their pools or in process.
=======
* :func:`map_stages` (defined in :mod:`step_ray.ray_executor`, beside the contract, so that ``train`` and
  ``eval`` map stages without importing ``pipeline``; re-exported here) — one Ray Data ``map_batches`` per stage on a lazy dataset, each with its own actor pool,
  shown under the stage's own name, rows that kill their actor bounded by a :class:`CrashLedger`. It lives in
  :mod:`step_ray.ray_executor` (beside the contract, so that ``train`` and ``eval``, below this package, map
  their stages with it too) and is re-exported here.
>>>>>>> h-train

Both go through :func:`step_ray.stage.run_batch`, the one place where a stage's declared inputs and
outputs are checked, so a stage behaves the same in a test and on a cluster.

``carry`` names input columns an executor hands on beside a stage's outputs, row by row (a one-row-per-input
stage's output rows are its input rows in order): a step keeps what the stage does not read but the sink needs,
such as the part a QRA sample came from, without the stage seeing it.
"""

from __future__ import annotations

from step_ray.ray_executor import MAX_RETRIES, LedgerGuard, StageActor, actor_class, map_stages, map_tables, new_ledger
from step_ray.stage import CrashLedger, run_carrying, run_local

__all__ = ["CrashLedger", "MAX_RETRIES", "LedgerGuard", "StageActor", "actor_class", "map_stages", "map_tables",
           "new_ledger", "run_carrying", "run_local"]
