"""The training data stream: QRA Parquet -> Ray Data -> decode + encode actors -> each worker's shard.

::

    the train split of the QRA Parquet, read on the driver (compact text rows) -> ray.data.from_arrow
      -> EncodeStage (actor pool, train.data.num_cpus each): keep the train split, decode the question's frames
         with decord (PyAV fallback), run the model's processor, build the labelled sequences
      -> streaming_split(num_workers, equal=True)  (done by Ray Train)
      -> get_dataset_shard("train").iter_torch_batches(collate_fn=ShardCollate)  in every training worker

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
from pathlib import Path
from typing import Any, Optional

import numpy as np

from step_ray.config import ConfigError, StepRayConfig, from_dict, to_dict

logger = logging.getLogger(__name__)

COLUMNS = ("id", "seq", "skip", "qra_rows", "pos")


class EncodeStage:
    """Ray Data callable class: a batch of QRA rows -> a batch of encoded sequences (see the module docs)."""

    def __init__(self, cfg_data: dict, split: str = "train"):
        self.cfg: StepRayConfig = from_dict(cfg_data)
        self.split = split
        self.encoder: Any = None

    def setup(self) -> None:
        """Load the processor (inside the actor, once)."""
        import torch

        from step_ray.models.loading import load_processor, resolve_base
        from step_ray.train.data import RowEncoder

        torch.set_num_threads(1)  # an actor holds a fraction of a CPU: one thread, no oversubscription
        processor = load_processor(resolve_base(self.cfg.model, self.cfg.run.seed), self.cfg.model.trust_remote_code)
        tc = self.cfg.train
        self.encoder = RowEncoder(processor, self.cfg.model, tc.rationale_weight, tc.loss_format,
                                  frame_cache_mb=tc.data.frame_cache_mb)

    def __call__(self, batch: Any) -> Any:
        import pyarrow as pa

        from step_ray.models.encoding import pack_sequence
        from step_ray.train.data import rows_from_batch

        if self.encoder is None:
            self.setup()
        out: dict[str, list] = {c: [] for c in COLUMNS}
        for row in rows_from_batch(batch):
            if row.get("split") != self.split:
                continue
            seqs, reason = self.encoder.encode(row)
            pos = int(row.get("pos", -1))
            if reason is not None:
                out["id"].append(str(row.get("id")))
                out["seq"].append(b"")
                out["skip"].append(reason)
                out["qra_rows"].append(1)
                out["pos"].append(pos)
            for i, seq in enumerate(seqs):
                out["id"].append(str(row.get("id")))
                out["seq"].append(pack_sequence(seq))
                out["skip"].append("")
                out["qra_rows"].append(1 if i == 0 else 0)
                out["pos"].append(pos)
        return pa.table({
            "id": pa.array(out["id"], pa.string()),
            "seq": pa.array(out["seq"], pa.large_binary()),
            "skip": pa.array(out["skip"], pa.string()),
            "qra_rows": pa.array(out["qra_rows"], pa.int64()),
            "pos": pa.array(out["pos"], pa.int64()),
        })


class ShardCollate:
    """``iter_torch_batches`` collate function: stream rows -> (micro-batch or None, questions, skipped,
    lowest position used or -1).

    The micro-batch is None when every row of it was skipped (the caller then skips it on all ranks together).
    Rows at positions below ``start`` (already covered by the checkpoint this worker restored) are dropped and
    counted nowhere: they were trained on before the restart.
    """

    def __init__(self, pad_id: int, start: int = 0):
        self.pad_id = pad_id
        self.start = start

    def __call__(self, batch: dict[str, np.ndarray]) -> tuple[Optional[dict], int, int, int]:
        from step_ray.models.encoding import collate, unpack_sequence

        pos = np.asarray(batch["pos"]) if "pos" in batch else np.full(len(batch["seq"]), -1)
        keep = pos >= self.start if self.start > 0 else np.ones(len(pos), dtype=bool)
        seqs = [unpack_sequence(b) for b, skip, k in zip(batch["seq"], batch["skip"], keep) if k and not skip]
        questions = int(np.asarray(batch["qra_rows"])[keep].sum())
        skipped = int(sum(1 for s, k in zip(batch["skip"], keep) if k and s))
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


def stream_table(base: Any, seed: int, start: int, end: int) -> Any:
    """Positions ``start`` .. ``end - 1`` of the stream over the questions of ``base`` (see the module docs), as
    the rows of ``base`` in stream order with their position in a ``pos`` column."""
    import pyarrow as pa

    n = base.num_rows
    parts = []
    for p in range(start // n if n else 0, -(-end // n) if n else 0):
        lo, hi = max(start - p * n, 0), min(end - p * n, n)
        if lo < hi:
            part = base.take(pass_order(seed, p, n)[lo:hi])
            parts.append(part.append_column("pos", pa.array(np.arange(p * n + lo, p * n + hi), pa.int64())))
    if not parts:
        return base.slice(0, 0).append_column("pos", pa.array([], pa.int64()))
    return pa.concat_tables(parts)


def build_stream(cfg: StepRayConfig, qra_path: str | Path, split: str = "train", passes: Optional[int] = None,
                 start: int = 0) -> Any:
    """The lazy Ray Dataset of encoded ``split`` sequences (nothing is decoded until the workers iterate),
    from stream position ``start`` (a resumed run's :func:`resume_position`) on.

    One iteration of the stream covers the passes the run's steps need (or ``passes`` passes), each in its own
    order (:func:`pass_order`): Ray Data re-executes a dataset for every epoch (new actors, a new executor:
    seconds of start-up), so a run should read its data in one long epoch, not in many short ones (measured on
    the toy set of 18 questions: 11 samples/s with an epoch per pass, see benchmarks/).
    """
    import ray.data

    dc = cfg.train.data
    base = split_table(qra_path, split)
    n = max(base.num_rows, 1)
    if passes is None:
        # Enough positions for the whole run from position 0 (a resumed run has consumed `start` of them), and
        # at least one pass beyond `start` (rows skipped before the checkpoint consumed positions too).
        end = max(passes_needed(cfg, base.num_rows) * n, start + n)
    else:
        end = start + passes * n
    table = stream_table(base, cfg.run.seed, start, end)
    # Blocks of a few actor batches: several actors can work at once and the workers' shards fill evenly.
    # Sliced here, not with repartition(): that is an all-to-all operator whose tasks would need CPUs of their
    # own.
    size = max(1, 4 * dc.batch_size)
    ds = ray.data.from_arrow([table.slice(i, size) for i in range(0, max(table.num_rows, 1), size)])
    return ds.map_batches(
        EncodeStage,
        fn_constructor_kwargs={"cfg_data": to_dict(cfg), "split": split},
        compute=ray.data.ActorPoolStrategy(min_size=dc.min_actors, max_size=dc.max_actors),
        num_cpus=dc.num_cpus,
        batch_size=dc.batch_size,
        batch_format="pyarrow",
    )


def resume_position(run_path: str) -> int:
    """The stream position the latest checkpoint of the Ray Train run at ``run_path`` (``storage_path/name``)
    reached: the questions its workers had consumed; 0 for a new run. Read through Ray Train's own record of
    its checkpoints, so a checkpoint folder that a killed attempt left half-written is never taken."""
    import json as _json

    from ray.train import Result

    try:
        result = Result.from_path(run_path)
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
