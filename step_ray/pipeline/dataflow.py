"""How a step's data moves: inputs listed lazily as a source, stages, sharded Parquet sinks, aggregations.

A step is written once against a *flow* and runs on either of two:

* :class:`RayFlow` — Ray Data end to end. Inputs are listed inside read tasks (:class:`InputListing`: one
  task per ``--input`` argument, yielding small blocks as it walks a folder, a prefix or a manifest), ids are
  made unique by a ``groupby`` on the requested id, blocks are re-cut to each stage's batch size, stages run
  on their actor pools (:func:`~step_ray.ray_executor.map_stages`), and rows reach Parquet tables through
  :class:`PartSink` as they come. Summaries are aggregations combined on the map side (a row per group
  per block) and summed on the driver as they stream in; nothing the size of the corpus is ever collected
  on the driver.
* :class:`LocalFlow` — the same in this process with plain Python (tests, debugging, ``--no-ray``); it keeps
  the id bookkeeping in memory, which is fine at the sizes it is for.

Tables are written as ``{root}/{table}/{run}/part-*.parquet`` (a *run* is one invocation of a step, ids
sortable by time), so a killed run loses only the rows of the bundles that were still being written, and a
re-run can read what the runs before it finished.
"""

from __future__ import annotations

import dataclasses
import time
import uuid
from typing import Any, Callable, Iterable, Iterator, Optional, Sequence

import pyarrow as pa
import pyarrow.compute as pc

from step_ray.stage import run_local
from step_ray.stage import Stage
from step_ray.utils import storage
from step_ray.utils.inputs import id_problem, input_name, iter_argument, unique_ids
from step_ray.utils.tally import TALLY_KEYS, TALLY_SCHEMA

#: CPUs asked for by the flow's own small tasks (listing, reads, id assignment, writes) that run beside the
#: stages' actor pools: Ray Data's default of one CPU each would wait behind the pools on a small cluster.
TASK_CPUS = 0.25
#: CPUs asked for by the reads that feed the stages and the writes that drain them: none, so they are never
#: stuck behind actor pools that hold every CPU (pools at min_size = the whole cluster would otherwise hang
#: the run). They only move a few hundred bytes a row; Ray Data bounds how many run at once.
STREAM_IO_CPUS = 0
#: Rows per block of the listing read tasks (before ids are assigned; listing rows are a few hundred bytes).
LISTING_BLOCK_ROWS = 1000
#: Data shuffles over less than this many bytes of Parquet use Ray Data's task-based sort shuffle instead of
#: its default actor-based one (see :func:`_shuffled_by`).
SMALL_SHUFFLE_BYTES = 2 << 30


def new_run_id() -> str:
    """Sortable by start time, unique across machines: ``20260101T120000-1a2b3c``."""
    return time.strftime("%Y%m%dT%H%M%S", time.gmtime()) + "-" + uuid.uuid4().hex[:6]


# --------------------------------------------------------------------------------------------- inputs


@dataclasses.dataclass(frozen=True)
class TableArgument:
    """Inputs read from rows of Parquet files (a previous step's results table): ``uri_column`` is the input,
    ``id_column`` its id; only rows where ``filter_column == filter_value``."""

    files: tuple[str, ...]
    uri_column: str
    id_column: str
    filter_column: str = "status"
    filter_value: str = "ok"


@dataclasses.dataclass(frozen=True)
class Previous:
    """Rows of earlier runs of a step (its results tables) to hand each input the latest row of its id."""

    files: tuple[str, ...]
    row_type: pa.DataType  # the struct type of a results row (the stage's ``previous`` input column)


#: Rows entering id assignment: inputs (``kind="input"``) and earlier results (``kind="previous"``).
def assign_schema(previous_type: pa.DataType) -> pa.Schema:
    return pa.schema([("name", pa.string()), ("uri", pa.string()), ("kind", pa.string()), ("run", pa.string()),
                      ("previous", previous_type)])


