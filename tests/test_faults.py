"""Faults, survived: a perception actor killed mid-run; a video that kills every process decoding it; the stsg and
train drivers interrupted (SIGINT, SIGKILL) and re-run; a SIGKILLed driver leaving no Ray process behind.

A "video that kills its decoder" is played here by a watcher that SIGKILLs whichever Ray worker process has that
file open: the same death (no exception, no cleanup) a decoder segfault or the kernel's OOM killer deals, on the
real actor processes, with no test hook in step-ray's code. The driver tests start their own embedded Ray in a
subprocess (own_ray: they run before the session's Ray starts)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from step_ray.config import load_config

ROOT = Path(__file__).resolve().parents[1]


def _ray_workers_with_open(name: str) -> list[int]:
    import psutil

    pids = []
    for proc in psutil.process_iter(["pid", "name", "cmdline"]):
        try:
            if not (proc.info["name"] or "").startswith("ray::") and "ray::" not in " ".join(proc.info["cmdline"] or []):
                continue
            if any(f.path.endswith(name) for f in proc.open_files()):
                pids.append(proc.info["pid"])
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return pids


class Killer(threading.Thread):
    """SIGKILL every Ray worker that opens a file ending in ``name`` (``limit`` times at most)."""

    def __init__(self, name: str, limit: int):
        super().__init__(daemon=True)
        self.name, self.limit, self.kills, self.stop = name, limit, [], threading.Event()

    def run(self) -> None:
        while not self.stop.is_set() and len(self.kills) < self.limit:
            for pid in _ray_workers_with_open(self.name):
                if pid in self.kills:  # dying already (a killed process holds its files until it is reaped)
                    continue
                try:
                    os.kill(pid, signal.SIGKILL)
                    self.kills.append(pid)
                except ProcessLookupError:
                    pass
            time.sleep(0.02)


def _results(out: Path) -> list[dict]:
    """The results rows of the last complete stsg run into ``out`` (its sharded results table)."""
    from step_ray.pipeline.stsg_run import rows_of_last_run

    return rows_of_last_run(str(out))


def _graph_bytes(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(out.glob("*.stsg.json"))}


@pytest.fixture(scope="module")
def reference_graphs(synth_corpus, tmp_path_factory):
    """The corpus's graphs from an uninterrupted, in-process run (the sequential runner)."""
    from step_ray.pipeline.steps import stsg_step

    out = tmp_path_factory.mktemp("reference_stsg")
    summary = stsg_step(synth_corpus["cfg"], [str(synth_corpus["dir"] / "videos")], out, use_ray=False)
    assert summary["ok"] == len(synth_corpus["items"])
    return _graph_bytes(out)


@pytest.mark.ray
def test_killed_perception_actor_mid_run_loses_nothing(ray_session, synth_corpus, reference_graphs, tmp_path):
    """SIGKILL the perception actor while it decodes a video: Ray restarts it, the batch is retried, the run
    finishes with every video exactly once and graphs byte-identical to the uninterrupted run."""
    from step_ray.pipeline.steps import stsg_step

    videos = sorted((synth_corpus["dir"] / "videos").glob("*.mp4"))
    killer = Killer(videos[2].name, limit=1)
    killer.start()
    out = tmp_path / "stsg"
    summary = stsg_step(synth_corpus["cfg"], [str(synth_corpus["dir"] / "videos")], out)
    killer.stop.set()
    assert len(killer.kills) == 1, "the actor decoding the video was never caught: nothing was killed"
    rows = _results(out)
    assert sorted(r["video_id"] for r in rows) == sorted(v.stem for v in videos)  # each exactly once
    assert summary["ok"] == len(videos) and summary["failed"] == 0
    assert _graph_bytes(out) == reference_graphs


@pytest.mark.ray
def test_video_that_kills_its_decoder_becomes_an_error_row(ray_session, synth_corpus, tmp_path):
    """Every process that opens poison.mp4 dies: after perception.pool.max_retries retries it is an error row
    with the reason, and every other video still gets its graph."""
    from step_ray.pipeline.steps import stsg_step

    videos = tmp_path / "videos"
    shutil.copytree(synth_corpus["dir"] / "videos", videos)
    shutil.copy(videos / "synth_0001.mp4", videos / "poison.mp4")
    cfg = load_config(None, ["video.sample_fps=5", "perception.pool.max_retries=1", "perception.pool.max_size=1"])
    killer = Killer("poison.mp4", limit=50)
    killer.start()
    started = time.perf_counter()
    summary = stsg_step(cfg, [str(videos)], tmp_path / "stsg")
    seconds = time.perf_counter() - started
    killer.stop.set()
    rows = {r["video_id"]: r for r in _results(tmp_path / "stsg")}
    assert len(rows) == len(list(videos.glob("*.mp4")))
    assert rows["poison"]["status"] == "error" and "died 2 times" in rows["poison"]["error"], rows["poison"]
    assert all(r["status"] == "ok" for vid, r in rows.items() if vid != "poison")
    assert summary["failed"] == 1 and summary["accounted_for"]
    assert len(killer.kills) == 2, killer.kills  # 1 + max_retries attempts, then no more: not Ray's endless retries
    print(f"poison video: {len(killer.kills)} kills, run {seconds:.0f} s")


