"""The training data stream: QRA Parquet -> Ray Data -> encode once -> replay every pass -> each worker's shard.

::

    the train split of the QRA Parquet, read on the driver (compact text rows) -> ray.data.from_arrow
      -> train-encode (TrainEncodeStage on an actor pool, train.data.num_cpus each): decode the question's
         frames with decord (PyAV fallback), run the model's processor, build the labelled sequences
      -> .materialize(): the encode cache, every question's rows once in Ray's object store (train.data.cache)
    the run's stream positions (position, question), in each pass's order -> ray.data.from_arrow
      -> train-replay (TrainReplayStage, the same pool): each position's cached rows, no decoding, without
         their bytes: each row says where in the cache they are, and the workers read them there
      -> streaming_split(num_workers, equal=True)  (done by Ray Train)
      -> get_dataset_shard("train").iter_torch_batches(collate_fn=ShardCollate)  in every training worker

A run passes over its questions many times (its steps x batch / questions: dozens of passes on a small QRA
set), and decoding + the processor are nearly all of the stream's CPU: encoding each question once makes every
later pass cost a copy of its rows (measured on the toy set, 2 workers on 2 cores: the workers wait for data
0.6% of the time, ``benchmarks/bench_train.py``). The cache costs memory in the object store (:func:`encode_questions` says how
much); ``train.data.cache: false`` streams the positions' QRA rows through ``train-encode`` instead, every pass
decoding again (the frame cache of ``train.data.frame_cache_mb`` then saves most of the decoding).

Both stages follow the stage contract (:mod:`step_ray.stage`) and are mapped by
:func:`step_ray.ray_executor.map_stages`: Ray Data shows them as ``MapBatches(train-encode)`` and
``MapBatches(train-replay)``.

Decoding runs on CPU workers of its own, not inside the training processes: on a GPU cluster the trainers
stay busy while CPU actors (any node) prepare the next batches, and Ray Data's backpressure keeps only a few
batches in flight. Its CPUs are *reserved* beside the trainers' (Ray Train excludes the workers' resources from
Ray Data's budget): :func:`check_resources` fails the run before it starts when the cluster cannot hold both,
instead of letting the stream wait forever for a CPU. The QRA rows are read on the driver and handed to Ray
Data as an in-memory table (question text, a few hundred bytes a row): Parquet read tasks would need CPU
slots of their own inside that budget (a ``ListFiles`` task asks for a whole CPU), and on a small machine they
starved behind the actors (measured: a 2-CPU Ray with two 0.5-CPU trainers and one 0.5-CPU actor hung there).

One output row per training sequence, in five columns: ``id`` (the QRA row), ``seq`` (the sequence's tensors as
safetensors bytes, empty for a skipped row), ``skip`` (why the row was skipped, empty when used), ``qra_rows``
(1 on the first row a QRA row produced, so workers count questions, not sequences) and ``pos`` (the question's
position in the run's stream, below). Skipped rows travel on to
the workers, which count and drop them: every shard then keeps the same length, and the workers stay in
lockstep (one collective per micro-batch on every rank). A question's answer and rationale sequences are
neighbours in the stream, so without a local shuffle (``train.data.shuffle_buffer = 0``, the default) a
micro-batch holds both tasks of the same questions, as in Distilling Step-by-Step; the question order is
shuffled on the driver, differently in every pass over the data.

**Positions and resume.** The stream of a run is one sequence of question positions 0, 1, 2, ...: position
``i`` is question ``pass_order(seed, p)[i - p * N]`` of pass ``p = i // N`` (``N`` train questions), a pure
function of ``(run.seed, pass)``. A checkpoint records how many questions the workers have consumed (its
``rows``); a re-run of the same run starts the stream at that position (:func:`resume_position`), and after a
worker-group restart inside one run (the dataset then starts again where this driver started it) the workers
drop the positions their checkpoint already covers. Either way no question is trained twice, up to the few
blocks in flight between the workers when the checkpoint was taken (the split hands blocks out dynamically).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Optional

import numpy as np
import pyarrow as pa

from step_ray.config import ConfigError, ModelConfig, PoolConfig, StepRayConfig, TrainConfig
from step_ray.stage import Stage, runtime_field, schema

logger = logging.getLogger(__name__)

#: What the encode stage reads of a QRA row (the prompt, the targets, the moments of its frames) and the
#: row's position in the stream (its question index while the encode cache is built).
ENCODE_INPUTS = schema(
    ("id", pa.string()), ("video_uri", pa.string()), ("start", pa.float64()), ("end", pa.float64()),
    ("question", pa.string()), ("options", pa.list_(pa.string())), ("answer", pa.string()),
    ("answer_index", pa.int64()), ("rationale", pa.list_(pa.string())), ("times", pa.list_(pa.float64())),
    ("pos", pa.int64()),
)
#: QRA columns of older schema versions that a table may lack (read as null: frames spread over the span).
OPTIONAL_INPUTS = ("times",)
#: One row per training sequence (see the module docs).
SEQUENCES = schema(("id", pa.string()), ("seq", pa.large_binary()), ("skip", pa.string()),
                   ("qra_rows", pa.int64()), ("pos", pa.int64()))
COLUMNS = tuple(SEQUENCES.names)
#: What the replay stage hands on: the sequence rows without their bytes (``seq`` empty), and where the bytes
#: are in the encode cache: record batch ``cache_table`` of :func:`replay_tables`, row ``cache_row``.
REPLAYED = schema(*((f.name, f.type) for f in SEQUENCES), ("cache_table", pa.int64()), ("cache_row", pa.int64()))


def replay_tables(tables: list) -> list:
    """The encode cache's blocks as single-chunk tables, one per record batch (zero-copy views), in a fixed
    order: the replay stage indexes them and the training workers read the sequences from them.

    By record batch, not by block: a cached block is often several chunks (Ray Data's block shaping joins the
    encode batches), and ``take`` on a chunked column first concatenates all its chunks, a copy of the whole
    block for every few rows picked (measured: 27 ms against 0.3 ms a pick of 8 sequences from 8 chunks of 16).
    """
    return [pa.Table.from_batches([b]) for t in tables for b in t.to_batches() if b.num_rows]


def stream_pool(cfg: StepRayConfig) -> PoolConfig:
    """The actor pool of the stream's stages, from ``train.data`` (its CPUs are the ones
    :func:`check_resources` reserves beside the trainers)."""
    dc = cfg.train.data
    return PoolConfig(min_size=dc.min_actors, max_size=dc.max_actors, num_cpus=dc.num_cpus, num_gpus=0.0,
                      batch_size=dc.batch_size)


@dataclass(kw_only=True)
class TrainEncodeStage(Stage):
    """QRA rows -> their training sequences: frames decoded with decord (PyAV fallback), the model's processor,
    the labelled sequences of the run's loss format (one or two per row; a row that cannot be used becomes one
    row with the reason in ``skip``)."""

    name: ClassVar[str] = "train-encode"
    pool_path: ClassVar[str] = "train.data"
    one_row_per_input: ClassVar[bool] = False
    inputs: ClassVar[pa.Schema] = ENCODE_INPUTS
    outputs: ClassVar[pa.Schema] = SEQUENCES

    model: ModelConfig
    train: TrainConfig
    seed: int = field(default=0, metadata={"config": "run.seed"})

    @classmethod
    def pool_of(cls, cfg: StepRayConfig) -> PoolConfig:
        return stream_pool(cfg)

    def setup(self) -> None:
        """Load the processor (inside the actor, once)."""
        import torch

        from step_ray.models.loading import load_processor, resolve_base
        from step_ray.train.data import RowEncoder

        torch.set_num_threads(1)  # an actor holds a fraction of a CPU: one thread, no oversubscription
        processor = load_processor(resolve_base(self.model, self.seed), self.model.trust_remote_code)
        tc = self.train
        self.encoder = RowEncoder(processor, self.model, tc.rationale_weight, tc.loss_format,
                                  frame_cache_mb=tc.data.frame_cache_mb)

    def process(self, batch: pa.Table) -> pa.Table:
        from step_ray.models.encoding import pack_sequence

        out: dict[str, list] = {c: [] for c in COLUMNS}

        def add(row_id: str, seq: bytes, skip: str, first: int, pos: int) -> None:
            for column, value in zip(COLUMNS, (row_id, seq, skip, first, pos)):
                out[column].append(value)

        for row in batch.to_pylist():
            seqs, reason = self.encoder.encode(row)
            row_id, pos = str(row["id"]), int(row["pos"])
            if reason is not None:
                add(row_id, b"", reason, 1, pos)
            for i, seq in enumerate(seqs):
                add(row_id, pack_sequence(seq), "", 1 if i == 0 else 0, pos)
        return pa.Table.from_pydict(out, schema=SEQUENCES)


@dataclass(kw_only=True)
class TrainReplayStage(Stage):
    """Stream positions -> the rows of their questions' sequences, looked up in the encode cache (the blocks
    that :func:`encode_questions` left in the object store, ``blocks``): no decoding, no processor, and no
    sequence bytes. A row names where its bytes are in the cache (``cache_table``, ``cache_row``) and the
    training workers read them there (:class:`ShardCollate`): the stream carries a few dozen bytes a sequence
    instead of its pixels (measured on the toy set, 300 KB a sequence: carrying the bytes, the replay actor took
    half a core in copies and page faults of the object store while the two trainers had 0.4 each). Each
    actor reads every cached block once (zero-copy from the object store of its node; a node without them
    fetches them, a copy of the cache per node), as does every training worker."""

    name: ClassVar[str] = "train-replay"
    pool_path: ClassVar[str] = "train.data"
    one_row_per_input: ClassVar[bool] = False
    inputs: ClassVar[pa.Schema] = schema(("pos", pa.int64()), ("question", pa.int64()))
    outputs: ClassVar[pa.Schema] = REPLAYED

    blocks: list = runtime_field(default_factory=list)  # ObjectRefs of the cached blocks (pyarrow tables)

    @classmethod
    def pool_of(cls, cfg: StepRayConfig) -> PoolConfig:
        return stream_pool(cfg)

    def setup(self) -> None:
        import ray

        self.index(ray.get(list(self.blocks)))

    def index(self, tables: list) -> None:
        """Index the cached rows by question (their ``pos`` while the cache was built), in cache order: a
        question's answer and rationale sequences stay neighbours."""
        views = replay_tables(tables)
        table = np.concatenate([np.full(t.num_rows, b, np.int64) for b, t in enumerate(views)] or [[]])
        row = np.concatenate([np.arange(t.num_rows, dtype=np.int64) for t in views] or [[]])
        question = np.concatenate([t.column("pos").to_numpy() for t in views] or [[]]).astype(np.int64)
        order = np.argsort(question, kind="stable")
        self.table, self.row = table[order].astype(np.int64), row[order].astype(np.int64)
        # The small columns of every cached row, in the same order (the bytes stay in the cache).
        small = pa.concat_tables([t.select(["id", "skip", "qra_rows"]) for t in views]) if views else None
        self.small = small.combine_chunks().take(pa.array(order)) if small is not None else None
        questions = int(question.max()) + 1 if question.size else 0
        self.first = np.searchsorted(question[order], np.arange(questions + 1))

    def process(self, batch: pa.Table) -> pa.Table:
        positions = batch.column("pos").to_numpy()
        questions = batch.column("question").to_numpy()
        if not len(questions):
            return REPLAYED.empty_table()
        known = questions < len(self.first) - 1
        lo = np.where(known, self.first[np.minimum(questions, len(self.first) - 1)], 0)
        hi = np.where(known, self.first[np.minimum(questions + 1, len(self.first) - 1)], 0)
        if np.any(hi <= lo):
            missing = sorted(set(questions[hi <= lo].tolist()))[:5]
            raise RuntimeError(f"stage {self.name}: question(s) {missing} are not in the encode cache")
        picks = np.concatenate([np.arange(a, b) for a, b in zip(lo, hi)])
        small = self.small.take(pa.array(picks))
        return pa.table({
            "id": small.column("id"), "seq": pa.array([b""] * len(picks), pa.large_binary()),
            "skip": small.column("skip"), "qra_rows": small.column("qra_rows"),
            "pos": pa.array(np.repeat(positions, hi - lo), pa.int64()),
            "cache_table": pa.array(self.table[picks], pa.int64()), "cache_row": pa.array(self.row[picks], pa.int64()),
        }, schema=REPLAYED)


