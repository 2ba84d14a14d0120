"""Turn ``--input`` arguments into input rows ``(uri, manifest id or None)``, lazily.

An argument may be:

- a file (taken as it is, even with another suffix: the stage will say why it fails);
- a folder or an object-store prefix (``s3://bucket/videos/``), searched recursively for video files;
- a glob (``data/**/*.mp4``);
- a manifest: a ``.txt`` / ``.lst`` file with one path or URI per line (``#`` comments), a ``.jsonl`` file with
  objects ``{"uri": ..., "video_id": ...}`` (``video_id`` optional), or a ``.csv`` with a ``uri`` column (and
  optionally ``video_id``); local or on an object store. Relative paths in a manifest are relative to the
  manifest's folder.

Listing is a generator (:func:`iter_argument`): a folder is walked one directory at a time and a manifest is
read line by line, so a corpus of millions of files is never a list in memory. The steps run these
generators inside Ray Data read tasks (:mod:`step_ray.pipeline.dataflow`); :func:`check_arguments` checks up
front that each argument names something, so a typo fails before any work with one line.

Ids: the manifest's ``video_id``, else the file stem; where two inputs share one, both get a short hash of
their URI appended (:func:`unique_ids`). An id becomes a file name (``{video_id}.stsg.json``), so it must be a
plain file name: a string (or an integer) of at most 200 characters, without ``/``, ``\\``, control
characters or a leading ``.``. A manifest that gives another (``../../x``, ``/tmp/x``, a list) is a bad input
file: :func:`check_arguments` reads every manifest through (streamed, constant memory) and refuses it with
the manifest's line, before any work (:func:`check_video_id`). An id that comes from a file's stem and is
not usable (``.hidden.mp4``) is never used either: :func:`id_problem` says why, and that input ends as an
error row with the reason while the others go on.
"""

from __future__ import annotations

import csv
import glob
import hashlib
import io
import json
import os
import re
from pathlib import Path
from typing import Iterable, Iterator, Optional

from step_ray.utils import storage

VIDEO_SUFFIXES = (".mp4", ".mov", ".mkv", ".avi", ".webm", ".m4v")
MANIFEST_SUFFIXES = (".txt", ".lst", ".jsonl", ".csv")
MAX_ID_LENGTH = 200
_SAFE_ID = re.compile(r"^[^/\\\x00-\x1f\x7f]+$")

Entry = tuple[str, Optional[str]]  # (uri, video id the manifest gives, or None)


class InputError(ValueError):
    """``--input`` names nothing usable; the message says which argument."""


def _has_glob(item: str) -> bool:
    return any(c in item for c in "*?[")


def check_video_id(value: object, where: str) -> Optional[str]:
    """A manifest's ``video_id`` as a plain name, None when absent (the file stem is used), or
    :class:`InputError` naming ``where``: an id becomes an output file name and must never leave the output
    folder."""
    if value is None or value == "":
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str):
        raise InputError(f"{where}: video_id must be a string, got {type(value).__name__} {value!r}"[:300])
    if id_problem(value) is not None:
        raise InputError(f"{where}: video_id {value[:80]!r} must be a plain file name (no '/', '\\', leading '.' "
                         f"or control characters, at most {MAX_ID_LENGTH} characters)")
    return value


def is_manifest(item: str) -> bool:
    return str(item).lower().endswith(MANIFEST_SUFFIXES)


