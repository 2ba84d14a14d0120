"""The run report: ``report.md`` and ``report.html`` with tables, plots and examples, and the console summary.

Every accuracy comes with its 95% Wilson interval, drawn as error bars; a change between two models asked the
same questions is a *paired* difference with its own interval (:func:`step_ray.eval.stats.paired_difference`),
and the report says "within noise" when that interval holds zero. The vision controls (black frames, another
video's frames) sit beside each evaluation: a model that keeps its accuracy without its video answers from
text priors, and the report says so.
"""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path
from typing import Any, Optional, Sequence

STEP_BUCKETS = ("1", "2", "3+")
CONTROL_NAMES = {"blank": "black frames", "shuffled": "another video's frames"}


# --------------------------------------------------------------------------------------------- numbers


def cell(result: Optional[dict], bucket: Optional[str] = None) -> Optional[dict]:
    """``{accuracy, low, high, n, correct}`` of a result overall (``bucket`` None) or of a steps bucket."""
    if not result:
        return None
    c = result if bucket is None else (result.get("by_steps") or {}).get(bucket)
    if not c or not c.get("n"):
        return None
    return c


def pct(x: Optional[float]) -> str:
    return "–" if x is None else f"{100 * x:.1f}%"


def with_interval(c: Optional[dict]) -> str:
    """'61.2% [55.0, 67.1] (n=213)'."""
    if c is None:
        return "–"
    lo, hi = c.get("low"), c.get("high")
    ci = f" [{100 * lo:.1f}, {100 * hi:.1f}]" if lo is not None and hi is not None else ""
    return f"{pct(c['accuracy'])}{ci} (n={c['n']})"


def _flags(result: dict, bucket: Optional[str]) -> dict[str, bool]:
    from step_ray.eval.evaluate import steps_bucket

    return {p["id"]: bool(p["correct"]) for p in result.get("predictions") or []
            if bucket is None or steps_bucket(p.get("steps")) == bucket}


def paired(a: Optional[dict], b: Optional[dict], bucket: Optional[str] = None) -> Optional[dict]:
    """Accuracy of ``b`` minus ``a`` on the questions both answered (None without per-question results)."""
    from step_ray.eval.stats import pair_outcomes, paired_difference

    if not a or not b or not a.get("predictions") or not b.get("predictions"):
        return None
    _, fa, fb, _ = pair_outcomes(_flags(a, bucket), _flags(b, bucket))
    return paired_difference(fa, fb) if fa else None


def change_text(d: Optional[dict]) -> str:
    """'+12.3 pts [4.1, 20.5], B better' / '... within noise'."""
    if d is None:
        return "–"
    verdict = "within noise" if d["verdict"] == "within noise" else ("better" if d["difference"] > 0 else "worse")
    return f"{100 * d['difference']:+.1f} pts [{100 * d['low']:+.1f}, {100 * d['high']:+.1f}], {verdict}"


def chance(result: dict) -> float:
    """Accuracy of guessing: the mean over questions of one over their number of options."""
    if result.get("chance") is not None:
        return float(result["chance"])
    preds = [p for p in result.get("predictions") or [] if p.get("scores")]
    return sum(1.0 / len(p["scores"]) for p in preds) / len(preds) if preds else 0.25


def vision_verdict(real: Optional[dict], control: Optional[dict], bucket: Optional[str] = None) -> str:
    """Does the model use its frames? From the paired drop under a control."""
    d = paired(control, real, bucket)
    if d is None:
        return "–"
    if d["verdict"] == "within noise":
        return (f"no measurable drop without the video ({change_text(d)}): these answers come from text priors, "
                "not from the frames")
    if d["difference"] > 0:
        return f"uses its frames: {change_text(d)} with the real video"
    return f"does better without the video ({change_text(d)})"


# --------------------------------------------------------------------------------------------- plots


