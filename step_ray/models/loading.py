"""Load the Video-LLM and its processor from the config: the tiny offline build or a real checkpoint.

``model.name_or_path == 'tiny'`` builds the random-weight tiny model (of ``model.family``) of
:mod:`step_ray.models.tiny` once per (family, sizes, frame size, seed, transformers version), saves it under a cache directory and loads it
back from there with ``from_pretrained``: the base model a run trains, the base it exports next to its
adapter and the base the evaluation scores are then the same weights and the same tokenizer, whichever
process (driver, train worker, eval) asks first.

Anything else is a local directory or a hub id handed to ``from_pretrained`` (nothing is downloaded on a
machine without network; ``trust_remote_code`` comes only from the config).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import asdict
from pathlib import Path
from typing import Any, Optional

import torch

from step_ray.config import ModelConfig

TINY = "tiny"


def cache_root() -> Path:
    """Where built tiny models are kept: ``models/`` in step-ray's cache (``$STEP_RAY_CACHE``)."""
    from step_ray.utils.env import cache_dir

    return cache_dir() / "models"


def tiny_key(model_cfg: ModelConfig, seed: int) -> str:
    """A content key of everything that changes the tiny build (so a stale cache is never reused)."""
    import transformers

    from step_ray.models import tiny

    payload = {
        "family": tiny.tiny_family(model_cfg),
        "tiny": asdict(model_cfg.tiny),
        "frame_size": model_cfg.frame_size,
        "seed": seed,
        "transformers": transformers.__version__,
        # The recipe itself: a change to the tokenizer corpus or the config builder is a new model.
        "recipe": hashlib.sha256(Path(tiny.__file__).read_bytes()).hexdigest()[:16],
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def ensure_tiny(model_cfg: ModelConfig, seed: int = 0, directory: Optional[str | Path] = None) -> Path:
    """The directory of the saved tiny model for ``(model_cfg, seed)``, building it if it is not there yet.

    The build is written to a temporary sibling and renamed into place, so two processes on one node (two
    train workers) never see a half-written model; whichever renames first wins and the other's identical
    copy is dropped.
    """
    from step_ray.models.tiny import save_tiny

    target = Path(directory) if directory is not None else cache_root() / f"tiny-{tiny_key(model_cfg, seed)}"
    if (target / "config.json").is_file():  # only ever renamed into place complete
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    tmp.chmod(0o755)  # mkdtemp makes it private; the cache (and copies of it) should be readable
    try:
        save_tiny(model_cfg, tmp, seed=seed)
        try:
            os.rename(tmp, target)
        except OSError:
            if not (target / "config.json").is_file():  # not a lost race: a real error
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def resolve_base(model_cfg: ModelConfig, seed: int = 0) -> str:
    """What ``from_pretrained`` loads for this config: the saved tiny directory, or ``name_or_path``."""
    if model_cfg.name_or_path == TINY:
        return str(ensure_tiny(model_cfg, seed))
    from step_ray.utils import storage

    if storage.is_remote(model_cfg.name_or_path):  # a model folder on an object store: its local copy
        from step_ray.models.sources import local_copy

        return local_copy(model_cfg.name_or_path)
    return model_cfg.name_or_path


def load_processor(name_or_path: str, trust_remote_code: bool = False) -> Any:
    """``AutoProcessor.from_pretrained`` (the processor of a saved model, tiny or real)."""
    from transformers import AutoProcessor

    return AutoProcessor.from_pretrained(name_or_path, trust_remote_code=trust_remote_code)


def load_model_and_processor(
    model_cfg: ModelConfig,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    seed: int = 0,
    path: Optional[str] = None,
) -> tuple[Any, Any]:
    """(model, processor) for ``model_cfg`` on ``device`` in ``dtype``, in eval mode.

    ``'tiny'`` loads the cached tiny build of ``seed`` (built on first use); anything else (or ``path``, which
    overrides the config's name, e.g. an exported ``base/`` directory) goes to ``from_pretrained`` with
    ``trust_remote_code`` from the config.
    """
    from transformers import AutoModelForImageTextToText

    source = path if path is not None else resolve_base(model_cfg, seed)
    trust = model_cfg.trust_remote_code
    processor = load_processor(source, trust_remote_code=trust)
    model = AutoModelForImageTextToText.from_pretrained(source, dtype=dtype, trust_remote_code=trust)
    model.to(device)
    model.eval()
    return model, processor
