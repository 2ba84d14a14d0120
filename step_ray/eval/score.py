"""The evaluation stage ``eval-score``: a batch of questions in, one scored row per question out.

Every evaluation of step-ray goes through this one stage: ``step-ray eval --benchmark`` (public benchmarks and
step-ray's QRA), the ``eval`` step, and the evaluations ``self-train``, ``ablate`` and ``pretrain`` run (base,
trained, the vision controls, the trained model on its training split). On Ray it runs on the ``eval.pool``
actor pool (:func:`step_ray.ray_executor.map_tables`): each actor loads the model once in
:meth:`EvalScore.setup` (on its GPU in bf16 when it has one: ``eval.device`` / ``eval.precision``), decodes the
frames of its batch and scores them, so the driver never loads a model; without Ray (tests, ``--no-ray``) the
same stage runs in this process (:func:`step_ray.stage.run_local`).

* **likelihood**: :meth:`~step_ray.models.runtime.VideoLLM.score_options` under the prompt format the model was
  trained with (its card); a ``joint`` model writes its rationale first and the options are scored after it;
* **generation**: the model writes its answer (a joint model: after its rationale); the caller maps it onto an
  option (:func:`step_ray.eval.answers.parse_answer`).

With both modes a joint model's rationale is written once and serves both. Open-answer questions (AGQA) are
asked without an options line; likelihood ranks their vocabulary, ``eval.max_sequences`` option sequences per
forward pass. An actor is handed ``eval.pool.batch_size`` questions at a time and runs its forward passes over
``eval.batch_size`` of them (the same passes in this process: the numbers do not depend on the executor).

Each input row says which evidence the question is asked with (``vision``: ``real`` frames, ``blank`` black
frames, ``shuffled``: the same moments of the video ``frames_uri``), so one pool, one model load per actor,
scores a model's evaluation and all its vision controls together. ``key`` names a row (unique in a run:
``<vision>/<id>``).

Failures are rows: a question whose video cannot be decoded has ``error`` ``unreadable_video: ...``; one whose
scoring raises (out of GPU memory, say) is retried alone, then is ``scoring_error: ...``; one that keeps
killing its actor is ``actor_died: ...`` after ``eval.pool.max_retries`` restarts (the executor's crash ledger,
:class:`~step_ray.stage.RowGuard`): the questions of a batch whose actor died are scored one by one on the
retry, so only the one that kills it is counted and the others come back scored.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from typing import Any, Callable, ClassVar, Iterable, Mapping, Optional, Sequence

import pyarrow as pa

from step_ray.config import EvalConfig, ModelConfig
from step_ray.stage import Row, RowGuard, Stage, run_local, schema

logger = logging.getLogger(__name__)

MODES = ("likelihood", "generation")
VISIONS = ("real", "blank", "shuffled")

INPUTS = schema(
    ("key", pa.string()), ("id", pa.string()), ("vision", pa.string()), ("frames_uri", pa.string()),
    ("question", pa.string()), ("options", pa.list_(pa.string())), ("video_uri", pa.string()),
    ("start", pa.float64()), ("end", pa.float64()), ("times", pa.list_(pa.float64())), ("open_answer", pa.bool_()),
)
OUTPUTS = schema(
    ("key", pa.string()), ("id", pa.string()), ("vision", pa.string()), ("status", pa.string()),
    ("error", pa.string()), ("scores", pa.list_(pa.float64())), ("generated", pa.string()),
    ("rationale", pa.string()), ("letters", pa.bool_()), ("placement", pa.string()),
)

#: Runs stages over input tables, yielding output tables: :func:`step_ray.stage.run_local` in this process,
#: or the pipeline's Ray executor (:func:`step_ray.ray_executor.map_tables`).
Executor = Callable[[Sequence[pa.Table], Sequence[Stage]], Iterable[pa.Table]]


def row_key(vision: str, qid: str) -> str:
    return f"{vision}/{qid}"


def scoring_row(record: Mapping[str, Any], vision: str = "real", frames_uri: Optional[str] = None) -> Row:
    """The stage's input row of one question (a record in the QRA row layout: id, question, options, video_uri,
    start, end, times; ``open_answer`` when its options are a vocabulary) under ``vision``."""
    if vision not in VISIONS:
        raise ValueError(f"vision {vision!r} is not one of {', '.join(VISIONS)}")
    times = record.get("times")
    return {"key": row_key(vision, str(record["id"])), "id": str(record["id"]), "vision": vision,
            "frames_uri": frames_uri if vision == "shuffled" else None, "question": str(record["question"]),
            "options": [str(o) for o in record["options"]], "video_uri": record.get("video_uri"),
            "start": _float(record.get("start")), "end": _float(record.get("end")),
            "times": [float(t) for t in times] if times is not None and len(times) else None,
            "open_answer": bool(record.get("open_answer"))}


def _float(x: Any) -> Optional[float]:
    try:
        return None if x is None else float(x)
    except (TypeError, ValueError):
        return None


@dataclass(kw_only=True)
class EvalScore(Stage):
    """The evaluation stage (see the module docstring)."""

    name: ClassVar[str] = "eval-score"
    pool_path: ClassVar[str] = "eval.pool"
    row_key: ClassVar[Optional[str]] = "key"
    inputs: ClassVar[pa.Schema] = INPUTS
    outputs: ClassVar[pa.Schema] = OUTPUTS

    model: ModelConfig
    eval: EvalConfig
    seed: int = field(default=0, metadata={"config": "run.seed"})
    source: Optional[str] = None
    """The model to score (any :mod:`step_ray.models.sources` reference); None: the base of ``model``."""
    modes: tuple[str, ...] = ("likelihood",)

    def __post_init__(self) -> None:
        self.modes = tuple(self.modes)
        bad = sorted(set(self.modes) - set(MODES))
        if bad or not self.modes:
            raise ValueError(f"eval-score: modes {list(self.modes)}: each must be one of {', '.join(MODES)}")
        self.llm: Any = None

    # ------------------------------------------------------------------ life cycle

    def setup(self) -> None:
        import torch

        from step_ray.models.runtime import VideoLLM, load_model_source

        torch.manual_seed(self.seed)
        model, processor, resolved = load_model_source(self.model, self.source, self.eval.device,
                                                       self.eval.precision, self.seed)
        self.llm = VideoLLM(model, processor, self.model, resolved.card, resolved.description,
                            self.eval.max_new_tokens)

    def teardown(self) -> None:
        self.llm = None

    @property
    def placement(self) -> str:
        """Where the model runs and in what dtype (``cuda:0/bfloat16``), for the summary."""
        return f"{self.llm.device}/{str(self.llm.dtype).removeprefix('torch.')}"

    def process(self, batch: pa.Table) -> pa.Table:
        rows = batch.to_pylist()
        guard: Optional[RowGuard] = getattr(self, "row_guard", None)
        if guard is None:
            out = self.score(rows)
        else:
            out = self._guarded(rows, guard)
        return pa.Table.from_pylist([out[r["key"]] for r in rows], schema=self.outputs)

    def _guarded(self, rows: list[Row], guard: RowGuard) -> dict[str, Row]:
        """Score ``rows`` under the crash ledger: rows no process died on are scored together; a row of a batch
        that killed an actor before is scored alone (its neighbours are not blamed for it), and becomes an
        ``actor_died`` row once it killed ``max_retries + 1`` processes."""
        deaths = {r["key"]: guard.begin(r["key"]) for r in rows}
        fresh = [r for r in rows if deaths[r["key"]] == 0]
        suspects = [r for r in rows if deaths[r["key"]] > 0]
        for r in suspects:  # begun again one at a time below, so a crash counts only against the row it hit
            guard.end(r["key"])
        out = self.score(fresh)
        for r in fresh:
            guard.end(r["key"])
        for r in suspects:
            died = guard.begin(r["key"])
            if died > guard.max_retries:
                out[r["key"]] = self.error_row(r, (
                    f"actor_died: the process scoring it died {died} times (a crash, or an out-of-memory kill); "
                    f"{self.pool_path}.max_retries is {guard.max_retries}, the run went on without it"))
            else:
                out.update(self.score([r]))
            guard.end(r["key"])
        return out

    # ------------------------------------------------------------------ scoring

    def _row(self, r: Row, **values: Any) -> Row:
        return {"key": r["key"], "id": r["id"], "vision": r["vision"], "status": "ok", "error": None, "scores": None,
                "generated": None, "rationale": None, "letters": None, "placement": self.placement, **values}

    def error_row(self, row: Row, reason: str) -> Row:
        out = super().error_row(row, reason)
        if self.llm is not None:
            out["placement"] = self.placement
        return out

    def score(self, rows: Sequence[Row]) -> dict[str, Row]:
        """key -> output row of each of ``rows`` (input rows of the stage), in forward passes of
        ``eval.batch_size`` questions of one prompt format."""
        from step_ray.models.inputs import FrameDecodeError, frames_for_row

        out: dict[str, Row] = {}
        ready = []
        for r in rows:
            try:
                frames = frames_for_row(r, self.llm.model_cfg, "blank" if r["vision"] == "blank" else "real")
                if r["vision"] == "shuffled" and r.get("frames_uri"):  # the same moments of another video
                    frames = frames_for_row(r, self.llm.model_cfg, uri=r["frames_uri"])
            except (FrameDecodeError, OSError) as err:
                out[r["key"]] = self.error_row(r, f"unreadable_video: {err}")
                continue
            ready.append((r, frames))
        size = max(1, self.eval.batch_size)
        for open_answer in (False, True):  # asked with and without an options line: one prompt format a pass
            group = [item for item in ready if bool(item[0].get("open_answer")) == open_answer]
            for i in range(0, len(group), size):
                self._score_isolating(group[i:i + size], out)
        return out

    def _score_isolating(self, group: list, out: dict[str, Row]) -> None:
        """Score ``group`` together; if that raises, each question alone, so one bad question (or a batch too
        big for the GPU) costs only itself."""
        try:
            out.update(self._score_group(group))
        except Exception as err:  # noqa: BLE001 - the contract: every question ends as a row
            if len(group) > 1:
                logger.warning("eval: a batch of %d failed (%s: %s); scoring its questions one by one",
                               len(group), type(err).__name__, err)
                for item in group:
                    self._score_isolating([item], out)
                return
            logger.exception("eval: question %s failed", group[0][0]["id"])
            out[group[0][0]["key"]] = self.error_row(group[0][0], f"scoring_error: {type(err).__name__}: {err}")

    def _score_group(self, group: list) -> dict[str, Row]:
        llm = self.llm
        rows = [r for r, _ in group]
        frames = [f for _, f in group]
        open_answer = bool(rows[0].get("open_answer"))
        # an open-answer vocabulary is not a list of options the question showed: ask without an options line
        fmt = replace(llm.fmt, options=False) if open_answer else llm.fmt
        rationales: Optional[list[str]] = None
        values: dict[str, dict[str, Any]] = {r["key"]: {"letters": bool(fmt.options)} for r in rows}
        if "generation" in self.modes:
            answers = llm.generate_answers(rows, frames, fmt=fmt)
            for r, (text, rationale) in zip(rows, answers):
                values[r["key"]].update(generated=text, rationale=rationale)
            if llm.answer_format == "joint":
                rationales = [rationale or "" for _, rationale in answers]
        if "likelihood" in self.modes:
            if llm.answer_format == "joint" and rationales is None:
                from step_ray.models.prompts import TASK_JOINT
                from step_ray.models.runtime import split_joint

                rationales = [split_joint(t)[0] for t in llm.generate(rows, frames, TASK_JOINT, fmt=fmt)]
                for r, rationale in zip(rows, rationales):
                    values[r["key"]]["rationale"] = rationale
            scores = llm.score_options(rows, frames, rationales, fmt=fmt, max_sequences=self.eval.max_sequences)
            for r, sc in zip(rows, scores):
                values[r["key"]]["scores"] = [float(s) for s in sc]
        # built only once the whole group succeeded: a retried group leaves nothing half-written
        return {r["key"]: self._row(r, **values[r["key"]]) for r in rows}


def score_rows(stage: EvalScore, rows: Sequence[Row], executor: Optional[Executor] = None) -> dict[str, Row]:
    """key -> output row of every input row, run by ``executor`` (default: in this process) in batches of
    ``eval.pool.batch_size``; a row the executor never returned is an error row (never expected: the stage
    gives one output per input, but never silent either)."""
    if not rows:
        return {}
    table = pa.Table.from_pylist(list(rows), schema=INPUTS)
    size = max(1, stage.pool.batch_size)
    tables = [table.slice(i, size) for i in range(0, table.num_rows, size)]
    run = executor or run_local
    out: dict[str, Row] = {}
    for t in run(tables, [stage]):
        for r in t.to_pylist():
            out.setdefault(r["key"], r)
    for r in rows:
        if r["key"] not in out:
            out[r["key"]] = stage.error_row(r, "no_result: the executor returned nothing for it")
    return out
