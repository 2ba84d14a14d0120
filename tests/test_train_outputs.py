"""Where a training run's metrics go besides its folder: MLflow (a real file store, read back with MLflow's
client). `step-ray train --output s3://...` logging to MLflow, interrupted and resumed from the bucket, runs in
tests/test_faults.py."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from step_ray.config import ConfigError, load_config

ROOT = Path(__file__).resolve().parents[1]
TINY_RUN = ["train.num_workers=2", "train.cpus_per_worker=0.5", "train.data.num_cpus=0.5", "train.progress=false",
            "train.batch_size=2", "train.lora.r=4", "train.log_every=1", "train.warmup_steps=0"]


@pytest.fixture(scope="module")
def toy_qra(tmp_path_factory):
    from step_ray.train.toy import make_toy_qra

    return make_toy_qra(tmp_path_factory.mktemp("toy_outputs"), videos=8, seed=2)


# ------------------------------------------------------------------------------------------------ MLflow


def test_mlflow_fields_params_and_uris():
    from step_ray.train.tracking import default_run_name, flat_params, resolve_tracking_uri

    with pytest.raises(ConfigError, match=r"^train\.mlflow\.experiment: must not be empty"):
        load_config(None, ["train.mlflow.experiment= "])
    with pytest.raises(ConfigError, match=r"^train\.mlflow\.tracking_uri: must not start or end with spaces"):
        load_config(None, ["train.mlflow.tracking_uri=' http://x'"])
    params = flat_params(load_config(None, ["train.lr=0.005", "train.lora.r=4"]))
    assert params["train.lr"] == "0.005" and params["train.lora.r"] == "4" and params["train.use_gpu"] == "false"
    assert json.loads(params["train.lora.target_modules"])[0] == "q_proj" and params["model.name_or_path"] == "tiny"
    assert all(len(v) <= 6000 for v in params.values())  # MLflow's limit on a parameter's value
    # Local stores are made absolute on the driver (the controller does not share its working directory).
    assert resolve_tracking_uri("file:mlruns") == resolve_tracking_uri("mlruns") == (Path.cwd() / "mlruns").as_uri()
    for uri in ("http://mlflow:5000", "databricks", "file:///abs/mlruns", "sqlite:////abs/m.db"):
        assert resolve_tracking_uri(uri) == uri
    assert default_run_name("s3://bucket/run") == "bucket/run"
    assert default_run_name("/x/runs/demo/round_1/train") == "round_1/train"


def test_mlflow_configured_but_not_installed_is_refused_before_any_work(tmp_path):
    # sys.modules["mlflow"] = None: what importing it gives when it is not installed.
    script = "import sys; sys.modules['mlflow'] = None; from step_ray.cli import main; sys.exit(main())"
    args = ["train", "--input", str(tmp_path / "no-such-qra"), "--output", str(tmp_path / "out"),
            f"train.mlflow.tracking_uri=file:{tmp_path}/mlruns"]
    proc = subprocess.run([sys.executable, "-c", script, *args], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    err = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(err) == 1, proc.stderr
    assert err[0].startswith("step-ray: error: train.mlflow.tracking_uri: is set but MLflow is not installed")
    assert "pip install 'step-ray[mlflow]'" in err[0]
    assert not (tmp_path / "out").exists() and not (tmp_path / "mlruns").exists()  # refused before the QRA input


def test_mlflow_callback_logs_rank0_reports_with_the_drivers_settings(tmp_path, monkeypatch):
    """The callback as the controller gets it (pickled, in a process of its own whose environment has no MLflow
    settings): the driver's MLFLOW_* settings travel with it; rank 0's numeric figures are logged at their step,
    a report without a step is passed over. A store that refuses the run is one line naming the field. (The
    whole path, a real Ray Train run into MLflow, is the object-store test below.)"""
    import pickle

    from mlflow import MlflowClient

    from step_ray.train.tracking import MlflowRun

    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3 keeps its file store behind this switch
    cfg = load_config(None, [f"train.mlflow.tracking_uri={tmp_path}/mlruns", "train.mlflow.run_name=unit"])
    run = MlflowRun.start(cfg, str(tmp_path / "out"), "step-ray-train")
    (tmp_path / "callback.pkl").write_bytes(pickle.dumps(run.callback()))
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE")
    # The last report gathers two log windows (the workers report at most once per Ray Train poll): both logged.
    windows = [{"step": 2, "loss": 2.0, "lr": 1e-3}, {"step": 3, "loss": 1.5, "lr": 1e-3}]
    reports = [[{"step": 1, "loss": 2.5, "lr": 1e-3, "time": 1.7e9, "done": True}, {"step": 1, "loss": 9.0}],
               [{"loss": 1.0}], [{**windows[-1], "windows": windows}]]
    script = ("import pickle, sys\n"
              "callback = pickle.loads(open(sys.argv[1], 'rb').read())\n"
              f"for metrics in {reports!r}:\n"
              "    callback.after_report(None, metrics, None)\n")
    controller = subprocess.run([sys.executable, "-c", script, str(tmp_path / "callback.pkl")], capture_output=True,
                                text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert controller.returncode == 0 and "not logged" not in controller.stderr, controller.stderr[-2000:]
    run.end("FINISHED")
    client = MlflowClient(tracking_uri=run.tracking_uri)
    assert [(m.step, m.value) for m in client.get_metric_history(run.run_id, "loss")] == [(1, 2.5), (2, 2.0), (3, 1.5)]
    assert client.get_metric_history(run.run_id, "loss")[0].timestamp == 1_700_000_000_000
    logged = client.get_run(run.run_id)
    assert set(logged.data.metrics) == {"loss", "lr"} and logged.info.run_name == "unit"
    assert logged.info.status == "FINISHED" and logged.data.params["train.steps"] == "200"

    # MLflow caches a store per URI: a fresh one shows the refusal (the switch is off again).
    refused = load_config(None, [f"train.mlflow.tracking_uri={tmp_path}/refused"])
    with pytest.raises(ConfigError, match=r"^train\.mlflow\.tracking_uri: file://.*: MLflow refused to open a run: "
                                          r".*MLFLOW_ALLOW_FILE_STORE=true"):
        MlflowRun.start(refused, str(tmp_path / "out"), "step-ray-train")


@pytest.mark.ray
def test_mlflow_run_ends_failed_or_killed_with_the_training(ray_session, toy_qra, tmp_path, monkeypatch):
    """Once the driver has opened the MLflow run, an error in training or export ends it FAILED and Ctrl-C
    KILLED (the training itself is replaced by the failure here)."""
    from mlflow import MlflowClient

    from step_ray.train import trainer

    monkeypatch.setenv("STEP_RAY_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    store = f"file:{tmp_path}/mlruns"
    cfg = load_config(None, TINY_RUN + [f"train.mlflow.tracking_uri={store}", "train.mlflow.experiment=ends"])
    client = MlflowClient(tracking_uri=store)
    for raised, status in ((RuntimeError("export broke"), "FAILED"), (KeyboardInterrupt(), "KILLED")):
        def broken(*args, raised=raised, **kwargs):
            raise raised

        monkeypatch.setattr(trainer, "_train_and_export", broken)
        with pytest.raises(type(raised)):
            trainer.run_training(cfg, str(toy_qra), tmp_path / f"out_{status}")
        experiment = client.get_experiment_by_name("ends")
        (ended,) = client.search_runs([experiment.experiment_id], f"tags.step_ray.output LIKE '%out_{status}'")
        assert ended.info.status == status and ended.data.params["train.lora.r"] == "4"
        assert ended.data.tags["step_ray.error"].startswith(type(raised).__name__)
