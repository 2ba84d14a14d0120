"""Corpus-wide finishing of QRA samples: answer-prior balancing, options, splits.

The per-graph sampler runs on many actors; what needs the whole corpus runs afterwards, as passes over
*parts*: the candidates are shuffled once into ``N`` parts by a stable hash of their video id
(``N = ceil(candidates / PART_ROWS)``, so it depends on the corpus alone), each part deduplicated and
sorted, and every later pass maps over the parts and sums small tallies. On Ray the passes are Ray Data
jobs (:class:`step_ray.pipeline.dataflow.RayFlow`); in-process the same functions run in a loop. The rules:

* **answer-prior balancing** — within each family, no answer value may hold more than
  ``qra.max_answer_share`` of the family's samples (or ``1 / k`` with ``k`` distinct values, when that is
  larger: a yes / no family can at best be 50 / 50). From the corpus-wide counts (first pass) the driver
  works out how many samples each over-represented value keeps; the samples kept are those first in a fixed
  pseudo-random order (a hash of their id and the seed). The cut-off hash of each such value is found
  exactly by narrowing histograms of the hashes over the parts (:func:`select_thresholds`), so no pass ever
  brings more than a few thousand keys to the driver;
* **options** — the answer, a compositional distractor, the family's most frequent other answer of the same
  type *in the corpus* (counted over the kept samples), random values of the type; shuffled by an RNG
  seeded by the sample id and seed;
* **split** by video id (train / val / test).

The output depends only on the graphs and the seed: byte-identical parts whatever the number of actors or
the order they finish in (a test checks it), and the same records as :func:`finalize` gives in memory when
the corpus fits in one part.
"""

from __future__ import annotations

import hashlib
import math
import random
from collections import Counter, defaultdict
from functools import partial
from typing import Any, Iterable, Optional

import pyarrow as pa
import pyarrow.compute as pc

from step_ray.config import QraConfig
from step_ray.qra import records as R
from step_ray.qra.render import draw_options
from step_ray.utils.tally import Tally, tally_dict

#: Candidate samples per part (the unit every corpus-wide pass maps over).
PART_ROWS = 20_000
#: Hex digits by which one histogram pass narrows a cut-off hash (256 buckets per over-represented value).
HIST_DIGITS = 2
#: A value's candidates within the current hash prefix are brought to the driver once this few remain: the
#: driver holds at most this many hashes per over-represented value, whatever the corpus size (a histogram
#: pass returns at most as many buckets, so each threshold-search pass is bounded alike).
GATHER_LIMIT = 16**HIST_DIGITS

Group = tuple[str, str]  # (family, answer)


def _order(rec_id: str, seed: int) -> str:
    return hashlib.sha1(f"balance\x1f{rec_id}\x1f{seed}".encode()).hexdigest()


def part_count(candidates: int) -> int:
    return max(1, math.ceil(candidates / PART_ROWS))


def part_of(video_id: str, parts: int) -> int:
    """The part of a video: a stable hash of its id (the same in every run and on every machine)."""
    return int(hashlib.sha1(f"part\x1f{video_id}".encode()).hexdigest()[:12], 16) % parts


def part_column(table: pa.Table, parts: int) -> pa.Array:
    return pa.array([part_of(v, parts) for v in table["video_id"].to_pylist()], pa.int64())


# --------------------------------------------------------------------------------------------- balancing


def balance_limits(counts: dict[Group, int], max_share: float) -> dict[Group, int]:
    """How many samples each over-represented (family, answer) keeps: within each family no answer above
    ``max(max_share, 1 / distinct answers)`` of what the family keeps. Values not listed keep all theirs."""
    by_family: dict[str, dict[str, int]] = defaultdict(dict)
    for (fam, ans), n in counts.items():
        by_family[fam][ans] = n
    limits: dict[Group, int] = {}
    for fam, c in sorted(by_family.items()):
        cap = max(max_share, 1.0 / len(c))
        keep = dict(c)
        while True:  # each round lowers the total, so this ends (at worst with every value equally often)
            limit = max(1, math.floor(cap * sum(keep.values()) + 1e-9))
            over = [v for v, k in keep.items() if k > limit]
            if not over:
                break
            for v in over:
                keep[v] = limit
        limits.update({(fam, v): k for v, k in keep.items() if k < c[v]})
    return limits


def dropped_by_family(counts: dict[Group, int], limits: dict[Group, int]) -> dict[str, int]:
    out: Counter = Counter()
    for g, keep in limits.items():
        out[g[0]] += counts[g] - keep
    return dict(sorted(out.items()))


