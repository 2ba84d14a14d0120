"""``step-ray eval --benchmark``: score a benchmark's questions on a Ray Data actor pool, write the outputs of
:mod:`step_ray.eval.results`, and compare two runs question by question.

The driver reads the questions (:func:`step_ray.eval.benchmarks.load_benchmark`: compact records, never frames)
and the outputs; it never loads the model. Each actor of the pool (``eval.pool``: actors, CPUs and GPUs per
actor, questions per batch) loads the model once in :meth:`BenchmarkScorer.setup`, on its GPU in bf16 when it
has one (``eval.device`` / ``eval.precision``, through the model layer), decodes the frames of its batch and
scores them in one forward pass:

* **likelihood**: :meth:`~step_ray.models.runtime.VideoLLM.score_options` under the prompt format the model was
  trained with (its card); a ``joint`` model writes its rationale first and the options are scored after it;
* **generation**: the model writes its answer (a joint model: after its rationale), mapped onto an option by
  :func:`step_ray.eval.answers.parse_answer`, else ``unparsed``.

With both modes a joint model's rationale is written once and serves both. Open-answer questions (AGQA) are
asked without an options line (their "options" are the answer vocabulary of the question's type: hundreds of
answers); likelihood ranks that vocabulary, ``eval.max_sequences`` option sequences per forward pass.

A question whose video cannot be decoded comes back with the reason ``unreadable_video``; one whose scoring
raises (out of GPU memory, say) is retried alone, then comes back as ``scoring_error``; one that keeps killing
its actor becomes ``actor_died`` after ``eval.pool.max_retries`` restarts (the pipeline's crash ledger). Each
is a row of the predictions, counted by kind in the summary.

Comparisons (:func:`compare_rows`, ``--compare``) pair two runs on the questions both scored and give the
paired difference with its 95% interval and McNemar's exact p (:func:`step_ray.eval.stats.paired_difference`),
"within noise" when the interval holds 0.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import replace
from typing import Any, Mapping, Optional, Sequence

from step_ray.config import PoolConfig, StepRayConfig
from step_ray.stage import ROW_INDEX, CrashLedger, ledger_key
from step_ray.eval.benchmarks import BenchmarkQuestion, load_benchmark
from step_ray.eval.results import (
    MODES,
    PREDICTIONS_FILE,
    Outcome,
    generation_outcome,
    likelihood_outcome,
    outcomes_by_id,
    prediction_rows,
    read_predictions,
    skipped,
    write_outputs,
)
from step_ray.eval.stats import pair_outcomes, paired_difference
from step_ray.utils import storage
from step_ray.utils.inputs import InputError

logger = logging.getLogger(__name__)

MODE_CHOICES = ("likelihood", "generation", "both")
COMPARISON_FILE = "comparison.json"


def modes_of(mode: str) -> tuple[str, ...]:
    """``both`` -> both modes, in :data:`~step_ray.eval.results.MODES` order."""
    if mode == "both":
        return MODES
    if mode not in MODES:
        raise InputError(f"--mode {mode}: not one of {', '.join(MODE_CHOICES)}")
    return (mode,)


def scoring_record(q: BenchmarkQuestion, frames_uri: Optional[str] = None) -> dict[str, Any]:
    """What an actor needs to ask one question (plain JSON: rows stay compact on their way through Ray)."""
    return {**q.as_row(), "open_answer": q.open_answer, "frames_uri": frames_uri}


def _result(qid: str) -> dict[str, Any]:
    return {"id": qid, "reason": None, "scores": None, "generated": None, "rationale": None, "letters": True}


class BenchmarkScorer:
    """The evaluation stage: model loaded once in :meth:`setup`, a batch of questions scored per :meth:`score`.
    Plain Python (the pool maps it over Ray Data; tests may call it directly)."""

    name = "eval"

    def __init__(self, cfg: StepRayConfig, model: Optional[str], modes: Sequence[str], vision: str = "real"):
        self.cfg = cfg
        self.source = model
        self.modes = tuple(modes)
        self.vision = vision
        self.llm: Any = None

    def pool(self) -> PoolConfig:
        return self.cfg.eval.pool

    def setup(self) -> None:
        import torch

        from step_ray.models.runtime import load_video_llm

        torch.manual_seed(self.cfg.run.seed)
        self.llm = load_video_llm(self.cfg, self.source, device=self.cfg.eval.device,
                                  precision=self.cfg.eval.precision, max_new_tokens=self.cfg.eval.max_new_tokens)

    @property
    def placement(self) -> str:
        """Where the model runs and in what dtype (``cuda:0/bfloat16``), for the summary."""
        return f"{self.llm.device}/{str(self.llm.dtype).removeprefix('torch.')}"

    def score(self, records: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
        """One result per record, in order: ``{id, reason, scores, generated, rationale, letters}``."""
        from step_ray.models.inputs import FrameDecodeError, frames_for_row

        results = {r["id"]: _result(r["id"]) for r in records}
        ready = []
        for r in records:
            try:
                frames = frames_for_row(r, self.llm.model_cfg, "blank" if self.vision == "blank" else "real")
                if r.get("frames_uri"):  # the shuffled control: the same moments of another video
                    frames = frames_for_row(r, self.llm.model_cfg, uri=r["frames_uri"])
            except (FrameDecodeError, OSError) as err:
                results[r["id"]]["reason"] = f"unreadable_video: {err}"
                continue
            ready.append((r, frames))
        for open_answer in (False, True):  # asked with and without an options line: one prompt format a batch
            group = [item for item in ready if bool(item[0].get("open_answer")) == open_answer]
            if group:
                self._score_isolating(group, results)
        return [results[r["id"]] for r in records]

    def _score_isolating(self, group: list, results: dict[str, dict[str, Any]]) -> None:
        """Score ``group`` together; if that raises, each question alone, so one bad question (or a batch too
        big for the GPU) costs only itself."""
        try:
            self._score_group(group, results)
        except Exception as err:  # noqa: BLE001 - the contract: every question ends as a row
            if len(group) > 1:
                logger.warning("eval: a batch of %d failed (%s: %s); scoring its questions one by one",
                               len(group), type(err).__name__, err)
                for item in group:
                    self._score_isolating([item], results)
                return
            logger.exception("eval: question %s failed", group[0][0]["id"])
            results[group[0][0]["id"]]["reason"] = f"scoring_error: {type(err).__name__}: {err}"

    def _score_group(self, group: list, results: dict[str, dict[str, Any]]) -> None:
        llm = self.llm
        rows = [r for r, _ in group]
        frames = [f for _, f in group]
        open_answer = bool(rows[0].get("open_answer"))
        # an open-answer vocabulary is not a list of options the question showed: ask without an options line
        fmt = replace(llm.fmt, options=False) if open_answer else llm.fmt
        rationales: Optional[list[Optional[str]]] = None
        out: dict[str, dict[str, Any]] = {r["id"]: {} for r in rows}
        if "generation" in self.modes:
            answers = llm.generate_answers(rows, frames, fmt=fmt)
            for r, (text, rationale) in zip(rows, answers):
                out[r["id"]].update(generated=text, rationale=rationale)
            if llm.answer_format == "joint":
                rationales = [rationale or "" for _, rationale in answers]
        if "likelihood" in self.modes:
            if llm.answer_format == "joint" and rationales is None:
                from step_ray.models.prompts import TASK_JOINT
                from step_ray.models.runtime import split_joint

                rationales = [split_joint(t)[0] for t in llm.generate(rows, frames, TASK_JOINT, fmt=fmt)]
                for r, rationale in zip(rows, rationales):
                    out[r["id"]]["rationale"] = rationale
            scores = llm.score_options(rows, frames, rationales, fmt=fmt, max_sequences=self.cfg.eval.max_sequences)
            for r, sc in zip(rows, scores):
                out[r["id"]]["scores"] = [float(s) for s in sc]
        for r in rows:  # only once the whole group succeeded: a retried group leaves nothing half-written
            results[r["id"]].update(out[r["id"]], letters=bool(fmt.options))


# --------------------------------------------------------------------------------------------- the pool

class _PoolActor:
    """What Ray Data runs in each actor of ``eval.pool``: the scorer, set up once, over batches of records."""

    def __init__(self, cfg_data: dict, model: Optional[str], modes: Sequence[str], vision: str, ledger: Any,
                 max_retries: int):
        from step_ray.config import from_dict

        self.scorer = BenchmarkScorer(from_dict(cfg_data), model, modes, vision)
        self.scorer.setup()
        self.ledger, self.max_retries = ledger, max_retries

    def __call__(self, batch):
        import pandas as pd
        import ray

        indices = [int(i) for i in batch[ROW_INDEX]]
        records = [json.loads(r) for r in batch["record"]]
        deaths = ray.get([self.ledger.begin.remote(ledger_key(BenchmarkScorer.name, i)) for i in indices])
        alive = [r for r, d in zip(records, deaths) if d <= self.max_retries]
        scored = iter(self.scorer.score(alive))
        out = []
        for r, d in zip(records, deaths):
            if d > self.max_retries:
                res = _result(r["id"])
                res["reason"] = (f"actor_died: the process scoring it died {d} times (a crash, or an out-of-memory "
                                 f"kill); eval.pool.max_retries is {self.max_retries}, the run went on without it")
            else:
                res = next(scored)
            res["placement"] = self.scorer.placement
            out.append(json.dumps(res))
        ray.get([self.ledger.end.remote(ledger_key(BenchmarkScorer.name, i)) for i in indices])
        return pd.DataFrame({ROW_INDEX: indices, "result": out})


def run_pool(cfg: StepRayConfig, model: Optional[str], modes: Sequence[str], records: Sequence[Mapping[str, Any]],
             vision: str = "real") -> dict[str, dict[str, Any]]:
    """Score ``records`` on the ``eval.pool`` actor pool (Ray must be initialised); question id -> result."""
    import ray
    import ray.data

    from step_ray.config import to_dict

    if not records:
        return {}
    pool = cfg.eval.pool
    items = [{ROW_INDEX: i, "record": json.dumps(r)} for i, r in enumerate(records)]
    blocks = max(1, min(len(items), -(-len(items) // pool.batch_size)))
    ledger = ray.remote(num_cpus=0)(CrashLedger).remote()
    resources = {"num_gpus": pool.num_gpus} if pool.num_gpus > 0 else {}
    ds = ray.data.from_items(items, override_num_blocks=blocks).map_batches(
        _PoolActor,
        fn_constructor_kwargs={"cfg_data": to_dict(cfg), "model": model, "modes": list(modes), "vision": vision,
                               "ledger": ledger, "max_retries": pool.max_retries},
        compute=ray.data.ActorPoolStrategy(min_size=pool.min_size, max_size=pool.max_size),
        num_cpus=pool.num_cpus,
        batch_size=pool.batch_size,
        batch_format="pandas",
        **resources,
    )
    done: dict[int, dict[str, Any]] = {}
    try:
        for row in ds.iter_rows():
            done.setdefault(int(row[ROW_INDEX]), json.loads(row["result"]))
    finally:
        ray.kill(ledger)
    out = {}
    for i, r in enumerate(records):  # never expected (one output per input), but never silent either
        out[r["id"]] = done.get(i) or {**_result(r["id"]), "reason": "no_result: Ray Data returned nothing for it"}
    return out


def outcomes_of(questions: Sequence[BenchmarkQuestion], results: Mapping[str, Mapping[str, Any]],
                modes: Sequence[str]) -> dict[str, dict[str, Outcome]]:
    """The actors' results as :class:`~step_ray.eval.results.Outcome` per mode and asked question."""
    outcomes: dict[str, dict[str, Outcome]] = {m: {} for m in modes}
    for q in questions:
        if not q.askable:
            continue
        res = results.get(q.id) or {"reason": "no_result: not scored"}
        for mode in modes:
            if res.get("reason"):
                outcomes[mode][q.id] = skipped(res["reason"])
            elif mode == "likelihood":
                outcomes[mode][q.id] = likelihood_outcome(res["scores"] or [], res.get("rationale"))
            else:
                letters = None if not res.get("letters", True) else "ABCDEFGH"
                outcomes[mode][q.id] = generation_outcome(res.get("generated") or "", q, letters,
                                                          rationale=res.get("rationale"))
    return outcomes


