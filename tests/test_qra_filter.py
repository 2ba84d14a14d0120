"""The ``qra-filter`` stage and step: typed stage over a streamed read of the QRA parts, verdicts joined back to
their parts, parts written back (in place too), on Ray and in-process, locally and on S3; decisions those of the
rules in :mod:`step_ray.qra.filter` for the same model, samples and seed."""

from __future__ import annotations

import json

import pyarrow as pa
import pytest

from step_ray.config import load_config
from step_ray.qra import records as R

#: The toy's decodable videos; 3 asks with agreement 0.9: each sample is consistent only if all 3 agree.
OVER = ["qra.filter.asks=3", "qra.filter.min_agreement=0.9", "model.frames=2"]


def toy_parts(tmp_path, videos: int = 2):
    """The toy QRA (real decodable videos) as a qra/3 folder of one part per video (part-00000, part-00002:
    a gap, as the QRA finishing leaves when a part has no samples)."""
    from step_ray.train.toy import make_toy_qra

    toy = make_toy_qra(tmp_path / "toy", videos=videos)
    recs = R.read_parquet(toy)
    for r in recs:  # the toy's rationales are short of the contract's steps + 1 sentences: pad them
        r["rationale"] = (r["rationale"] + [f"So the answer is {r['answer']}."] * r["steps"])[: r["steps"] + 1]
    folder = tmp_path / "qra"
    by_video: dict[str, list] = {}
    for r in recs:
        by_video.setdefault(r["video_id"], []).append(r)
    for i, vid in enumerate(sorted(by_video)):
        R.write_part(by_video[vid], str(folder), 2 * i)
    return folder, recs


def reference_verdicts(cfg, recs) -> dict[str, tuple]:
    """What the filter's rules decide, computed here with the model asked directly, one sample at a time."""
    import numpy as np
    import torch

    from step_ray.models.inputs import frames_for_row
    from step_ray.models.runtime import load_llm
    from step_ray.qra.filter import permutations, verdict

    fcfg = cfg.qra.filter
    torch.manual_seed(cfg.run.seed)
    llm = load_llm(cfg.model, fcfg.model, cfg.run.seed)
    out = {}
    for rec in recs:
        frames = frames_for_row(rec, llm.model_cfg)
        perms = permutations(rec["id"], len(rec["options"]), fcfg.asks, cfg.run.seed)
        asked = [dict(rec, options=[rec["options"][j] for j in p]) for p in perms]
        scores = llm.score_options(asked, [frames] * len(asked))
        picks = [p[int(np.argmax(s))] for p, s in zip(perms, scores)]
        out[rec["id"]] = verdict(picks, rec["answer_index"], fcfg.min_agreement, fcfg.require_correct)
    return out


def part_bytes(folder) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.glob("part-*"))}


def test_rules_apply_a_verdict():
    from step_ray.qra.filter import apply_verdict

    rec = {"id": "a", "flags": ["old"], "consistency": None}
    ok = {"status": "ok", "error": None, "consistency": 2 / 3, "pick": 1, "flags": ["inconsistent"]}
    assert apply_verdict(rec, ok, "flag") == ({"id": "a", "flags": ["inconsistent", "old"], "consistency": 2 / 3},
                                              ["inconsistent"])
    assert apply_verdict(rec, ok, "drop") == (None, ["inconsistent"])
    unreadable = {"status": "ok", "error": "unreadable video: x", "consistency": None, "pick": None,
                  "flags": ["unreadable_video"]}
    assert apply_verdict(rec, unreadable, "drop")[0]["flags"] == ["old", "unreadable_video"]  # never dropped for that
    failed = apply_verdict(rec, {"status": "error", "error": "boom"}, "drop")
    assert failed == ({"id": "a", "flags": ["filter_error", "old"], "consistency": None}, [])


