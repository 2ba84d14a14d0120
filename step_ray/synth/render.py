"""Pixels of the synthetic world: sprites, id masks, RGB frames and H.264 mp4 writing.

Drawing is aliased on purpose: every object pixel has exactly its palette colour (no blends with the
background), and an *id mask* drawn with the same sprites tells which object owns each pixel, so ground
truth knows exactly which part of an object is visible.
"""

from __future__ import annotations

import os
from fractions import Fraction
from pathlib import Path
from typing import Iterable

import av
import numpy as np

from step_ray.perception.colors import PALETTE
from step_ray.synth.world import Actor, Background

CRF = 18  # libx264 quality: palette colours keep their names through compression (checked by the tests)
PRESET = "veryfast"  # tiny frames encode in milliseconds; a slower preset buys nothing visible here


def sprite(shape: str, size: int) -> np.ndarray:
    """A ``size x size`` boolean mask of the shape, by pixel-centre tests (no anti-aliasing)."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64) + 0.5
    c = size / 2.0
    if shape == "circle":
        return (xx - c) ** 2 + (yy - c) ** 2 <= c * c
    if shape == "square":
        return np.ones((size, size), dtype=bool)
    if shape == "triangle":  # apex up, base on the bottom row; the half-pixel slack keeps the apex drawn
        return np.abs(xx - c) <= yy * (c / size) + 0.5
    raise ValueError(f"unknown shape {shape!r}")


def background_image(bg: Background, width: int, height: int) -> np.ndarray:
    """The ``(height, width, 3)`` uint8 backdrop of a scene."""
    x = (np.arange(width, dtype=np.float64) + 0.5) / width * 2 - 1  # -1..1 across the frame
    y = (np.arange(height, dtype=np.float64) + 0.5) / height * 2 - 1
    ramp = bg.ramp[0] * x[None, :] + bg.ramp[1] * y[:, None]  # (H, W)
    img = bg.level + ramp[:, :, None] + np.asarray(bg.tint, dtype=np.float64)[None, None, :]
    return np.clip(np.round(img), 0, 255).astype(np.uint8)


def draw_order(actors: list[Actor]) -> list[int]:
    """Back layer first; within a layer by actor index (same-layer actors rarely overlap: they collide)."""
    return sorted(range(len(actors)), key=lambda i: (actors[i].layer, i))


def render_masks(actors: list[Actor], positions: np.ndarray, width: int, height: int
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Id masks of a scene and per-actor pixel counts.

    Returns ``masks`` ``(frames, H, W)`` uint8 (0 = background, ``i + 1`` = actor ``i``), ``visible``
    ``(frames, actors)`` pixels of each actor in view (after occlusion and the frame edge) and ``in_frame``
    ``(frames, actors)`` pixels inside the frame ignoring occlusion; divide by :func:`sprite_areas` for
    fractions.
    """
    frames, n = positions.shape[0], len(actors)
    sprites = [sprite(a.obj.shape, a.obj.size) for a in actors]
    order = draw_order(actors)
    masks = np.zeros((frames, height, width), dtype=np.uint8)
    in_frame = np.zeros((frames, n), dtype=np.int64)
    for f in range(frames):
        mask = masks[f]
        for i in order:
            spr = sprites[i]
            s = spr.shape[0]
            # Top-left pixel of the sprite; rounding the box's corner keeps the shape identical every frame.
            x0 = int(np.floor(positions[f, i, 0] - s / 2.0 + 0.5))
            y0 = int(np.floor(positions[f, i, 1] - s / 2.0 + 0.5))
            fx0, fy0, fx1, fy1 = max(x0, 0), max(y0, 0), min(x0 + s, width), min(y0 + s, height)
            if fx0 >= fx1 or fy0 >= fy1:
                continue  # entirely outside the frame
            part = spr[fy0 - y0:fy1 - y0, fx0 - x0:fx1 - x0]
            mask[fy0:fy1, fx0:fx1][part] = i + 1
            in_frame[f, i] = int(part.sum())
    visible = np.stack([np.bincount(m.ravel(), minlength=n + 1)[1:] for m in masks]) if frames else \
        np.zeros((0, n), dtype=np.int64)
    return masks, visible, in_frame