# --------------------------------------------------------------------------------------------- comparisons

def predictions_path(path: str) -> str:
    """``predictions.parquet`` itself, or the one in the evaluation folder ``path``."""
    if path.endswith(".parquet"):
        return path
    return storage.join(path, PREDICTIONS_FILE)


def read_baseline(path: str) -> list[dict[str, Any]]:
    """The rows of another run's predictions (``--compare``), or a one-line input error."""
    target = predictions_path(path)
    try:
        if not storage.exists(target):
            raise InputError(f"--compare {path}: no {PREDICTIONS_FILE} there")
        rows = read_predictions(target)
    except InputError:
        raise
    except Exception as err:  # noqa: BLE001 - any unreadable file is the same one-line error
        raise InputError(f"--compare {path}: not a predictions file ({type(err).__name__}: {err})") from None
    if not rows or "id" not in rows[0]:
        raise InputError(f"--compare {path}: no predictions in it")
    return rows


def comparison_statement(r: Mapping[str, Any]) -> str:
    """One line: ``+3.0 points [-1.2, +7.1] on 200 paired questions (McNemar p = 0.16): within noise``."""
    verdict = {"B better": "better than the baseline", "A better": "worse than the baseline"}.get(
        r["verdict"], r["verdict"])
    return (f"{100 * r['difference']:+.1f} points [{100 * r['low']:+.1f}, {100 * r['high']:+.1f}] on {r['n']} "
            f"paired questions (McNemar p = {r['mcnemar_p']:.3g}): {verdict}")


