"""A tiny, self-contained QRA set with real H.264 videos, for training / evaluation smoke tests and benchmarks.

Each video shows a square and a disc of two different colours drifting on black. Questions ask about their
colours with 1, 2 or 3 reasoning steps, in the QRA record layout of the pipeline (``id, video_id, video_uri,
start, end, question, options, answer, answer_index, rationale, steps, family, program, path_nodes, seed,
split``); one video in four is held out as the test split. It is not the synthetic world of ``step_ray.synth``:
it only needs PyAV and numpy, and it is small enough to build inside a unit test.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (230, 40, 40), "orange": (240, 140, 30), "yellow": (230, 220, 40), "green": (40, 200, 60),
    "cyan": (40, 210, 210), "blue": (40, 80, 230), "purple": (150, 50, 200), "pink": (240, 120, 180),
}


def write_video(path: str | Path, square: str, disc: str, seed: int, seconds: float = 2.0, fps: int = 10,
                width: int = 128, height: int = 96) -> None:
    """An H.264 mp4 of a ``square``-coloured square and a ``disc``-coloured disc moving apart."""
    import av

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    sx, sy = rng.integers(4, width // 2 - 24), rng.integers(4, height - 24)
    cx, cy = rng.integers(width // 2 + 12, width - 12), rng.integers(12, height - 12)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for i in range(int(seconds * fps)):
            img = np.zeros((height, width, 3), np.uint8)
            x = int(sx + i) % (width - 20)
            img[sy:sy + 20, x:x + 20] = COLOURS[square]
            disc_mask = (xx - (cx - i // 2)) ** 2 + (yy - cy) ** 2 <= 10 ** 2
            img[disc_mask] = COLOURS[disc]
            for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def _questions(square: str, disc: str) -> list[tuple[int, str, str, str, list[str]]]:
    """(steps, family, question, answer, rationale) for one video."""
    return [
        (1, "attribute", "What colour is the square?", square,
         [f"The square is {square}. So the answer is {square}."]),
        (2, "relation", "What colour is the object to the right of the square?", disc,
         [f"The square is {square}.", f"The object right of the square is a {disc} circle. So the answer is {disc}."]),
        (3, "temporal", "What colour is the object that moves left, near the object that moves right?", disc,
         [f"The square moves right; it is {square}.", "The circle moves left, near the square.",
          f"The circle is {disc}. So the answer is {disc}."]),
    ]


def make_toy_qra(directory: str | Path, videos: int = 8, seed: int = 0, test_every: int = 4) -> Path:
    """Write ``videos`` mp4s and ``qra.parquet`` (3 questions per video) under ``directory``; its path."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    names = list(COLOURS)
    rows: list[dict[str, Any]] = []
    for v in range(videos):
        square, disc = rng.sample(names, 2)
        uri = directory / f"toy_{v:03d}.mp4"
        write_video(uri, square, disc, seed=seed * 1000 + v)
        split = "test" if test_every and v % test_every == test_every - 1 else "train"
        for steps, family, question, answer, rationale in _questions(square, disc):
            distractors = rng.sample([c for c in names if c not in (square, disc)], 2)
            other = disc if answer == square else square  # the other object's colour: a hard distractor
            options = [answer, other, *distractors]
            rng.shuffle(options)
            rows.append({
                "id": f"toy-{v:03d}-{steps}", "video_id": f"toy_{v:03d}", "video_uri": str(uri),
                "start": 0.0, "end": 2.0, "question": question, "options": options, "answer": answer,
                "answer_index": options.index(answer), "rationale": rationale, "steps": steps, "family": family,
                "program": family, "path_nodes": [f"obj:{square}", f"obj:{disc}"][: max(1, steps - 1)],
                "seed": seed, "split": split,
            })
    path = directory / "qra.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


if __name__ == "__main__":  # python -m step_ray.train.toy DIR [VIDEOS]: the QRA set the tiny configs train on
    import sys

    target = make_toy_qra(sys.argv[1] if len(sys.argv) > 1 else "runs/toy",
                          videos=int(sys.argv[2]) if len(sys.argv) > 2 else 16)
    print(target)
