"""The job path, for real: a local head started with `ray start --head` (its own ports and temp dir), a small
two-round `jobs/self_train.py` run submitted with the real `ray job submit` client and the repo's runtime env,
writing to a bucket of a local S3 server, its logs followed to success, its outputs checked, the head stopped
and no process of it left behind; and the upload that `--working-dir .` builds, the way Ray builds it, bounded
in size.

The head is a second local Ray on this host: these tests run first in the session (tests/conftest.py orders
them), before the session's own Ray starts, so that two never run at once."""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
RAY = str(Path(sys.executable).with_name("ray"))

pytestmark = pytest.mark.own_ray


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def _session_processes(temp_dir: str) -> list[int]:
    """Processes of the Ray started under ``temp_dir`` (its path is on every Ray process's command line or in
    its environment's session dir)."""
    import psutil

    found = []
    for proc in psutil.process_iter(["pid", "cmdline"]):
        try:
            cmdline = " ".join(proc.info["cmdline"] or [])
            if temp_dir in cmdline:
                found.append(proc.info["pid"])
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return [p for p in found if p != os.getpid()]


def _stop_head(head: subprocess.Popen, temp: str) -> None:
    """SIGTERM the head's process group (`ray start --block` and what it started), SIGKILL what is left."""
    try:
        os.killpg(head.pid, signal.SIGTERM)
    except ProcessLookupError:
        pass
    # `ray start --block` stops its own processes on SIGTERM within seconds; what is still running after 10 s
    # gets SIGKILL with the group (anything outside the group is caught by the fixture's check).
    deadline = time.time() + 10
    while _session_processes(temp) and time.time() < deadline:
        time.sleep(1)
    try:
        os.killpg(head.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    head.wait(timeout=30)
    time.sleep(1)


@pytest.fixture(scope="module")
def local_head(tmp_path_factory):
    """`ray start --head --block` with its own ports and temp dir, in its own process group, shared by this
    module's job tests; stopped by signalling that group (never `ray stop`, which would stop every Ray on the
    machine)."""
    temp = tempfile_dir = tmp_path_factory.mktemp("rayhead")
    temp = str(Path("/tmp") / f"srh{os.getpid()}")  # Ray's socket paths must stay short
    shutil.rmtree(temp, ignore_errors=True)
    gcs, dash, client, node_mgr, obj_mgr, agent, agent_grpc, metrics, runtime_env = _free_ports(9)
    # Token authentication on, as on the shipped clusters, with a token of this test's own (no ~/.ray file).
    # `python` in a job's entrypoint is the nodes' Python, with step-ray's dependencies (the cluster image's):
    # here, this test's interpreter.
    path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "PYTHONPATH": "", "RAY_AUTH_MODE": "token",
           "RAY_AUTH_TOKEN": secrets.token_hex(32), "RAY_ADDRESS": "", "PATH": path}
    env.pop("RAY_AUTH_TOKEN_PATH", None)
    cmd = [RAY, "start", "--head", "--block", f"--port={gcs}", f"--dashboard-port={dash}",
           "--dashboard-host=127.0.0.1", f"--ray-client-server-port={client}", f"--node-manager-port={node_mgr}",
           f"--object-manager-port={obj_mgr}", f"--dashboard-agent-listen-port={agent}",
           f"--dashboard-agent-grpc-port={agent_grpc}", f"--metrics-export-port={metrics}",
           f"--runtime-env-agent-port={runtime_env}",
           f"--temp-dir={temp}", "--num-cpus=2", "--num-gpus=0", "--disable-usage-stats"]
    log = open(tempfile_dir / "head.log", "w")
    head = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    address = f"http://127.0.0.1:{dash}"
    deadline = time.time() + 120
    while time.time() < deadline:
        probe = subprocess.run([RAY, "job", "list", "--address", address], capture_output=True, text=True, env=env)
        if probe.returncode == 0:
            break
        if head.poll() is not None:
            break
        time.sleep(2)
    else:
        probe = None
    if probe is None or probe.returncode != 0:
        _stop_head(head, temp)
        pytest.fail("the local head did not come up: " + (tempfile_dir / "head.log").read_text()[-1500:]
                    + ("\nray job list: " + (probe.stdout + probe.stderr)[-1500:] if probe else ""))
    yield {"address": address, "env": env, "temp": temp}
    _stop_head(head, temp)
    log.close()
    left = _session_processes(temp)
    for pid in left:  # do not leak into the rest of the suite; the assertion below still fails the test
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    shutil.rmtree(temp, ignore_errors=True)
    assert not left, f"processes of the stopped head still running: {left}"


