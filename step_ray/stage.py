"""The stage contract: the one idiom for every piece of work that runs on Ray actors.

A stage is a small dataclass. Its **fields are the config sections it reads** (``VideoConfig``,
``PerceptionConfig``, ...) and a few plain values (an output folder); :meth:`Stage.from_config` builds it
from the whole tree and hands it those sections and nothing else. Its class declares

* ``name`` — what Ray Data shows for it (``MapBatches(stsg-perception)``) and what logs and errors say;
* ``pool_path`` — where its actor pool lives in the config tree (``"perception.pool"``):
  :meth:`Stage.pool_of` reads the :class:`~step_ray.config.PoolConfig` (actors, CPUs, GPUs, rows per batch)
  from a config without building the stage; the built stage carries it in its ``pool`` field;
* ``inputs`` / ``outputs`` — Arrow schemas. A batch handed to the stage must have the input columns (it sees
  exactly those, cast to the declared types); what it returns must be exactly the output columns, one row
  per input row. Nested payloads are Arrow structs built from dataclasses (:mod:`step_ray.utils.arrow`),
  never JSON strings inside rows.

Its life: constructed anywhere (cheap, picklable: it is shipped to the actors as it is), :meth:`Stage.setup`
once inside the actor (models, trackers, anything heavy), :meth:`Stage.process` per batch (an Arrow table in,
an Arrow table out), :meth:`Stage.teardown` when the actor goes away. :func:`run_batch` is the one place that
checks the contract around ``process``; both executors (:func:`run_local`: in this process,
or on a Ray Data actor pool per stage) call it, so a stage behaves the same in a test and on a cluster.

Every input is accounted for: a :class:`RowStage` (one row at a time, the common case) turns an exception
on one row into an error row of that row (``status="error"`` and the reason), so a bad video never stops a
run and never takes its neighbours with it.

:meth:`Stage.key` hashes the fields that shape the outputs — the sections the stage received, minus the
settings marked ``runtime`` where they are declared (threads, pools: :data:`step_ray.config.RUNTIME`) — so a
graph's settings key is exactly what its stages read, with no hand-kept list of fields to leave out.

A minimal stage::

    @dataclass
    class WordCount(RowStage):
        name: ClassVar[str] = "word-count"
        pool_path: ClassVar[str] = "qra.pool"
        inputs: ClassVar[pa.Schema] = pa.schema([("id", pa.string()), ("text", pa.string())])
        outputs: ClassVar[pa.Schema] = pa.schema([("id", pa.string()), ("status", pa.string()),
                                                  ("error", pa.string()), ("words", pa.int64())])
        qra: QraConfig          # the one section it reads (from_config fills it in)

        def process_row(self, row):
            return {"id": row["id"], "status": "ok", "error": None, "words": len(row["text"].split())}

    stage = WordCount.from_config(cfg)                       # cheap; WordCount.pool_of(cfg) without building
    run_local([table], [stage])                              # in this process (tests, --no-ray)
    ray_executor.map_stages(ds, [stage])                     # one Ray Data actor pool per stage

Every Ray-facing piece of work follows it:

* STSG perception and graph building (:mod:`step_ray.stsg.stage`) and QRA sampling (:mod:`step_ray.qra.stage`);
* the QRA filter: the ``qra-filter`` ``RowStage`` of :mod:`step_ray.pipeline.qra_filter` (above the model
  layer; its rules stay model-free in :mod:`step_ray.qra.filter`), mapped over a streamed read of the QRA
  parts, its verdicts joined back to their parts by a shuffle and the parts written back (``carry`` hands on
  the part index the stage does not read);
* the training stream (``train/stream.py``): ``train-encode``, a batch :class:`Stage` that turns a QRA row
  into one or two sequences (``one_row_per_input = False``), and ``train-replay`` over its encode cache; their
  pool is read from ``train.data``'s flat fields by their own :meth:`Stage.pool_of`;
* evaluation: :class:`step_ray.eval.score.EvalScore`, a batch :class:`Stage` named ``eval-score`` (fields
  ``model``, ``eval``, ``seed``, the model reference and the modes; ``pool_path = "eval.pool"``; one scored
  row per question and vision: key, id, vision, status, error, ``scores: list<double>``, the generated text
  and rationale). Every evaluation (``step-ray eval``, the ``eval`` step, the evaluations of ``self-train``,
  ``ablate`` and ``pretrain`` with their vision controls) maps it with
  :func:`step_ray.ray_executor.map_tables` (its rows guarded by the :class:`CrashLedger`) or runs it with
  :func:`run_local`.

The Ray executor (:mod:`step_ray.ray_executor`) sits beside this module, below every package that maps
stages, so that ``train`` and ``eval`` map stages without importing ``pipeline``.

Stages that need a model receive the function that loads it as a field (a picklable callable), set by the
step that builds them: the stage's package then does not import the model layer that stands above it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import traceback
from dataclasses import dataclass, field
from typing import Any, ClassVar, Iterable, Iterator, Optional, Sequence

import pyarrow as pa

from step_ray.config import RUNTIME, PoolConfig, StepRayConfig

Row = dict[str, Any]


class StageContractError(RuntimeError):
    """A stage broke its declared contract (missing input column, wrong output columns or row count)."""


def runtime_field(default: Any = dataclasses.MISSING, **kwargs: Any) -> Any:
    """A stage field that says where or how the stage runs (an output folder), not what it computes: left
    out of :meth:`Stage.key`."""
    return field(default=default, metadata={RUNTIME: True}, **kwargs)


def _plain_config(value: Any) -> Any:
    """A config value as JSON-able data without its runtime settings (the input of :meth:`Stage.key`)."""
    if isinstance(value, PoolConfig):
        return None
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain_config(getattr(value, f.name)) for f in dataclasses.fields(value)
                if not f.metadata.get(RUNTIME) and not isinstance(getattr(value, f.name), PoolConfig)}
    if isinstance(value, (list, tuple)):
        return [_plain_config(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain_config(v) for k, v in value.items()}
    if callable(value):  # a model-loading function: its qualified name, not its identity
        return f"{getattr(value, '__module__', '')}.{getattr(value, '__qualname__', repr(value))}"
    return value


def config_key(*parts: Any) -> str:
    """16 hex digits of SHA-256 over ``parts`` as canonical JSON (runtime settings left out)."""
    data = json.dumps([_plain_config(p) for p in parts], sort_keys=True, default=str)
    return hashlib.sha256(data.encode()).hexdigest()[:16]


def _section(cfg: StepRayConfig, path: str) -> Any:
    value: Any = cfg
    for part in path.split("."):
        value = getattr(value, part)
    return value


@dataclass(kw_only=True)
class Stage:
    """Base class of every stage (see the module docstring)."""

    name: ClassVar[str]
    pool_path: ClassVar[str]
    inputs: ClassVar[pa.Schema]
    outputs: ClassVar[pa.Schema]
    #: Bump when the stage's code changes what it outputs for the same inputs and config: it is part of
    #: :meth:`key`, so outputs keyed by it are rebuilt.
    version: ClassVar[int] = 1
    #: Whether every input row gives exactly one output row (checked by :func:`run_batch`).
    one_row_per_input: ClassVar[bool] = True
    #: The input column that names a row (unique within a run): the executor counts, per row, the processes
    #: that died working on it, and a row that keeps killing its actor becomes an error row (see
    #: :class:`RowStage` and the :class:`CrashLedger` actor of :mod:`step_ray.ray_executor`). None: no such guard.
    row_key: ClassVar[Optional[str]] = None

    pool: PoolConfig = field(default_factory=PoolConfig, metadata={RUNTIME: True})

    # ------------------------------------------------------------------ building

    @classmethod
    def pool_of(cls, cfg: StepRayConfig) -> PoolConfig:
        """The stage's actor pool in ``cfg``, without building the stage."""
        return _section(cfg, cls.pool_path)

    @classmethod
    def from_config(cls, cfg: StepRayConfig, **values: Any):
        """The stage with the config sections its fields name: a field called like a section of the tree
        (``video``, ``perception``, ...) gets that section, a field with metadata ``{"config": "run.seed"}``
        gets that value, ``pool`` gets :meth:`pool_of`; ``values`` give (or override) the rest."""
        kwargs: dict[str, Any] = {}
        sections = {f.name for f in dataclasses.fields(StepRayConfig)}
        for f in dataclasses.fields(cls):
            if not f.init:
                continue
            if f.name in values:
                kwargs[f.name] = values[f.name]
            elif f.name == "pool":
                kwargs["pool"] = cls.pool_of(cfg)
            elif "config" in f.metadata:
                kwargs[f.name] = _section(cfg, f.metadata["config"])
            elif f.name in sections:
                kwargs[f.name] = getattr(cfg, f.name)
        unknown = set(values) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise TypeError(f"{cls.__name__} has no field(s) {sorted(unknown)}")
        return cls(**kwargs)

    def key(self) -> str:
        """Hash of everything that shapes this stage's outputs: its name, :attr:`version` and every field
        that is not a runtime setting."""
        fields = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                  if not f.metadata.get(RUNTIME) and f.name != "pool"}
        return config_key({"stage": self.name, "version": self.version, **fields})

    # ------------------------------------------------------------------ life cycle

    def setup(self) -> None:
        """Build heavy state (models, trackers). Called once per actor, before the first batch."""

    def process(self, batch: pa.Table) -> pa.Table:
        """One batch with :attr:`inputs` -> one batch with :attr:`outputs`."""
        raise NotImplementedError

    def teardown(self) -> None:
        """Release what :meth:`setup` built (called when the actor or the local run ends)."""

    # ------------------------------------------------------------------ error rows

    def error_rows(self, batch: pa.Table, reason: str) -> pa.Table:
        """Every row of ``batch`` as an error row (for a batch that failed as a whole)."""
        return pa.Table.from_pylist([self.error_row(r, reason) for r in batch.to_pylist()], schema=self.outputs)

    def error_row(self, row: Row, reason: str) -> Row:
        """An output row for an input that failed: the input's same-named fields, ``status='error'`` and the
        reason; everything else null."""
        if "status" not in self.outputs.names or "error" not in self.outputs.names:
            raise StageContractError(f"stage {self.name}: an input failed ({reason}) and its outputs have no "
                                     f"status / error columns to say so")
        out: Row = {c: None for c in self.outputs.names}
        out.update({k: v for k, v in row.items() if k in out})
        out["status"], out["error"] = "error", reason
        return out


