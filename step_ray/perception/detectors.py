"""Object detectors behind one interface: frames in, per-frame :class:`Detections` out.

- :class:`ColorShapeDetector` segments saturated colour blobs with OpenCV and names their shape. It is exact
  on the synthetic world (plain backgrounds, palette colours) and needs no weights, so the demo's scene graphs
  are right without a trained detector.
- :class:`YoloDetector` runs ultralytics YOLO with weights from the config (a local ``.pt``; a model
  ``.yaml`` gives random weights, for tests). It batches frames and runs on the GPU when there is one.

Both name each box's colour, so the tracker and the graph builder treat them alike.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import cv2
import numpy as np

from step_ray.config import PerceptionConfig
from step_ray.perception.colors import PALETTE, color_name

SHAPES = ("circle", "square", "triangle")


@dataclass
class Detections:
    """Detections in one frame: boxes (x1, y1, x2, y2), confidences, class ids and colour names."""

    xyxy: np.ndarray  # (N, 4) float32
    conf: np.ndarray  # (N,) float32
    cls: np.ndarray  # (N,) int
    colors: list[str | None]

    def __len__(self) -> int:
        return len(self.conf)

    @staticmethod
    def empty() -> "Detections":
        return Detections(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0, int), [])


class Detector(Protocol):
    names: dict[int, str]
    source: str

    def detect(self, frames: np.ndarray) -> list[Detections]:
        """Detect objects in each RGB frame of ``frames`` (N, H, W, 3)."""
        ...


def box_middle(frame: np.ndarray, box: np.ndarray) -> np.ndarray:
    """The middle half of a box (its corners are mostly background), as a view of the frame."""
    x1, y1, x2, y2 = (float(v) for v in box)
    w, h = x2 - x1, y2 - y1
    return frame[int(y1 + h / 4): int(y2 - h / 4) + 1, int(x1 + w / 4): int(x2 - w / 4) + 1]


def box_color(frame: np.ndarray, box: np.ndarray) -> str | None:
    """Colour name of the saturated pixels in the middle of a box."""
    patch = box_middle(frame, box)
    if patch.size == 0:
        return None
    hsv = cv2.cvtColor(patch.reshape(-1, 1, 3), cv2.COLOR_RGB2HSV).reshape(-1, 3)
    vivid = patch.reshape(-1, 3)[hsv[:, 1] > 90]
    if len(vivid) == 0:
        return None
    return color_name(tuple(np.median(vivid, axis=0)))


class ColorShapeDetector:
    """Saturated-colour segmentation per palette hue, then a shape name from the blob's outline."""

    source = "detector:color"
    names = dict(enumerate(SHAPES))

    def __init__(self, cfg: PerceptionConfig):
        self.min_area = cfg.min_area
        self.color_names = list(PALETTE)
        hues = np.array([int(cv2.cvtColor(np.uint8([[rgb]]), cv2.COLOR_RGB2HSV)[0, 0, 0]) for rgb in PALETTE.values()])
        # Each OpenCV hue (0..179) maps to the palette colour nearest on the hue circle.
        d = np.abs(np.arange(180)[:, None] - hues[None, :])
        self._hue_to_color = np.argmin(np.minimum(d, 180 - d), axis=1).astype(np.uint8)

    def detect(self, frames: np.ndarray) -> list[Detections]:
        return [self._detect_one(f) for f in frames]

    def _detect_one(self, frame: np.ndarray) -> Detections:
        hsv = cv2.cvtColor(frame, cv2.COLOR_RGB2HSV)
        vivid = (hsv[..., 1] > 90) & (hsv[..., 2] > 60)
        labels = self._hue_to_color[hsv[..., 0]]
        boxes, confs, classes, colors = [], [], [], []
        for ci, name in enumerate(self.color_names):
            mask = ((labels == ci) & vivid).astype(np.uint8)
            if not mask.any():
                continue
            # A small opening removes compression speckle at the edges of other colours.
            mask = cv2.morphologyEx(mask, cv2.MORPH_OPEN, np.ones((3, 3), np.uint8))
            n, comp, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
            for label in range(1, n):  # label 0 is the background
                x, y, w, h, area = (int(v) for v in stats[label])
                if area < self.min_area:
                    continue
                blob = comp[y:y + h, x:x + w] == label
                shape, conf = classify_shape(blob, x, y, frame.shape[1], frame.shape[0])
                boxes.append([x, y, x + w, y + h])
                confs.append(conf)
                classes.append(SHAPES.index(shape))
                colors.append(name)
        if not boxes:
            return Detections.empty()
        return Detections(np.asarray(boxes, np.float32), np.asarray(confs, np.float32), np.asarray(classes, int), colors)


