"""``self-train``: the whole STEP loop into one run directory, for ``run.rounds`` rounds.

    pretrain.json      the base (with pretrain.enabled: a model that perceives, pretrained or reused)
    corpus/            synthetic videos + ground-truth graphs (unless --input names videos)
    round_<r>/         r = 1 .. run.rounds; model 0 is the base, model r the one round r trains
      stsg/            scene graphs (semantics parsed by model r-1 when semantics.enabled), results/ and
                       errors/ (sharded Parquet), summary.json
      qra/             part-*.parquet: the QRA samples with a split column (self-consistency filter by model
                       r-1 when qra.filter.enabled), stats.json, card.md
      train/           fine-tuning from model r-1: checkpoints/, adapter/ (or model/), merged/
      eval/            base.json (round 1), trained.json, trained_train_split.json, and each vision control
                       beside them (base_blank.json, trained_blank.json, ...): an evaluation and its controls
                       scored together on the eval.pool actor pool (the driver never loads a model)
    report.md, report.html, plots/*.png, summary.json, config.yaml

Round r+1 repeats the mining with the model of round r where the model takes part (semantics parsing, the
filter) and reuses round r's graphs / questions where it does not (they would come out the same). Each stage
records its summary in ``<stage>/stage.json`` when it finishes; a re-run skips finished stages and resumes at
the first unfinished stage of the first unfinished round (training itself resumes from its last checkpoint).

The run directory may be an object-store prefix (``run.output_dir=s3://bucket/runs/NAME``): every file above is
written there (what a library writes into a local folder, the synthetic videos, the plots, a model export, goes
through a local staging folder under ``$TMPDIR`` and is uploaded), models are read back from there (copied to
``$TMPDIR`` by whoever loads them), and a re-run resumes from what the bucket holds.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Any, Callable, Optional

from step_ray.config import StepRayConfig, dump_config
from step_ray.pipeline import steps
from step_ray.utils import storage

STAGE_FILE = "stage.json"


def _read_json(uri: str) -> Optional[dict]:
    """The JSON file at ``uri`` (a local path or an object-store URI), None when it is not there."""
    return json.loads(storage.read_text(uri)) if storage.exists(uri) else None


def _done(folder: str) -> Optional[dict]:
    return _read_json(storage.join(folder, STAGE_FILE))


class _Runner:
    """Runs stages once: a stage whose folder holds ``stage.json`` is skipped and its summary read back."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    def stage(self, name: str, folder: str, fn: Callable[..., dict], *args: Any, **kwargs: Any) -> dict:
        done = _done(folder)
        if done is not None:
            print(f"[step-ray] {name}: done before, skipped", flush=True)
            return done
        print(f"\n[step-ray] {name} ...", flush=True)
        start = time.perf_counter()
        out = fn(*args, **kwargs)
        self.seconds[name] = round(time.perf_counter() - start, 1)
        print(f"[step-ray] {name} done in {self.seconds[name]:.1f} s", flush=True)
        steps.write_json(storage.join(folder, STAGE_FILE), _compact(out))
        return out


def _compact(result: Any) -> Any:
    """A stage summary without its bulky per-question lists (those stay in their own files)."""
    if isinstance(result, dict):
        return {k: v for k, v in result.items() if k not in ("predictions", "history", "skipped_rows")}
    return result


def evaluate_with_controls(run: _Runner, cfg: StepRayConfig, qra: str, model: Optional[str], eval_dir: str,
                           name: str, label: str, use_ray: bool = True, **kwargs: Any) -> dict[str, dict]:
    """``name.json`` and, beside it, ``name_<control>.json`` for every ``eval.vision_controls``, those not
    written before scored together in one run of the ``eval.pool`` actor pool (each actor loads the model once
    for all of them; the driver never loads it)."""
    out: dict[str, dict] = {}
    todo: dict[str, str] = {}
    for vision in ["real", *cfg.eval.vision_controls]:
        key = name if vision == "real" else f"{name}_{vision}"
        result = _read_json(storage.join(eval_dir, f"{key}.json"))
        if result is not None:
            out[key] = result
        else:
            todo[key] = vision
    if todo:
        what = ", ".join("real frames" if v == "real" else f"{v} frames" for v in todo.values())
        print(f"\n[step-ray] eval {label} ({what}) ...", flush=True)
        start = time.perf_counter()
        out.update(steps.eval_files(cfg, qra, model, eval_dir, todo, use_ray=use_ray, **kwargs))
        run.seconds[f"eval {label}"] = round(time.perf_counter() - start, 1)
    return {key: out[key] for key in [name, *[f"{name}_{v}" for v in cfg.eval.vision_controls]]}


def with_base(cfg: StepRayConfig, run: _Runner, run_dir: str, use_ray: bool) -> tuple[StepRayConfig, Optional[dict]]:
    """With ``pretrain.enabled``: pretrain (or reuse) the base and make it ``model.name_or_path``."""
    if not cfg.pretrain.enabled:
        return cfg, None
    from step_ray.pipeline.pretrain import pretrain_dir, pretrain_step

    # Not a run stage: the base lives in its own keyed folder (the cache by default), which says itself whether
    # it is finished; a run only records which base it used.
    print(f"\n[step-ray] base model: {pretrain_dir(cfg)} ...", flush=True)
    start = time.perf_counter()
    summary = pretrain_step(cfg, use_ray=use_ray)
    run.seconds["pretrain"] = round(time.perf_counter() - start, 1)
    held = (summary.get("accuracy") or {}).get("held_out") or {}
    print(f"[step-ray] base model {'reused' if summary.get('reused') else 'pretrained'}: {summary['model_dir']} "
          f"(held-out accuracy {held.get('accuracy') if held else summary.get('note')})", flush=True)
    steps.write_json(storage.join(run_dir, "pretrain.json"), summary)
    model = dataclasses.replace(cfg.model, name_or_path=summary["model_dir"])
    return dataclasses.replace(cfg, model=model), summary


