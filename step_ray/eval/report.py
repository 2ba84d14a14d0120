"""The run report: ``report.md`` with tables and plots, and the summary printed at the end of ``self-train``."""

from __future__ import annotations

from pathlib import Path

STEP_BUCKETS = ("1", "2", "3+")


def _acc(result: dict, group: str, key: str) -> tuple[float | None, int]:
    cell = result.get(group, {}).get(key)
    if not cell:
        return None, 0
    return cell["accuracy"], cell["n"]


def chance(result: dict) -> float:
    """Accuracy of guessing: the mean over questions of one over their number of options (yes / no questions
    have two, the others qra.num_options), read off the scored predictions."""
    preds = [p for p in result.get("predictions") or [] if p.get("scores")]
    return sum(1.0 / len(p["scores"]) for p in preds) / len(preds) if preds else 0.25


def _pct(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:.1f}%"


def accuracy_table(base: dict, trained: dict, seen: dict | None = None) -> list[str]:
    """Held-out accuracy of base and trained by steps; ``seen``: the trained model on training questions."""
    seen = seen or {}
    lines = ["| steps | n | base | trained | change | trained, on training questions |", "|---|---|---|---|---|---|"]
    for key in STEP_BUCKETS:
        b, n = _acc(base, "by_steps", key)
        t, _ = _acc(trained, "by_steps", key)
        s, sn = _acc(seen, "by_steps", key)
        delta = "–" if b is None or t is None else f"{100 * (t - b):+.1f} pts"
        lines.append(f"| {key} | {n} | {_pct(b)} | {_pct(t)} | {delta} | {_pct(s)} (n={sn}) |")
    b, t = base.get("accuracy"), trained.get("accuracy")
    delta = "–" if b is None or t is None else f"{100 * (t - b):+.1f} pts"
    lines.append(f"| **all** | {base.get('n', 0)} | {_pct(b)} | {_pct(t)} | {delta} | "
                 f"{_pct(seen.get('accuracy'))} (n={seen.get('n', 0)}) |")
    return lines


def family_table(base: dict, trained: dict) -> list[str]:
    families = sorted(set(base.get("by_family", {})) | set(trained.get("by_family", {})))
    lines = ["| family | n | base | trained |", "|---|---|---|---|"]
    for fam in families:
        b, n = _acc(base, "by_family", fam)
        t, _ = _acc(trained, "by_family", fam)
        lines.append(f"| {fam} | {n} | {_pct(b)} | {_pct(t)} |")
    return lines