def test_carry_hands_columns_on_beside_a_stage(tmp_path):
    """The executor's ``carry``: input columns the stage never sees come back beside its outputs, row by row;
    a carried column that is also an output is refused."""
    from dataclasses import dataclass
    from typing import ClassVar

    from step_ray.stage import run_local
    from step_ray.stage import RowStage, StageContractError, schema

    @dataclass(kw_only=True)
    class Length(RowStage):
        name: ClassVar[str] = "length"
        pool_path: ClassVar[str] = "qra.pool"
        inputs: ClassVar[pa.Schema] = schema(("id", pa.string()))
        outputs: ClassVar[pa.Schema] = schema(("id", pa.string()), ("status", pa.string()), ("error", pa.string()),
                                              ("n", pa.int64()))

        def process_row(self, row):
            if row["id"] == "bad":
                raise ValueError("no")
            return {"id": row["id"], "status": "ok", "error": None, "n": len(row["id"])}

    batch = pa.table({"id": ["ab", "bad", "c"], "_part": [3, 4, 5]})
    (out,) = run_local([batch], [Length()], carry=["_part"])
    assert out.column_names == ["id", "status", "error", "n", "_part"]
    assert out["_part"].to_pylist() == [3, 4, 5] and out["status"].to_pylist() == ["ok", "error", "ok"]
    with pytest.raises(StageContractError, match="also outputs"):
        list(run_local([batch], [Length()], carry=["id"]))


def test_filter_stage_keeps_what_the_rules_decide(tmp_path, monkeypatch):
    """The tiny Qwen2.5-VL (random weights) in-process over a folder of two parts: every verdict equals the one
    the rules give with the model asked directly; parts come back with the same indices; with drop, exactly
    the flagged samples go; the driver reads no more than one part at a time."""
    from step_ray.pipeline import qra_filter, steps
    from step_ray.pipeline.steps import qra_filter_step
    from step_ray.qra.card import card_stats

    monkeypatch.setenv("STEP_RAY_CACHE", str(tmp_path / "cache"))
    folder, recs = toy_parts(tmp_path)
    cfg = load_config(None, OVER)
    expected = reference_verdicts(cfg, recs)
    reads = []
    real_read = R.read_parquet
    monkeypatch.setattr(R, "read_parquet", lambda path, *a, **k: reads.append(str(path)) or real_read(path, *a, **k))
    flag = qra_filter_step(cfg, folder, tmp_path / "flag", use_ray=False)
    assert reads and all(R.PART_PATTERN.match(p.rsplit("/", 1)[-1]) for p in reads)  # one part at a time
    monkeypatch.setattr(R, "read_parquet", real_read)
    assert sorted(p.name for p in (tmp_path / "flag").glob("part-*")) == [
        "part-00000.jsonl", "part-00000.parquet", "part-00002.jsonl", "part-00002.parquet"]
    rows = R.read_parquet(tmp_path / "flag")
    assert flag["samples"] == flag["kept"] == len(rows) == len(recs) == 6 and flag["errors"] == 0
    for r in rows:
        consistency, _, flags = expected[r["id"]]
        assert r["consistency"] == pytest.approx(consistency) and r["flags"] == sorted(flags)
    inconsistent = {i for i, (_, _, f) in expected.items() if "inconsistent" in f}
    assert flag["flags"].get("inconsistent", 0) == len(inconsistent)
    scored = [c for c, _, _ in expected.values()]
    assert flag["mean_consistency"] == pytest.approx(round(sum(scored) / len(scored), 4))
    assert json.loads((tmp_path / "flag" / "filter.json").read_text())["kept"] == 6
    assert not (tmp_path / "flag" / "_work").exists()
    drop, card = steps._filter(load_config(None, OVER + ["qra.filter.action=drop"]), folder, tmp_path / "drop",
                               use_ray=False)
    kept = R.read_parquet(tmp_path / "drop")
    assert {r["id"] for r in kept} == set(expected) - inconsistent and drop["dropped"] == len(inconsistent)
    # the card of what was kept, from the filter's tallies, is the card of the kept records (never read back)
    assert card == card_stats(kept) and "card_stats" not in json.loads((tmp_path / "drop" / "filter.json").read_text())
    # the stage's own contract: typed inputs and outputs, its pool where the config says
    stage = qra_filter.QraFilter.from_config(cfg)
    assert stage.pool == cfg.qra.filter.pool and stage.qra == cfg.qra.filter and stage.seed == cfg.run.seed
    assert stage.outputs.field("flags").type == pa.list_(pa.string())


