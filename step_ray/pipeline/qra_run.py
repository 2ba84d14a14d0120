"""The ``qra`` step, streaming: graphs listed lazily -> sampling actors -> candidates -> corpus passes -> parts.

::

    --input args ─► ListInputs (graph files, folders, prefixes; an ``stsg`` output folder: its last run's graphs)
                 ─► qra-sample (actor pool, CPUs) ─► results/ errors/ (per graph) and _work/candidates/
                 ─► corpus-wide finishing (:func:`step_ray.qra.corpus.finish_corpus`: a shuffle into parts,
                    counts, balancing cut-offs, options, splits; Ray Data jobs over the parts)
                 ─► part-00000.parquet ... (+ .jsonl), stats.json, card.md

Output folder (local or ``s3://`` / ``gs://``): the QRA parts (schema ``qra/3``, a ``split`` column),
``results/<run>/`` and ``errors/<run>/`` (a row per input graph), ``stats.json`` (the summary, from
aggregations; it lists the parts) and the dataset card. Sampling is cheap next to the bookkeeping, so a
re-run samples every graph again and replaces the parts (stale ones are removed at the end).
"""

from __future__ import annotations

import time
from collections import Counter
from typing import Any, Optional, Sequence

import pyarrow as pa
import pyarrow.compute as pc

from step_ray.config import StepRayConfig
from step_ray.pipeline.dataflow import InputListing, PartSink, TableArgument, TableSpec, flow_for, new_run_id
from step_ray.qra import records as R
from step_ray.qra.corpus import answer_shares_from, finish_corpus
from step_ray.qra.stage import RESULT_COLUMNS, QraStage
from step_ray.stsg.stage import STSG_SUFFIX
from step_ray.utils import storage
from step_ray.utils.inputs import check_arguments
from step_ray.utils.tally import Tally

#: Graphs per results / candidates part.
ROWS_PER_FILE = 256
EXAMPLES = 100
#: Id rows of the QRA listing carry no earlier results.
NO_PREVIOUS = pa.struct([("video_id", pa.string())])


def _results(t: pa.Table) -> pa.Table:
    return t.select(list(RESULT_COLUMNS))


def _errors(t: pa.Table) -> pa.Table:
    return t.filter(pc.equal(t["status"], "error")).select(list(RESULT_COLUMNS))


def _candidates(t: pa.Table) -> Optional[pa.Table]:
    recs = t["records"]
    flat = pc.list_flatten(recs)
    if len(flat) == 0:
        return None
    parents = pc.list_parent_indices(recs)
    table = pa.Table.from_struct_array(flat)
    return table.append_column("graph_path", pc.take(t["stsg_path"], parents))


TABLES = (TableSpec("results", _results), TableSpec("errors", _errors), TableSpec("_work/candidates", _candidates))


def stsg_output(folder: str) -> Optional[TableArgument]:
    """The graphs of the last complete ``stsg`` run into ``folder`` (read from its results table), if it is
    such an output; else None (then it is searched for ``*.stsg.json`` files)."""
    from step_ray.pipeline.stsg_run import last_run_files

    if not storage.is_dir(folder) or not storage.exists(storage.join(folder, "summary.json")):
        return None
    files = last_run_files(folder)
    return TableArgument(tuple(files), uri_column="stsg_path", id_column="video_id") if files else None


def run(cfg: StepRayConfig, inputs: Sequence[str], out_dir: str, use_ray: bool = True) -> dict:
    out = str(out_dir)
    items: list[Any] = []
    for item in map(str, inputs):
        table = stsg_output(item)
        if table is None:
            check_arguments([item], (STSG_SUFFIX,), manifests=False)
        items.append(table or item)
    flow = flow_for(use_ray, cfg.ray)
    for folder in ("results", "errors", "_work"):  # this run's tables (sampling is redone in full)
        storage.delete_dir(storage.join(out, folder))
    run_id = new_run_id()
    stage = QraStage.from_config(cfg)
    listing = InputListing(items, (STSG_SUFFIX,), manifests=False, previous_type=NO_PREVIOUS,
                           strip_suffix=STSG_SUFFIX)
    sink = PartSink(out, run_id, TABLES, ROWS_PER_FILE)
    start = time.perf_counter()
    work = storage.join(out, "_work")
    batches, graphs = flow.inputs(listing, block_rows=stage.pool.batch_size, scratch=storage.join(work, "inputs"))
    if graphs:
        flow.write(flow.stages(batches, [stage]), sink)
    done = finish_corpus(flow, sink.files("_work/candidates"), work, out, cfg.qra, cfg.run.seed)
    _publish(done, out)
    seconds = time.perf_counter() - start
    summary = summarise(flow, sink, done, seconds)
    summary.update(run=run_id, output=out, parts=done["parts"], card_stats=card_stats(done))
    return summary