def output_schema(previous_type: pa.DataType) -> pa.Schema:
    """What id assignment yields: one row per distinct input, with its id, a reason if the id is unusable,
    and the latest earlier results row of that id (or null)."""
    return pa.schema([("video_id", pa.string()), ("uri", pa.string()), ("name", pa.string()),
                      ("input_error", pa.string()), ("previous", previous_type)])


def _iter_listing(item: Any, suffixes: tuple[str, ...], manifests: bool, strip_suffix: str = ""
                  ) -> Iterator[tuple[str, str]]:
    """``(uri, requested id)`` of one argument (``strip_suffix``: a file-name ending that is not part of the
    id, such as ``.stsg.json``)."""
    if isinstance(item, TableArgument):
        import pyarrow.dataset as pads

        for path in item.files:
            fs, p = storage.filesystem(path)
            ds = pads.dataset(p, filesystem=fs, format="parquet")
            flt = pc.field(item.filter_column) == item.filter_value
            for batch in ds.to_batches(columns=[item.uri_column, item.id_column], filter=flt):
                for uri, vid in zip(batch.column(0).to_pylist(), batch.column(1).to_pylist()):
                    yield uri, vid
        return
    for uri, vid in iter_argument(item, suffixes, manifests):
        base = uri.rstrip("/").rsplit("/", 1)[-1]
        if vid is None and strip_suffix and base.lower().endswith(strip_suffix):
            yield uri, base[: -len(strip_suffix)]
        else:
            yield uri, input_name(uri, vid)


def _listing_blocks(item: Any, suffixes: tuple[str, ...], manifests: bool, previous_type: pa.DataType,
                    strip_suffix: str = "") -> Iterator[pa.Table]:
    schema = assign_schema(previous_type)
    buf: list[tuple[str, str]] = []

    def block() -> pa.Table:
        return pa.table({"name": [n for _, n in buf], "uri": [u for u, _ in buf], "kind": ["input"] * len(buf),
                         "run": pa.nulls(len(buf), pa.string()), "previous": pa.nulls(len(buf), previous_type)},
                        schema=schema)

    for uri, name in _iter_listing(item, suffixes, manifests, strip_suffix):
        buf.append((uri, name))
        if len(buf) >= LISTING_BLOCK_ROWS:
            yield block()
            buf = []
    if buf:
        yield block()


def _previous_blocks(files: Sequence[str], previous_type: pa.DataType) -> Iterator[pa.Table]:
    """Earlier results rows as id-assignment rows (``kind="previous"``)."""
    import pyarrow.dataset as pads

    names = [previous_type.field(i).name for i in range(previous_type.num_fields)]
    for path in files:
        fs, p = storage.filesystem(path)
        for batch in pads.dataset(p, filesystem=fs, format="parquet").to_batches():
            yield _previous_table(pa.Table.from_batches([batch]), names, previous_type)


def _previous_table(t: pa.Table, names: list[str], previous_type: pa.DataType) -> pa.Table:
    arrays = [t[n] if n in t.column_names else pa.nulls(t.num_rows, previous_type.field(n).type) for n in names]
    struct = pa.StructArray.from_arrays([a.combine_chunks() if isinstance(a, pa.ChunkedArray) else a
                                         for a in arrays], fields=list(previous_type))
    name = t["name"] if "name" in t.column_names else t["video_id"]
    table = pa.table({"name": name, "uri": t["uri"], "kind": pa.array(["previous"] * t.num_rows, pa.string()),
                      "run": t["run"] if "run" in t.column_names else pa.nulls(t.num_rows, pa.string()),
                      "previous": struct})
    return table.cast(assign_schema(previous_type))


