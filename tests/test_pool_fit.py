"""The pool-fit preflight: a step whose actor pools cannot all start on a fixed-size Ray fails before any work,
naming the option to change; autoscaling clusters are not checked."""

import logging

import pytest

from step_ray.config import ConfigError, load_config
from step_ray.utils.pool_fit import Resources, check_pool_fit, cluster_autoscales

TWO_CPUS = Resources(cpus=2, gpus=0, node_cpus=2, node_gpus=0)


def _cfg(*overrides):
    return load_config(None, list(overrides))


def test_a_plan_that_fits_passes():
    cfg = _cfg("perception.pool.min_size=2", "perception.pool.max_size=2", "perception.pool.num_cpus=0.875")
    check_pool_fit(cfg, "perception.pool", "stsg.pool", resources=TWO_CPUS)  # 2 x 0.875 + 0.25 = 2


def test_pools_that_cannot_start_together_name_the_option_and_a_value_that_fits():
    cfg = _cfg("perception.pool.min_size=2", "perception.pool.max_size=2", "perception.pool.num_cpus=1")
    with pytest.raises(ConfigError) as err:
        check_pool_fit(cfg, "perception.pool", "stsg.pool", resources=TWO_CPUS)
    assert err.value.field_path == "perception.pool.num_cpus"
    text = str(err.value)
    assert "2.25 CPUs" in text and "Ray has 2" in text and "0.875 or less" in text and "ray.num_cpus" in text


def test_one_actor_larger_than_any_node_fails():
    cfg = _cfg("qra.pool.num_cpus=4")
    with pytest.raises(ConfigError, match=r"^qra\.pool\.num_cpus: one actor asks for 4 CPUs"):
        check_pool_fit(cfg, "qra.pool", resources=TWO_CPUS)


def test_gpus_are_checked_like_cpus():
    cfg = _cfg("perception.pool.num_gpus=0.5", "perception.pool.min_size=3", "perception.pool.max_size=3",
               "perception.pool.num_cpus=0.25")
    one_gpu = Resources(cpus=8, gpus=1, node_cpus=8, node_gpus=1)
    with pytest.raises(ConfigError) as err:
        check_pool_fit(cfg, "perception.pool", "stsg.pool", resources=one_gpu)
    assert err.value.field_path == "perception.pool.num_gpus" and "1.5 GPUs" in str(err.value)
    check_pool_fit(cfg, "perception.pool", "stsg.pool", resources=Resources(8, 2, 8, 2))


def test_unreachable_max_size_is_only_logged(caplog):
    cfg = _cfg("perception.pool.min_size=1", "perception.pool.max_size=2", "perception.pool.num_cpus=1")
    with caplog.at_level(logging.WARNING, logger="step_ray.utils.pool_fit"):
        check_pool_fit(cfg, "perception.pool", "stsg.pool", resources=TWO_CPUS)  # 1.25 at the start: fits
    assert "fewer actors than max_size" in caplog.text


def test_joined_clusters_may_autoscale_and_are_not_checked(monkeypatch):
    bad = _cfg("qra.pool.num_cpus=64", "qra.pool.min_size=64", "qra.pool.max_size=64")
    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:6379")
    assert cluster_autoscales(bad)
    check_pool_fit(bad, "qra.pool")  # returns before asking Ray anything
    assert not cluster_autoscales(_cfg("ray.address=local"))
    monkeypatch.delenv("RAY_ADDRESS")
    assert cluster_autoscales(_cfg("ray.address=auto")) and not cluster_autoscales(_cfg())
    check_pool_fit(bad, "qra.pool", use_ray=False)  # the sequential runner has no pools to fit


def test_the_stsg_step_fails_before_any_work(ray_session, tmp_path, synth_corpus):
    from step_ray.pipeline.steps import stsg_step

    cfg = _cfg("perception.pool.min_size=2", "perception.pool.max_size=2", "perception.pool.num_cpus=1")
    out = tmp_path / "stsg"
    with pytest.raises(ConfigError, match=r"^perception\.pool\.num_cpus: "):
        stsg_step(cfg, [str(synth_corpus["dir"] / "videos")], out)
    assert not out.exists() or not any(out.iterdir())


def test_the_cli_exits_2_with_one_line(ray_session, tmp_path, synth_corpus, capsys):
    from step_ray.cli import main

    code = main(["qra", "--input", str(synth_corpus["dir"] / "gt"), "--output", str(tmp_path / "qra"),
                 "qra.pool.min_size=3", "qra.pool.max_size=3"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("step-ray: error: qra.pool.num_cpus: ")