class RowGuard:
    """What an executor may put around each row of a :class:`RowStage` (``stage.row_guard``): ``begin(key)``
    returns how many processes already died working on that row, ``end(key)`` marks it done; a row whose
    deaths exceed ``max_retries`` becomes an error row instead of being run again. The Ray executor's guard
    is a small ledger actor (the :class:`CrashLedger` actor of :mod:`step_ray.ray_executor`); in-process there is none."""

    max_retries: int = 0

    def begin(self, key: str) -> int:
        raise NotImplementedError

    def end(self, key: str) -> None:
        raise NotImplementedError


#: Internal column that carries each input row's index through an executor that keys the ledger by position
#: (the evaluation pool); stages drop unknown keys.
ROW_INDEX = "_step_ray_row"


def ledger_key(stage: str, row: Any) -> str:
    """The :class:`CrashLedger` key of one row of one stage."""
    return f"{stage}\x1f{row}"


class CrashLedger:
    """A small Ray actor (no CPU) that counts, per stage and row, the attempts that began and never ended:
    each one is a death of the process working on that row (an exception ends its attempt normally, as an
    error row). Ray Data restarts a dead actor and retries its batch; the stage asks the ledger before each
    row (:class:`RowGuard`) and turns a row that already killed ``max_retries + 1`` processes
    into an error row. Counting per row keeps the other rows of the batch out of it (they are simply run
    again: stages are idempotent); a row is forgotten once its attempts all ended, so the ledger holds only
    the rows in flight and the ones that crashed."""

    def __init__(self) -> None:
        self.open: dict[str, int] = {}

    def begin(self, key: str) -> int:
        deaths = self.open.get(key, 0)
        self.open[key] = deaths + 1
        return deaths

    def end(self, key: str) -> None:
        left = self.open.get(key, 1) - 1
        if left > 0:
            self.open[key] = left
        else:
            self.open.pop(key, None)