def self_train(cfg: StepRayConfig, inputs: list[str] | None = None, run_dir: str | None = None,
               use_ray: bool = True) -> dict:
    run_path = storage.folder(run_dir or cfg.run.output_dir)
    if not storage.is_remote(run_path):
        Path(run_path).mkdir(parents=True, exist_ok=True)
    storage.write_text(storage.join(run_path, "config.yaml"), dump_config(cfg))
    runner = _Runner()
    summary: dict = {"run_dir": run_path, "rounds": []}

    cfg, summary["pretrain"] = with_base(cfg, runner, run_path, use_ray)
    if not inputs:
        corpus = storage.join(run_path, "corpus")
        summary["synth"] = runner.stage("synth", corpus, steps.synth_step, cfg, corpus)
        inputs = [summary["synth"]["videos_dir"]]

    previous_model: Optional[str] = None  # model 0: the base (cfg.model)
    graphs_dir: Optional[str] = None
    qra_dir: Optional[str] = None
    for r in range(1, cfg.run.rounds + 1):
        rdir = storage.join(run_path, f"round_{r}")
        rs: dict[str, Any] = {"round": r, "dir": rdir, "init": previous_model or f"base:{cfg.model.name_or_path}"}
        # The model of the last round takes part in mining only through semantics parsing and the filter.
        mine_cfg = cfg
        if previous_model is not None and cfg.semantics.enabled:
            mine_cfg = dataclasses.replace(mine_cfg, semantics=dataclasses.replace(cfg.semantics,
                                                                                   model_path=previous_model))
        if previous_model is not None and cfg.qra.filter.enabled:
            mine_cfg = dataclasses.replace(mine_cfg, qra=dataclasses.replace(
                cfg.qra, filter=dataclasses.replace(cfg.qra.filter, model=previous_model)))
        if graphs_dir is None or cfg.semantics.enabled:
            graphs_dir = storage.join(rdir, "stsg")
            rs["stsg"] = runner.stage(f"round {r}: stsg", graphs_dir, steps.stsg_step, mine_cfg, inputs, graphs_dir,
                                      use_ray=use_ray)
        else:
            rs["stsg"] = {"reused": graphs_dir}
        if qra_dir is None or cfg.semantics.enabled or cfg.qra.filter.enabled:
            # The stsg folder itself: the qra step reads the graphs of its last run from its results table
            # (streamed; no list of graphs on the driver). Both steps raise NothingUsable when nothing came out.
            qra_dir = storage.join(rdir, "qra")
            rs["qra"] = runner.stage(f"round {r}: qra", qra_dir, steps.qra_step, mine_cfg, [graphs_dir], qra_dir,
                                     use_ray=use_ray)
        else:
            rs["qra"] = {"reused": qra_dir}
        assert qra_dir is not None
        eval_dir = storage.join(rdir, "eval")
        if r == 1:
            rs["eval_base"] = evaluate_with_controls(runner, cfg, qra_dir, None, eval_dir, "base", "base (model 0)",
                                                     use_ray=use_ray)
        train_cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, init=previous_model))
        last = r == cfg.run.rounds
        model_r = storage.join(rdir, "train")
        rs["train"] = runner.stage(f"round {r}: train", model_r, steps.train_step, train_cfg, qra_dir, model_r,
                                   merged=not last and cfg.train.lora.enabled)
        rs["eval_trained"] = evaluate_with_controls(runner, cfg, qra_dir, model_r, eval_dir, "trained",
                                                    f"model {r}", use_ray=use_ray)
        # The same model on questions it was trained on (as many as the held-out split has): separates "did not
        # learn" from "learned but does not generalise" when reading the held-out table.
        n_test = max(1, rs["eval_trained"]["trained"]["n"])
        rs["eval_trained_seen"] = runner.stage(
            f"round {r}: eval model {r} (train split)", storage.join(eval_dir, "train_split"), steps.eval_step, cfg,
            qra_dir, model_r, eval_dir, "trained_train_split", split="train", max_samples=n_test, use_ray=use_ray)
        summary["rounds"].append(rs)
        merged = storage.join(model_r, "merged")
        previous_model = merged if storage.exists(storage.join(merged, "config.json")) else model_r
    summary["seconds"] = runner.seconds

    from step_ray.eval.report import print_console_summary, write_report

    # report.md, report.html and plots/ are written into a local folder (matplotlib writes files): the run
    # directory itself, or a staging folder uploaded into it.
    with storage.staged_folder(run_path) as local_run:
        write_report(local_run, summary, cfg.model, name=run_path)
    steps.write_json(storage.join(run_path, "summary.json"), _summary_json(summary))
    print_console_summary(summary)
    return summary


def _summary_json(summary: dict) -> dict:
    """summary.json: the run's summary without per-question lists."""
    def strip(v: Any) -> Any:
        if isinstance(v, dict):
            return {k: strip(x) for k, x in v.items() if k not in ("predictions", "history", "skipped_rows")}
        if isinstance(v, list):
            return [strip(x) for x in v]
        return v

    return strip(summary)
