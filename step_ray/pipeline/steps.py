"""The steps of the STEP loop as functions: each reads its inputs, writes its outputs under one folder and
returns a summary dict. The CLI, the ``jobs/`` scripts and ``self-train`` all call these.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from step_ray.config import ConfigError, StepRayConfig
from step_ray.utils.errors import NothingUsable
from step_ray.utils import storage
from step_ray.utils.pool_fit import check_pool_fit


def write_json(path: Path | str, data: Any) -> None:
    """Write JSON atomically, to a local path or an object-store URI."""
    storage.write_text(str(path), json.dumps(data, indent=2, sort_keys=True, default=str))


def write_jsonl(path: Path | str, rows: list[dict]) -> None:
    storage.write_text(str(path), "".join(json.dumps(r, sort_keys=True, default=str) + "\n" for r in rows))


def in_ray_job_working_dir() -> bool:
    """Whether this process is the driver of a ``ray job submit --working-dir ...`` job: its current folder is
    then Ray's temporary copy of the uploaded working dir."""
    config = os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR")
    if not config:
        return False
    try:
        return bool(json.loads(config).get("runtime_env", {}).get("working_dir"))
    except (ValueError, AttributeError):
        return False


def check_output(out: str | Path, name: str = "--output") -> None:
    """Fail (:class:`~step_ray.utils.inputs.InputError`, exit 2) before any work when ``out`` cannot become an
    output folder: it is a file, sits under a file, is not writable, or is relative inside a Ray job (it would
    land in the job's temporary copy of the working dir, deleted with the job). Nothing is created here. An
    object-store prefix is checked by the first write (it has no permissions to look at beforehand)."""
    from step_ray.utils.inputs import InputError

    if storage.is_remote(str(out)):
        return
    if not Path(out).is_absolute() and in_ray_job_working_dir():
        raise InputError(f"{name} {out}: a relative path inside a Ray job lands in Ray's temporary copy of the "
                         f"working dir ({Path.cwd()}), deleted with the job: give an absolute path on shared "
                         f"storage (e.g. /mnt/shared/runs/NAME)")
    p = Path(out).absolute()
    if p.exists() and not p.is_dir():
        raise InputError(f"{name} {out}: is a file, not a folder")
    probe = p
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir():
        raise InputError(f"{name} {out}: {probe} is a file, so no folder can be made under it")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise InputError(f"{name} {out}: {probe} is not writable")


# --------------------------------------------------------------------------------------------- synth


def synth_step(cfg: StepRayConfig, out_dir: str | Path) -> dict:
    """Write the synthetic corpus (videos/ and gt/ under ``out_dir``). On an object store (``s3://``,
    ``gs://``) the corpus is written into a local staging folder under ``$TMPDIR`` and uploaded when it is
    complete (the encoder writes files): a re-run writes it again (the same videos: deterministic by seed)
    rather than resuming video by video."""
    from step_ray.synth.corpus import generate_corpus
    from step_ray.utils.env import show_progress

    start = time.perf_counter()
    out = storage.folder(out_dir)
    with storage.staged_folder(out) as folder:
        items = generate_corpus(folder, cfg.synth, cfg.video, cfg.stsg, progress=show_progress())
    return {
        "videos": len(items),
        "objects": sum(i.get("objects", 0) for i in items),
        "events": sum(i.get("events", 0) for i in items),
        "videos_dir": storage.join(out, "videos"),
        "gt_dir": storage.join(out, "gt"),
        "seconds": round(time.perf_counter() - start, 2),
    }


# --------------------------------------------------------------------------------------------- stsg