def check_arguments(items: Iterable[str], suffixes: tuple[str, ...], manifests: bool = True) -> None:
    """Fail (:class:`InputError`) when an argument names nothing: no such file, folder or object, or a glob
    or local folder without a single matching file (cheap: stops at the first match); or when a manifest is a
    bad input file (a malformed line, an id that is not a plain file name, no videos): it is read through,
    line by line in constant memory, so a bad line fails before any work rather than in the middle of a run."""
    for item in map(str, items):
        if storage.is_remote(item):
            import pyarrow.fs as pafs

            fs, path = storage.filesystem(item)
            info = fs.get_file_info(path)
            if info.type == pafs.FileType.NotFound:
                raise InputError(f"--input {item}: no such object or prefix")
            if manifests and is_manifest(item) and info.type == pafs.FileType.File:
                _read_through(item)
            continue
        p = Path(item)
        if p.is_file():
            if manifests and is_manifest(item):
                _read_through(item)
            continue
        if p.is_dir():
            if next(_walk_local(p, suffixes), None) is None:
                raise InputError(f"--input {item}: folder holds no {'/'.join(suffixes)} files")
            continue
        if not _has_glob(item) or next(_glob(item, suffixes), None) is None:
            raise InputError(f"--input {item}: no such file or folder, and no {'/'.join(suffixes)} file matches it")


def _read_through(manifest: str) -> None:
    for _ in iter_manifest(manifest):
        pass


def iter_argument(item: str, suffixes: tuple[str, ...], manifests: bool = True) -> Iterator[Entry]:
    """The inputs one argument names, one at a time (see the module docstring)."""
    item = str(item)
    if manifests and is_manifest(item) and (storage.is_remote(item) or Path(item).is_file()):
        yield from iter_manifest(item)
    elif storage.is_remote(item):
        yield from ((u, None) for u in _walk_remote(item, suffixes))
    elif Path(item).is_file():
        yield str(Path(item).resolve()), None
    elif Path(item).is_dir():
        yield from ((str(p.resolve()), None) for p in _walk_local(Path(item), suffixes))
    else:
        yield from ((str(p.resolve()), None) for p in _glob(item, suffixes))


def _walk_local(root: Path, suffixes: tuple[str, ...]) -> Iterator[Path]:
    """Files under ``root`` whose names end with ``suffixes``, one directory at a time (sorted in each)."""
    for folder, dirs, files in os.walk(root):
        dirs.sort()
        for name in sorted(files):
            if name.lower().endswith(suffixes):
                yield Path(folder) / name


def _glob(pattern: str, suffixes: tuple[str, ...]) -> Iterator[Path]:
    for m in glob.iglob(pattern, recursive=True):
        if m.lower().endswith(suffixes) and Path(m).is_file():
            yield Path(m)


def _walk_remote(uri: str, suffixes: tuple[str, ...]) -> Iterator[str]:
    """Objects under a prefix, listed one level at a time (a flat prefix is one listing, done where this
    generator runs: in a Ray Data read task, not on the driver)."""
    import pyarrow.fs as pafs

    fs, path = storage.filesystem(uri)
    scheme = uri.split("://", 1)[0] + "://"
    info = fs.get_file_info(path)
    if info.type == pafs.FileType.File:
        yield uri
        return
    pending = [path]
    while pending:
        level = sorted(fs.get_file_info(pafs.FileSelector(pending.pop(), allow_not_found=True)), key=lambda f: f.path)
        pending.extend(reversed([f.path for f in level if f.type == pafs.FileType.Directory]))
        for f in level:
            if f.type == pafs.FileType.File and f.path.lower().endswith(suffixes):
                yield scheme + f.path


def _open_text(uri: str) -> io.TextIOBase:
    if not storage.is_remote(uri):
        return open(uri, encoding="utf-8", newline="")
    fs, path = storage.filesystem(uri)
    return io.TextIOWrapper(fs.open_input_stream(path), encoding="utf-8", newline="")


def _manifest_base(uri: str) -> str:
    return uri.rstrip("/").rsplit("/", 1)[0] if storage.is_remote(uri) else str(Path(uri).resolve().parent)


def _resolve(base: str, u: str) -> str:
    if storage.is_remote(u) or Path(u).is_absolute():
        return u
    return storage.join(base, u) if storage.is_remote(base) else str((Path(base) / u).resolve())


