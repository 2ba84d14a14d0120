"""``self-train``: the whole STEP loop into one run directory.

    corpus/   synthetic videos + ground-truth graphs (unless --input names videos)
    stsg/     predicted scene graphs, results/ and errors/ (sharded Parquet), summary.json
    qra/      part-*.parquet (the QRA samples, a split column), stats.json, card.md
    train/    checkpoints/, adapter/, base/, summary.json
    eval/     base.json, trained.json
    report.md, plots/*.png, summary.json, config.yaml
"""

from __future__ import annotations

import time
from pathlib import Path

from step_ray.config import StepRayConfig, dump_config
from step_ray.pipeline import steps


def self_train(cfg: StepRayConfig, inputs: list[str] | None = None, run_dir: str | None = None,
               use_ray: bool = True) -> dict:
    run = Path(run_dir or cfg.run.output_dir)
    run.mkdir(parents=True, exist_ok=True)
    (run / "config.yaml").write_text(dump_config(cfg))
    times: dict[str, float] = {}
    summary: dict = {"run_dir": str(run)}

    def timed(name: str, fn, *args, **kwargs):
        print(f"\n[step-ray] {name} ...", flush=True)
        start = time.perf_counter()
        out = fn(*args, **kwargs)
        times[name] = round(time.perf_counter() - start, 1)
        print(f"[step-ray] {name} done in {times[name]:.1f} s", flush=True)
        return out

    if not inputs:
        summary["synth"] = timed("synth", steps.synth_step, cfg, run / "corpus")
        inputs = [summary["synth"]["videos_dir"]]
    summary["stsg"] = timed("stsg", steps.stsg_step, cfg, inputs, run / "stsg", use_ray=use_ray)
    if not summary["stsg"]["ok"]:
        raise RuntimeError(f"no video gave a scene graph; see {run / 'stsg' / 'errors'}")
    # The stsg folder itself: the qra step reads the graphs of its last run from its results table.
    summary["qra"] = timed("qra", steps.qra_step, cfg, [str(run / "stsg")], run / "qra", use_ray=use_ray)
    if not summary["qra"]["samples"]:
        raise RuntimeError(f"no QRA samples were produced from {run / 'stsg'}; see {run / 'qra' / 'stats.json'}")
    summary["eval_base"] = timed("eval (base)", steps.eval_step, cfg, run / "qra", None, run / "eval", "base")
    summary["train"] = timed("train", steps.train_step, cfg, run / "qra", run / "train")
    summary["eval_trained"] = timed("eval (trained)", steps.eval_step, cfg, run / "qra", str(run / "train"),
                                    run / "eval", "trained")
    # The same model on questions it was trained on (as many as the held-out split has): separates "did not
    # learn" from "learned but does not generalise" when reading the held-out table.
    summary["eval_trained_seen"] = timed("eval (trained, train split)", steps.eval_step, cfg, run / "qra",
                                         str(run / "train"), run / "eval", "trained_train_split", split="train",
                                         max_samples=max(1, summary["eval_trained"]["n"]))
    summary["seconds"] = times

    from step_ray.eval.report import print_console_summary, write_report

    write_report(run, summary)
    compact = {k: ({kk: vv for kk, vv in v.items() if kk not in ("predictions", "history")} if isinstance(v, dict) else v)
               for k, v in summary.items()}
    steps.write_json(run / "summary.json", compact)
    print_console_summary(summary)
    return summary
