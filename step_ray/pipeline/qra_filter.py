"""The ``qra-filter`` step, streaming: QRA parts -> the filter's actors -> verdicts -> QRA parts written back.

::

    QRA parts (a folder, local or ``s3://`` / ``gs://``; or one file)
      ─► ReadParts: the columns the filter reads, in blocks of ``qra.filter.pool.batch_size``
      ─► qra-filter (:class:`QraFilter`, actor pool ``qra.filter.pool``; the model loaded once per actor)
      ─► _work/filter/verdicts/<run>/part-*.parquet   (one verdict per sample, with the part it came from)
      ─► a shuffle of the verdicts by part: each part's records joined with its verdicts, flags set, flagged
         samples dropped (``qra.filter.action: drop``) ─► part-NNNNN.parquet (+ .jsonl), same index as its input
      ─► published into the output folder (stale parts removed), filter.json

Nothing the size of the corpus reaches the driver: the records travel from their parts to the actors and back
to their parts, and the summary comes from tallies (:mod:`step_ray.utils.tally`). The input and the output
may be the same folder (``step-ray qra`` with ``qra.filter.enabled``): the parts are replaced only once every
new part is written.

The decisions are those of :mod:`step_ray.qra.filter` (option orders seeded by the sample id and ``run.seed``,
the vote, the flags), so the same model, samples and seed keep the same samples whatever the number of actors.
"""

from __future__ import annotations

import dataclasses
import time
from collections import Counter
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Callable, ClassVar, Optional

import pyarrow as pa
import pyarrow.compute as pc

from step_ray.config import ModelConfig, QraFilterConfig, StepRayConfig
from step_ray.pipeline.dataflow import (STREAM_IO_CPUS, PartSink, TableSpec, flow_for, new_run_id, parquet_blocks,
                                        parquet_parts, run_files, runs_of)
from step_ray.qra import records as R
from step_ray.qra.card import card_stats_from_tallies
from step_ray.qra.corpus import tally_records
from step_ray.qra.filter import apply_verdict, permutations, verdict
from step_ray.stage import Row, RowStage, config_key, runtime_field, schema
from step_ray.utils import storage
from step_ray.utils.tally import Tally, tally_dict

#: The record fields the filter reads (a subset of :data:`~step_ray.qra.records.QRA_SCHEMA`; ``times`` is
#: empty for files older than ``qra/3``: frames are then spread over the span).
INPUTS = schema(("id", pa.string()), ("video_uri", pa.string()), ("start", pa.float64()), ("end", pa.float64()),
                ("times", pa.list_(pa.float64())), ("question", pa.string()), ("options", pa.list_(pa.string())),
                ("answer", pa.string()), ("answer_index", pa.int64()))
#: One verdict per sample: ``consistency`` (share of the asks that chose ``pick``, the option index picked
#: most often) and the filter's ``flags``; both null when the video could not be read (flag ``unreadable_video``).
OUTPUTS = schema(("id", pa.string()), ("status", pa.string()), ("error", pa.string()), ("consistency", pa.float64()),
                 ("pick", pa.int64()), ("flags", pa.list_(pa.string())))
#: The column carried beside the stage's outputs: the index of the part a sample came from.
PART = "_part"
#: Verdicts per verdicts file.
ROWS_PER_FILE = 1024
#: Error examples kept per part for the summary.
EXAMPLES = 20
#: Consistencies are summed in tallies (integers) in units of 1e-9.
NANO = 1_000_000_000
#: The tables the stage's output goes to.
TABLES = (TableSpec("verdicts", lambda t: t),)


#: ``load_model(model_cfg, source, seed) -> VideoLLM``: how an actor gets the model it asks (the step hands
#: :func:`step_ray.models.runtime.load_llm`; tests may hand another).
ModelLoader = Callable[[ModelConfig, Optional[str], int], Any]


