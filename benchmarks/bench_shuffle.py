"""The flow's shuffle strategy on a small corpus: the ``qra`` step on Ray with the task-based sort shuffle for its
aggregations (the candidate, what :mod:`step_ray.pipeline.dataflow` does below ``SMALL_SHUFFLE_BYTES``) against
Ray Data's default actor-based ``SHUFFLE_V2`` everywhere (the baseline), on the same graphs in the same Ray.

Headline (``ratio=``): candidate / baseline graphs per wall second of a whole ``qra`` step (listing, sampling on
the ``qra.pool`` actors, the finishing passes, the summaries). A step is one indivisible unit: both cases are
warmed up by a whole run first (worker processes started, imports done), then ``--repeats`` rounds alternate
which case goes first. Both sides must write byte-identical parts (checked): the strategy changes the cost,
never the output.

    flock /tmp/step-ray-heavy.lock .venv/bin/python benchmarks/bench_shuffle.py [--graphs 14] [--repeats 3]

Results: a table, ``benchmarks/results/bench_shuffle.json``.
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
import sys
import time
from pathlib import Path

from common import ROOT, WORK, Case, case_rows, finish, headline, measure, rate_run  # noqa: E402

sys.path.insert(0, str(ROOT))


def write_graphs(folder: Path, n: int) -> Path:
    """``n`` scene graphs of the synthetic world's ground truth (``step-ray synth``, no decoding)."""
    from step_ray.config import load_config
    from step_ray.synth.corpus import generate_corpus

    if folder.exists():
        shutil.rmtree(folder)
    cfg = load_config(str(ROOT / "configs" / "demo.yaml"), [f"synth.videos={n}", "synth.seed=3"])
    items = generate_corpus(folder / "corpus", cfg.synth, cfg.video, cfg.stsg)
    graphs = folder / "graphs"
    graphs.mkdir()
    for item in items:
        shutil.copy(item["gt_path"], graphs / f"{item['video_id']}.stsg.json")
    return graphs


def parts_digest(folder: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(folder.glob("part-*.parquet")):
        h.update(p.name.encode())
        h.update(p.read_bytes())
    return h.hexdigest()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--graphs", type=int, default=14, help="graphs in the corpus (default 14)")
    ap.add_argument("--repeats", type=int, default=3, help="rounds of both cases (default 3)")
    args = ap.parse_args(argv)

    import ray

    from step_ray.config import load_config
    from step_ray.pipeline import dataflow
    from step_ray.pipeline.steps import qra_step
    from step_ray.utils.env import quiet_library_bars

    quiet_library_bars()
    work = WORK / "bench_shuffle"
    graphs = write_graphs(work, args.graphs)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    cfg = load_config(str(ROOT / "configs" / "demo.yaml"), ["qra.samples_per_video=10"])
    adaptive = dataflow._shuffled_by
    digests: dict[str, set[str]] = {"task sort shuffle": set(), "SHUFFLE_V2 (Ray default)": set()}

    def step(name: str, strategy) -> Case:
        def run():
            dataflow._shuffled_by = strategy
            try:
                out = work / "out"
                shutil.rmtree(out, ignore_errors=True)
                start = time.perf_counter()
                summary = qra_step(cfg, [str(graphs)], out)
                seconds = time.perf_counter() - start
            finally:
                dataflow._shuffled_by = adaptive
            digests[name].add(parts_digest(out))
            return rate_run(summary["graphs"], seconds, samples=summary["samples"])
        return Case(name, run, role="candidate" if strategy is adaptive else "baseline", unit="graphs/s")

    cases = [step("task sort shuffle", adaptive), step("SHUFFLE_V2 (Ray default)", lambda ds, small: ds)]
    runs = measure(cases, repeats=args.repeats, warmup_runs=1)
    ray.shutdown()
    outputs = set().union(*digests.values())
    if len(outputs) != 1:
        print(f"bench_shuffle: the two strategies wrote different parts: {digests}", file=sys.stderr)
        return 1
    head = headline(runs, "task sort shuffle", "SHUFFLE_V2 (Ray default)")
    notes = {"graphs": args.graphs, "step": "qra on Ray (2 CPUs), configs/demo.yaml, 10 samples per graph",
             "same output": "byte-identical parts from both strategies in every run"}
    finish("bench_shuffle", case_rows(cases, runs, baseline="SHUFFLE_V2 (Ray default)"), notes, head, runs)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
