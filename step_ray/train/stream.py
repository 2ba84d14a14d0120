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

One output row per training sequence, in four columns: ``id`` (the QRA row), ``seq`` (the sequence's tensors as
safetensors bytes, empty for a skipped row), ``skip`` (why the row was skipped, empty when used) and ``qra_rows``
(1 on the first row a QRA row produced, so workers count questions, not sequences). Skipped rows travel on to
the workers, which count and drop them: every shard then keeps the same length, and the workers stay in
lockstep (one collective per micro-batch on every rank). A question's answer and rationale sequences are
neighbours in the stream, so without a local shuffle (``train.data.shuffle_buffer = 0``, the default) a
micro-batch holds both tasks of the same questions, as in Distilling Step-by-Step; the question order is
shuffled on the driver, differently in every pass over the data.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Optional

import numpy as np

from step_ray.config import ConfigError, StepRayConfig, from_dict, to_dict

logger = logging.getLogger(__name__)

COLUMNS = ("id", "seq", "skip", "qra_rows")


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
        self.encoder = RowEncoder(processor, self.cfg.model, tc.rationale_weight, tc.loss_format)

    def __call__(self, batch: Any) -> Any:
        import pyarrow as pa

        from step_ray.train.data import pack_sequence, rows_from_batch

        if self.encoder is None:
            self.setup()
        out: dict[str, list] = {c: [] for c in COLUMNS}
        for row in rows_from_batch(batch):
            if row.get("split") != self.split:
                continue
            seqs, reason = self.encoder.encode(row)
            if reason is not None:
                out["id"].append(str(row.get("id")))
                out["seq"].append(b"")
                out["skip"].append(reason)
                out["qra_rows"].append(1)
            for i, seq in enumerate(seqs):
                out["id"].append(str(row.get("id")))
                out["seq"].append(pack_sequence(seq))
                out["skip"].append("")
                out["qra_rows"].append(1 if i == 0 else 0)
        return pa.table({
            "id": pa.array(out["id"], pa.string()),
            "seq": pa.array(out["seq"], pa.large_binary()),
            "skip": pa.array(out["skip"], pa.string()),
            "qra_rows": pa.array(out["qra_rows"], pa.int64()),
        })


class ShardCollate:
    """``iter_torch_batches`` collate function: stream rows -> (micro-batch or None, questions, skipped).

    The micro-batch is None when every row of it was skipped (the caller then skips it on all ranks together).
    """

    def __init__(self, pad_id: int):
        self.pad_id = pad_id

    def __call__(self, batch: dict[str, np.ndarray]) -> tuple[Optional[dict], int, int]:
        from step_ray.train.data import collate, unpack_sequence

        seqs = [unpack_sequence(b) for b, skip in zip(batch["seq"], batch["skip"]) if not skip]
        questions = int(np.asarray(batch["qra_rows"]).sum())
        skipped = int(sum(1 for s in batch["skip"] if s))
        return (collate(seqs, self.pad_id) if seqs else None), questions, skipped


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


def build_stream(cfg: StepRayConfig, qra_path: str | Path, split: str = "train", passes: Optional[int] = None) -> Any:
    """The lazy Ray Dataset of encoded ``split`` sequences (nothing is decoded until the workers iterate).

    One iteration of the stream covers ``passes`` passes over the questions (default: as many as the run's
    steps need), each in its own shuffled order: Ray Data re-executes a dataset for every epoch (new actors,
    a new executor: seconds of start-up), so a run should read its data in one long epoch, not in many short
    ones (measured on the toy set of 18 questions: 11 samples/s with an epoch per pass, see benchmarks/).
    """
    import pyarrow as pa
    import ray.data

    dc = cfg.train.data
    base = split_table(qra_path, split)
    passes = passes if passes is not None else passes_needed(cfg, base.num_rows)
    rng = np.random.default_rng(cfg.run.seed)
    tables = [base.take(rng.permutation(base.num_rows)) if base.num_rows > 1 else base for _ in range(passes)]
    table = pa.concat_tables(tables) if tables else base
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
