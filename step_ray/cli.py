"""``step-ray``: the command line of the STEP loop.

Every subcommand takes ``--config FILE`` and ``section.field=value`` overrides (see ``step-ray fields``).
A bad config value or input exits with code 2 and one line naming the field; no traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import textwrap
from pathlib import Path

from step_ray.config import ConfigError, StepRayConfig, field_docs, load_config

EPILOG = """\
config:
  --config FILE        YAML with any subset of the sections (see configs/demo.yaml)
  section.field=value  override one field, e.g. train.steps=50 perception.detector=yolo
  `step-ray fields` lists every field with its default and meaning.
"""


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
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("synth", formatter_class=fmt, epilog=EPILOG,
                       help="write a synthetic corpus: H.264 videos of moving shapes + ground-truth STSGs",
                       description="Write N synthetic videos (shapes that move, collide, enter, leave, occlude, with "
                                   "scene cuts) to OUT/videos and their ground-truth scene graphs to OUT/gt. "
                                   "Deterministic by seed; re-running skips finished videos.")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder")
    p.add_argument("--videos", type=int, help="number of videos (synth.videos)")
    p.add_argument("--seed", type=int, help="seed (synth.seed)")
    _common(p)

    p = sub.add_parser("stsg", formatter_class=fmt, epilog=EPILOG,
                       help="videos -> spatio-temporal scene graphs (Ray Data actor pool)",
                       description="Decode each video at video.sample_fps, split shots, detect and track objects, "
                                   "and write one STSG JSON per video to DIR; failed videos go to DIR/errors.jsonl "
                                   "with the reason. Videos with a finished graph are skipped.")
    p.add_argument("--input", required=True, nargs="+", metavar="PATH", help="video files, folders or globs")
    p.add_argument("--output", required=True, metavar="DIR", help="output folder")
    _common(p, ray=True)

    p = sub.add_parser("qra", formatter_class=fmt, epilog=EPILOG,
                       help="scene graphs -> question / rationale / answer samples (Parquet)",
                       description="Sample reasoning paths of qra.min_steps..qra.max_steps edges on each STSG and "
                                   "render multiple-choice questions with step-by-step rationales to DIR/qra.parquet, "
                                   "split into train/test by video.")
    p.add_argument("--input", required=True, nargs="+", metavar="PATH", help="STSG files, folders or globs")
    p.add_argument("--output", required=True, metavar="DIR", help="output folder")
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
    p.add_argument("--input", required=True, metavar="PATH", help="qra.parquet or the folder holding it")
    p.add_argument("--output", required=True, metavar="DIR", help="output folder")
    _common(p)

    p = sub.add_parser("eval", formatter_class=fmt, epilog=EPILOG,
                       help="multiple-choice accuracy by number of reasoning steps",
                       description="Score every option of each test-split question by its likelihood under the "
                                   "model and report accuracy overall, by steps (1, 2, 3+) and by family.")
    p.add_argument("--input", required=True, metavar="PATH", help="qra.parquet or the folder holding it")
    p.add_argument("--model", metavar="DIR", help="a `step-ray train` output folder (default: the base model)")
    p.add_argument("--output", required=True, metavar="DIR", help="output folder (writes NAME.json)")
    p.add_argument("--name", default="eval", help="result file name (default: eval)")
    _common(p)

    p = sub.add_parser("self-train", formatter_class=fmt, epilog=EPILOG,
                       help="the whole loop into one run directory, with a summary and report.md",
                       description="synth (unless --input is given) -> stsg -> qra -> eval base -> train -> eval "
                                   "trained -> report.md. Finished steps are skipped on a re-run.")
    p.add_argument("--input", nargs="+", metavar="PATH", help="videos (default: a synthetic corpus per synth.*)")
    p.add_argument("--output", metavar="DIR", help="run directory (default: run.output_dir)")
    _common(p, ray=True)

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


def run(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
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
    from step_ray.pipeline import steps

    use_ray = not getattr(args, "no_ray", False)  # Ray itself is started (or joined) by the steps that use it
    if args.command == "synth":
        _print_summary("synth", steps.synth_step(cfg, args.out))
    elif args.command == "stsg":
        summary = steps.stsg_step(cfg, args.input, args.output, use_ray=use_ray)
        _print_summary("stsg", summary)
    elif args.command == "qra":
        _print_summary("qra", steps.qra_step(cfg, args.input, args.output, use_ray=use_ray))
    elif args.command == "train":
        summary = steps.train_step(cfg, args.input, args.output)
        _print_summary("train", {k: v for k, v in summary.items() if k != "history"})
    elif args.command == "eval":
        result = steps.eval_step(cfg, args.input, args.model, args.output, args.name)
        _print_summary("eval", {k: v for k, v in result.items() if k != "predictions"})
    elif args.command == "self-train":
        from step_ray.pipeline.self_train import self_train

        self_train(cfg, inputs=args.input, run_dir=args.output, use_ray=use_ray)
    return 0


def main(argv: list[str] | None = None) -> int:
    from step_ray.utils.inputs import InputError

    # DeepSpeed picks its accelerator when imported; on a driver without an NVIDIA driver that must be the CPU.
    # (Training workers get their own setting from train.use_gpu.)
    if not _has_cuda():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    try:
        return run(argv)
    except (ConfigError, InputError) as err:
        print(f"step-ray: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("step-ray: interrupted; finished outputs are kept and a re-run resumes", file=sys.stderr)
        return 130


def _has_cuda() -> bool:
    """Whether an NVIDIA driver is present, without importing torch (slow) just for the CLI."""
    return Path("/proc/driver/nvidia/version").exists()


if __name__ == "__main__":
    sys.exit(main())
