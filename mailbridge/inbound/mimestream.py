"""Large messages, read as a stream: attachments decoded straight into temporary files, memory stays flat.

The stdlib parser holds the whole message, its text and every decoded part at once (about 4x a
100 MB attachment). Past ``STREAM_THRESHOLD`` the pipeline reads the spooled file in 256 KiB blocks
instead: the header blocks still go through the stdlib (``BytesParser``, ``policy.default``), bodies
are decoded (base64, quoted-printable, 7bit/8bit/binary) into files under the spool directory. Written
by hand because no library streams MIME bodies to disk with the stdlib's header semantics; it follows
``email.feedparser``'s boundary rules (an enclosing delimiter ends a part).

Bodies are not walked line by line in Python (issue 17 item 2): one regex search per block finds the
candidate delimiter lines, and the lines between go to ``binascii`` a run (up to a block) at a time. A
137 MB message with a 100 MB attachment took 1.75 M Python steps and ≈ 1.1 s of CPU (5.5 s under
cProfile) holding the GIL all along, stalling the event loop; it now takes ≈ 530 reads and ≈ 1,100
decoder calls of ≤ 1 ms each (≈ 0.5 s, two thirds of it ``a2b_base64``), so the loop gets a turn
between any two of them.
"""

from __future__ import annotations

import binascii
import contextlib
import functools
import os
import re
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from email.message import EmailMessage
from email.parser import BytesParser
from email.policy import default as DEFAULT_POLICY
from pathlib import Path
from typing import BinaryIO

from mailbridge.inbound.parse import ParsedMail
from mailbridge.storage.intake import Upload

STREAM_THRESHOLD = 4 * 1024 * 1024
TEXT_LIMIT = 2 * 1024 * 1024  # an inline text body larger than this is kept as a file
_HEADER_PARSER = BytesParser(policy=DEFAULT_POLICY)


@dataclass
class StreamedMail(ParsedMail):
    """What ``parse_mail`` gives, with ``message`` holding the top-level headers only."""

    files: list[Path] = field(default_factory=list)  # temporary files to remove when done

    def cleanup(self) -> None:
        for upload in self.attachments:
            upload.file.close()
        for path in self.files:
            path.unlink(missing_ok=True)


# Bytes read at a time, and the most any one C call below works on: each such call holds the GIL
# (≈ 0.7 ms at 256 KiB), and every other thread of the process — small replies' pipelines, the API's
# reads — waits for it at each of its own statements and reads. 1 MiB blocks put p99 of small
# replies at 2-4 × idle while a 137 MB message was parsed (docs/benchmarks.md, isolation).
_BLOCK = 256 * 1024
_LINE_LIMIT = 1024 * 1024  # a longer line counts as several, as ``readline(1 MiB)`` read it before
_BASE64_ALPHABET = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
_NOT_BASE64 = bytes(c for c in range(256) if c not in _BASE64_ALPHABET + b"=")


@functools.lru_cache(maxsize=64)
def _delimiter_pattern(boundaries: tuple[bytes, ...]) -> re.Pattern[bytes] | None:
    """Lines that may be a delimiter of one of ``boundaries``: a superset, each hit is checked by
    ``_delimiter``. Starting with a literal newline lets the regex engine skip ahead in C."""
    if not boundaries:
        return None
    alternatives = b"|".join(re.escape(b) for b in sorted(set(boundaries), key=len, reverse=True))
    return re.compile(rb"\n--(?:" + alternatives + rb")(?:--)?[\r \t]*(?=\n|\Z)")