def assign_group(group: pa.Table) -> pa.Table:
    """One id-assignment group (every row asking for one name): the distinct inputs with unique ids
    (:func:`~step_ray.utils.inputs.unique_ids`), an ``input_error`` for an id that cannot name a file, and
    the latest earlier row (by run) of each id."""
    previous_type = group.schema.field("previous").type
    rows = group.to_pylist()
    if not rows:
        return pa.Table.from_pylist([], schema=output_schema(previous_type))
    name = rows[0]["name"]
    uris = [r["uri"] for r in rows if r["kind"] == "input"]
    latest: dict[str, tuple[str, dict]] = {}
    for r in rows:
        p = r["previous"]
        if r["kind"] == "previous" and p is not None:
            run = r["run"] or ""
            if p["video_id"] not in latest or run > latest[p["video_id"]][0]:
                latest[p["video_id"]] = (run, p)
    out = [{"video_id": vid, "uri": uri, "name": name, "input_error": id_problem(vid),
            "previous": latest.get(vid, (None, None))[1]}
           for uri, vid in sorted(unique_ids(name, uris).items())] if uris else []
    return pa.Table.from_pylist(out, schema=output_schema(previous_type))


class InputListing:
    """A Ray Data source of the inputs that ``items`` name: one read task per argument, each listing lazily
    and yielding blocks of :data:`LISTING_BLOCK_ROWS` rows (:data:`assign_schema`)."""

    def __init__(self, items: Sequence[Any], suffixes: tuple[str, ...], manifests: bool,
                 previous_type: pa.DataType, strip_suffix: str = ""):
        self.items, self.suffixes, self.manifests = list(items), suffixes, manifests
        self.previous_type, self.strip_suffix = previous_type, strip_suffix

    def blocks(self) -> Iterator[pa.Table]:
        for item in self.items:
            yield from self.read(item)

    def read(self, item: Any) -> Iterator[pa.Table]:
        return _listing_blocks(item, self.suffixes, self.manifests, self.previous_type, self.strip_suffix)

    def datasource(self) -> Any:
        from ray.data.block import BlockMetadata
        from ray.data.datasource import Datasource, ReadTask

        listing = self

        class ListInputs(Datasource):
            def estimate_inmemory_data_size(self) -> Optional[int]:
                return None

            def get_read_tasks(self, parallelism: int, per_task_row_limit: Optional[int] = None, **_: Any):
                meta = BlockMetadata(num_rows=None, size_bytes=None, input_files=None, exec_stats=None)
                return [ReadTask(lambda item=item: listing.read(item), meta,
                                 schema=assign_schema(listing.previous_type)) for item in listing.items]

            def get_name(self) -> str:
                return "ListInputs"

        return ListInputs()


def read_listing(listing: InputListing) -> Any:
    """``listing`` as a lazy Ray Dataset of one read task per argument, each in at most its own blocks of
    :data:`LISTING_BLOCK_ROWS` rows (Ray Data may merge them up to its target block size).

    ``override_num_blocks`` is the number of read tasks (one per argument), so Ray Data does not split the read
    into ``read_op_min_num_blocks`` (200) blocks: the id assignment's sort shuffle runs a map task per block,
    and 300 inputs split 200 ways took 149 s to get their ids on 2 slow cores, in 400 tasks of a few rows."""
    import ray.data

    return ray.data.read_datasource(listing.datasource(), num_cpus=TASK_CPUS,
                                    override_num_blocks=max(1, len(listing.items)))


def parquet_blocks(path: str, rows: int, transform: Optional[Callable[[pa.Table, int], pa.Table]] = None,
                   index: int = 0) -> Iterator[pa.Table]:
    """The rows of one Parquet file in blocks of at most ``rows`` (``transform(table, index)`` applied first)."""
    for table in _read_batches([path], None):
        if transform is not None:
            table = transform(table, index)
        for start in range(0, table.num_rows, rows):
            yield table.slice(start, rows)


