"""Pre-scan: MIME bombs and header floods refused before the parse; real mail agrees with the parser."""

from __future__ import annotations

import email
import io
from email import policy
from email.message import Message
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mailbridge.inbound import prescan as prescan_mod
from mailbridge.inbound.prescan import PrescanLimits, PrescanResult, prescan_stream

CORPORA = Path(__file__).resolve().parent.parent.parent / "shared" / "corpora"
LENIENT = PrescanLimits(require_crlf=False)

HEAD = b"From: a@example.org\r\nTo: reply+x@reply.example\r\nSubject: Re: hi\r\nMIME-Version: 1.0\r\n"


def nested_multiparts(levels: int) -> bytes:
    opening = b"".join(
        b'Content-Type: multipart/mixed; boundary="b%d"\r\n\r\n--b%d\r\n' % (i, i) for i in range(levels)
    )
    closing = b"".join(b"--b%d--\r\n" % i for i in reversed(range(levels)))
    return HEAD + opening + b"Content-Type: text/plain\r\n\r\nhello\r\n" + closing


def many_parts(count: int) -> bytes:
    return HEAD + b"Content-Type: multipart/mixed; boundary=b\r\n\r\n" + b"--b\r\n\r\n" * count + b"--b--\r\n"


def normal_reply() -> bytes:
    text = b"Thanks, Monday works for me.\r\n" * 40
    html = b"<p>Thanks, Monday works for me.</p>\r\n" * 40
    return (
        HEAD
        + b"Received: from mx.example.org by mx.reply.example; Mon, 1 Jan 2024 10:00:00 +0000\r\n"
        + b'Content-Type: multipart/alternative;\r\n boundary="==alt=="\r\n\r\n'
        + b"--==alt==\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n"
        + text
        + b"--==alt==\r\nContent-Type: text/html; charset=utf-8\r\n\r\n"
        + html
        + b"--==alt==--\r\n"
    )


def prescan(raw: bytes, limits: PrescanLimits = PrescanLimits()) -> PrescanResult:
    """The scan in memory; every test here also checks that the streamed scan a large message gets
    (1 MiB slices, and 4 KiB or 100-byte ones so the slices cut headers and delimiters) says the same."""
    result = prescan_mod.prescan(raw, limits)
    saved = prescan_mod._SLICE
    try:
        for size in (saved, 4096, 100) if len(raw) < 300_000 else (saved, 65536):
            prescan_mod._SLICE = size  # type: ignore[misc]
            assert prescan_stream(io.BytesIO(raw), limits) == result, size
    finally:
        prescan_mod._SLICE = saved  # type: ignore[misc]
    return result


def refused(raw: bytes, reason: str, limits: PrescanLimits = PrescanLimits()) -> PrescanResult:
    result = prescan(raw, limits)
    assert (result.ok, result.reason) == (False, reason)
    return result


# --- Bombs (HOSTILE M1–M3). Measured here: M1 ≈ 0.8 ms, M2 ≈ 3.5 ms (its full parse: ≈ 6.5 s), M3 ≈ 2 ms;
# M1 through the full parse ends in RecursionError. No timing assertion: these tests finishing is the check.


def test_m1_deeply_nested_multiparts_are_refused() -> None:
    result = refused(nested_multiparts(3000), "mime_depth")
    assert result.depth == 21


def test_nesting_at_the_limit_is_accepted() -> None:
    result = prescan(nested_multiparts(20))
    assert (result.ok, result.depth) == (True, 20)
    refused(nested_multiparts(21), "mime_depth")


def test_m2_fifty_thousand_empty_parts_are_refused() -> None:
    result = refused(many_parts(50_000), "mime_parts")
    assert result.part_count == 1001


def test_part_count_at_the_limit_is_accepted() -> None:
    assert prescan(many_parts(999)).ok  # 999 parts + the multipart itself
    refused(many_parts(1000), "mime_parts")


def test_m3_one_megabyte_header_block_is_refused() -> None:
    raw = HEAD + (b"X-Filler: " + b"a" * 70 + b"\r\n") * 13_000 + b"\r\nbody\r\n"
    refused(raw, "header_size")


def test_m3_twenty_thousand_headers_are_refused() -> None:
    refused(HEAD + b"X: y\r\n" * 20_000 + b"\r\nbody\r\n", "header_count")


def test_header_only_message_larger_than_the_limit_is_refused() -> None:
    refused(HEAD + b"X-Filler: " + b"a" * 300_000, "header_size")


def test_nul_in_header_is_refused_but_not_in_body() -> None:
    refused(b"From: a@example.org\r\nSubject: hi\x00there\r\n\r\nbody\r\n", "nul_in_header")
    assert prescan(b"From: a@example.org\r\nSubject: hi\r\n\r\nbo\x00dy\r\n").ok