class _Reader:
    """A message file read in 256 KiB blocks: header lines one at a time, bodies as runs of whole lines
    up to the next delimiter line, found by one regex search per block instead of a Python step per line.
    """

    def __init__(self, handle: BinaryIO) -> None:
        self._handle = handle
        self.buf = b""
        self.pos = 0
        self.eof = False
        self.reads = 0  # read() calls, for the measurements in docs/benchmarks.md
        self._before = b""  # the byte before ``buf`` (dropped by ``_fill``): b"" at the file's start

    def _fill(self) -> bool:
        """Append one block to what is left of the buffer; False at the end of the file."""
        if self.eof:
            return False
        block = self._handle.read(_BLOCK)
        self.reads += 1
        if not block:
            self.eof = True
            return False
        if self.pos:
            self._before = self.buf[self.pos - 1 : self.pos]
        self.buf = self.buf[self.pos :] + block if self.pos < len(self.buf) else block
        self.pos = 0
        return True

    def _at_line_start(self) -> bool:
        """Is ``pos`` where a line begins? Not after the first MiB of a longer line: feedparser never
        takes the middle of a line for a delimiter, and the prescan does not count one there."""
        before = self.buf[self.pos - 1 : self.pos] if self.pos else self._before
        return before in (b"", b"\n")

    def readline(self) -> bytes:
        """The next line with its newline (at most ``_LINE_LIMIT`` bytes), b"" at the end."""
        while True:
            newline = self.buf.find(b"\n", self.pos, self.pos + _LINE_LIMIT)
            if newline >= 0:
                end = newline + 1
                break
            if len(self.buf) - self.pos >= _LINE_LIMIT:
                end = self.pos + _LINE_LIMIT
                break
            if not self._fill():
                end = len(self.buf)
                break
        line = self.buf[self.pos : end]
        self.pos = end
        return line

    def until_delimiter(
        self, boundaries: list[bytes], feed: Callable[[bytes], None] | None
    ) -> tuple[int, bool] | None:
        """Hand the lines before the next delimiter of ``boundaries`` to ``feed`` (in runs of whole
        lines, at most ``_BLOCK`` bytes each) and consume that delimiter line; None at the end.

        Every line is still judged as ``email.feedparser`` judges it (``_delimiter``): the regex only
        finds the candidates, so a boundary line may fall anywhere relative to the blocks read."""
        pattern = _delimiter_pattern(tuple(boundaries))
        while True:
            if self.buf.rfind(b"\n", self.pos) < 0 and not self.eof:
                if len(self.buf) - self.pos < _LINE_LIMIT:
                    self._fill()
                    continue
                stop = self.pos + _LINE_LIMIT  # a very long line: its first MiB is judged alone
            else:
                stop = len(self.buf) if self.eof else self.buf.rfind(b"\n", self.pos) + 1
            first = self.pos
            if self.buf.startswith(b"--", self.pos) and self._at_line_start():
                newline = self.buf.find(b"\n", self.pos, stop)
                end = newline + 1 if newline >= 0 else stop
                found = _delimiter(self.buf[self.pos : end], boundaries)
                if found is not None:
                    self.pos = end
                    return found
                first = end
            hit = (
                pattern.search(self.buf, first - 1 if first > self.pos else first, stop) if pattern else None
            )
            cut = hit.start() + 1 if hit is not None else stop
            if feed is not None:
                self._feed(feed, self.pos, cut)
            self.pos = cut
            if hit is None and self.eof and cut >= len(self.buf):
                return None

    def _feed(self, feed: Callable[[bytes], None], start: int, stop: int) -> None:
        buf = self.buf
        while stop - start > _BLOCK:
            cut = buf.rfind(b"\n", start, start + _BLOCK) + 1
            if cut <= start:  # a line longer than a block still goes whole (decoders need whole lines)
                cut = buf.find(b"\n", start + _BLOCK, stop) + 1 or stop
            feed(buf[start:cut])
            start = cut
        if stop > start:
            feed(buf[start:stop])


_PAD_RUNS = re.compile(rb"([^=])")


def _pending_group(tail: bytes) -> bytes:
    """The unfinished group kept for the next run (fewer than 4 alphabet characters, starting at a
    group edge) without the pads that cannot matter: the stdlib ignores a pad before a group's
    third character and stops at the second after it (or the first after its fourth), so at most
    ``xx==`` or ``xxx=`` is kept. Without this a body of pads was held, and copied again at every
    run, whole (a review finding: quadratic time, unbounded memory)."""
    if b"=" not in tail:
        return tail
    pieces = _PAD_RUNS.split(tail)  # pads, character, pads, character, ..., pads
    kept = bytearray()
    for index, piece in enumerate(pieces):
        if index % 2:
            kept += piece
        else:
            characters = index // 2  # of the group, before these pads
            if characters >= 2:
                kept += piece[: 4 - characters]
    return bytes(kept)


def _read_headers(reader: _Reader) -> bytes:
    block = bytearray()
    while True:
        line = reader.readline()
        if not line:
            return bytes(block)
        if line in (b"\r\n", b"\n"):
            return bytes(block)
        block += line
        if len(block) > 1024 * 1024:  # the prescan refuses this earlier; never grow without bound
            return bytes(block)


def _delimiter(line: bytes, boundaries: list[bytes]) -> tuple[int, bool] | None:
    """Which enclosing boundary (index, is_close) this line is, if any; the outermost match wins."""
    if not line.startswith(b"--"):
        return None
    stripped = line.rstrip(b"\r\n \t")
    for index, boundary in enumerate(boundaries):
        if stripped == b"--" + boundary:
            return index, False
        if stripped == b"--" + boundary + b"--":
            return index, True
    return None