def parquet_parts(files: Sequence[str], block_rows: int = 1 << 20,
                  transform: Optional[Callable[[pa.Table, int], pa.Table]] = None,
                  schema: Optional[pa.Schema] = None) -> Any:
    """A Ray Data datasource with one read task per Parquet file of ``files`` (local or on an object store),
    each yielding blocks of at most ``block_rows`` rows; ``transform(table, index)`` (with ``schema``, what
    it returns) turns the rows of the ``index``-th file into the blocks (columns picked, defaults filled)."""
    import pyarrow.parquet as pq
    from ray.data.block import BlockMetadata
    from ray.data.datasource import Datasource, ReadTask

    files = list(files)
    if schema is None:
        fs, p = storage.filesystem(files[0])
        with fs.open_input_file(p) as f:
            schema = pq.read_schema(f)

    class ParquetParts(Datasource):
        def estimate_inmemory_data_size(self) -> Optional[int]:
            return None

        def get_read_tasks(self, parallelism: int, per_task_row_limit: Optional[int] = None, **_: Any):
            meta = BlockMetadata(num_rows=None, size_bytes=None, input_files=None, exec_stats=None)
            return [ReadTask(lambda path=path, i=i: parquet_blocks(path, block_rows, transform, i), meta, schema=schema)
                    for i, path in enumerate(files)]

        def get_name(self) -> str:
            return "ReadParts"

    return ParquetParts()


# --------------------------------------------------------------------------------------------- sinks


@dataclasses.dataclass(frozen=True)
class TableSpec:
    """One output table of a sink: ``select`` turns a batch of stage output into its rows (or None)."""

    name: str
    select: Callable[[pa.Table], Optional[pa.Table]]


def _all_rows(t: pa.Table) -> pa.Table:
    return t


class PartSink:
    """Writes each bundle of stage output as one Parquet part per table: ``{root}/{table}/{run}/part-*.parquet``
    (with a ``run`` column). Part names are stable per write task, so a retried task overwrites its own part
    instead of duplicating rows."""

    def __init__(self, root: str, run: str, tables: Sequence[TableSpec], rows_per_file: int):
        self.root, self.run, self.tables, self.rows_per_file = str(root), run, list(tables), rows_per_file
        self.token = uuid.uuid4().hex[:8]

    def path(self, table: str, index: str) -> str:
        return storage.join(storage.join(storage.join(self.root, table), self.run), f"part-{self.token}-{index}.parquet")

    def write_batch(self, batch: pa.Table, index: str) -> dict[str, int]:
        written = {}
        for spec in self.tables:
            rows = spec.select(batch)
            if rows is None or rows.num_rows == 0:
                continue
            rows = rows.append_column("run", pa.array([self.run] * rows.num_rows, pa.string()))
            storage.write_parquet(self.path(spec.name, index), rows)
            written[spec.name] = rows.num_rows
        return written

    def files(self, table: str) -> list[str]:
        return run_files(self.root, table, [self.run])

    def datasink(self) -> Any:
        from ray.data.datasource.datasink import Datasink

        sink = self

        class PartDatasink(Datasink):
            def write(self, blocks, ctx) -> None:
                from ray.data.block import BlockAccessor

                tables = [t for t in (BlockAccessor.for_block(b).to_arrow() for b in blocks) if t.num_rows]
                if tables:
                    sink.write_batch(pa.concat_tables(tables, promote_options="none"), f"{ctx.task_idx:06d}")

            @property
            def min_rows_per_write(self) -> int:
                return sink.rows_per_file

            def get_name(self) -> str:
                return f"Write({'+'.join(t.name for t in sink.tables)})"

        return PartDatasink()


def run_files(root: str, table: str, runs: Iterable[str]) -> list[str]:
    """The Parquet parts of ``table`` written by ``runs``."""
    base = storage.join(str(root), table)
    out = []
    for run in runs:
        folder = storage.join(base, run)
        out += [storage.join(folder, n) for n in storage.list_dir(folder) if n.endswith(".parquet")]
    return out


def runs_of(root: str, table: str) -> list[str]:
    """Runs that wrote parts of ``table`` under ``root``, oldest first."""
    return [n for n in storage.list_dir(storage.join(str(root), table)) if not n.startswith((".", "_"))]


# --------------------------------------------------------------------------------------------- flows