def stsg_step(cfg: StepRayConfig, inputs: list[str], out_dir: str | Path, use_ray: bool = True,
              stages: list | None = None) -> dict:
    """Videos -> one STSG JSON per video in ``out_dir`` (a folder or an object-store URI), the ``results/``
    and ``errors/`` tables (sharded Parquet, written as the run goes) and ``summary.json``; streamed on Ray
    Data (:mod:`step_ray.pipeline.stsg_run`). Videos whose graph exists with the same content and settings
    key are skipped. ``stages`` replaces the default perception + graph stages (benchmarks, tests)."""
    from step_ray.pipeline import stsg_run

    weights = cfg.perception.yolo_weights
    if cfg.perception.detector == "yolo" and weights.endswith(".pt") and not Path(weights).is_file():
        # Checked here, before any actor starts: a missing file would otherwise fail every actor's setup().
        # (Shared storage is mounted on every node, the driver's included: see cluster/README.md.)
        raise ConfigError("perception.yolo_weights", f"no such file: {weights} (nothing is downloaded)")
    load_model = None
    if cfg.semantics.enabled:
        from step_ray.models.runtime import load_model_source
        from step_ray.perception.semantics import load_template

        try:
            load_template(cfg.semantics.prompt)
        except FileNotFoundError as err:
            raise ConfigError("semantics.prompt", str(err)) from None
        load_model = load_model_source  # handed down: perception does not import the model layer
    check_pool_fit(cfg, "perception.pool", "stsg.pool", use_ray=use_ray)
    summary = stsg_run.run(cfg, inputs, str(out_dir), use_ray=use_ray, stages=stages, load_model=load_model)
    if summary["videos"] and not summary["ok"]:
        raise NothingUsable(f"none of the {summary['videos']} videos gave a scene graph; reasons in "
                            f"{storage.join(str(out_dir), 'errors')}")
    return summary


def graphs_of_last_run(stsg_dir: str | Path) -> list[str]:
    """The graphs the last complete ``stsg`` run into ``stsg_dir`` produced (from its results table), not
    every graph the folder may hold from earlier runs with other inputs. In memory: for tools and tests;
    the ``qra`` step reads an ``stsg`` folder's results table itself, streaming."""
    import pyarrow.compute as pc
    import pyarrow.dataset as pads

    from step_ray.pipeline.stsg_run import last_run_files

    out = []
    for path in last_run_files(str(stsg_dir)):
        fs, p = storage.filesystem(path)
        t = pads.dataset(p, filesystem=fs, format="parquet").to_table(columns=["stsg_path"],
                                                                       filter=pc.field("status") == "ok")
        out += t["stsg_path"].to_pylist()
    return sorted(out)


# --------------------------------------------------------------------------------------------- qra


def qra_step(cfg: StepRayConfig, inputs: list[str], out_dir: str | Path, use_ray: bool = True) -> dict:
    """STSG files (or an ``stsg`` output folder: the graphs of its last run) -> the QRA parts
    ``part-NNNNN.parquet`` (+ ``.jsonl``; all samples, a ``split`` column), the per-graph ``results/`` and
    ``errors/`` tables, ``stats.json`` and the dataset card ``card.md`` (+ plots), in ``out_dir`` (a folder
    or an object-store URI). Graphs are sampled on CPU actors; options, answer balancing and splits are
    drawn corpus-wide by passes over parts (:mod:`step_ray.qra.corpus`). With ``qra.filter.enabled`` the
    model-side filter runs last."""
    from step_ray.pipeline import qra_run
    from step_ray.qra.card import write_card

    out = str(out_dir)
    check_pool_fit(cfg, "qra.pool", use_ray=use_ray)
    summary = qra_run.run(cfg, inputs, out, use_ray=use_ray)
    stats, parts = summary.pop("card_stats"), summary.pop("parts")
    if cfg.qra.filter.enabled and summary["samples"]:
        summary["filter"], stats = _filter(cfg, out, out, use_ray=use_ray)
        summary["samples"] = summary["filter"]["kept"]
    summary["card"] = str(write_card(stats, summary, out))
    summary["parts"] = parts
    write_json(storage.join(out, "stats.json"), summary)
    if not summary["samples"]:
        raise NothingUsable(f"no QRA sample came out of {summary['graphs']} graph(s) ({summary['graphs_failed']} "
                            f"failed); reasons in {storage.join(out, 'stats.json')} and {storage.join(out, 'errors')}")
    return summary


def qra_filter_step(cfg: StepRayConfig, qra: str | Path, out_dir: str | Path, use_ray: bool = True,
                    model: str | None = None) -> dict:
    """The model-side self-consistency filter over a QRA output (a folder of parts or one file, local or on an
    object store): the ``qra-filter`` stage asks the model ``qra.filter.asks`` times per sample on its actor
    pool, streaming over the parts; writes the QRA parts in ``out_dir`` (may be the input folder) with
    ``consistency`` and ``flags`` set (and flagged samples dropped when ``qra.filter.action`` is drop) and
    ``filter.json``. ``model`` overrides ``qra.filter.model``."""
    return _filter(cfg, qra, out_dir, use_ray=use_ray, model=model)[0]


