"""The ``stsg`` step, streaming: videos listed lazily -> perception actors -> graph actors -> tables.

::

    --input args ─► ListInputs (read tasks walk folders / prefixes / manifests)
                 ─► ids made unique (groupby on the requested id; the previous run's rows join here)
                 ─► stsg-perception (actor pool, GPUs)  ─► stsg-graph (actor pool, CPUs; writes the graphs)
                 ─► results/<run>/part-*.parquet and errors/<run>/part-*.parquet, as the run goes

Output folder (local or ``s3://`` / ``gs://``): ``{video_id}.stsg.json`` per video; ``results/`` and
``errors/`` (one folder per run, a row per input: :class:`~step_ray.stsg.stage.StsgResult`);
``summary.json`` (counts from aggregations over this run's results, error examples, the run id; written
last, so it marks the run complete). A re-run hands each input its row of the runs since the last complete
one and skips a video whose key (content + settings) is unchanged and whose graph is there. A video that
keeps killing its actor becomes an error row after ``pool.max_retries`` restarts
(:class:`step_ray.stage.CrashLedger`), so every input is accounted for and the run goes on.
"""

from __future__ import annotations

import json
import time
from typing import Any, Optional, Sequence

import pyarrow as pa
import pyarrow.compute as pc

from step_ray.config import StepRayConfig
from step_ray.pipeline.dataflow import InputListing, PartSink, Previous, TableSpec, flow_for, new_run_id, run_files, runs_of
from step_ray.stage import Stage
from step_ray.stsg.stage import COUNT_COLUMNS, RESULT_COLUMNS, StsgResult, stsg_stages
from step_ray.utils import arrow, storage
from step_ray.utils.inputs import VIDEO_SUFFIXES, check_arguments

#: Results rows per Parquet part (a part is written when this many rows are done: a killed driver loses at
#: most the rows of the parts still filling, never a graph, and the re-run recovers those from the graphs).
ROWS_PER_FILE = 128
#: Error examples listed in ``summary.json`` (all of them are in ``errors/``).
ERROR_EXAMPLES = 100
SUM_COLUMNS = ("skipped", "frames", "duration", *COUNT_COLUMNS, "parse_samples", "parse_malformed", "parse_facts",
               "seconds_decode", "seconds_detect", "seconds_track", "seconds_parse", "seconds_graph")


def _results(t: pa.Table) -> pa.Table:
    return t.select(list(RESULT_COLUMNS))


def _errors(t: pa.Table) -> Optional[pa.Table]:
    return t.filter(pc.equal(t["status"], "error")).select(list(RESULT_COLUMNS))


TABLES = (TableSpec("results", _results), TableSpec("errors", _errors))


def read_summary(out: str) -> dict[str, Any]:
    path = storage.join(out, "summary.json")
    try:
        return json.loads(storage.read_text(path)) if storage.exists(path) else {}
    except (OSError, ValueError):
        return {}


def previous_runs(out: str) -> list[str]:
    """Runs whose rows a re-run reads: the last complete one (its summary is written) and any after it."""
    runs = runs_of(out, "results")
    last = read_summary(out).get("run")
    return runs[runs.index(last):] if last in runs else runs


def last_run_files(out: str) -> list[str]:
    """The results parts of the last complete run into ``out`` (empty if none finished)."""
    run = read_summary(out).get("run")
    return run_files(out, "results", [run]) if run else []


def rows_of_last_run(out: str, table: str = "results") -> list[dict[str, Any]]:
    """Every row of ``table`` (results or errors) of the last complete run, sorted by video id; in memory,
    for tools and tests (a pyarrow dataset over the same files reads them in pieces)."""
    from step_ray.pipeline.dataflow import LocalFlow

    run_id = read_summary(out).get("run")
    files = run_files(out, table, [run_id]) if run_id else []
    return LocalFlow().first_rows(files, list(RESULT_COLUMNS), "video_id", 1 << 62)


def run(cfg: StepRayConfig, inputs: Sequence[str], out_dir: str, use_ray: bool = True,
        stages: Optional[list[Stage]] = None, load_model: Any = None) -> dict:
    out = str(out_dir)
    check_arguments(inputs, VIDEO_SUFFIXES)
    stages = stages or stsg_stages(cfg, out, load_model=load_model)
    flow = flow_for(use_ray, cfg.ray)
    run_id = new_run_id()
    row_type = arrow.arrow_type(StsgResult)
    listing = InputListing(inputs, VIDEO_SUFFIXES, manifests=True, previous_type=row_type)
    previous = Previous(tuple(run_files(out, "results", previous_runs(out))), row_type)
    sink = PartSink(out, run_id, TABLES, ROWS_PER_FILE)
    scratch = storage.join(out, f"_work/{run_id}")
    start = time.perf_counter()
    batches, videos = flow.inputs(listing, previous=previous if previous.files else None,
                                  block_rows=stages[0].pool.batch_size, scratch=scratch)
    if videos:
        flow.write(flow.stages(batches, stages), sink)
    seconds = time.perf_counter() - start
    storage.delete_dir(storage.join(out, "_work"))
    summary = summarise(flow, sink, videos, seconds)
    summary.update(run=run_id, output=out)
    if cfg.semantics.enabled:
        summary.update({k: summary.pop(f"_{k}", 0) for k in ("parse_samples", "parse_malformed", "parse_facts")})
    else:
        for k in ("parse_samples", "parse_malformed", "parse_facts"):
            summary.pop(f"_{k}", None)
    storage.write_text(storage.join(out, "summary.json"), json.dumps(summary, indent=2, sort_keys=True, default=str))
    return summary


def summarise(flow: Any, sink: PartSink, videos: int, seconds: float) -> dict[str, Any]:
    """The step's summary from aggregations over this run's results (a few rows per status, never the
    corpus) and the first error examples by video id."""
    groups = {g["status"]: g for g in flow.group_sums(sink.files("results"), ["status"], SUM_COLUMNS)}
    ok = groups.get("ok", {})
    failed = int(groups.get("error", {}).get("n") or 0)

    def total(key: str, digits: Optional[int] = None) -> Any:
        value = ok.get(key) or 0
        return round(value, digits) if digits is not None else int(value)

    rows = sum(int(g.get("n") or 0) for g in groups.values())
    examples = flow.first_rows(sink.files("errors"), ["video_id", "error"], "video_id", ERROR_EXAMPLES)
    return {
        "videos": videos,
        "ok": int(ok.get("n") or 0),
        "failed": failed,
        "accounted_for": rows == videos,
        "skipped_done": total("skipped"),
        "video_seconds": total("duration", 1),
        **{k: total(k) for k in ("frames", *COUNT_COLUMNS)},
        "seconds": round(seconds, 2),
        **{k: total(k, 2) for k in ("seconds_decode", "seconds_detect", "seconds_track", "seconds_parse",
                                     "seconds_graph")},
        **{f"_{k}": total(k) for k in ("parse_samples", "parse_malformed", "parse_facts")},
        "errors": {r["video_id"]: r["error"] for r in examples},
        "errors_total": failed,
        "results": storage.join(storage.join(sink.root, "results"), sink.run),
    }
