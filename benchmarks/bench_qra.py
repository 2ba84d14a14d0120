"""QRA sampling speed in samples per second per core: this tree's sampler (the candidate) against the sampler of
``--baseline-rev`` (default: the commit the QRA speed work started from), on the same ground-truth graphs of the
synthetic world, in the same run; then the parts around it, for context.

Headline (``ratio=``): candidate / baseline samples per CPU-second. Each side runs in its own fresh Python
(``step_ray`` and ``configs/demo.yaml`` of its own tree: K = 5, 24 samples per video), reads the graphs, samples
them all ``--warmup`` times (discarded: imports, first-call costs), then ``--passes`` times on the clock
(``time.process_time``: one core, other processes count less). ``--repeats`` rounds alternate which side goes
first; the figure is the median over the rounds, with the spread. Both sides' output is hashed: the same tree
must give byte-identical samples every time (determinism), which the benchmark checks.

Context rows (this tree, in-process, same rules): ``sample K=3``; ``sample 100/video`` (the per-graph set-up
amortised); ``graph index only``; ``executor re-check`` (every finished program re-run on its graph, what
``qra-check`` does); ``finalize`` (corpus-wide options, balancing, splits); ``end to end`` (``qra_step``
in-process: read files, sample, finalize, Parquet + JSONL + card).

    flock /tmp/step-ray-heavy.lock .venv/bin/python benchmarks/bench_qra.py [--graphs DIR] [--videos 48]
        [--repeats 5] [--baseline-rev REV]

Without ``--graphs`` a synthetic corpus (``configs/demo.yaml``'s world) is written under
``$STEP_RAY_BENCH_DIR`` (default /tmp/step-ray-bench). Results: a table, ``benchmarks/results/bench_qra.json``.
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path

from common import ROOT, WORK, Case, case_rows, finish, headline, measure, rate_run, run_child, tree_at  # noqa: E402

#: The commit whose sampler the QRA speed work (issue 13) started from.
BASELINE_REV = "d107983"

CHILD = r"""
import collections, hashlib, json, sys, time
from pathlib import Path
from step_ray.config import load_config
from step_ray.qra.sampler import sample_graph
from step_ray.qra.stage import read_graph, video_seed

tree, gdir, warmup, passes = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
cfg = load_config(str(tree / "configs" / "demo.yaml"), [])
graphs = [read_graph(p) for p in sorted(gdir.glob("*.stsg.json"))]
seeds = [video_seed(cfg.run.seed, g.graph["video_id"]) for g in graphs]

def one_pass():
    recs, attempts, rejected = [], 0, collections.Counter()
    for g, s in zip(graphs, seeds):
        out, stats = sample_graph(g, cfg.qra, s)
        recs += out
        attempts += stats["attempts"]
        rejected.update(stats["rejected"])
    return recs, attempts, rejected

for _ in range(warmup):
    one_pass()
samples, cpu, digests = 0, 0.0, set()
for _ in range(passes):
    c0 = time.process_time()
    recs, attempts, rejected = one_pass()
    cpu += time.process_time() - c0
    samples += len(recs)
    digests.add(hashlib.sha256(json.dumps(recs, sort_keys=True, default=str).encode()).hexdigest()[:16])
