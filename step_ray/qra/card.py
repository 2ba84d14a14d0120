"""The dataset card of a QRA run: counts by steps and family, the split, the answer distribution, plots.

Written next to the QRA parts as ``card.md`` with ``plots/steps_by_family.png`` and ``plots/answers.png``;
the numbers come from tallies of the records themselves (:func:`step_ray.qra.corpus.tally_records`, summed
over the parts), so the card always describes the files beside it, at any corpus size.
"""

from __future__ import annotations

import io
from collections import Counter, defaultdict
from typing import Any

from step_ray.qra.families import FAMILIES
from step_ray.qra.records import QRA_SCHEMA_VERSION
from step_ray.utils import storage
from step_ray.utils.tally import Tally, tally_dict

#: Answers listed per family in the card.
TOP_ANSWERS = 5


def card_stats(records: list[dict[str, Any]]) -> dict[str, Any]:
    """:func:`card_stats_from_tallies` of records in memory."""
    from step_ray.qra.corpus import tally_records

    t = Tally()
    tally_records(records, t)
    return card_stats_from_tallies(tally_dict(t.table().to_pylist()))


def card_stats_from_tallies(t: dict[str, Counter]) -> dict[str, Any]:
    """Everything the card shows, as data: counts by steps x family, by split, answers per family, position
    of the answer among the options."""
    grid: Counter = Counter()
    for (steps, fam, _), n in t.get("steps_family", {}).items():
        grid[(fam, int(steps))] += n
    steps = sorted({s for _, s in grid})
    answers: dict[str, Counter] = defaultdict(Counter)
    for (fam, ans, _), n in t.get("answer", {}).items():
        answers[fam][ans] += n
    fams = [f for f in FAMILIES if answers.get(f)]

    def positions(kind: str) -> dict[int, int]:
        return dict(sorted((int(i), n) for (k, i, _), n in t.get("answer_index", {}).items() if k == kind))

    def top(c: Counter) -> list[tuple[str, int]]:
        return sorted(c.items(), key=lambda kv: (-kv[1], kv[0]))[:TOP_ANSWERS]

    videos_by_split = dict(sorted((sp, n) for (sp, _, _), n in t.get("video_split", {}).items()))
    return {
        "samples": sum(grid.values()),
        "videos": sum(videos_by_split.values()),
        "steps": steps,
        "families": fams,
        "by_steps_family": {f: {str(s): grid[(f, s)] for s in steps} for f in fams},
        "by_steps": {str(s): sum(grid[(f, s)] for f in fams) for s in steps},
        "by_family": {f: sum(answers[f].values()) for f in fams},
        "by_split": dict(sorted((sp, n) for (sp, _, _), n in t.get("split", {}).items())),
        "videos_by_split": videos_by_split,
        "answers": {f: {"distinct": len(answers[f]), "top": top(answers[f])} for f in fams},
        # Where the answer sits among the options (a model must not win by position): multiple-choice
        # questions and yes / no questions apart, since the latter have two options.
        "answer_index": positions("choice"),
        "answer_index_yesno": positions("yesno"),
        "flagged": sum(t.get("flagged", {}).values()),
    }


