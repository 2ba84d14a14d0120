"""Session fixtures: offline settings, one local Ray for the whole session, a small synthetic corpus."""

from __future__ import annotations

import json
import os
import socket
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# Before any heavy import: DeepSpeed picks its accelerator at import time; nothing may try the network.
os.environ.setdefault("DS_ACCELERATOR", "cpu")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("RAY_DEDUP_LOGS", "0")

import pytest  # noqa: E402

from step_ray.utils.env import configure_ultralytics  # noqa: E402

configure_ultralytics()

# A real H.264 clip kept in the repository (tests/data/README.md: source and licence).
REAL_VIDEO = Path(__file__).resolve().parent / "data" / "carphone_pristine.mp4"


def pytest_collection_modifyitems(session, config, items):
    """Tests that start a Ray of their own (`ray start --head`, marked own_ray) run first, before the session's
    Ray starts: two local Rays at once confuse Ray Train's cleanup."""
    items.sort(key=lambda item: 0 if item.get_closest_marker("own_ray") else 1)


@pytest.fixture(scope="session")
def ray_session():
    """One local Ray per test session (Train V2 gets confused by several): 2 CPUs and 2 *logical* GPUs, so
    fractional-GPU actors are scheduled for real while torch falls back to CPU."""
    import ray

    from step_ray.utils.env import worker_env

    temp = tempfile.mkdtemp(prefix="ray_")
    ray.init(num_cpus=2, num_gpus=2, dashboard_host="127.0.0.1", _temp_dir=temp,
             runtime_env={"env_vars": worker_env()})
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def real_video() -> Path:
    if not REAL_VIDEO.is_file():
        pytest.fail(f"the real test clip is missing: {REAL_VIDEO}")
    return REAL_VIDEO


@pytest.fixture(scope="session")
def synth_corpus(tmp_path_factory):
    """Six small synthetic videos (2 scenes each) with their ground-truth graphs."""
    from step_ray.config import load_config
    from step_ray.synth.corpus import generate_corpus

    cfg = load_config(None, ["synth.videos=6", "synth.seed=3", "video.sample_fps=5"])
    out = tmp_path_factory.mktemp("corpus")
    items = generate_corpus(out, cfg.synth, cfg.video, cfg.stsg)
    return {"dir": out, "items": items, "cfg": cfg}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def s3_server(monkeypatch):
    """A local S3-compatible server (moto) on loopback, and the environment pyarrow's S3 client reads."""
    from moto.server import ThreadedMotoServer

    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    for key, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                       "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}"}.items():
        monkeypatch.setenv(key, value)
    yield port
    server.stop()


@dataclass
class Bucket:
    """A bucket on the test's S3 server, read the way a user would check a run's outputs."""

    fs: Any  # pyarrow.fs.S3FileSystem on the server
    name: str

    @property
    def uri(self) -> str:
        return f"s3://{self.name}"

    def files(self, prefix: str) -> list[str]:
        """Every object under ``prefix`` (a key within the bucket), relative to it, sorted."""
        import pyarrow.fs as pafs

        base = f"{self.name}/{prefix}".rstrip("/")
        return sorted(i.path[len(base) + 1:] for i in self.fs.get_file_info(pafs.FileSelector(base, recursive=True))
                      if i.type == pafs.FileType.File)

    def read(self, key: str) -> bytes:
        with self.fs.open_input_stream(f"{self.name}/{key}") as f:
            return f.read()

    def json(self, key: str) -> Any:
        return json.loads(self.read(key))


@pytest.fixture
def s3_bucket(s3_server) -> Bucket:
    """An empty bucket ``step-ray-test`` on the test's S3 server (:func:`s3_server`)."""
    import pyarrow.fs as pafs

    fs = pafs.S3FileSystem(endpoint_override=f"http://127.0.0.1:{s3_server}", allow_bucket_creation=True)
    fs.create_dir("step-ray-test")
    return Bucket(fs, "step-ray-test")