def compare_rows(baseline: Sequence[Mapping[str, Any]], rows: Sequence[Mapping[str, Any]],
                 modes: Optional[Sequence[str]] = None, confidence: float = 0.95) -> dict[str, Any]:
    """This run (``rows``) against ``baseline``, per mode both have: the paired difference (this − baseline)
    with its interval, McNemar's p, the questions only one of them scored, and a one-line ``statement``."""
    out: dict[str, Any] = {}
    for mode in modes or MODES:
        if not rows or f"{mode}_correct" not in rows[0]:
            continue
        if not baseline or f"{mode}_correct" not in baseline[0]:
            out[mode] = {"n": 0, "statement": f"the baseline has no {mode} results"}
            continue
        ids, a, b, only = pair_outcomes(outcomes_by_id(baseline, mode), outcomes_by_id(rows, mode))
        if not ids:
            out[mode] = {"n": 0, **only, "statement": "no question was scored by both runs"}
            continue
        r = paired_difference(a, b, confidence)
        out[mode] = {**r, **only, "statement": comparison_statement(r)}
    return out


def compare_predictions(baseline: str, other: str, modes: Optional[Sequence[str]] = None) -> dict[str, Any]:
    """:func:`compare_rows` of two prediction files (or evaluation folders): ``other`` − ``baseline``."""
    return compare_rows(read_baseline(baseline), read_baseline(other), modes)