print(json.dumps({"samples": samples, "cpu_s": cpu, "per_pass": len(recs), "digests": sorted(digests),
                  "attempts_per_sample": attempts / max(1, len(recs)), "rejected": dict(rejected),
                  "graphs": len(graphs), "qra": {k: str(v) for k, v in vars(cfg.qra).items()}}))
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--graphs", help="folder of *.stsg.json (default: write a synthetic corpus)")
    ap.add_argument("--videos", type=int, default=48, help="videos of the synthetic corpus (default 48)")
    ap.add_argument("--repeats", type=int, default=5, help="rounds (default 5)")
    ap.add_argument("--passes", type=int, default=3, help="timed passes over all graphs per run (default 3)")
    ap.add_argument("--warmup", type=int, default=1, help="discarded passes before them (default 1)")
    ap.add_argument("--baseline-rev", default=BASELINE_REV, help=f"git revision of the baseline (default {BASELINE_REV})")
    ap.add_argument("--no-context", action="store_true", help="only the headline (skip the context rows)")
    args = ap.parse_args()

    from step_ray.config import load_config
    from step_ray.pipeline.steps import qra_step, synth_step

    cfg = load_config(str(ROOT / "configs" / "demo.yaml"), [f"synth.videos={args.videos}"])
    gdir = Path(args.graphs) if args.graphs else WORK / "qra_corpus" / "gt"
    if not args.graphs and len(list(gdir.glob("*.stsg.json"))) < args.videos:
        synth_step(cfg, WORK / "qra_corpus")
    base_tree = tree_at(args.baseline_rev)
    child_out: dict[str, list[dict]] = {"candidate": [], "baseline": []}

    def side(role: str, tree: Path):
        def run():
            r = run_child(CHILD, str(tree), str(gdir), str(args.warmup), str(args.passes), pythonpath=tree)
            child_out[role].append(r)
            return rate_run(r["samples"], r["cpu_s"], attempts_per_sample=round(r["attempts_per_sample"], 3),
                            per_pass=r["per_pass"], digests=r["digests"])
        return run

    cand_name, base_name = "sampler (this tree)", f"sampler @ {args.baseline_rev}"
    cases = [Case(cand_name, side("candidate", ROOT), "candidate", "samples/s/core"),
             Case(base_name, side("baseline", base_tree), "baseline", "samples/s/core")]
    runs = measure(cases, args.repeats)
    head = headline(runs, cand_name, base_name)
    rows = case_rows(cases, runs, baseline=base_name)
    for c, role in zip(cases, ("candidate", "baseline")):
        outs = child_out[role]
        row = next(r for r in rows if r["case"] == c.name)
        row["samples"] = outs[-1]["per_pass"]
        row["attempts/sample"] = round(outs[-1]["attempts_per_sample"], 3)
        digests = {d for o in outs for d in o["digests"]}
        row["deterministic"] = len(digests) == 1  # same graphs + seed -> byte-identical samples, every run
    notes = {
        "graphs": child_out["candidate"][-1]["graphs"], "graphs_dir": str(gdir), "baseline_rev": args.baseline_rev,
        "clock": "CPU seconds of the sampling passes (time.process_time), one core",
        "rejected_candidate": child_out["candidate"][-1]["rejected"],
        "rejected_baseline": child_out["baseline"][-1]["rejected"],
        "same_qra_config": child_out["candidate"][-1]["qra"] == child_out["baseline"][-1]["qra"],
    }
    if not args.no_context:
        rows += context_rows(cfg, gdir, args.repeats, qra_step)
    finish("bench_qra", rows, notes, head, runs)


def context_rows(cfg, gdir: Path, repeats: int, qra_step) -> list[dict]:
    """The parts around the sampler, this tree only, in-process (one warm-up run each, then the rounds)."""
    from step_ray.qra.corpus import finalize
    from step_ray.qra.paths import GraphIndex, Program, trace
    from step_ray.qra.sampler import sample_graph
    from step_ray.qra.stage import read_graph, video_seed

    graphs = [read_graph(p) for p in sorted(gdir.glob("*.stsg.json"))]
    seeds = [video_seed(cfg.run.seed, g.graph["video_id"]) for g in graphs]
    base_cfg = cfg.qra
    candidates = [c for g, s in zip(graphs, seeds) for c in sample_graph(g, base_cfg, s)[0]]
    records, _ = finalize(candidates, base_cfg, cfg.run.seed)
    indexes = {g.graph["video_id"]: GraphIndex(g) for g in graphs}

    def cpu_case(name: str, unit: str, fn) -> Case:
        def run():
            c0 = time.process_time()
            n = fn()
            return rate_run(n, time.process_time() - c0)
        return Case(name, run, "", unit)

    def sampler(qcfg):
        return lambda: sum(len(sample_graph(g, qcfg, s)[0]) for g, s in zip(graphs, seeds))

    def recheck() -> int:
        ok = sum(trace(Program.from_json(r["program"]), indexes[r["video_id"]]).answer == r["answer"] for r in records)
        assert ok == len(records), "a finished sample did not re-execute to its answer"
        return ok

    out_dir = Path(str(gdir)).parent / "qra_bench_out"
    cases = [
        cpu_case("sample K=3", "samples/s/core", sampler(dataclasses.replace(base_cfg, max_steps=3))),
        cpu_case("sample 100/video", "samples/s/core", sampler(dataclasses.replace(base_cfg, samples_per_video=100))),
        cpu_case("graph index only", "graphs/s/core", lambda: sum(1 for g in graphs if GraphIndex(g))),
        cpu_case("executor re-check", "programs/s/core", recheck),
        cpu_case("finalize", "samples/s/core", lambda: len(finalize(candidates, base_cfg, cfg.run.seed)[0])),
        cpu_case("end to end (qra_step, no Ray)", "samples/s/core",
                 lambda: qra_step(cfg, [str(gdir)], out_dir, use_ray=False)["samples"]),
    ]
    runs = measure(cases, repeats, warmup_runs=1)
    return case_rows(cases, runs)


if __name__ == "__main__":
    main()
