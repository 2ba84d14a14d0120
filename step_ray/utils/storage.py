"""Local paths and object-store URIs (``s3://``, ``gs://``) behind one small API, through pyarrow filesystems.

Videos on an object store are copied to a local temporary file before decoding (decord and FFmpeg want a
seekable local file; the copy streams in blocks and is removed afterwards). Outputs are written atomically on
a local disk (temp file + rename); object stores have no rename, but a single PUT is atomic already.

Outputs that other libraries write into a local folder (Ray Train's exports, Hugging Face ``save_pretrained``,
TensorBoard event files) reach an object store through :func:`staged_folder`: they are written into a local
staging folder and uploaded when the step ends.

Credentials and endpoints come from the usual environment of each store (``AWS_*`` variables, including
``AWS_ENDPOINT_URL`` for S3-compatible stores such as MinIO; ``GOOGLE_APPLICATION_CREDENTIALS``), or from a
pyarrow URI query (``s3://bucket/key?endpoint_override=...``).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import BinaryIO, Iterator

REMOTE_SCHEMES = ("s3://", "gs://", "gcs://")
HASH_BLOCK = 1 << 20  # bytes read from the start, the middle and the end of a file for its content key
COPY_BLOCK = 8 << 20

logger = logging.getLogger(__name__)


def is_remote(uri: str) -> bool:
    return str(uri).startswith(REMOTE_SCHEMES)


def filesystem(uri: str):
    """``(pyarrow filesystem, path within it)`` for a local path or a remote URI."""
    import pyarrow.fs as pafs

    if is_remote(uri):
        return pafs.FileSystem.from_uri(uri)
    return pafs.LocalFileSystem(), str(Path(uri).resolve())


def folder(uri: str | Path) -> str:
    """``uri`` as a folder name the other helpers join onto: an object-store URI without its trailing slash,
    a local path normalised by :class:`~pathlib.Path`."""
    return str(uri).rstrip("/") if is_remote(str(uri)) else str(Path(uri))


def join(base: str, *names: str) -> str:
    """``base/name/...``: with ``/`` for an object-store URI, :class:`~pathlib.Path` rules for a local path."""
    if is_remote(base):
        return "/".join([base.rstrip("/"), *names])
    return str(Path(base, *names))


def exists(uri: str) -> bool:
    import pyarrow.fs as pafs

    fs, path = filesystem(uri)
    return fs.get_file_info(path).type == pafs.FileType.File


def read_text(uri: str) -> str:
    if not is_remote(uri):
        return Path(uri).read_text()
    fs, path = filesystem(uri)
    with fs.open_input_stream(path) as f:
        return f.read().decode()


@contextlib.contextmanager
def open_write(uri: str) -> Iterator[BinaryIO]:
    """A binary stream to write a whole file atomically: a local temp file renamed into place on success
    (removed on error), or an object-store upload (a single object appears only when it completes)."""
    if is_remote(uri):
        fs, path = filesystem(uri)
        with fs.open_output_stream(path) as f:
            yield f
        return
    p = Path(uri)
    p.parent.mkdir(parents=True, exist_ok=True)
    # A hidden name of its own per writer: two writers of one file (a retried task) never share a temp file,
    # and folder readers (pyarrow datasets skip dot-files) never see a half-written one.
    tmp = p.with_name(f".{p.name}.{os.getpid()}.{os.urandom(4).hex()}.tmp")
    try:
        with open(tmp, "wb") as f:
            yield f
        tmp.replace(p)
    finally:
        tmp.unlink(missing_ok=True)


def write_text(uri: str, text: str) -> None:
    """Write a whole text file atomically (a half-written output never looks finished)."""
    with open_write(uri) as f:
        f.write(text.encode())


def list_files(uri: str, suffixes: tuple[str, ...]) -> list[str]:
    """Files under a folder or prefix (recursive) whose names end with one of ``suffixes``, as URIs."""
    import pyarrow.fs as pafs

    fs, path = filesystem(uri)
    info = fs.get_file_info(path)
    if info.type == pafs.FileType.File:
        return [uri]
    if info.type != pafs.FileType.Directory:
        return []
    scheme = uri.split("://", 1)[0] + "://" if is_remote(uri) else ""
    found = fs.get_file_info(pafs.FileSelector(path, recursive=True))
    return sorted(scheme + f.path for f in found
                  if f.type == pafs.FileType.File and f.path.lower().endswith(suffixes))


def content_key(uri: str) -> str:
    """A fingerprint of a file's content: SHA-256 of its size and of 1 MiB from its start, middle and end.

    Reading three blocks instead of the whole file keeps this cheap for multi-GB videos on an object store,
    while any re-encode, trim or replacement changes it (size or bytes); a video edited in place without
    changing its size or those blocks would not be noticed.
    """
    fs, path = filesystem(uri)
    size = fs.get_file_info(path).size or 0
    h = hashlib.sha256(str(size).encode())
    with fs.open_input_file(path) as f:
        for offset in sorted({0, max(0, size // 2 - HASH_BLOCK // 2), max(0, size - HASH_BLOCK)}):
            f.seek(offset)
            h.update(f.read(HASH_BLOCK))
    return h.hexdigest()


@contextlib.contextmanager
def local_file(uri: str) -> Iterator[str]:
    """A local path with the file's content: the path itself, or a temporary copy of a remote object."""
    if not is_remote(uri):
        yield uri
        return
    fs, path = filesystem(uri)
    suffix = os.path.splitext(path)[1]
    fd, tmp = tempfile.mkstemp(prefix="step-ray-", suffix=suffix)
    try:
        with os.fdopen(fd, "wb") as out, fs.open_input_stream(path) as src:
            while block := src.read(COPY_BLOCK):
                out.write(block)
        yield tmp
    finally:
        os.unlink(tmp)