class ShardCollate:
    """``iter_torch_batches`` collate function: stream rows -> (micro-batch or None, questions, skipped,
    lowest position used or -1).

    The micro-batch is None when every row of it was skipped (the caller then skips it on all ranks together).
    Rows at positions below ``start`` (already covered by the checkpoint this worker restored) are dropped and
    counted nowhere: they were trained on before the restart. Replayed rows (with ``cache_table``) take their
    bytes from ``cache``, the encode cache's :func:`replay_tables`.
    """

    def __init__(self, pad_id: int, start: int = 0, cache: Optional[list] = None):
        self.pad_id = pad_id
        self.start = start
        self.cache = cache
        self.last_skip = ""  # the reason of the last skipped row seen, for an error message

    def last_skip_note(self) -> str:
        """``", the last because: <reason>"`` when a row was skipped, else ``""``."""
        return f", the last because: {self.last_skip}" if self.last_skip else ""

    def __call__(self, batch: dict[str, np.ndarray]) -> tuple[Optional[dict], int, int, int]:
        from step_ray.models.encoding import collate, unpack_sequence

        pos = np.asarray(batch["pos"]) if "pos" in batch else np.full(len(batch["seq"]), -1)
        keep = pos >= self.start if self.start > 0 else np.ones(len(pos), dtype=bool)
        data = batch["seq"]
        if "cache_table" in batch:
            if self.cache is None:
                raise RuntimeError("replayed rows need the encode cache: ShardCollate was given none")
            data = [self.cache[int(t)].column("seq")[int(r)].as_buffer() if not skip else b""
                    for t, r, skip in zip(batch["cache_table"], batch["cache_row"], batch["skip"])]
        seqs = [unpack_sequence(b) for b, skip, k in zip(data, batch["skip"], keep) if k and not skip]
        questions = int(np.asarray(batch["qra_rows"])[keep].sum())
        reasons = [s for s, k in zip(batch["skip"], keep) if k and s]
        skipped = len(reasons)
        if reasons:
            self.last_skip = str(reasons[-1])
        first = int(pos[keep].min()) if keep.any() else -1
        return (collate(seqs, self.pad_id) if seqs else None), questions, skipped, first