def _filter(cfg: StepRayConfig, qra: str | Path, out_dir: str | Path, use_ray: bool = True,
            model: str | None = None) -> tuple[dict, dict]:
    """(the filter's summary, written to ``filter.json``; the dataset card's stats of what it kept, from
    the filter's tallies: the kept samples are never read back on the driver)."""
    from step_ray.pipeline import qra_filter

    out = str(out_dir)
    check_output(out)
    summary = qra_filter.run(cfg, find_qra(qra), out, use_ray=use_ray, model=model)
    stats = summary.pop("card_stats")
    write_json(storage.join(out, "filter.json"), summary)
    return summary, stats


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


def find_qra(path: str | Path) -> str:
    """A QRA output: a folder of parts (local or on an object store), a folder holding ``qra.parquet``
    (runs before parts), or one Parquet file; fails with :class:`~step_ray.utils.inputs.InputError`."""
    from step_ray.qra.records import qra_files
    from step_ray.utils.inputs import InputError

    try:
        qra_files(path)
    except FileNotFoundError as err:
        raise InputError(f"--input {err}") from None
    return str(path)


# --------------------------------------------------------------------------------------------- train / eval


def has_split(qra: str | Path, split: str) -> bool:
    """Whether the QRA output (a folder of parts, a folder holding ``qra.parquet``, or one file; local or on
    an object store) has rows of ``split``."""
    import pyarrow.compute as pc

    from step_ray.qra.records import qra_dataset

    splits = qra_dataset(find_qra(qra)).to_table(columns=["split"])["split"]
    return bool(pc.any(pc.equal(splits, split)).as_py())