def is_dir(uri: str) -> bool:
    """A local folder, or an object-store prefix that holds at least one object."""
    import pyarrow.fs as pafs

    fs, path = filesystem(uri)
    return fs.get_file_info(path).type == pafs.FileType.Directory


def write_parquet(uri: str, table) -> None:
    """Write an Arrow table as one Parquet file, atomically (see :func:`open_write`). The bytes depend only
    on the table: the same rows and schema give the same file."""
    import pyarrow.parquet as pq

    with open_write(uri) as f:
        pq.write_table(table, f)


def delete_dir(uri: str) -> None:
    """Remove a folder or prefix and everything under it (nothing happens if it is not there)."""
    import pyarrow.fs as pafs

    fs, path = filesystem(uri)
    if fs.get_file_info(path).type != pafs.FileType.NotFound:
        fs.delete_dir(path)


def delete_file(uri: str) -> None:
    fs, path = filesystem(uri)
    fs.delete_file(path)


def list_dir(uri: str) -> list[str]:
    """Names directly under a folder or prefix (files and folders), sorted; empty if it is not there."""
    import pyarrow.fs as pafs

    fs, path = filesystem(uri)
    if fs.get_file_info(path).type != pafs.FileType.Directory:
        return []
    return sorted(f.base_name for f in fs.get_file_info(pafs.FileSelector(path)))


def upload_file(local: str | Path, uri: str) -> None:
    """Copy a local file to ``uri`` (local or remote), atomically (see :func:`open_write`)."""
    with open(local, "rb") as src, open_write(uri) as out:
        while block := src.read(COPY_BLOCK):
            out.write(block)


def upload_dir(local: str | Path, uri: str, replace: bool = True) -> None:
    """Copy a local folder and everything under it to the folder or prefix ``uri``; ``replace``: remove what
    was there first (no file of an older export survives beside the new one), else merge into it."""
    import pyarrow.fs as pafs

    fs, path = filesystem(uri)
    if replace and fs.get_file_info(path).type != pafs.FileType.NotFound:
        fs.delete_dir(path)
    fs.create_dir(path, recursive=True)
    pafs.copy_files(str(Path(local).resolve()), path, source_filesystem=pafs.LocalFileSystem(),
                    destination_filesystem=fs)