@dataclass(kw_only=True)
class QraFilter(RowStage):
    """STEP's model-side filter as a stage: one QRA sample in, the model's verdict on it out (see
    :mod:`step_ray.qra.filter` for the rules). The model is loaded once per actor, in :meth:`setup`."""

    name: ClassVar[str] = "qra-filter"
    pool_path: ClassVar[str] = "qra.filter.pool"
    row_key: ClassVar[str] = "id"
    inputs: ClassVar[pa.Schema] = INPUTS
    outputs: ClassVar[pa.Schema] = OUTPUTS

    qra: QraFilterConfig = field(metadata={"config": "qra.filter"})  # qra.filter: asks, agreement, the model
    model: ModelConfig
    seed: int = field(default=0, metadata={"config": "run.seed"})
    load_model: Optional[ModelLoader] = runtime_field(None)

    def setup(self) -> None:
        import torch

        if self.load_model is None:
            raise RuntimeError("the qra-filter stage needs a model loader: build it with "
                               "QraFilter.from_config(cfg, load_model=step_ray.models.runtime.load_llm)")
        torch.manual_seed(self.seed)
        self.llm = self.load_model(self.model, self.qra.model, self.seed)

    def teardown(self) -> None:
        self.llm = None

    def process_row(self, row: Row) -> Row:
        import numpy as np

        from step_ray.models.inputs import FrameDecodeError, frames_for_row

        base = {"id": row["id"]}
        try:
            frames = frames_for_row(row, self.llm.model_cfg)
        except FrameDecodeError as err:
            return {**base, "status": "ok", "error": f"unreadable video: {err}", "consistency": None, "pick": None,
                    "flags": ["unreadable_video"]}
        options = list(row["options"])
        perms = permutations(row["id"], len(options), self.qra.asks, self.seed)
        asked = [dict(row, options=[options[j] for j in p]) for p in perms]
        scores = self.llm.score_options(asked, [frames] * len(asked))
        picks = [p[int(np.argmax(s))] for p, s in zip(perms, scores)]
        consistency, pick, flags = verdict(picks, int(row["answer_index"]), self.qra.min_agreement,
                                           self.qra.require_correct)
        return {**base, "status": "ok", "error": None, "consistency": consistency, "pick": pick, "flags": flags}


# --------------------------------------------------------------------------------------------- inputs


def part_index(path: str, position: int) -> int:
    """The index of a QRA file: NNNNN of ``part-NNNNN.parquet``, else its position among the inputs (a
    ``qra.parquet`` of an older run, a single file)."""
    m = R.PART_PATTERN.match(path.rstrip("/").rsplit("/", 1)[-1])
    return int(m.group(1)) if m else position


def stage_columns(table: pa.Table, index: int) -> pa.Table:
    """The filter's input columns of a block of QRA rows (``times`` empty where the file has none) and the
    part they came from."""
    n = table.num_rows
    cols = {}
    for f in INPUTS:
        if f.name in table.column_names:
            cols[f.name] = table[f.name].cast(f.type)
        elif f.name == "times":
            cols[f.name] = pa.array([[]] * n, f.type)
        else:
            raise R.QraFormatError(f"QRA rows without {f.name!r}")
    cols[PART] = pa.array([index] * n, pa.int64())
    return pa.table(cols)


class _StageColumns:
    """:func:`stage_columns` of the ``i``-th of ``files`` (the read tasks know files by position), without the
    samples that already have a verdict (their ids in ``done/part-NNNNN.parquet``, from an earlier run)."""

    def __init__(self, files: list[str], done: Optional[str] = None):
        self.indices = [part_index(f, i) for i, f in enumerate(files)]
        self.done = done

    def __call__(self, table: pa.Table, i: int) -> pa.Table:
        index = self.indices[i]
        if self.done is not None:
            path = storage.join(self.done, R.part_name(index))
            if storage.exists(path):
                import pyarrow.parquet as pq

                fs, p = storage.filesystem(path)
                with fs.open_input_file(p) as f:
                    done = pq.read_table(f)["id"]
                table = table.filter(pc.invert(pc.is_in(table["id"], value_set=done.combine_chunks())))
        return stage_columns(table, index)


def _rows_in(files: list[str]) -> int:
    import pyarrow.parquet as pq

    total = 0
    for f in files:
        fs, p = storage.filesystem(f)
        with fs.open_input_file(p) as fh:
            total += pq.ParquetFile(fh).metadata.num_rows
    return total


def check_inputs(files: list[str]) -> None:
    """Every input file a QRA file this code reads (:class:`~step_ray.qra.records.QraFormatError` if not);
    reads only the schemas."""
    import pyarrow.parquet as pq

    for f in files:
        fs, p = storage.filesystem(f)
        with fs.open_input_file(p) as fh:
            R.check_schema(pq.read_schema(fh), f)


# --------------------------------------------------------------------------------------------- finishing


