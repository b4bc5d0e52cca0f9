"""Cut our own notification out of a reply, exactly, whatever the client's language or quote header.

The reply token and the reply's ``In-Reply-To``/``References`` name the notification the client is
answering, and its words are ours: the outbox row keeps their fingerprint (see
:mod:`mailbridge.domain.fingerprint`). Here the reply is read as words, line by line, after removing
quote prefixes, URLs and punctuation; each run of three words is looked up in the fingerprint. A
line whose words are mostly found is part of the quoted copy, even when the client re-wrapped it,
prefixed it with '>' or not, or turned the HTML version into text.

The rule, from how people answer a notification:

* the copy starts at the first line of our notification the client kept (a line of our frame when
  there is one: "Alex wrote in …", "You have a new secure message …");
* the client's quote header is the short run of lines right above it (its date, our address, the
  sender's name or the subject, a field block, a line ending with ':' or "wrote"), in any language;
  it goes with the copy, together with the rules and blank lines around it;
* what is above is the author's reply, read by the generic rules (signatures, device footers);
* words the author typed inside the copy are inline answers: they stay, with the lines of the
  message they answer right above them (shown as quotes); our frame's lines never stay;
* words typed under the whole copy are a bottom-posted answer: they stay, without the copy.

When no copy of a sent notification is found, :func:`cut_own_copy` returns None and the generic
extractor decides alone.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from mailbridge.domain.fingerprint import Fingerprint, N, run_hash, words
from mailbridge.inbound.trim import text as t
from mailbridge.inbound.trim import vocabulary as v
from mailbridge.inbound.trim.text import ExtractedReply, extract_reply

MIN_MATCHED_WORDS: Final = 8  # fewer words of ours than this is a coincidence, not a copy
MIN_LINE_COVERAGE: Final = 0.6  # a line is ours when most of its words are
# A word counts as ours inside a run of at least this many words of ours: an answer that repeats
# three words of the question ("Yes, Tuesday at 10 works") is still the author's.
MIN_RUN_WORDS: Final = N + 1
MAX_HEADER_LINES: Final = 8  # Outlook's block: rule, From, Sent, To, Cc, Subject (+ wrapped lines)
MAX_WORDS: Final = 50_000  # a longer reply is read up to here (about 300 KB of text)

_QUOTE_PREFIX = re.compile(r"^(?:[ \t]*>)+[ \t]?")
_SENTENCE_END = re.compile(r"[.!?…]\s*$")


@dataclass
class _Reading:
    raw: list[str]
    lines: list[str]  # cleaned
    quoted: list[bool]
    line_words: list[int]  # words per line
    covered: list[int]  # words of ours per line
    carried: list[int]  # of those, words of the message body
    tokens: list[list[str]]  # words per line
    hints: frozenset[int]  # hashes of the words a quote header names (sender, address, subject)
    key: bytes

    def ours(self, i: int) -> bool:
        return self.line_words[i] > 0 and self.covered[i] >= MIN_LINE_COVERAGE * self.line_words[i]

    def body(self, i: int) -> bool:
        return self.ours(i) and 2 * self.carried[i] >= self.covered[i]

    def empty(self, i: int) -> bool:
        """No words at all: blank, a bare '>', a rule, residue."""
        return self.line_words[i] == 0

    def author(self, i: int) -> bool:
        return self.line_words[i] > 0 and not self.ours(i)

    def hinted(self, i: int) -> int:
        """How many different words of our From and Subject line i names (read only near the copy)."""
        return len({w for w in self.tokens[i] if run_hash(self.key, [w]) in self.hints})


@dataclass(frozen=True)
class _Words:
    """The reply's words in one row, which line each comes from, and the hash of every run."""

    flat: list[str]
    owner: list[int]
    hits: list[int]

    @classmethod
    def of(cls, tokens: Sequence[Sequence[str]], key: bytes) -> _Words:
        flat = [w for line_tokens in tokens for w in line_tokens]
        owner = [i for i, line_tokens in enumerate(tokens) for _ in line_tokens]
        if len(flat) < N:
            hits = [run_hash(key, flat)] if flat else []
        else:
            hits = [run_hash(key, flat[k : k + N]) for k in range(len(flat) - N + 1)]
        return cls(flat, owner, hits)


