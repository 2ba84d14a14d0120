"""The question record every benchmark adapter yields, and what the adapters share: reading the input file from a
local path or an object store, and finding each question's video under ``--videos ROOT``.

A :class:`BenchmarkQuestion` carries what a scorer needs (question text, options, the video's URI and the span
to sample frames from) and what the summary groups by (steps, the benchmark's own question types), with the
benchmark's fields kept verbatim for the predictions table. A question that cannot be asked (its video is
missing, its id would escape the video folder, its clip is empty) is still a record: ``skip_reason`` says why,
and the outputs count it instead of dropping it.

``skip_reason`` strings are ``"<kind>: <detail>"``; the summary counts them by kind (the part before the colon).
"""

from __future__ import annotations

import codecs
import json
import posixpath
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping, Optional

from step_ray.utils import storage
from step_ray.utils.inputs import InputError

#: Version of the record layout below (and of the predictions table built from it).
RECORD_VERSION = "bench/1"


class BenchmarkFormatError(InputError):
    """A benchmark file does not follow its public format; the message names the file, the row and the field.
    (An :class:`InputError`: the CLI exits 2 with this one line.)"""


@dataclass(frozen=True)
class BenchmarkQuestion:
    """One question of a public benchmark, in the form every scorer and the outputs take."""

    id: str
    """Unique within the input file: NExT-QA ``<video>_<qid>`` (the key its ``eval_mc.py`` uses), STAR
    ``question_id``, AGQA the question's key."""
    benchmark: str
    """``nextqa``, ``star`` or ``agqa``."""
    split: Optional[str]
    """``train`` / ``val`` / ``test`` when the file name says it (``val.csv``, ``STAR_val.json``,
    ``test_balanced.txt``), else None."""
    question: str
    options: tuple[str, ...]
    """The options shown, in the benchmark's order. Open-answer benchmarks (AGQA): the answer vocabulary of the
    question's type, to score by likelihood over it or to map a generated answer onto."""
    answer: Optional[str]
    """The answer text; None for unlabelled questions (STAR's test split has no answers)."""
    answer_index: Optional[int]
    """Index of ``answer`` in ``options``; None when unlabelled, or (open answer) when the vocabulary lacks it."""
    video_id: str
    video_uri: Optional[str]
    """Where the video is (a local path or an object-store URI); None when it was not found."""
    start: Optional[float] = None
    """Seconds into the video where the question's clip starts (STAR); None: the start of the video."""
    end: Optional[float] = None
    """Seconds where the clip ends; None: the end of the video."""
    times: Optional[tuple[float, ...]] = None
    """Seconds the question names, to take frames at (step-ray's QRA); None: frames spread over the clip."""
    steps: Optional[int] = None
    """Reasoning steps when the benchmark counts them (AGQA); None otherwise."""
    open_answer: bool = False
    """True when the benchmark is open-answer and ``options`` is a vocabulary, not options it showed."""
    groups: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    """Grouping dimension -> labels of this question, for accuracy by type: NExT-QA ``{"type": ("TN",),
    "family": ("T",)}``, STAR ``{"type": ("Interaction",), "template": ("Interaction_T1",)}``, AGQA
    ``{"reasoning": ("exists", "obj-rel"), "semantic": ..., "structural": ..., "answer_type": ...}`` (a question
    counts in every label it has)."""
    fields: Mapping[str, Any] = field(default_factory=dict)
    """The benchmark's own fields of the question, as read (JSON types; large annotations such as scene-graph
    groundings are left out)."""
    skip_reason: Optional[str] = None
    """Why the question cannot be asked (``video_missing: ...``); None when it can."""

    @property
    def askable(self) -> bool:
        """Whether a scorer should be given this question."""
        return self.skip_reason is None

    @property
    def labelled(self) -> bool:
        return self.answer is not None

    @property
    def family(self) -> str:
        """The first label of the first grouping dimension (the benchmark's main question type)."""
        for labels in self.groups.values():
            if labels:
                return labels[0]
        return ""

    def as_row(self) -> dict[str, Any]:
        """The question in the QRA row layout the scorers read (``id, question, options, answer_index,
        video_uri, start, end, times, steps, family``), for scoring a benchmark with the code that scores QRA."""
        return {
            "id": self.id,
            "video_id": self.video_id,
            "video_uri": self.video_uri,
            "start": self.start,
            "end": self.end,
            "times": list(self.times) if self.times else None,
            "question": self.question,
            "options": list(self.options),
            "answer": self.answer,
            "answer_index": self.answer_index,
            "steps": self.steps,
            "family": self.family,
        }


def split_from_name(name: str) -> Optional[str]:
    """``train`` / ``val`` / ``test`` if the file name (without folders) contains exactly one of them."""
    base = name.rstrip("/").rsplit("/", 1)[-1].lower()
    found = [s for s in ("train", "val", "test") if s in base]
    return found[0] if len(found) == 1 else None