@dataclass(kw_only=True)
class RowStage(Stage):
    """A stage that works one row at a time: implement :meth:`process_row`. An exception on one row becomes
    that row's error row; a returned row must have exactly the output columns; a row that keeps killing the
    process working on it becomes an error row too (with a ``row_guard`` in place: the Ray executor's)."""

    def process_row(self, row: Row) -> Row:
        raise NotImplementedError

    def process(self, batch: pa.Table) -> pa.Table:
        names = set(self.outputs.names)
        guard: Optional[RowGuard] = getattr(self, "row_guard", None)
        out = []
        for row in batch.to_pylist():
            key = str(row[self.row_key]) if guard is not None and self.row_key else None
            deaths = guard.begin(key) if key is not None else 0
            if key is not None and deaths > guard.max_retries:
                out.append(self.error_row(row, (
                    f"the process working on it died {deaths} times (a crash such as a decoder segfault, or an "
                    f"out-of-memory kill); {self.pool_path}.max_retries is {guard.max_retries}, the run went on "
                    f"without it")))
                guard.end(key)
                continue
            try:
                result = self.process_row(row)
                keys = set(result)
                if keys != names:
                    result = self.error_row(row, f"stage {self.name} returned a row without "
                                                 f"{sorted(names - keys)} / with unknown {sorted(keys - names)}")
            except Exception as err:  # noqa: BLE001 - the contract: every input ends as a row
                result = self.error_row(row, describe(err))
            out.append(result)
            if key is not None:
                guard.end(key)
        return pa.Table.from_pylist(out, schema=self.outputs)


