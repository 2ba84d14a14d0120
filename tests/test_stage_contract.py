"""The stage contract (step_ray.stage): built from the config sections it names, resources readable without
building it, declared inputs / outputs checked, error rows, keys that hash exactly what shapes the output,
typed records, and Ray Data showing each stage by its own name."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import ClassVar

import pyarrow as pa
import pytest

from step_ray.config import QraConfig, load_config
from step_ray.perception.semantics import AttributeFact, ParsedSemantics, SemanticsRecord, semantics_from_record, semantics_record
from step_ray.perception.tracks import AttrChange, Clip, Event, Perceived, Track
from step_ray.ray_executor import actor_class
from step_ray.stage import run_local
from step_ray.stage import RowStage, Stage, StageContractError, run_batch, schema
from step_ray.stsg.stage import GraphStage, PerceptionStage, settings_key, stsg_stages
from step_ray.utils import arrow


@dataclass
class WordCount(RowStage):
    name: ClassVar[str] = "word-count"
    pool_path: ClassVar[str] = "qra.pool"
    inputs: ClassVar[pa.Schema] = schema(("id", pa.string()), ("text", pa.string()))
    outputs: ClassVar[pa.Schema] = schema(("id", pa.string()), ("status", pa.string()), ("error", pa.string()),
                                          ("words", pa.int64()))
    qra: QraConfig
    seed: int = field(default=0, metadata={"config": "run.seed"})

    def process_row(self, row):
        if row["text"] == "boom":
            raise ValueError("bad text")
        return {"id": row["id"], "status": "ok", "error": None, "words": len(row["text"].split())}


def test_a_stage_gets_its_sections_and_its_pool_without_being_built():
    cfg = load_config(None, ["qra.pool.max_size=3", "run.seed=7"])
    assert WordCount.pool_of(cfg).max_size == 3  # read from the config, no stage built
    stage = WordCount.from_config(cfg)
    assert stage.qra is cfg.qra and stage.seed == 7 and stage.pool.max_size == 3
    assert {f.name for f in dataclasses.fields(stage)} == {"pool", "qra", "seed"}  # nothing else of the tree
    with pytest.raises(TypeError, match="no field"):
        WordCount.from_config(cfg, video=cfg.video)


def test_inputs_and_outputs_are_checked_and_bad_rows_become_error_rows():
    stage = WordCount.from_config(load_config())
    out = run_batch(stage, pa.table({"id": ["a", "b"], "text": ["one two", "boom"], "extra": [1, 2]}))
    rows = out.to_pylist()
    assert out.schema == stage.outputs  # exactly the declared columns, the extra input column is not passed on
    assert rows[0] == {"id": "a", "status": "ok", "error": None, "words": 2}
    assert rows[1]["status"] == "error" and rows[1]["id"] == "b" and "ValueError: bad text" in rows[1]["error"]
    with pytest.raises(StageContractError, match="lacks column"):
        run_batch(stage, pa.table({"id": ["a"]}))
    with pytest.raises(StageContractError, match="does not fit"):
        run_batch(stage, pa.table({"id": ["a"], "text": pa.array([[1]], pa.list_(pa.int64()))}))

    class Drops(WordCount):
        def process(self, batch):
            return super().process(batch).slice(0, 1)

    with pytest.raises(StageContractError, match="2 input rows gave 1"):
        run_batch(Drops.from_config(load_config()), pa.table({"id": ["a", "b"], "text": ["x", "y"]}))


def test_a_batch_that_fails_as_a_whole_becomes_error_rows():
    @dataclass
    class Broken(WordCount):
        def process(self, batch):
            raise RuntimeError("the model is gone")

    out = run_batch(Broken.from_config(load_config()), pa.table({"id": ["a", "b"], "text": ["x", "y"]})).to_pylist()
    assert [r["status"] for r in out] == ["error", "error"] and "the model is gone" in out[0]["error"]


def test_keys_hash_what_shapes_the_output_and_nothing_else():
    base = load_config(None, ["video.sample_fps=5"])
    key = settings_key(*stsg_stages(base, "out"))

    def key_of(*overrides):
        return settings_key(*stsg_stages(load_config(None, ["video.sample_fps=5", *overrides]), "elsewhere"))

    # how it runs: threads, pools, the output folder
    assert key_of("video.decode_threads=3", "perception.pool.max_size=8", "stsg.pool.num_cpus=1") == key
    # what a graph is made of: decoding, perception, graph building
    assert key_of("video.sample_fps=4") != key and key_of("stsg.near_factor=2.0") != key
    assert key_of("perception.conf=0.5") != key
    # sections the stages do not read do not touch the key; the parser's only when it runs
    assert key_of("qra.max_steps=3", "train.steps=9", "model.frames=4", "run.seed=3") == key
    assert key_of("semantics.samples=5") == key and key_of("semantics.enabled=true") != key
    assert key_of("semantics.enabled=true", "run.seed=3") != key_of("semantics.enabled=true")
    perception = PerceptionStage.from_config(base)
    assert perception.semantics is None and perception.model is None and perception.seed is None


def test_typed_records_round_trip_through_arrow():
    clip = Clip(0, 0.0, 1.0, [0.0, 0.5, 1.0], [0.0, 1.0])
    track = Track(0, 3, "circle", {0.0: (1.0, 2.0, 3.0, 4.0), 0.5: (2.0, 2.0, 4.0, 4.0)}, color="red",
                  changes=[AttrChange("color", "red", "blue", 0.5, 1.0)], appearance=[0.5, 0.5])
    p = Perceived("v", "v.mp4", 1.0, 64, 48, [clip], [track],
                  events=[Event("change", 0, 0.5, [3], attrs={"attribute": "color", "from": "red", "to": "blue"})],
                  provenance={"detector": "detector:color", "sample_fps": 5.0, "parser": {"prompt": "semantics/1"}})
    column = arrow.column([p, None], Perceived)
    assert column.type == PerceptionStage.outputs.field("perceived").type
    back = arrow.from_arrow(column.to_pylist()[0], Perceived)
    assert back == p and column.to_pylist()[1] is None
    with pytest.raises(arrow.RecordTypeError, match="no field"):
        arrow.to_arrow(dataclasses.replace(p, provenance={"unknown": 1}), Perceived)
    parsed = ParsedSemantics(attributes={(0, 3): {"color": ("red", 0.75)}}, relations=[(0, 3, "near", 4, 0.5, 1.0)],
                             actions=[Event("action", 0, 0.5, [3], source="parser", attrs={"label": "spins"})],
                             source="parser:semantics/1")
    rec = arrow.from_arrow(arrow.column([semantics_record(parsed)], SemanticsRecord).to_pylist()[0], SemanticsRecord)
    assert rec.attributes == [AttributeFact(0, 3, "color", "red", 0.75)]
    assert semantics_from_record(rec) == parsed


def test_the_local_executor_sets_up_and_tears_down(tmp_path):
    calls = []

    @dataclass
    class Counted(WordCount):
        def setup(self):
            calls.append("setup")

        def teardown(self):
            calls.append("teardown")

    out = list(run_local([pa.table({"id": ["a"], "text": ["x"]})] * 3, [Counted.from_config(load_config())]))
    assert len(out) == 3 and calls == ["setup", "teardown"]


def test_ray_data_shows_each_stage_by_its_name():
    stages = stsg_stages(load_config(), "out")
    assert [actor_class(s).__name__ for s in stages] == ["stsg-perception", "stsg-graph"]
    assert isinstance(stages[1], GraphStage) and issubclass(actor_class(stages[1]), object)
    assert all(isinstance(s, Stage) for s in stages)
