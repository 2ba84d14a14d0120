"""Decoding with caps, the PyAV fallback, bad files, and shot splitting."""

import os

import numpy as np
import pytest

from step_ray.config import load_config
from step_ray.video.decode import DecodeError, decode_sampled, target_size
from step_ray.video.sampling import keyframe_times, sample_indices
from step_ray.video.shots import split_shots


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


def test_decode_real_clip_with_caps(real_video):
    cfg = load_config(None, ["video.sample_fps=5", "video.max_side=88", "video.max_frames=8"]).video
    d = decode_sampled(str(real_video), cfg)
    assert d.backend == "decord"
    assert d.frames.shape == (8, 72, 88, 3) and d.frames.dtype == np.uint8
    assert d.num_frames == 120 and abs(d.native_fps - 29.97) < 0.01
    assert d.times == sorted(d.times) and d.times[-1] <= d.duration
    assert d.frames.std() > 10  # real picture content, not a blank


def test_pyav_backend_agrees_with_decord(real_video):
    cfg = load_config(None, ["video.sample_fps=5", "video.max_frames=64"]).video
    a = decode_sampled(str(real_video), cfg)
    b = decode_sampled(str(real_video), load_config(None, ["video.sample_fps=5", "video.backend=pyav"]).video)
    assert b.backend == "pyav"
    assert len(a.times) == len(b.times)
    assert np.allclose(a.times, b.times, atol=0.05)
    # Same frames, up to decoder rounding.
    assert np.abs(a.frames.astype(int) - b.frames.astype(int)).mean() < 3


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