def describe(err: BaseException) -> str:
    """``Type: message (at file:line)`` of an exception, for an error row."""
    tb = traceback.extract_tb(err.__traceback__)
    where = f" (at {tb[-1].filename}:{tb[-1].lineno})" if tb else ""
    return f"{type(err).__name__}: {err}{where}"


def check_inputs(stage: Stage, batch: pa.Table) -> pa.Table:
    """The declared input columns of ``batch``, in order, cast to the declared types."""
    missing = [n for n in stage.inputs.names if n not in batch.column_names]
    if missing:
        raise StageContractError(f"stage {stage.name}: input batch lacks column(s) {missing} "
                                 f"(has {batch.column_names})")
    try:
        return batch.select(stage.inputs.names).cast(stage.inputs)
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError) as err:
        raise StageContractError(f"stage {stage.name}: input batch does not fit the declared schema: {err}") from None


def check_outputs(stage: Stage, out: pa.Table, rows_in: int) -> pa.Table:
    """``out`` as exactly the declared output schema; its row count checked for a one-to-one stage."""
    if not isinstance(out, pa.Table):
        raise StageContractError(f"stage {stage.name}: process() returned {type(out).__name__}, not a pyarrow Table")
    if set(out.column_names) != set(stage.outputs.names):
        raise StageContractError(f"stage {stage.name}: output columns {sorted(out.column_names)} differ from the "
                                 f"declared {sorted(stage.outputs.names)}")
    if stage.one_row_per_input and out.num_rows != rows_in:
        raise StageContractError(f"stage {stage.name}: {rows_in} input rows gave {out.num_rows} output rows "
                                 f"(a one-row-per-input stage)")
    try:
        return out.select(stage.outputs.names).cast(stage.outputs)
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError) as err:
        raise StageContractError(f"stage {stage.name}: output does not fit the declared schema: {err}") from None


def run_batch(stage: Stage, batch: pa.Table) -> pa.Table:
    """``stage.process`` under the contract: inputs checked and cast, outputs checked and cast; a batch whose
    ``process`` raises becomes error rows when the stage can say so (status / error outputs), else the error
    propagates (a bug, not bad input)."""
    rows_in = batch.num_rows
    batch = check_inputs(stage, batch)
    try:
        out = stage.process(batch)
    except StageContractError:
        raise
    except Exception as err:  # noqa: BLE001 - see the docstring
        if not ({"status", "error"} <= set(stage.outputs.names) and stage.one_row_per_input):
            raise
        out = stage.error_rows(batch, describe(err))
    return check_outputs(stage, out, rows_in)


def run_carrying(stage: Stage, batch: pa.Table, carry: Sequence[str] = ()) -> pa.Table:
    """:func:`~step_ray.stage.run_batch`, with the ``carry`` columns of ``batch`` appended to the output."""
    out = run_batch(stage, batch)
    if not carry:
        return out
    if not stage.one_row_per_input:
        raise StageContractError(f"stage {stage.name}: columns {list(carry)} cannot be carried past a stage whose "
                                 f"output rows are not its input rows")
    clash = sorted(set(carry) & set(out.column_names))
    if clash:
        raise StageContractError(f"stage {stage.name}: carried column(s) {clash} are also outputs of the stage")
    for name in carry:
        out = out.append_column(batch.schema.field(name), batch[name])
    return out


def run_local(batches: Iterable[pa.Table], stages: Sequence[Stage], carry: Sequence[str] = ()
              ) -> Iterator[pa.Table]:
    """The in-process executor: set every stage up here, push each batch through all of them (through
    :func:`run_carrying`), yield the results as they come; tear the stages down at the end (also when the caller
    stops early). ``carry``: input columns handed on beside the outputs, unseen by the stages. Tests, debugging
    and ``--no-ray`` use it; the Ray executor is :func:`step_ray.ray_executor.map_stages`."""
    for stage in stages:
        stage.setup()
    try:
        for batch in batches:
            for stage in stages:
                batch = run_carrying(stage, batch, carry)
            yield batch
    finally:
        for stage in stages:
            stage.teardown()


def schema(*fields: tuple[str, pa.DataType], nullable: bool = True) -> pa.Schema:
    """A schema from ``(name, type)`` pairs, every field nullable (error rows leave outputs null)."""
    return pa.schema([pa.field(n, t, nullable=nullable) for n, t in fields])


def optional_field(default: Optional[Any] = None, **metadata: Any) -> Any:
    """A stage field that may be absent from the config it is built from (``None`` unless given)."""
    return field(default=default, metadata=metadata)
