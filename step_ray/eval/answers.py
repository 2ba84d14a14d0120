"""Free-form answers: the normaliser open-answer benchmarks are compared with, and the parser that maps a
generated answer onto one of a question's options.

The parser tries, in order, on the whole text and then on the part after the last "the answer is" / "answer:"
(a model that writes its rationale first ends with "So the answer is X."), then on the last line:

1. ``exact``: the text is an option, character for character (surrounding spaces aside);
2. ``normalised``: equal to exactly one option after :func:`normalise_answer`;
3. ``letter``: an option letter as the prompt shows them (``B``, ``(B)``, ``B.``, ``(B) blue``; when a text
   follows the letter it must be that option's).

Anything else is ``unparsed`` (scored wrong, counted apart). Two options that normalise alike never match by
normalisation: the answer is ambiguous.
"""

from __future__ import annotations

import re
import unicodedata
from typing import NamedTuple, Optional, Sequence

MATCH_KINDS = ("exact", "normalised", "letter", "unparsed")
#: The letters the prompt puts before options (step_ray.train.data.OPTION_LETTERS shows the same ones).
DEFAULT_LETTERS = "ABCDEFGH"
ARTICLES = frozenset({"a", "an", "the"})
NUMBER_WORDS = {w: str(i) for i, w in enumerate(
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen "
    "seventeen eighteen nineteen twenty".split())}
_ANSWER_MARKER = re.compile(r"\banswer\s*(?:is|:)\s*", re.IGNORECASE)
_LETTER = re.compile(r"^\(?([A-Z])\)?(?:[.:)]|(?=\s)|$)\s*(.*)$", re.DOTALL)


def normalise_answer(text: str) -> str:
    """Lower case, punctuation (but ``/``) to spaces, articles dropped, number words as digits, single spaces:
    ``"The closet/cabinet."`` -> ``"closet/cabinet"``, ``"Two."`` -> ``"2"``, ``"the baby's toy"`` ->
    ``"baby s toy"`` (NExT-QA writes possessives that way)."""
    t = unicodedata.normalize("NFKC", str(text)).lower()
    t = re.sub(r"[^\w\s/]|_", " ", t)
    words = [NUMBER_WORDS.get(w, w) for w in t.split() if w not in ARTICLES]
    return " ".join(words)


class ParsedAnswer(NamedTuple):
    index: Optional[int]
    """The option the text names; None when unparsed."""
    match: str
    """How: ``exact``, ``normalised``, ``letter`` or ``unparsed``."""


UNPARSED = ParsedAnswer(None, "unparsed")


def answer_spans(text: str) -> list[str]:
    """The parts of a generated text that may be the answer, most specific last: the whole text, what follows
    the last "answer is" / "answer:", the last non-empty line."""
    spans = [text.strip()]
    markers = list(_ANSWER_MARKER.finditer(text))
    if markers:
        spans.append(text[markers[-1].end():].strip())
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    if lines:
        spans.append(lines[-1])
    out: list[str] = []
    for s in spans:
        s = s.strip()
        if s and s not in out:
            out.append(s)
    return out


def parse_answer(text: Optional[str], options: Sequence[str],
                 letters: Optional[str] = DEFAULT_LETTERS) -> ParsedAnswer:
    """The option a generated ``text`` names (see the module docstring); ``letters=None`` turns letter matching
    off (open-answer vocabularies are not shown with letters)."""
    if not text or not options:
        return UNPARSED
    spans = answer_spans(text)
    for span in spans:
        if span in options:
            return ParsedAnswer(list(options).index(span), "exact")
    normalised = [normalise_answer(o) for o in options]
    for span in spans:
        for candidate in (span, span.rstrip(".!")):
            hits = {i for i, o in enumerate(normalised) if o and o == normalise_answer(candidate)}
            if len(hits) == 1:
                return ParsedAnswer(hits.pop(), "normalised")
    if letters:
        for span in spans:
            index = _letter_index(span, options, letters, normalised)
            if index is not None:
                return ParsedAnswer(index, "letter")
    return UNPARSED


def _letter_index(span: str, options: Sequence[str], letters: str, normalised: list[str]) -> Optional[int]:
    m = _LETTER.match(span)
    if not m or m.group(1) not in letters[:len(options)]:
        return None
    index = letters.index(m.group(1))
    rest = m.group(2).strip()
    if rest and normalise_answer(rest) != normalised[index]:
        return None  # "(B) red" when B is blue: the letter and the text disagree
    return index