def read_input(uri: str, what: str) -> str:
    """The text of an input file (local or ``s3://`` / ``gs://``); a missing file is a one-line error."""
    try:
        if not storage.exists(uri):
            raise BenchmarkFormatError(f"{what} {uri}: no such file")
        return storage.read_text(uri).removeprefix("\ufeff")  # a byte-order mark is not part of the first field
    except BenchmarkFormatError:
        raise
    except (OSError, UnicodeDecodeError) as err:
        raise BenchmarkFormatError(f"{what} {uri}: cannot read it ({err})") from None


def read_json(uri: str, what: str) -> Any:
    """The parsed JSON of an input file; malformed JSON is a one-line error naming the file."""
    try:
        return json.loads(read_input(uri, what))
    except json.JSONDecodeError as err:
        raise BenchmarkFormatError(f"{what} {uri}: not JSON ({err})") from None


def iter_json_object(uri: str, what: str, block: int = 1 << 20) -> Iterator[tuple[str, Any]]:
    """``(key, value)`` of a file holding one JSON object, read in blocks: memory holds one value at a time, not
    the file (AGQA's balanced files run to hundreds of MB, mostly scene-graph groundings the caller drops)."""
    if not storage.exists(uri):
        raise BenchmarkFormatError(f"{what} {uri}: no such file")
    decoder, text_of = json.JSONDecoder(), codecs.getincrementaldecoder("utf-8-sig")()
    fs, path = storage.filesystem(uri)
    with fs.open_input_stream(path) as f:
        buf, pos, eof = "", 0, False

        def more() -> None:
            nonlocal buf, pos, eof
            if not eof:
                data = f.read(block)
                eof = not data
                buf, pos = buf[pos:] + text_of.decode(data, final=eof), 0

        def token(expected: str) -> str:
            """The next non-space character, which must be one of ``expected`` (not consumed)."""
            nonlocal pos
            while True:
                while pos < len(buf) and buf[pos] in " \t\r\n":
                    pos += 1
                if pos < len(buf) or eof:
                    break
                more()
            if pos >= len(buf) or buf[pos] not in expected:
                got = repr(buf[pos]) if pos < len(buf) else "the end of the file"
                raise BenchmarkFormatError(f"{what} {uri}: not a JSON object of questions (found {got} where "
                                           f"one of {expected!r} belongs)")
            return buf[pos]

        def value(expected: str) -> Any:
            nonlocal pos
            token(expected)
            while True:
                try:
                    obj, end = decoder.raw_decode(buf, pos)
                    if end < len(buf) or eof:  # a number at the end of a block may go on in the next one
                        pos = end
                        return obj
                except json.JSONDecodeError as err:
                    if eof:
                        raise BenchmarkFormatError(f"{what} {uri}: not JSON ({err})") from None
                more()

        token("{")
        pos += 1
        if token('"}') == "}":
            return
        while True:
            key = value('"')
            token(":")
            pos += 1
            yield key, value('{["-0123456789tfn')
            if token(",}") == "}":
                return
            pos += 1


def sibling(uri: str, name: str) -> str:
    """The file ``name`` in the same folder (or object-store prefix) as ``uri``."""
    if storage.is_remote(uri):
        return f"{uri.rsplit('/', 1)[0]}/{name}"
    return str(Path(uri).resolve().parent / name)


class VideoResolver:
    """Finds videos under a root folder or object-store prefix, by a relative path built from the benchmark's
    ids. Ids come from input files, so a relative path that is absolute, climbs out of the root (``..``) or holds
    odd characters is refused (a skip reason), never opened. Each path is looked up once (many questions share
    a video)."""

    def __init__(self, root: str):
        root = str(root)
        if not storage.is_remote(root):
            if not Path(root).is_dir():
                raise BenchmarkFormatError(f"--videos {root}: not a folder")
            root = str(Path(root).resolve())
        self.root = root
        self._seen: dict[str, tuple[Optional[str], Optional[str]]] = {}

    def resolve(self, relative: str) -> tuple[Optional[str], Optional[str]]:
        """``(uri, None)`` for a video that exists, else ``(None, reason)``."""
        if relative not in self._seen:
            self._seen[relative] = self._lookup(relative)
        return self._seen[relative]

    def _lookup(self, relative: str) -> tuple[Optional[str], Optional[str]]:
        if not safe_relative(relative):
            return None, f"unsafe_video_path: {relative!r}"
        uri = storage.join(self.root, relative)
        try:
            found = storage.exists(uri)
        except OSError as err:  # an object store that refuses the look-up: the video cannot be had
            return None, f"video_unreachable: {uri}: {err}"
        return (uri, None) if found else (None, f"video_missing: {uri}")


def safe_relative(path: str) -> bool:
    """A relative POSIX path of plain names: no leading ``/``, no ``..`` or ``.`` parts, no backslashes,
    control characters or empty parts."""
    if not path or path.startswith("/") or "\\" in path or any(ord(c) < 32 for c in path):
        return False
    parts = path.split("/")
    return all(p not in ("", ".", "..") for p in parts) and posixpath.normpath(path) == path
