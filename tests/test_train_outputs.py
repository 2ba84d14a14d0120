"""Where a training run's outputs go besides its folder: MLflow (a real file store, read back with MLflow's
client) and an object store (`step-ray train --output s3://...` against a local moto server, resumed from the
bucket's latest checkpoint)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
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
    reports = [[{"step": 1, "loss": 2.5, "lr": 1e-3, "time": 1.7e9, "done": True}, {"step": 1, "loss": 9.0}],
               [{"loss": 1.0}], [{"step": 2, "loss": 2.0, "lr": 1e-3}]]
    script = ("import pickle, sys\n"
              "callback = pickle.loads(open(sys.argv[1], 'rb').read())\n"
              f"for metrics in {reports!r}:\n"
              "    callback.after_report(None, metrics, None)\n")
    controller = subprocess.run([sys.executable, "-c", script, str(tmp_path / "callback.pkl")], capture_output=True,
                                text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert controller.returncode == 0 and "not logged" not in controller.stderr, controller.stderr[-2000:]
    run.end("FINISHED")
    client = MlflowClient(tracking_uri=run.tracking_uri)
    assert [(m.step, m.value) for m in client.get_metric_history(run.run_id, "loss")] == [(1, 2.5), (2, 2.0)]
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


# ------------------------------------------------------------------------------------------------ object store


def _bucket_files(fs, prefix: str) -> list[str]:
    import pyarrow.fs as pafs

    return sorted(i.path[len(prefix) + 1:] for i in fs.get_file_info(pafs.FileSelector(prefix, recursive=True))
                  if i.type == pafs.FileType.File)


@pytest.mark.own_ray
def test_train_output_on_s3_writes_checkpoints_exports_and_resumes_from_the_bucket(s3_server, toy_qra, tmp_path,
                                                                                   monkeypatch):
    """`step-ray train --output s3://bucket/run` (its own embedded Ray, the moto server's endpoint from the
    environment): Ray Train's checkpoints, the adapter, its base, the summary and the TensorBoard files land in
    the bucket, nothing on the local disk; a re-run with more steps resumes from the bucket's checkpoint. Both
    runs log to an MLflow file store: the train section as params, `loss` at every reported step (equal to the
    run's history), FINISHED."""
    import pyarrow.fs as pafs
    from mlflow import MlflowClient

    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3 keeps its file store behind this switch
    fs = pafs.S3FileSystem(endpoint_override=f"http://127.0.0.1:{s3_server}", allow_bucket_creation=True)
    fs.create_dir("trainbucket")
    ray_tmp = Path("/tmp") / f"srs{os.getpid()}"  # Ray's socket paths must stay short
    shutil.rmtree(ray_tmp, ignore_errors=True)
    (tmp_path / "tmp").mkdir()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "RAY_TMPDIR": str(ray_tmp), "TMPDIR": str(tmp_path / "tmp"),
           "STEP_RAY_CACHE": str(tmp_path / "cache"), "RAY_ADDRESS": "", "RAY_USAGE_STATS_ENABLED": "0"}
    store = (tmp_path / "tmp" / "mlruns").as_uri()
    args = ["train", "--input", str(toy_qra), "--output", "s3://trainbucket/run", "ray.num_cpus=2", *TINY_RUN,
            "train.checkpoint_every=2", "train.num_workers=1", "train.lr=0.005", f"train.mlflow.tracking_uri={store}"]

    def train(steps: int) -> dict:
        proc = subprocess.run([sys.executable, "-m", "step_ray.cli", *args, f"train.steps={steps}"], cwd=tmp_path,
                              env=env, capture_output=True, text=True, timeout=400)
        assert proc.returncode == 0, proc.stderr[-3000:]
        with fs.open_input_stream("trainbucket/run/train_summary.json") as f:
            return json.loads(f.read())

    try:
        started = time.perf_counter()
        first = train(2)
        print(f"s3 train: first run {time.perf_counter() - started:.0f} s, startup {first['startup_seconds']:.0f} s, "
              f"fit {first['wall_seconds']:.0f} s")
        files = _bucket_files(fs, "trainbucket/run")
        assert {"adapter/adapter_model.safetensors", "adapter/adapter_config.json", "adapter/step_ray_model.json",
                "base/config.json", "train_summary.json"} <= set(files), files
        assert [f for f in files if f.startswith("tensorboard/events.out.tfevents.")]
        assert first["steps"] == 2 and first["start_step"] == 0
        assert first["checkpoint"].startswith("s3://trainbucket/run/checkpoints/step-ray-train/checkpoint_")
        assert first["adapter_dir"] == "s3://trainbucket/run/adapter" and first["base_dir"] == "s3://trainbucket/run/base"
        checkpoint = first["checkpoint"][len("s3://"):]
        assert {"state.json", "adapter/adapter_model.safetensors"} <= set(_bucket_files(fs, checkpoint))
        with fs.open_input_stream("trainbucket/run/adapter/adapter_config.json") as f:
            assert json.loads(f.read())["base_model_name_or_path"] == "s3://trainbucket/run/base"

        second = train(3)
        assert second["start_step"] == 2 and second["steps"] == 3 and second["stream_start"] > 0
        assert [h["step"] for h in second["history"]] == [1, 2, 3]
        events = [f for f in _bucket_files(fs, "trainbucket/run") if f.startswith("tensorboard/")]
        assert len(events) == 2  # the re-run's event file beside the first run's, not replacing it

        # MLflow: a run per call, the second one's metrics continuing at the checkpoint's step.
        client = MlflowClient(tracking_uri=store)
        runs = client.search_runs([client.get_experiment_by_name("step-ray").experiment_id], order_by=["start_time"])
        assert [r.info.run_id for r in runs] == [first["mlflow_run_id"], second["mlflow_run_id"]]
        for run, summary, steps in ((runs[0], first, [1, 2]), (runs[1], second, [3])):
            assert run.info.status == "FINISHED" and run.info.run_name == "trainbucket/run"
            assert run.data.tags["step_ray.output"] == "s3://trainbucket/run"
            params = run.data.params
            assert params["train.steps"] == str(steps[-1]) and params["train.lr"] == "0.005"
            assert params["train.lora.r"] == "4" and params["model.name_or_path"] == "tiny"
            loss = client.get_metric_history(run.info.run_id, "loss")
            assert [m.step for m in loss] == steps
            assert [m.value for m in loss] == pytest.approx([h["loss"] for h in summary["history"][-len(steps):]])
            assert {"loss_answer", "loss_rationale", "lr", "samples_per_s", "tokens_per_s"} <= set(run.data.metrics)
            assert not {"step", "time", "first_step_time"} & set(run.data.metrics)

        # Nothing on the local disk: no "s3:" folder under the working directory, no staging folder left behind.
        assert sorted(p.name for p in tmp_path.iterdir()) == ["cache", "tmp"]
        assert not list((tmp_path / "tmp").glob("step-ray-stage-*"))  # (the MLflow store is there)
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)


