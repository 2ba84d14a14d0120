"""The training data stream on Ray: each question encoded once (train-encode), every pass replayed from the
encode cache (train-replay) in the pass orders and from the resume positions of the uncached stream."""

from __future__ import annotations

import os

os.environ.setdefault("DS_ACCELERATOR", "cpu")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from pathlib import Path

import pyarrow.parquet as pq
import pytest

from step_ray.config import load_config
from step_ray.train.toy import make_toy_qra

PASSES = 3


def _rows(ds, cache_blocks=None) -> list[tuple]:
    """The stream's rows as (position, first-row-of-its-question first, id, skip, sequence bytes), in order; a
    replayed row's bytes read from the encode cache (``cache_blocks``), as the training workers read them."""
    import ray

    from step_ray.train.stream import replay_tables

    cache = replay_tables(ray.get(list(cache_blocks))) if cache_blocks else None
    return _in_order(ds.take_all(), cache)


def _in_order(rows, cache=None) -> list[tuple]:
    def data(r):
        if "cache_table" not in r:
            return bytes(r["seq"])
        assert r["seq"] == b""  # the stream carries no bytes: they stay in the cache
        return b"" if r["skip"] else cache[r["cache_table"]].column("seq")[r["cache_row"]].as_py()

    out = [(int(r["pos"]), -int(r["qra_rows"]), str(r["id"]), str(r["skip"]), data(r)) for r in rows]
    return sorted(out, key=lambda r: r[:2])


def test_questions_are_encoded_once_and_replayed_on_every_pass(ray_session, tmp_path, monkeypatch):
    """Three passes over the toy questions: with the cache the videos can be deleted once it is built and
    every pass still yields every question's sequences, byte for byte those of the uncached stream (which
    encodes each pass again, and after the deletion can only skip); positions and the resume start are those
    of the uncached stream."""
    from step_ray.models.loading import ensure_tiny
    from step_ray.train.stream import build_stream, encode_questions, sequences_per_row, split_table, stream_table

    monkeypatch.setenv("STEP_RAY_CACHE", str(tmp_path / "cache"))
    qra = make_toy_qra(tmp_path / "toy", videos=4, seed=2)
    common = ["train.data.num_cpus=0.5", "train.data.batch_size=2", "train.data.frame_cache_mb=0"]
    cached_cfg = load_config(None, common + ["train.data.cache=true"])
    plain_cfg = load_config(None, common + ["train.data.cache=false"])
    ensure_tiny(cached_cfg.model, cached_cfg.run.seed)  # once here, not in two actors at once
    base = split_table(qra)
    n = base.num_rows
    assert n >= 6

    notes: dict = {}
    reference = _rows(build_stream(plain_cfg, qra, passes=PASSES, notes=notes))
    assert not any(r[3] for r in reference)  # every question usable while its video is there
    assert notes["encode_cache"] == {"used": False, "reason": "train.data.cache is false"}
    # A cache that outgrows its share of the object store is dropped while it is built: the run streams and
    # encodes every pass instead, the same rows, and says why.
    over = load_config(None, common + ["train.data.cache=true", "train.data.cache_max_fraction=1e-9"])
    assert encode_questions(over, base, budget=1) is None
    assert _rows(build_stream(over, qra, passes=PASSES, notes=notes)) == reference
    assert not notes["encode_cache"]["used"] and "cache_max_fraction" in notes["encode_cache"]["reason"]
    encoded = encode_questions(cached_cfg, base)
    # Through the encode stage: each question once, its sequences once (2 in the multitask format).
    assert encoded.questions == n and encoded.sequences == n * sequences_per_row(cached_cfg)
    assert encoded.nbytes > 0

    videos = sorted({r["video_uri"] for r in pq.read_table(qra).to_pylist()})
    for uri in videos:
        Path(uri).unlink()  # nothing after this point can decode a frame

    replayed = _rows(build_stream(cached_cfg, qra, passes=PASSES, encoded=encoded, notes=notes), encoded.blocks)
    assert notes["cache_blocks"] == encoded.blocks
    assert replayed == reference  # the same sequences at the same positions, no video needed
    assert notes["encode_cache"]["used"] and notes["encode_cache"]["rows"] == encoded.sequences
    questions = [r for r in replayed if r[1] == -1]
    assert [r[0] for r in questions] == list(range(PASSES * n))  # every position once, in pass order
    order = stream_table(base, cached_cfg.run.seed, 0, PASSES * n).column("id").to_pylist()
    assert [r[2] for r in questions] == order
    assert len({tuple(order[p * n:(p + 1) * n]) for p in range(PASSES)}) == PASSES  # a new order every pass

    # The control: without the cache every pass encodes again, so with the videos gone every row is a skip.
    again = _rows(build_stream(plain_cfg, qra, passes=1))
    assert len(again) == n and all(r[3].startswith("video: no such video: ") for r in again)

    # A resumed run starts its stream at the checkpoint's position: the same positions and questions.
    start = n + 2
    resumed = _rows(build_stream(cached_cfg, qra, passes=1, start=start, encoded=encoded), encoded.blocks)
    assert resumed == [r for r in reference if start <= r[0] < start + n]


