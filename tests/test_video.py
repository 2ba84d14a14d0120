"""Decoding with caps, the PyAV fallback, bad files, and shot splitting."""

import os

import numpy as np
import pytest

from step_ray.config import load_config
from step_ray.video.decode import DECODE_CHUNK, DecodeError, decode_sampled, open_sampled, target_size
from step_ray.video.sampling import keyframe_times, sample_indices
from step_ray.video.shots import choose_keyframes, frame_features, kmeans, split_shots


def test_sample_indices_rate_and_cap():
    assert sample_indices(100, 10.0, 5.0, 1000) == list(range(0, 100, 2))
    assert len(sample_indices(1000, 30.0, 30.0, 16)) == 16
    assert sample_indices(0, 30.0, 5.0, 16) == []
    assert sample_indices(10, 2.0, 5.0, 100) == list(range(10))  # never above the native rate


def test_keyframes_cover_the_shot():
    times = [i / 5 for i in range(20)]
    kf = keyframe_times(times, 0.0, 3.8, 1.0)
    assert len(kf) == 4 and kf == sorted(set(kf)) and all(t in times for t in kf)
    assert keyframe_times([1.0], 1.0, 1.0, 1.0) == [1.0]


@pytest.mark.parametrize("backend", ["decord", "pyav", "pyav-refs", "pyav-sparse"])
def test_decode_real_clip_with_caps(real_video, backend):
    cfg = load_config(None, ["video.sample_fps=5", "video.max_side=88", "video.max_frames=8",
                             f"video.backend={backend}"]).video
    d = decode_sampled(str(real_video), cfg)
    assert d.backend == backend
    assert d.frames.shape == (8, 72, 88, 3) and d.frames.dtype == np.uint8
    assert d.num_frames == 120 and abs(d.native_fps - 29.97) < 0.01
    assert d.times == sorted(d.times) and d.times[-1] <= d.duration
    assert d.frames.std() > 10  # real picture content, not a blank


def test_pyav_backend_agrees_with_decord(real_video):
    a = decode_sampled(str(real_video), load_config(None, ["video.sample_fps=5", "video.backend=decord"]).video)
    b = decode_sampled(str(real_video), load_config(None, ["video.sample_fps=5", "video.backend=pyav"]).video)
    assert (a.backend, b.backend) == ("decord", "pyav")
    assert len(a.times) == len(b.times)
    assert np.allclose(a.times, b.times, atol=0.05)
    # Same frames, up to decoder rounding.
    assert np.abs(a.frames.astype(int) - b.frames.astype(int)).mean() < 3


def test_sparse_decoding_takes_a_nearby_reference_frame(real_video):
    """Sparse mode skips non-reference frames: each sampled frame is at or at most a few frames after the
    exact one, its real time is reported, and the picture is nearly the same."""
    exact = decode_sampled(str(real_video), load_config(None, ["video.sample_fps=5", "video.backend=decord"]).video)
    sparse = decode_sampled(str(real_video), load_config(None, ["video.sample_fps=5", "video.backend=pyav-sparse"]).video)
    assert sparse.backend == "pyav-sparse" and len(sparse.times) == len(exact.times)
    late = np.array(sparse.times) - np.array(exact.times)
    assert (late >= -1e-6).all() and (late <= 3 / exact.native_fps + 1e-6).all()
    assert np.abs(sparse.frames.astype(int) - exact.frames.astype(int)).mean() < 12


def test_auto_backend_is_sparse_only_well_below_the_native_rate(real_video):
    assert open_sampled(str(real_video), load_config(None, ["video.sample_fps=5"]).video).info.backend == "pyav-refs"
    assert open_sampled(str(real_video), load_config(None, ["video.sample_fps=15"]).video).info.backend == "decord"