def iter_manifest(uri: str) -> Iterator[Entry]:
    """``(uri, video_id or None)`` rows of a manifest file, streamed line by line (see the module docstring);
    a malformed line raises :class:`InputError` naming the file and line."""
    name = uri.lower()
    base = _manifest_base(uri)
    count = 0
    with _open_text(uri) as f:
        if name.endswith(".jsonl"):
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as err:
                    raise InputError(f"--input {uri}: line {n} is not JSON ({err})") from None
                if not isinstance(obj, dict) or not isinstance(obj.get("uri"), str):
                    raise InputError(f"--input {uri}: line {n} has no string 'uri'")
                vid = check_video_id(obj.get("video_id"), f"--input {uri}: line {n}")
                count += 1
                yield _resolve(base, obj["uri"]), vid
        elif name.endswith(".csv"):
            reader = csv.DictReader(f)
            if not reader.fieldnames or "uri" not in reader.fieldnames:
                raise InputError(f"--input {uri}: a CSV manifest needs a 'uri' column")
            for r in reader:
                if r.get("uri"):
                    vid = check_video_id(r.get("video_id"), f"--input {uri}: line {reader.line_num}")
                    count += 1
                    yield _resolve(base, r["uri"]), vid
        else:
            for line in f:
                line = line.strip()
                if line and not line.startswith("#"):
                    count += 1
                    yield _resolve(base, line), None
    if not count:
        raise InputError(f"--input {uri}: the manifest lists no videos")


def stem(uri: str) -> str:
    """A file's name without its (last) suffix: the default id of an input."""
    name = uri.rstrip("/").rsplit("/", 1)[-1]
    return name.rsplit(".", 1)[0] if "." in name else name


def input_name(uri: str, manifest_id: Optional[str]) -> str:
    """The id an input asks for: its manifest id, else its file stem (made unique by :func:`unique_ids`)."""
    return manifest_id if manifest_id is not None else stem(uri)


def id_problem(video_id: str) -> Optional[str]:
    """Why ``video_id`` cannot name an output file (None: it can)."""
    if not video_id:
        return "the video id is empty"
    if len(video_id) > MAX_ID_LENGTH:
        return f"the video id is longer than {MAX_ID_LENGTH} characters"
    if video_id in (".", "..") or video_id.startswith(".") or not _SAFE_ID.match(video_id):
        return (f"the video id {video_id!r} is not a plain file name (no path separators, control characters "
                f"or leading dot); ids name output files")
    return None


def unique_ids(name: str, uris: Iterable[str]) -> dict[str, str]:
    """uri -> id for the distinct inputs that share ``name``: the name itself when it is alone, else the name
    plus 8 hex digits of the URI's SHA-1 (stable: the same inputs always get the same ids)."""
    distinct = sorted(set(uris))
    if len(distinct) == 1:
        return {distinct[0]: name}
    return {u: f"{name}-{hashlib.sha1(u.encode()).hexdigest()[:8]}" for u in distinct}


def video_rows(items: list[str]) -> list[dict]:
    """Every input of ``items`` as rows ``{"video_id", "uri"}``, sorted by URI, in memory. For small input
    sets (tests, tools); the steps stream their inputs through Ray Data instead."""
    check_arguments(items, VIDEO_SUFFIXES)
    by_name: dict[str, dict[str, None]] = {}
    for item in items:
        for uri, vid in iter_argument(item, VIDEO_SUFFIXES):
            by_name.setdefault(input_name(uri, vid), {})[uri] = None
    rows = [{"video_id": vid, "uri": uri} for name, uris in by_name.items() for uri, vid in unique_ids(name, uris).items()]
    return sorted(rows, key=lambda r: r["uri"])


def expand(items: list[str], suffixes: tuple[str, ...]) -> list[Path]:
    """Local files only (graphs and other step outputs), in memory: files, folders (recursive) and globs."""
    check_arguments(items, suffixes, manifests=False)
    return sorted({Path(u) for item in items for u, _ in iter_argument(item, suffixes, manifests=False)})
