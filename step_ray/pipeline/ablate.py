"""``step-ray ablate``: does the rationale help? The same questions, the same base, several λ, formats and seeds.

    OUT/base.json         the base model every run starts from (pretrained with pretrain.enabled, else model)
    OUT/corpus/ stsg/ qra/  mined once (as self-train's first round)
    OUT/eval/base*.json   the base on the held-out questions, and under each vision control
    OUT/runs/<lam>_<format>_seed<s>/   train/ and eval/ (trained.json, trained_<control>.json) of each run
    OUT/ablation.json     one entry per (λ, format, seed), its evaluations, the base's, and the aggregate
    OUT/ablation.md, ablation.html, plots/ablation.png

λ = 0 is the answer-only baseline: it trains the same sequences whatever the loss format, so it runs once
per seed (as ``multitask``). Runs differ only in their seed (LoRA init, data order) where the grid says so.

Aggregates over seeds: the mean accuracy per steps bucket with a 95% interval from a bootstrap over the
*questions* (every run answers the same held-out questions; resampling them, and averaging over the seeds
within each resample, is the variation a different draw of questions would show), and the paired difference
of each configuration against λ = 0 and against the base, bootstrapped the same way.

OUT may be an object-store prefix (``s3://bucket/ablations/NAME``): everything above is written there (the
report's files through a local staging folder), and a re-run skips the runs the bucket records as finished.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

from step_ray.config import StepRayConfig, dump_config
from step_ray.pipeline import steps
from step_ray.pipeline.self_train import _Runner, _summary_json, evaluate_with_controls, with_base
from step_ray.utils import storage

BUCKETS = ("1", "2", "3+", "all")
N_BOOT = 4000


def run_name(lam: float, loss_format: str, seed: int) -> str:
    return f"lam{lam:g}_{loss_format}_seed{seed}"


def grid(cfg: StepRayConfig) -> list[tuple[float, str, int]]:
    """(λ, format, seed) of every run; λ = 0 once per seed."""
    out = []
    for lam in cfg.ablation.rationale_weights:
        formats = ["multitask"] if lam == 0 else list(cfg.ablation.loss_formats)
        for fmt in formats:
            for seed in cfg.ablation.seeds:
                if (lam, fmt, seed) not in out:
                    out.append((lam, fmt, seed))
    return out


def _flags_by_id(result: dict, bucket: str) -> dict[str, bool]:
    from step_ray.eval.evaluate import steps_bucket

    return {p["id"]: bool(p["correct"]) for p in result.get("predictions") or []
            if bucket == "all" or steps_bucket(p.get("steps")) == bucket}


def seed_mean(results: Sequence[dict], bucket: str, seed: int = 0) -> Optional[dict]:
    """Mean accuracy over runs on their common questions, with a question-bootstrap 95% interval."""
    per_run = [_flags_by_id(r, bucket) for r in results]
    common = sorted(set.intersection(*(set(f) for f in per_run))) if per_run else []
    if not common:
        return None
    m = np.array([[f[q] for q in common] for f in per_run], dtype=float)  # runs x questions
    mean = float(m.mean())
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(common), size=(N_BOOT, len(common)))
    draws = m[:, idx].mean(axis=(0, 2))
    return {"accuracy": mean, "low": float(np.quantile(draws, 0.025)), "high": float(np.quantile(draws, 0.975)),
            "n": len(common), "runs": len(results), "per_run": [float(x) for x in m.mean(axis=1)]}


def seed_mean_difference(a: Sequence[dict], b: Sequence[dict], bucket: str, seed: int = 0) -> Optional[dict]:
    """Mean accuracy of runs ``b`` minus runs ``a`` on their common questions, question-bootstrap interval."""
    fa = [_flags_by_id(r, bucket) for r in a]
    fb = [_flags_by_id(r, bucket) for r in b]
    common = sorted(set.intersection(*(set(f) for f in fa + fb))) if fa and fb else []
    if not common:
        return None
    ma = np.array([[f[q] for q in common] for f in fa], dtype=float).mean(axis=0)  # per question, over seeds
    mb = np.array([[f[q] for q in common] for f in fb], dtype=float).mean(axis=0)
    d = mb - ma
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(common), size=(N_BOOT, len(common)))
    draws = d[idx].mean(axis=1)
    low, high = float(np.quantile(draws, 0.025)), float(np.quantile(draws, 0.975))
    return {"difference": float(d.mean()), "low": low, "high": high, "n": len(common),
            "verdict": "within noise" if low <= 0 <= high else ("B better" if d.mean() > 0 else "A better")}


def ablate(cfg: StepRayConfig, out_dir: str | Path, inputs: Optional[list[str]] = None, use_ray: bool = True) -> dict:
    out = storage.folder(out_dir)
    if not storage.is_remote(out):
        Path(out).mkdir(parents=True, exist_ok=True)
    storage.write_text(storage.join(out, "config.yaml"), dump_config(cfg))
    runner = _Runner()
    started = time.perf_counter()
    cfg, pretrained = with_base(cfg, runner, out, use_ray)
    if cfg.model.name_or_path == "tiny":
        # Every run must start from the same weights: pin the tiny build of the config's seed (a run's own
        # seed would otherwise build another random base).
        from step_ray.models.loading import ensure_tiny

        cfg = dataclasses.replace(cfg, model=dataclasses.replace(
            cfg.model, name_or_path=str(ensure_tiny(cfg.model, cfg.run.seed))))
    steps.write_json(storage.join(out, "base.json"), {"model": cfg.model.name_or_path, "pretrain": pretrained})
    if not inputs:
        corpus = storage.join(out, "corpus")
        synth = runner.stage("synth", corpus, steps.synth_step, cfg, corpus)
        inputs = [synth["videos_dir"]]
    stsg_dir, qra_dir = storage.join(out, "stsg"), storage.join(out, "qra")
    stsg = runner.stage("stsg", stsg_dir, steps.stsg_step, cfg, inputs, stsg_dir, use_ray=use_ray)
    # The stsg folder itself: the qra step reads its last run's graphs from the results table (both steps raise
    # NothingUsable when nothing came out).
    qra = runner.stage("qra", qra_dir, steps.qra_step, cfg, [stsg_dir], qra_dir, use_ray=use_ray)
    base_evals = evaluate_with_controls(runner, cfg, qra_dir, None, storage.join(out, "eval"), "base", "base",
                                        use_ray=use_ray)

    entries = []
    for lam, fmt, seed in grid(cfg):
        name = run_name(lam, fmt, seed)
        rdir = storage.join(out, "runs", name)
        rcfg = dataclasses.replace(
            cfg, run=dataclasses.replace(cfg.run, seed=seed),
            train=dataclasses.replace(cfg.train, rationale_weight=lam, loss_format=fmt))
        train_dir = storage.join(rdir, "train")
        train = runner.stage(f"train {name}", train_dir, steps.train_step, rcfg, qra_dir, train_dir)
        evals = evaluate_with_controls(runner, rcfg, qra_dir, train_dir, storage.join(rdir, "eval"), "trained", name,
                                       use_ray=use_ray)
        entry = {"name": name, "rationale_weight": lam, "loss_format": fmt, "seed": seed,
                 "train": {k: train.get(k) for k in ("steps", "final_loss", "final_loss_answer", "final_loss_rationale",
                                                      "train_seconds", "wall_seconds")},
                 "eval": evals["trained"]}
        for control in cfg.eval.vision_controls:
            entry[f"eval_{control}"] = evals[f"trained_{control}"]
        entries.append(entry)

    result = {"base": base_evals["base"], "entries": entries, "qra": {k: qra.get(k) for k in ("samples", "by_steps",
              "by_split", "by_family")}, "stsg": {k: stsg.get(k) for k in ("videos", "ok", "failed", "objects")},
              "pretrain": pretrained, "seconds": {**runner.seconds, "total": round(time.perf_counter() - started, 1)}}
    for control in cfg.eval.vision_controls:
        result[f"base_{control}"] = base_evals[f"base_{control}"]
    result["aggregate"] = aggregate(result, cfg.eval.vision_controls)
    steps.write_json(storage.join(out, "ablation.json"),
                     _summary_json(result) | {"entries": [_strip_entry(e) for e in entries]})
    from step_ray.eval.ablation_report import print_ablation, write_ablation_report

    # ablation.md, ablation.html and plots/ into a local folder (matplotlib writes files): OUT itself, or a
    # staging folder uploaded into it.
    with storage.staged_folder(out) as local_out:
        write_ablation_report(local_out, result)
    print_ablation(result)
    return result


def _strip_entry(entry: dict) -> dict:
    """An entry of ablation.json: its evaluations in the shape of eval/*.json, without per-question lists."""
    return {k: ({kk: vv for kk, vv in v.items() if kk not in ("predictions", "skipped_rows")} if isinstance(v, dict)
                else v) for k, v in entry.items()}


def aggregate(result: dict, controls: Sequence[str]) -> list[dict]:
    """Per configuration (λ, format): seed means by bucket, each control's, and the paired differences."""
    configs: dict[tuple, list[dict]] = {}
    for e in result["entries"]:
        configs.setdefault((e["rationale_weight"], e["loss_format"]), []).append(e)
    baseline = configs.get((0.0, "multitask"))
    out = []
    for (lam, fmt), runs in configs.items():
        evals = [r["eval"] for r in runs]
        row: dict[str, Any] = {"rationale_weight": lam, "loss_format": fmt, "seeds": [r["seed"] for r in runs],
                               "accuracy": {b: seed_mean(evals, b) for b in BUCKETS},
                               "vs_base": {b: seed_mean_difference([result["base"]], evals, b) for b in BUCKETS}}
        for c in controls:
            row[f"accuracy_{c}"] = {b: seed_mean([r[f"eval_{c}"] for r in runs], b) for b in BUCKETS}
            row[f"vs_{c}"] = {b: seed_mean_difference([r[f"eval_{c}"] for r in runs], evals, b) for b in BUCKETS}
        if baseline is not None and (lam, fmt) != (0.0, "multitask"):
            row["vs_lambda0"] = {b: seed_mean_difference([r["eval"] for r in baseline], evals, b) for b in BUCKETS}
        out.append(row)
    base_row = {"rationale_weight": None, "loss_format": "base", "seeds": [],
                "accuracy": {b: seed_mean([result["base"]], b) for b in BUCKETS}}
    for c in controls:
        base_row[f"accuracy_{c}"] = {b: seed_mean([result[f"base_{c}"]], b) for b in BUCKETS}
        base_row[f"vs_{c}"] = {b: seed_mean_difference([result[f"base_{c}"]], [result["base"]], b) for b in BUCKETS}
    return [base_row, *out]


def load(out_dir: str | Path) -> dict:
    return json.loads(storage.read_text(storage.join(str(out_dir), "ablation.json")))