class LocalFlow:
    """The flow in this process (see the module docstring)."""

    is_ray = False

    def inputs(self, listing: InputListing, previous: Optional[Previous] = None, block_rows: int = 1,
               scratch: str = "") -> tuple[Iterator[pa.Table], int]:
        """The inputs with unique ids, in blocks of ``block_rows``, and how many there are."""
        groups: dict[str, list[pa.Table]] = {}
        blocks = list(listing.blocks())
        if previous is not None:
            blocks += list(_previous_blocks(previous.files, previous.row_type))
        for b in blocks:
            for name in set(b["name"].to_pylist()):
                groups.setdefault(name, []).append(b.filter(pc.equal(b["name"], name)))
        out = [assign_group(pa.concat_tables(ts)) for _, ts in sorted(groups.items())]
        if not out:
            return iter(()), 0
        table = pa.concat_tables(out)
        return (table.slice(i, block_rows) for i in range(0, table.num_rows, max(1, block_rows))), table.num_rows

    def stages(self, batches: Iterable[pa.Table], stages: Sequence[Stage], carry: Sequence[str] = ()
               ) -> Iterator[pa.Table]:
        """``batches`` through ``stages`` (``carry``: input columns handed on beside their outputs)."""
        return run_local(batches, stages, carry)

    def write(self, batches: Iterable[pa.Table], sink: PartSink) -> None:
        pending: list[pa.Table] = []
        rows, index = 0, 0
        for batch in batches:
            pending.append(batch)
            rows += batch.num_rows
            if rows >= sink.rows_per_file:
                sink.write_batch(pa.concat_tables(pending), f"{index:06d}")
                pending, rows, index = [], 0, index + 1
        if pending:
            sink.write_batch(pa.concat_tables(pending), f"{index:06d}")

    def group_sums(self, files: Sequence[str], keys: Sequence[str], sums: Sequence[str]) -> list[dict]:
        """``SELECT keys, count(*) AS n, sum(c) ... GROUP BY keys`` over Parquet files."""
        acc = _Sums(keys, sums, count="n")
        for t in _read_batches(files, list(keys) + list(sums)):
            acc.add(combine_block(t, keys, sums, count="n"))
        return acc.rows()

    def first_rows(self, files: Sequence[str], columns: Sequence[str], order_by: str, limit: int,
                   filter: Any = None) -> list[dict]:
        """The first ``limit`` rows by ``order_by`` (where ``filter``, a pyarrow expression, holds)."""
        import pyarrow.dataset as pads

        top = _FirstRows(order_by, limit)
        for path in files:  # only the columns asked for, the filter pushed into the read
            fs, p = storage.filesystem(path)
            top.add(first_rows_block(pads.dataset(p, filesystem=fs, format="parquet").to_table(
                columns=list(columns), filter=filter), columns, order_by, limit))
        return top.rows()

    def map_reduce(self, items: Sequence[Any], fn: Callable[[Any], pa.Table]) -> list[dict]:
        acc = _Sums(TALLY_KEYS, ["n"])
        for item in items:
            acc.add(fn(item))
        return acc.rows()

    def shuffle(self, files: Sequence[str], key: Callable[[pa.Table], pa.Array],
                group_fn: Callable[[pa.Table], pa.Table]) -> list[dict]:
        """Rows of ``files`` grouped by ``key(batch)`` (an int per row), ``group_fn`` per group; tallies summed."""
        tables = list(_read_batches(files, None))
        if not tables:
            return []
        table = pa.concat_tables(tables)
        table = table.append_column("_group", key(table))
        groups = sorted(set(table["_group"].to_pylist()))
        return self.map_reduce(groups, lambda g: group_fn(table.filter(pc.equal(table["_group"], g)).drop(["_group"])))


