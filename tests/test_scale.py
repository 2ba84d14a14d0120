"""Corpus scale (issue 10): the stsg and qra steps stream a manifest of thousands of cheap inputs through Ray
Data on the session's Ray, every input ends exactly once in the results, and no Dataset hands the corpus to
the driver (every row any Dataset returns to the driver is counted and inspected)."""

from __future__ import annotations

import json
import shutil
from collections import Counter

import pyarrow.compute as pc
import pyarrow.dataset as pads
import pytest

from step_ray.config import load_config

N_GOOD = 2000

#: Columns that carry the corpus itself; none may reach the driver.
CORPUS_COLUMNS = {"uri", "stsg_path", "perceived", "semantics", "records", "question", "options", "rationale",
                  "program", "previous", "graph_path"}


@pytest.fixture
def driver_rows(monkeypatch):
    """Every row a Ray Dataset returns to the driver, and every row the driver hands to ``from_items``."""
    import ray.data
    from ray.data import Dataset

    fetched: list[tuple[str, list[dict]]] = []

    def counting(name):
        original = getattr(Dataset, name)

        def wrapper(self, *args, **kwargs):
            out = original(self, *args, **kwargs)
            if name in ("iter_rows", "iter_batches"):
                rows: list[dict] = []  # one entry per call, filled as the rows arrive
                fetched.append((name, rows))

                def gen():
                    for item in out:
                        rows.extend([dict(item)] if name == "iter_rows" else _batch_rows(item))
                        yield item
                return gen()
            rows = out if isinstance(out, list) else [{"batch": True}] * _rows(out)
            fetched.append((name, list(rows)))
            return out
        monkeypatch.setattr(Dataset, name, wrapper)

    for name in ("take_all", "take", "take_batch", "iter_rows", "iter_batches", "to_pandas", "to_arrow_refs",
                 "to_numpy_refs", "to_pandas_refs"):
        counting(name)
    original_from_items = ray.data.from_items

    def from_items(items, *args, **kwargs):
        fetched.append(("from_items", [dict(i) if isinstance(i, dict) else {"item": i} for i in items]))
        return original_from_items(items, *args, **kwargs)

    monkeypatch.setattr(ray.data, "from_items", from_items)

    from step_ray.pipeline.dataflow import LocalFlow

    for method in ("inputs", "stages", "write", "shuffle", "map_reduce"):
        monkeypatch.setattr(LocalFlow, method, lambda *a, **k: pytest.fail("the in-process flow ran on Ray"))
    return fetched


def _batch_rows(batch) -> list[dict]:
    """A fetched batch's rows: as they are for Arrow batches (the flows' aggregations stream combined rows
    to the driver this way), else one placeholder per row."""
    return batch.to_pylist() if hasattr(batch, "to_pylist") else [{"batch": True}] * _rows(batch)


def _rows(batch) -> int:
    if hasattr(batch, "num_rows"):
        return batch.num_rows
    if isinstance(batch, dict):
        return len(next(iter(batch.values()), []))
    return len(batch)


def _tiny_corpus(tmp_path):
    from step_ray.synth.corpus import generate_corpus

    cfg = load_config(None, ["synth.videos=3", "synth.seed=1", "synth.width=64", "synth.height=64",
                             "synth.object_size=12", "synth.scene_seconds=0.6", "synth.scenes=1",
                             "synth.min_objects=2", "synth.max_objects=2", "video.sample_fps=5"])
    return generate_corpus(tmp_path / "corpus", cfg.synth, cfg.video, cfg.stsg)