class _Sink:
    """Decodes one part's body as it streams, a run of whole lines at a time: to memory for inline
    text (at most ``TEXT_LIMIT`` and one run), to a temp file otherwise.

    Base64 and quoted-printable are decoded by ``binascii`` over each run (up to a block), never line by
    line in Python: the results equal the stdlib's decoding of the whole body (``email.message``'s
    ``get_payload(decode=True)``), which the property tests check on bodies cut at random places.
    """

    def __init__(self, encoding: str, to_file: Path | None) -> None:
        self.encoding = encoding
        self.buffer = bytearray()
        self.file = open(to_file, "wb") if to_file else None  # noqa: SIM115 - closed in close()
        self.size = 0
        self._b64 = b""  # the base64 characters of an unfinished 4-character group
        self._b64_done = False  # a complete pad sequence ends base64 data (binascii, non-strict)
        self._b64_text = bytearray()  # inline text's base64 as written, should it not decode at all
        self._held = b""  # the last line's line break belongs to the next delimiter (RFC 2046 §5.1.1)

    def _emit(self, data: bytes | memoryview) -> None:
        if not data:
            return
        self.size += len(data)
        if self.file is not None:
            self.file.write(data)
        else:
            self.buffer += data

    def feed(self, block: bytes) -> None:
        """One run of whole lines (the last one may lack its newline only at the end of the file)."""
        if self.file is None and self.size > TEXT_LIMIT:
            return  # an absurdly long inline text: keep what we have, skip the rest
        if self.encoding == "base64":
            self._feed_base64(block)
            return
        self._emit(self._held)
        if block.endswith(b"\r\n"):
            body, self._held = memoryview(block)[:-2], b"\r\n"
        elif block.endswith(b"\n"):
            body, self._held = memoryview(block)[:-1], b"\n"
        else:
            body, self._held = memoryview(block), b""
        if self.encoding != "quoted-printable":
            self._emit(body)
            return
        text = body.tobytes()
        if text.count(b"\n") != text.count(b"\r\n"):  # bare LF lines decode to CRLF, as before
            text = text.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
        self._held = b"\r\n" if self._held else b""
        if text.endswith(b"="):  # a soft line break: the line break goes with it
            text, self._held = text[:-1], b""
        self._emit(binascii.a2b_qp(text))

    def _feed_base64(self, block: bytes) -> None:
        """Decode every complete 4-character group; keep the unfinished one (with its pads) for later.

        The stdlib decodes the whole body at once, ignoring characters outside the alphabet and
        stopping at the first complete pad sequence (``xx==``, ``xxx=``); deleting those characters
        first and cutting at group edges gives the same bytes, run by run."""
        if self._b64_done:
            return
        if self.file is None and len(self._b64_text) <= TEXT_LIMIT:
            self._b64_text += b"".join(block.splitlines())
        data = self._b64 + block.translate(None, _NOT_BASE64)
        padded = b"=" in data
        if not padded:
            cut = len(data) - len(data) % 4
        else:
            cut = len(data)
            rest = (len(data) - data.count(b"=")) % 4
            while rest or data.endswith(b"=", 0, cut):  # walk back over pads and the unfinished group
                if data.endswith(b"=", 0, cut):
                    cut = len(data[:cut].rstrip(b"="))
                else:
                    cut -= 1
                    rest -= 1
                if cut == 0:
                    break
        whole, self._b64 = data[:cut], _pending_group(data[cut:])
        if whole:
            expected = (len(whole) - (whole.count(b"=") if padded else 0)) // 4 * 3
            try:
                decoded = binascii.a2b_base64(whole)
            except binascii.Error:  # not expected: every group is complete
                decoded = b""
            if len(decoded) < expected:
                self._b64_done = True  # a pad sequence ended the data inside this run
                self._b64 = b""
            self._emit(decoded)

    def close(self) -> bytes:
        if self.encoding == "base64" and not self._b64_done:
            left = len(self._b64) - self._b64.count(b"=")
            if left >= 2:  # 2 or 3 characters: 1 or 2 bytes, as the stdlib pads them
                with contextlib.suppress(binascii.Error):
                    self._emit(binascii.a2b_base64(self._b64 + b"=="))
            elif left == 1 and self.file is None:
                # Not base64 at all (one character too many): the stdlib then gives the text as it
                # came, its lines joined, and so does an inline text here (InvalidBase64LengthDefect).
                self.buffer = self._b64_text
        if self.file is not None:
            self.file.flush()
            self.file.close()
        return bytes(self.buffer)


def _filename(headers: EmailMessage) -> str | None:
    try:
        name = headers.get_filename()
    except Exception:
        return None
    return str(name) if name else None


def _is_attachment(headers: EmailMessage) -> bool:
    disposition = (headers.get_content_disposition() or "").lower()
    if disposition == "attachment" or _filename(headers):
        return True
    return (
        headers.get_content_type() not in ("text/plain", "text/html")
        or headers.get_content_maintype() == "message"
    )


