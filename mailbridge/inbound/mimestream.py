"""Large messages, read as a stream: attachments decoded straight into temporary files, memory stays flat.

The stdlib parser holds the whole message, its text and every decoded part at once (about 4x a
100 MB attachment). Past ``STREAM_THRESHOLD`` the pipeline reads the spooled file line by line
instead: the header blocks still go through the stdlib (``BytesParser``, ``policy.default``), bodies
are decoded chunk by chunk (base64, quoted-printable, 7bit/8bit/binary) into files under the spool
directory. Written by hand because no library streams MIME bodies to disk with the stdlib's header
semantics; it follows ``email.feedparser``'s boundary rules (an enclosing delimiter ends a part).
"""

from __future__ import annotations

import binascii
import contextlib
import tempfile
from collections.abc import Iterator
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


class _Lines:
    """One-line look-ahead over a binary file, so a delimiter line can end a part and start the next."""

    def __init__(self, handle: BinaryIO) -> None:
        self._handle = handle
        self._pending: bytes | None = None

    def next(self) -> bytes:
        if self._pending is not None:
            line, self._pending = self._pending, None
            return line
        return self._handle.readline(1024 * 1024)

    def push_back(self, line: bytes) -> None:
        self._pending = line


def _read_headers(lines: _Lines) -> bytes:
    block = bytearray()
    while True:
        line = lines.next()
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
    """Decodes one part's body as it streams: to memory for inline text, to a temp file otherwise."""

    def __init__(self, encoding: str, to_file: Path | None) -> None:
        self.encoding = encoding
        self.buffer = bytearray()
        self.file = open(to_file, "wb") if to_file else None  # noqa: SIM115 - closed in close()
        self.size = 0
        self._b64 = bytearray()
        self._held = b""  # the last line's line break belongs to the next delimiter (RFC 2046 §5.1.1)

    def _emit(self, data: bytes) -> None:
        if not data:
            return
        self.size += len(data)
        if self.file is not None:
            self.file.write(data)
        else:
            self.buffer += data

    def feed(self, line: bytes) -> None:
        if self.encoding == "base64":
            self._b64 += line.strip()
            usable = len(self._b64) - len(self._b64) % 4
            if usable >= 4096:
                self._decode_b64(bytes(self._b64[:usable]))
                del self._b64[:usable]
        elif self.encoding == "quoted-printable":
            self._emit(self._held)
            self._held = b""
            if line.endswith(b"\r\n"):
                body, self._held = line[:-2], b"\r\n"
            elif line.endswith(b"\n"):
                body, self._held = line[:-1], b"\r\n"
            else:
                body = line
            if body.endswith(b"="):  # soft line break
                self._emit(binascii.a2b_qp(body[:-1]))
                self._held = b""
            else:
                self._emit(binascii.a2b_qp(body))
        else:
            self._emit(self._held)
            if line.endswith(b"\r\n"):
                self._emit(line[:-2])
                self._held = b"\r\n"
            elif line.endswith(b"\n"):
                self._emit(line[:-1])
                self._held = b"\n"
            else:
                self._emit(line)
                self._held = b""

    def _decode_b64(self, chunk: bytes) -> None:
        try:
            self._emit(binascii.a2b_base64(chunk))
        except binascii.Error:
            self._emit(binascii.a2b_base64(chunk + b"=" * (-len(chunk) % 4)))

    def close(self) -> bytes:
        if self.encoding == "base64" and self._b64:
            tail = bytes(self._b64)
            usable = len(tail) - len(tail) % 4
            with contextlib.suppress(binascii.Error):
                self._decode_b64(tail[:usable] if usable else b"")
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
    def __init__(self, lines: _Lines, spool_dir: Path, result: StreamedMail) -> None:
        self.lines = lines
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
        found = self.skip(inner, preamble)
        if found is None and self.result.text is None and self.result.html is None:
            self.result.text = _decode_text(preamble.close(), headers)
        while found is not None and found[0] == mine and not found[1]:
            headers = _HEADER_PARSER.parsebytes(_read_headers(self.lines), headersonly=True)
            assert isinstance(headers, EmailMessage)
            found = self.part(headers, inner, depth + 1)
        if found is None:
            self.result.defects.append(
                "StartBoundaryNotFoundDefect" if depth == 0 else "CloseBoundaryNotFoundDefect"
            )
            return None
        if found[0] == mine:  # our close delimiter: the epilogue runs to an enclosing delimiter
            return self.skip(boundaries)
        return found  # an enclosing delimiter ended us early (feedparser does the same)

    def skip(self, boundaries: list[bytes], keep: _Sink | None = None) -> tuple[int, bool] | None:
        while line := self.lines.next():
            found = _delimiter(line, boundaries)
            if found is not None:
                return found
            if keep is not None and keep.size <= TEXT_LIMIT:
                keep.feed(line)
        return None

    def leaf(self, headers: EmailMessage, boundaries: list[bytes]) -> tuple[int, bool] | None:
        encoding = str(headers.get("Content-Transfer-Encoding", "7bit")).strip().lower()
        if headers.get_content_maintype() == "message":
            encoding = "8bit"  # an attached message stays whole and opaque (M8)
        # A multipart without a boundary parameter is read as text, as clients show it (parse.py).
        attachment = headers.get_content_maintype() != "multipart" and _is_attachment(headers)
        path: Path | None = None
        if attachment:
            fd, name = tempfile.mkstemp(dir=self.spool_dir, suffix=".part")
            import os

            os.close(fd)
            path = Path(name)
            self.result.files.append(path)
        sink = _Sink(encoding, path)
        found = None
        while line := self.lines.next():
            found = _delimiter(line, boundaries)
            if found is not None:
                break
            sink.feed(line)
            if path is None and sink.size > TEXT_LIMIT:
                break  # an absurdly long inline text: keep what we have, skip the rest
        data = sink.close()
        if found is None and line and path is None:
            found = self.skip(boundaries)
        self._keep(headers, data, path)
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
    spool_dir.mkdir(parents=True, exist_ok=True)
    with open(path, "rb") as handle:
        lines = _Lines(handle)
        top = _HEADER_PARSER.parsebytes(_read_headers(lines), headersonly=True)
        assert isinstance(top, EmailMessage)
        result = StreamedMail(message=top, defects=[type(d).__name__ for d in top.defects])
        walker = _Walker(lines, spool_dir, result)
        try:
            walker.part(top, [], 0)
        except Exception:
            result.cleanup()
            raise
    return result


def iter_chunks(handle: BinaryIO, size: int = 1024 * 1024) -> Iterator[bytes]:
    while block := handle.read(size):
        yield block