def _histogram(part: str, prefixes: dict[Group, str], seed: int, digits: int) -> pa.Table:
    t = Tally()
    for r in _read(part, ["id", "family", "answer"]):
        g = (r["family"], r["answer"])
        if g in prefixes:
            key = _order(r["id"], seed)
            if key.startswith(prefixes[g]):
                t.add("h", g[0], g[1], key[: len(prefixes[g]) + digits])
    return t.table()


def _gather(part: str, prefixes: dict[Group, str], seed: int) -> pa.Table:
    t = Tally()
    for r in _read(part, ["id", "family", "answer"]):
        g = (r["family"], r["answer"])
        if g in prefixes:
            key = _order(r["id"], seed)
            if key.startswith(prefixes[g]):
                t.add("k", g[0], g[1], key)
    return t.table()


def select_thresholds(flow: Any, parts: list[str], counts: dict[Group, int], limits: dict[Group, int],
                      seed: int) -> dict[Group, str]:
    """For each over-represented value, the hash of the last sample it keeps (its ``limits[g]``-th smallest
    order hash): narrowed by histogram passes over the parts until few enough candidates remain, then found
    exactly among those."""
    state = {g: ("", keep, counts[g]) for g, keep in limits.items()}  # (prefix, rank within it, candidates in it)
    out: dict[Group, str] = {}
    while state:
        small = {g: s for g, s in state.items() if s[2] <= GATHER_LIMIT}
        if small:
            keys: dict[Group, list[str]] = defaultdict(list)
            for r in flow.map_reduce(parts, partial(_gather, prefixes={g: s[0] for g, s in small.items()}, seed=seed)):
                keys[(r["a"], r["b"])].append(r["c"])
            for g, (_, rank, _) in small.items():
                out[g] = sorted(keys[g])[rank - 1]
                del state[g]
        if not state:
            break
        hist: dict[Group, list[tuple[str, int]]] = defaultdict(list)
        prefixes = {g: s[0] for g, s in state.items()}
        for r in flow.map_reduce(parts, partial(_histogram, prefixes=prefixes, seed=seed, digits=HIST_DIGITS)):
            hist[(r["a"], r["b"])].append((r["c"], int(r["n"])))
        for g, (_, rank, _) in list(state.items()):
            seen = 0
            for bucket, n in sorted(hist[g]):
                if seen + n >= rank:
                    state[g] = (bucket, rank - seen, n)
                    break
                seen += n
    return out


def is_kept(rec: dict[str, Any], thresholds: dict[Group, str], seed: int) -> bool:
    g = (rec["family"], rec["answer"])
    return g not in thresholds or _order(rec["id"], seed) <= thresholds[g]


# --------------------------------------------------------------------------------------------- finishing


def _read(part: str, columns: Optional[list[str]] = None) -> list[dict[str, Any]]:
    import pyarrow.parquet as pq

    from step_ray.utils import storage

    fs, path = storage.filesystem(part)
    with fs.open_input_file(path) as f:
        return pq.read_table(f, columns=columns).to_pylist()


def stage_part(group: pa.Table, folder: str, parts: int) -> pa.Table:
    """One part of the candidates (every candidate of some videos): duplicates dropped — a video whose
    graph appears in several files keeps the file first by path, and an id seen twice keeps one copy —
    sorted by (video_id, id) and written to ``folder``. Tallies: the part's size, its candidates by
    (family, answer, answer type), the graph files dropped as duplicates."""
    from step_ray.utils import storage

    t = Tally()
    if group.num_rows == 0:
        return t.table()
    group = group.select(list(R.CANDIDATE_SCHEMA.names) + ["graph_path"])
    first_path: dict[str, str] = {}
    for vid, path in zip(group["video_id"].to_pylist(), group["graph_path"].to_pylist()):
        if vid not in first_path or path < first_path[vid]:
            first_path[vid] = path
    keep = pc.equal(group["graph_path"], pa.array([first_path[v] for v in group["video_id"].to_pylist()]))
    for vid, path in sorted({(v, p) for v, p, k in zip(group["video_id"].to_pylist(), group["graph_path"].to_pylist(),
                                                       keep.to_pylist()) if not k}):
        t.add("duplicate", vid, path)
    group = group.filter(keep)
    order = pc.sort_indices(group, sort_keys=[("video_id", "ascending"), ("id", "ascending")])
    group = group.take(order)
    ids = group["id"].to_pylist()
    first = [i == 0 or ids[i] != ids[i - 1] for i in range(len(ids))]
    group = group.filter(pa.array(first))
    index = part_of(group["video_id"][0].as_py(), parts)
    storage.write_parquet(storage.join(folder, R.part_name(index)), group)
    t.add("rows", n=group.num_rows)
    for fam, ans, atype in zip(group["family"].to_pylist(), group["answer"].to_pylist(),
                               group["answer_type"].to_pylist()):
        t.add("count", fam, ans, atype)
    return t.table()


