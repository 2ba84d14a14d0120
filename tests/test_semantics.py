"""Semantics parsing by the Video-LLM: answer parsing, self-consistency voting, the graph, and the real tiny
model generating (noise) inside the STSG stage."""

import json

import pytest

from step_ray.config import load_config
from step_ray.perception.semantics import (
    KeyframeQuery,
    agreed_facts,
    collect,
    load_template,
    parse_answer,
    render_prompt,
)
from step_ray.stage import run_local
from step_ray.stsg import schema
from step_ray.stsg.build import build_stsg
from step_ray.stsg.stage import input_table, stsg_stages
from step_ray.perception.tracks import Clip, Perceived, Track

GOOD = json.dumps({"attributes": {"1": {"color": "Red", "size": "big"}, "7": {"color": "blue"}},
                   "relations": [["1", "left_of", "2"], [1, "inside", 2], ["2", "near", "2"]],
                   "actions": {"2": "rolling", "1": "???"}})


def test_parse_answer_keeps_valid_facts_and_counts_the_rest():
    a = parse_answer("Sure! " + GOOD + " Hope this helps.", ids={1, 2})
    assert not a.malformed
    assert a.facts == {("attr", 1, "color", "red"), ("attr", 1, "size", "big"), ("rel", 1, "left_of", 2),
                       ("action", 2, "rolling")}
    assert a.invalid_items == 4  # unknown id 7, unknown predicate, self-relation, a non-word action
    for text in ("", "no json here", "{not json}", "[1, 2, 3]", '{"something": "else"}'):
        assert parse_answer(text, ids={1, 2}).malformed


def test_self_consistency_keeps_what_a_majority_states():
    answers = [parse_answer(GOOD, {1, 2}), parse_answer(GOOD, {1, 2}), parse_answer("garbage", {1, 2}),
               parse_answer(json.dumps({"relations": [["2", "right_of", "1"]]}), {1, 2})]
    kept = agreed_facts(answers, 0.5)
    assert ("rel", 1, "left_of", 2) not in kept  # 2 of 4 is not more than half
    assert agreed_facts(answers, 0.4)[("rel", 1, "left_of", 2)] == 0.5
    assert ("rel", 2, "right_of", 1) not in agreed_facts(answers, 0.4)


def _perceived() -> Perceived:
    clip = Clip(0, 0.0, 1.0, [0.0, 0.5, 1.0], [0.0, 1.0])
    a = Track(0, 1, "circle", {t: (10.0, 10.0, 30.0, 30.0) for t in clip.frame_times}, color="red")
    b = Track(0, 2, "square", {t: (60.0, 10.0, 80.0, 30.0) for t in clip.frame_times}, color=None)
    return Perceived("v", "v.mp4", 1.0, 128, 96, [clip], [a, b], events=[])


def test_agreed_facts_enter_the_graph_without_overriding_perception():
    cfg = load_config(None, ["semantics.samples=3"]).semantics
    queries = [KeyframeQuery(0, 0.0, [(1, "circle", (10, 10, 30, 30)), (2, "square", (60, 10, 80, 30))])]
    answer = json.dumps({"attributes": {"1": {"color": "green"}, "2": {"color": "yellow"}},
                         "relations": [["1", "above", "2"], ["1", "left_of", "2"]], "actions": {"2": "spinning"}})
    parsed = collect(queries, [[answer, answer, "not json"]], cfg)
    assert parsed.stats == {"keyframes": 1, "samples": 3, "malformed": 1, "invalid_items": 0, "facts": 5}
    g = build_stsg(_perceived(), load_config().stsg, source="perception", semantics=parsed)
    assert g.nodes["obj:0:1"]["attributes"]["color"] == "red"  # the detector's colour stays
    assert g.nodes["obj:0:2"]["attributes"]["color"] == "yellow"
    assert g.nodes["obj:0:2"]["attribute_sources"]["color"]["source"] == "parser:semantics/1"
    parsed_rel = [d for _, _, d in g.out_edges("obj:0:1", data=True) if d.get("source") == "parser:semantics/1"]
    assert [(d["predicate"], d["start"]) for d in parsed_rel] == [("above", 0.0)]  # left_of: geometry has it
    actions = [n for n in schema.nodes_of(g, "event") if g.nodes[n]["kind"] == "action"]
    assert [g.nodes[n]["label"] for n in actions] == ["spinning"]
    schema.loads(schema.dumps(g))  # still a valid stsg/2 document


def test_prompt_template_is_versioned_and_filled():
    template = load_template("semantics/1")
    text = render_prompt(template, KeyframeQuery(0, 1.25, [(3, "car", (1, 2, 30, 40))]), 320, 240)
    assert "3: car, box 1,2,30,40" in text and "320x240" in text and "1.2 s" in text
    with pytest.raises(FileNotFoundError):
        load_template("semantics/999")


def test_stage_parses_keyframes_with_the_tiny_video_llm(synth_corpus, tmp_path):
    """The real generate() of the tiny random model: its answers are noise, so every sample is counted
    (almost all as malformed) and the graph is still written and valid."""
    import dataclasses

    from step_ray.models.runtime import load_model_source

    base = synth_corpus["cfg"]  # the session's config: changed on a copy only
    cfg = dataclasses.replace(base, semantics=dataclasses.replace(base.semantics, enabled=True, samples=2,
                                                                  max_new_tokens=24, max_keyframes=3))
    item = synth_corpus["items"][0]
    stages = stsg_stages(cfg, str(tmp_path), load_model=load_model_source)
    [table] = run_local([input_table([{"video_id": item["video_id"], "uri": item["path"]}])], stages)
    [row] = table.to_pylist()
    assert row["status"] == "ok", row["error"]
    assert row["parse_samples"] == 3 * 2 and 0 <= row["parse_malformed"] <= row["parse_samples"]
    g = schema.read(row["stsg_path"])
    stats = g.graph["provenance"]["parser"]
    assert stats["samples"] == 6 and stats["keyframes"] == 3 and stats["prompt"] == "semantics/1"