# --------------------------------------------------------------------------------------------- the command

def load_questions(benchmark: str, input_uri: str, videos: Optional[str], **options: Any) -> list[BenchmarkQuestion]:
    """The benchmark's questions, or a one-line input error (``--videos`` is needed but for ``qra``)."""
    if benchmark != "qra" and not videos:
        raise InputError(f"--benchmark {benchmark} needs --videos ROOT (the folder or prefix of its videos)")
    return load_benchmark(benchmark, input_uri, videos, **options)


def evaluate_benchmark(cfg: StepRayConfig, benchmark: str, input_uri: str, videos: Optional[str], out: str,
                       model: Optional[str] = None, mode: str = "both", compare: Optional[str] = None,
                       vision: str = "real", **options: Any) -> dict[str, Any]:
    """Score ``benchmark``'s questions of ``input_uri`` with ``model`` on the actor pool and write the outputs
    under ``out``; return the summary (``comparison`` included with ``compare``)."""
    from step_ray.models.inputs import VISION_CONTROLS, shuffled_sources
    from step_ray.models.sources import ModelSourceError, resolve_model
    from step_ray.utils.ray_session import init_ray

    started = time.perf_counter()
    modes = modes_of(mode)
    if vision not in VISION_CONTROLS:
        raise InputError(f"--vision {vision}: not one of {', '.join(VISION_CONTROLS)}")
    try:  # the reference and its card only: the weights are loaded by the actors
        resolved = resolve_model(model, cfg.model.name_or_path)
    except ModelSourceError as err:
        raise InputError(f"--model {model}: {err}") from None
    questions = load_questions(benchmark, input_uri, videos, **options)
    if cfg.eval.max_samples:
        questions = questions[:cfg.eval.max_samples]
    baseline = read_baseline(compare) if compare else None  # a bad --compare fails now, not after the run
    if baseline is not None and str(baseline[0].get("benchmark")) != benchmark:
        raise InputError(f"--compare {compare}: predictions of {baseline[0].get('benchmark')}, not {benchmark}")
    asked = [q for q in questions if q.askable]
    others = shuffled_sources([{"video_uri": q.video_uri} for q in asked], cfg.run.seed) if vision == "shuffled" \
        else [None] * len(asked)
    records = [scoring_record(q, other) for q, other in zip(asked, others)]
    init_ray(cfg.ray)
    scoring_started = time.perf_counter()
    results = run_pool(cfg, model, modes, records, vision)
    scoring_seconds = time.perf_counter() - scoring_started
    outcomes = outcomes_of(questions, results, modes)
    card = resolved.card
    extra: dict[str, Any] = {
        "input": input_uri,
        "videos": videos,
        "model": resolved.description,
        "answer_format": (card.loss_format if card is not None and card.loss_format else "multitask"),
        "vision": vision,
        "pool": {"min_size": cfg.eval.pool.min_size, "max_size": cfg.eval.pool.max_size,
                 "num_cpus": cfg.eval.pool.num_cpus, "num_gpus": cfg.eval.pool.num_gpus,
                 "batch_size": cfg.eval.pool.batch_size},
        "placement": sorted({r["placement"] for r in results.values() if r.get("placement")}),
        "seconds": {"scoring": round(scoring_seconds, 2), "total": None},
    }
    if baseline is not None:
        extra["comparison"] = {"baseline": compare,
                               **compare_rows(baseline, prediction_rows(questions, outcomes), modes)}
    extra["seconds"]["total"] = round(time.perf_counter() - started, 2)
    summary = write_outputs(out, questions, outcomes, extra=extra)
    if baseline is not None:
        storage.write_text(storage.join(out, COMPARISON_FILE), json.dumps(extra["comparison"], indent=1) + "\n")
    return summary


