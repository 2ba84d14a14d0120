"""The driver's peak memory and wall time of the ``stsg`` and ``qra`` steps at 1k, 10k and 100k inputs.

Issue 10's goal: the driver's peak RSS at 100k inputs <= 1.2x that at 1k, and wall time per input flat —
nothing of the corpus passes through the driver. The inputs are cheap so that this measures the driver and
Ray Data, not perception: a JSONL manifest of N entries (distinct ids) naming one tiny video; the perception
stage is the real one but for its work (it fingerprints the file like the real one, then returns two fixed
tracks instead of decoding and detecting); graph building (the real ``stsg-graph`` stage: N graphs built
and written), the results tables, the summaries, and the whole ``qra`` step over the N graphs (sampling on
actors, the corpus-wide passes, the parts, the card) are the real ones.

Each size runs in a fresh Python process with its own local Ray (2 CPUs), so ``ru_maxrss`` is that driver's
own peak; sizes run one after another in the same invocation, and every ratio is against the 1k run of the
same invocation. Wall times exclude starting Ray. Beside the peak: the peak when the ``stsg`` step ended, and
what stays live at the end (RSS after ``gc.collect()`` and glibc's ``malloc_trim(0)``, without the freed heap
the allocator holds on to), which tell a transient peak from memory kept.

    .venv/bin/python benchmarks/bench_driver_scale.py [--sizes 1000 10000 100000] [--repeats 3] [--largest-repeats 1]

The last line reads ``driver_rss_ratio_100k_vs_1k=<x> wall_per_input_ratio_100k_vs_1k=<y>`` (the largest
size against the smallest, medians over the repeats).
"""

from __future__ import annotations

import argparse
import shutil
import statistics

from common import WORK, report, run_child
from videos import make_video

CHILD = r"""
import json, resource, sys, time
from dataclasses import dataclass
from typing import ClassVar

n, work = int(sys.argv[1]), sys.argv[2]
from pathlib import Path
from step_ray.config import load_config
from step_ray.perception.tracks import Clip, Perceived, Track
from step_ray.stsg.stage import GraphStage, PerceptionStage, settings_key
from step_ray.utils.ray_session import init_ray

@dataclass
class CheapPerception(PerceptionStage):
    name: ClassVar[str] = "stsg-perception"

    def setup(self):
        self.device, self.detector, self.parser = "cpu", None, None

    def _perceive(self, video_id, uri, local):
        times = [round(0.2 * i, 1) for i in range(11)]
        clip = Clip(0, 0.0, 2.0, times, [0.0, 1.0, 2.0])
        a = Track(0, 1, "circle", {t: (10.0 + 20 * t, 10.0, 30.0 + 20 * t, 30.0) for t in times}, color="red")
        b = Track(0, 2, "square", {t: (70.0, 40.0, 90.0, 60.0) for t in times}, color="blue")
        return (Perceived(video_id, uri, 2.0, 128, 96, [clip], [a, b], provenance={"detector": "cheap"}),
                {"frames": len(times), "decoder": "none", "duration": 2.0})

cfg = load_config(None, ["ray.num_cpus=2", "ray.address=local",
    "perception.pool.max_size=2", "perception.pool.num_cpus=0.5", "perception.pool.batch_size=64",
    "stsg.pool.num_cpus=0.5", "stsg.pool.batch_size=64",
    "qra.pool.max_size=2", "qra.pool.num_cpus=0.5", "qra.pool.batch_size=64", "qra.samples_per_video=4"])
root = Path(work)
manifest = root / "manifest.jsonl"
with open(manifest, "w") as f:
    for i in range(n):
        f.write(json.dumps({"uri": str(root / "tiny.mp4"), "video_id": f"v{i:07d}"}) + "\n")
init_ray(cfg.ray)
from step_ray.pipeline import steps
def cpu_s():
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime
def rss_mb():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS"):
            return int(line.split()[1]) / 1024
perception = CheapPerception.from_config(cfg, out_dir=str(root / "stsg"))
graph = GraphStage.from_config(cfg)
import dataclasses
stages = [dataclasses.replace(perception, settings=settings_key(perception, graph)), graph]
rss0, c0 = rss_mb(), cpu_s()
t0 = time.perf_counter()
s = steps.stsg_step(cfg, [str(manifest)], root / "stsg", stages=stages)
t1 = time.perf_counter()
stsg_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
q = steps.qra_step(cfg, [str(root / "stsg")], root / "qra")
t2 = time.perf_counter()
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
import ctypes, gc
gc.collect()
ctypes.CDLL("libc.so.6").malloc_trim(0)  # what stays live, without the heap the allocator holds on to
print(json.dumps({"inputs": n, "driver_rss_mb": peak, "peak_after_stsg_mb": stsg_peak, "live_at_end_mb": rss_mb(),
                  "rss_at_start_mb": rss0, "driver_cpu_s": cpu_s() - c0,
                  "stsg_s": t1 - t0, "qra_s": t2 - t1, "ok": s["ok"], "accounted_for": s["accounted_for"],
                  "graphs": q["graphs"], "samples": q["samples"], "parts": len(q["parts"])}))
"""