def _publish(done: dict, out: str) -> None:
    """Move the finished parts into the output folder and remove stale parts of earlier runs."""
    src = done["done_dir"]
    for name in storage.list_dir(src):
        fs, a = storage.filesystem(storage.join(src, name))
        _, b = storage.filesystem(storage.join(out, name))
        fs.move(a, b)
    R.remove_parts(out, keep=done["parts"])
    storage.delete_dir(storage.join(out, "_work"))


def summarise(flow: Any, sink: PartSink, done: dict, seconds: float) -> dict[str, Any]:
    """The step's summary: per-graph counts and reasons from aggregations over the results table, sample
    counts from the finishing passes' tallies."""
    res = {k: Counter(v) for k, v in _result_tallies(flow, sink).items()}
    t = done["tallies"]
    by_steps: Counter = Counter()
    by_family: Counter = Counter()
    for (steps, fam, _), n in t.get("steps_family", {}).items():
        by_steps[steps] += n
        by_family[fam] += n
    answers = {(fam, ans): n for (fam, ans, _), n in t.get("answer", {}).items()}
    errors = flow.first_rows(sink.files("errors"), ["video_id", "error"], "video_id", EXAMPLES)
    without = flow.first_rows(sink.files("results"), ["video_id", "reason"], "video_id", EXAMPLES,
                              filter=(pc.field("status") == "ok") & (pc.field("samples") == 0))
    graphs = sum(res.get("status", {}).values())
    failed = res.get("status", {}).get(("error", "", ""), 0)
    return {
        "graphs": graphs,
        "graphs_failed": failed,
        "graphs_without_samples": {r["video_id"]: r["reason"] for r in without},
        "graphs_without_samples_total": sum(res.get("no_samples", {}).values()),
        "errors": {r["video_id"]: r["error"] for r in errors},
        "errors_total": failed,
        "duplicates": {vid: path for vid, path in done["duplicates"][:EXAMPLES]},
        "candidates": done["candidates"],
        "samples": sum(by_steps.values()),
        "by_steps": dict(sorted(by_steps.items(), key=lambda kv: int(kv[0]))),
        "by_family": dict(sorted(by_family.items())),
        "by_split": dict(sorted((sp, n) for (sp, _, _), n in t.get("split", {}).items())),
        "dropped_balance": done["dropped_balance"],
        "dropped_options": done["dropped_options"],
        "answer_shares": answer_shares_from(answers),
        "rejected": dict(sorted((k, n) for (k, _, _), n in res.get("rejected", {}).items())),
        "seconds": round(seconds, 2),
    }


def _result_tally(path: str) -> pa.Table:
    import pyarrow.parquet as pq

    t = Tally()
    fs, p = storage.filesystem(path)
    with fs.open_input_file(p) as f:
        table = pq.read_table(f, columns=["status", "samples", "rejected"])
    for status, samples, rejected in zip(table["status"].to_pylist(), table["samples"].to_pylist(),
                                         table["rejected"].to_pylist()):
        t.add("status", status)
        if status == "ok" and not samples:
            t.add("no_samples")
        for reason, n in rejected or []:
            t.add("rejected", reason, n=n)
    return t.table()


def _result_tallies(flow: Any, sink: PartSink) -> dict[str, Counter]:
    from step_ray.utils.tally import tally_dict

    return tally_dict(flow.map_reduce(sink.files("results"), _result_tally))


def card_stats(done: dict) -> dict:
    from step_ray.qra.card import card_stats_from_tallies

    return card_stats_from_tallies(done["tallies"])