def _cell(c: Mapping[str, Any]) -> str:
    if not c.get("n"):
        return "  n/a (0 questions)"
    return f"{c['accuracy']:6.3f} [{c['low']:.3f}, {c['high']:.3f}]  ({c['correct']}/{c['n']})"


def format_summary(summary: Mapping[str, Any]) -> str:
    """The end-of-job lines a user reads: per mode, accuracy overall / by steps / by group with 95% intervals,
    skipped questions by reason, and the comparison when there is one."""
    lines = [f"== eval {summary['benchmark']}: {summary['questions']} questions, model {summary.get('model')} =="]
    for mode, s in summary["modes"].items():
        lines.append(f"-- {mode} (95% {s['interval']['method']} intervals)")
        lines.append(f"  {'overall':<24}{_cell(s['overall'])}")
        for bucket, c in s["by_steps"].items():
            lines.append(f"  {'steps ' + bucket:<24}{_cell(c)}")
        for dim, groups in s["by_group"].items():
            for label, c in groups.items():
                lines.append(f"  {dim + ' ' + label:<24}{_cell(c)}")
        if s["skipped"]:
            kinds = ", ".join(f"{k} {v}" for k, v in s["skipped_by_reason"].items())
            lines.append(f"  skipped {s['skipped']} ({kinds})")
        if s.get("unlabelled"):
            lines.append(f"  unlabelled {s['unlabelled']} (predicted, not scored)")
        if mode == "generation":
            lines.append(f"  unparsed {s['unparsed']} (matched by: {json.dumps(s['matched_by'])})")
    comparison = summary.get("comparison")
    if comparison:
        lines.append(f"-- against {comparison['baseline']} (this run − baseline, paired)")
        for mode in MODES:
            if mode in comparison:
                lines.append(f"  {mode:<12}{comparison[mode]['statement']}")
    return "\n".join(lines)