@pytest.mark.parametrize("backend", ["decord", "pyav", "pyav-refs", "pyav-sparse"])
def test_stream_yields_bounded_chunks_in_time_order(real_video, backend):
    stream = open_sampled(str(real_video), load_config(None, ["video.sample_fps=30", f"video.backend={backend}"]).video)
    sizes, times = [], []
    for chunk in stream:
        assert len(chunk.frames) == len(chunk.times)
        sizes.append(len(chunk.times))
        times += chunk.times
    assert max(sizes) <= DECODE_CHUNK and len(sizes) > 1
    assert times == sorted(times) and len(set(times)) == len(times)


@pytest.mark.parametrize("content", [b"", os.urandom(4096), b"hello, not a video\n" * 20])
def test_bad_files_raise_decode_error_with_reason(tmp_path, content):
    p = tmp_path / "bad.mp4"
    p.write_bytes(content)
    with pytest.raises(DecodeError, match="cannot decode video") as err:
        decode_sampled(str(p), load_config().video)
    assert "decord" in str(err.value) and "pyav" in str(err.value)


def test_truncated_file_decodes_what_is_there_or_says_why(tmp_path, real_video):
    data = real_video.read_bytes()
    p = tmp_path / "truncated.mp4"
    p.write_bytes(data[: len(data) // 2])
    try:
        d = decode_sampled(str(p), load_config().video)
    except DecodeError as err:
        assert "cannot decode video" in str(err)
    else:
        assert len(d.times) >= 1


def test_target_size_even_and_capped():
    assert target_size(1920, 1080, 320) == (320, 180)
    assert target_size(176, 144, 320) == (176, 144)
    w, h = target_size(333, 201, 100)
    assert w <= 100 and w % 2 == 0 and h % 2 == 0


def test_split_shots_finds_a_hard_cut():
    cfg = load_config(None, ["video.keyframe_fps=1"]).video
    rng = np.random.default_rng(0)
    a = np.full((10, 48, 64, 3), (40, 40, 40), np.uint8)
    b = np.full((10, 48, 64, 3), (200, 190, 60), np.uint8)
    frames = np.concatenate([a, b]) + rng.integers(0, 5, (20, 48, 64, 3), dtype=np.uint8)
    times = [i / 5 for i in range(20)]
    clips = split_shots(frames, times, cfg)
    assert [(c.start, c.end) for c in clips] == [(0.0, 1.8), (2.0, 3.8)]
    assert all(c.keyframe_times and set(c.keyframe_times) <= set(c.frame_times) for c in clips)
    assert [len(c.keyframe_times) for c in clips] == [2, 2]  # ceil(1.8 s x 1 keyframe/s)


def test_kmeans_separates_clusters_deterministically():
    rng = np.random.default_rng(1)
    x = np.concatenate([rng.normal(0, 0.05, (20, 3)), rng.normal(5, 0.05, (15, 3)), rng.normal(-5, 0.05, (10, 3))])
    labels = kmeans(x, 3)
    groups = [set(labels[:20]), set(labels[20:35]), set(labels[35:])]
    assert all(len(g) == 1 for g in groups) and len(set.union(*groups)) == 3
    assert np.array_equal(labels, kmeans(x, 3))


def test_keyframes_come_from_each_visual_cluster_and_avoid_blur():
    """A shot that shows three different views gets one keyframe in each; within a view, a blurred frame is
    never chosen."""
    import cv2

    rng = np.random.default_rng(0)
    views = [rng.integers(0, 255, (48, 64, 3), dtype=np.uint8) for _ in range(3)]
    frames, times = [], []
    for v, view in enumerate(views):
        for i in range(6):
            f = view.copy()
            if i == 2:
                f = cv2.GaussianBlur(f, (9, 9), 5)
            frames.append(f)
            times.append(round((v * 6 + i) * 0.2, 3))
    feats = [frame_features(f) for f in frames]
    chosen = choose_keyframes(times, np.stack([a for _, a, _ in feats]), np.array([s for _, _, s in feats]), 3)
    assert len(chosen) == 3
    assert sorted(int(round(t / 0.2)) // 6 for t in chosen) == [0, 1, 2]
    assert all(int(round(t / 0.2)) % 6 != 2 for t in chosen)
