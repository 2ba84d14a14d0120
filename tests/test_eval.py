"""Evaluation: accuracy tables with intervals, skipped rows, vision controls, models of any source (base /
adapter / full model). Option scoring itself is tested with the model layer (test_model_layer.py)."""

from __future__ import annotations

import os

os.environ.setdefault("DS_ACCELERATOR", "cpu")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from step_ray.config import ModelConfig, load_config
from step_ray.eval.evaluate import evaluate, steps_bucket, summarise
from step_ray.models.sources import resolve_model
from step_ray.train.toy import make_toy_qra


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    return make_toy_qra(tmp_path_factory.mktemp("toy_eval"), videos=4, seed=1)


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    from step_ray.models.tiny import save_tiny

    return save_tiny(ModelConfig(), tmp_path_factory.mktemp("m") / "base", seed=0)


@pytest.fixture(autouse=True)
def cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("STEP_RAY_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


def test_steps_buckets_and_summary():
    assert [steps_bucket(s) for s in (1, 2, 3, 4, 7, "2", None)] == ["1", "2", "3+", "3+", "3+", "2", "unknown"]
    preds = [
        {"steps_bucket": "1", "family": "a", "correct": True},
        {"steps_bucket": "1", "family": "b", "correct": False},
        {"steps_bucket": "3+", "family": "b", "correct": True},
        {"steps_bucket": "2", "family": "a", "correct": True},
    ]
    s = summarise(preds)
    assert s["accuracy"] == 0.75 and s["n"] == 4 and s["correct"] == 3
    assert list(s["by_steps"]) == ["1", "2", "3+"]
    assert {k: s["by_steps"]["1"][k] for k in ("accuracy", "correct", "n")} == {"accuracy": 0.5, "correct": 1, "n": 2}
    low, high = s["by_steps"]["1"]["low"], s["by_steps"]["1"]["high"]
    assert low == pytest.approx(0.0945, abs=1e-3) and high == pytest.approx(0.9055, abs=1e-3)  # Wilson, 1 of 2
    assert s["by_family"]["b"]["accuracy"] == 0.5 and s["by_family"]["a"]["accuracy"] == 1.0


def test_evaluate_base_tables_and_skipped_rows(toy, tmp_path):
    rows = pq.read_table(toy).to_pylist()
    test_rows = [r for r in rows if r["split"] == "test"]
    rows.append(dict(test_rows[0], id="zz-missing", video_uri=str(tmp_path / "gone.mp4")))
    qra = tmp_path / "qra.parquet"
    pq.write_table(pa.Table.from_pylist(rows), qra)
    cfg = load_config(None, ["eval.batch_size=2"])
    result = evaluate(cfg, None, str(qra), out_path=tmp_path / "eval.json")
    assert result["n"] == len(test_rows) and result["skipped"] == 1
    assert result["model"] == "base:tiny" and result["vision"] == "real"
    assert result["chance"] == pytest.approx(sum(1 / len(p["scores"]) for p in result["predictions"]) / result["n"])
    assert set(result["by_steps"]) == {"1", "2", "3+"}
    assert sum(v["n"] for v in result["by_steps"].values()) == result["n"]
    assert sum(v["n"] for v in result["by_family"].values()) == result["n"]
    for p in result["predictions"]:
        assert p["pred_index"] == max(range(len(p["scores"])), key=lambda i: p["scores"][i])
        assert p["correct"] == (p["pred_index"] == p["answer_index"])
    assert json.loads((tmp_path / "eval.json").read_text())["n"] == result["n"]
    # max_samples caps; the batch size does not change the scores.
    capped = evaluate(load_config(None, ["eval.max_samples=2", "eval.batch_size=8"]), None, str(qra))
    assert capped["n"] == 2
    for a, b in zip(capped["predictions"], result["predictions"][:2]):
        assert a["id"] == b["id"] and a["scores"] == pytest.approx(b["scores"], abs=1e-3)
    # The vision controls ask the same questions without the evidence: other scores, the same questions.
    blank = evaluate(cfg, None, str(qra), vision="blank")
    shuffled = evaluate(cfg, None, str(qra), vision="shuffled")
    assert [p["id"] for p in blank["predictions"]] == [p["id"] for p in result["predictions"]]
    assert blank["vision"] == "blank" and shuffled["n"] == result["n"]
    assert blank["predictions"][0]["scores"] != pytest.approx(result["predictions"][0]["scores"], abs=1e-4)


def test_evaluate_adapter_applies_to_its_base(toy, tiny_dir, tmp_path):
    """An adapter with non-zero weights changes the scores; a full model dir and an adapter dir both load."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForImageTextToText

    from step_ray.train.loop import lora_target_regex
    from step_ray.models.sources import ModelSourceError

    run = tmp_path / "run"
    base = AutoModelForImageTextToText.from_pretrained(tiny_dir)
    torch.manual_seed(0)
    peft_model = get_peft_model(base, LoraConfig(r=4, target_modules=lora_target_regex(["q_proj", "v_proj"])))
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    peft_model.save_pretrained(run / "adapter")
    import shutil

    shutil.copytree(tiny_dir, run / "base")
    r = resolve_model(str(run))
    assert (r.base, r.adapter) == (str(run / "base"), str(run / "adapter"))
    r = resolve_model(str(run / "adapter"))
    assert (r.base, r.adapter) == (str(run / "base"), str(run / "adapter"))
    assert (resolve_model(str(tiny_dir)).base, resolve_model(str(tiny_dir)).adapter) == (str(tiny_dir), None)
    with pytest.raises(ModelSourceError):
        resolve_model(str(tmp_path / "nothing"))

    cfg = load_config(None, ["eval.max_samples=3"])
    plain = evaluate(cfg, str(tiny_dir), str(toy))
    adapted = evaluate(cfg, str(run), str(toy))
    assert adapted["model"].startswith("adapter:") and plain["model"].startswith("model:")
    assert plain["predictions"][0]["scores"] != pytest.approx(adapted["predictions"][0]["scores"], abs=1e-3)
