"""Semantics parsing by the Video-LLM itself (STEP's second operation), grounded on the tracker's boxes.

For each keyframe, the model sees the frame and the tracked objects (id, class, box) and is asked, through a
versioned prompt template (``prompts/<name>.txt``), for the objects' attributes, their pairwise relations and
their actions as JSON. It answers ``n`` times (sampling); a fact is kept when more than ``min_agreement`` of
the n answers state it (self-consistency). Answers that are not JSON of the asked shape are *malformed*:
counted and skipped, never an error. Facts about ids that were not listed, unknown predicates and odd labels
are counted as invalid items and dropped. A random-weight test model writes noise, so everything it says is
counted as malformed; a real model's agreed facts go into the graph with ``source="parser:<prompt>"`` and
their agreement as ``conf``.
"""

from __future__ import annotations

import json
import re
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from importlib import resources
from string import Template
from typing import Any, Callable, Sequence

import numpy as np

from step_ray.config import ModelConfig, SemanticsConfig, VideoConfig
from step_ray.perception.tracks import RELATIONS, Box, Event, Perceived, Track

#: ``load_model(model_cfg, source, device, seed=...) -> (model, processor, resolved)``: how the parser gets its
#: Video-LLM (``source``: any model reference, ``semantics.model_path``; None: the base). It is handed in by
#: the layer that builds the stage (the pipeline passes :func:`step_ray.models.runtime.load_model_source`):
#: perception stands below the model layer and does not import it.
ModelLoader = Callable[..., tuple[Any, Any, Any]]

LABEL = re.compile(r"^[a-z][a-z -]{0,30}$")  # an attribute value or action: a few lower-case words


def load_template(name: str) -> Template:
    """The prompt template ``name`` ('semantics/1' -> ``prompts/semantics-1.txt``)."""
    file = resources.files("step_ray.perception") / "prompts" / f"{name.replace('/', '-')}.txt"
    if not file.is_file():
        raise FileNotFoundError(f"no prompt template {name!r} (looked for {file})")
    return Template(file.read_text())


@dataclass
class KeyframeQuery:
    """One keyframe to parse: where it is, and the tracked objects on it."""

    clip: int
    time: float
    objects: list[tuple[int, str, Box]]  # (track id, class, box)


def render_prompt(template: Template, q: KeyframeQuery, width: int, height: int) -> str:
    lines = "\n".join(f"{tid}: {cls}, box {int(b[0])},{int(b[1])},{int(b[2])},{int(b[3])}" for tid, cls, b in q.objects)
    return template.substitute(time=f"{q.time:.1f}", width=width, height=height, objects=lines)


# --------------------------------------------------------------------------------------------- parsing


@dataclass
class ParsedAnswer:
    """The facts of one generated answer (empty if it was malformed)."""

    facts: set[tuple] = field(default_factory=set)
    malformed: bool = False
    invalid_items: int = 0


def _json_object(text: str) -> Any:
    start, end = text.find("{"), text.rfind("}")
    if start < 0 or end <= start:
        raise ValueError("no JSON object")
    return json.loads(text[start:end + 1])


def parse_answer(text: str, ids: set[int]) -> ParsedAnswer:
    """Facts ``("attr", id, name, value)``, ``("rel", a, predicate, b)`` and ``("action", id, label)`` of one
    answer, checked against the asked shape and the listed ``ids``."""
    try:
        data = _json_object(text)
    except ValueError:  # json.JSONDecodeError is a ValueError
        return ParsedAnswer(malformed=True)
    if not isinstance(data, dict) or not ({"attributes", "relations", "actions"} & set(data)):
        return ParsedAnswer(malformed=True)
    out = ParsedAnswer()

    def known(x: Any) -> int | None:
        try:
            i = int(str(x).strip())
        except ValueError:
            return None
        return i if i in ids else None

    attributes = data.get("attributes", {})
    for key, attrs in (attributes.items() if isinstance(attributes, dict) else []):
        oid = known(key)
        if oid is None or not isinstance(attrs, dict):
            out.invalid_items += 1
            continue
        for name, value in attrs.items():
            value = str(value).strip().lower()
            if LABEL.match(str(name)) and LABEL.match(value):
                out.facts.add(("attr", oid, str(name), value))
            else:
                out.invalid_items += 1
    relations = data.get("relations", [])
    for item in (relations if isinstance(relations, list) else []):
        if isinstance(item, (list, tuple)) and len(item) == 3:
            a, pred, b = known(item[0]), str(item[1]).strip().lower(), known(item[2])
            if a is not None and b is not None and a != b and pred in RELATIONS:
                out.facts.add(("rel", a, pred, b))
                continue
        out.invalid_items += 1
    actions = data.get("actions", {})
    for key, label in (actions.items() if isinstance(actions, dict) else []):
        oid, label = known(key), str(label).strip().lower()
        if oid is not None and LABEL.match(label):
            out.facts.add(("action", oid, label))
        else:
            out.invalid_items += 1
    return out