def plot_by_steps(series: Sequence[tuple[str, Optional[dict], str]], path: Path, title: str,
                  chance_level: Optional[float] = None) -> Path:
    """Grouped bars of accuracy by steps bucket (and overall) with 95% interval error bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    groups = [*STEP_BUCKETS, "all"]
    x = np.arange(len(groups))
    width = 0.8 / max(1, len(series))
    fig, ax = plt.subplots(figsize=(max(5.5, 1.2 * len(groups) + 0.6 * len(series)), 3.8))
    for i, (label, result, color) in enumerate(series):
        vals, err_lo, err_hi = [], [], []
        for g in groups:
            c = cell(result, None if g == "all" else g)
            a = 100 * c["accuracy"] if c else 0.0
            vals.append(a)
            err_lo.append(a - 100 * c["low"] if c and c.get("low") is not None else 0.0)
            err_hi.append(100 * c["high"] - a if c and c.get("high") is not None else 0.0)
        pos = x + (i - (len(series) - 1) / 2) * width
        bars = ax.bar(pos, vals, width, label=label, color=color, yerr=[err_lo, err_hi], capsize=3,
                      error_kw={"elinewidth": 1, "ecolor": "#333"})
        ax.bar_label(bars, fmt="%.0f", fontsize=7, padding=2)
    if chance_level is not None:
        ax.axhline(100 * chance_level, ls="--", lw=1, color="#c05621", label=f"chance ({100 * chance_level:.0f}%)")
    ax.set_xticks(x, [f"{g} step{'s' if g not in ('1', 'all') else ''}" if g != "all" else "all" for g in groups])
    ax.set_ylabel("accuracy (%), 95% CI")
    ax.set_ylim(0, 110)
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7, loc="upper right", ncol=2)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_losses(histories: Sequence[tuple[str, list[dict]]], path: Path) -> bool:
    """Loss curves (total, answer, rationale) over optimizer steps per run; False when there is no history."""
    histories = [(label, h) for label, h in histories if h]
    if not histories:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.5))
    styles = {"loss": "-", "loss_answer": "--", "loss_rationale": ":"}
    for i, (label, history) in enumerate(histories):
        steps = [h["step"] for h in history]
        for key, ls in styles.items():
            if all(h.get(key) is not None for h in history):
                ax.plot(steps, [h[key] for h in history], ls=ls, color=f"C{i}", label=f"{label} {key}")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("cross-entropy")
    ax.set_title("Training loss")
    ax.legend(fontsize=6)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


# --------------------------------------------------------------------------------------------- tables


def accuracy_rows(entries: Sequence[tuple[str, Optional[dict]]], reference: Optional[dict] = None
                  ) -> list[list[str]]:
    """Rows: one per model, a column per steps bucket and overall; with ``reference`` a paired change row."""
    rows = []
    for label, result in entries:
        rows.append([label] + [with_interval(cell(result, b)) for b in (*STEP_BUCKETS, None)])
        if reference is not None and result is not reference:
            rows.append([f"{label} − base"] + [change_text(paired(reference, result, b)) for b in (*STEP_BUCKETS, None)])
    return rows


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header),
            *["| " + " | ".join(r) + " |" for r in rows]]


def html_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


ACC_HEADER = ["model", "1 step", "2 steps", "3+ steps", "all"]


# --------------------------------------------------------------------------------------------- examples


def _png_data(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode()


def keyframe_strip(row: dict, model_cfg: Any) -> Optional[str]:
    """The frames the model saw for a question, side by side, as a PNG data URI (None if unreadable)."""
    import numpy as np
    from PIL import Image

    from step_ray.models.inputs import FrameDecodeError, frames_for_row

    try:
        frames = frames_for_row(row, model_cfg)
    except (FrameDecodeError, KeyError, ValueError):
        return None
    strip = np.concatenate(list(frames), axis=1)
    image = Image.fromarray(strip).resize((strip.shape[1] * 2, strip.shape[0] * 2), Image.NEAREST)
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def examples(qra_dir: Optional[str | Path], result: Optional[dict], model_cfg: Any, per_bucket: int = 2) -> list[dict]:
    """A few held-out questions per steps bucket, right and wrong, with rationale, answer and prediction."""
    if qra_dir is None or not result or not result.get("predictions"):
        return []
    from step_ray.eval.evaluate import load_rows, steps_bucket

    rows = {r["id"]: r for r in load_rows(qra_dir, result.get("split", "test"))}
    out = []
    for bucket in STEP_BUCKETS:
        preds = [p for p in result["predictions"] if steps_bucket(p.get("steps")) == bucket and p["id"] in rows]
        right = [p for p in preds if p["correct"]][: (per_bucket + 1) // 2]
        wrong = [p for p in preds if not p["correct"]][: per_bucket // 2]
        for p in right + wrong:
            row = rows[p["id"]]
            out.append({"bucket": bucket, "family": row.get("family"), "question": row["question"],
                        "rationale": " ".join(row.get("rationale") or []), "answer": row["answer"],
                        "prediction": p["prediction"], "correct": p["correct"], "options": list(row["options"]),
                        "generated_rationale": p.get("rationale"), "frames": keyframe_strip(row, model_cfg)})
    return out


# --------------------------------------------------------------------------------------------- the run report


def _rounds(summary: dict) -> list[dict]:
    return summary.get("rounds") or []


def _controls(evals: Optional[dict], name: str) -> list[tuple[str, dict]]:
    """(control, result) pairs of ``name_<control>`` in an evaluation dict."""
    return [(k[len(name) + 1:], v) for k, v in (evals or {}).items() if k.startswith(name + "_")
            and k[len(name) + 1:] in CONTROL_NAMES]


def write_report(run: Path, summary: dict, model_cfg: Any = None, name: Optional[str] = None) -> Path:
    """``report.md``, ``report.html`` and ``plots/`` of a self-train run (see the module docstring) in the local
    folder ``run``; ``name``: the run directory the report names (default ``run``; e.g. the object-store
    prefix ``run`` is staged for)."""
    run = Path(run)
    name = name or str(run)
    rounds = _rounds(summary)
    first = rounds[0]
    base_evals = first.get("eval_base") or {}
    base = base_evals.get("base")
    entries: list[tuple[str, Optional[dict]]] = [("base (model 0)", base)]
    series = [("base", base, "#9aa5b1")]
    for label, res in _controls(base_evals, "base"):
        entries.append((f"base, {CONTROL_NAMES[label]}", res))
        series.append((f"base, {label}", res, "#cbd2d9"))
    palette = ["#2b6cb0", "#2f855a", "#6b46c1", "#c05621", "#b83280"]
    for i, rs in enumerate(rounds):
        ev = rs.get("eval_trained") or {}
        trained = ev.get("trained")
        entries.append((f"model {rs['round']}", trained))
        series.append((f"model {rs['round']}", trained, palette[i % len(palette)]))
        for label, res in _controls(ev, "trained"):
            entries.append((f"model {rs['round']}, {CONTROL_NAMES[label]}", res))
            series.append((f"model {rs['round']}, {label}", res, "#a3bffa"))
    plots = run / "plots"
    plot_by_steps(series, plots / "accuracy_by_steps.png", "Held-out accuracy by reasoning steps (95% CI)",
                  chance(base) if base else None)
    has_loss = plot_losses([(f"round {rs['round']}", (rs.get("train") or {}).get("history") or []) for rs in rounds],
                           plots / "loss.png")
    last = rounds[-1]
    trained = (last.get("eval_trained") or {}).get("trained")
    seen = last.get("eval_trained_seen")
    verdicts = [(f"base, {CONTROL_NAMES[c]}", vision_verdict(base, r, "3+"), vision_verdict(base, r))
                for c, r in _controls(base_evals, "base")]
    verdicts += [(f"model {last['round']}, {CONTROL_NAMES[c]}", vision_verdict(trained, r, "3+"), vision_verdict(trained, r))
                 for c, r in _controls(last.get("eval_trained") or {}, "trained")]
    gain = paired(base, trained, "3+")
    headline = (f"On held-out questions of 3 or more steps, model {last['round']} vs the base: {change_text(gain)}."
                if gain else "No paired 3+ step comparison (no such held-out questions).")
    stsg = first.get("stsg") or {}
    qra = first.get("qra") or {}
    data_lines = [
        f"videos: {stsg.get('videos')} ({stsg.get('ok')} graphs, {stsg.get('failed')} failed)",
        f"scene graphs: {stsg.get('objects')} objects, {stsg.get('relations')} relation edges, "
        f"{stsg.get('events')} events, {stsg.get('keyframes')} keyframes",
        f"QRA samples: {qra.get('samples')} (by split {qra.get('by_split')})",
        f"by steps: {qra.get('by_steps')}",
        f"by family: {qra.get('by_family')}",
    ]
    pre = summary.get("pretrain")
    if pre:
        acc = pre.get("accuracy", {})
        data_lines.insert(0, f"base model: pretrained on {pre.get('questions')} perception questions of "
                             f"{pre.get('videos')} videos ({'reused' if pre.get('reused') else 'built in this run'}); "
                             f"held-out {with_interval(acc.get('held_out'))}, black frames "
                             f"{with_interval(acc.get('held_out_blank'))}")
    train_lines = []
    for rs in rounds:
        t = rs.get("train") or {}
        train_lines.append(f"round {rs['round']}: from {rs.get('init')}; {t.get('steps')} steps, final loss "
                           f"{_fmt(t.get('final_loss'))} (answer {_fmt(t.get('final_loss_answer'))}, rationale "
                           f"{_fmt(t.get('final_loss_rationale'))}); λ = {t.get('rationale_weight')}, "
                           f"{t.get('loss_format')}")
    seen_line = (f"On questions from its own training split (as many as are held out), model {last['round']} scores "
                 f"{with_interval(cell(seen))}: high there but not on held-out videos means memorising.")
    times = summary.get("seconds", {})
    acc_rows = accuracy_rows(entries, reference=base)

    md = ["# step-ray self-training report", "", f"Run directory: `{name}`", "", f"**{headline}**", "",
          "## Accuracy by number of reasoning steps (held-out videos, 95% intervals)", "",
          *markdown_table(ACC_HEADER, acc_rows), "",
          f"Chance is {pct(chance(base) if base else None)}. Changes are paired differences on the same questions; "
          "'within noise' means the interval holds zero.", "", seen_line, "",
          "![accuracy by steps](plots/accuracy_by_steps.png)", "", "## Vision control", "",
          *markdown_table(["control", "3+ steps", "all"], [list(v) for v in verdicts]), "",
          "## Data", "", *[f"- {line}" for line in data_lines], "", "## Training", "",
          *[f"- {line}" for line in train_lines]]
    if has_loss:
        md += ["", "![loss](plots/loss.png)"]
    md += ["", "## Time per stage (seconds)", "", *markdown_table(["stage", "seconds"], [[k, str(v)] for k, v in times.items()]),
           ""]
    (run / "report.md").write_text("\n".join(md))

    qra_file = (first.get("qra") or {}).get("output")
    ex = examples(str(qra_file) if qra_file else None, trained, model_cfg) if model_cfg is not None else []
    parts = [f"<h1>step-ray self-training report</h1><p class='run'>{html.escape(name)}</p>",
             f"<p class='headline'>{html.escape(headline)}</p>",
             "<h2>Accuracy by number of reasoning steps</h2><p>Held-out videos; 95% Wilson intervals; changes are "
             "paired differences on the same questions ('within noise': the interval holds zero).</p>",
             html_table(ACC_HEADER, acc_rows), f"<p>{html.escape(seen_line)}</p>",
             f"<img alt='accuracy by steps' src='{_png_data(plots / 'accuracy_by_steps.png')}'>",
             "<h2>Vision control</h2>", html_table(["control", "3+ steps", "all"], [list(v) for v in verdicts]),
             "<h2>Data and scene graphs</h2><ul>" + "".join(f"<li>{html.escape(x)}</li>" for x in data_lines) + "</ul>",
             "<h2>Training</h2><ul>" + "".join(f"<li>{html.escape(x)}</li>" for x in train_lines) + "</ul>"]
    if has_loss:
        parts.append(f"<img alt='loss' src='{_png_data(plots / 'loss.png')}'>")
    parts.append(examples_html(ex))
    parts.append("<h2>Time per stage (seconds)</h2>" + html_table(["stage", "seconds"], [[k, str(v)] for k, v in times.items()]))
    write_html(run / "report.html", "step-ray self-training report", parts)
    return run / "report.md"


def examples_html(ex: list[dict]) -> str:
    if not ex:
        return ""
    cards = []
    for e in ex:
        img = f"<img class='frames' alt='frames' src='{e['frames']}'>" if e.get("frames") else \
            "<p class='note'>(video unreadable)</p>"
        mark = "right" if e["correct"] else "wrong"
        gen = (f"<p><b>Model's rationale:</b> {html.escape(e['generated_rationale'])}</p>"
               if e.get("generated_rationale") else "")
        cards.append(
            f"<div class='example {mark}'>{img}<p class='q'><b>{html.escape(e['bucket'])} step(s), "
            f"{html.escape(str(e['family']))}:</b> {html.escape(e['question'])}</p>"
            f"<p><b>Options:</b> {html.escape(' / '.join(e['options']))}</p>"
            f"<p><b>Rationale (graph):</b> {html.escape(e['rationale'])}</p>{gen}"
            f"<p><b>Answer:</b> {html.escape(e['answer'])} · <b>model:</b> {html.escape(e['prediction'])} "
            f"({mark})</p></div>")
    return "<h2>Examples (held-out)</h2><p>The frames are the ones the model saw, at the moments the question " \
           "names.</p>" + "".join(cards)


CSS = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#1a202c}
table{border-collapse:collapse;margin:.5em 0 1em}td,th{border:1px solid #cbd5e0;padding:4px 8px;font-size:13px}
th{background:#edf2f7}img{max-width:100%}.headline{font-size:1.1em;font-weight:600;background:#ebf8ff;
padding:.6em;border-left:4px solid #2b6cb0}.example{border:1px solid #e2e8f0;border-radius:6px;padding:.6em;
margin:.6em 0}.example.right{border-left:4px solid #2f855a}.example.wrong{border-left:4px solid #c53030}
.frames{image-rendering:pixelated;height:112px}.run{color:#718096;font-size:12px}.note{color:#a0aec0}"""