def _plot_steps(st: dict[str, Any], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, ax = plt.subplots(figsize=(7, 3.8))
    x = np.arange(len(st["steps"]))
    bottom = np.zeros(len(x))
    cmap = plt.get_cmap("tab20")
    for i, f in enumerate(st["families"]):
        vals = np.array([st["by_steps_family"][f][str(s)] for s in st["steps"]], dtype=float)
        ax.bar(x, vals, 0.7, bottom=bottom, label=f, color=cmap(i % 20))
        bottom += vals
    ax.set_xticks(x, [str(s) for s in st["steps"]])
    ax.set_xlabel("reasoning steps")
    ax.set_ylabel("samples")
    ax.set_title("QRA samples by steps and family")
    ax.legend(fontsize=7, bbox_to_anchor=(1.01, 1), loc="upper left")
    fig.tight_layout()
    _save(fig, path)


def _plot_answers(st: dict[str, Any], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fams = st["families"]
    cols = 4
    rows = max(1, (len(fams) + cols - 1) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(12, 2.6 * rows), squeeze=False)
    for ax, f in zip(axes.flat, fams):
        top = st["answers"][f]["top"]
        n = st["by_family"][f]
        ax.barh([a[:22] for a, _ in top][::-1], [100.0 * c / n for _, c in top][::-1], color="#2b6cb0")
        ax.set_title(f"{f} (n={n}, {st['answers'][f]['distinct']} answers)", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.set_xlim(0, 100)
        ax.set_xlabel("% of the family", fontsize=7)
    for ax in list(axes.flat)[len(fams):]:
        ax.axis("off")
    fig.suptitle("Answer distribution per family (top answers)")
    fig.tight_layout()
    _save(fig, path)


def _save(fig: Any, path: str) -> None:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, dpi=110, format="png")
    plt.close(fig)
    with storage.open_write(path) as f:
        f.write(buf.getvalue())


def write_card(stats: dict[str, Any] | list[dict[str, Any]], summary: dict[str, Any], out_dir: str) -> str:
    """Write ``card.md`` and its plots under ``out_dir`` (a folder or an object-store prefix); the card's
    path. ``stats``: :func:`card_stats_from_tallies` (or records in memory, counted here)."""
    out = str(out_dir)
    st = card_stats(stats) if isinstance(stats, list) else stats
    lines = ["# QRA dataset card", "",
             f"{st['samples']} samples from {st['videos']} videos (schema `{QRA_SCHEMA_VERSION}`, `docs/qra_schema.md`); "
             f"graphs: {summary.get('graphs', '?')}, failed: {summary.get('graphs_failed', 0)}, "
             f"without samples: {len(summary.get('graphs_without_samples', {}))}.", ""]
    if st["samples"]:
        _plot_steps(st, storage.join(out, "plots/steps_by_family.png"))
        _plot_answers(st, storage.join(out, "plots/answers.png"))
        lines += ["## Samples by family and reasoning steps", "",
                  "| family | " + " | ".join(f"{s} step{'s' if s != 1 else ''}" for s in st["steps"]) + " | all |",
                  "|---|" + "---|" * (len(st["steps"]) + 1)]
        for f in st["families"]:
            row = st["by_steps_family"][f]
            lines.append(f"| {f} | " + " | ".join(str(row[str(s)]) for s in st["steps"]) + f" | {st['by_family'][f]} |")
        lines.append("| **all** | " + " | ".join(str(st["by_steps"][str(s)]) for s in st["steps"])
                     + f" | {st['samples']} |")
        lines += ["", "![samples by steps and family](plots/steps_by_family.png)", "",
                  "## Splits (by video: no video in two splits)", "",
                  "| split | videos | samples |", "|---|---|---|"]
        for sp, n in st["by_split"].items():
            lines.append(f"| {sp} | {st['videos_by_split'].get(sp, 0)} | {n} |")
        lines += ["", "## Answer distribution", "",
                  f"Answer-prior balancing: no answer above `qra.max_answer_share` of its family (or 1/k for k "
                  f"distinct answers). Dropped by balancing: {summary.get('dropped_balance', {}) or 'none'}.", "",
                  "| family | distinct answers | top answers (share) |", "|---|---|---|"]
        for f in st["families"]:
            n = st["by_family"][f]
            top = ", ".join(f"{a} ({100.0 * c / n:.0f}%)" for a, c in st["answers"][f]["top"])
            lines.append(f"| {f} | {st['answers'][f]['distinct']} | {top} |")
        lines += ["", "![answers](plots/answers.png)", "",
                  "Position of the answer among the options: multiple choice "
                  + ", ".join(f"{k}: {v}" for k, v in st["answer_index"].items()) + "; yes / no "
                  + ", ".join(f"{k}: {v}" for k, v in st["answer_index_yesno"].items()) + ".", ""]
        if summary.get("filter"):
            lines += ["## Model-side filter", "", f"{summary['filter']}", ""]
    rejected = summary.get("rejected", {})
    if rejected:
        lines += ["## Rejected candidate paths (by reason)", "",
                  ", ".join(f"{k}: {v}" for k, v in sorted(rejected.items())), ""]
    bad = {**summary.get("errors", {}), **summary.get("graphs_without_samples", {})}
    more = summary.get("errors_total", 0) + summary.get("graphs_without_samples_total", 0) - len(bad)
    if bad:
        lines += ["## Graphs without samples", "", "| video | reason |", "|---|---|"]
        lines += [f"| {k} | {v} |" for k, v in sorted(bad.items())]
        if more > 0:
            lines.append(f"| ... | {more} more in the results table (`results/`) |")
        lines.append("")
    path = storage.join(out, "card.md")
    storage.write_text(path, "\n".join(lines))
    return path
