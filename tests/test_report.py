"""The run report: intervals, paired changes and their verdicts, the vision control, and the HTML page in a
real browser (headless Chromium, when the machine has it: `apt-get install chromium`; .ci/run installs it)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from step_ray.eval.evaluate import steps_bucket, summarise
from step_ray.eval.report import change_text, paired, vision_verdict, write_report


def _result(correct: list[bool], steps: list[int], vision: str = "real") -> dict:
    preds = [{"id": f"q{i}", "steps": s, "steps_bucket": steps_bucket(s), "family": "relation", "correct": c,
              "scores": [0.0, -1.0, -2.0, -3.0], "prediction": "a", "pred_index": 0}
             for i, (c, s) in enumerate(zip(correct, steps))]
    return {**summarise(preds), "predictions": preds, "vision": vision, "chance": 0.25}


def _summary(tmp_path: Path) -> dict:
    steps = [1, 2, 3, 3] * 30
    base = _result([i % 4 == 0 for i in range(120)], steps)
    trained = _result([i % 4 != 3 or i % 8 == 3 for i in range(120)], steps)
    blank = _result([i % 4 == 1 for i in range(120)], steps, "blank")
    history = [{"step": s, "loss": 2.0 / s, "loss_answer": 1.0 / s, "loss_rationale": 1.0 / s} for s in range(1, 20)]
    return {"run_dir": str(tmp_path), "seconds": {"round 1: train": 12.5},
            "rounds": [{"round": 1, "init": "base:tiny",
                        "stsg": {"videos": 10, "ok": 10, "failed": 0, "objects": 50, "relations": 80, "events": 0,
                                 "keyframes": 10},
                        "qra": {"samples": 300, "by_split": {"test": 120}, "by_steps": {"1": 100}, "by_family": {}},
                        "eval_base": {"base": base, "base_blank": blank},
                        "train": {"steps": 19, "final_loss": 0.1, "history": history, "rationale_weight": 1.0,
                                  "loss_format": "multitask"},
                        "eval_trained": {"trained": trained, "trained_blank": blank},
                        "eval_trained_seen": trained}]}


def test_paired_changes_and_verdicts():
    steps = [3] * 100
    a = _result([i < 30 for i in range(100)], steps)
    b = _result([i < 60 for i in range(100)], steps)
    d = paired(a, b, "3+")
    assert d["difference"] == pytest.approx(0.3) and d["verdict"] == "B better"
    assert change_text(d).startswith("+30.0 pts") and change_text(d).endswith("better")
    same = paired(a, _result([i < 31 for i in range(100)], steps), "3+")
    assert "within noise" in change_text(same)
    assert "text priors" in vision_verdict(a, _result([i < 31 for i in range(100)], steps, "blank"))
    assert vision_verdict(b, a).startswith("uses its frames")


def test_report_tables_intervals_and_page(tmp_path):
    write_report(tmp_path, _summary(tmp_path))
    md = (tmp_path / "report.md").read_text()
    assert "| model 1 |" in md and "| model 1 − base |" in md and "pts [" in md
    assert "base, black frames" in md and "(n=30)" in md
    page = (tmp_path / "report.html").read_text()
    assert page.count("data:image/png;base64,") == 2  # the accuracy plot and the loss curves, inline


@pytest.mark.skipif(shutil.which("chromium") is None, reason="no Chromium on this machine (apt-get install chromium)")
def test_report_renders_in_a_real_browser(tmp_path):
    from PIL import Image

    write_report(tmp_path, _summary(tmp_path))
    shot = tmp_path / "shot.png"
    cmd = ["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1200,2400", f"--screenshot={shot}",
           (tmp_path / "report.html").resolve().as_uri()]
    subprocess.run(cmd, check=True, timeout=120, capture_output=True)
    image = Image.open(shot).convert("RGB")
    assert image.size == (1200, 2400)
    # The page drew: text, tables and the two plots make many distinct colours; a blank page has one or two.
    colours = image.resize((300, 600)).getcolors(maxcolors=1 << 16)
    assert colours is None or len(colours) > 50
    dom = subprocess.run([*cmd[:-3], "--dump-dom", cmd[-1]], check=True, timeout=120, capture_output=True,
                         text=True).stdout
    assert "Accuracy by number of reasoning steps" in dom and dom.count("<img") >= 2
