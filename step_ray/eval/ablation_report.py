"""The ablation's report: ``ablation.md``, ``ablation.html`` and ``plots/ablation.png`` (see
:mod:`step_ray.pipeline.ablate` for what is measured and how the intervals are drawn)."""

from __future__ import annotations

import html
from pathlib import Path
from typing import Optional

from step_ray.eval.report import _png_data, html_table, markdown_table, pct, write_html

BUCKETS = ("1", "2", "3+", "all")


def label(row: dict) -> str:
    if row["loss_format"] == "base":
        return "base"
    lam = row["rationale_weight"]
    return "λ = 0 (answers only)" if lam == 0 else f"λ = {lam:g}, {row['loss_format']}"


def mean_text(c: Optional[dict]) -> str:
    if not c:
        return "–"
    seeds = ""
    if c.get("runs", 1) > 1:
        seeds = " seeds " + "/".join(f"{100 * x:.0f}" for x in c["per_run"])
    return f"{pct(c['accuracy'])} [{100 * c['low']:.1f}, {100 * c['high']:.1f}]{seeds}"


def diff_text(d: Optional[dict]) -> str:
    if not d:
        return "–"
    verdict = "within noise" if d["verdict"] == "within noise" else ("better" if d["difference"] > 0 else "worse")
    return f"{100 * d['difference']:+.1f} pts [{100 * d['low']:+.1f}, {100 * d['high']:+.1f}] {verdict}"


def tables(result: dict) -> dict[str, tuple[list[str], list[list[str]]]]:
    agg = result["aggregate"]
    controls = [k[len("accuracy_"):] for k in agg[0] if k.startswith("accuracy_")]
    header = ["model", *[f"{b} step{'s' if b not in ('1', 'all') else ''}" if b != "all" else "all" for b in BUCKETS]]
    out = {"Accuracy (held-out, mean over seeds, 95% question-bootstrap interval)":
           (header, [[label(r), *[mean_text(r["accuracy"][b]) for b in BUCKETS]] for r in agg])}
    for c in controls:
        out[f"Vision control: {c} frames (same questions)"] = (
            header, [[label(r), *[mean_text(r[f"accuracy_{c}"][b]) for b in BUCKETS]] for r in agg])
        out[f"Real minus {c} frames (does the model use its video?)"] = (
            header, [[label(r), *[diff_text(r[f"vs_{c}"][b]) for b in BUCKETS]] for r in agg])
    out["Against the base (paired, same questions)"] = (
        header, [[label(r), *[diff_text(r["vs_base"][b]) for b in BUCKETS]] for r in agg if "vs_base" in r])
    rows = [[label(r), *[diff_text(r["vs_lambda0"][b]) for b in BUCKETS]] for r in agg if "vs_lambda0" in r]
    if rows:
        out["Against λ = 0 (the answer-only baseline; paired, same questions, mean over seeds)"] = (header, rows)
    return out


def plot(result: dict, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    agg = result["aggregate"]
    controls = [k[len("accuracy_"):] for k in agg[0] if k.startswith("accuracy_")]
    series = [(label(r), r["accuracy"], None) for r in agg]
    for c in controls[:1]:
        series += [(f"{label(r)}, {c}", r[f"accuracy_{c}"], "//") for r in agg if r["loss_format"] != "base"]
    x = np.arange(len(BUCKETS))
    width = 0.8 / len(series)
    fig, ax = plt.subplots(figsize=(7.5, 4))
    for i, (name, acc, hatch) in enumerate(series):
        vals = [100 * (acc[b] or {}).get("accuracy", 0.0) for b in BUCKETS]
        lo = [v - 100 * (acc[b] or {}).get("low", v / 100) for v, b in zip(vals, BUCKETS)]
        hi = [100 * (acc[b] or {}).get("high", v / 100) - v for v, b in zip(vals, BUCKETS)]
        bars = ax.bar(x + (i - (len(series) - 1) / 2) * width, vals, width, yerr=[lo, hi], capsize=2, label=name,
                      hatch=hatch, color=f"C{i % 10}", alpha=0.55 if hatch else 0.95, error_kw={"elinewidth": 1})
        ax.bar_label(bars, fmt="%.0f", fontsize=6, padding=1)
    ax.set_xticks(x, ["1 step", "2 steps", "3+ steps", "all"])
    ax.set_ylabel("held-out accuracy (%), 95% CI")
    ax.set_ylim(0, 110)
    ax.set_title("STEP ablation: rationale weight λ (mean over seeds)", fontsize=10)
    ax.legend(fontsize=6, ncol=2, loc="upper right")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def write_ablation_report(out: Path, result: dict) -> Path:
    png = plot(result, out / "plots" / "ablation.png")
    tabs = tables(result)
    qra = result.get("qra") or {}
    facts = [f"QRA: {qra.get('samples')} questions, by split {qra.get('by_split')}, by steps {qra.get('by_steps')}",
             f"runs: {len(result['entries'])} ({', '.join(e['name'] for e in result['entries'])})",
             f"wall time: {result['seconds'].get('total')} s"]
    md = ["# step-ray ablation", "", *[f"- {f}" for f in facts], ""]
    parts = ["<h1>step-ray ablation</h1><ul>" + "".join(f"<li>{html.escape(f)}</li>" for f in facts) + "</ul>"]
    for title, (header, rows) in tabs.items():
        md += [f"## {title}", "", *markdown_table(header, rows), ""]
        parts += [f"<h2>{html.escape(title)}</h2>", html_table(header, rows)]
    md += ["![ablation](plots/ablation.png)", ""]
    parts.append(f"<img alt='ablation' src='{_png_data(png)}'>")
    (out / "ablation.md").write_text("\n".join(md))
    write_html(out / "ablation.html", "step-ray ablation", parts)
    return out / "ablation.md"


def print_ablation(result: dict) -> None:
    print("\n" + "=" * 78)
    print("step-ray ablate: held-out accuracy by steps (mean over seeds, 95% interval)")
    print("=" * 78)
    for title, (header, rows) in tables(result).items():
        print(f"\n{title}")
        for r in rows:
            print("  " + " | ".join(f"{c}" for c in r))
    print(f"\nseconds: {result['seconds']}")


__all__ = ["write_ablation_report", "print_ablation", "tables"]
