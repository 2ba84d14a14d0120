"""QRA beyond one graph: stsg/2 families, corpus-wide options and balancing, splits, files, bad input,
correctness against the ground truth, the model-side filter, determinism on Ray."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from step_ray.config import QraConfig, load_config
from step_ray.qra import Program, execute, trace
from step_ray.qra.corpus import balance_answers, finalize
from step_ray.qra.paths import Anchor, GraphIndex, Hop
from step_ray.qra.records import read_parquet, split_of
from step_ray.qra.render import render_question
from step_ray.qra.sampler import near_duplicate_key, sample_graph
from step_ray.qra.stage import read_graph
from step_ray.stsg import schema
from test_pipeline import part_bytes
from test_qra import _assert_valid, random_graph, to_stsg2, two_scene_graph


def _obj(color, category, clip=None):
    return Anchor("object", {"color": color, "category": category, "clip": clip})


@pytest.fixture(scope="module")
def g2():
    return to_stsg2(two_scene_graph())


# --------------------------------------------------------------------------------------------- stsg/2 programs


def test_stsg2_programs_execute(g2):
    red0, blue0, green = _obj("red", "circle", 0), _obj("blue", "square", 0), _obj("green", "triangle")
    q_t = Hop("relation", {"predicate": "left_of", "time": 0.4})
    cases = [
        (Program(red0, (Hop("changed_to", {"attribute": "color"}),), "color"), "green",
         "What colour does the red circle in scene 1 turn into?"),
        (Program(blue0, (q_t, Hop("changed_to", {"attribute": "color", "time": 2.4})), "color"), "green", None),
        # sequence: what the blue square did right after its collision -> it left
        (Program(blue0, (Hop("event_of", {"kind": "collide"}), Hop("next_own")), "action"), "left the scene",
         "What did the blue square in scene 1 do right after its collision?"),
        (Program(green, (Hop("event_of", {"kind": "enter"}), Hop("next_own")), "action"), "stopped moving", None),
        (Program(red0, (Hop("event_of", {"kind": "collide"}), Hop("next_own")), "action"), "turned green", None),
        (Program(red0, (Hop("count_events", {"kind": "collide"}),), "count"), "1",
         "How many times does the red circle in scene 1 collide?"),
        (Program(blue0, (Hop("count_related", {"predicate": "left_of", "time": 2.4}),), "count"), "2",
         "At 2.4s, how many objects are left of the blue square in scene 1?"),
        (Program(blue0, (q_t,), "object", check="red circle"), "yes",
         "Is the object that, at 0.4s, is left of the blue square in scene 1 the red circle?"),
        (Program(blue0, (q_t,), "object", check="green triangle"), "no", None),
        (Program(Anchor("event", {"kind": "enter", "participants": [], "time": None}), (), "earlier",
                 other=Program(Anchor("event", {"kind": "stop_moving", "participants": [], "time": None}), (), "earlier")),
         "yes", "Did the entrance happen before the stop?"),
        (Program(blue0, (q_t,), "same_shape", other=Program(_obj("purple", "triangle"),
                                                            (Hop("event_of", {"kind": "collide"}), Hop("participant")),
                                                            "same_shape")), "yes", None),
    ]
    for program, answer, question in cases:
        assert execute(program, g2) == answer, program
        assert execute(Program.from_json(program.to_json()), g2) == answer
        if question:
            assert render_question(program) == question
    # the comparison counts both paths and itself: 1 + 2 + 1
    assert cases[-1][0].steps == 4
    # "What colour is the red circle" has no single answer once it changes colour
    assert trace(Program(_obj("blue", "square", 0), (q_t,), "color"), g2).error == "no_answer"


def test_stsg2_families_are_sampled_and_valid(g2):
    records, stats = sample_graph(g2, QraConfig(samples_per_video=80), seed=3)
    fams = Counter(r["family"] for r in records)
    assert fams["attribute_change"] and fams["sequence"] and fams["counting"], fams
    done, _ = finalize(records, QraConfig(), 3, balance=False)
    _assert_valid(done, g2)
    for r in done:
        if r["family"] == "sequence":
            assert r["answer_type"] == "action" and "do right after its" in r["question"]
        if r["family"] == "attribute_change":
            assert r["answer"] == "green" and "changes colour from red to green" in " ".join(r["rationale"])


# --------------------------------------------------------------------------------------------- corpus-wide


@pytest.fixture(scope="module")
def corpus():
    cfg = QraConfig(samples_per_video=30, max_answer_share=0.4, test_fraction=0.3, val_fraction=0.2)
    graphs = [random_graph(s, objects=5) for s in range(12)] + [to_stsg2(two_scene_graph(f"vid-{i}")) for i in range(3)]
    candidates = [c for i, g in enumerate(graphs) for c in sample_graph(g, cfg, seed=i)[0]]
    records, stats = finalize(candidates, cfg, seed=0)
    return cfg, graphs, candidates, records, stats


def test_options_answer_compositional_frequent_random(corpus):
    cfg, graphs, candidates, records, _ = corpus
    freq: dict[tuple, Counter] = {}
    for r in records:
        freq.setdefault((r["family"], r["answer_type"]), Counter())[r["answer"]] += 1
    by_id = {c["id"]: c for c in candidates}
    checked = 0
    for r in records:
        if r["answer_type"] == "yesno":
            assert sorted(r["options"]) == ["no", "yes"]
            continue
        assert len(r["options"]) == cfg.num_options and r["answer"] in r["options"]
        comp = set(by_id[r["id"]]["_pools"]["compositional"])
        if comp:
            assert comp & set(r["options"]), (r["question"], comp, r["options"])
        others = {v: c for v, c in freq[(r["family"], r["answer_type"])].items() if v != r["answer"]}
        if others:  # the family's most frequent other answer (or one tied with it, or the next one when the
            top = sorted(set(others.values()), reverse=True)[:2]  # compositional pick took the top)
            assert {v for v, c in others.items() if c in top} & set(r["options"]), r
            checked += 1
    assert checked > 100
    assert len({r["answer_index"] for r in records if r["answer_type"] != "yesno"}) == cfg.num_options


def test_answer_balance_and_dedup(corpus):
    cfg, _, candidates, records, stats = corpus
    by_family: dict[str, Counter] = {}
    for r in records:
        by_family.setdefault(r["family"], Counter())[r["answer"]] += 1
    for fam, c in by_family.items():
        share = max(c.values()) / sum(c.values())
        assert share <= max(cfg.max_answer_share, 1 / len(c)) + 1e-9, (fam, c)
    assert sum(stats["dropped_balance"].values()) == len(candidates) - len(records) - stats["dropped_options"]
    assert sum(stats["dropped_balance"].values()) > 0  # the raw samples were not balanced
    yes_no = by_family["verify"]
    assert abs(yes_no["yes"] - yes_no["no"]) <= 1
    per_video: dict[str, set] = {}
    for r in records:
        key = near_duplicate_key(r["question"], r["answer"])
        assert key not in per_video.setdefault(r["video_id"], set()), r["question"]
        per_video[r["video_id"]].add(key)
    # balancing itself: a family of 9 "a" and 1 "b" keeps one of each at a 0.5 cap
    recs = [{"id": f"x{i}", "family": "f", "answer": "a" if i < 9 else "b"} for i in range(10)]
    kept, dropped = balance_answers(recs, 0.5, 0)
    assert Counter(r["answer"] for r in kept) == {"a": 1, "b": 1} and dropped == {"f": 8}


def test_near_duplicates_differ_only_in_numbers():
    assert near_duplicate_key("At 1.4s, which object is left of the red circle?", "blue square") == \
        near_duplicate_key("At 2.4s, which object is left of the red circle?", "blue square")
    assert near_duplicate_key("At 1.4s, which object is left of the red circle?", "blue square") != \
        near_duplicate_key("At 1.4s, which object is left of the red circle?", "green triangle")


def test_splits_by_video_train_val_test(corpus):
    cfg, _, _, records, _ = corpus
    split = {}
    for r in records:
        assert split.setdefault(r["video_id"], r["split"]) == r["split"]  # no leakage
    ids = [f"v{i}" for i in range(3000)]
    shares = Counter(split_of(v, 0.3, 0.2) for v in ids)
    assert abs(shares["test"] / 3000 - 0.3) < 0.04 and abs(shares["val"] / 3000 - 0.2) < 0.04
    # adding a validation split never moves a video into or out of test
    assert [split_of(v, 0.3) == "test" for v in ids] == [split_of(v, 0.3, 0.2) == "test" for v in ids]


# --------------------------------------------------------------------------------------------- files, bad input


def _write_graph_dir(d: Path) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    for s in range(3):
        schema.write(random_graph(s), d / f"rand-{s}.stsg.json")
    schema.write(schema.new_graph("empty", "file:///e.mp4", 1.0, 224, 160, "perception"), d / "empty.stsg.json")
    one = random_graph(9, objects=1)
    one.graph["video_id"] = "one"
    schema.write(one, d / "one.stsg.json")
    (d / "broken.stsg.json").write_text("{not json")
    (d / "list.stsg.json").write_text("[1, 2]")
    old = json.loads(schema.dumps(random_graph(0)))
    old["graph"]["schema_version"] = "stsg/0"
    (d / "old.stsg.json").write_text(json.dumps(old))
    return d


def test_bad_graph_files_give_reasons_not_crashes(tmp_path):
    from step_ray.pipeline.steps import qra_step

    graphs = _write_graph_dir(tmp_path / "g")
    cfg = load_config(None, ["qra.samples_per_video=10"])
    a = qra_step(cfg, [str(graphs)], tmp_path / "a", use_ray=False)
    assert a["graphs"] == 8 and a["graphs_failed"] == 3
    assert "not JSON" in a["errors"]["broken"] and "unsupported STSG schema version 'stsg/0'" in a["errors"]["old"]
    assert "not an STSG" in a["errors"]["list"]
    assert a["graphs_without_samples"] == {"empty": "no_objects", "one": "single_object"}
    assert a["samples"] > 0
    card = (tmp_path / "a" / "card.md").read_text()
    assert "| empty | no_objects |" in card and "| old | unreadable STSG" in card
    # determinism: the same graphs and seed give byte-identical files
    qra_step(cfg, [str(graphs)], tmp_path / "b", use_ray=False)
    assert part_bytes(tmp_path / "a") == part_bytes(tmp_path / "b")
    rows = [json.loads(line) for line in (tmp_path / "a" / "part-00000.jsonl").read_text().splitlines()]
    assert rows == read_parquet(tmp_path / "a")


def test_reader_accepts_stsg1_and_stsg2(tmp_path):
    p1 = tmp_path / "a.stsg.json"
    schema.write(two_scene_graph(), p1)
    assert read_graph(p1).graph["video_id"] == "vid-a"
    data = json.loads(p1.read_text())
    data["graph"]["schema_version"] = "stsg/2"  # a stsg/2 file (no new edges): readable by the QRA stage
    p2 = tmp_path / "b.stsg.json"
    p2.write_text(json.dumps(data))
    if schema.SCHEMA_VERSION == "stsg/2":
        g = read_graph(p2)
        assert GraphIndex(g).objects
        full = to_stsg2(two_scene_graph())
        schema.write(full, tmp_path / "c.stsg.json")
        assert read_graph(tmp_path / "c.stsg.json").number_of_edges() == full.number_of_edges()
    else:  # before the schema module knows stsg/2, the file is refused with the reason
        with pytest.raises(schema.StsgFormatError):
            read_graph(p2)


def test_card_lists_every_family_and_step(tmp_path, corpus):
    from step_ray.qra.card import write_card

    _, _, _, records, _ = corpus
    path = write_card(records, {"graphs": 15}, str(tmp_path))
    text = Path(path).read_text()
    for fam in {r["family"] for r in records}:
        assert f"| {fam} |" in text
    assert "| family | 1 step | 2 steps | 3 steps | 4 steps | 5 steps | all |" in text
    assert (tmp_path / "plots" / "steps_by_family.png").stat().st_size > 1000
    assert (tmp_path / "plots" / "answers.png").stat().st_size > 1000


# --------------------------------------------------------------------------------------------- correctness


def test_ground_truth_qra_is_fully_correct_and_perturbed_graphs_are_not(tmp_path, synth_corpus):
    """QRA from the ground-truth graphs, re-checked by the executor on those graphs: 100%. Against graphs with
    their relations removed, the share drops and the reasons say why."""
    from step_ray.pipeline.steps import qra_step
    from step_ray.qra.check import check_against

    cfg = synth_corpus["cfg"]
    gt = [i["gt_path"] for i in synth_corpus["items"]]
    summary = qra_step(cfg, gt, tmp_path / "qra", use_ray=False)
    assert summary["samples"] > 50
    result = check_against(tmp_path / "qra", gt)
    assert result["share"] == 1.0 and result["holds"] == summary["samples"], result["examples"]
    assert set(result["by_steps"]) == {str(n) for n in range(1, cfg.qra.max_steps + 1)}
    broken = tmp_path / "broken"
    broken.mkdir()
    for p in gt:
        g = read_graph(p)
        g.remove_edges_from([(u, v, k) for u, v, k, d in g.edges(keys=True, data=True) if d["type"] == "relation"])
        schema.write(g, broken / Path(p).name)
    worse = check_against(tmp_path / "qra", [str(broken)])
    assert worse["share"] < 1.0 and worse["failures"].get("dead_end", 0) > 0
    proc = subprocess.run([sys.executable, "-m", "step_ray.cli", "qra-check", "--qra", str(tmp_path / "qra"),
                           "--graphs", *gt, "--output", str(tmp_path / "check.json")], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert json.loads((tmp_path / "check.json").read_text())["share"] == 1.0


# --------------------------------------------------------------------------------------------- model-side filter


def test_filter_on_the_tiny_model(tmp_path, monkeypatch):
    """The real tiny Qwen2.5-VL asked 3 times per sample (options in 3 orders), in-process, on decodable toy
    videos; the input is a qra/1-style file (no qra/2 columns)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from step_ray.pipeline.steps import qra_filter_step
    from step_ray.qra.filter import permutations, verdict
    from step_ray.train.toy import make_toy_qra

    monkeypatch.setenv("STEP_RAY_CACHE", str(tmp_path / "cache"))
    toy = make_toy_qra(tmp_path / "toy", videos=2)
    rows = pq.read_table(toy).to_pylist()
    for r in rows:  # the toy's rationales are short of the contract's steps + 1 sentences: pad them
        r["rationale"] = (r["rationale"] + [f"So the answer is {r['answer']}."] * r["steps"])[: r["steps"] + 1]
    pq.write_table(pa.Table.from_pylist(rows), toy)
    over = ["qra.filter.asks=3", "qra.filter.min_agreement=1.0", "model.frames=2"]
    flag = qra_filter_step(load_config(None, over), toy, tmp_path / "flag", use_ray=False)
    rows = read_parquet(tmp_path / "flag")
    assert flag["samples"] == flag["kept"] == len(rows) == 6 and flag["errors"] == 0
    for r in rows:
        assert r["consistency"] in (pytest.approx(1 / 3), pytest.approx(2 / 3), 1.0)
        assert ("inconsistent" in r["flags"]) == (r["consistency"] < 1.0)
    drop = qra_filter_step(load_config(None, over + ["qra.filter.action=drop"]), toy, tmp_path / "drop", use_ray=False)
    assert drop["kept"] == 6 - flag["flags"].get("inconsistent", 0) and drop["dropped"] == flag["flags"].get("inconsistent", 0)
    # the pieces: seeded option orders (the first is the stored one), and the vote
    perms = permutations("x", 4, 3, 0)
    assert perms[0] == [0, 1, 2, 3] and perms == permutations("x", 4, 3, 0) and all(sorted(p) == [0, 1, 2, 3] for p in perms)
    assert verdict([2, 2, 1, 2], 2, 0.75, True) == (0.75, 2, [])
    assert verdict([2, 1, 1, 0], 2, 0.75, True) == (0.5, 1, ["inconsistent", "model_disagrees"])