def _decode_text(data: bytes, headers: EmailMessage) -> str:
    charset = headers.get_content_charset() or "utf-8"
    try:
        text = data.decode(charset, errors="replace")
    except LookupError:
        text = data.decode("utf-8", errors="replace")
    return text.replace("\r\n", "\n")  # as the stdlib's get_content() gives it


class _Walker:
    def __init__(self, reader: _Reader, spool_dir: Path, result: StreamedMail) -> None:
        self.reader = reader
        self.spool_dir = spool_dir
        self.result = result

    def part(self, headers: EmailMessage, boundaries: list[bytes], depth: int) -> tuple[int, bool] | None:
        """Consume one part (its body) up to an enclosing delimiter; return that delimiter, or None at EOF."""
        boundary = headers.get_boundary() if headers.get_content_maintype() == "multipart" else None
        if boundary and depth < 50:
            return self.multipart(headers, boundary.encode("ascii", "replace"), boundaries, depth)
        return self.leaf(headers, boundaries)

    def multipart(
        self, headers: EmailMessage, boundary: bytes, boundaries: list[bytes], depth: int
    ) -> tuple[int, bool] | None:
        inner = [*boundaries, boundary]
        mine = len(inner) - 1
        # The preamble is kept (bounded) in case no delimiter ever comes: then the body is the text,
        # as mail clients show a multipart whose boundary is missing (see parse.py).
        preamble = _Sink(str(headers.get("Content-Transfer-Encoding", "7bit")).strip().lower(), None)
        found = self.reader.until_delimiter(inner, preamble.feed)
        if found is None and self.result.text is None and self.result.html is None:
            self.result.text = _decode_text(preamble.close(), headers)
        while found is not None and found[0] == mine and not found[1]:
            headers = _HEADER_PARSER.parsebytes(_read_headers(self.reader), headersonly=True)
            assert isinstance(headers, EmailMessage)
            found = self.part(headers, inner, depth + 1)
        if found is None:
            self.result.defects.append(
                "StartBoundaryNotFoundDefect" if depth == 0 else "CloseBoundaryNotFoundDefect"
            )
            return None
        if found[0] == mine:  # our close delimiter: the epilogue runs to an enclosing delimiter
            return self.reader.until_delimiter(boundaries, None)
        return found  # an enclosing delimiter ended us early (feedparser does the same)

    def leaf(self, headers: EmailMessage, boundaries: list[bytes]) -> tuple[int, bool] | None:
        encoding = str(headers.get("Content-Transfer-Encoding", "7bit")).strip().lower()
        if headers.get_content_maintype() == "message":
            encoding = "8bit"  # an attached message stays whole and opaque (M8)
        # A multipart without a boundary parameter is read as text, as clients show it (parse.py).
        attachment = headers.get_content_maintype() != "multipart" and _is_attachment(headers)
        path: Path | None = None
        if attachment:
            fd, name = tempfile.mkstemp(dir=self.spool_dir, suffix=".part")
            os.close(fd)
            path = Path(name)
            self.result.files.append(path)
        sink = _Sink(encoding, path)
        found = self.reader.until_delimiter(boundaries, sink.feed)
        self._keep(headers, sink.close(), path)
        return found

    def _keep(self, headers: EmailMessage, data: bytes, path: Path | None) -> None:
        content_type = headers.get_content_type()
        text = content_type == "text/plain" or headers.get_content_maintype() == "multipart"
        if path is None and text and self.result.text is None:
            self.result.text = _decode_text(data, headers)
        elif path is None and content_type == "text/html" and self.result.html is None:
            self.result.html = _decode_text(data, headers)
        elif path is not None:
            content_id = headers.get("Content-ID")
            self.result.attachments.append(
                Upload(
                    filename=_filename(headers),
                    content_type=content_type,
                    file=open(path, "rb"),  # noqa: SIM115 - closed by StreamedMail.cleanup
                    content_id=str(content_id).strip("<> ") if content_id else None,
                    path=path,
                )
            )


def parse_file(path: Path, spool_dir: Path) -> StreamedMail:
    """Parse a message file in one read. The idempotency and DKIM body hashes do not ride on this
    read but on the prescan's, which comes first and must (see ``pipeline.prescan``)."""
    spool_dir.mkdir(parents=True, exist_ok=True)
    with open(path, "rb") as handle:
        reader = _Reader(handle)
        top = _HEADER_PARSER.parsebytes(_read_headers(reader), headersonly=True)
        assert isinstance(top, EmailMessage)
        result = StreamedMail(message=top, defects=[type(d).__name__ for d in top.defects])
        walker = _Walker(reader, spool_dir, result)
        try:
            walker.part(top, [], 0)
        except Exception:
            result.cleanup()
            raise
    return result


def iter_chunks(handle: BinaryIO, size: int = 1024 * 1024) -> Iterator[bytes]:
    while block := handle.read(size):
        yield block