def agreed_facts(answers: Sequence[ParsedAnswer], min_agreement: float) -> dict[tuple, float]:
    """Facts stated by more than ``min_agreement`` of the answers (malformed ones count as not stating
    anything), with their share."""
    n = len(answers)
    votes = Counter(f for a in answers for f in a.facts)
    return {f: c / n for f, c in votes.items() if c / n > min_agreement}


# --------------------------------------------------------------------------------------------- results


@dataclass
class ParsedSemantics:
    """What parsing added to a video: per-object attributes, relations at keyframes, action events."""

    attributes: dict[tuple[int, int], dict[str, tuple[str, float]]] = field(default_factory=dict)
    relations: list[tuple[int, int, str, int, float, float]] = field(default_factory=list)  # clip,a,pred,b,t,conf
    actions: list[Event] = field(default_factory=list)
    source: str = "parser"
    stats: dict[str, int] = field(default_factory=lambda: {"keyframes": 0, "samples": 0, "malformed": 0,
                                                            "invalid_items": 0, "facts": 0})


def keyframe_queries(p: Perceived, max_keyframes: int) -> list[KeyframeQuery]:
    """The keyframes to parse, each with the objects tracked on it (keyframes with no object are skipped)."""
    by_clip: dict[int, list[Track]] = defaultdict(list)
    for t in p.tracks:
        by_clip[t.clip].append(t)
    queries = []
    for c in p.clips:
        for k in c.keyframe_times:
            objs = [(t.track_id, t.category, t.boxes[k]) for t in sorted(by_clip[c.index], key=lambda t: t.track_id)
                    if k in t.boxes]
            if objs:
                queries.append(KeyframeQuery(c.index, k, objs))
    if max_keyframes and len(queries) > max_keyframes:
        keep = np.unique(np.linspace(0, len(queries) - 1, max_keyframes).round().astype(int))
        queries = [queries[i] for i in keep]
    return queries


def collect(queries: Sequence[KeyframeQuery], answers: Sequence[Sequence[str]], cfg: SemanticsConfig) -> ParsedSemantics:
    """Parse and vote the ``n`` answers of each query into :class:`ParsedSemantics`."""
    out = ParsedSemantics(source=f"parser:{cfg.prompt}")
    per_object: dict[tuple[int, int], dict[str, Counter]] = defaultdict(lambda: defaultdict(Counter))
    for q, texts in zip(queries, answers):
        ids = {tid for tid, _, _ in q.objects}
        parsed = [parse_answer(t, ids) for t in texts]
        out.stats["keyframes"] += 1
        out.stats["samples"] += len(parsed)
        out.stats["malformed"] += sum(a.malformed for a in parsed)
        out.stats["invalid_items"] += sum(a.invalid_items for a in parsed)
        agreed = agreed_facts(parsed, cfg.min_agreement)
        out.stats["facts"] += len(agreed)
        for fact, share in sorted(agreed.items()):
            if fact[0] == "attr":
                per_object[(q.clip, fact[1])][fact[2]][fact[3]] += share
            elif fact[0] == "rel":
                out.relations.append((q.clip, fact[1], fact[2], fact[3], q.time, share))
            else:
                out.actions.append(Event("action", q.clip, q.time, [fact[1]], source=out.source, conf=share,
                                         attrs={"label": fact[2]}))
    for key, attrs in per_object.items():  # an object's attribute: the value agreed on at most keyframes
        out.attributes[key] = {}
        for name, values in attrs.items():
            value, weight = max(values.items(), key=lambda kv: (kv[1], kv[0]))
            out.attributes[key][name] = (value, round(weight / sum(values.values()), 3))
    return out


# --------------------------------------------------------------------------------------------- the model