def test_encode_cache_must_match_the_split(ray_session, tmp_path, monkeypatch):
    """A cache built from another QRA table is refused, not replayed with the wrong questions."""
    from step_ray.models.loading import ensure_tiny
    from step_ray.train.stream import build_stream, encode_questions, split_table

    monkeypatch.setenv("STEP_RAY_CACHE", str(tmp_path / "cache"))
    small = make_toy_qra(tmp_path / "small", videos=2, seed=3)
    large = make_toy_qra(tmp_path / "large", videos=4, seed=3)
    cfg = load_config(None, ["train.data.num_cpus=0.5"])
    ensure_tiny(cfg.model, cfg.run.seed)
    encoded = encode_questions(cfg, split_table(small))
    with pytest.raises(ValueError, match="encode cache holds"):
        build_stream(cfg, large, passes=1, encoded=encoded)


def test_replay_stage_gives_each_position_its_questions_rows_in_order(tmp_path, monkeypatch):
    """In this process (run_local): train-encode over the questions once, train-replay over two passes from a
    resume position; the rows follow the stream's order, and a question outside the cache is an error."""
    import numpy as np
    import pyarrow as pa

    from step_ray.models.loading import ensure_tiny
    from step_ray.stage import run_local
    from step_ray.stage import run_batch
    from step_ray.train.stream import (
        TrainEncodeStage, TrainReplayStage, question_table, replay_tables, split_table, stream_positions,
        stream_table,
    )

    monkeypatch.setenv("STEP_RAY_CACHE", str(tmp_path / "cache"))
    cfg = load_config(None, ["train.data.batch_size=2"])
    ensure_tiny(cfg.model, cfg.run.seed)
    base = split_table(make_toy_qra(tmp_path / "toy", videos=4, seed=2))
    n = base.num_rows
    table = question_table(base).append_column("pos", pa.array(np.arange(n), pa.int64()))
    encode = TrainEncodeStage.from_config(cfg)
    assert encode.pool.num_cpus == cfg.train.data.num_cpus and encode.pool.max_size == cfg.train.data.max_actors
    cache = list(run_local([table.slice(0, 2), table.slice(2, 2), table.slice(4)], [encode]))
    # Two blocks, as Ray would leave them: the first of two chunks (Ray Data's block shaping joins batches).
    cache = [pa.concat_tables(cache[:2]), cache[2]]
    assert cache[0].column("seq").num_chunks == 2
    replay = TrainReplayStage.from_config(cfg)
    replay.index(cache)
    tables = replay_tables(cache)
    assert len(tables) == 3 and all(t.column("seq").num_chunks == 1 for t in tables)  # one chunk each
    positions, questions = stream_positions(n, cfg.run.seed, 3, 3 + 2 * n)
    out = run_batch(replay, pa.table({"pos": positions, "question": questions}))
    assert out.num_rows == 2 * 2 * n  # two passes, two sequences a question
    assert set(out.column("seq").to_pylist()) == {b""}  # the bytes stay in the cache (ShardCollate reads them)
    firsts = [i for i, f in zip(out.column("id").to_pylist(), out.column("qra_rows").to_pylist()) if f]
    assert firsts == stream_table(base, cfg.run.seed, 3, 3 + 2 * n).column("id").to_pylist()
    assert out.column("pos").to_pylist() == np.repeat(positions, 2).tolist()
    by_id = {}
    for pos, first, row_id, skip, data in _in_order(out.to_pylist(), tables):  # every pass: the same bytes
        by_id.setdefault((row_id, -first), set()).add(data)
    assert all(len(v) == 1 and b"" not in v for v in by_id.values()) and len(by_id) == 2 * n
    # The workers' collate reads the same bytes from the cache: a micro-batch of the first 4 rows.
    from step_ray.train.stream import ShardCollate

    rows = out.slice(0, 4).to_pydict()
    micro, questions, skipped, first = ShardCollate(0, cache=tables)({k: np.asarray(v, dtype=object)
                                                                             for k, v in rows.items()})
    assert micro["input_ids"].shape[0] == 4 and questions == 2 and skipped == 0 and first == positions[0]
    with pytest.raises(RuntimeError, match="need the encode cache"):
        ShardCollate(0)({k: np.asarray(v, dtype=object) for k, v in rows.items()})
    with pytest.raises(RuntimeError, match="not in the encode cache"):
        run_batch(replay, pa.table({"pos": [0], "question": [n]}))