def test_more_than_thirty_received_headers_is_a_loop() -> None:
    received = b"Received: from a by b; Mon, 1 Jan 2024 10:00:00 +0000\r\n"
    refused(received * 35 + HEAD + b"\r\nbody\r\n", "loop_received")
    assert prescan(received * 30 + HEAD + b"\r\nbody\r\n").ok
    # Only the top-level block counts: a forwarded message keeps its own trace fields.
    forwarded = (
        HEAD + b"Content-Type: message/rfc822\r\n\r\n" + received * 35 + b"From: b@example.org\r\n\r\nold\r\n"
    )
    assert prescan(forwarded).ok


# --- Line endings (HOSTILE P1/P2) -------------------------------------------------------------------


@pytest.mark.parametrize(
    "raw",
    [
        b"From: a@example.org\r\nSubject: hi\r\n\r\nline\n.\r\nMAIL FROM:<x@y>\r\n",
        b"From: a@example.org\r\nSubject: hi\r\n\r\nline\r.\r\n",
        b"From: a@example.org\rX: y\r\n\r\nbody\r\n",
        b"From: a@example.org\r\n\r\nbody\n.\n",
    ],
)
def test_bare_line_endings_are_refused(raw: bytes) -> None:
    refused(raw, "bare_line_ending")


def test_lf_only_is_allowed_when_relaxed_but_bare_cr_never() -> None:
    assert prescan(b"From: a@example.org\nSubject: hi\n\nbody\n", LENIENT).ok
    refused(b"From: a@example.org\nSubject: hi\n\nbo\rdy\n", "bare_line_ending", LENIENT)


# --- Normal mail and the structures the parser would build ----------------------------------------


def test_normal_reply_passes_and_is_measured() -> None:
    # ≈ 45 µs for this 3 KB multipart/alternative reply (≈ 15 µs for a single text part).
    result = prescan(normal_reply())
    assert result == PrescanResult(ok=True, reason=None, part_count=3, depth=1)
    assert prescan(HEAD + b"\r\nplain body\r\n") == PrescanResult(True, None, 1, 0)


def test_disguised_content_types_are_still_seen() -> None:
    """The parser decodes encoded words and RFC 2231 parameters; so must the scan, or a bomb hides."""
    encoded = nested_multiparts(30).replace(
        b"Content-Type: multipart/mixed;", b"Content-Type: =?utf-8?q?multipart/mixed?=;"
    )
    refused(encoded, "mime_depth")
    rfc2231 = (
        nested_multiparts(30)
        .replace(b'boundary="', b"boundary*=us-ascii''")
        .replace(b'"\r\n\r\n--', b"\r\n\r\n--")
    )
    refused(rfc2231, "mime_depth")


def test_nested_messages_count_as_depth() -> None:
    raw = HEAD
    for _ in range(25):
        raw += b"Content-Type: message/rfc822\r\n\r\nFrom: x@example.org\r\n"
    refused(raw + b"\r\nbody\r\n", "mime_depth")


def test_digest_parts_default_to_messages() -> None:
    raw = (
        HEAD
        + b"Content-Type: multipart/digest; boundary=d\r\n\r\n"
        + b"--d\r\n\r\nFrom: one@example.org\r\nSubject: one\r\n\r\nfirst\r\n"
        + b"--d\r\n\r\nFrom: two@example.org\r\n\r\nsecond\r\n"
        + b"--d--\r\n"
    )
    assert prescan(raw) == PrescanResult(True, None, *tree_size(parse(raw)))


def test_reused_boundary_follows_the_parser() -> None:
    """An inner multipart declaring its parent's boundary is empty for the parser: the outer one wins."""
    raw = (
        HEAD
        + b"Content-Type: multipart/mixed; boundary=x\r\n\r\n"
        + b"--x\r\nContent-Type: multipart/alternative; boundary=x\r\n\r\n"
        + b"--x\r\nContent-Type: text/plain\r\n\r\na\r\n"
        + b"--x\r\nContent-Type: text/html\r\n\r\nb\r\n"
        + b"--x--\r\n"
    )
    assert prescan(raw) == PrescanResult(True, None, *tree_size(parse(raw)))


def parse(raw: bytes) -> Message:
    return email.message_from_bytes(raw, policy=policy.default)


def tree_size(msg: Message, depth: int = 0) -> tuple[int, int]:
    """(entities, deepest entity) of what the stdlib parser built."""
    count, deepest = 1, depth
    if msg.is_multipart():
        for part in msg.get_payload():
            assert isinstance(part, Message)
            sub_count, sub_depth = tree_size(part, depth + 1)
            count, deepest = count + sub_count, max(deepest, sub_depth)
    return count, deepest


def corpus_files() -> list[Path]:
    if not CORPORA.is_dir():
        pytest.skip("../shared/corpora is absent (a user's fresh clone): corpus tests need it")
    files = []
    for folder in ("discourse", "enmime", "flufl_bounce", "python_test_email", "talon"):
        for path in sorted((CORPORA / folder).rglob("*")):
            if (
                path.is_file()
                and path.suffix.lower() in {".eml", ".raw", ".txt"}
                and path.stat().st_size < 2_000_000
            ):
                head = path.read_bytes()[:300]
                if b":" in head.split(b"\n", 1)[0] or head.startswith(b"From "):
                    files.append(path)
    return files


