"""Review findings on the large-message path (issue 17 item 2), each performed as an attacker would.

1. A delimiter line padded past the streamed prescan's window hid a nested multipart of thousands of
   parts from the MIME-bomb limits, while the parser that follows found them all (IMAP carries long
   lines; SMTP's DATA reader refuses lines over 1,000 octets).
2. The middle of a very long line, cut at the parser's 1 MiB line limit, was judged as a line start:
   a junk line of exactly that length followed by ``--boundary`` opened parts the prescan never saw.
3. A base64 body made of pad characters was held whole and copied at every run (quadratic time).
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

from mailbridge.inbound import mimestream
from mailbridge.inbound import prescan as prescan_mod
from mailbridge.inbound.prescan import PrescanLimits, prescan_stream

CRLF = b"\r\n"
HEAD = CRLF.join(
    [
        b"From: alice@client.test",
        b"To: reply+x@reply.acme.test",
        b"Subject: Re: forms",
        b"MIME-Version: 1.0",
        b'Content-Type: multipart/mixed; boundary="AAA"',
        b"",
        b"--AAA",
        b"Content-Type: text/plain",
        b"",
        b"",
    ]
)


def _hidden_parts(separator: bytes, parts: int = 1500) -> bytes:
    """A message whose first part's text is followed by ``separator`` then a nested multipart."""
    filler = (b"y" * 76 + CRLF) * 60_000  # over STREAM_THRESHOLD: the streamed path
    nested = [b'Content-Type: multipart/mixed; boundary="BBB"', b""]
    for i in range(parts):
        nested += [b"--BBB", b"Content-Type: application/octet-stream", b"", b"x%d" % i]
    nested += [b"--BBB--", b"--AAA--", b""]
    return HEAD + filler + separator + CRLF + CRLF.join(nested)


def _parsed_attachments(raw: bytes, tmp_path: Path) -> int:
    path = tmp_path / "m.eml"
    path.write_bytes(raw)
    parsed = mimestream.parse_file(path, tmp_path / "spool")
    try:
        return len(parsed.attachments)
    finally:
        parsed.cleanup()


def test_the_line_limits_agree() -> None:
    assert prescan_mod._LONG_LINE == mimestream._LINE_LIMIT


def test_a_delimiter_padded_past_the_window_is_refused(tmp_path: Path) -> None:
    raw = _hidden_parts(b"--AAA" + b" " * 1_900_000)
    assert _parsed_attachments(raw, tmp_path) == 1500  # what the parser would open
    result = prescan_stream(io.BytesIO(raw), PrescanLimits(), [], 200 * 1024 * 1024)
    assert result is not None and not result.ok
    assert result.reason == "padded_delimiter"


def test_the_middle_of_a_long_line_is_no_delimiter(tmp_path: Path) -> None:
    junk = b"z" * (mimestream._LINE_LIMIT - len(CRLF)) + CRLF  # the line ends exactly at the limit
    raw = _hidden_parts(b"q" * mimestream._LINE_LIMIT + b"--AAA")
    assert _parsed_attachments(raw, tmp_path) == 0  # one long text line, as feedparser reads it
    result = prescan_stream(io.BytesIO(raw), PrescanLimits(), [], 200 * 1024 * 1024)
    assert result is not None and result.ok
    # A real line start right at the limit is still a delimiter (no over-correction).
    assert _parsed_attachments(_hidden_parts(junk + b"--AAA", parts=3), tmp_path) == 3


def test_a_base64_body_of_pads_is_not_held(tmp_path: Path) -> None:
    sink: Any = mimestream._Sink("base64", tmp_path / "out.bin")
    run = (b"=" * 76 + CRLF) * 13_000  # ~1 MiB, a run of whole lines as the reader hands them
    for _ in range(8):
        sink.feed(run)
        assert len(sink._b64) <= 4
    assert sink.close() == b""
    assert (tmp_path / "out.bin").read_bytes() == b""


def test_the_padded_delimiter_is_refused_at_the_imap_door(sqlite_services: Any, tmp_path: Path) -> None:
    """The pipeline as the IMAP poller runs it (long lines come through that door): refused before
    any parse, nothing posted, the reason in the inbound log."""
    from sqlalchemy import func, select

    from mailbridge.domain.models import InboundLog, InboundState, Message
    from mailbridge.inbound import pipeline
    from mailbridge.inbound.envelope import decide_recipient
    from mailbridge.wiring import pipeline_deps
    from tests.conftest import seed
    from tests.mailhelpers import open_conversation, reply_address

    services = sqlite_services
    seed(services)
    conversation = open_conversation(services, participants=("alice",))
    address = reply_address(services, conversation, "alice")
    with services.sessions() as session:
        target = decide_recipient(session, services.tokens, services.verp_secret, address).target
    assert target is not None
    raw = _hidden_parts(b"--AAA" + b" " * 1_900_000).replace(b"reply+x@reply.acme.test", address.encode())
    path = tmp_path / "imap.eml"
    path.write_bytes(raw)
    envelope = pipeline.Envelope("imap", None, None, "alice@client.test", target)
    outcome = pipeline.run(pipeline_deps(services), envelope, path, len(raw))
    assert outcome.state == InboundState.rejected
    assert outcome.reason == "padded_delimiter"
    with services.sessions() as session:
        assert session.scalar(select(func.count()).select_from(Message)) == 1  # the opening post only
        row = session.scalars(select(InboundLog).order_by(InboundLog.received_at.desc())).first()
        assert row is not None and row.reason == "padded_delimiter"
