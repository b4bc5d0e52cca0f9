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
import functools
import hashlib
import re
import unicodedata
from array import array
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from html import unescape
from typing import Any, Final

VERSION: Final = 1
N: Final = 3  # words per hashed run
MAX_RUNS: Final = 20_000  # per rendering: a very long message is fingerprinted from its start

# Applied to case-folded text only, so it needs no IGNORECASE (five times slower here): folding
# leaves no capitals, turns the long s into "s", and leaves the one other letter IGNORECASE matched
# to a letter of these prefixes, the dotless i, which is spelled out. tests/test_fingerprint_speed.py
# checks that it finds what the case-insensitive pattern found on folded text.
_URL_CASELESS = re.compile(r"(?:https?://|mailto:|www\.)\S+", re.IGNORECASE)
_URL = re.compile(r"(?:https?://|ma[i\u0131]lto:|www\.)\S+")
_WORD = re.compile(r"[^\W_]+")


def words(text: str) -> list[str]:
    """The words of a text as a quote would show them: folded, no URLs, no punctuation."""
    folded = unicodedata.normalize("NFKC", text).casefold()
    return _WORD.findall(_URL.sub(" ", folded))


# Our own templates' HTML (well formed; every value in it escaped by Jinja): what a reader never
# sees goes whole, every other tag becomes a space.
_UNSEEN_BLOCK = re.compile(r"<(head|style|script|title|template)\b.*?</\1\s*>", re.IGNORECASE | re.DOTALL)
_TAG = re.compile(r"<[^>]*>")


def html_words(html: str) -> list[str]:
    return words(unescape(_TAG.sub(" ", _UNSEEN_BLOCK.sub(" ", html))))


def run_hash(key: bytes, run: Sequence[str]) -> int:
    return _hash(key, " ".join(run))


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


def _split(tokens: Sequence[str], body: Sequence[str]) -> tuple[set[str], set[str]]:
    """Runs of a rendering (as text), split into those touching the body's span and the frame's."""
    start = _find(tokens, body)
    if len(tokens) < N:
        runs = {" ".join(tokens)} if tokens else set()
        return (set(), runs) if start >= 0 else (runs, set())
    limited = tokens[: MAX_RUNS + N - 1]
    runs_list = [" ".join(run) for run in zip(*(limited[k:] for k in range(N)), strict=False)]
    if start < 0:
        return set(runs_list), set()
    # Run i covers words i .. i + N - 1: it touches the body when it overlaps [start, start + len).
    first, last = max(0, start - N + 1), start + len(body)
    return set(runs_list[:first]) | set(runs_list[last:]), set(runs_list[first:last])


def fingerprint(
    key: bytes, *, text: str, html: str, body: str, sender: str, address: str, subject: str
) -> Fingerprint:
    """The fingerprint of one rendered notification (text and HTML) that carried ``body``.

    The same rendering repeats for every recipient of a message: the last ones are remembered.
    """
    return _fingerprint(key, text, html, body, sender, address, subject)


@functools.lru_cache(maxsize=256)
def _fingerprint(
    key: bytes, text: str, html: str, body: str, sender: str, address: str, subject: str
) -> Fingerprint:
    body_words = words(body)
    frame: set[str] = set()
    carried: set[str] = set()
    text_words = words(text)
    for tokens in (text_words, html_words(html)):
        f, b = _split(tokens, body_words)
        frame |= f
        carried |= b
    hint_words = {w for w in words(f"{sender} {address} {subject}") if len(w) > 1}
    hashed = _hasher(key)
    return Fingerprint(
        frame=frozenset(map(hashed, frame - carried)),
        body=frozenset(map(hashed, carried)),
        hints=frozenset(map(hashed, hint_words)),
        size=len(text_words),
    )


def _hash(key: bytes, joined: str) -> int:
    return int.from_bytes(
        hashlib.blake2b(joined.encode("utf-8"), digest_size=4, key=key[:64]).digest(), "big"
    )


def _hasher(key: bytes) -> Callable[[str], int]:
    """``_hash`` for many runs under one key: the key block is absorbed once and the state copied
    for each run (copying a keyed BLAKE2b state equals keying a fresh one, RFC 7693)."""
    keyed = hashlib.blake2b(digest_size=4, key=key[:64])

    def one(joined: str) -> int:
        state = keyed.copy()
        state.update(joined.encode("utf-8"))
        return int.from_bytes(state.digest(), "big")

    return one