def finish_part(verdicts: pa.Table, files: dict[int, str], out_folder: str, action: str) -> pa.Table:
    """One part: its records (read from its input file) with their verdicts (``verdicts``: the verdict rows
    of the samples of that part, possibly none) applied; written as a QRA part of the same index into
    ``out_folder``. Tallies: samples, kept, dropped, errors, flags, consistency, the part written."""
    index = int(verdicts[PART][0].as_py())
    return _finish(index, files[index], verdicts, out_folder, action)


def finish_unjudged(index: int, files: dict[int, str], out_folder: str, action: str) -> pa.Table:
    """A part none of whose samples came back with a verdict (never expected): kept, flagged filter_error."""
    return _finish(index, files[index], OUTPUTS.empty_table(), out_folder, action)


def _finish(index: int, path: str, verdicts: pa.Table, out_folder: str, action: str) -> pa.Table:
    t = Tally()
    t.add("seen", index)
    by_id: dict[str, Row] = {}
    for v in verdicts.select(OUTPUTS.names).to_pylist():  # an ok verdict over an error of an earlier run
        if v["id"] not in by_id or (by_id[v["id"]]["status"] != "ok" and v["status"] == "ok"):
            by_id[v["id"]] = v
    kept = []
    errors = 0
    for rec in R.read_parquet(path):
        t.add("samples")
        res = by_id.get(rec["id"])
        if res is None:
            res = {"status": "error", "error": "no verdict came back for it"}
        out, flags = apply_verdict(rec, res, action)
        if res["status"] != "ok":
            t.add("errors")
            if errors < EXAMPLES:
                t.add("error", rec["id"], str(res.get("error")))
            errors += 1
        for flag in flags:
            t.add("flag", flag)
        if out is None:
            t.add("dropped")
            continue
        kept.append(out)
        t.add("kept")
        if out.get("consistency") is not None:
            t.add("scored")
            t.add("consistency_nano", n=int(round(out["consistency"] * NANO)))
    tally_records(kept, t)  # what the dataset card counts, so the step never reads the parts back
    if kept:
        R.write_part(kept, out_folder, index)
        t.add("part", R.part_name(index))
    return t.table()


def _verdict_part(t: pa.Table) -> pa.Array:
    return t[PART]


# --------------------------------------------------------------------------------------------- the step


def run(cfg: StepRayConfig, qra: str, out_dir: str, use_ray: bool = True, model: Optional[str] = None,
        load_model: Optional[ModelLoader] = None) -> dict[str, Any]:
    """Filter the QRA output ``qra`` into ``out_dir`` (both local or on an object store, possibly the same
    folder); the summary. ``model`` overrides ``qra.filter.model``; ``load_model`` the model loader.

    The verdicts are kept in ``out_dir/_work/filter/<key>/`` until the parts are published, ``key`` hashing
    the stage (its config sections) and the input files' content: a re-run after an interruption asks the
    model only about the samples without an ``ok`` verdict yet."""
    from step_ray.utils.pool_fit import check_pool_fit

    if load_model is None:
        from step_ray.models.runtime import load_llm

        load_model = load_llm
    out = str(out_dir)
    files = R.qra_files(qra)
    check_inputs(files)
    fcfg = cfg.qra.filter if model is None else dataclasses.replace(cfg.qra.filter, model=model)
    check_pool_fit(cfg, "qra.filter.pool", use_ray=use_ray)
    flow = flow_for(use_ray, cfg.ray)
    stage = QraFilter.from_config(cfg, qra=fcfg, load_model=load_model)
    start = time.perf_counter()
    work = _work_folder(out, stage, files)
    earlier = run_files(work, "verdicts", runs_of(work, "verdicts"))
    done_ids = storage.join(work, "done")
    reused = 0
    if earlier:  # an interrupted run of this stage over these inputs: its ok verdicts, by part
        reused = sum(tally_dict(flow.shuffle(earlier, _verdict_part, partial(write_done, folder=done_ids)))
                     .get("done", {}).values())
    samples = _rows_in(files)
    sink = PartSink(work, new_run_id(), TABLES, ROWS_PER_FILE)
    if samples > reused:
        columns = _StageColumns(files, done_ids if reused else None)
        rows = max(1, stage.pool.batch_size)
        if flow.is_ray:
            import ray.data

            source = parquet_parts(files, rows, transform=columns,
                                   schema=pa.schema(list(INPUTS) + [pa.field(PART, pa.int64())]))
            batches = ray.data.read_datasource(source, num_cpus=STREAM_IO_CPUS)
        else:
            batches = (b for i, f in enumerate(files) for b in parquet_blocks(f, rows, columns, i))
        flow.write(flow.stages(batches, [stage], carry=[PART]), sink)
    by_index = {part_index(f, i): f for i, f in enumerate(files)}
    done_dir = storage.join(work, "out")
    args = dict(files=by_index, out_folder=done_dir, action=fcfg.action)
    verdicts = earlier + sink.files("verdicts")
    tallies = tally_dict(flow.shuffle(verdicts, _verdict_part, partial(finish_part, **args)))
    seen = {int(a) for (a, _, _) in tallies.get("seen", {})}
    unjudged = [i for i in sorted(by_index) if i not in seen]
    if unjudged:
        for kind, counts in tally_dict(flow.map_reduce(unjudged, partial(finish_unjudged, **args))).items():
            tallies.setdefault(kind, Counter()).update(counts)
    parts = sorted(a for (a, _, _) in tallies.get("part", {}))
    if not parts:  # every sample dropped: an empty part keeps the folder a QRA output (readers see 0 rows)
        R.write_part([], done_dir, 0)
        parts = [R.part_name(0)]
    publish(done_dir, out, parts)
    storage.delete_dir(storage.join(storage.join(out, "_work"), "filter"))
    _remove_if_empty(storage.join(out, "_work"))
    summary = summarise(tallies, fcfg, cfg, parts, time.perf_counter() - start)
    summary["reused_verdicts"] = reused
    summary["card_stats"] = card_stats_from_tallies(tallies)
    return summary