class RayFlow:
    """The flow on Ray Data (see the module docstring). ``partitions``: hash partitions of its shuffles."""

    is_ray = True

    def __init__(self, partitions: Optional[int] = None):
        import ray

        cpus = int(ray.cluster_resources().get("CPU", 1))
        self.partitions = partitions or max(1, min(64, 2 * cpus))

    def inputs(self, listing: InputListing, previous: Optional[Previous] = None, block_rows: int = 1,
               scratch: str = "") -> tuple[Any, int]:
        """The inputs with unique ids as a lazy dataset in blocks of ``block_rows``, and how many there are.
        Id assignment is a groupby, a barrier: it runs as its own job and writes the inputs to ``scratch``
        (a few hundred bytes a row), so its shuffle never competes with the stages' actor pools for CPUs,
        and the stages then stream from there."""
        import pyarrow.parquet as pq
        import ray.data

        if not scratch:
            raise ValueError("RayFlow.inputs needs a scratch folder for the listed inputs")
        ds = read_listing(listing)
        if previous is not None and previous.files:
            prev = ray.data.read_parquet(list(previous.files), file_extensions=["parquet"],
                                         num_cpus=TASK_CPUS, override_num_blocks=len(previous.files))
            names = [previous.row_type.field(i).name for i in range(previous.row_type.num_fields)]
            prev = prev.map_batches(_previous_table, fn_args=(names, previous.row_type), batch_format="pyarrow",
                                    num_cpus=TASK_CPUS)
            ds = ds.union(prev)
        # Listing rows are a few hundred bytes (a million inputs: a few hundred MB): the task-based shuffle.
        ds = _shuffled_by(ds, small=True).groupby("name", num_partitions=self.partitions).map_groups(
            assign_group, batch_format="pyarrow", num_cpus=TASK_CPUS)
        sink = PartSink(scratch, "inputs", [TableSpec("ids", _all_rows)], LISTING_BLOCK_ROWS)
        self.write(ds, sink)
        files = sink.files("ids")
        count = 0
        for f in files:
            fs, p = storage.filesystem(f)
            with fs.open_input_file(p) as fh:
                count += pq.ParquetFile(fh).metadata.num_rows
        if not files:
            return ray.data.from_items([]), 0
        # Our own read tasks over the known part files, in blocks sized to the first stage's batch (every actor
        # gets work however large the corpus is, and no block of thousands of videos ends up on one actor).
        # Not ray.data.read_parquet + repartition: its ListFiles step and the StreamingRepartition tasks ask for
        # CPUs whatever num_cpus says, and wait for ever behind actor pools that hold every CPU.
        # No override_num_blocks here (unlike read_listing and the aggregations): a read task's blocks are merged
        # up to Ray Data's target block size, so a part file would become one block, one task, one actor; Ray's
        # default split of the read into read_op_min_num_blocks blocks is what spreads the rows over the actors.
        return ray.data.read_datasource(parquet_parts(files, max(1, block_rows)), num_cpus=STREAM_IO_CPUS), count

    def stages(self, ds: Any, stages: Sequence[Stage], carry: Sequence[str] = ()) -> Any:
        from step_ray.ray_executor import map_stages

        return map_stages(ds, stages, carry=carry)

    def write(self, ds: Any, sink: PartSink) -> None:
        ds.write_datasink(sink.datasink(), ray_remote_args={"num_cpus": STREAM_IO_CPUS})

    # The aggregations below combine on the map side (each block to one row per group) and sum the combined
    # rows on the driver as they stream in: the driver holds one entry per group, as a groupby would return.
    # Not Ray Data's groupby: its all-to-all exchange grew the driver by ~0.2 MB per input block per run
    # (measured on Ray 2.60: +69 MB for one sort-shuffle aggregation over 120 blocks, +25 MB on each repeat),
    # which at 100k inputs was most of the driver's growth (docs/scaling.md).

    def group_sums(self, files: Sequence[str], keys: Sequence[str], sums: Sequence[str]) -> list[dict]:
        import ray.data

        if not files:
            return []
        ds = ray.data.read_parquet(list(files), columns=list(keys) + list(sums), file_extensions=["parquet"],
                                   num_cpus=TASK_CPUS, override_num_blocks=len(files))  # see read_listing
        ds = ds.map_batches(combine_block, fn_args=(list(keys), list(sums)), fn_kwargs={"count": "n"},
                            batch_size=None, batch_format="pyarrow", num_cpus=TASK_CPUS)
        return _Sums(keys, sums, count="n").add_all(_blocks(ds)).rows()

    def first_rows(self, files: Sequence[str], columns: Sequence[str], order_by: str, limit: int,
                   filter: Any = None) -> list[dict]:
        import ray.data

        if not files:
            return []
        ds = ray.data.read_parquet(list(files), file_extensions=["parquet"], num_cpus=TASK_CPUS,
                                   override_num_blocks=len(files))
        ds = ds.map_batches(first_rows_block, fn_args=(list(columns), order_by, limit, filter), batch_size=None,
                            batch_format="pyarrow", num_cpus=TASK_CPUS)
        return _FirstRows(order_by, limit).add_all(_blocks(ds)).rows()

    def map_reduce(self, items: Sequence[Any], fn: Callable[[Any], pa.Table]) -> list[dict]:
        """``fn`` on each item in Ray tasks (one item per task), the tally rows summed by key."""
        import ray.data

        if not items:
            return []
        ds = ray.data.from_items([{"item": i} for i in items], override_num_blocks=len(items))
        ds = ds.map_batches(_MapItems(fn), batch_size=1, batch_format="pyarrow", num_cpus=1)
        return _Sums(TALLY_KEYS, ["n"]).add_all(_blocks(ds)).rows()

    def shuffle(self, files: Sequence[str], key: Callable[[pa.Table], pa.Array],
                group_fn: Callable[[pa.Table], pa.Table]) -> list[dict]:
        import ray.data

        if not files:
            return []
        ds = ray.data.read_parquet(list(files), file_extensions=["parquet"], num_cpus=TASK_CPUS,
                                   override_num_blocks=len(files))
        ds = ds.map_batches(lambda t: t.append_column("_group", key(t)), batch_format="pyarrow", num_cpus=TASK_CPUS)
        ds = _shuffled_by(ds, small=_parquet_bytes(files) < SMALL_SHUFFLE_BYTES)
        groups = ds.groupby("_group", num_partitions=self.partitions).map_groups(
            lambda t: group_fn(t.drop(["_group"])), batch_format="pyarrow", num_cpus=1)
        return _Sums(TALLY_KEYS, ["n"]).add_all(_blocks(groups)).rows()