# --------------------------------------------------------------------------------------------- Ray


@pytest.mark.ray
def test_ray_and_sequential_give_byte_identical_files(ray_session, tmp_path):
    """Two CPU actors (explicit num_cpus) vs the in-process runner: the same bytes."""
    from step_ray.pipeline.steps import qra_step

    graphs = _write_graph_dir(tmp_path / "g")
    cfg = load_config(None, ["qra.samples_per_video=10", "qra.pool.min_size=2", "qra.pool.max_size=2",
                             "qra.pool.num_cpus=1"])
    on_ray = qra_step(cfg, [str(graphs)], tmp_path / "ray", use_ray=True)
    local = qra_step(cfg, [str(graphs)], tmp_path / "seq", use_ray=False)
    assert on_ray["samples"] == local["samples"] > 0 and on_ray["errors"] == local["errors"]
    assert part_bytes(tmp_path / "ray") == part_bytes(tmp_path / "seq")


@pytest.mark.ray
def test_filter_on_fractional_gpu_actors(ray_session, tmp_path):
    """The filter's own pool on Ray with num_gpus=0.5 (logical GPUs of the test session; torch falls back to
    the CPU): the same verdicts as in-process."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from step_ray.pipeline.steps import qra_filter_step
    from step_ray.train.toy import make_toy_qra

    toy = make_toy_qra(tmp_path / "toy", videos=1)
    rows = pq.read_table(toy).to_pylist()
    for r in rows:
        r["rationale"] = (r["rationale"] + [f"So the answer is {r['answer']}."] * r["steps"])[: r["steps"] + 1]
    pq.write_table(pa.Table.from_pylist(rows), toy)
    over = ["qra.filter.asks=2", "model.frames=2", "qra.filter.pool.num_gpus=0.5"]
    on_ray = qra_filter_step(load_config(None, over), toy, tmp_path / "ray", use_ray=True)
    local = qra_filter_step(load_config(None, over), toy, tmp_path / "seq", use_ray=False)
    assert on_ray["kept"] == local["kept"] == 3 and on_ray["errors"] == 0
    a, b = read_parquet(tmp_path / "ray"), read_parquet(tmp_path / "seq")
    assert [(r["id"], r["flags"]) for r in a] == [(r["id"], r["flags"]) for r in b]
    assert [r["consistency"] for r in a] == pytest.approx([r["consistency"] for r in b])


def test_time_tolerance_finds_the_nearest_event_and_span(g2):
    """Checking against another graph: an event dated 0.3 s later, a relation known only at other keyframes."""
    shifted = g2.copy()
    enter = next(e for e, d in shifted.nodes(data=True) if d.get("kind") == "enter")
    shifted.nodes[enter]["time"] = 1.3
    program = Program(Anchor("event", {"kind": "enter", "participants": [], "time": 1.0}), (Hop("participant"),), "object")
    assert trace(program, shifted).error == "no_anchor"
    assert execute(program, g2) == "green triangle"
    assert trace(program, shifted, time_tol=0.5).answer == "green triangle"
    # two objects start moving within 0.5 s of 6.1 (the purple triangle at 6.0, the blue square at 6.4): the
    # nearest is meant, and it is the same event that the strict reading finds on g2
    shifted.add_node("ev:200", type="event", kind="start_moving", clip=1, time=6.4, source="synth", conf=1.0)
    shifted.add_edge("obj:1:3", "ev:200", type="participates_in", source="synth", conf=1.0)
    near = Program(Anchor("event", {"kind": "start_moving", "participants": [], "time": 6.1}), (Hop("participant"),),
                   "object")
    assert trace(near, shifted).error == "no_anchor"
    assert trace(near, shifted, time_tol=0.5).answer == "purple triangle"
    far = Program(Anchor("event", {"kind": "start_moving", "participants": [], "time": 6.2}), (Hop("participant"),),
                  "object")
    assert trace(far, shifted, time_tol=0.5).error == "ambiguous_anchor"  # equally near: no guess
    # relation spans: strict where the stated time is covered, the tolerance only where nothing is
    rel = Program(_obj("blue", "square", 0), (Hop("relation", {"predicate": "left_of", "time": 0.4}),), "object")
    assert trace(rel, g2, time_tol=0.5).answer == trace(rel, g2).answer == "red circle"


# --------------------------------------------------------------------------------------------- passes over parts


def _many_graphs(d: Path, n: int = 14) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    for s in range(n):
        g = random_graph(s, objects=5)
        g.graph["video_id"] = f"rand-{s:02d}"
        schema.write(g, d / f"rand-{s:02d}.stsg.json")
    return d


@pytest.fixture
def small_parts(monkeypatch):
    """Parts of 40 candidates and cut-offs found by one-digit histograms down to single keys: a small corpus then
    exercises every pass of the finishing (several parts, narrowing, gathering)."""
    from step_ray.qra import corpus as C

    monkeypatch.setattr(C, "PART_ROWS", 40)
    monkeypatch.setattr(C, "GATHER_LIMIT", 1)
    monkeypatch.setattr(C, "HIST_DIGITS", 1)


def test_finishing_over_parts_equals_finishing_in_memory(tmp_path, small_parts, monkeypatch):
    """The corpus-wide passes over several parts (balancing cut-offs narrowed by histograms) give exactly
    the records of the in-memory finishing of all candidates at once."""
    from step_ray.pipeline.steps import qra_step
    from step_ray.qra import corpus as C
    from step_ray.qra.stage import video_seed

    histograms = []
    real = C._histogram
    monkeypatch.setattr(C, "_histogram", lambda *a, **k: histograms.append(k["prefixes"]) or real(*a, **k))

    graphs = _many_graphs(tmp_path / "g")
    cfg = load_config(None, ["qra.samples_per_video=30", "qra.max_answer_share=0.3", "qra.test_fraction=0.3",
                             "qra.val_fraction=0.2", "run.seed=4"])
    summary = qra_step(cfg, [str(graphs)], tmp_path / "out", use_ray=False)
    assert len(summary["parts"]) > 2 and sum(summary["dropped_balance"].values()) > 0
    candidates = []
    for p in sorted(graphs.glob("*.stsg.json")):
        g = read_graph(p)
        candidates += sample_graph(g, cfg.qra, video_seed(cfg.run.seed, g.graph["video_id"]))[0]
    expected, stats = finalize(candidates, cfg.qra, cfg.run.seed)
    got = sorted(read_parquet(tmp_path / "out"), key=lambda r: (r["video_id"], r["id"]))
    assert got == expected
    assert summary["dropped_balance"] == stats["dropped_balance"] and summary["candidates"] == stats["candidates"]
    assert summary["answer_shares"] == stats["answer_shares"] and summary["samples"] == len(expected)
    assert any(p for prefixes in histograms for p in prefixes.values())  # narrowed below the first digit


@pytest.mark.ray
def test_parts_are_byte_identical_whatever_the_actors(ray_session, tmp_path, small_parts):
    """Two actors on Ray (every pass of the finishing as Ray Data tasks and shuffles) and the in-process flow
    (one executor): the same parts, byte for byte. (One actor against two is the same comparison again: the
    in-process flow is the single-executor case.)"""
    from step_ray.pipeline.steps import qra_step

    graphs = _many_graphs(tmp_path / "g")
    over = ["qra.samples_per_video=30", "qra.max_answer_share=0.3", "qra.pool.num_cpus=0.5", "qra.pool.batch_size=2"]
    two = qra_step(load_config(None, over + ["qra.pool.min_size=2", "qra.pool.max_size=2"]), [str(graphs)],
                   tmp_path / "two")
    local = qra_step(load_config(None, over), [str(graphs)], tmp_path / "local", use_ray=False)
    assert two["parts"] == local["parts"] and len(two["parts"]) > 2
    assert part_bytes(tmp_path / "two") == part_bytes(tmp_path / "local")
    assert (tmp_path / "two" / "card.md").read_text() == (tmp_path / "local" / "card.md").read_text()