def require_split(qra_path: str | Path, split: str) -> None:
    """Fail with a clear message (exit 2) when ``qra_path`` is not a QRA output (unreadable Parquet, or without
    the columns training and evaluation read) or has no rows of ``split`` (a tiny corpus may put every video
    on one side of the train / test split)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    from step_ray.qra.records import CORE_FIELDS, QRA_SCHEMA_VERSION, qra_dataset
    from step_ray.utils.inputs import InputError

    try:
        ds = qra_dataset(qra_path)
        missing = [c for c in CORE_FIELDS if c not in ds.schema.names]
        if missing:
            raise InputError(f"{qra_path}: not a QRA file (schema {QRA_SCHEMA_VERSION}, docs/qra_schema.md): "
                             f"no column {', '.join(missing)}")
        splits = ds.to_table(columns=["split"])["split"]
    except (pa.ArrowException, OSError) as err:
        raise InputError(f"{qra_path}: not a readable Parquet file ({type(err).__name__}: "
                         f"{str(err).splitlines()[0] if str(err) else ''})") from None
    if not pc.any(pc.equal(splits, split)).as_py():
        raise InputError(f"{qra_path} has no '{split}' questions: the split is by video, so use more videos "
                         f"or change qra.test_fraction")


def with_init(cfg: StepRayConfig, out_dir: str | Path) -> StepRayConfig:
    """``cfg`` whose ``model.name_or_path`` is the folder of ``train.init`` (an adapter is merged into its base
    under ``out_dir/init`` first), so training starts from that model."""
    import dataclasses

    if not cfg.train.init:
        return cfg
    from step_ray.models.export import materialize
    from step_ray.models.sources import ModelSourceError, resolve_model

    try:
        resolved = resolve_model(cfg.train.init, cfg.model.name_or_path)
        if storage.is_remote(str(out_dir)) and resolved.adapter:
            raise ConfigError("train.init", f"{cfg.train.init} is an adapter: merging it into its base needs a "
                                            f"local output folder, not {out_dir} (give the merged model, "
                                            f"OUT/merged of `step-ray train --merged`, or a local --output)")
        if storage.is_remote(cfg.train.init) and resolved.adapter is None and resolved.base is not None:
            # A model folder on an object store: named there (every training worker copies it from there),
            # not by this process's local copy.
            init = storage.folder(cfg.train.init)
            inner = os.path.relpath(resolved.base, resolved.local_root)
            folder = init if inner == "." else storage.join(init, inner)
        else:
            folder = materialize(cfg.model, cfg.train.init, Path(out_dir) / "init", seed=cfg.run.seed)
    except ModelSourceError as err:
        raise ConfigError("train.init", str(err)) from None
    model = dataclasses.replace(cfg.model, name_or_path=folder)
    return dataclasses.replace(cfg, model=model, train=dataclasses.replace(cfg.train, init=None))


def train_step(cfg: StepRayConfig, qra: str | Path, out_dir: str | Path, merged: bool = False,
               card_kind: str = "train") -> dict:
    """Fine-tune on the train split of ``qra`` into ``out_dir`` (from ``train.init`` when set); ``merged``:
    also export base + adapter merged (what the next self-training round starts from)."""
    from step_ray.train.trainer import run_training
    from step_ray.utils.ray_session import init_ray

    qra_path = find_qra(qra)
    require_split(qra_path, "train")
    cfg = with_init(cfg, out_dir)
    init_ray(cfg.ray)
    return run_training(cfg, qra_path, str(out_dir), merged=merged, card_kind=card_kind)  # str: keeps s3://


def eval_executor(cfg: StepRayConfig, use_ray: bool = True) -> Any:
    """How an evaluation runs its ``eval-score`` stage: on the ``eval.pool`` actor pool (the model is loaded
    in the actors, never in this process; Ray is started or joined, and the pool checked against it, when the
    first questions are scored, so bad inputs fail before), or in this process (None) without Ray."""
    if not use_ray:
        return None
    from step_ray.ray_executor import map_tables
    from step_ray.utils.ray_session import init_ray

    def on_ray(tables: Any, stages: Any) -> Any:
        check_pool_fit(cfg, "eval.pool")
        init_ray(cfg.ray)
        return map_tables(tables, stages)

    return on_ray


def eval_step(cfg: StepRayConfig, qra: str | Path, model: str | None, out_dir: str | Path, name: str,
              split: str = "test", max_samples: int | None = None, vision: str = "real",
              use_ray: bool = True) -> dict:
    """Accuracy of ``model`` (any model reference; None: the configured base model) on ``split``, written to
    ``out_dir/<name>.json``; ``max_samples`` overrides ``eval.max_samples``; ``vision``: 'real' frames or a
    vision control ('blank', 'shuffled'). Scored on the ``eval.pool`` actor pool (in this process without
    Ray)."""
    return eval_files(cfg, qra, model, out_dir, {name: vision}, split, max_samples, use_ray)[name]


def eval_files(cfg: StepRayConfig, qra: str | Path, model: str | None, out_dir: str | Path,
               names: dict[str, str], split: str = "test", max_samples: int | None = None,
               use_ray: bool = True) -> dict[str, dict]:
    """:func:`eval_step` for several result files at once (``name -> vision``: an evaluation and its vision
    controls), scored together in one run of the pool (each actor loads the model once for all of them);
    writes ``out_dir/<name>.json`` for each; name -> result."""
    import dataclasses

    from step_ray.eval.evaluate import evaluate_visions

    if max_samples is not None:
        cfg = dataclasses.replace(cfg, eval=dataclasses.replace(cfg.eval, max_samples=max_samples))
    qra_path = find_qra(qra)
    require_split(qra_path, split)
    executor = eval_executor(cfg, use_ray)
    visions = list(dict.fromkeys(names.values()))
    by_vision = evaluate_visions(cfg, model, qra_path, visions, split=split, executor=executor)
    out = {}
    for name, vision in names.items():
        out[name] = by_vision[vision]
        write_json(storage.join(str(out_dir), f"{name}.json"), out[name])
    return out


def eval_benchmark_step(cfg: StepRayConfig, benchmark: str, input_uri: str, videos: str | None, out: str,
                        model: str | None = None, mode: str = "both", compare: str | None = None,
                        vision: str = "real", use_ray: bool = True, **options: Any) -> dict:
    """``step-ray eval --benchmark``: :func:`step_ray.eval.run.evaluate_benchmark` scored on the ``eval.pool``
    actor pool (in this process without Ray)."""
    from step_ray.eval.run import evaluate_benchmark

    return evaluate_benchmark(cfg, benchmark, input_uri, videos, out, model, mode, compare, vision,
                              executor=eval_executor(cfg, use_ray), **options)