class SemanticsParser:
    """Loads the Video-LLM once (``setup``, inside the actor, through ``load_model``) and parses the keyframes
    of one video at a time."""

    def __init__(self, cfg: SemanticsConfig, model_cfg: ModelConfig, device: str, load_model: ModelLoader,
                 seed: int = 0):
        self.cfg, self.model_cfg, self.device, self.seed = cfg, model_cfg, device, seed
        self.load_model = load_model
        self.template = load_template(cfg.prompt)  # fail fast on a bad template name, on the driver too

    def setup(self) -> None:
        # Any model reference: a base, a training run's output (adapter + base), a merged or pretrained model.
        self.model, self.processor, _ = self.load_model(self.model_cfg, self.cfg.model_path, self.device,
                                                        seed=self.seed)
        self.processor.tokenizer.padding_side = "left"  # batched generation continues every prompt at its end

    def generate(self, prompts: Sequence[str], images: Sequence[np.ndarray]) -> list[list[str]]:
        """``n`` sampled answers for each (prompt, image)."""
        import torch

        texts = [self.processor.apply_chat_template(
            [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": p}]}],
            tokenize=False, add_generation_prompt=True) for p in prompts]
        side = self.cfg.image_size
        inputs = self.processor(text=list(texts), images=list(images), return_tensors="pt", padding=True,
                                images_kwargs={"size": {"shortest_edge": 56 * 56, "longest_edge": side * side}})
        inputs = {k: v.to(self.device) if hasattr(v, "to") else v for k, v in inputs.items()}
        torch.manual_seed(self.seed)
        with torch.no_grad():
            out = self.model.generate(**inputs, do_sample=True, temperature=self.cfg.temperature,
                                      num_return_sequences=self.cfg.samples, max_new_tokens=self.cfg.max_new_tokens,
                                      pad_token_id=self.processor.tokenizer.pad_token_id)
        new = out[:, inputs["input_ids"].shape[1]:]
        decoded = self.processor.batch_decode(new, skip_special_tokens=True)
        n = self.cfg.samples
        return [decoded[i * n:(i + 1) * n] for i in range(len(prompts))]

    def parse(self, p: Perceived, local_path: str, video_cfg: VideoConfig) -> ParsedSemantics:
        """Decode the keyframes (a second streaming pass that keeps only them) and parse them in batches."""
        from step_ray.video.decode import open_sampled

        queries = keyframe_queries(p, self.cfg.max_keyframes)
        wanted = {q.time: q for q in queries}
        pending: list[tuple[KeyframeQuery, np.ndarray]] = []
        answers: dict[float, list[str]] = {}
        for chunk in (open_sampled(local_path, video_cfg) if queries else []):
            for frame, t in zip(chunk.frames, chunk.times):
                if t in wanted:
                    pending.append((wanted[t], frame))
                if len(pending) == self.cfg.batch_size:
                    self._answer(pending, p, answers)
                    pending = []
        if pending:
            self._answer(pending, p, answers)
        done = [q for q in queries if q.time in answers]
        return collect(done, [answers[q.time] for q in done], self.cfg)

    def _answer(self, batch: list[tuple[KeyframeQuery, np.ndarray]], p: Perceived, answers: dict) -> None:
        prompts = [render_prompt(self.template, q, p.width, p.height) for q, _ in batch]
        for (q, _), texts in zip(batch, self.generate(prompts, [f for _, f in batch])):
            answers[q.time] = texts


def summary_stats(parsed: ParsedSemantics | None) -> dict[str, Any]:
    """The stage's row fields for parsing."""
    if parsed is None:
        return {}
    return {"parse_samples": parsed.stats["samples"], "parse_malformed": parsed.stats["malformed"],
            "parse_facts": parsed.stats["facts"]}


@dataclass
class AttributeFact:
    """An agreed attribute of a tracked object (one item of :attr:`ParsedSemantics.attributes`)."""

    clip: int
    track_id: int
    name: str
    value: str
    conf: float


@dataclass
class RelationFact:
    """An agreed relation at a keyframe (one item of :attr:`ParsedSemantics.relations`)."""

    clip: int
    a: int
    predicate: str
    b: int
    time: float
    conf: float


@dataclass
class SemanticsRecord:
    """:class:`ParsedSemantics` as a typed record: what a perception actor hands to a graph-building actor
    (an Arrow struct, :mod:`step_ray.utils.arrow`)."""

    attributes: list[AttributeFact]
    relations: list[RelationFact]
    actions: list[Event]
    source: str
    stats: dict[str, int]


def semantics_record(s: ParsedSemantics) -> SemanticsRecord:
    return SemanticsRecord(
        attributes=[AttributeFact(clip, tid, name, value, conf) for (clip, tid), attrs in sorted(s.attributes.items())
                    for name, (value, conf) in sorted(attrs.items())],
        relations=[RelationFact(*r) for r in s.relations], actions=list(s.actions), source=s.source,
        stats=dict(s.stats))


def semantics_from_record(r: SemanticsRecord) -> ParsedSemantics:
    attributes: dict[tuple[int, int], dict[str, tuple[str, float]]] = {}
    for f in r.attributes:
        attributes.setdefault((f.clip, f.track_id), {})[f.name] = (f.value, f.conf)
    return ParsedSemantics(attributes=attributes,
                           relations=[(f.clip, f.a, f.predicate, f.b, f.time, f.conf) for f in r.relations],
                           actions=list(r.actions), source=r.source, stats=dict(r.stats))