def plot_accuracy(base: dict, trained: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    x = np.arange(len(STEP_BUCKETS))
    fig, ax = plt.subplots(figsize=(5.5, 3.5))
    for offset, (label, res, color) in enumerate((("base", base, "#9aa5b1"), ("trained", trained, "#2b6cb0"))):
        vals = [(_acc(res, "by_steps", k)[0] or 0.0) * 100 for k in STEP_BUCKETS]
        bars = ax.bar(x + (offset - 0.5) * 0.38, vals, 0.38, label=label, color=color)
        ax.bar_label(bars, fmt="%.0f", fontsize=8)
    guess = 100.0 * chance(base)
    ax.axhline(guess, ls="--", lw=1, color="#c05621", label=f"chance ({guess:.0f}%)")
    ax.set_xticks(x, [f"{k} step{'s' if k != '1' else ''}" for k in STEP_BUCKETS])
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(0, 105)
    ax.set_title("Multiple-choice accuracy by reasoning steps")
    ax.legend(fontsize=8, loc="upper right")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_losses(history: list[dict], path: Path) -> bool:
    """Loss curves (total, answer, rationale) over optimizer steps; False when there is no history."""
    if not history:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.5))
    steps = [h["step"] for h in history]
    for key, color in (("loss", "#1a202c"), ("loss_answer", "#2b6cb0"), ("loss_rationale", "#c05621")):
        if all(key in h and h[key] is not None for h in history):
            ax.plot(steps, [h[key] for h in history], label=key, color=color)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("cross-entropy")
    ax.set_title("Training loss")
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def write_report(run: Path, summary: dict) -> Path:
    base, trained, seen = summary["eval_base"], summary["eval_trained"], summary.get("eval_trained_seen")
    stsg, qra, train = summary["stsg"], summary["qra"], summary["train"]
    plot_accuracy(base, trained, run / "plots" / "accuracy_by_steps.png")
    has_loss = plot_losses(train.get("history", []), run / "plots" / "loss.png")
    lines = [
        "# step-ray self-training report",
        "",
        f"Run directory: `{run}`",
        "",
        "## Accuracy by number of reasoning steps (held-out videos)",
        "",
        *accuracy_table(base, trained, seen),
        "",
        f"Chance is {_pct(chance(base))}. "
        "The last column scores the trained model on questions from the training split (as many as are held "
        "out): high there but not on held-out videos means the model learned its data without generalising "
        "yet (more steps, videos or a larger model).",
        "",
        "![accuracy by steps](plots/accuracy_by_steps.png)",
        "",
        "## Accuracy by question family",
        "",
        *family_table(base, trained),
        "",
        "## Training",
        "",
        f"- optimizer steps: {train.get('steps')}; final loss: {_fmt(train.get('final_loss'))} "
        f"(answer {_fmt(train.get('final_loss_answer'))}, rationale {_fmt(train.get('final_loss_rationale'))})",
        f"- checkpoint: `{train.get('checkpoint')}`; adapter: `{train.get('adapter_dir')}`",
    ]
    if has_loss:
        lines += ["", "![loss](plots/loss.png)"]
    lines += [
        "",
        "## Data",
        "",
        f"- videos: {stsg['videos']} ({stsg['ok']} graphs, {stsg['failed']} failed"
        + (f": {', '.join(stsg['errors'])}" if stsg["errors"] else "") + ")",
        f"- scene graphs: {stsg['objects']} objects, {stsg['relations']} relation edges, {stsg['events']} events",
        f"- QRA samples: {qra['samples']} (by split {qra['by_split']}); by steps {qra['by_steps']}",
        f"- by family: {qra['by_family']}",
        "",
        "## Time per step (seconds)",
        "",
        "| step | seconds |",
        "|---|---|",
        *[f"| {k} | {v} |" for k, v in summary.get("seconds", {}).items()],
        "",
    ]
    path = run / "report.md"
    path.write_text("\n".join(lines))
    return path


def _fmt(x) -> str:
    return "–" if x is None else f"{x:.3f}"


def print_console_summary(summary: dict) -> None:
    base, trained = summary["eval_base"], summary["eval_trained"]
    stsg, qra = summary["stsg"], summary["qra"]
    print("\n" + "=" * 72)
    print("step-ray self-train: summary")
    print("=" * 72)
    if "synth" in summary:
        print(f"corpus     {summary['synth']['videos']} synthetic videos")
    print(f"stsg       {stsg['ok']}/{stsg['videos']} videos ok, {stsg['failed']} failed; {stsg['objects']} objects, "
          f"{stsg['relations']} relations, {stsg['events']} events")
    print(f"qra        {qra['samples']} samples; by steps {qra['by_steps']}; by split {qra['by_split']}")
    train = summary["train"]
    print(f"train      {train.get('steps')} steps; final loss {_fmt(train.get('final_loss'))} "
          f"(answer {_fmt(train.get('final_loss_answer'))}, rationale {_fmt(train.get('final_loss_rationale'))})")
    seen = summary.get("eval_trained_seen") or {}
    print("accuracy   " + "  ".join(
        f"{k}: {_pct(_acc(base, 'by_steps', k)[0])} -> {_pct(_acc(trained, 'by_steps', k)[0])}" for k in STEP_BUCKETS)
        + f"  | all: {_pct(base.get('accuracy'))} -> {_pct(trained.get('accuracy'))}"
        + f"  (held-out; on training questions: {_pct(seen.get('accuracy'))})")
    print("seconds    " + ", ".join(f"{k} {v}" for k, v in summary.get("seconds", {}).items()))
    print(f"report     {Path(summary['run_dir']) / 'report.md'}")