@pytest.mark.ray
def test_thousands_of_inputs_stream_through_stsg_and_qra(ray_session, tmp_path, driver_rows):
    from step_ray.pipeline.steps import qra_step, stsg_step
    from step_ray.qra.records import qra_dataset

    videos = [i["path"] for i in _tiny_corpus(tmp_path)]
    manifest = tmp_path / "manifest.jsonl"
    bad = {"missing": "cannot read the file", ".hidden": "not a plain file name"}
    hidden = tmp_path / ".hidden.mp4"  # a stem that cannot be an id: an error row (a manifest id like it is refused)
    shutil.copy(videos[0], hidden)
    with open(manifest, "w") as f:
        for i in range(N_GOOD):
            f.write(json.dumps({"uri": videos[i % len(videos)], "video_id": f"clip-{i:05d}"}) + "\n")
        f.write(json.dumps({"uri": "no/such/video.mp4", "video_id": "missing"}) + "\n")
        f.write(json.dumps({"uri": str(hidden)}) + "\n")
    cfg = load_config(None, [
        "video.sample_fps=5", "perception.pool.min_size=2", "perception.pool.num_cpus=0.5",
        "perception.pool.batch_size=50", "stsg.pool.num_cpus=0.25", "stsg.pool.batch_size=100",
        "qra.pool.num_cpus=0.5", "qra.pool.batch_size=100", "qra.samples_per_video=3"])
    out = tmp_path / "run"
    s = stsg_step(cfg, [str(manifest)], out / "stsg")
    n = N_GOOD + len(bad)
    assert s["videos"] == n and s["accounted_for"] and s["ok"] == N_GOOD and s["failed"] == len(bad), s
    results = pads.dataset(str(out / "stsg" / "results" / s["run"]), format="parquet").to_table()
    ids = Counter(results["video_id"].to_pylist())
    assert len(ids) == n and set(ids.values()) == {1}  # every input exactly once
    for vid, reason in bad.items():
        assert reason in s["errors"][vid], s["errors"]
    assert not list(tmp_path.rglob(".hidden*.json"))
    assert len(list((out / "stsg").glob("*.stsg.json"))) == N_GOOD  # written by the graph actors

    q = qra_step(cfg, [str(out / "stsg")], out / "qra")  # the stsg folder: the graphs of its last run
    assert q["graphs"] == N_GOOD and q["graphs_failed"] == 0 and q["samples"] > 0, q
    per_graph = pads.dataset(str(out / "qra" / "results"), format="parquet").to_table(columns=["video_id"])
    assert sorted(Counter(per_graph["video_id"].to_pylist()).values()) == [1] * N_GOOD
    train = qra_dataset(out / "qra").to_table(columns=["id", "video_id"], filter=pc.field("split") == "train")
    assert 0 < train.num_rows < q["samples"] and q["by_split"]["train"] == train.num_rows
    assert all(name.startswith("part-") for name in q["parts"])

    # Nothing of the corpus on the driver: a handful of summary rows per call, none with corpus columns. The
    # answer-balancing threshold search (tally kinds "h" / "k") returns at most GATHER_LIMIT hashes or buckets
    # per over-represented (family, answer) per pass: bounded by a constant, not by the corpus size.
    from step_ray.qra.corpus import GATHER_LIMIT

    def search(rows: list[dict]) -> bool:
        return bool(rows) and all(r.get("kind") in ("h", "k") for r in rows)

    for _, rows in filter(lambda c: search(c[1]), driver_rows):
        per_value = Counter((r["a"], r["b"]) for r in rows)
        assert max(per_value.values()) <= GATHER_LIMIT, per_value.most_common(3)
    # The corpus-wide tallies (answer counts for balancing and the card) have a row per distinct answer value
    # of a family: bounded by the answer vocabulary, not by the number of videos.
    answers = qra_dataset(out / "qra").to_table(columns=["family", "answer"])
    vocabulary = len(set(zip(answers["family"].to_pylist(), answers["answer"].to_pylist())))
    tallies = [r for _, rows in driver_rows if not search(rows) for r in rows if "kind" in r]
    per_kind = Counter(r["kind"] for r in tallies)
    assert max(per_kind.values()) <= 2 * vocabulary + 10, (per_kind, vocabulary)
    summaries = [(name, [r for r in rows if "kind" not in r]) for name, rows in driver_rows if not search(rows)]
    # The other rows are the summaries' own: a row per status, and at most the examples each step keeps (error
    # and no-sample examples of stsg and qra, 100 each): a constant, far below the corpus.
    from step_ray.pipeline.qra_run import EXAMPLES
    from step_ray.pipeline.stsg_run import ERROR_EXAMPLES

    total = sum(len(rows) for _, rows in summaries)
    worst = max((len(rows), name) for name, rows in summaries)
    leaked = {k for _, rows in driver_rows for r in rows for k in r} & CORPUS_COLUMNS
    bound = ERROR_EXAMPLES + 2 * EXAMPLES + 50
    assert total <= bound < n / 5 and worst[0] <= 200 and not leaked, (total, bound, worst, leaked)


@pytest.mark.ray
def test_a_listing_keeps_its_own_blocks(ray_session, tmp_path):
    """1,500 manifest lines (one read task) arrive in at most the listing's own blocks of LISTING_BLOCK_ROWS (Ray
    Data may merge them up to its target block size), not split into its default 200 read blocks: every block
    is a map task of the id assignment's shuffle."""
    from step_ray.pipeline.dataflow import LISTING_BLOCK_ROWS, InputListing, read_listing
    from step_ray.pipeline.qra_run import NO_PREVIOUS

    manifest = tmp_path / "manifest.jsonl"
    manifest.write_text("".join(json.dumps({"uri": f"v{i}.mp4", "video_id": f"v{i:05d}"}) + "\n"
                                for i in range(1500)))
    ds = read_listing(InputListing([str(manifest)], (".mp4",), manifests=True, previous_type=NO_PREVIOUS))
    blocks = ds.materialize()
    assert blocks.count() == 1500 and 1 <= blocks.num_blocks() <= -(-1500 // LISTING_BLOCK_ROWS), blocks.num_blocks()
