"""Detectors and tracking: the colour+shape detector on drawn frames, and ultralytics YOLO + tracker."""

import cv2
import numpy as np
import pytest
import torch

from step_ray.config import load_config
from step_ray.perception.colors import PALETTE, color_name
from step_ray.perception.detectors import SHAPES, ColorShapeDetector, YoloDetector
from step_ray.perception.tracking import track_clip
from step_ray.perception.tracks import Clip


def draw(frame, shape, color, cx, cy, r=14):
    rgb = PALETTE[color]
    if shape == "circle":
        cv2.circle(frame, (cx, cy), r, rgb, -1)
    elif shape == "square":
        cv2.rectangle(frame, (cx - r, cy - r), (cx + r, cy + r), rgb, -1)
    else:
        pts = np.array([[cx, cy - r], [cx - r, cy + r], [cx + r, cy + r]], np.int32)
        cv2.fillPoly(frame, [pts], rgb)


def crossing_frames(n=12):
    """A red circle moving right crosses a blue square moving left (the circle passes in front)."""
    frames = []
    for i in range(n):
        f = np.full((160, 224, 3), 45, np.uint8)
        draw(f, "square", "blue", 190 - 12 * i, 80)
        draw(f, "circle", "red", 30 + 12 * i, 84)
        draw(f, "triangle", "green", 110, 30)
        frames.append(f)
    return np.stack(frames), [i / 5 for i in range(n)]


def test_color_names_of_palette():
    assert all(color_name(rgb) == name for name, rgb in PALETTE.items())
    assert color_name((128, 128, 128)) is None


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("color", ["red", "yellow", "cyan", "purple"])
def test_color_shape_detector_names_and_boxes(shape, color):
    f = np.full((120, 160, 3), 50, np.uint8)
    draw(f, shape, color, 80, 60, r=16)
    det = ColorShapeDetector(load_config().perception).detect(f[None])[0]
    assert len(det) == 1
    assert SHAPES[det.cls[0]] == shape and det.colors[0] == color
    assert np.allclose(det.xyxy[0], [64, 44, 97, 77], atol=2)


def test_tracker_keeps_identities_through_a_crossing():
    frames, times = crossing_frames()
    det = ColorShapeDetector(load_config().perception)
    clip = Clip(0, times[0], times[-1], times, times[::5])
    tracks = track_clip(clip, frames, times, det.detect(frames), det.names, "bytetrack", det.source)
    named = {(t.color, t.category): t for t in tracks}
    assert set(named) == {("red", "circle"), ("blue", "square"), ("green", "triangle")}
    assert len(tracks) == 3, "an identity switch or a split track"
    red = named[("red", "circle")]
    xs = [(red.boxes[t][0] + red.boxes[t][2]) / 2 for t in red.times]
    assert xs == sorted(xs) and len(red.times) >= len(times) - 2  # moving right, seen (almost) throughout


@pytest.mark.parametrize("kind", ["bytetrack", "botsort"])
def test_both_trackers_run(kind):
    frames, times = crossing_frames(6)
    det = ColorShapeDetector(load_config().perception)
    clip = Clip(0, times[0], times[-1], times, times)
    tracks = track_clip(clip, frames, times, det.detect(frames), det.names, kind, det.source)
    assert len(tracks) == 3 and all(kind in t.source for t in tracks)


def biased_yolo(cfg) -> YoloDetector:
    """A random-weight YOLO (from yolo11n.yaml, no download) whose class-0 score is raised on the coarsest
    level, so it returns boxes that the tracker can follow (random weights alone detect nothing)."""
    y = YoloDetector(cfg.perception, "cpu")
    head = y.model.model.model[-1]
    with torch.no_grad():
        head.cv3[-1][-1].bias[0] = 6.0
    return y


def test_yolo_random_weights_detect_and_track(real_video):
    from step_ray.video.decode import decode_sampled

    cfg = load_config(None, ["perception.detector=yolo", "perception.imgsz=192", "perception.conf=0.5",
                             "video.sample_fps=5", "video.max_frames=8"])
    y = biased_yolo(cfg)
    assert len(y.names) == 80  # COCO classes from the yaml
    decoded = decode_sampled(str(real_video), cfg.video)
    dets = y.detect(decoded.frames)
    assert len(dets) == len(decoded.times) and all(len(d) > 0 for d in dets)
    clip = Clip(0, decoded.times[0], decoded.times[-1], decoded.times, decoded.times[::4])
    tracks = track_clip(clip, decoded.frames, decoded.times, dets, y.names, "bytetrack", y.source)
    assert tracks and all(t.category == y.names[0] for t in tracks)
    assert max(len(t.boxes) for t in tracks) >= 4  # identities persist over frames


def test_yolo_missing_weights_file_is_a_clear_error():
    cfg = load_config(None, ["perception.detector=yolo", "perception.yolo_weights=/nonexistent/yolo.pt"])
    with pytest.raises(FileNotFoundError, match="perception.yolo_weights"):
        YoloDetector(cfg.perception, "cpu")