def kept_counts_part(part: str, thresholds: dict[Group, str], seed: int) -> pa.Table:
    t = Tally()
    for r in _read(part, ["id", "family", "answer", "answer_type"]):
        if is_kept(r, thresholds, seed):
            t.add("kept", r["family"], r["answer_type"], r["answer"])
    return t.table()


def finish_record(r: dict[str, Any], ranked: dict[tuple[str, str], list[tuple[str, int]]], cfg: QraConfig,
                  seed: int) -> Optional[dict[str, Any]]:
    """A kept candidate as a finished record (options, answer index, split), or None when its answer type
    has too few distinct values for the options."""
    pools = r[R.POOLS]
    rng = random.Random(f"options\x1f{r['id']}\x1f{seed}")
    drawn = draw_options(r["answer"], pools, ranked.get((r["family"], pools["answer_type"]), []), cfg.num_options, rng)
    if drawn is None:
        return None
    rec = {k: v for k, v in r.items() if k not in (R.POOLS, "graph_path")}
    rec["options"], rec["answer_index"] = drawn
    rec["split"] = R.split_of(r["video_id"], cfg.test_fraction, cfg.val_fraction)
    rec.setdefault("flags", [])
    rec.setdefault("consistency", None)
    return rec


def tally_records(records: list[dict[str, Any]], t: Any) -> None:
    """What the stats and the dataset card count, added to tally ``t``."""
    for r in records:
        t.add("steps_family", r["steps"], r["family"])
        t.add("answer", r["family"], r["answer"])
        t.add("split", r["split"])
        t.add("answer_index", "yesno" if len(r["options"]) == 2 else "choice", r["answer_index"])
        if r.get("flags"):
            t.add("flagged")
    for vid, split in sorted({(r["video_id"], r["split"]) for r in records}):
        t.add("video_split", split)


def finish_part(part: str, out_folder: str, thresholds: dict[Group, str], ranked: dict, cfg: QraConfig,
                seed: int) -> pa.Table:
    """Finish one staged part: keep, draw options, split; write it as a QRA part; its tallies."""
    t = Tally()
    done = []
    for r in _read(part):
        if not is_kept(r, thresholds, seed):
            continue
        rec = finish_record(r, ranked, cfg, seed)
        if rec is None:
            t.add("dropped_options")
        else:
            done.append(rec)
    if done:
        index = int(R.PART_PATTERN.match(part.rstrip("/").rsplit("/", 1)[-1]).group(1))
        R.write_part(done, out_folder, index)
        t.add("part", R.part_name(index))
    tally_records(done, t)
    return t.table()


def rank_frequent(kept: dict[tuple[str, str, str], int]) -> dict[tuple[str, str], list[tuple[str, int]]]:
    """(family, answer type) -> [(answer, kept samples)], sorted: what the frequent-answer distractor reads."""
    ranked: dict[tuple[str, str], list[tuple[str, int]]] = defaultdict(list)
    for (fam, atype, ans), n in sorted(kept.items()):
        ranked[(fam, atype)].append((ans, n))
    return dict(ranked)


def kept_from_counts(counts_by_type: dict[tuple[str, str, str], int], limits: dict[Group, int]
                     ) -> Optional[dict[tuple[str, str, str], int]]:
    """Kept samples by (family, answer type, answer) straight from the counts and limits, or None when a
    limited (family, answer) spans several answer types (then a pass over the parts counts them)."""
    types: dict[Group, list[str]] = defaultdict(list)
    for fam, ans, atype in counts_by_type:
        types[(fam, ans)].append(atype)
    if any(len(types[g]) > 1 for g in limits):
        return None
    return {(fam, atype, ans): limits.get((fam, ans), n) for (fam, ans, atype), n in counts_by_type.items()}


def answer_shares_from(counts: dict[Group, int]) -> dict[str, dict[str, Any]]:
    """Per family: samples, distinct answers, the top answer and its share."""
    by_family: dict[str, Counter] = defaultdict(Counter)
    for (fam, ans), n in counts.items():
        by_family[fam][ans] += n
    out = {}
    for fam, c in sorted(by_family.items()):
        n = sum(c.values())
        top, k = max(sorted(c.items()), key=lambda kv: kv[1])
        out[fam] = {"samples": n, "distinct": len(c), "top": top, "top_share": round(k / n, 4)}
    return out


