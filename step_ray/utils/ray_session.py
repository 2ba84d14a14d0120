"""Connect to Ray the same way on a laptop and on a cluster."""

from __future__ import annotations

import logging
import os

from step_ray.config import RayConfig


def init_ray(cfg: RayConfig) -> bool:
    """Start or join Ray once per process; return True if this call started it.

    - Already initialised (tests' session fixture, a notebook): reuse it.
    - ``address`` set, or ``RAY_ADDRESS`` in the environment (``ray job submit`` sets it): join that cluster.
    - Otherwise start an embedded local Ray with the configured CPUs / logical GPUs, dashboard on loopback.
    """
    import ray
    import ray.data

    from step_ray.utils.env import show_progress, worker_env

    # Ray Data's bars are redrawn many times a second: in a job's or CI's log that is megabytes of them.
    ray.data.DataContext.get_current().enable_progress_bars = show_progress()
    if ray.is_initialized():
        return False
    runtime_env = {"env_vars": worker_env()}
    address = cfg.address if cfg.address not in (None, "local") else None
    if address or (cfg.address is None and os.environ.get("RAY_ADDRESS")):
        # No runtime_env here: inside `ray job submit` the job's own runtime env applies, and Ray refuses a
        # second one that sets the same variables. The actors set the offline settings themselves.
        ray.init(address=address, logging_level=logging.WARNING)
        return True
    kwargs = {}
    if cfg.object_store_memory:
        kwargs["object_store_memory"] = cfg.object_store_memory
    # The dashboard process also serves the state API that Ray Train uses to clean up after a run; it only
    # ever listens on loopback here.
    ray.init(num_cpus=cfg.num_cpus, num_gpus=cfg.num_gpus, dashboard_host="127.0.0.1", runtime_env=runtime_env,
             logging_level=logging.WARNING, **kwargs)
    start_reaper()
    return True


def start_reaper() -> None:
    """Watch this driver from a process of its own and stop the embedded Ray's processes if the driver dies
    without ``ray.shutdown()`` (see :mod:`step_ray.utils.reaper`)."""
    import subprocess
    import sys

    import ray

    session_dir = ray._private.worker._global_node.get_session_dir_path()  # noqa: SLF001 - no public accessor
    subprocess.Popen([sys.executable, "-m", "step_ray.utils.reaper", str(os.getpid()), session_dir],
                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                     start_new_session=True, cwd="/",
                     env={**os.environ, "PYTHONPATH": os.pathsep.join(
                         p for p in (_source_root(), os.environ.get("PYTHONPATH", "")) if p)})


def _source_root() -> str:
    from pathlib import Path

    return str(Path(__file__).resolve().parents[2])
