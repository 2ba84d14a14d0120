"""Where a model comes from: resolve any step-ray model reference to a base, an optional adapter and a card.

A *model source* is one of

* ``None``                   - the base model of ``cfg.model`` (for 'tiny': the build of ``cfg.run.seed``);
* an output folder of ``step-ray train`` (``adapter/`` + ``base/``, or ``model/``; ``merged/`` is equal to
  adapter + base and not needed) or of ``step-ray pretrain`` (``model/``);
* a Ray Train checkpoint folder of a run (``adapter/`` + ``state.json``; the base is ``cfg.model``);
* a peft adapter folder (``adapter_config.json``; the base is a sibling ``base/``, else the adapter's
  ``base_model_name_or_path`` when that folder exists, else ``cfg.model``);
* a Hugging Face model folder (``config.json``), e.g. a merged export, a pretrained base, a local checkpoint;
* a hub id (anything that is not a local folder but looks like ``org/name``), handed to ``from_pretrained``.

Any of these folders may be an object-store prefix (``s3://``, ``gs://``): it is copied to a local folder first
(:func:`local_copy`, kept by the objects' listing), in the process that resolves it.

The card (:mod:`step_ray.models.card`) is looked up in the adapter or model folder, then in the run folder.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from step_ray.models.card import ModelCard, read_card
from step_ray.utils import storage

_HUB_ID = re.compile(r"^[\w.-]+/[\w.-]+$")


class ModelSourceError(FileNotFoundError):
    """A model reference that is neither a step-ray output, an adapter, a model folder nor a hub id."""


@dataclass(frozen=True)
class ResolvedModel:
    base: Optional[str]  # what from_pretrained loads first; None: the configured base (cfg.model)
    adapter: Optional[str]  # a peft adapter folder applied on top, or None
    description: str  # 'base:tiny', 'adapter:/runs/x/train', 'model:/runs/x/pretrain/model', ...
    card: Optional[ModelCard]
    #: For an object-store source: the local folder it was copied to (``base`` / ``adapter`` lie inside it).
    local_root: Optional[str] = None


def _card(*folders: Optional[Path]) -> Optional[ModelCard]:
    for folder in folders:
        if folder is not None:
            card = read_card(folder)
            if card is not None:
                return card
    return None


def resolve_model(source: Optional[str | Path], base_name: str = "tiny") -> ResolvedModel:
    """Resolve ``source`` (see the module docstring); ``base_name`` is ``cfg.model.name_or_path``."""
    if source is None or str(source) == "":
        return ResolvedModel(None, None, f"base:{base_name}", None)
    if storage.is_remote(str(source)):
        import dataclasses

        uri = str(source).rstrip("/")
        local = local_copy(uri)
        resolved = resolve_model(local, base_name)
        return dataclasses.replace(resolved, description=resolved.description.replace(local, uri), local_root=local)
    path = Path(source)
    if not path.is_dir():
        if "://" not in str(source) and _HUB_ID.match(str(source)) and not path.exists():
            return ResolvedModel(str(source), None, f"hub:{source}", None)
        raise ModelSourceError(f"no model folder at {source}")
    if (path / "adapter" / "adapter_config.json").is_file():
        base = path / "base"
        # No base/ when the base was on an object store (a self-training round's merged model): the adapter
        # names it there.
        found = str(base) if (base / "config.json").is_file() else _remote_base(_named_base(path / "adapter"))
        return ResolvedModel(found, str(path / "adapter"), f"adapter:{path}", _card(path / "adapter", path))
    if (path / "model" / "config.json").is_file():
        return ResolvedModel(str(path / "model"), None, f"model:{path / 'model'}", _card(path / "model", path))
    if (path / "adapter_config.json").is_file():
        card = _card(path, path.parent)
        sibling = path.parent / "base"
        if (sibling / "config.json").is_file():
            return ResolvedModel(str(sibling), str(path), f"adapter:{path}", card)
        named = _named_base(path)
        remote = _remote_base(named)
        if remote is not None:
            return ResolvedModel(remote, str(path), f"adapter:{path}", card)
        if named and (Path(named) / "config.json").is_file():
            return ResolvedModel(str(named), str(path), f"adapter:{path}", card)
        return ResolvedModel(None, str(path), f"adapter:{path}", card)
    if (path / "config.json").is_file():
        return ResolvedModel(str(path), None, f"model:{path}", _card(path))
    raise ModelSourceError(f"{source}: neither a run output, a checkpoint, an adapter nor a model folder")


def _named_base(adapter: Path) -> Optional[str]:
    """The base model an adapter folder's ``adapter_config.json`` names (None when it names none)."""
    return json.loads((adapter / "adapter_config.json").read_text()).get("base_model_name_or_path")


def _remote_base(named: Optional[str]) -> Optional[str]:
    """The local copy of ``named`` (the base an adapter names) when that is a model folder on an object store,
    else None."""
    if named and storage.is_remote(named) and storage.exists(storage.join(named, "config.json")):
        return local_copy(named)
    return None


#: Entries of a training output that are not the model: not copied with it from an object store.
NOT_THE_MODEL = ("checkpoints", "tensorboard", "init")


def local_copy(uri: str) -> str:
    """A local folder holding the model folder at the object-store prefix ``uri`` (a training or pretraining
    output, an adapter, a Hugging Face folder), cached by its listing (:func:`step_ray.utils.storage.local_dir`);
    a training output's checkpoints and logs (and ``merged/`` beside an adapter: the same model) are left
    out. :class:`ModelSourceError` when nothing is there."""
    names = storage.list_dir(uri)
    if not names:
        raise ModelSourceError(f"no model folder at {uri}")
    skip = NOT_THE_MODEL + (("merged",) if "adapter" in names else ())
    return storage.local_dir(uri, skip)