def _work_folder(out: str, stage: QraFilter, files: list[str]) -> str:
    """This run's scratch folder, ``out/_work/filter/<key>``; other keys' folders (another config, other
    inputs) and this one's unfinished outputs are removed."""
    key = config_key(stage.key(), [[f.rstrip("/").rsplit("/", 1)[-1], storage.content_key(f)] for f in files])
    root = storage.join(storage.join(out, "_work"), "filter")
    for name in storage.list_dir(root):
        if name != key:
            storage.delete_dir(storage.join(root, name))
    work = storage.join(root, key)
    for name in ("done", "out"):
        storage.delete_dir(storage.join(work, name))
    return work


def write_done(verdicts: pa.Table, folder: str) -> pa.Table:
    """The ids of one part's ``ok`` verdicts (of earlier runs) as ``folder/part-NNNNN.parquet``; tally: how many."""
    t = Tally()
    index = int(verdicts[PART][0].as_py())
    ok = verdicts.filter(pc.equal(verdicts["status"], "ok"))
    ids = pc.unique(ok["id"])
    if len(ids):
        storage.write_parquet(storage.join(folder, R.part_name(index)), pa.table({"id": ids}))
        t.add("done", n=len(ids))
    return t.table()


def publish(src: str, out: str, parts: list[str]) -> None:
    """Move the new parts (and their JSONL twins) from ``src`` into ``out``; remove the other parts of ``out``."""
    for name in storage.list_dir(src):
        fs, a = storage.filesystem(storage.join(src, name))
        _, b = storage.filesystem(storage.join(out, name))
        fs.move(a, b)
    R.remove_parts(out, keep=parts)


def _remove_if_empty(folder: str) -> None:
    if storage.is_dir(folder) and not storage.list_dir(folder):
        storage.delete_dir(folder)


def summarise(tallies: dict[str, Counter], fcfg: QraFilterConfig, cfg: StepRayConfig, parts: list[str],
              seconds: float) -> dict[str, Any]:
    def total(kind: str) -> int:
        return sum(tallies.get(kind, {}).values())

    scored = total("scored")
    errors = sorted((a, b) for (a, b, _) in tallies.get("error", {}))
    return {
        "samples": total("samples"),
        "kept": total("kept"),
        "dropped": total("dropped"),
        "errors": total("errors"),
        "error_examples": dict(errors[:EXAMPLES]),
        "flags": {a: n for (a, _, _), n in sorted(tallies.get("flag", {}).items())},
        "mean_consistency": round(total("consistency_nano") / NANO / scored, 4) if scored else None,
        "asks": fcfg.asks,
        "action": fcfg.action,
        "model": fcfg.model or f"base:{cfg.model.name_or_path}",
        "parts": parts,
        "seconds": round(seconds, 2),
    }