# A tiny two-round run (the demo trains fully; LoRA's path here), from a pretrained base, the filter on in round 2.
SELF_TRAIN_TINY = [
    "synth.videos=8", "synth.seed=5", "qra.samples_per_video=6", "train.steps=2", "train.batch_size=2",
    "train.checkpoint_every=2", "train.log_every=1", "train.num_workers=2", "train.cpus_per_worker=0.5",
    "train.data.num_cpus=0.5", "train.lora.enabled=true", "model.frames=2", "perception.pool.max_size=1",
    "qra.pool.max_size=1", "eval.batch_size=8", "eval.max_samples=8", "pretrain.enabled=true", "pretrain.videos=6",
    "pretrain.steps=2", "pretrain.batch_size=2", "pretrain.samples_per_video=2", "pretrain.test_fraction=0.5",
    "run.rounds=2", "qra.filter.enabled=true", "qra.filter.asks=2"]


def test_ray_job_submit_two_round_self_train_on_an_object_store(local_head, s3_bucket, s3_server, tmp_path, capsys):
    """`ray job submit` of `jobs/self_train.py` (uploaded working dir, the repo's runtime env, logs followed to
    SUCCEEDED), with the run directory and the pretrained base in a bucket of a local S3 server:
    pretrain -> synth -> round 1 (stsg -> qra -> eval base -> train -> eval, vision control) -> round 2 (the
    filter asks model 1; training starts from model 1 merged, read back from the bucket) -> report. Every output
    is an object in the bucket, none is left on the head's disk; a second job finds the base and every stage
    done in the bucket and trains nothing."""
    bucket = s3_bucket
    run, base = f"{bucket.uri}/run", f"{bucket.uri}/base"
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    runtime_env = tmp_path / "runtime_env.yaml"
    env_spec = yaml.safe_load((ROOT / "jobs" / "runtime_env.yaml").read_text())
    env_spec["env_vars"] = {
        **env_spec["env_vars"], "STEP_RAY_CACHE": str(tmp_path / "cache"), "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1", "DS_ACCELERATOR": "cpu", "TMPDIR": str(scratch),
        # The job's driver and workers reach the bucket the way a cluster's nodes reach theirs: the environment.
        **{k: os.environ[k] for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION",
                                      "AWS_ENDPOINT_URL")}}
    runtime_env.write_text(yaml.safe_dump(env_spec))

    def submit() -> str:
        proc = subprocess.run(
            [RAY, "job", "submit", "--address", local_head["address"], "--working-dir", str(ROOT),
             "--runtime-env", str(runtime_env), "--", "python", "jobs/self_train.py", "--config",
             "configs/demo.yaml", "--output", run, f"pretrain.output={base}", *SELF_TRAIN_TINY],
            capture_output=True, text=True, env=local_head["env"], timeout=1500)
        logs = proc.stdout + proc.stderr
        assert proc.returncode == 0, logs[-4000:]
        assert "succeeded" in logs.lower()
        assert "%|" not in logs and "\x1b[A" not in logs, "progress bars in a job's log"  # tqdm draws "50%|###"
        return logs

    started = time.perf_counter()
    logs = submit()
    seconds = time.perf_counter() - started
    assert "Uploading package" in logs or "working_dir" in logs.lower() or "gcs://" in logs
    summary = bucket.json("run/summary.json")
    pre = summary["pretrain"]
    assert pre["model_dir"] == f"{base}/train/model" and pre["train_steps"] == 2
    assert set(pre["accuracy"]) == {"held_out", "held_out_blank"}
    assert {"pretrain.json", "train/model/config.json", "train/model/model.safetensors",
            "eval/held_out.json"} <= set(bucket.files("base"))
    r1, r2 = summary["rounds"]
    assert summary["run_dir"] == run and r1["dir"] == f"{run}/round_1"
    assert r1["stsg"]["ok"] == 8 and r1["qra"]["samples"] > 0 and r1["train"]["steps"] == 2
    assert r1["init"] == f"base:{pre['model_dir']}"
    # Round 2 mined with model 1 (its filter) and trained from model 1, merged into one folder in the bucket.
    merged = f"{run}/round_1/train/merged"
    assert r2["stsg"] == {"reused": f"{run}/round_1/stsg"}
    assert r2["qra"]["filter"]["model"] == merged and r2["init"] == merged
    # The base of round 2's adapter is model 1 merged where it is, in the bucket (not copied to round_2/train/base).
    assert r2["train"]["base_dir"] == merged
    assert bucket.json("run/round_2/train/adapter/adapter_config.json")["base_model_name_or_path"] == merged
    files = set(bucket.files("run"))
    expected = {"config.yaml", "summary.json", "report.md", "report.html", "plots/accuracy_by_steps.png",
                "plots/loss.png", "corpus/stage.json", "corpus/manifest.json", "corpus/videos/synth_0000.mp4",
                "corpus/gt/synth_0000.stsg.json", "round_1/stsg/stage.json", "round_1/stsg/summary.json",
                "round_1/stsg/synth_0000.stsg.json", "round_1/qra/stats.json", "round_1/qra/card.md",
                "round_1/qra/part-00000.parquet", "round_1/train/train_summary.json",
                "round_1/train/merged/config.json", "round_1/train/merged/step_ray_model.json",
                "round_1/eval/base_blank.json", "round_1/eval/trained_train_split.json", "round_2/qra/stats.json"}
    for rdir in ("round_1", "round_2"):
        expected |= {f"{rdir}/train/adapter/adapter_model.safetensors", f"{rdir}/train/adapter/step_ray_model.json",
                     f"{rdir}/eval/trained.json", f"{rdir}/eval/trained_blank.json"}
        assert [f for f in files if f.startswith(f"{rdir}/train/checkpoints/step-ray-train/checkpoint_")]
        assert [f for f in files if f.startswith(f"{rdir}/train/tensorboard/events.out.tfevents.")]
        for name in ("trained", "trained_blank"):
            result = bucket.json(f"run/{rdir}/eval/{name}.json")
            assert result["n"] == r1["eval_base"]["base"]["n"] > 0 and "low" in result["by_steps"]["1"]
            assert result["model"].startswith(f"adapter:{run}/{rdir}/train")
    assert expected <= files, sorted(expected - files)
    assert [f for f in files if f.startswith("round_1/stsg/results/")]
    assert bucket.json("run/round_1/eval/base_blank.json")["vision"] == "blank"
    report = bucket.read("run/report.md").decode()
    assert f"Run directory: `{run}`" in report and "| model 2 |" in report and "3+ steps" in report
    assert "black frames" in report
    page = bucket.read("run/report.html").decode()
    assert page.startswith("<!doctype html>") and "data:image/png;base64," in page and "Examples" in page
    assert len(bucket.read("run/plots/accuracy_by_steps.png")) > 1000
    assert {"round 1: stsg", "round 1: qra", "round 1: train", "round 2: train"} <= set(summary["seconds"])

    # A second job reads every stage's record back from the bucket: nothing is mined, trained or scored again.
    again = submit()
    assert f"base model reused: {base}/train/model" in again, again[-3000:]
    assert "round 2: train: done before, skipped" in again and "synth: done before, skipped" in again
    assert list(bucket.json("run/summary.json")["seconds"]) == ["pretrain"]  # the reused base's look-up

    # Nothing on the head's disk but temporary files and the cache: no "s3:" folder in the job's working dir
    # (or anywhere under the head's temp dir), no staging folder left behind.
    assert not [p for p in Path(local_head["temp"]).rglob("s3:*")]
    assert not list(scratch.glob("step-ray-stage-*"))
    with capsys.disabled():
        print(f"\n  ray job submit two-round self-train on s3: {seconds:.0f} s, log {len(logs)} bytes")


