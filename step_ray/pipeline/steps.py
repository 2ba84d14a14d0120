"""The steps of the STEP loop as functions: each reads its inputs, writes its outputs under one folder and
returns a summary dict. The CLI, the ``jobs/`` scripts and ``self-train`` all call these.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from pathlib import Path
from typing import Any

from step_ray.config import ConfigError, StepRayConfig
from step_ray.utils import storage
from step_ray.utils.inputs import expand, video_rows
from step_ray.utils.pool_fit import check_pool_fit


def write_json(path: Path | str, data: Any) -> None:
    """Write JSON atomically, to a local path or an object-store URI."""
    storage.write_text(str(path), json.dumps(data, indent=2, sort_keys=True, default=str))


def write_jsonl(path: Path | str, rows: list[dict]) -> None:
    storage.write_text(str(path), "".join(json.dumps(r, sort_keys=True, default=str) + "\n" for r in rows))


# --------------------------------------------------------------------------------------------- synth


def synth_step(cfg: StepRayConfig, out_dir: str | Path) -> dict:
    """Write the synthetic corpus (videos/ and gt/ under ``out_dir``)."""
    from step_ray.synth.corpus import generate_corpus

    start = time.perf_counter()
    items = generate_corpus(Path(out_dir), cfg.synth, cfg.video, cfg.stsg, progress=True)
    return {
        "videos": len(items),
        "objects": sum(i.get("objects", 0) for i in items),
        "events": sum(i.get("events", 0) for i in items),
        "videos_dir": str(Path(out_dir) / "videos"),
        "gt_dir": str(Path(out_dir) / "gt"),
        "seconds": round(time.perf_counter() - start, 2),
    }


# --------------------------------------------------------------------------------------------- stsg


def stsg_step(cfg: StepRayConfig, inputs: list[str], out_dir: str | Path, use_ray: bool = True) -> dict:
    """Videos -> one STSG JSON per video in ``out_dir`` (a folder or an object-store URI), plus
    ``results.jsonl`` (every video), ``errors.jsonl`` (the failed ones, with reasons) and ``summary.json``.
    Videos whose graph exists with the same content and settings key are skipped."""
    from step_ray.pipeline.runners import run_chain
    from step_ray.stsg.stage import stsg_chain

    out = str(out_dir)
    rows = video_rows(inputs)
    weights = cfg.perception.yolo_weights
    if cfg.perception.detector == "yolo" and weights.endswith(".pt") and not Path(weights).is_file():
        # Checked here, before any actor starts: a missing file would otherwise fail every actor's setup().
        # (Shared storage is mounted on every node, the driver's included: see cluster/README.md.)
        raise ConfigError("perception.yolo_weights", f"no such file: {weights} (nothing is downloaded)")
    if cfg.semantics.enabled:
        from step_ray.perception.semantics import load_template

        try:
            load_template(cfg.semantics.prompt)
        except FileNotFoundError as err:
            raise ConfigError("semantics.prompt", str(err)) from None
    check_pool_fit(cfg, "perception.pool", "stsg.pool", use_ray=use_ray)
    results, seconds = run_chain(stsg_chain(out), cfg, rows, use_ray=use_ray)
    results.sort(key=lambda r: r["video_id"])
    errors = [r for r in results if r["status"] != "ok"]
    write_jsonl(storage.join(out, "results.jsonl"), results)
    write_jsonl(storage.join(out, "errors.jsonl"), errors)
    ok = [r for r in results if r["status"] == "ok"]

    def total(key: str, digits: int | None = None) -> Any:
        value = sum(r[key] or 0 for r in ok)
        return round(value, digits) if digits is not None else value

    summary = {
        "videos": len(rows),
        "ok": len(ok),
        "failed": len(errors),
        "accounted_for": len(ok) + len(errors) == len(rows),
        "skipped_done": sum(bool(r["skipped"]) for r in ok),
        "video_seconds": total("duration", 1),
        **{k: total(k) for k in ("frames", "clips", "keyframes", "objects", "events", "relations", "edges")},
        "seconds": round(seconds, 2),
        **{k: total(k, 2) for k in ("seconds_decode", "seconds_detect", "seconds_track", "seconds_parse",
                                     "seconds_graph")},
        "errors": {r["video_id"]: r["error"] for r in errors},
        "output": out,
    }
    if cfg.semantics.enabled:
        summary.update({k: total(k) for k in ("parse_samples", "parse_malformed", "parse_facts")})
    write_json(storage.join(out, "summary.json"), summary)
    return summary


def graphs_of_last_run(stsg_dir: str | Path) -> list[str]:
    """The graphs the last ``stsg`` run into ``stsg_dir`` produced (from its results.jsonl), not every graph
    the folder may hold from earlier runs with other inputs."""
    lines = (Path(stsg_dir) / "results.jsonl").read_text().splitlines()
    return [r["stsg_path"] for r in map(json.loads, lines) if r["status"] == "ok"]


# --------------------------------------------------------------------------------------------- qra


def qra_step(cfg: StepRayConfig, inputs: list[str], out_dir: str | Path, use_ray: bool = True) -> dict:
    """STSG files -> ``qra.parquet`` and ``qra.jsonl`` (all samples, with their split), ``stats.json`` and the
    dataset card ``card.md`` (+ plots). Graphs are sampled on CPU actors; options, answer balancing and splits
    are drawn corpus-wide afterwards. With ``qra.filter.enabled`` the model-side filter runs last."""
    from step_ray.pipeline.runners import run_stage
    from step_ray.qra.card import write_card
    from step_ray.qra.corpus import finalize
    from step_ray.qra.records import write_jsonl, write_parquet
    from step_ray.qra.stage import QraStage
    from step_ray.stsg.stage import STSG_SUFFIX

    out = Path(out_dir)
    paths = expand(inputs, (STSG_SUFFIX,))
    rows = [{"stsg_path": str(p), "video_id": p.name[: -len(STSG_SUFFIX)] if p.name.endswith(STSG_SUFFIX) else p.stem}
            for p in paths]
    check_pool_fit(cfg, "qra.pool", use_ray=use_ray)
    results, seconds = run_stage(QraStage, cfg, rows, use_ray=use_ray)
    results.sort(key=lambda r: r["video_id"])
    ok = [r for r in results if r["status"] == "ok"]
    candidates = [rec for r in ok for rec in json.loads(r["records"])]
    records, corpus = finalize(candidates, cfg.qra, cfg.run.seed)
    rejected: Counter = Counter()
    for r in ok:
        rejected.update(json.loads(r["stats"] or "{}").get("rejected", {}))
    write_parquet(records, out / "qra.parquet")
    write_jsonl(records, out / "qra.jsonl")

    def counts(key: str) -> dict[str, int]:
        return dict(sorted(Counter(str(rec[key]) for rec in records).items()))

    summary = {
        "graphs": len(rows),
        "graphs_failed": len(results) - len(ok),
        "graphs_without_samples": {r["video_id"]: r["reason"] for r in ok if not r["samples"]},
        "errors": {r["video_id"]: r["error"] for r in results if r["status"] != "ok"},
        "candidates": corpus["candidates"],
        "samples": len(records),
        "by_steps": counts("steps"),
        "by_family": counts("family"),
        "by_split": counts("split"),
        "dropped_balance": corpus["dropped_balance"],
        "dropped_options": corpus["dropped_options"],
        "answer_shares": corpus["answer_shares"],
        "rejected": dict(sorted(rejected.items())),
        "seconds": round(seconds, 2),
        "output": str(out / "qra.parquet"),
    }
    if cfg.qra.filter.enabled and records:
        summary["filter"] = qra_filter_step(cfg, out / "qra.parquet", out, use_ray=use_ray)
        summary["samples"] = summary["filter"]["kept"]
    summary["card"] = str(write_card(_read_qra(out / "qra.parquet"), summary, out))
    write_json(out / "stats.json", summary)
    return summary


def _read_qra(path: Path) -> list[dict]:
    from step_ray.qra.records import read_parquet

    return read_parquet(path)


def qra_filter_step(cfg: StepRayConfig, qra: str | Path, out_dir: str | Path, use_ray: bool = True,
                    model: str | None = None) -> dict:
    """The model-side self-consistency filter over a QRA file: asks the model ``qra.filter.asks`` times per
    sample, writes ``qra.parquet`` / ``qra.jsonl`` in ``out_dir`` with ``consistency`` and ``flags`` set (and
    flagged samples dropped when ``qra.filter.action`` is drop) and ``filter.json``."""
    from step_ray.qra.filter import apply_filter

    summary = apply_filter(cfg, find_qra(qra), Path(out_dir), use_ray=use_ray, model=model)
    write_json(Path(out_dir) / "filter.json", summary)
    return summary


def qra_check_step(qra: str | Path, graphs: list[str], out_path: str | Path | None = None,
                   time_tol: float | None = None) -> dict:
    """Re-run every sample's program on other graphs (the ground truth) with the independent executor: the
    share of samples whose answer holds there, overall, by family and by steps; written to ``out_path``."""
    from step_ray.qra.check import check_against

    from step_ray.qra.paths import TIME_TOL

    # (+1e-6: times are stored as floats; "within 0.5 s" must include 0.5 s)
    summary = check_against(find_qra(qra), graphs, TIME_TOL if time_tol is None else time_tol + 1e-6)
    if out_path is not None:
        write_json(Path(out_path), summary)
    return summary


def find_qra(path: str | Path) -> Path:
    """``qra.parquet`` itself, or the folder that holds it."""
    p = Path(path)
    if p.is_dir():
        p = p / "qra.parquet"
    if not p.is_file():
        from step_ray.utils.inputs import InputError

        raise InputError(f"--input {path}: no qra.parquet there (run `step-ray qra` first)")
    return p


# --------------------------------------------------------------------------------------------- train / eval


def require_split(qra_path: Path, split: str) -> None:
    """Fail with a clear message when ``qra_path`` has no rows of ``split`` (a tiny corpus may put every video
    on one side of the train / test split)."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from step_ray.utils.inputs import InputError

    splits = pq.read_table(qra_path, columns=["split"])["split"]
    if not pc.any(pc.equal(splits, split)).as_py():
        raise InputError(f"{qra_path} has no '{split}' questions: the split is by video, so use more videos "
                         f"or change qra.test_fraction")


def train_step(cfg: StepRayConfig, qra: str | Path, out_dir: str | Path) -> dict:
    from step_ray.train.trainer import run_training
    from step_ray.utils.ray_session import init_ray

    qra_path = find_qra(qra)
    require_split(qra_path, "train")
    init_ray(cfg.ray)
    return run_training(cfg, qra_path, Path(out_dir))


def eval_step(cfg: StepRayConfig, qra: str | Path, model: str | None, out_dir: str | Path, name: str,
              split: str = "test", max_samples: int | None = None) -> dict:
    """Accuracy of ``model`` (a training output folder, or None for the configured base model) on ``split``;
    ``max_samples`` overrides ``eval.max_samples``."""
    import dataclasses

    from step_ray.eval.evaluate import evaluate

    if max_samples is not None:
        cfg = dataclasses.replace(cfg, eval=dataclasses.replace(cfg.eval, max_samples=max_samples))
    qra_path = find_qra(qra)
    require_split(qra_path, split)
    start = time.perf_counter()
    result = evaluate(cfg, model, qra_path, split=split)
    result["seconds"] = round(time.perf_counter() - start, 2)
    write_json(Path(out_dir) / f"{name}.json", result)
    return result
