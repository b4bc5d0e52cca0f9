"""The streamed parse of large messages (mimestream) decodes bodies a run of lines at a time.

Its results must not depend on where the file's blocks fall (a delimiter line, a base64 group or a
quoted-printable escape may straddle any two reads), and they must equal the stdlib's in-memory parse
(``parse_mail``), so a message just over ``STREAM_THRESHOLD`` reads as one just under it.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import quopri
import tempfile
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mailbridge.inbound import mimestream
from mailbridge.inbound.parse import parse_mail
from mailbridge.inbound.pipeline import BodyHasher, body_hash

BODY_BYTES = st.binary(max_size=400)
ENCODINGS = st.sampled_from(["base64", "quoted-printable", "7bit", "8bit"])
# Base64 as senders write it, and as the hostile ones do: junk, missing or early padding, odd lines.
B64_NOISE = st.lists(
    st.sampled_from(
        [b"QUJD", b"QQ==", b"QUI=", b"Q", b"QU", b" ", b"\t", b"*", b"=", b"\r\n", b"-", b"QUJDRA"]
    ),
    max_size=30,
).map(b"".join)


def _encode(data: bytes, encoding: str, line: int) -> bytes:
    if encoding == "base64":
        text = base64.b64encode(data)
        return b"\r\n".join(text[i : i + line] for i in range(0, len(text), line)) or b""
    if encoding == "quoted-printable":
        return quopri.encodestring(data).replace(b"\n", b"\r\n")
    return data.replace(b"\r", b"").replace(b"\n", b"\r\n")


def _message(parts: list[tuple[str, str, bytes]], boundary: bytes = b"b0und") -> bytes:
    out = [
        b"From: a@client.test\r\nTo: r@reply.test\r\nSubject: s\r\nMIME-Version: 1.0\r\n",
        b'Content-Type: multipart/mixed; boundary="' + boundary + b'"\r\n\r\npreamble\r\n',
    ]
    for index, (content_type, encoding, body) in enumerate(parts):
        out.append(b"--" + boundary + b"\r\nContent-Type: " + content_type.encode())
        if content_type.startswith("application/"):
            out.append(b'; name="f%d.bin"' % index)
        else:
            out.append(b"; charset=utf-8")
        out.append(b"\r\nContent-Transfer-Encoding: " + encoding.encode() + b"\r\n\r\n" + body + b"\r\n")
    out.append(b"--" + boundary + b"--\r\nepilogue\r\n")
    return b"".join(out)


def _streamed(raw: bytes, block: int) -> tuple[Any, ...]:
    saved = mimestream._BLOCK
    mimestream._BLOCK = block
    try:
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp, "m.eml")
            path.write_bytes(raw)
            result = mimestream.parse_file(path, Path(tmp, "spool"))
            try:
                files = []
                for upload in result.attachments:
                    upload.file.seek(0)
                    files.append((upload.filename, upload.content_type, upload.file.read()))
                return result.text, result.html, files, result.defects
            finally:
                result.cleanup()
    finally:
        mimestream._BLOCK = saved


def _in_memory(raw: bytes) -> tuple[Any, ...]:
    parsed = parse_mail(raw)
    files = [(u.filename, u.content_type, u.file.read()) for u in parsed.attachments]
    return parsed.text, parsed.html, files


@settings(max_examples=150, deadline=None, derandomize=True, database=None)
@given(
    parts=st.lists(
        st.tuples(st.sampled_from(["application/octet-stream", "text/plain"]), ENCODINGS, BODY_BYTES),
        min_size=1,
        max_size=4,
    ),
    line=st.integers(4, 80),
    block=st.integers(1, 200),
)
def test_streamed_parse_equals_stdlib_wherever_the_blocks_fall(
    parts: list[tuple[str, str, bytes]], line: int, block: int
) -> None:
    encoded = [(ctype, enc, _encode(body, enc, line)) for ctype, enc, body in parts]
    raw = _message(encoded)
    whole = _streamed(raw, 1 << 20)
    assert _streamed(raw, block) == whole
    text, html, files = _in_memory(raw)
    assert whole[2] == files
    assert (whole[0] or "").rstrip("\n") == (text or "").rstrip("\n")
    assert whole[1] == html


@settings(max_examples=150, deadline=None, derandomize=True, database=None)
@given(noise=B64_NOISE, block=st.integers(1, 64))
def test_broken_base64_decodes_as_the_stdlib_does(noise: bytes, block: int) -> None:
    raw = _message([("application/octet-stream", "base64", noise)])
    streamed = _streamed(raw, block)
    assert streamed == _streamed(raw, 1 << 20)
    files = _in_memory(raw)[2]
    # The stdlib gives the base64 text itself back when it is one character too long to decode;
    # an attachment streamed to disk keeps what did decode instead (the text is gone by then).
    alphabet = len(noise.translate(None, mimestream._NOT_BASE64).replace(b"=", b""))
    try:
        binascii.a2b_base64(noise)
        whole_decodes = True
    except binascii.Error:
        whole_decodes = False
    if whole_decodes or alphabet % 4 != 1:
        assert streamed[2] == files


@pytest.mark.parametrize("block", [1, 2, 3, 5, 7, 64, 1 << 20])
def test_delimiters_found_across_any_block_edge(block: int) -> None:
    nested = (
        b"From: a@client.test\r\nContent-Type: multipart/mixed; boundary=outer\r\n\r\n"
        b"--outer\r\nContent-Type: multipart/alternative; boundary=inner\r\n\r\n"
        b"--inner\r\nContent-Type: text/plain\r\n\r\nhello\r\n--not-a-boundary\r\n-- \r\n"
        b"--inner\r\nContent-Type: text/html\r\n\r\n<p>hi</p>\r\n"
        b"--outer\r\nContent-Type: application/pdf; name=a.pdf\r\nContent-Transfer-Encoding: base64\r\n\r\n"
        + base64.encodebytes(b"%PDF-1.4 data" * 50).replace(b"\n", b"\r\n")
        + b"--outer--  \r\n"
    )
    text, html, files, defects = _streamed(nested, block)
    assert text == "hello\n--not-a-boundary\n-- "
    assert html == "<p>hi</p>"  # the inner multipart was ended early by the outer delimiter
    assert files == [("a.pdf", "application/pdf", b"%PDF-1.4 data" * 50)]
    assert defects == []


def test_large_attachment_is_decoded_in_runs_not_lines(tmp_path: Path) -> None:
    """A 3 MB attachment takes a handful of file reads and decoder calls, not one per line."""
    payload = bytes(range(256)) * 12_000
    raw = _message([("application/octet-stream", "base64", _encode(payload, "base64", 76))])
    path = tmp_path / "m.eml"
    path.write_bytes(raw)
    calls = 0
    real = binascii.a2b_base64

    def counting(data: Any, **kwargs: Any) -> bytes:
        nonlocal calls
        calls += 1
        return real(data, **kwargs)

    mimestream.binascii.a2b_base64 = counting  # type: ignore[assignment]
    try:
        result = mimestream.parse_file(path, tmp_path / "spool")
    finally:
        mimestream.binascii.a2b_base64 = real  # type: ignore[assignment]
    result.attachments[0].file.seek(0)
    assert hashlib.sha256(result.attachments[0].file.read()).digest() == hashlib.sha256(payload).digest()
    result.cleanup()
    # 4.1 MB of base64 (54,000 lines) in runs of at most a block, about two per block read (it was
    # one call per 4 KB)
    assert calls <= 2 * (len(raw) // mimestream._BLOCK) + 4


@settings(max_examples=300, deadline=None, derandomize=True, database=None)
@given(
    pieces=st.lists(st.sampled_from([b"\r\n", b"\n", b"\r", b"a: b", b"x", b" ", b"\n\r\n"]), max_size=40),
    cuts=st.lists(st.integers(0, 200), max_size=6),
)
def test_body_hash_fed_in_pieces_equals_the_hash_in_memory(pieces: list[bytes], cuts: list[int]) -> None:
    """The idempotency hash of a large message rides on the prescan's read, in slices cut anywhere."""
    raw = b"".join(pieces)
    hasher = BodyHasher()
    start = 0
    for cut in sorted(cuts):
        hasher.feed(raw[start:cut])
        start = max(start, cut)
    hasher.feed(raw[start:])
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp, "m.eml")
        path.write_bytes(raw)
        assert hasher.hexdigest() == body_hash(raw, path) == body_hash(None, path)