@contextlib.contextmanager
def staged_folder(uri: str, logs: tuple[str, ...] = ()) -> Iterator[Path]:
    """A local folder to write the output folder ``uri`` into: the folder itself when it is local (created);
    for an object store, a temporary staging folder whose entries are uploaded into ``uri`` when the block
    ends, folders replacing the ones there and files last, then removed.

    ``logs`` names entries that are merged with what the store holds (event files of earlier runs stay) and
    uploaded even when the block fails or is interrupted; other entries are uploaded only when it succeeds,
    so a half-written export never replaces a whole one. A symlink (a local model folder the output refers
    to) is not uploaded. The staging folder is under ``$TMPDIR``: it needs room for the exports."""
    if not is_remote(uri):
        folder = Path(uri)
        folder.mkdir(parents=True, exist_ok=True)
        yield folder
        return
    stage = Path(tempfile.mkdtemp(prefix="step-ray-stage-"))
    succeeded = False
    try:
        yield stage
        succeeded = True
    finally:
        try:
            entries = [e for e in sorted(stage.iterdir(), key=lambda e: (e.is_file(), e.name))
                       if not e.is_symlink() and (succeeded or e.name in logs)]
            for entry in entries:
                if entry.is_dir():
                    upload_dir(entry, join(uri, entry.name), replace=entry.name not in logs)
                else:
                    upload_file(entry, join(uri, entry.name))
        except Exception as err:
            if succeeded:
                raise
            logger.warning("could not upload %s to %s after the failure: %s", ", ".join(logs), uri, err)
        finally:
            shutil.rmtree(stage, ignore_errors=True)


def local_dir(uri: str, skip: tuple[str, ...] = ()) -> str:
    """A local folder with the content of the folder or prefix ``uri``: the path itself when it is local; for an
    object store, a copy under ``$TMPDIR/step-ray-remote/`` (what libraries that read a folder need, e.g. Hugging
    Face ``from_pretrained``). The copy is kept by the prefix's listing (names, sizes, modification times): a
    later call in any process of this machine reuses it until the objects change. ``skip`` names top-level
    entries that are not copied (a run's checkpoints beside the model it exported). Copies of objects since
    replaced stay until ``$TMPDIR`` is cleaned (another process may still read them). Fails with
    ``FileNotFoundError`` when the prefix holds no object."""
    import pyarrow.fs as pafs

    if not is_remote(uri):
        return uri
    fs, path = filesystem(uri)
    path = path.rstrip("/")
    found = [f for f in fs.get_file_info(pafs.FileSelector(path, recursive=True, allow_not_found=True))
             if f.type == pafs.FileType.File and f.path[len(path) + 1:].split("/", 1)[0] not in skip]
    if not found:
        raise FileNotFoundError(f"no object under {uri}")
    listing = hashlib.sha256(uri.encode())
    for f in sorted(found, key=lambda f: f.path):
        listing.update(f"{f.path}\0{f.size}\0{f.mtime_ns}\n".encode())
    root = Path(tempfile.gettempdir()) / "step-ray-remote"
    target = root / f"{hashlib.sha256(uri.encode()).hexdigest()[:16]}-{listing.hexdigest()[:16]}"
    if target.is_dir():
        return str(target)
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=root))
    try:
        for f in found:
            local = tmp / f.path[len(path) + 1:]
            local.parent.mkdir(parents=True, exist_ok=True)
            with fs.open_input_stream(f.path) as src, open(local, "wb") as out:
                while block := src.read(COPY_BLOCK):
                    out.write(block)
        try:
            tmp.rename(target)  # whole or not at all; another process may have finished the same copy first
        except OSError:
            if not target.is_dir():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return str(target)
