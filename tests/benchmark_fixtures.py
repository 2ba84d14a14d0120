"""The benchmark fixtures of tests/data/benchmarks/ and the small videos they point at, made on the spot.

Each fixture folder holds a handful of invented questions in the benchmark's public file layout; this module
writes the videos those questions name, in the benchmark's video layout, leaving out the ones the fixtures
list as missing.
"""

from __future__ import annotations

from pathlib import Path

from step_ray.train.toy import write_video

DATA = Path(__file__).resolve().parent / "data" / "benchmarks"
FPS = 5

#: benchmark -> (relative video path, seconds, square colour, disc colour) of every video that exists
VIDEOS = {
    "nextqa": [("0001/1000000001.mp4", 12.0, "red", "blue"), ("0001/1000000002.mp4", 8.0, "green", "yellow"),
               ("0002/1000000003.mp4", 10.0, "cyan", "green")],
    "star": [("4HKT2.mp4", 8.0, "orange", "purple"), ("9QZ3M.mp4", 6.0, "pink", "blue")],
    "agqa": [("K1P3D.mp4", 4.0, "yellow", "red"), ("W7QX2.mp4", 4.0, "blue", "orange")],
}
INPUTS = {"nextqa": DATA / "nextqa" / "val.csv", "star": DATA / "star" / "STAR_val.json",
          "agqa": DATA / "agqa" / "test_balanced.txt"}


def write_videos(benchmark: str, root: Path) -> Path:
    """Write the videos of ``benchmark``'s fixture under ``root``; return ``root``."""
    for seed, (relative, seconds, square, disc) in enumerate(VIDEOS[benchmark]):
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        write_video(path, square, disc, seed=seed, seconds=seconds, fps=FPS, width=64, height=48)
    return root
