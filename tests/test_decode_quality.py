"""The sparse decoding paths against full decoding: ``pyav-refs`` gives full decoding's frames exactly (what lets
``video.backend: auto`` use it), ``pyav-sparse`` is faster and lossy; PSNR, lateness and graph agreement."""

import copy
from fractions import Fraction

import numpy as np
import pytest

from step_ray.config import load_config
from step_ray.video.decode import decode_sampled, open_sampled
from step_ray.video.quality import PSNR_IDENTICAL, frame_quality, psnr


@pytest.fixture(scope="module")
def bframe_video(tmp_path_factory):
    """3 s of 30 fps H.264 of a textured pattern that moves, with grain (deblocking and skipped frames both
    change pixels), in a fixed GOP: I/P every third frame, two non-reference B-frames between (display order
    I B B P B B P ...), so sampling at 6 fps (every 5th frame) wants B-frames: 5, 10, 20, 25, ..."""
    import av

    path = tmp_path_factory.mktemp("bframes") / "moving.mp4"
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:144, 0:192]
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=30)
        stream.width, stream.height, stream.pix_fmt = 192, 144, "yuv420p"
        stream.options = {"crf": "30", "preset": "medium",
                          "x264-params": "bframes=2:b-adapt=0:b-pyramid=none:keyint=45:scenecut=0"}
        stream.time_base = Fraction(1, 30)
        for i in range(90):
            img = np.stack([(xx * 3 + i * 5) % 256, (yy * 2 + i * 3) % 256, ((xx + yy) + i * 7) % 256], -1)
            img = np.clip(img + rng.normal(0, 8, img.shape), 0, 255).astype(np.uint8)
            frame = av.VideoFrame.from_ndarray(img, format="rgb24")
            frame.pts = i
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    with av.open(str(path)) as c:
        kinds = [int(f.pict_type) for f in c.decode(video=0)]  # FFmpeg's AVPictureType: 1 I, 2 P, 3 B
    assert sum(kinds[i] == 3 for i in range(0, 90, 5)) >= 8, kinds  # 6 fps wants B-frames: what gets skipped
    return path


def _video(backend: str, fps: float = 5):
    return load_config(None, [f"video.sample_fps={fps}", f"video.backend={backend}"]).video


@pytest.mark.parametrize("fps", [6, 1])
def test_refs_gives_full_decodings_frames_exactly(bframe_video, fps):
    full = decode_sampled(str(bframe_video), _video("pyav", fps))
    refs = decode_sampled(str(bframe_video), _video("pyav-refs", fps))
    exact = decode_sampled(str(bframe_video), _video("decord", fps))
    assert refs.backend == "pyav-refs"
    assert refs.times == full.times == exact.times  # the sampled indices themselves, none late
    assert np.array_equal(refs.frames, full.frames)  # pixel for pixel
    q = frame_quality(str(bframe_video), _video("pyav-refs", fps))
    assert q.identical == q.frames == len(refs.times) and q.mean_psnr == PSNR_IDENTICAL and q.late_frames_max == 0


def test_sparse_is_lossy_and_sometimes_late(bframe_video):
    q = frame_quality(str(bframe_video), _video("pyav-sparse", 6))
    assert q.backend == "pyav-sparse" and q.frames == 18
    assert q.identical < q.frames and 20 < q.mean_psnr < PSNR_IDENTICAL  # deblocking skipped: close, not equal
    assert q.late_frames_max >= 1  # a wanted non-reference frame was skipped and the next one taken


def test_auto_keeps_only_the_exact_sparse_path(bframe_video):
    assert open_sampled(str(bframe_video), _video("auto", 5)).info.backend == "pyav-refs"  # 30 / 5 >= 3
    assert open_sampled(str(bframe_video), _video("auto", 15)).info.backend == "decord"  # 30 / 15 < 3


def test_psnr():
    a = np.zeros((4, 4, 3), np.uint8)
    assert psnr(a, a) == PSNR_IDENTICAL
    b = a.copy()
    b[0, 0, 0] = 255  # MSE = 255^2 / 48
    assert psnr(a, b) == pytest.approx(10 * np.log10(48))
    with pytest.raises(ValueError):
        psnr(a, np.zeros((2, 2, 3), np.uint8))


def test_object_agreement_matches_boxes_at_nearby_times(synth_corpus):
    from step_ray.stsg import schema
    from step_ray.stsg.scoring import object_agreement

    gt = schema.loads((synth_corpus["dir"] / "gt" / "synth_0000.stsg.json").read_text())
    late = copy.deepcopy(gt)  # the same boxes, one frame (1/30 s) later: what a late decoder's graph looks like
    for n, d in late.nodes(data=True):
        if d.get("type") == "object":
            d["track"] = [[r[0] + 1 / 30, *r[1:]] for r in d["track"]]
    objects = len(schema.nodes_of(gt, "object"))
    assert object_agreement(gt, gt).f1 == 1.0 and object_agreement(gt, gt).tp == objects
    assert object_agreement(late, gt).tp == 0  # no shared sampled time: nothing matches
    near = object_agreement(late, gt, time_tol=0.1)  # half of a 5 fps sampling interval
    assert (near.tp, near.fp, near.fn) == (objects, 0, 0)