def _read(
    raw: list[str],
    lines: list[str],
    tokens: list[list[str]],
    reply: _Words,
    fingerprint: Fingerprint,
    key: bytes,
) -> _Reading:
    covered, carried = _matches(reply, fingerprint)
    per_line = [0] * len(lines)
    per_line_body = [0] * len(lines)
    for k, i in enumerate(reply.owner):
        per_line[i] += covered[k]
        per_line_body[i] += carried[k]
    return _Reading(
        raw=raw,
        lines=lines,
        quoted=[t.is_quote(line) for line in lines],
        line_words=[len(x) for x in tokens],
        covered=per_line,
        carried=per_line_body,
        tokens=tokens,
        hints=fingerprint.hints,
        key=key,
    )


def _matches(reply: _Words, fingerprint: Fingerprint) -> tuple[list[bool], list[bool]]:
    """Per word: inside a run of ours (at least MIN_RUN_WORDS long), and whether that run is the body's."""
    flat, hits = reply.flat, reply.hits
    covered = [False] * len(flat)
    carried = [False] * len(flat)
    if len(flat) < N:
        if hits and hits[0] in fingerprint.runs:
            covered = [True] * len(flat)
        return covered, carried
    runs = fingerprint.runs
    found = [value in runs for value in hits]
    k = 0
    while k < len(found):
        if not found[k]:
            k += 1
            continue
        end = k
        while end + 1 < len(found) and found[end + 1]:
            end += 1
        if end - k + N >= MIN_RUN_WORDS:  # runs k..end cover the words k .. end + N - 1
            covered[k : end + N] = [True] * (end + N - k)
            for m in range(k, end + 1):
                if hits[m] in fingerprint.body:
                    carried[m : m + N] = [True] * N
        k = end + 1
    return covered, carried


def _tokens(lines: Sequence[str]) -> list[list[str]]:
    out: list[list[str]] = []
    total = 0
    for line in lines:
        line_words = words(_QUOTE_PREFIX.sub("", line)) if total < MAX_WORDS else []
        total += len(line_words)
        out.append(line_words)
    return out


def _copy_start(reading: _Reading) -> int | None:
    """The first line of the copy: our frame's first kept line, else the first line of ours.

    A header field that repeats our subject ("Subject: You have a new secure message") is the
    client's quote header, not the copy.
    """
    ours = [i for i in range(len(reading.lines)) if reading.ours(i) and not _is_field(reading, i)]
    if not ours or sum(reading.covered[i] for i in ours) < MIN_MATCHED_WORDS:
        return None
    remaining = sum(reading.covered[i] for i in ours)  # words of ours from line i on
    for i in ours:
        if not reading.body(i) and remaining >= MIN_MATCHED_WORDS:
            return i
        remaining -= reading.covered[i]
    return ours[0]


def _is_field(reading: _Reading, i: int) -> bool:
    return v.FIELD.match(_QUOTE_PREFIX.sub("", reading.lines[i])) is not None


def _header_like(reading: _Reading, i: int) -> tuple[bool, bool]:
    """(part of a quote header, strong evidence of one) for the unquoted line i."""
    line = reading.lines[i]
    if not line or len(line) > v.MAX_HEADER_CHARS:
        return False, False
    if v.FIELD.match(line) or v.ORIGINAL_MARKER.match(line) or v.FORWARD_MARKER.match(line):
        return True, True
    if reading.hinted(i) >= 2:
        return True, True
    if _SENTENCE_END.search(line):
        return False, False
    if t.ends_like_attribution(line) or t.has_address(line):
        return True, True
    return v.TIME_OR_YEAR.search(line) is not None, False


def _cut_above(reading: _Reading, start: int) -> int:
    """Where the copy, its quote header and the rules and blank lines around them begin."""
    i = start
    # Quoted lines right above the copy are the quote header or a banner inside the quote.
    while i > 0 and (reading.empty(i - 1) or reading.quoted[i - 1]):
        i -= 1
    top = i
    strong = False
    j = i
    while j > 0 and top - (j - 1) <= MAX_HEADER_LINES and reading.lines[j - 1]:
        part, evidence = _header_like(reading, j - 1)
        if not part:
            break
        strong = strong or evidence
        j -= 1
    if strong:
        i = j
        while i > 0 and (not reading.lines[i - 1] or t.is_rule(reading.lines[i - 1])):
            i -= 1
    return i