def test_corpora_pass_and_agree_with_the_parser() -> None:
    """Every real message passes; the scan's depth equals the parser's and its part count never falls
    more than one short (a delivery-status block split differently), so the caps mean what they say."""
    files = corpus_files()
    assert len(files) > 300
    for path in files:
        raw = path.read_bytes()
        result = prescan(raw, LENIENT)
        assert result.ok, (path.name, result)
        parts, depth = tree_size(parse(raw))
        assert result.depth == depth, (path.name, result, depth)
        assert result.part_count >= parts - 1, (path.name, result, parts)


@pytest.mark.parametrize("offset", [-2, -1, 0, 1])
def test_line_endings_are_judged_exactly_across_the_slices_of_a_large_message(offset: int) -> None:
    """The bare CR/LF check runs over 1 MiB slices (so it never holds the GIL for long): a CRLF
    across a slice edge is fine, a lone CR or LF there is not."""
    _SLICE = prescan_mod._SLICE

    head = b"From: a@b.test\r\nSubject: big\r\n\r\n"
    at = _SLICE + offset - len(head)
    body = bytearray(b"x" * (2 * _SLICE))
    for piece, ok in ((b"\r\n", True), (b"\r", False), (b"\n", False), (b"\n\r", False)):
        raw = bytearray(body)
        raw[at : at + len(piece)] = piece
        assert prescan(head + bytes(raw)).ok is ok, (piece, offset)


def test_header_fields_the_parser_reads_structurally_are_capped() -> None:
    """Finding 9: the stdlib's address parser costs ~20 µs a byte; a 195 KB From took ~5 s."""
    folded_from = b"From: " + b"\r\n ".join([b'"a b c d e f g h"'] * 400) + b" <a@b.test>\r\n"
    long_subject = b"Subject: " + b"\r\n ".join([b"word"] * 2000) + b"\r\n"
    huge_received = b"Received: " + b"\r\n ".join([b"from x by y"] * 3000) + b"\r\n"
    nested = (
        b"Content-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\n"
        b"Content-Type: text/plain; " + b"\r\n ".join([b"x=y;"] * 1200) + b"\r\n\r\nhi\r\n--b--\r\n"
    )
    assert prescan(HEAD + folded_from + b"\r\nbody\r\n").reason == "header_field_size"  # 8 KB From
    assert prescan(HEAD + long_subject + b"\r\nbody\r\n").ok  # 12 KB of an unstructured field is fine
    assert prescan(HEAD + huge_received + b"\r\nbody\r\n").reason == "header_field_size"  # over 32 KB
    assert prescan(HEAD + nested).reason == "header_field_size"  # a 7 KB Content-Type in a part


_LINES = st.sampled_from(
    [
        b"Content-Type: multipart/mixed; boundary=a\r\n",
        b"Content-Type: multipart/digest; boundary=b\r\n",
        b"Content-Type: message/rfc822\r\n",
        b"Content-Type: message/delivery-status\r\n",
        b"Content-Type: text/plain\r\n",
        b"X-Long: " + b"y" * 50 + b"\r\n",
        b" folded\r\n",
        b"--a\r\n",
        b"--a--\r\n",
        b"--b\r\n",
        b"--b-- \t\r\n",
        b"--ab\r\n",
        b"--a-\r\n",
        b"--b--x\r\n",
        b"\r\n",
        b"\n",
        b"\n\n\n",
        b"\r\n\r\n\r\n",
        b"body text\r\n",
        b"\r",
        b"x" * 300,
    ]
)


@settings(max_examples=600, deadline=None, derandomize=True, database=None)
@given(
    lines=st.lists(_LINES, max_size=60),
    top=st.sampled_from([b"multipart/mixed; boundary=a", b"multipart/digest; boundary=b", b"message/rfc822"]),
    slice_size=st.integers(1, 64),
    crlf=st.booleans(),
)
def test_streamed_scan_equals_the_scan_in_memory(
    lines: list[bytes], top: bytes, slice_size: int, crlf: bool
) -> None:
    """Headers, delimiters and blank lines cut anywhere by the slices; small caps so the window slides."""
    raw = b"Subject: s\r\nContent-Type: " + top + b"\r\n\r\n" + b"".join(lines)
    limits = PrescanLimits(
        require_crlf=crlf, max_header_bytes=100, max_field_bytes=90, max_parsed_field_bytes=80, max_parts=30
    )
    saved = prescan_mod._SLICE
    prescan_mod._SLICE = slice_size  # type: ignore[misc]
    try:
        assert prescan_stream(io.BytesIO(raw), limits) == prescan_mod.prescan(raw, limits)
    finally:
        prescan_mod._SLICE = saved  # type: ignore[misc]


def test_streamed_scan_refuses_what_is_too_long_and_shows_every_byte() -> None:
    raw = normal_reply()
    seen = bytearray()
    assert prescan_stream(io.BytesIO(raw), observers=[seen.extend]) == prescan_mod.prescan(raw)
    assert bytes(seen) == raw
    assert prescan_stream(io.BytesIO(raw), max_bytes=len(raw) - 1) is None
    assert prescan_stream(io.BytesIO(raw), max_bytes=len(raw)) is not None