SELF_TRAIN_TINY = ["synth.videos=8", "synth.seed=5", "qra.samples_per_video=6", "train.steps=2", "train.batch_size=2",
                   "train.checkpoint_every=2", "train.log_every=1", "train.num_workers=1", "train.progress=false",
                   "train.lora.enabled=true", "model.frames=2", "eval.batch_size=8", "ray.num_cpus=2",
                   "pretrain.enabled=false"]


@pytest.mark.own_ray
def test_self_train_run_dir_on_s3_lands_in_the_bucket_and_resumes_from_it(s3_server, tmp_path):
    """`step-ray self-train run.output_dir=s3://bucket/run` (one round, its own embedded Ray, the moto server's
    endpoint from the environment): the corpus, the round's graphs, QRA parts, checkpoints and exports, the
    evaluations, the report with its plots and the summary are objects in the bucket, and nothing is written to
    the working directory (only under $TMPDIR and the cache). A re-run finds every stage done in the bucket and
    trains nothing."""
    import pyarrow.fs as pafs

    fs = pafs.S3FileSystem(endpoint_override=f"http://127.0.0.1:{s3_server}", allow_bucket_creation=True)
    fs.create_dir("selftrain")
    ray_tmp = Path("/tmp") / f"srst{os.getpid()}"  # Ray's socket paths must stay short
    shutil.rmtree(ray_tmp, ignore_errors=True)
    (tmp_path / "tmp").mkdir()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "RAY_TMPDIR": str(ray_tmp), "TMPDIR": str(tmp_path / "tmp"),
           "STEP_RAY_CACHE": str(tmp_path / "cache"), "RAY_ADDRESS": "", "RAY_USAGE_STATS_ENABLED": "0"}
    args = ["self-train", "--config", str(ROOT / "configs" / "demo.yaml"), "run.output_dir=s3://selftrain/run",
            *SELF_TRAIN_TINY]

    def self_train() -> tuple[dict, str]:
        proc = subprocess.run([sys.executable, "-m", "step_ray.cli", *args], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=900)
        assert proc.returncode == 0, proc.stderr[-3000:] + proc.stdout[-3000:]
        with fs.open_input_stream("selftrain/run/summary.json") as f:
            return json.loads(f.read()), proc.stdout

    def read(key: str) -> bytes:
        with fs.open_input_stream(f"selftrain/run/{key}") as f:
            return f.read()

    try:
        started = time.perf_counter()
        summary, _ = self_train()
        print(f"s3 self-train: first run {time.perf_counter() - started:.0f} s")
        files = set(_bucket_files(fs, "selftrain/run"))
        expected = {"config.yaml", "summary.json", "report.md", "report.html", "plots/accuracy_by_steps.png",
                    "plots/loss.png", "corpus/stage.json", "corpus/manifest.json", "corpus/videos/synth_0000.mp4",
                    "corpus/gt/synth_0000.stsg.json", "round_1/stsg/stage.json", "round_1/stsg/summary.json",
                    "round_1/stsg/synth_0000.stsg.json", "round_1/qra/stage.json", "round_1/qra/stats.json",
                    "round_1/qra/card.md", "round_1/qra/part-00000.parquet", "round_1/train/stage.json",
                    "round_1/train/train_summary.json", "round_1/train/adapter/adapter_model.safetensors",
                    "round_1/train/base/config.json", "round_1/eval/base.json", "round_1/eval/base_blank.json",
                    "round_1/eval/trained.json", "round_1/eval/trained_blank.json",
                    "round_1/eval/trained_train_split.json", "round_1/eval/train_split/stage.json"}
        assert expected <= files, sorted(expected - files)
        assert [f for f in files if f.startswith("round_1/stsg/results/")]
        assert [f for f in files if f.startswith("round_1/train/checkpoints/step-ray-train/checkpoint_")]
        (r1,) = summary["rounds"]
        assert summary["run_dir"] == "s3://selftrain/run" and r1["dir"] == "s3://selftrain/run/round_1"
        assert r1["stsg"]["ok"] == 8 and r1["qra"]["samples"] > 0 and r1["train"]["steps"] == 2
        assert r1["train"]["adapter_dir"] == "s3://selftrain/run/round_1/train/adapter"
        trained = json.loads(read("round_1/eval/trained.json"))
        assert trained["n"] == r1["eval_base"]["base"]["n"] > 0 and trained["model"].startswith(
            "adapter:s3://selftrain/run/round_1/train")
        assert json.loads(read("round_1/eval/trained_blank.json"))["vision"] == "blank"
        report = read("report.md").decode()
        assert "Run directory: `s3://selftrain/run`" in report and "| model 1 |" in report
        assert "data:image/png;base64," in read("report.html").decode()
        assert len(read("plots/accuracy_by_steps.png")) > 1000
        assert {"round 1: stsg", "round 1: qra", "round 1: train"} <= set(summary["seconds"])

        # A re-run reads every stage's record back from the bucket: nothing is mined, trained or scored again.
        again, out = self_train()
        assert "round 1: train: done before, skipped" in out and "synth: done before, skipped" in out
        assert not again["seconds"], again["seconds"]

        # Nothing on the local disk but temporary files and the cache: no "s3:" folder, no run directory, no
        # staging folder left behind.
        assert sorted(p.name for p in tmp_path.iterdir()) == ["cache", "tmp"]
        assert not list((tmp_path / "tmp").glob("step-ray-stage-*"))
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)