def test_an_interrupted_filter_asks_again_only_what_it_had_not_judged(tmp_path, monkeypatch):
    """A run killed after its verdicts were written (here: publishing fails) leaves them in _work; the re-run
    asks the model only about the samples whose verdicts were lost (one verdicts file of three deleted), and
    its parts are the bytes of an uninterrupted run. Another config starts afresh."""
    from step_ray.models.runtime import load_llm
    from step_ray.pipeline import qra_filter

    monkeypatch.setenv("STEP_RAY_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(qra_filter, "ROWS_PER_FILE", 2)
    folder, recs = toy_parts(tmp_path)
    cfg = load_config(None, OVER)
    asked: list[str] = []

    def counting_loader(model_cfg, source, seed):
        llm = load_llm(model_cfg, source, seed)
        score = llm.score_options
        llm.score_options = lambda rows, frames: asked.append(rows[0]["id"]) or score(rows, frames)
        return llm

    fresh = qra_filter.run(cfg, str(folder), str(tmp_path / "fresh"), use_ray=False, load_model=counting_loader)
    assert len(asked) == 6 and fresh["reused_verdicts"] == 0
    real_publish = qra_filter.publish

    def killed(*a, **k):
        raise KeyboardInterrupt("killed while publishing")

    monkeypatch.setattr(qra_filter, "publish", killed)
    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        qra_filter.run(cfg, str(folder), str(out), use_ray=False, load_model=counting_loader)
    monkeypatch.setattr(qra_filter, "publish", real_publish)
    verdicts = sorted((out / "_work" / "filter").glob("*/verdicts/*/part-*.parquet"))
    assert len(verdicts) == 3
    import pyarrow.parquet as pq

    lost = set(pq.read_table(verdicts[0])["id"].to_pylist())
    verdicts[0].unlink()
    asked.clear()
    again = qra_filter.run(cfg, str(folder), str(out), use_ray=False, load_model=counting_loader)
    assert set(asked) == lost and again["reused_verdicts"] == 4 and again["kept"] == 6
    assert part_bytes(out) == part_bytes(tmp_path / "fresh") and not (out / "_work").exists()
    asked.clear()
    other = qra_filter.run(load_config(None, OVER + ["qra.filter.asks=2"]), str(folder), str(out), use_ray=False,
                           load_model=counting_loader)
    assert other["reused_verdicts"] == 0 and len(asked) == 6


def test_filter_in_place_on_s3(s3_server, tmp_path, monkeypatch):
    """The QRA folder on s3:// filtered in place (as ``step-ray qra`` does with qra.filter.enabled): its parts
    are replaced by the filtered ones, filter.json lands there, the scratch space is gone."""
    import pyarrow.fs as pafs

    from step_ray.pipeline.steps import qra_filter_step

    monkeypatch.setenv("STEP_RAY_CACHE", str(tmp_path / "cache"))
    folder, recs = toy_parts(tmp_path, videos=1)
    fs = pafs.S3FileSystem(endpoint_override=f"http://127.0.0.1:{s3_server}", allow_bucket_creation=True)
    fs.create_dir("filterbucket")
    for p in folder.iterdir():
        with fs.open_output_stream(f"filterbucket/qra/{p.name}") as f:
            f.write(p.read_bytes())
    cfg = load_config(None, OVER + ["qra.filter.action=drop"])
    local = qra_filter_step(cfg, folder, tmp_path / "local", use_ray=False)
    remote = qra_filter_step(cfg, "s3://filterbucket/qra", "s3://filterbucket/qra", use_ray=False)
    assert remote["kept"] == local["kept"] and remote["dropped"] == local["dropped"] and remote["samples"] == 3
    names = {i.base_name for i in fs.get_file_info(pafs.FileSelector("filterbucket/qra"))}
    assert "filter.json" in names and "_work" not in names
    assert {r["id"] for r in R.read_parquet("s3://filterbucket/qra")} == {r["id"] for r in R.read_parquet(tmp_path / "local")}


@pytest.mark.ray
def test_filter_on_ray_matches_in_process_byte_for_byte(ray_session, tmp_path):
    """Two filter actors on Ray Data over a folder of two parts, filtered in place: the same parts, byte for
    byte, as the in-process run into another folder."""
    import shutil

    from step_ray.pipeline.steps import qra_filter_step

    folder, recs = toy_parts(tmp_path)
    copy = tmp_path / "copy"
    shutil.copytree(folder, copy)
    cfg = load_config(None, OVER + ["qra.filter.pool.min_size=2", "qra.filter.pool.max_size=2",
                                    "qra.filter.pool.num_cpus=0.5", "qra.filter.pool.batch_size=2"])
    on_ray = qra_filter_step(cfg, copy, copy, use_ray=True)
    local = qra_filter_step(cfg, folder, tmp_path / "seq", use_ray=False)
    assert on_ray["kept"] == local["kept"] == len(recs) and on_ray["errors"] == 0
    assert on_ray["flags"] == local["flags"] and on_ray["mean_consistency"] == local["mean_consistency"]
    assert part_bytes(copy) == part_bytes(tmp_path / "seq")
    assert not (copy / "_work").exists()
