"""Turn ``--input`` arguments (files, folders, globs) into a sorted list of (video_id, path)."""

from __future__ import annotations

import glob
import hashlib
from pathlib import Path

VIDEO_SUFFIXES = (".mp4", ".mov", ".mkv", ".avi", ".webm", ".m4v")


class InputError(ValueError):
    """``--input`` names nothing usable; the message says which argument."""


def expand(items: list[str], suffixes: tuple[str, ...]) -> list[Path]:
    """Files named explicitly are taken as they are (even with another suffix: the stage will say why it
    fails); folders are searched recursively and globs matched, both keeping only ``suffixes``."""
    found: list[Path] = []
    for item in items:
        p = Path(item)
        if p.is_file():
            found.append(p)
        elif p.is_dir():
            matches = sorted(q for q in p.rglob("*") if q.is_file() and q.name.lower().endswith(suffixes))
            if not matches:
                raise InputError(f"--input {item}: folder holds no {'/'.join(suffixes)} files")
            found += matches
        else:
            matches = sorted(Path(m) for m in glob.glob(item, recursive=True)
                             if Path(m).is_file() and m.lower().endswith(suffixes))
            if not matches:
                raise InputError(f"--input {item}: no such file or folder, and no {'/'.join(suffixes)} file matches it")
            found += matches
    unique = sorted({p.resolve() for p in found})
    return unique


def video_rows(items: list[str]) -> list[dict]:
    """Rows ``{"video_id", "uri"}``. The id is the file stem, made unique by a short path hash on clashes."""
    paths = expand(items, VIDEO_SUFFIXES)
    stems: dict[str, int] = {}
    for p in paths:
        stems[p.stem] = stems.get(p.stem, 0) + 1
    rows = []
    for p in paths:
        vid = p.stem if stems[p.stem] == 1 else f"{p.stem}-{hashlib.sha1(str(p).encode()).hexdigest()[:8]}"
        rows.append({"video_id": vid, "uri": str(p)})
    return rows