@pytest.mark.own_ray
def test_ablate_and_its_pretrained_base_on_s3(s3_server, tmp_path):
    """`step-ray ablate --output s3://...` with `pretrain.output=s3://...` (one run of the grid, tiny sizes):
    the base is pretrained into the bucket and every later step loads it from there (copied to $TMPDIR); the
    mining, the run, its evaluations and the ablation report are objects in the bucket, nothing is written to
    the working directory; a re-run finds the base and every stage done."""
    import pyarrow.fs as pafs

    fs = pafs.S3FileSystem(endpoint_override=f"http://127.0.0.1:{s3_server}", allow_bucket_creation=True)
    fs.create_dir("abl")
    ray_tmp = Path("/tmp") / f"srab{os.getpid()}"
    shutil.rmtree(ray_tmp, ignore_errors=True)
    (tmp_path / "tmp").mkdir()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "RAY_TMPDIR": str(ray_tmp), "TMPDIR": str(tmp_path / "tmp"),
           "STEP_RAY_CACHE": str(tmp_path / "cache"), "RAY_ADDRESS": "", "RAY_USAGE_STATS_ENABLED": "0"}
    args = ["ablate", "--config", str(ROOT / "configs" / "step_miniature.yaml"), "--output", "s3://abl/run",
            "pretrain.output=s3://abl/base", "synth.videos=8", "qra.samples_per_video=6", "train.steps=2",
            "train.batch_size=2", "train.log_every=1", "train.checkpoint_every=2", "train.num_workers=1",
            "train.progress=false", "pretrain.videos=6", "pretrain.steps=2", "pretrain.batch_size=2",
            "pretrain.samples_per_video=2", "pretrain.test_fraction=0.5", "ablation.rationale_weights=[0]",
            "ablation.seeds=[0]", "eval.batch_size=8", "ray.num_cpus=2"]

    def ablate() -> str:
        proc = subprocess.run([sys.executable, "-m", "step_ray.cli", *args], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=900)
        assert proc.returncode == 0, proc.stderr[-3000:] + proc.stdout[-3000:]
        return proc.stdout

    def read_json(key: str) -> dict:
        with fs.open_input_stream(key) as f:
            return json.loads(f.read())

    try:
        started = time.perf_counter()
        ablate()
        print(f"s3 ablate: first run {time.perf_counter() - started:.0f} s")
        base_files = set(_bucket_files(fs, "abl/base"))
        assert {"pretrain.json", "train/model/config.json", "train/model/model.safetensors", "qra/stats.json",
                "eval/held_out.json", "corpus/gt/synth_0000.stsg.json"} <= base_files, sorted(base_files)
        pre = read_json("abl/base/pretrain.json")
        assert pre["model_dir"] == "s3://abl/base/train/model" and pre["train_steps"] == 2
        assert read_json("abl/run/base.json")["model"] == "s3://abl/base/train/model"
        files = set(_bucket_files(fs, "abl/run"))
        run = "runs/lam0_multitask_seed0"
        assert {"config.yaml", "ablation.json", "ablation.md", "ablation.html", "plots/ablation.png",
                "corpus/stage.json", "stsg/stage.json", "qra/stage.json", "eval/base.json", "eval/base_blank.json",
                f"{run}/train/stage.json", f"{run}/train/model/config.json", f"{run}/eval/trained.json",
                f"{run}/eval/trained_blank.json"} <= files, sorted(files)
        stored = read_json("abl/run/ablation.json")
        assert [e["name"] for e in stored["entries"]] == ["lam0_multitask_seed0"]
        assert stored["entries"][0]["eval"]["n"] == stored["base"]["n"] > 0
        assert read_json(f"abl/run/{run}/eval/trained.json")["model"] == f"model:s3://abl/run/{run}/train/model"

        out = ablate()  # the base found in the bucket, every stage done
        assert "base model reused: s3://abl/base/train/model" in out and "train lam0_multitask_seed0: done before, skipped" in out

        assert sorted(p.name for p in tmp_path.iterdir()) == ["cache", "tmp"]
        assert not list((tmp_path / "tmp").glob("step-ray-stage-*"))
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)