def shape_templates(w: int, h: int) -> dict[str, np.ndarray]:
    """Boolean masks of each shape filling a ``w x h`` box (triangles apex up, as the synthetic world draws)."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    u, v = (xx + 0.5) / w, (yy + 0.5) / h  # pixel centres in 0..1
    return {
        "square": np.ones((h, w), bool),
        "circle": (u - 0.5) ** 2 + (v - 0.5) ** 2 <= 0.25,
        "triangle": np.abs(u - 0.5) <= v / 2 + 0.5 / w,
    }


def classify_shape(blob: np.ndarray, x: int, y: int, width: int, height: int) -> tuple[str, float]:
    """Name a blob (its boolean mask inside its bounding box) by the shape template it overlaps best; the
    confidence is that overlap (IoU), lowered for blobs cut by the frame edge or squashed by an occluder,
    whose shape is a guess."""
    h, w = blob.shape
    ious = {}
    for name, tpl in shape_templates(w, h).items():
        inter = np.logical_and(blob, tpl).sum()
        ious[name] = inter / float(np.logical_or(blob, tpl).sum())
    shape = max(ious, key=ious.get)
    conf = float(np.clip(ious[shape], 0.05, 1.0))
    aspect = w / float(max(1, h))
    if x <= 1 or y <= 1 or x + w >= width - 1 or y + h >= height - 1 or not 0.6 < aspect < 1.6:
        conf *= 0.6
    return shape, conf


class YoloDetector:
    """ultralytics YOLO; model built in the actor (``setup``) from a local weights path or model yaml."""

    source = "detector:yolo"

    def __init__(self, cfg: PerceptionConfig, device: str):
        os.environ.setdefault("YOLO_OFFLINE", "1")
        from ultralytics import YOLO

        weights = cfg.yolo_weights
        if weights.endswith(".pt") and not Path(weights).is_file():
            # A bare "yolo11n.pt" would make ultralytics try a download, which fails offline with a vaguer message.
            raise FileNotFoundError(f"perception.yolo_weights: no such file: {weights}")
        self.model = YOLO(weights, task="detect")
        self.names = dict(self.model.names)
        self.cfg = cfg
        self.device = device

    def detect(self, frames: np.ndarray) -> list[Detections]:
        # ultralytics runs a list as one batch: bound it, so a long video cannot exhaust a shared GPU.
        results = []
        for i in range(0, len(frames), self.cfg.batch):
            results += self.model.predict([f[..., ::-1] for f in frames[i:i + self.cfg.batch]],  # BGR
                                          imgsz=self.cfg.imgsz, conf=self.cfg.conf, device=self.device, verbose=False)
        out = []
        for frame, r in zip(frames, results):
            b = r.boxes.cpu().numpy()
            xyxy = b.xyxy.astype(np.float32)
            out.append(Detections(xyxy, b.conf.astype(np.float32), b.cls.astype(int),
                                  [box_color(frame, box) for box in xyxy]))
        return out


def build_detector(cfg: PerceptionConfig, device: str) -> Detector:
    if cfg.detector == "color":
        return ColorShapeDetector(cfg)
    return YoloDetector(cfg, device)
