"""The sampler's speed work keeps its meaning: shortcuts agree with the executor's ops, memoised descriptions
and distractor pools equal fresh ones, dead ends are stepped back from, and the collector is handed back."""

import gc

import pytest

from step_ray.config import QraConfig
from step_ray.qra import sampler as S
from step_ray.qra.paths import OPS, Ctx, GraphIndex, Program, trace
from step_ray.qra.stage import read_graph


@pytest.fixture(scope="module")
def graphs(synth_corpus):
    return [read_graph(p) for p in sorted((synth_corpus["dir"] / "gt").glob("*.stsg.json"))]


def test_sampler_shortcuts_agree_with_the_ops(graphs):
    """The sampler computes relation, count_related and motion moves with the node's edges read once; the
    results must be the ops' own (what the executor re-checks)."""
    checked = 0
    for g in graphs:
        ix = GraphIndex(g)
        s = S._Sampler(ix, QraConfig(), seed=0)
        for node in ix.objects:
            for name in ("relation", "count_related", "motion"):
                op = OPS[name]
                want = [(p, r[0], None) for p in op.moves(ix, node, Ctx()) if len(r := op.apply(ix, node, p, Ctx())) == 1]
                assert s._cands(name, node, None, False, None) == want, (name, node)
                checked += len(want)
    assert checked > 100


def test_memoised_descriptions_and_pools_equal_fresh_ones(graphs):
    ix = GraphIndex(graphs[0])
    for e in ix.events:
        assert ix.event_text(e) == GraphIndex(graphs[0]).event_text(e)
        for actor in [None, *ix.participants(e)]:
            assert ix.verb(e, actor) == ix._describe_verb(e, actor)
    for name, op in OPS.items():
        params = next((p for n in ix.objects + ix.events if op.src == ix.type_of(n)
                       for p in op.moves(ix, n, Ctx(actor=n if op.src == "object" else None))), None)
        if params is None:
            continue
        first = op.relaxed(ix, params)
        assert op.relaxed(ix, params) is first  # memoised per index
        assert first == type(op).relaxed.__wrapped__(op, ix, params)  # and what the op computes


def test_dead_ends_are_stepped_back_from(graphs, monkeypatch):
    def run():
        rejected, records = 0, []
        for g in graphs:
            recs, stats = S.sample_graph(g, QraConfig(), seed=3)
            rejected += stats["rejected"].get("no_walk", 0)
            records += [(g, r) for r in recs]
        return rejected, records

    with_backtracking, records = run()
    monkeypatch.setattr(S, "MAX_BACKTRACKS", 0)
    without, _ = run()
    assert with_backtracking < without
    for g, r in records:  # every walk found by stepping back is still a valid program of its graph
        assert trace(Program.from_json(r["program"]), g).answer == r["answer"]


def test_the_collector_is_handed_back(graphs):
    before = gc.get_freeze_count()  # 0 unless something else froze objects (then frozen_gc leaves them be)
    with S.frozen_gc():
        assert gc.get_freeze_count() > before or before > 0
        with S.frozen_gc():  # nested: only the outermost unfreezes
            pass
        assert gc.get_freeze_count() > before or before > 0
    assert gc.get_freeze_count() == before and gc.isenabled()
    S.sample_graph(graphs[0], QraConfig(samples_per_video=4), seed=0)
    assert gc.get_freeze_count() == before


def test_a_malformed_description_names_nothing(graphs):
    from step_ray.qra.paths import Anchor, Hop

    bad = Program(Anchor("object", {"color": "red", "category": ["circle"], "clip": None}),
                  (Hop("relation", {"predicate": "left_of", "time": 0.0}),), "object")
    assert trace(bad, graphs[0]).error == "no_anchor"
