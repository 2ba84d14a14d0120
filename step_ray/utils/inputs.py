"""Turn ``--input`` arguments into a sorted list of rows ``{"video_id", "uri"}``.

An argument may be:

- a file (taken as it is, even with another suffix: the stage will say why it fails);
- a folder or an object-store prefix (``s3://bucket/videos/``), searched recursively for video files;
- a glob (``data/**/*.mp4``);
- a manifest: a ``.txt`` / ``.lst`` file with one path or URI per line (``#`` comments), a ``.jsonl`` file with
  objects ``{"uri": ..., "video_id": ...}`` (``video_id`` optional), or a ``.csv`` with a ``uri`` column (and
  optionally ``video_id``). Relative paths in a manifest are relative to the manifest's folder.

A manifest's ``video_id`` names the video's outputs (``{video_id}.stsg.json``), so it must be a plain file name:
a string (or an integer) of at most 200 characters, without ``/``, ``\\``, control characters or a leading
``.``; anything else (``../../x``, ``/tmp/x``, a list) is refused with the manifest's line, before any work.
"""

from __future__ import annotations

import csv
import glob
import hashlib
import io
import json
from pathlib import Path

from step_ray.utils import storage

VIDEO_SUFFIXES = (".mp4", ".mov", ".mkv", ".avi", ".webm", ".m4v")
MANIFEST_SUFFIXES = (".txt", ".lst", ".jsonl", ".csv")


class InputError(ValueError):
    """``--input`` names nothing usable; the message says which argument."""


MAX_ID_LENGTH = 200


def check_video_id(value: object, where: str) -> str | None:
    """A manifest's ``video_id`` as a plain name, None when absent (the file stem is used), or
    :class:`InputError` naming ``where``: an id becomes an output file name and must never leave the output
    folder."""
    if value is None or value == "":
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str):
        raise InputError(f"{where}: video_id must be a string, got {type(value).__name__} {value!r}"[:300])
    bad = ("/" in value or "\\" in value or value.startswith(".") or len(value) > MAX_ID_LENGTH
           or any(ord(c) < 32 or ord(c) == 127 for c in value))
    if bad:
        raise InputError(f"{where}: video_id {value[:80]!r} must be a plain file name (no '/', '\\', leading '.' "
                         f"or control characters, at most {MAX_ID_LENGTH} characters)")
    return value


def expand(items: list[str], suffixes: tuple[str, ...]) -> list[Path]:
    """Local files only (graphs and other step outputs): files, folders (recursive) and globs."""
    return [Path(u) for u, _ in _expand(items, suffixes, manifests=False)]


def _expand(items: list[str], suffixes: tuple[str, ...], manifests: bool) -> list[tuple[str, str | None]]:
    """``(uri, video_id or None)`` for every input the arguments name."""
    found: list[tuple[str, str | None]] = []
    for item in items:
        item = str(item)
        if storage.is_remote(item):
            matches = storage.list_files(item, suffixes) if not item.lower().endswith(suffixes) else [item]
            if not matches:
                raise InputError(f"--input {item}: no {'/'.join(suffixes)} objects under this URI")
            found += [(m, None) for m in matches]
            continue
        p = Path(item)
        if p.is_file():
            if manifests and p.name.lower().endswith(MANIFEST_SUFFIXES):
                found += read_manifest(p)
            else:
                found.append((str(p.resolve()), None))
        elif p.is_dir():
            matches = sorted(q for q in p.rglob("*") if q.is_file() and q.name.lower().endswith(suffixes))
            if not matches:
                raise InputError(f"--input {item}: folder holds no {'/'.join(suffixes)} files")
            found += [(str(q.resolve()), None) for q in matches]
        else:
            matches = sorted(Path(m) for m in glob.glob(item, recursive=True)
                             if Path(m).is_file() and m.lower().endswith(suffixes))
            if not matches:
                raise InputError(f"--input {item}: no such file or folder, and no {'/'.join(suffixes)} file matches it")
            found += [(str(q.resolve()), None) for q in matches]
    unique: dict[str, str | None] = {}
    for uri, vid in found:
        unique.setdefault(uri, vid)
    return sorted(unique.items())


def read_manifest(path: Path) -> list[tuple[str, str | None]]:
    """``(uri, video_id or None)`` rows of a manifest file (see the module docstring)."""
    text = path.read_text()
    name = path.name.lower()
    rows: list[tuple[str, str | None]] = []
    try:
        if name.endswith(".jsonl"):
            for n, line in enumerate(text.splitlines(), 1):
                if line.strip():
                    obj = json.loads(line)
                    if not isinstance(obj, dict) or not isinstance(obj.get("uri"), str):
                        raise InputError(f"--input {path}: line {n} has no string 'uri'")
                    rows.append((obj["uri"], check_video_id(obj.get("video_id"), f"--input {path}: line {n}")))
        elif name.endswith(".csv"):
            reader = csv.DictReader(io.StringIO(text))
            if not reader.fieldnames or "uri" not in reader.fieldnames:
                raise InputError(f"--input {path}: a CSV manifest needs a 'uri' column")
            rows = [(r["uri"], check_video_id(r.get("video_id"), f"--input {path}: line {reader.line_num}"))
                    for r in reader if r.get("uri")]
        else:
            rows = [(line.strip(), None) for line in text.splitlines() if line.strip() and not line.strip().startswith("#")]
    except json.JSONDecodeError as err:
        raise InputError(f"--input {path}: not JSON lines ({err})") from None
    if not rows:
        raise InputError(f"--input {path}: the manifest lists no videos")
    base = path.resolve().parent
    return [(u if storage.is_remote(u) or Path(u).is_absolute() else str((base / u).resolve()), v) for u, v in rows]


def _stem(uri: str) -> str:
    name = uri.rstrip("/").rsplit("/", 1)[-1]
    return name.rsplit(".", 1)[0] if "." in name else name


def video_rows(items: list[str]) -> list[dict]:
    """Rows ``{"video_id", "uri"}``. The id is the manifest's, else the file stem, made unique by a short hash
    of the URI where two inputs share a stem."""
    entries = _expand(items, VIDEO_SUFFIXES, manifests=True)
    stems: dict[str, int] = {}
    for uri, vid in entries:
        key = vid or _stem(uri)
        stems[key] = stems.get(key, 0) + 1
    rows = []
    for uri, vid in entries:
        key = vid or _stem(uri)
        if stems[key] > 1:
            key = f"{key}-{hashlib.sha1(uri.encode()).hexdigest()[:8]}"
        rows.append({"video_id": key, "uri": uri})
    return rows