def _shown_as_quote(reading: _Reading, i: int) -> str:
    line = reading.raw[i].rstrip()
    return line if reading.quoted[i] else f"> {line}"


def _answered_lines(reading: _Reading, run_start: int, copy_start: int) -> list[int]:
    """The message lines right above an inline answer (its paragraph), never our frame's lines."""
    kept: list[int] = []
    i = run_start - 1
    while i >= copy_start and reading.empty(i) and not reading.lines[i].lstrip("> \t"):
        i -= 1
    while i >= copy_start and reading.body(i):
        kept.append(i)
        i -= 1
    return sorted(kept)


def _answer_piece(reading: _Reading, answered: Sequence[int], run_start: int, run_end: int) -> str:
    """The answered lines (as quotes) and the answer, with the blank lines the author left between."""
    shown: list[str] = []
    for i in range(answered[0] if answered else run_start, run_end):
        if i in answered:
            shown.append(_shown_as_quote(reading, i))
        elif i >= run_start or (not reading.lines[i] and not reading.quoted[i]):
            shown.append(reading.raw[i])
    return t.join_lines(shown, range(len(shown)))


def _inline_answers(reading: _Reading, copy_start: int, copy_end: int) -> list[tuple[int, int]]:
    """Runs [start, end) of unquoted lines, not ours, that the author typed inside the copy."""
    runs: list[tuple[int, int]] = []
    i = copy_start
    while i < copy_end:
        if reading.quoted[i] or reading.ours(i) or not reading.lines[i]:
            i += 1
            continue
        j = i
        while j < copy_end and not reading.quoted[j] and not reading.ours(j):
            j += 1
        end = j
        while end > i and not reading.lines[end - 1]:
            end -= 1
        if any(reading.author(k) for k in range(i, end)):
            runs.append((i, end))
        i = j
    return runs


def _best(text: str, sent: Sequence[Fingerprint], key: bytes) -> _Reading | None:
    raw, lines = t.split_lines(text)
    tokens = _tokens(lines)
    reply = _Words.of(tokens, key)
    best: _Reading | None = None
    for fingerprint in sent:
        reading = _read(raw, lines, tokens, reply, fingerprint, key)
        if best is None or sum(reading.covered) > sum(best.covered):
            best = reading
    return best


def cut_own_copy(text: str, sent: Sequence[Fingerprint], key: bytes) -> ExtractedReply | None:
    """The reply without the quoted copy of a notification we sent; None when no copy is found."""
    if not sent or not text.strip():
        return None
    reading = _best(text, sent, key)
    if reading is None:
        return None
    start = _copy_start(reading)
    if start is None:
        return None
    cut = _cut_above(reading, start)
    end = max(i for i in range(len(reading.lines)) if reading.ours(i)) + 1
    top = extract_reply(t.join_lines(reading.raw, range(cut)))
    pieces: list[str] = [top.visible]
    hidden: list[str] = [top.hidden]
    kept: set[int] = set()
    for run_start, run_end in _inline_answers(reading, start, end):
        answered = _answered_lines(reading, run_start, start)
        pieces.append(_answer_piece(reading, answered, run_start, run_end))
        kept.update(answered)
        kept.update(range(run_start, run_end))
    # Under the whole copy: a bottom-posted answer (its signature trimmed), without the copy.
    bottom = extract_reply(t.join_lines(reading.raw, range(end, len(reading.raw))))
    if bottom.visible:
        pieces.append(bottom.visible)
        hidden.append(bottom.hidden)
        kept.update(range(end, len(reading.raw)))
    hidden.insert(1, t.join_lines(reading.raw, (i for i in range(cut, len(reading.raw)) if i not in kept)))
    return ExtractedReply("\n\n".join(p for p in pieces if p), "\n\n".join(h for h in hidden if h))
