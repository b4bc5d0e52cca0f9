"""The SMTP DATA reader as a pure, incremental state machine: bytes in, message bytes and one outcome out.

Why not line by line: a Python loop per line costs about 1 µs, so a 35 MB message held the event
loop (and with it the HTTP API and every other SMTP session of the process) for about 1.3 s. Here
each chunk is judged with a handful of C-speed passes (``find``, ``count``, ``replace``, one
compiled regex), whatever its number of lines.

The rules are those of the line-by-line reader they replace, exact across chunk edges:

- a line ends at CRLF and only at CRLF (RFC 5321 §2.3.8); a CR or LF anywhere else in a line is a
  bare line ending (SMTP smuggling needs one), and the message is refused;
- the line ``.`` CRLF ends the data; a line starting with ``.`` loses that dot (§4.5.2);
- a line longer than ``line_limit`` octets CRLF included (1001: 998 + CRLF + a transparency dot,
  §4.5.3.1.6) is refused, and a line known to be too long is followed to its CRLF however it is cut,
  so a ``.`` at the end of one TCP segment and CRLF at the start of the next is never taken for the
  end of the data (a ``.`` is the end only at the start of a line);
- ``size`` counts message octets as RFC 1870 §4 does (no transparency dots, no terminator), and past
  ``size_limit`` the message is refused;
- once a message is refused, nothing more is handed out, but the reader still follows the stream to
  the terminator (§4.2.5: the answer comes after the data), so the session never loses sync.

No I/O here: the SMTP door feeds what it reads and writes what :meth:`DataReader.feed` returns;
tests feed the same bytes cut anywhere and compare with a line-by-line reference.
"""

from __future__ import annotations

import enum
import re
from typing import Final

__all__ = ["LINE_LIMIT", "DataOutcome", "DataReader"]

LINE_LIMIT: Final = 1001  # octets with CRLF: 998 (RFC 5322 §2.1.1) + CRLF + a transparency dot


class DataOutcome(enum.Enum):
    """The reader's verdict once the terminator was read; the first that applies, in this order."""

    ok = "ok"
    too_long = "line_too_long"
    bare_line_ending = "bare_line_ending"
    too_big = "size_exceeded"


class DataReader:
    """Feed it the bytes after ``354``; it returns the unstuffed message bytes to store, chunk by chunk.

    After the terminator, :attr:`done` is true, :attr:`outcome` is set and :attr:`rest` holds the
    bytes that followed the terminator in the last chunk (the next commands: they belong to the
    command reader, never to the message). The state kept between chunks is small: at most one
    incomplete line of up to ``line_limit`` octets, or, inside a line already too long, a single CR
    that may be the first half of its CRLF.
    """

    def __init__(self, size_limit: int, line_limit: int = LINE_LIMIT) -> None:
        if line_limit < 3:
            raise ValueError("line_limit must leave room for '.' CRLF")
        self.size_limit = size_limit
        self.line_limit = line_limit
        self.size = 0  # message octets so far (RFC 1870: no transparency dots, no terminator)
        self.done = False
        self.rest = b""
        self.too_long = False
        self.bare = False
        self.too_big = False
        self._carry = b""  # the current incomplete line, from its start (or b"\r" inside a long line)
        self._long = False  # inside a line already known to be too long: its start was not kept
        # "\n" then line_limit octets that are not LF: a line of more than line_limit octets with its
        # CRLF (once bare line endings are ruled out). The literal "\n" prefix lets the regex engine
        # jump from line to line instead of trying every byte.
        self._long_line = re.compile(rb"\n[^\n]{%d}" % line_limit)

    @property
    def refused(self) -> bool:
        return self.too_long or self.bare or self.too_big

    @property
    def outcome(self) -> DataOutcome:
        if self.too_long:
            return DataOutcome.too_long
        if self.bare:
            return DataOutcome.bare_line_ending
        if self.too_big:
            return DataOutcome.too_big
        return DataOutcome.ok

    def feed(self, chunk: bytes) -> bytes:
        """Take the next bytes of the stream; return the message bytes they complete (maybe empty)."""
        if self.done:
            raise RuntimeError("the data already ended; what follows belongs to the command reader")
        data = self._carry + chunk if self._carry else chunk
        self._carry = b""
        pos = 0
        if self._long:
            end = data.find(b"\r\n")
            if end < 0:
                self._swallow_long(data)
                return b""
            self._long_piece(data[:end])
            self._add_size(2)
            self._long = False
            pos = end + 2
        # From here data[pos:] starts at the start of a line.
        if data.startswith(b".\r\n", pos):
            return self._finish(data, pos, pos)
        marker = data.find(b"\r\n.\r\n", pos)
        if marker >= 0:
            return self._finish(data, pos, marker + 2)
        last = data.rfind(b"\r\n", pos)
        cut = pos if last < 0 else last + 2
        out = self._lines(data[pos:cut]) if cut > pos else b""
        tail = data[cut:]
        if len(tail) >= self.line_limit:
            # Its CRLF is at least one octet away: the line is too long whatever comes next.
            self.too_long = True
            self._long = True
            self._add_size(-1 if tail.startswith(b".") else 0)
            self._swallow_long(tail)
        else:
            self._carry = tail
        return out

    # ---- internals --------------------------------------------------------------------------------

    def _finish(self, data: bytes, start: int, end: int) -> bytes:
        """``data[start:end]`` are the last complete lines; the terminator line starts at ``end``."""
        out = self._lines(data[start:end]) if end > start else b""
        self.rest = data[end + 3 :]
        self.done = True
        return out

    def _add_size(self, count: int) -> None:
        self.size += count
        if self.size > self.size_limit:
            self.too_big = True

    def _swallow_long(self, data: bytes) -> None:
        """Part of a too-long line, no CRLF in it; a final CR may be the first half of the CRLF."""
        if data.endswith(b"\r"):
            self._carry = b"\r"
            data = data[:-1]
        self._long_piece(data)

    def _long_piece(self, piece: bytes) -> None:
        """Octets of a too-long line before its CRLF: counted, and any CR or LF among them is bare."""
        self._add_size(len(piece))
        if b"\r" in piece or b"\n" in piece:
            self.bare = True

    def _lines(self, region: bytes) -> bytes:
        """Whole lines (``region`` starts a line and ends with CRLF): judge them, return them unstuffed."""
        crlf = region.count(b"\r\n")
        stuffed = region.count(b"\r\n.") + (1 if region.startswith(b".") else 0)
        self._add_size(len(region) - stuffed)
        if region.count(b"\r") != crlf or region.count(b"\n") != crlf:
            self.bare = True
            # Lines still end at CRLF only: measure them the slow, exact way (hostile input only).
            if max(map(len, region.split(b"\r\n"))) + 2 > self.line_limit:
                self.too_long = True
        elif region.find(b"\r\n") + 2 > self.line_limit or self._long_line.search(region):
            self.too_long = True
        if self.refused:
            return b""
        if stuffed:
            region = region.replace(b"\r\n.", b"\r\n")
            if region.startswith(b"."):
                region = region[1:]
        return region