def _shuffled_by(ds: Any, small: bool) -> Any:
    """``ds`` with the shuffle strategy of its next groupby / sort: Ray Data's task-based sort shuffle when the
    data is ``small``, else its default (``SHUFFLE_V2``: hash-partitioning aggregator actors, built for large
    data). Those actors start again with every execution, seconds each on a small node: with them a ``qra``
    step over 14 graphs took 33 s on 2 cores, 9 s with tasks (``benchmarks/bench_shuffle.py`` measures the
    two on the same work). Aggregations whose inputs are tallies or a step's results rows are small in this
    sense whatever the corpus: their map side combines rows before anything is shuffled."""
    if small:
        from ray.data.context import ShuffleStrategy

        ds.context.shuffle_strategy = ShuffleStrategy.SORT_SHUFFLE_PULL_BASED
    return ds


def _parquet_bytes(files: Sequence[str]) -> int:
    total = 0
    for f in files:
        fs, p = storage.filesystem(f)
        total += fs.get_file_info(p).size or 0
    return total


def _blocks(ds: Any) -> Iterator[pa.Table]:
    """The blocks of ``ds`` as they finish, to the driver (small by construction: combined rows)."""
    return ds.iter_batches(batch_size=None, batch_format="pyarrow", prefetch_batches=0)