# ------------------------------------------------------------------------------------------------ drivers


def _foreground_signals() -> None:
    """In the child: SIGINT back to its default, as for a command typed at a terminal. A suite started in the
    background of a script (``make test &``, nohup) runs with SIGINT ignored, a child inherits that, and Python
    then installs no Ctrl-C handler at all: the driver would never see the interrupt these tests send."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _cli(args: list[str], env: dict, cwd: Path | None = None) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "step_ray.cli", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env, start_new_session=True,
                            preexec_fn=_foreground_signals, cwd=cwd)


def _pause_workers(stage: str) -> list[int]:
    """SIGSTOP the Ray workers of a stage (their process title names it); their pids."""
    import psutil

    pids = []
    for proc in psutil.process_iter(["pid", "cmdline"]):
        try:
            if stage in " ".join(proc.info["cmdline"] or []) and "ray::" in " ".join(proc.info["cmdline"] or []):
                os.kill(proc.info["pid"], signal.SIGSTOP)
                pids.append(proc.info["pid"])
        except (psutil.NoSuchProcess, psutil.AccessDenied, ProcessLookupError):
            continue
    return pids


def _step_workers_until(stage: str, predicate, proc: subprocess.Popen, burst: float = 0.3,
                        timeout: float = 300) -> list[int]:
    """Run a stage's workers in short bursts until ``predicate()`` holds; return their pids, paused. The
    workers are paused as soon as they exist, so the stages after them see only what the bursts let through:
    the interrupt that follows lands mid-run however fast the machine (a free-running perception actor can
    finish every video before the graph actor has started, and the graphs then land all at once)."""
    deadline = time.time() + timeout
    pids: list[int] = []
    while not pids:
        assert proc.poll() is None, "the run ended before its workers started"
        assert time.time() < deadline, f"no {stage} worker appeared"
        pids = _pause_workers(stage)
        time.sleep(0.05)
    while not predicate():
        assert proc.poll() is None, "the run ended while its workers were paused"
        assert time.time() < deadline, "timed out waiting for progress"
        _resume(pids)
        time.sleep(burst)
        pids = _pause_workers(stage) or pids
        time.sleep(0.5)  # what the burst finished flows on to the next stage
    return pids


def _communicate_then_resume(proc: subprocess.Popen, paused: list[int], timeout: float) -> tuple[str, str]:
    """Let the signalled driver act while its workers are paused (a few seconds), then let them go (so Ray's
    shutdown can reap them), and wait for the driver."""
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        pass
    _resume(paused)
    return proc.communicate(timeout=timeout)


def _resume(pids: list[int]) -> None:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGCONT)
        except ProcessLookupError:
            pass


def _wait_for(predicate, proc: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.time() + timeout
    while not predicate():
        if proc.poll() is not None:
            raise AssertionError(f"the run ended (rc {proc.returncode}) before the interrupt: "
                                 f"{proc.communicate()[1][-3000:]}")
        assert time.time() < deadline, "timed out waiting for progress"
        time.sleep(0.2)


def _left_behind(ray_tmp: Path) -> list[str]:
    import psutil

    left = []
    for proc in psutil.process_iter(["pid", "cmdline"]):
        try:
            cmdline = " ".join(proc.info["cmdline"] or [])
            if str(ray_tmp) in cmdline and "step_ray.utils.reaper" not in cmdline:
                left.append(f"{proc.info['pid']} {cmdline[:80]}")
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return left


def _no_ray_left(ray_tmp: Path, timeout: float = 40) -> list[str]:
    deadline = time.time() + timeout
    while _left_behind(ray_tmp) and time.time() < deadline:
        time.sleep(1)
    return _left_behind(ray_tmp)


def _driver_env(tmp_path: Path) -> tuple[dict, Path]:
    ray_tmp = Path("/tmp") / f"srd{os.getpid()}"  # Ray's socket paths must stay short
    shutil.rmtree(ray_tmp, ignore_errors=True)
    ray_tmp.mkdir()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "RAY_TMPDIR": str(ray_tmp), "STEP_RAY_CACHE": str(tmp_path / "cache"),
           "RAY_ADDRESS": "", "RAY_USAGE_STATS_ENABLED": "0"}
    return env, ray_tmp


@pytest.mark.own_ray
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL], ids=["SIGINT", "SIGKILL"])
def test_interrupted_stsg_driver_resumes_to_the_same_graphs(synth_corpus, reference_graphs, tmp_path, sig):
    """Interrupt the `stsg` driver after its first graph: SIGINT exits 130 saying what was kept, SIGKILL leaves
    no Ray process behind; the re-run skips what is done and ends with graphs byte-identical to the
    uninterrupted run."""
    env, ray_tmp = _driver_env(tmp_path)
    out = tmp_path / "stsg"
    # One perception actor, one graph per graph batch: graphs land one by one. The perception actor runs in
    # short bursts (SIGSTOP / SIGCONT) until the first graph is there and is then left paused, so the interrupt
    # lands mid-run: free-running, it can finish all six videos before the graph actor starts.
    args = ["stsg", "--input", str(synth_corpus["dir"] / "videos"), "--output", str(out), "video.sample_fps=5",
            "ray.num_cpus=2", "perception.pool.max_size=1", "stsg.pool.batch_size=1"]
    paused: list[int] = []
    try:
        proc = _cli(args, env)
        paused = _step_workers_until("stsg-perception", lambda: len(list(out.glob("*.stsg.json"))) >= 1, proc)
        assert len(list(out.glob("*.stsg.json"))) < len(synth_corpus["items"]), "every graph done before the interrupt"
        assert proc.poll() is None, "the run ended before the interrupt"
        proc.send_signal(sig)
        _, err = _communicate_then_resume(proc, paused, timeout=120)
        if sig == signal.SIGINT:
            assert proc.returncode == 130, err[-2000:]
            assert "interrupted; finished graphs in" in err and "a re-run skips them" in err
        else:
            assert proc.returncode == -signal.SIGKILL
        left = _no_ray_left(ray_tmp)
        assert left == [], f"the interrupted driver left Ray processes: {left}"
        kept = len(list(out.glob("*.stsg.json")))

        proc = _cli(args, env)
        _, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err[-3000:]
        summary = json.loads((out / "summary.json").read_text())
        assert summary["ok"] == len(synth_corpus["items"]) and summary["skipped_done"] >= kept >= 1
        assert sorted(r["video_id"] for r in _results(out)) == sorted(i["video_id"] for i in synth_corpus["items"])
        assert _graph_bytes(out) == reference_graphs
        print(f"stsg {sig.name}: {kept} graph(s) kept, {summary['skipped_done']} skipped by the re-run of "
              f"{summary['videos']}, graphs byte-identical to the uninterrupted run")
    finally:
        _resume(paused)
        shutil.rmtree(ray_tmp, ignore_errors=True)


@pytest.fixture(scope="module")
def toy_qra(tmp_path_factory):
    from step_ray.train.toy import make_toy_qra

    return make_toy_qra(tmp_path_factory.mktemp("toy_faults"), videos=8, seed=1)


@pytest.mark.own_ray
def test_interrupted_train_driver_on_an_object_store_resumes_at_its_step_and_stream_position(
        toy_qra, s3_bucket, tmp_path, monkeypatch):
    """`step-ray train --output s3://...` (a local S3 server, found through the environment as on a cluster),
    logging to an MLflow file store: SIGINT it after its first checkpoint (exit 130, checkpoints kept, the MLflow
    run KILLED), SIGKILL the re-run after its next one (no Ray process left), then finish. The run ends at exactly
    train.steps optimizer steps, each logged once; each re-run resumed from the bucket's latest checkpoint, its
    data stream starting at that checkpoint's position instead of replaying from position 0; the checkpoints,
    the adapter, its base, the summary and the TensorBoard files are objects in the bucket, nothing is written
    to the working directory; the finished MLflow run holds the train section as params and the run's losses."""
    from mlflow import MlflowClient
    from ray.train import Result

    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3 keeps its file store behind this switch
    env, ray_tmp = _driver_env(tmp_path)
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    env["TMPDIR"] = str(scratch)
    store = (scratch / "mlruns").as_uri()
    out = f"{s3_bucket.uri}/train"
    steps, every = 12, 3
    args = ["train", "--input", str(toy_qra), "--output", out, "ray.num_cpus=2", "train.num_workers=2",
            "train.cpus_per_worker=0.5", "train.data.num_cpus=0.5", f"train.steps={steps}",
            f"train.checkpoint_every={every}", "train.log_every=1", "train.batch_size=2", "train.lora.r=4",
            "train.keep_checkpoints=5", "train.warmup_steps=0", "train.lr=0.005", f"train.mlflow.tracking_uri={store}"]
    storage = f"{s3_bucket.name}/train/checkpoints/step-ray-train"

    def checkpoints() -> int:
        """Checkpoints Ray Train has registered (a folder being written does not count: a run interrupted then
        resumes from the one before)."""
        try:
            return len(Result.from_path(storage, storage_filesystem=s3_bucket.fs).best_checkpoints)
        except Exception:  # noqa: BLE001 - not there yet, or read while Ray Train rewrites it (an object store
            return 0  # has no atomic rename: a half-written snapshot fails to parse); the next poll sees it

    try:
        # Training workers paused once a checkpoint is registered, so the interrupts land mid-run (12 steps of
        # 2 s can otherwise end inside the poll interval).
        proc = _cli(args, env, cwd=tmp_path)
        _wait_for(lambda: checkpoints() >= 1, proc)
        paused = _pause_workers("RayTrainWorker")
        assert paused and proc.poll() is None, "no training worker to pause, or the run already ended"
        proc.send_signal(signal.SIGINT)
        _, err = _communicate_then_resume(proc, paused, timeout=180)
        assert proc.returncode == 130, err[-3000:]
        assert "interrupted; checkpoints in" in err and "resumes from the latest one" in err
        assert _no_ray_left(ray_tmp) == []

        first = checkpoints()
        proc = _cli(args, env, cwd=tmp_path)
        _wait_for(lambda: checkpoints() >= first + 1, proc)
        paused = _pause_workers("RayTrainWorker")
        assert paused and proc.poll() is None, "no training worker to pause, or the run already ended"
        proc.send_signal(signal.SIGKILL)
        _communicate_then_resume(proc, paused, timeout=60)
        left = _no_ray_left(ray_tmp)
        assert left == [], f"a SIGKILLed driver left Ray processes: {left}"

        proc = _cli(args, env, cwd=tmp_path)
        _, err = proc.communicate(timeout=900)
        assert proc.returncode == 0, err[-3000:]
        summary = s3_bucket.json("train/train_summary.json")
        assert summary["steps"] == steps and 0 < summary["start_step"] < steps
        assert [h["step"] for h in summary["history"]] == list(range(1, steps + 1))
        resumes = summary["resumes"]  # [start step, checkpoint position, first position trained on]
        assert resumes[0][:2] == [0, 0] and len(resumes) >= 2
        for start_step, position, first_position in resumes[1:]:
            assert start_step > 0 and position > 0 and first_position >= position, resumes
        assert summary["stream_start"] == resumes[-1][1]

        # The outputs are objects in the bucket, the adapter naming its base there.
        files = s3_bucket.files("train")
        assert {"adapter/adapter_model.safetensors", "adapter/adapter_config.json", "adapter/step_ray_model.json",
                "base/config.json", "train_summary.json"} <= set(files), files
        assert [f for f in files if f.startswith("tensorboard/events.out.tfevents.")]
        assert summary["checkpoint"].startswith(f"{out}/checkpoints/step-ray-train/checkpoint_")
        assert summary["adapter_dir"] == f"{out}/adapter" and summary["base_dir"] == f"{out}/base"
        checkpoint = summary["checkpoint"][len(s3_bucket.uri) + 1:]
        assert {"state.json", "adapter/adapter_model.safetensors"} <= set(s3_bucket.files(checkpoint))
        assert s3_bucket.json("train/adapter/adapter_config.json")["base_model_name_or_path"] == f"{out}/base"
        assert sorted(p.name for p in tmp_path.iterdir()) == ["cache", "tmp"]  # no "s3:" folder, no run folder
        # Only the SIGKILLed call's staging folder is left (a killed process cleans nothing; it is under $TMPDIR).
        assert len(list(scratch.glob("step-ray-stage-*"))) <= 1  # (the MLflow store is there too)

        # MLflow: a run per call, ended as its call ended (the SIGKILLed driver could not end its own).
        client = MlflowClient(tracking_uri=store)
        runs = client.search_runs([client.get_experiment_by_name("step-ray").experiment_id], order_by=["start_time"])
        assert [r.info.status for r in runs] == ["KILLED", "RUNNING", "FINISHED"]
        final = runs[-1]
        assert final.info.run_id == summary["mlflow_run_id"] and final.info.run_name == f"{s3_bucket.name}/train"
        assert final.data.tags["step_ray.output"] == out
        params = final.data.params
        assert params["train.steps"] == str(steps) and params["train.lr"] == "0.005"
        assert params["train.lora.r"] == "4" and params["model.name_or_path"] == "tiny"
        trained = summary["history"][summary["start_step"]:]  # the steps of the final call
        loss = client.get_metric_history(final.info.run_id, "loss")
        assert [m.step for m in loss] == [h["step"] for h in trained]
        assert [m.value for m in loss] == pytest.approx([h["loss"] for h in trained])
        assert {"loss_answer", "loss_rationale", "lr", "samples_per_s", "tokens_per_s"} <= set(final.data.metrics)
        assert not {"step", "time", "first_step_time"} & set(final.data.metrics)
        print(f"train interrupts: resumes {resumes}, {summary['rows_seen']} questions over {steps} steps")
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)