def write_html(path: Path, title: str, parts: Sequence[str]) -> Path:
    """A self-contained HTML page (inline CSS and images)."""
    page = (f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{CSS}</style></head><body>{''.join(parts)}</body></html>")
    path.write_text(page, encoding="utf-8")
    return path


def _fmt(x) -> str:
    return "–" if x is None else f"{x:.3f}"


def print_console_summary(summary: dict) -> None:
    rounds = _rounds(summary)
    base = (rounds[0].get("eval_base") or {}).get("base") or {}
    print("\n" + "=" * 78)
    print("step-ray self-train: summary")
    print("=" * 78)
    if summary.get("pretrain"):
        p = summary["pretrain"]
        print(f"base       pretrained ({'reused' if p.get('reused') else 'new'}): held-out "
              f"{with_interval((p.get('accuracy') or {}).get('held_out'))}")
    if "synth" in summary:
        print(f"corpus     {summary['synth']['videos']} synthetic videos")
    stsg, qra = rounds[0].get("stsg") or {}, rounds[0].get("qra") or {}
    print(f"stsg       {stsg.get('ok')}/{stsg.get('videos')} videos ok, {stsg.get('failed')} failed; "
          f"{stsg.get('objects')} objects, {stsg.get('relations')} relations, {stsg.get('events')} events")
    print(f"qra        {qra.get('samples')} samples; by steps {qra.get('by_steps')}; by split {qra.get('by_split')}")
    for rs in rounds:
        t = rs.get("train") or {}
        trained = (rs.get("eval_trained") or {}).get("trained") or {}
        print(f"round {rs['round']}    {t.get('steps')} steps, final loss {_fmt(t.get('final_loss'))}; held-out "
              + "  ".join(f"{b}: {pct((cell(trained, b) or {}).get('accuracy'))}" for b in STEP_BUCKETS)
              + f"  all: {with_interval(cell(trained))}")
    print("base       " + "  ".join(f"{b}: {pct((cell(base, b) or {}).get('accuracy'))}" for b in STEP_BUCKETS)
          + f"  all: {with_interval(cell(base))}")
    last = (rounds[-1].get("eval_trained") or {})
    gain = paired(base, last.get("trained"), "3+")
    print(f"3+ steps   model {rounds[-1]['round']} - base: {change_text(gain)}")
    for c, r in _controls(last, "trained"):
        print(f"control    {CONTROL_NAMES[c]}: {vision_verdict(last.get('trained'), r)}")
    print("seconds    " + ", ".join(f"{k} {v}" for k, v in summary.get("seconds", {}).items()))
    from step_ray.utils import storage

    print(f"report     {storage.join(str(summary['run_dir']), 'report.md')} and report.html")
