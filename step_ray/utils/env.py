"""Process environment that heavy libraries need before they are imported (drivers and Ray workers alike)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path


def cache_dir() -> Path:
    """step-ray's cache (tokenizers, compiled DeepSpeed ops, ultralytics settings): $STEP_RAY_CACHE or ~/.cache."""
    return Path(os.environ.get("STEP_RAY_CACHE", Path.home() / ".cache" / "step-ray"))


def configure_ultralytics() -> None:
    """Keep ultralytics offline, quiet and safe: no downloads, no auto-installs, settings in our cache, a local
    font where it looks for Arial (otherwise plotting tries to download one), and YOLO ``.pt`` files loaded with
    ``weights_only=True`` and ultralytics' allow-list of model classes (``ULTRALYTICS_SAFE_LOAD``; by default it
    unpickles them, which runs whatever code a crafted file carries). Must run before ultralytics is imported."""
    os.environ.setdefault("ULTRALYTICS_SAFE_LOAD", "1")
    os.environ.setdefault("YOLO_OFFLINE", "1")
    os.environ.setdefault("YOLO_AUTOINSTALL", "False")
    os.environ.setdefault("YOLO_VERBOSE", "False")
    config_dir = Path(os.environ.setdefault("YOLO_CONFIG_DIR", str(cache_dir() / "ultralytics")))
    font = config_dir / "Ultralytics" / "Arial.ttf"
    if not font.exists():
        import matplotlib

        source = Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf"
        font.parent.mkdir(parents=True, exist_ok=True)
        tmp = font.with_suffix(f".{os.getpid()}.tmp")
        shutil.copyfile(source, tmp)
        tmp.replace(font)


def resolve_device(setting: str) -> str:
    """'auto' -> 'cuda:0' when torch sees a GPU (inside a Ray GPU actor that is the actor's GPU), else 'cpu'."""
    import torch

    if setting == "auto":
        return "cuda:0" if torch.cuda.is_available() else "cpu"
    if setting.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"perception.device is {setting!r} but torch sees no CUDA device")
    return setting


def worker_env() -> dict[str, str]:
    """Environment variables for Ray workers (runtime_env): the same offline settings as the driver.

    DS_ACCELERATOR is deliberately not passed on: the driver may sit on a CPU-only head node while the
    training workers have GPUs; the trainer sets it per worker from ``train.use_gpu``."""
    configure_ultralytics()
    keys = ("ULTRALYTICS_SAFE_LOAD", "YOLO_OFFLINE", "YOLO_AUTOINSTALL", "YOLO_VERBOSE", "YOLO_CONFIG_DIR",
            "HF_HUB_OFFLINE", "STEP_RAY_CACHE", "TORCH_EXTENSIONS_DIR", "TQDM_DISABLE", "HF_HUB_DISABLE_PROGRESS_BARS")
    return {k: os.environ[k] for k in keys if k in os.environ}


def limit_threads(cpus: float) -> int:
    """Keep an actor's compute libraries within the CPUs Ray reserved for it (OpenCV, torch and FFmpeg would
    each start a thread per core of the node and fight the other actors for them). Returns the thread count."""
    import cv2
    import torch

    n = max(1, int(cpus))
    cv2.setNumThreads(n)
    torch.set_num_threads(n)
    return n


def quiet_library_bars() -> None:
    """Outside a terminal, also switch off the bars of the libraries (tqdm's own, Hugging Face's): set before
    they are imported, and passed on to the Ray workers by :func:`worker_env`."""
    if not show_progress():
        os.environ.setdefault("TQDM_DISABLE", "1")
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        # An actor may have imported them already (unpickling its stage): switch their bars off directly too.
        import importlib
        import sys

        if "transformers" in sys.modules:
            importlib.import_module("transformers.utils.logging").disable_progress_bar()
        if "huggingface_hub" in sys.modules:
            importlib.import_module("huggingface_hub.utils").disable_progress_bars()


def show_progress() -> bool:
    """Whether to draw progress bars: only where a person watches (stderr is a terminal), so that logs of jobs,
    CI and `nohup` runs hold lines, not thousands of bar redraws. ``STEP_RAY_PROGRESS=1`` / ``0`` forces it."""
    import sys

    forced = os.environ.get("STEP_RAY_PROGRESS", "").strip().lower()
    if forced in ("1", "true", "yes", "on"):
        return True
    if forced in ("0", "false", "no", "off"):
        return False
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):  # replaced or closed stderr
        return False