def train_rows(qra_path: str | Path, split: str = "train") -> int:
    """How many ``split`` rows the QRA table has (only its ``split`` column is read)."""
    import pyarrow.compute as pc

    from step_ray.qra.records import qra_dataset

    table = qra_dataset(qra_path).to_table(columns=["split"])
    return int(pc.sum(pc.cast(pc.equal(table["split"], split), "int64")).as_py() or 0)


def sequences_per_row(cfg: StepRayConfig) -> int:
    """Sequences a QRA row becomes: 2 in the multitask format with lambda > 0, else 1."""
    tc = cfg.train
    return 2 if tc.loss_format == "multitask" and tc.rationale_weight > 0 else 1


def split_table(qra_path: str | Path, split: str = "train") -> Any:
    """The ``split`` rows of the QRA table (a file or a directory of Parquet parts) as one Arrow table."""
    import pyarrow.compute as pc

    from step_ray.qra.records import qra_dataset

    return qra_dataset(qra_path).to_table(filter=pc.field("split") == split)


def passes_needed(cfg: StepRayConfig, rows: int) -> int:
    """How many passes over ``rows`` questions the run's remaining optimizer steps consume (at least 1)."""
    tc = cfg.train
    questions = tc.steps * tc.grad_accum * tc.batch_size * tc.num_workers
    return max(1, -(-questions // max(rows, 1)))


def pass_order(seed: int, pass_index: int, n: int) -> np.ndarray:
    """The question order of pass ``pass_index`` over ``n`` questions: a pure function of (seed, pass), so a
    resumed run sees the same order from any position without replaying the passes before it."""
    if n <= 1:
        return np.arange(n)
    return np.random.default_rng([int(seed), int(pass_index)]).permutation(n)


def stream_positions(n: int, seed: int, start: int, end: int) -> tuple[np.ndarray, np.ndarray]:
    """(positions ``start`` .. ``end - 1`` of the stream over ``n`` questions, the question at each of them):
    position ``i`` is question ``pass_order(seed, p)[i - p * n]`` of pass ``p = i // n`` (see the module
    docs)."""
    positions, questions = [], []
    for p in range(start // n if n else 0, -(-end // n) if n else 0):
        lo, hi = max(start - p * n, 0), min(end - p * n, n)
        if lo < hi:
            questions.append(pass_order(seed, p, n)[lo:hi])
            positions.append(np.arange(p * n + lo, p * n + hi))
    if not positions:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    return np.concatenate(positions).astype(np.int64), np.concatenate(questions).astype(np.int64)


def stream_table(base: Any, seed: int, start: int, end: int) -> Any:
    """Positions ``start`` .. ``end - 1`` of the stream over the questions of ``base`` (see the module docs), as
    the rows of ``base`` in stream order with their position in a ``pos`` column."""
    positions, questions = stream_positions(base.num_rows, seed, start, end)
    return base.take(pa.array(questions)).append_column("pos", pa.array(positions, pa.int64()))


def question_table(base: Any) -> Any:
    """The columns of ``base`` (a split of the QRA table) that the encode stage reads, the optional ones of
    older QRA versions filled with nulls."""
    names = [n for n in ENCODE_INPUTS.names if n != "pos"]
    for name in OPTIONAL_INPUTS:
        if name not in base.column_names:
            column = ENCODE_INPUTS.field(name)
            base = base.append_column(column, pa.nulls(base.num_rows, column.type))
    missing = [n for n in names if n not in base.column_names]
    if missing:
        raise ValueError(f"the QRA table lacks column(s) {missing} that training reads")
    return base.select(names)


def _blocks(table: Any, rows: int) -> list:
    """``table`` as in-memory blocks of ``rows`` rows. Sliced here, not with ``repartition()``: that is an
    all-to-all operator whose tasks would need CPUs of their own."""
    return [table.slice(i, rows) for i in range(0, max(table.num_rows, 1), rows)]


@dataclass
class EncodedQuestions:
    """The encode cache of a run: every train question encoded once (:func:`encode_questions`)."""

    blocks: list  # ObjectRefs of the encoded blocks (pyarrow tables of SEQUENCES, "pos" = question index)
    questions: int
    sequences: int
    nbytes: int
    seconds: float


def cache_budget(cfg: StepRayConfig) -> int:
    """Bytes the encode cache may take: ``train.data.cache_max_fraction`` of the cluster's object store."""
    import ray

    store = float(ray.cluster_resources().get("object_store_memory", 0))
    return int(cfg.train.data.cache_max_fraction * store)


def encode_questions(cfg: StepRayConfig, base: Any, budget: Optional[int] = None) -> Optional[EncodedQuestions]:
    """Every question of ``base`` through the ``train-encode`` stage once, kept in Ray's object store (the
    encode cache of ``train.data.cache``).

    Memory: the cache holds every encoded row of the split, questions x sequences per question (2 in the
    multitask format) x the bytes of a sequence: its token ids, labels and mask (8 bytes per token each, up to
    ``model.max_length`` tokens) and its frames' pixel values (``model.frames`` frames of ``frame_size``
    pixels, float32 patches: for Qwen2.5-VL at 8 frames of 448 px, 4,096 patches of 1,176 values, about 19 MB a
    sequence; a few hundred KB for the tiny test model). The run logs
    the figure. The blocks are counted as they come: once they pass ``budget`` bytes (default
    :func:`cache_budget`) the cache is dropped and None returned: the caller streams without it, since a
    cache that spills to disk costs more than encoding again. Set ``train.data.cache: false`` to skip it.
    """
    import ray.data

    from step_ray.ray_executor import map_stages

    started = time.perf_counter()
    budget = cache_budget(cfg) if budget is None else budget
    table = question_table(base)
    table = table.append_column("pos", pa.array(np.arange(table.num_rows), pa.int64()))
    ds = ray.data.from_arrow(_blocks(table, max(1, 4 * cfg.train.data.batch_size)))
    blocks: list = []
    sequences = nbytes = 0
    # The executor itself (Ray Data's private _execute_to_iterator, ray pinned in pyproject.toml): the public
    # iter_internal_ref_bundles() gives no way to stop an execution half-way, and an abandoned one keeps its
    # encode actors (and their CPUs) until it is garbage-collected.
    bundles, _, executor = map_stages(ds, [TrainEncodeStage.from_config(cfg)])._execute_to_iterator(
        capture_executor=False)
    for bundle in bundles:  # ObjectRefs only: the encoded rows stay in the object store
        blocks += bundle.block_refs
        sequences += bundle.num_rows() or 0
        nbytes += bundle.size_bytes()
        if nbytes > budget:
            if executor is not None:
                executor.shutdown(force=True)
            logger.warning("train-encode: the encode cache passed %.1f MiB (train.data.cache_max_fraction of the "
                           "object store) after %d rows; dropped, every pass encodes again", budget / 2**20,
                           sequences)
            return None
    out = EncodedQuestions(blocks=blocks, questions=table.num_rows, sequences=sequences, nbytes=nbytes,
                           seconds=time.perf_counter() - started)
    logger.info("train-encode: %d questions encoded once into %d rows (%.1f MiB in the object store, %.1f s); "
                "every pass replays them (train.data.cache)", out.questions, out.sequences, out.nbytes / 2**20,
                out.seconds)
    return out


def build_stream(cfg: StepRayConfig, qra_path: str | Path, split: str = "train", passes: Optional[int] = None,
                 start: int = 0, encoded: Optional[EncodedQuestions] = None,
                 notes: Optional[dict[str, Any]] = None) -> Any:
    """The lazy Ray Dataset of encoded ``split`` sequences, from stream position ``start`` (a resumed run's
    :func:`resume_position`) on.

    One iteration of the stream covers the passes the run's steps need (or ``passes`` passes), each in its own
    order (:func:`pass_order`): Ray Data re-executes a dataset for every epoch (new actors, a new executor:
    seconds of start-up), so a run should read its data in one long epoch, not in many short ones (measured on
    the toy set of 18 questions: 11 samples/s with an epoch per pass, see benchmarks/).

    With ``train.data.cache`` (the default) every question is encoded once, here, before the stream starts
    (:func:`encode_questions`; or ``encoded``, a cache built before), and the stream only replays the encoded
    rows in each pass's order (``train-replay``). Without it (or when the cache outgrows its share of the
    object store) the positions' QRA rows go through ``train-encode`` as the workers pull them (nothing is
    decoded until they iterate), every pass again. ``notes``, if given, receives ``encode_cache``: what was
    done (used, questions, rows, MiB, seconds; or why not), and ``cache_blocks``: the ObjectRefs of the cache
    that the training workers read the replayed rows' bytes from (:class:`ShardCollate`; None without it).
    """
    import ray.data

    from step_ray.ray_executor import map_stages

    base = split_table(qra_path, split)
    n = max(base.num_rows, 1)
    if passes is None:
        # Enough positions for the whole run from position 0 (a resumed run has consumed `start` of them), and
        # at least one pass beyond `start` (rows skipped before the checkpoint consumed positions too).
        end = max(passes_needed(cfg, base.num_rows) * n, start + n)
    else:
        end = start + passes * n
    # Blocks of a few actor batches: several actors can work at once and the workers' shards fill evenly.
    size = max(1, 4 * cfg.train.data.batch_size)
    notes = {} if notes is None else notes
    notes["encode_cache"] = {"used": False, "reason": "train.data.cache is false"}
    notes["cache_blocks"] = None
    if cfg.train.data.cache and encoded is None:
        budget = cache_budget(cfg)
        encoded = encode_questions(cfg, base, budget=budget)
        if encoded is None:
            notes["encode_cache"]["reason"] = (f"larger than train.data.cache_max_fraction of the object store "
                                               f"({budget / 2**20:.0f} MiB)")
    if not cfg.train.data.cache or encoded is None:
        table = stream_table(question_table(base), cfg.run.seed, start, end)
        return map_stages(ray.data.from_arrow(_blocks(table, size)), [TrainEncodeStage.from_config(cfg)])
    notes["cache_blocks"] = list(encoded.blocks)
    notes["encode_cache"] = {"used": True, "questions": encoded.questions, "rows": encoded.sequences,
                             "mib": round(encoded.nbytes / 2**20, 1), "seconds": round(encoded.seconds, 1)}
    if encoded.questions != base.num_rows:
        raise ValueError(f"the encode cache holds {encoded.questions} questions, the {split} split has "
                         f"{base.num_rows}: build it from the same QRA table")
    positions, questions = stream_positions(base.num_rows, cfg.run.seed, start, end)
    table = pa.table({"pos": pa.array(positions, pa.int64()), "question": pa.array(questions, pa.int64())})
    replay = TrainReplayStage.from_config(cfg, blocks=encoded.blocks)
    return map_stages(ray.data.from_arrow(_blocks(table, size)), [replay])


def resume_position(run_path: str, filesystem: Any = None) -> int:
    """The stream position the latest checkpoint of the Ray Train run at ``run_path`` (``storage_path/name``,
    within the pyarrow ``filesystem`` when given) reached: the questions its workers had consumed; 0 for a new
    run. Read through Ray Train's own record of its checkpoints, so a checkpoint folder that a killed attempt
    left half-written is never taken."""
    import json as _json

    from ray.train import Result

    try:
        result = Result.from_path(run_path, storage_filesystem=filesystem)
    except RuntimeError:  # no such run yet (or no checkpoint record): a fresh start
        return 0
    if result.checkpoint is None:
        return 0
    from step_ray.train.loop import STATE_FILE

    with result.checkpoint.as_directory() as directory:
        state_file = Path(directory) / STATE_FILE
        if not state_file.is_file():
            return 0
        return int(_json.loads(state_file.read_text()).get("rows", 0))


def check_resources(cfg: StepRayConfig, available: dict[str, float]) -> None:
    """Fail before any worker starts when the cluster cannot hold the trainers *and* the data stream.

    ``available``: ``ray.cluster_resources()``. An autoscaling cluster may add nodes later, so this only
    checks a fixed-size (local) cluster: the caller skips it when an autoscaler is configured.
    """
    tc, dc = cfg.train, cfg.train.data
    cpus = float(available.get("CPU", 0))
    need_train = tc.num_workers * tc.cpus_per_worker
    need_data = dc.min_actors * dc.num_cpus
    if need_train + need_data > cpus + 1e-9:
        raise ConfigError(
            "train.cpus_per_worker",
            f"{tc.num_workers} workers x {tc.cpus_per_worker} CPUs + the data stream's {need_data:g} CPUs "
            f"(train.data.min_actors x train.data.num_cpus) = {need_train + need_data:g}, "
            f"but Ray has {cpus:g} CPUs: lower train.cpus_per_worker or train.data.num_cpus")
    if tc.use_gpu:
        gpus = float(available.get("GPU", 0))
        if tc.num_workers * tc.gpus_per_worker > gpus + 1e-9:
            raise ConfigError("train.gpus_per_worker",
                              f"{tc.num_workers} workers x {tc.gpus_per_worker} GPUs, but Ray has {gpus:g} GPUs")
