"""Stop an embedded Ray's processes when the driver that started it dies without cleaning up (SIGKILL, an OOM
kill, a closed terminal): Ray's raylet and GCS follow their driver, but its dashboard and runtime-env agents
and idle workers can outlive it.

The driver starts ``python -m step_ray.utils.reaper PID SESSION_DIR`` next to the Ray it starts
(:func:`step_ray.utils.ray_session.init_ray`), in a session of its own so no signal meant for the driver reaches
it. It polls the driver; once the driver is gone, it signals every process whose command line names the Ray
session directory (SIGTERM, then SIGKILL after a grace period) and exits. After a clean exit there is nothing
left to signal.
"""

from __future__ import annotations

import os
import signal
import sys
import time

POLL_SECONDS = 1.0
GRACE_SECONDS = 5.0


def _alive(pid: int, started: float) -> bool:
    import psutil

    try:
        proc = psutil.Process(pid)
        return proc.is_running() and abs(proc.create_time() - started) < 1.0 and proc.status() != "zombie"
    except psutil.NoSuchProcess:
        return False


def session_processes(session_dir: str) -> list:
    """Processes (other than this one) whose command line names ``session_dir``."""
    import re

    import psutil

    # The name must end there: session_..._99 is not session_..._991 (the names end in the starter's pid).
    named = re.compile(re.escape(session_dir.rstrip("/")) + r"(?![\w.-])")
    found = []
    for proc in psutil.process_iter(["pid", "cmdline"]):
        try:
            if proc.info["pid"] != os.getpid() and named.search(" ".join(proc.info["cmdline"] or [])):
                found.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return found


def reap(session_dir: str) -> int:
    """SIGTERM, then SIGKILL, every process of the session; how many were signalled."""
    import psutil

    procs = session_processes(session_dir)
    for proc in procs:
        try:
            proc.send_signal(signal.SIGTERM)
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(procs, timeout=GRACE_SECONDS)
    for proc in alive:
        try:
            proc.kill()
        except psutil.NoSuchProcess:
            pass
    return len(procs)


def main(argv: list[str]) -> int:
    import psutil

    pid, session_dir = int(argv[0]), argv[1]
    try:
        started = psutil.Process(pid).create_time()
    except psutil.NoSuchProcess:
        started = 0.0
    while _alive(pid, started):
        time.sleep(POLL_SECONDS)
    time.sleep(POLL_SECONDS)  # after a clean exit, ray.shutdown() has already stopped everything
    reap(session_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
