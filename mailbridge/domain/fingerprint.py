"""What a notification said, kept as keyed word-trigram hashes: recognisable in a quoted reply, not readable.

A client answering a notification usually quotes it, in whatever way its mail client quotes (a
header in the reader's language, '>' prefixes or none, re-wrapped lines, HTML turned to text). The
pipeline cuts that copy precisely when it knows what was sent. Keeping the sent text itself would
keep a second copy of every message; instead, at send time, the worker keeps the set of hashes of
every run of three consecutive words of the text and HTML renderings (BLAKE2b keyed with a secret
derived from the deployment's token secret, truncated to 32 bits), tagged by where the run came
from: our template's own words (the frame) or the message it carried (the body). Words are compared
after Unicode compatibility folding and case folding, without punctuation, line breaks or URLs, so
quoting, wrapping and link rewriting do not hide a copy. The hashes go with the outbox row, and a
permanently deleted message takes its rows with it.
"""

from __future__ import annotations

import base64
import hashlib
import re
import unicodedata
from array import array
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from html import unescape
from html.parser import HTMLParser
from typing import Any, Final

VERSION: Final = 1
N: Final = 3  # words per hashed run
MAX_RUNS: Final = 20_000  # per rendering: a very long message is fingerprinted from its start

_URL = re.compile(r"(?:https?://|mailto:|www\.)\S+", re.IGNORECASE)
_WORD = re.compile(r"[^\W_]+")


def words(text: str) -> list[str]:
    """The words of a text as a quote would show them: folded, no URLs, no punctuation."""
    folded = unicodedata.normalize("NFKC", text).casefold()
    return _WORD.findall(_URL.sub(" ", folded))


class _Text(HTMLParser):
    """The text of an HTML rendering, in order; what a reader never sees (head, style) left out."""

    _HIDDEN = frozenset({"head", "style", "script", "title", "template"})

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self.hidden = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.hidden += tag in self._HIDDEN
        self.parts.append(" ")

    def handle_endtag(self, tag: str) -> None:
        self.hidden -= tag in self._HIDDEN and self.hidden > 0
        self.parts.append(" ")

    def handle_data(self, data: str) -> None:
        if not self.hidden:
            self.parts.append(data)


def html_words(html: str) -> list[str]:
    parser = _Text()
    parser.feed(html)
    parser.close()
    return words(unescape("".join(parser.parts)))


def run_hash(key: bytes, run: Sequence[str]) -> int:
    digest = hashlib.blake2b(" ".join(run).encode("utf-8"), digest_size=4, key=key[:64])
    return int.from_bytes(digest.digest(), "big")


def hashes(key: bytes, tokens: Sequence[str]) -> list[int]:
    """The hash of every run of N consecutive words (a shorter text: one run of all its words)."""
    if len(tokens) < N:
        return [run_hash(key, tokens)] if tokens else []
    return [run_hash(key, tokens[i : i + N]) for i in range(min(len(tokens) - N + 1, MAX_RUNS))]


def _find(tokens: Sequence[str], part: Sequence[str]) -> int:
    """Where ``part`` starts in ``tokens`` (the first time), or -1."""
    if not part:
        return -1
    first = part[0]
    for i in range(len(tokens) - len(part) + 1):
        if tokens[i] == first and list(tokens[i : i + len(part)]) == list(part):
            return i
    return -1


@dataclass(frozen=True)
class Fingerprint:
    """Run hashes of what one notification said; ``hints`` are single words of its From and Subject."""

    frame: frozenset[int]  # runs made only of our template's words (and the author, subject, links)
    body: frozenset[int]  # runs that carry at least one word of the message itself
    hints: frozenset[int]  # words a client puts in its quote header: sender name, address, subject
    size: int  # words in the text rendering

    @property
    def runs(self) -> frozenset[int]:
        return self.frame | self.body

    def to_json(self) -> dict[str, Any]:
        return {
            "v": VERSION,
            "frame": _pack(self.frame),
            "body": _pack(self.body),
            "hints": _pack(self.hints),
            "size": self.size,
        }

    @classmethod
    def from_json(cls, data: Any) -> Fingerprint | None:
        """None for anything that is not a fingerprint of this version (old rows, damaged values)."""
        if not isinstance(data, dict) or data.get("v") != VERSION:
            return None
        try:
            return cls(
                frame=_unpack(data["frame"]),
                body=_unpack(data["body"]),
                hints=_unpack(data["hints"]),
                size=int(data["size"]),
            )
        except (KeyError, TypeError, ValueError):
            return None


def _pack(values: Iterable[int]) -> str:
    packed = array("I", sorted(values))
    if packed.itemsize != 4:  # pragma: no cover - every platform we run on has 32-bit unsigned int
        raise RuntimeError("array('I') is not 32 bits here")
    return base64.b64encode(packed.tobytes()).decode("ascii")


def _unpack(value: Any) -> frozenset[int]:
    if not isinstance(value, str):
        raise TypeError("not a packed run list")
    packed = array("I")
    packed.frombytes(base64.b64decode(value, validate=True))
    return frozenset(packed)


def _split(key: bytes, tokens: Sequence[str], body: Sequence[str]) -> tuple[set[int], set[int]]:
    """Runs of a rendering, split into those inside the body's span and those of the frame only."""
    start = _find(tokens, body)
    end = start + len(body) if start >= 0 else -1
    frame: set[int] = set()
    carried: set[int] = set()
    if len(tokens) < N:
        (carried if start >= 0 else frame).update(hashes(key, tokens))
        return frame, carried
    for i, value in enumerate(hashes(key, tokens)):
        touches_body = start >= 0 and i < end and i + N > start
        (carried if touches_body else frame).add(value)
    return frame, carried


def fingerprint(
    key: bytes, *, text: str, html: str, body: str, sender: str, address: str, subject: str
) -> Fingerprint:
    """The fingerprint of one rendered notification (text and HTML) that carried ``body``."""
    body_words = words(body)
    frame: set[int] = set()
    carried: set[int] = set()
    text_words = words(text)
    for tokens in (text_words, html_words(html)):
        f, b = _split(key, tokens, body_words)
        frame |= f
        carried |= b
    hint_words = {w for w in words(f"{sender} {address} {subject}") if len(w) > 1}
    return Fingerprint(
        frame=frozenset(frame - carried),
        body=frozenset(carried),
        hints=frozenset(run_hash(key, [w]) for w in hint_words),
        size=len(text_words),
    )