def combine_block(t: pa.Table, keys: Sequence[str], sums: Sequence[str], count: Optional[str] = None) -> pa.Table:
    """One row per distinct ``keys`` of ``t``: the sums of ``sums`` (nulls skipped; null if all are) and, with
    ``count``, the number of rows in that column."""
    keys, sums = list(keys), list(sums)
    aggs: list[Any] = [(c, "sum") for c in sums]
    if count:
        aggs.append((keys[0], "count", pc.CountOptions(mode="all")))
    g = t.select(keys + sums).group_by(keys, use_threads=False).aggregate(aggs)
    names = {f"{c}_sum": c for c in sums} | ({f"{keys[0]}_count": count} if count else {})
    return g.rename_columns([names.get(n, n) for n in g.column_names])


class _Reducer:
    """Combined blocks added on the driver as they stream in (:meth:`add`, one block)."""

    def add(self, t: pa.Table) -> Any:
        raise NotImplementedError

    def add_all(self, tables: Iterable[pa.Table]) -> Any:
        for t in tables:
            self.add(t)
        return self


class _Sums(_Reducer):
    """The driver's side of an aggregation: combined rows (:func:`combine_block`) added as they come, one
    entry per group; :meth:`rows` in key order."""

    def __init__(self, keys: Sequence[str], sums: Sequence[str], count: Optional[str] = None):
        self.keys = list(keys)
        self.added = list(sums) + ([count] if count else [])  # the columns summed over the blocks
        self.groups: dict[tuple, dict[str, Any]] = {}

    def add(self, t: pa.Table) -> "_Sums":
        for r in t.to_pylist():
            k = tuple(r[c] for c in self.keys)
            acc = self.groups.get(k)
            if acc is None:
                self.groups[k] = {c: r[c] for c in self.keys + self.added}
                continue
            for c in self.added:
                if r[c] is not None:
                    acc[c] = r[c] if acc[c] is None else acc[c] + r[c]
        return self

    def rows(self) -> list[dict]:
        return [self.groups[k] for k in sorted(self.groups, key=lambda k: tuple("" if v is None else str(v) for v in k))]


def first_rows_block(t: pa.Table, columns: Sequence[str], order_by: str, limit: int, filter: Any = None) -> pa.Table:
    """The first ``limit`` rows of ``t`` by ``order_by`` (where ``filter`` holds), ``columns`` only."""
    if filter is not None:
        t = t.filter(filter)
    return t.select(list(columns)).sort_by(order_by).slice(0, limit)


class _FirstRows(_Reducer):
    """The driver's side of :func:`first_rows_block`: the first ``limit`` rows over the blocks added."""

    def __init__(self, order_by: str, limit: int):
        self.order_by, self.limit = order_by, limit
        self.best: list[dict] = []

    def add(self, t: pa.Table) -> "_FirstRows":
        if t.num_rows:
            self.best = sorted(self.best + t.to_pylist(), key=lambda r: str(r[self.order_by]))[:self.limit]
        return self

    def rows(self) -> list[dict]:
        return self.best


class _MapItems:
    """A picklable batch function: ``fn`` over the ``item`` column, tallies concatenated."""

    def __init__(self, fn: Callable[[Any], pa.Table]):
        self.fn = fn

    def __call__(self, batch: pa.Table) -> pa.Table:
        return pa.concat_tables([self.fn(i) for i in batch["item"].to_pylist()] or [TALLY_SCHEMA.empty_table()])


def _read_batches(files: Sequence[str], columns: Optional[list[str]]) -> Iterator[pa.Table]:
    import pyarrow.parquet as pq

    for path in files:
        fs, p = storage.filesystem(path)
        with fs.open_input_file(p) as f:
            yield pq.read_table(f, columns=columns)


def flow_for(use_ray: bool, ray_cfg: Any) -> Any:
    """A :class:`RayFlow` (starting or joining Ray per ``ray_cfg``) or a :class:`LocalFlow`."""
    if not use_ray:
        return LocalFlow()
    from step_ray.utils.ray_session import init_ray

    init_ray(ray_cfg)
    return RayFlow()