def sprite_areas(actors: list[Actor]) -> np.ndarray:
    """Pixels of each actor's whole shape (the denominator of visibility)."""
    return np.array([int(sprite(a.obj.shape, a.obj.size).sum()) for a in actors], dtype=np.int64)


def mask_box(mask: np.ndarray, label: int) -> tuple[float, float, float, float] | None:
    """Tight box ``(x1, y1, x2, y2)`` of a label's pixels, ``x2``/``y2`` exclusive (as ``cv2.boundingRect``'s
    ``x + w``), or None if it has none."""
    ys, xs = np.nonzero(mask == label)
    if len(xs) == 0:
        return None
    return float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)


def compose(masks: np.ndarray, actors: list[Actor], bg_img: np.ndarray) -> np.ndarray:
    """RGB frames ``(frames, H, W, 3)`` uint8: the backdrop with each actor's pixels in its palette colour
    (an actor that changes colour has its new colour from its ``recolor`` frame on)."""
    lut = np.zeros((len(actors) + 1, 3), dtype=np.uint8)
    for i, a in enumerate(actors):
        lut[i + 1] = PALETTE[a.obj.color]
    frames = np.broadcast_to(bg_img, masks.shape + (3,)).copy()
    fg = masks > 0
    frames[fg] = lut[masks[fg]]
    for i, a in enumerate(actors):
        if a.recolor is not None:
            after = frames[a.recolor[0]:]
            after[masks[a.recolor[0]:] == i + 1] = PALETTE[a.recolor[1]]
    return frames


class Mp4Writer:
    """H.264 (libx264, yuv420p) mp4 writer that only shows the file under its name once it is complete.

    Frames go to ``<name>.tmp`` and are renamed on a clean :meth:`close`; an error removes the temp file, so
    an interrupted run never leaves a truncated video that a re-run would take for done.
    """

    def __init__(self, path: str | Path, width: int, height: int, fps: int, crf: int = CRF):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = self.path.with_name(self.path.name + ".tmp")
        self.frames = 0
        # bitexact: no library version string in the file, so equal frames give equal bytes whichever
        # libavformat build is loaded (decord's, when it is imported first, or PyAV's own).
        self._container = av.open(str(self.tmp), mode="w", format="mp4", options={"fflags": "+bitexact"})
        # One encoder thread and no threaded lookahead: only then is x264's output a pure function of the
        # frames (with the default sync-lookahead, repeated encodes of the same frames differed here now and
        # then, even with threads=1). Small frames need no more threads; parallelism is across videos.
        self._stream = self._container.add_stream(
            "libx264", rate=fps,
            options={"crf": str(crf), "preset": PRESET, "threads": "1", "x264-params": "sync-lookahead=0:mbtree=0"})
        self._stream.width, self._stream.height = width, height
        self._stream.pix_fmt = "yuv420p"
        self._stream.codec_context.time_base = Fraction(1, fps)

    def write(self, frames: Iterable[np.ndarray]) -> None:
        """Append RGB uint8 frames ``(H, W, 3)``."""
        for rgb in frames:
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
            frame.pts = self.frames
            for packet in self._stream.encode(frame):
                self._container.mux(packet)
            self.frames += 1

    def close(self) -> None:
        """Flush the encoder, close the file and move it into place."""
        for packet in self._stream.encode(None):
            self._container.mux(packet)
        self._container.close()
        os.replace(self.tmp, self.path)

    def abort(self) -> None:
        try:
            self._container.close()
        finally:
            self.tmp.unlink(missing_ok=True)

    def __enter__(self) -> "Mp4Writer":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()