def answer_shares(records: Iterable[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return answer_shares_from(Counter((r["family"], r["answer"]) for r in records))


# --------------------------------------------------------------------------------------------- in memory


def balance_answers(records: list[dict[str, Any]], max_share: float, seed: int
                    ) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """Drop samples so that within each family no answer exceeds ``max(max_share, 1 / distinct answers)`` of
    the family; (kept records in input order, dropped count per family)."""
    counts = Counter((r["family"], r["answer"]) for r in records)
    limits = balance_limits(counts, max_share)
    thresholds = _thresholds_in_memory(records, limits, seed)
    return [r for r in records if is_kept(r, thresholds, seed)], dropped_by_family(counts, limits)


def _thresholds_in_memory(records: list[dict[str, Any]], limits: dict[Group, int], seed: int) -> dict[Group, str]:
    keys: dict[Group, list[str]] = defaultdict(list)
    for r in records:
        g = (r["family"], r["answer"])
        if g in limits:
            keys[g].append(_order(r["id"], seed))
    return {g: sorted(keys[g])[limits[g] - 1] for g in limits}


def finalize(candidates: Iterable[dict[str, Any]], cfg: QraConfig, seed: int, balance: bool = True
             ) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Candidates of any number of graphs, in memory -> finished records (sorted by video id, id) and stats
    ``{"candidates", "dropped_balance" (family -> n), "dropped_options", "answer_shares"}``. The same rules
    as the passes over parts (the steps use those)."""
    unique = {r["id"]: r for r in candidates}
    recs = sorted(unique.values(), key=lambda r: (r["video_id"], r["id"]))
    counts = Counter((r["family"], r["answer"]) for r in recs)
    limits = balance_limits(counts, cfg.max_answer_share) if balance else {}
    thresholds = _thresholds_in_memory(recs, limits, seed)
    kept = [r for r in recs if is_kept(r, thresholds, seed)]
    ranked = rank_frequent(Counter((r["family"], r[R.POOLS]["answer_type"], r["answer"]) for r in kept))
    out, dropped_options = [], 0
    for r in kept:
        rec = finish_record(r, ranked, cfg, seed)
        if rec is None:
            dropped_options += 1
        else:
            out.append(rec)
    stats = {"candidates": len(recs), "dropped_balance": dropped_by_family(counts, limits),
             "dropped_options": dropped_options, "answer_shares": answer_shares(out)}
    return out, stats


# --------------------------------------------------------------------------------------------- the corpus


def finish_corpus(flow: Any, candidate_files: list[str], work: str, out_folder: str, cfg: QraConfig,
                  seed: int) -> dict[str, Any]:
    """Every pass of the corpus-wide finishing over the candidate files (the sampling stage's output);
    writes the QRA parts to ``out_folder`` (through ``work``); returns stats and tallies for the summary and
    the card."""
    import pyarrow.parquet as pq

    from step_ray.utils import storage

    total = 0
    for f in candidate_files:
        fs, p = storage.filesystem(f)
        with fs.open_input_file(p) as fh:
            total += pq.ParquetFile(fh).metadata.num_rows
    parts = part_count(total)
    staged_dir, done_dir = storage.join(work, "parts"), storage.join(work, "out")
    staged = tally_dict(flow.shuffle(candidate_files, partial(part_column, parts=parts),
                                     partial(stage_part, folder=staged_dir, parts=parts)))
    staged_files = R.part_files(staged_dir)
    by_type = {(a, b, c): n for (a, b, c), n in staged.get("count", {}).items()}
    counts: Counter = Counter()
    for (fam, ans, _), n in by_type.items():
        counts[(fam, ans)] += n
    limits = balance_limits(counts, cfg.max_answer_share)
    thresholds = select_thresholds(flow, staged_files, counts, limits, seed) if limits else {}
    kept = kept_from_counts(by_type, limits)
    if kept is None:
        kept = {k: n for k, n in tally_dict(flow.map_reduce(
            staged_files, partial(kept_counts_part, thresholds=thresholds, seed=seed))).get("kept", {}).items()}
    ranked = rank_frequent(kept)
    done = tally_dict(flow.map_reduce(staged_files, partial(finish_part, out_folder=done_dir, thresholds=thresholds,
                                                            ranked=ranked, cfg=cfg, seed=seed)))
    names = sorted(a for (a, _, _) in done.get("part", {}))
    return {
        "candidates": sum(n for (_, _, _), n in staged.get("rows", {}).items()),
        "parts": names,
        "done_dir": done_dir,
        "duplicates": sorted((a, b) for (a, b, _) in staged.get("duplicate", {})),
        "dropped_balance": dropped_by_family(counts, limits),
        "dropped_options": sum(done.get("dropped_options", {}).values()),
        "tallies": done,
    }