def test_relative_output_is_refused_inside_a_job(local_head, tmp_path):
    proc = subprocess.run(
        [RAY, "job", "submit", "--address", local_head["address"], "--working-dir", str(ROOT),
         "--runtime-env", str(ROOT / "jobs" / "runtime_env.yaml"), "--", "python", "jobs/synth.py",
         "--out", "data/synth", "--videos", "1"],
        capture_output=True, text=True, env=local_head["env"], timeout=300)
    logs = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "step-ray: error: --out data/synth: a relative path inside a Ray job" in logs


def test_upload_package_keeps_data_runs_and_weights_out(tmp_path):
    """Build the --working-dir package the way `ray job submit` does (Ray's own packaging, .gitignore honoured,
    the runtime env's excludes) from a copy of the repo with a virtualenv, run outputs, the README's example
    folders and weights in it: none of those is in the package, and it stays small."""
    from ray._private.runtime_env.packaging import create_package

    tree = tmp_path / "repo"
    shutil.copytree(ROOT, tree, ignore=shutil.ignore_patterns(".git", ".venv", "__pycache__", ".pytest_cache"))
    junk = {".venv/lib/big.so": 2, "runs/demo/train/checkpoints/x/model.safetensors": 2, "data/synth/a.mp4": 2,
            "out/train/adapter/adapter_model.safetensors": 2, "model.pt": 2, "weights/yolo11n.pt": 2,
            "checkpoints/ckpt.bin": 2}
    for name, mib in junk.items():
        (tree / name).parent.mkdir(parents=True, exist_ok=True)
        (tree / name).write_bytes(os.urandom(mib << 20))
    excludes = yaml.safe_load((ROOT / "jobs" / "runtime_env.yaml").read_text())["excludes"]
    package = tmp_path / "pkg.zip"
    create_package(str(tree), package, include_gitignore=True, excludes=excludes)
    names = zipfile.ZipFile(package).namelist()
    assert "jobs/self_train.py" in names and "step_ray/cli.py" in names and "configs/demo.yaml" in names
    assert not [n for n in names if any(n.startswith(j) or n == j for j in junk)], names
    size = package.stat().st_size
    assert size < 4 << 20, f"upload of {size / 2**20:.1f} MiB"