def run_size(n: int, repeat: int) -> dict:
    root = WORK / "driver_scale" / f"{n}-{repeat}"
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    make_video(root / "tiny.mp4", 0.3, width=64, height=64, fps=10)  # fingerprinted for every input
    row = run_child(CHILD, str(n), str(root))
    shutil.rmtree(root, ignore_errors=True)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[1000, 10_000, 100_000])
    ap.add_argument("--repeats", type=int, default=3, help="runs per size (medians and min-max are reported)")
    ap.add_argument("--largest-repeats", type=int, default=1, help="runs of the largest size (it takes longest)")
    args = ap.parse_args()
    sizes = sorted(args.sizes)
    rows = []
    for n in sizes:
        runs = [run_size(n, r) for r in range(args.largest_repeats if n == sizes[-1] else args.repeats)]
        for r in runs:
            assert r["ok"] == n and r["accounted_for"] and r["graphs"] == n, r
        rss = [r["driver_rss_mb"] for r in runs]
        wall = [(r["stsg_s"] + r["qra_s"]) / n * 1000 for r in runs]
        rows.append({
            "inputs": n, "driver_rss_mb": statistics.median(rss), "rss_min_max": f"{min(rss):.0f}-{max(rss):.0f}",
            "stsg_s": statistics.median(r["stsg_s"] for r in runs), "qra_s": statistics.median(r["qra_s"] for r in runs),
            "ms_per_input": statistics.median(wall), "ms_min_max": f"{min(wall):.3g}-{max(wall):.3g}",
            "rss_at_start_mb": statistics.median(r["rss_at_start_mb"] for r in runs),
            "peak_after_stsg_mb": statistics.median(r["peak_after_stsg_mb"] for r in runs),
            "live_at_end_mb": statistics.median(r["live_at_end_mb"] for r in runs),
            "driver_cpu_ms_per_input": statistics.median(r["driver_cpu_s"] / n * 1000 for r in runs),
            "samples": runs[0]["samples"], "qra_parts": runs[0]["parts"],
        })
    base, top = rows[0], rows[-1]
    rss_ratio = top["driver_rss_mb"] / base["driver_rss_mb"]
    wall_ratio = top["ms_per_input"] / base["ms_per_input"]
    report("driver_scale", rows, {"repeats": args.repeats, "largest_repeats": args.largest_repeats, "sizes": sizes,
                                  "driver_rss_ratio": round(rss_ratio, 3), "wall_per_input_ratio": round(wall_ratio, 3)})
    label = f"{_k(top['inputs'])}_vs_{_k(base['inputs'])}"
    print(f"driver_rss_ratio_{label}={rss_ratio:.3f} wall_per_input_ratio_{label}={wall_ratio:.3f}")


def _k(n: int) -> str:
    return f"{n // 1000}k" if n % 1000 == 0 else str(n)


if __name__ == "__main__":
    main()
