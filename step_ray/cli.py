"""``step-ray``: the command line of the STEP loop.

Every subcommand takes ``--config FILE`` and ``section.field=value`` overrides (see ``step-ray fields``),
anywhere on the command line. Exit codes: 0 done; 1 the step ran but nothing usable came out (or a bug);
2 a bad config value, input file or output location, with one line naming the field or file and no
traceback, before any work starts; 130 interrupted (SIGINT), with what was kept.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import textwrap
from pathlib import Path

from step_ray import __version__
from step_ray.config import ConfigError, StepRayConfig, dump_config, field_docs, load_config

EPILOG = """\
config:
  --config FILE        YAML with any subset of the sections (see configs/demo.yaml)
  section.field=value  override one field, e.g. train.steps=50 perception.detector=yolo; overrides may
                       stand anywhere, also after --input (a file whose name looks like one: ./a.b=c.mp4)
  `step-ray fields` lists every field with its default and meaning; `step-ray config` prints the
  resolved config.
exit codes: 0 done, 1 nothing usable came out, 2 bad config / input / output, 130 interrupted.
"""

#: ``section.field[.field...]=value``: taken as an override wherever it stands on the command line. A path
#: never matches (no ``/``); a file named like one is passed as ``./name``.
OVERRIDE = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)+=")


def _common(p: argparse.ArgumentParser, ray: bool = False) -> None:
    p.add_argument("--config", metavar="FILE", help="YAML config file (default: built-in defaults)")
    p.add_argument("overrides", nargs="*", metavar="section.field=value", help="config overrides")
    if ray:
        p.add_argument("--no-ray", action="store_true",
                       help="run the stage in this process with the sequential runner (debugging; no Ray)")


def build_parser() -> argparse.ArgumentParser:
    fmt = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(
        prog="step-ray", formatter_class=fmt, epilog=EPILOG,
        description="STEP self-training for Video-LLMs on Ray: videos -> scene graphs -> reasoning QRA -> "
                    "fine-tuning -> evaluation by number of reasoning steps.")
    parser.add_argument("--version", action="version", version=f"step-ray {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("synth", formatter_class=fmt, epilog=EPILOG,
                       help="write a synthetic corpus: H.264 videos of moving shapes + ground-truth STSGs",
                       description="Write N synthetic videos (shapes that move, collide, enter, leave, occlude, with "
                                   "scene cuts) to OUT/videos and their ground-truth scene graphs to OUT/gt. "
                                   "Deterministic by seed; re-running skips finished videos.")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder or s3:// gs:// URI")
    p.add_argument("--videos", type=int, help="number of videos (synth.videos)")
    p.add_argument("--seed", type=int, help="seed (synth.seed)")
    _common(p)

    p = sub.add_parser("stsg", formatter_class=fmt, epilog=EPILOG,
                       help="videos -> spatio-temporal scene graphs (Ray Data actor pools)",
                       description="Stream each video at video.sample_fps, split shots and pick keyframes (k-means), "
                                   "detect and track objects, optionally let the Video-LLM parse the keyframes "
                                   "(semantics.enabled), and write one STSG JSON per video to DIR; every video gets a "
                                   "row in DIR/results/ (sharded Parquet, written as the run goes), failed ones also "
                                   "in DIR/errors/ with the reason; DIR/summary.json counts everything. Inputs are "
                                   "listed lazily (manifests of any length). A video whose graph exists with the same "
                                   "content and settings key is skipped.")
    p.add_argument("--input", required=True, nargs="+", metavar="PATH",
                   help="video files, folders (recursive), globs, manifests (.txt/.jsonl/.csv) or s3:// gs:// URIs")
    p.add_argument("--output", required=True, metavar="DIR", help="output folder or s3:// gs:// URI")
    _common(p, ray=True)

    p = sub.add_parser("qra", formatter_class=fmt, epilog=EPILOG,
                       help="scene graphs -> question / rationale / answer samples (Parquet)",
                       description="Sample reasoning paths of qra.min_steps..qra.max_steps edges on each STSG and "
                                   "render multiple-choice questions with step-by-step rationales to the parts "
                                   "DIR/part-*.parquet (+ .jsonl; schema qra/3, docs/qra_schema.md), split into "
                                   "train/val/test by video (a split column), with a dataset card DIR/card.md. Graphs "
                                   "that give no samples are listed with the reason.")
    p.add_argument("--input", required=True, nargs="+", metavar="PATH",
                   help="STSG files, folders, globs or s3:// gs:// prefixes; an `stsg` output folder gives the graphs "
                        "of its last run")
    p.add_argument("--output", required=True, metavar="DIR", help="output folder or s3:// gs:// URI")
    _common(p, ray=True)

    p = sub.add_parser("qra-check", formatter_class=fmt, epilog=EPILOG,
                       help="share of QRA samples whose answer holds on other (ground-truth) graphs",
                       description="Run each sample's program with the executor on the graph of its video in "
                                   "--graphs (e.g. the synthetic corpus's gt/ folder) and report the share whose "
                                   "answer holds there, by family and by steps, with failure reasons.")
    p.add_argument("--qra", required=True, metavar="PATH", help="a qra output folder (its parts) or a Parquet file")
    p.add_argument("--graphs", required=True, nargs="+", metavar="PATH", help="STSG files, folders or globs")
    p.add_argument("--output", metavar="FILE", help="write the summary as JSON here")
    p.add_argument("--time-tolerance", type=float, metavar="S",
                   help="seconds a stated time may differ from the graph's: an event's time, a relation's or "
                        "motion's span (default 0.05: the questions' 0.1 s precision; perception dates events by "
                        "its sampled frames and knows relations at its own keyframes, so 0.5 is fair for "
                        "predicted graphs checked against the ground truth)")
    _common(p)

    p = sub.add_parser("qra-filter", formatter_class=fmt, epilog=EPILOG,
                       help="model-side self-consistency filter over QRA samples (STEP)",
                       description="Ask the Video-LLM qra.filter.asks times per sample (options in seeded orders), "
                                   "set each sample's consistency and flags, and write the QRA part(s) and "
                                   "DIR/filter.json (flagged samples are dropped when "
                                   "qra.filter.action=drop). Runs on the qra.filter.pool actors.")
    p.add_argument("--input", required=True, metavar="PATH", help="a qra output folder (its parts) or a Parquet file")
    p.add_argument("--output", required=True, metavar="DIR", help="output folder or s3:// gs:// URI")
    p.add_argument("--model", metavar="DIR", help="model to ask (default: qra.filter.model, else the base model)")
    _common(p, ray=True)

    p = sub.add_parser("train", formatter_class=fmt, epilog=EPILOG,
                       help="fine-tune the Video-LLM on QRA (Ray Train + DeepSpeed ZeRO + LoRA)",
                       description="Train with L = L_answer + train.rationale_weight * L_rationale on the train "
                                   "split (train.loss_format: multitask or joint), on train.num_workers Ray Train "
                                   "workers under DeepSpeed ZeRO-train.zero_stage, fed by a Ray Data stream that "
                                   "decodes the frames on CPU actors. Checkpoints go to DIR/checkpoints; "
                                   "re-running with the same DIR resumes, and a dead worker is replaced "
                                   "(train.max_failures). The adapter is exported to DIR/adapter (DIR/model "
                                   "without LoRA). configs/train_*.yaml and configs/gpu_*.yaml are examples.")
    p.add_argument("--input", required=True, metavar="PATH", help="a qra output folder (its parts) or a Parquet file")
    p.add_argument("--output", required=True, metavar="DIR", help="output folder or s3:// gs:// URI")
    p.add_argument("--init", metavar="MODEL", help="start from this model (train.init): a training or pretraining "
                                                   "output, an adapter (merged into its base first), a HF folder")
    p.add_argument("--merged", action="store_true", help="also export base + adapter merged into DIR/merged")
    _common(p)

    p = sub.add_parser("pretrain", formatter_class=fmt, epilog=EPILOG,
                       help="a base model that perceives: full fine-tuning on 1-step perception questions",
                       description="The laptop's stand-in for a pretrained Video-LLM: train model.name_or_path (for "
                                   "'tiny': from random weights), vision tower included, on 1-step perception "
                                   "questions (pretrain.families) of a synthetic corpus of its own (pretrain.videos, "
                                   "pretrain.seed, the world of synth.*), and save a Hugging Face model folder "
                                   "(DIR/model) that every other step loads with model.name_or_path=DIR/model. Its "
                                   "held-out accuracy, with black frames beside it, is in DIR/pretrain.json. "
                                   "A finished DIR with the same settings is reused. On GPUs, skip this and point "
                                   "model.name_or_path at a real checkpoint.")
    p.add_argument("--output", metavar="DIR", help="output folder or s3:// gs:// URI (default: pretrain.output, else "
                                                  "step-ray's cache)")
    _common(p, ray=True)

    p = sub.add_parser("ablate", formatter_class=fmt, epilog=EPILOG,
                       help="train several lambdas / loss formats / seeds on the same QRA and tabulate them",
                       description="Mine the QRA once (synth unless --input, stsg, qra), then train every "
                                   "(ablation.rationale_weights x ablation.loss_formats x ablation.seeds) run from "
                                   "the same base (pretrain.enabled: the pretrained one), evaluate each by steps "
                                   "with 95% intervals and under the vision controls (eval.vision_controls), and "
                                   "write OUT/ablation.json, ablation.md, ablation.html. Finished runs are skipped "
                                   "on a re-run. configs/step_miniature.yaml is the STEP-in-miniature experiment.")
    p.add_argument("--output", required=True, metavar="DIR", help="output folder or s3:// gs:// URI")
    p.add_argument("--input", nargs="+", metavar="PATH", help="videos (default: a synthetic corpus per synth.*)")
    _common(p, ray=True)

    p = sub.add_parser("eval", formatter_class=fmt, epilog=EPILOG,
                       help="accuracy by number of reasoning steps, on step-ray's QRA or a public benchmark",
                       description="Questions are scored on a Ray Data actor pool (eval.pool; the model is "
                                   "loaded in the actors, bf16 on GPUs, never in this process; --no-ray: in this "
                                   "process).\n\nWithout --benchmark: score every option of each test-split "
                                   "question of a QRA output by its likelihood under the model and write "
                                   "OUTPUT/NAME.json (accuracy overall, by steps 1/2/3+ and by family, 95% Wilson "
                                   "intervals).\n\nWith --benchmark nextqa|star|agqa|qra: read the benchmark's "
                                   "file as distributed (docs/benchmarks.md), score its questions by "
                                   "option likelihood and / or by generation (--mode), and write "
                                   "OUTPUT/predictions.parquet (a row per question, skipped ones with their "
                                   "reason), OUTPUT/summary.json (accuracy overall, by steps and by question type, "
                                   "95% Wilson intervals) and, for NExT-QA, nextqa_results.json for its eval_mc.py. "
                                   "--compare pairs the questions with another run's predictions: the paired "
                                   "difference, its 95% interval and McNemar's p, 'within noise' when the "
                                   "interval holds 0.")
    p.add_argument("--input", required=True, metavar="PATH",
                   help="a qra output folder (its parts) or a Parquet file; with --benchmark: the benchmark's question file (NExT-QA val.csv, "
                        "STAR_val.json, AGQA test_balanced.txt; local or s3:// / gs://)")
    p.add_argument("--benchmark", choices=("nextqa", "star", "agqa", "qra"),
                   help="score a benchmark on the eval.pool actor pool (see the description)")
    p.add_argument("--videos", metavar="ROOT", help="--benchmark: folder or prefix of the benchmark's videos")
    p.add_argument("--mode", choices=("likelihood", "generation", "both"), default="both",
                   help="--benchmark: score options by likelihood, parse a generated answer, or both (default)")
    p.add_argument("--compare", metavar="PREDICTIONS",
                   help="--benchmark: another run's predictions.parquet (or its folder): paired difference to it")
    p.add_argument("--map", metavar="FILE", help="--benchmark nextqa: map_vid_vidorID.json (default: beside --input)")
    p.add_argument("--vocabulary", metavar="FILE",
                   help="--benchmark agqa: the file answer vocabularies come from (default: --input; give the train "
                        "file to keep test answers out of them)")
    p.add_argument("--split", default="test", help="--benchmark qra: the QRA split to score (default: test)")
    p.add_argument("--model", metavar="DIR", help="any model: a `step-ray train` or `pretrain` output, an adapter, "
                                                "a merged or Hugging Face folder (default: the base model)")
    p.add_argument("--output", required=True, metavar="DIR", help="output folder (writes NAME.json, or with "
                                                                  "--benchmark the files above)")
    p.add_argument("--name", default="eval", help="result file name without --benchmark (default: eval)")
    p.add_argument("--vision", choices=("real", "blank", "shuffled"), default="real",
                   help="vision control: real frames (default), black frames, or the same moments of another video")
    _common(p, ray=True)

    p = sub.add_parser("self-train", formatter_class=fmt, epilog=EPILOG,
                       help="the whole loop into one run directory, with a summary and report.md",
                       description="synth (unless --input is given) -> stsg -> qra -> eval base -> train -> eval "
                                   "trained -> report.md. Finished steps are skipped on a re-run.")
    p.add_argument("--input", nargs="+", metavar="PATH", help="videos (default: a synthetic corpus per synth.*)")
    p.add_argument("--output", metavar="DIR",
                   help="run directory, a folder or s3:// gs:// URI (default: run.output_dir)")
    _common(p, ray=True)

    p = sub.add_parser("stsg-eval", formatter_class=fmt, epilog=EPILOG,
                       help="score predicted scene graphs against ground truth (objects, IDs, relations, events)",
                       description="Match each ground-truth graph (*.stsg.json in --gt) to the predicted graph of "
                                   "the same video_id in --pred and report, per video and micro-averaged over the "
                                   "corpus: object precision/recall/F1 (Hungarian on mean track IoU), the share of "
                                   "videos whose per-clip object lists match exactly, identity switches per 100 "
                                   "ground-truth track-frames, relation F1 at the predicted keyframes, event F1 "
                                   "(kind, participants, time within --time-tol) and same_as F1. Relations use the "
                                   "near factor the graph records, else stsg.near_factor. A missing or unreadable "
                                   "prediction counts as finding nothing; unreadable files are listed.")
    p.add_argument("--pred", required=True, metavar="DIR", help="folder of predicted graphs (`step-ray stsg` output)")
    p.add_argument("--gt", required=True, metavar="DIR", help="folder of ground-truth graphs (synth's gt/)")
    p.add_argument("--output", metavar="FILE", help="write the full report as JSON here")
    p.add_argument("--plot", metavar="PNG", help="draw the corpus scores as a bar chart here")
    p.add_argument("--iou", type=float, default=0.5, help="IoU at which boxes / objects match (default: 0.5)")
    p.add_argument("--time-tol", type=float, default=0.5, metavar="S",
                   help="seconds an event may be off its true time (default: 0.5)")
    _common(p)

    p = sub.add_parser("show-stsg", formatter_class=fmt, epilog=EPILOG,
                       help="draw a scene graph: timeline of objects, relations, events, and keyframes with boxes",
                       description="Draw FILE as a PNG (timeline + relation spans + keyframes with boxes) or a "
                                   "self-contained HTML page (the same images inline + tables of objects, events, "
                                   "relations). Keyframes are decoded from the graph's uri (or --video); if the "
                                   "video cannot be read, boxes are drawn on blank frames and the drawing says so.")
    p.add_argument("file", metavar="FILE", help="an .stsg.json graph")
    p.add_argument("--output", metavar="OUT", help="out.png or out.html (default: FILE's name with .png, next to it)")
    p.add_argument("--video", metavar="PATH", help="the video to take keyframes from (default: the graph's uri)")
    _common(p)

    sub.add_parser("plan", add_help=False, help="estimate hours, GPU-hours and pool sizes for a corpus on a cluster",
                   description="See `step-ray plan --help` (docs/scaling.md: the cost model).")

    p = sub.add_parser("config", formatter_class=fmt, epilog=EPILOG,
                       help="print the resolved config (defaults < --config FILE < overrides) as YAML",
                       description="Load --config FILE (or the defaults), apply the overrides, validate, and print "
                                   "the whole tree as YAML: what a step would run with. The output is itself a "
                                   "valid --config file.")
    _common(p)

    p = sub.add_parser("fields", help="list every config field with its default and meaning")
    p.add_argument("--markdown", action="store_true", help="as a Markdown table (docs/config.md)")
    return parser


def _load(args) -> StepRayConfig:
    overrides = list(args.overrides)
    if args.command == "synth":
        if args.videos is not None:
            overrides.append(f"synth.videos={args.videos}")
        if args.seed is not None:
            overrides.append(f"synth.seed={args.seed}")
    return load_config(args.config, overrides)


def _print_summary(title: str, summary: dict) -> None:
    print(f"\n== {title} ==")
    for k, v in summary.items():
        if isinstance(v, (dict, list)):
            v = json.dumps(v) if len(json.dumps(v)) < 100 else json.dumps(v)[:97] + "..."
        print(f"  {k:<22} {v}")


def split_overrides(argv: list[str]) -> tuple[list[str], list[str]]:
    """(arguments, overrides): every ``section.field=value`` token, wherever it stands (argparse would give one
    after ``--input a.mp4`` to --input as a path). Tokens after a literal ``--`` are left to argparse."""
    args: list[str] = []
    overrides: list[str] = []
    for i, token in enumerate(argv):
        if token == "--":
            args.extend(argv[i:])
            break
        (overrides if OVERRIDE.match(token) else args).append(token)
    return args, overrides


def output_of(args: argparse.Namespace) -> str | None:
    """The output location of a command (checked writable before any work), or None."""
    if args.command == "synth":
        return args.out  # (its flag is --out)
    if args.command in ("stsg-eval", "qra-check"):
        return str(Path(args.output).parent) if args.output else None
    if args.command == "show-stsg":
        return None  # next to its input by default; checked when written
    return getattr(args, "output", None)


#: Commands that fine-tune (Ray Train), so log to the configured trackers.
TRAINING_COMMANDS = ("train", "pretrain", "ablate", "self-train")


def run(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["plan"]:  # its own options (the corpus, the cluster, the rates): docs/scaling.md
        from step_ray.pipeline.plan import main as plan

        return plan(argv[1:])
    parser = build_parser()
    rest, moved = split_overrides(argv)
    args = parser.parse_args(rest)
    if moved:
        if not hasattr(args, "overrides"):
            parser.error(f"{args.command} takes no config overrides: {' '.join(moved)}")
        args.overrides = [*args.overrides, *moved]
    if args.command == "fields":
        rows = field_docs()
        if args.markdown:
            print("| field | default | meaning |\n|---|---|---|")
            for name, default, help_text in rows:
                print(f"| `{name}` | `{default}` | {help_text} |")
        else:
            for name, default, help_text in rows:
                print(f"{name} = {default}")
                print(textwrap.indent(textwrap.fill(help_text, 96), "    "))
        return 0

    cfg = _load(args)
    if args.command == "config":
        print(f"# step-ray {__version__}: resolved config", end="")
        print(f" from {args.config}" if args.config else " (defaults)", end="")
        print(f" with {' '.join(args.overrides)}" if args.overrides else "")
        print(dump_config(cfg), end="")
        return 0
    from step_ray.pipeline import steps

    out, flag = output_of(args), "--out" if args.command == "synth" else "--output"
    if args.command == "self-train" and out is None:
        out, flag = cfg.run.output_dir, "run.output_dir"
    if out is not None:
        # Before any work: a bad --output must not fail after hours of it.
        steps.check_output(out, flag)
    if args.command in TRAINING_COMMANDS:
        from step_ray.train.tracking import check_tracking

        check_tracking(cfg)  # a configured tracker that is not installed: refused now, not after the mining
    _INTERRUPT_NOTE[0] = interrupt_note(args.command, out)
    use_ray = not getattr(args, "no_ray", False)  # Ray itself is started (or joined) by the steps that use it
    if args.command == "synth":
        _print_summary("synth", steps.synth_step(cfg, args.out))
    elif args.command == "stsg":
        summary = steps.stsg_step(cfg, args.input, args.output, use_ray=use_ray)
        _print_summary("stsg", summary)
    elif args.command == "qra":
        _print_summary("qra", steps.qra_step(cfg, args.input, args.output, use_ray=use_ray))
    elif args.command == "qra-check":
        _print_summary("qra-check", steps.qra_check_step(args.qra, args.graphs, args.output,
                                                                            args.time_tolerance))
    elif args.command == "qra-filter":
        _print_summary("qra-filter", steps.qra_filter_step(cfg, args.input, args.output, use_ray=use_ray,
                                                           model=args.model))
    elif args.command == "train":
        if args.init:
            import dataclasses

            cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, init=args.init))
        summary = steps.train_step(cfg, args.input, args.output, merged=args.merged)
        _print_summary("train", {k: v for k, v in summary.items() if k != "history"})
    elif args.command == "eval" and args.benchmark:
        from step_ray.eval.run import format_summary

        options = {"map_uri": args.map, "vocabulary_uri": args.vocabulary,
                   "split": args.split if args.benchmark == "qra" else None}
        summary = steps.eval_benchmark_step(cfg, args.benchmark, args.input, args.videos, args.output, args.model,
                                            args.mode, args.compare, args.vision, use_ray=use_ray, **options)
        print(format_summary(summary))
    elif args.command == "eval":
        from step_ray.utils.inputs import InputError

        for flag in ("videos", "compare", "map", "vocabulary"):
            if getattr(args, flag):
                raise InputError(f"--{flag} needs --benchmark (without it, eval scores a QRA file by likelihood)")
        result = steps.eval_step(cfg, args.input, args.model, args.output, args.name, vision=args.vision,
                                 use_ray=use_ray)
        _print_summary("eval", {k: v for k, v in result.items() if k != "predictions"})
    elif args.command == "stsg-eval":
        _stsg_eval(cfg, args)
    elif args.command == "show-stsg":
        _show_stsg(cfg, args)
    elif args.command == "pretrain":
        from step_ray.pipeline.pretrain import pretrain_step

        _print_summary("pretrain", pretrain_step(cfg, args.output, use_ray=use_ray))
    elif args.command == "ablate":
        from step_ray.pipeline.ablate import ablate

        ablate(cfg, args.output, inputs=args.input, use_ray=use_ray)
    elif args.command == "self-train":
        from step_ray.pipeline.self_train import self_train

        self_train(cfg, inputs=args.input, run_dir=args.output, use_ray=use_ray)
    return 0


def _stsg_eval(cfg: StepRayConfig, args) -> None:
    from step_ray.stsg.scoring import ScoreSettings, evaluate_dirs, format_table
    from step_ray.utils.env import show_progress
    from step_ray.utils.inputs import InputError

    for flag, folder in (("--pred", args.pred), ("--gt", args.gt)):
        if not Path(folder).is_dir():
            raise InputError(f"{flag} {folder}: not a folder")
    if not 0 < args.iou <= 1:
        raise InputError(f"--iou {args.iou}: must be in (0, 1]")
    if args.time_tol < 0:
        raise InputError(f"--time-tol {args.time_tol}: must be >= 0")
    if args.plot and not args.plot.lower().endswith(".png"):
        raise InputError(f"--plot {args.plot}: must end in .png")
    if not any(Path(args.gt).glob("*.stsg.json")):
        raise InputError(f"--gt {args.gt}: folder holds no .stsg.json files")
    report = evaluate_dirs(args.pred, args.gt, ScoreSettings(iou=args.iou, time_tol=args.time_tol),
                           default_near_factor=cfg.stsg.near_factor, progress=show_progress())
    print(format_table(report))
    for e in report["errors"]:
        print(f"unreadable {e['side']}: {e['path']}: {e['error']}")
    if report["extra_predictions"]:
        print(f"{len(report['extra_predictions'])} predicted graph(s) without ground truth (not scored)")
    if args.output:
        out = Path(args.output)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report, indent=1, sort_keys=True))
        print(f"report: {out}")
    if args.plot:
        from step_ray.stsg.draw import render_scores

        render_scores(report, Path(args.plot))
        print(f"plot: {args.plot}")


def _show_stsg(cfg: StepRayConfig, args) -> None:
    from step_ray.stsg.draw import OUTPUT_SUFFIXES, show
    from step_ray.stsg.schema import StsgFormatError
    from step_ray.utils.inputs import InputError

    src = Path(args.file)
    if not src.is_file():
        raise InputError(f"{args.file}: no such file")
    stem = src.name[: -len(".stsg.json")] if src.name.endswith(".stsg.json") else src.stem
    output = args.output or str(src.with_name(stem + ".png"))
    if Path(output).suffix.lower() not in OUTPUT_SUFFIXES:
        raise InputError(f"--output {output}: must end in .png or .html")
    try:
        summary = show(src, output, args.video, cfg.video)
    except (OSError, UnicodeDecodeError, StsgFormatError) as err:
        raise InputError(f"{args.file}: {err}") from None
    except (KeyError, TypeError, ValueError, IndexError) as err:  # a field missing or mistyped in the graph
        raise InputError(f"{args.file}: malformed graph: {type(err).__name__}: {err}") from None
    _print_summary("show-stsg", summary)


#: What an interrupted command keeps (set once the command is known, printed on SIGINT).
_INTERRUPT_NOTE = ["finished outputs are kept and a re-run resumes"]


def interrupt_note(command: str, out: str | None) -> str:
    from step_ray.utils.storage import is_remote

    where = out or "the output folder"
    return {
        "stsg": f"finished graphs in {where} are kept; a re-run skips them",
        "train": f"checkpoints in {where}/checkpoints are kept; a re-run with the same --output resumes from the "
                 f"latest one",
        "self-train": f"finished steps in {where} are kept; a re-run skips them and resumes training from its "
                      f"latest checkpoint",
        "synth": (f"nothing was uploaded to {where} (a corpus is uploaded when complete); re-run the command"
                  if out and is_remote(out) else
                  f"finished videos in {where} are kept; a re-run skips them"),
    }.get(command, f"nothing partial is left in {where}; re-run the command")


class Terminated(KeyboardInterrupt):
    """SIGTERM (``ray job stop``, ``kill``, a pod's shutdown): handled like Ctrl-C, with exit code 143."""


def _on_sigterm(signum, frame):  # noqa: ARG001 - the signal module's signature
    raise Terminated()


def main(argv: list[str] | None = None) -> int:
    import signal
    import threading

    from step_ray.utils.errors import NothingUsable
    from step_ray.utils.inputs import InputError

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _on_sigterm)
    from step_ray.utils.env import quiet_library_bars

    quiet_library_bars()  # job and CI logs: lines, not bar redraws

    # DeepSpeed picks its accelerator when imported; on a driver without an NVIDIA driver that must be the CPU.
    # (Training workers get their own setting from train.use_gpu.)
    if not _has_cuda():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    try:
        return run(argv)
    except (ConfigError, InputError) as err:
        print(f"step-ray: error: {err}", file=sys.stderr)
        return 2
    except NothingUsable as err:
        print(f"step-ray: error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt as err:
        terminated = isinstance(err, Terminated)
        print(f"step-ray: {'terminated' if terminated else 'interrupted'}; {_INTERRUPT_NOTE[0]}", file=sys.stderr)
        return 143 if terminated else 130


def _has_cuda() -> bool:
    """Whether an NVIDIA driver is present, without importing torch (slow) just for the CLI."""
    return Path("/proc/driver/nvidia/version").exists()


if __name__ == "__main__":
    sys.exit(main())
