"""Hostile input: property tests of the pipeline over arbitrary bytes and mutated real mail, then the
rows of ../shared/HOSTILE-INPUTS.md not covered elsewhere, each through a real SMTP client.

The property tests call ``pipeline.run`` exactly as the SMTP door does (spool file, envelope with a
valid reply token) and assert, for every input: no exception escapes, the answer is one of
250/451/550/552/554 with the matching enhanced class, a 5xx is one of the named replies (Y4), no
error was swallowed into a 4xx, and an inbound_log row records that same answer. Per-input time is
measured (the maximum is printed at the end of the module) and bounded only in fuzz/fuzz_pipeline.py.
"""

from __future__ import annotations

import logging
import os
import re
import socket
import time
from collections.abc import Iterator
from email.message import EmailMessage
from email.policy import SMTP as SMTP_POLICY
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import select

from mailbridge import replies
from mailbridge.domain import directory
from mailbridge.domain.db import transaction
from mailbridge.domain.models import (
    InboundLog,
    InboundState,
    Message,
    MessageSource,
    QuarantineItem,
)
from mailbridge.inbound import pipeline
from mailbridge.wiring import Services
from tests import mailhelpers
from tests.conftest import PRACTICE, USERS, make_services, seed
from tests.mailhelpers import live_server, open_conversation, reply_address, reply_message, send
from tests.test_corpora_pipeline import OWNER, PipelineWorld, corpus_messages, crlf, from_owner
from tests.test_prescan import many_parts, nested_multiparts

# ---- hypothesis profiles ----------------------------------------------------------------------------

_HEALTH = [HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much]
settings.register_profile(
    "mailbridge-hostile", max_examples=200, deadline=None, derandomize=True, database=None,
    suppress_health_check=_HEALTH,
)  # fmt: skip
settings.register_profile(
    "mailbridge-hostile-long", max_examples=5000, deadline=None, suppress_health_check=_HEALTH
)
PROFILE = settings.get_profile(
    "mailbridge-hostile-long" if os.environ.get("HYPOTHESIS_PROFILE") == "long" else "mailbridge-hostile"
)

CORPUS = [(path.name, path.read_bytes()) for path in corpus_messages()]


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PipelineWorld]:
    built = PipelineWorld.build(tmp_path_factory.mktemp("hostile"))
    yield built
    if built.durations:
        print(
            f"\ntest_hostile: {len(built.durations)} pipeline runs, max {max(built.durations) * 1000:.1f} ms, "
            f"mean {sum(built.durations) / len(built.durations) * 1000:.1f} ms"
        )
    built.close()


def check(world: PipelineWorld, raw: bytes) -> pipeline.Outcome:
    outcome = world.run(raw)  # an exception here fails the example: nothing may escape
    problems = world.problems(outcome)
    assert not problems, "\n".join(problems)
    return outcome


# ---- strategies -------------------------------------------------------------------------------------

HEADER_NAMES = [
    "From", "To", "Cc", "Subject", "Date", "Message-ID", "In-Reply-To", "References", "MIME-Version",
    "Content-Type", "Content-Transfer-Encoding", "Content-Disposition", "Content-ID", "Auto-Submitted",
    "Precedence", "Received", "Authentication-Results", "DKIM-Signature", "X-Mailbridge-Loop",
    "Return-Path", "Reply-To", "Sender", "List-Id", "X-Autoreply",
]  # fmt: skip
HEADER_VALUES = [
    f"Alice Martin <{OWNER}>", OWNER, f"=?utf-8?b?QWxpY2U=?= <{OWNER}>", f"{OWNER}, bob@client.test",
    f'"{OWNER}" <mallory@evil.test>', "alice@example.org)<bob@example.org>", "<>", "",
    "multipart/mixed; boundary=b", 'multipart/alternative; boundary=""', "multipart/mixed",
    "text/plain; charset=x-evil", "text/html; charset=utf-7", "message/rfc822", "message/delivery-status",
    "text/plain; charset*=utf-8''%FF%FE", "application/octet-stream; name=../../etc/passwd",
    "base64", "quoted-printable", "x-uuencode", "8bit", "binary", "auto-replied", "bulk", "no",
    "=?x-evil?q?=FF?=", "=?utf-8?q?=E2=80=AE?=", "=?utf-8?b?!!!?=", "attachment; filename*=UTF-8''..%2F..%2Fx",
    "v=1; a=rsa-sha256; d=client.test; s=s; c=relaxed/relaxed; h=from; bh=AAAA; b=AAAA",
    "mailbridge; dmarc=pass header.from=client.test; spf=pass; dkim=pass", "mailbridge.localhost",
    "from evil.test by mx.acme.test; Mon, 1 Jan 2024 10:00:00 +0000", "<" + "a" * 900 + "@x>",
]  # fmt: skip
BODIES = [
    b"Tuesday at ten works for me, thank you.\r\n",
    b"--b\r\nContent-Type: text/plain\r\n\r\nhello there, tuesday is fine\r\n--b--\r\n",
    b"--b\r\nContent-Type: text/html\r\n\r\n<p>hi<script>x</script></p>\r\n--b\r\n",
    b"--b\r\nContent-Type: message/rfc822\r\n\r\nFrom: x@y\r\n\r\ninner\r\n--b--\r\n",
    b"=?utf-8?q?=FF?= =FF=FE=\r\n",
    b"QUJD\r\n!!!!\r\n====\r\n",
    b"begin 644 x.txt\r\n#86)C\r\n`\r\nend\r\n",
    b"\x00\x01\x02\xff\xfe\r\n",
    b"",
]
INSERTS = [
    b"\r\n", b"\r\n\r\n", b"\n", b"\r", b"\x00", b"\r\n--b\r\n", b"\r\n--b--\r\n", b"=?utf-8?b?", b"\xff\xfe",
    b"Content-Type: multipart/mixed; boundary=x\r\n", b"\r\nContent-Type: message/rfc822\r\n\r\n",
    b"From: bob@client.test\r\n", b"\r\n.\r\n", b"begin 644 a\r\n", b"<script>", b'"', b";", b"%",
]  # fmt: skip
CHARSETS = [b"x-evil", b"utf-7", b"utf-16", b"", b"unknown-8bit", b"iso-2022-jp", b"cp1252", b"utf-8''"]
ENCODINGS = [b"base64", b"quoted-printable", b"x-uuencode", b"7bit", b"bogus", b""]

header_value = st.one_of(
    st.sampled_from(HEADER_VALUES),
    st.text(max_size=80).map(lambda t: t.encode("utf-8", "surrogatepass").decode("utf-8", "replace")),
    st.binary(max_size=60).filter(lambda b: b"\r" not in b and b"\n" not in b),
)


def _bytes(value: str | bytes) -> bytes:
    return value if isinstance(value, bytes) else value.encode("utf-8")


@st.composite
def structured_messages(draw: st.DrawFn) -> bytes:
    """Header fields from a hostile vocabulary over a body that may be MIME, binary or empty."""
    headers = draw(st.lists(st.tuples(st.sampled_from(HEADER_NAMES), header_value), max_size=12))
    if draw(st.booleans()):
        headers.insert(draw(st.integers(0, len(headers))), ("From", f"Alice Martin <{OWNER}>"))
    head = b"".join(_bytes(name) + b": " + _bytes(value) + b"\r\n" for name, value in headers)
    body = draw(st.one_of(st.sampled_from(BODIES), st.binary(max_size=600)))
    raw = head + b"\r\n" + body
    return crlf(raw) if draw(st.booleans()) else raw


@st.composite
def arbitrary_bytes(draw: st.DrawFn) -> bytes:
    """Any bytes at all; half of them behind a From the token owner could have written."""
    raw = draw(st.binary(max_size=4096))
    if draw(st.booleans()):
        raw = f"From: {OWNER}\r\n".encode() + raw
    return crlf(raw) if draw(st.booleans()) else raw


def _mutate(draw: st.DrawFn, raw: bytes) -> bytes:
    op = draw(
        st.sampled_from(
            ["flip", "delete", "duplicate", "insert", "truncate", "header", "charset", "cte", "boundary"]
        )
    )
    size = len(raw)
    at = draw(st.integers(0, size))
    if op == "flip" and size:
        at = min(at, size - 1)
        return raw[:at] + bytes([raw[at] ^ draw(st.integers(1, 255))]) + raw[at + 1 :]
    if op == "delete":
        return raw[:at] + raw[at + draw(st.integers(0, 400)) :]
    if op == "duplicate":
        piece = raw[at : at + draw(st.integers(0, 400))]
        return raw[:at] + piece * draw(st.integers(2, 30)) + raw[at:]
    if op == "insert":
        piece = draw(st.one_of(st.sampled_from(INSERTS), st.binary(max_size=64)))
        return raw[:at] + piece + raw[at:]
    if op == "truncate":
        return raw[:at]
    if op == "header":
        names = re.findall(rb"(?m)^([!-9;-~]+):", raw.split(b"\r\n\r\n", 1)[0])
        if names:
            name = re.escape(draw(st.sampled_from(names)))
            value = _bytes(draw(header_value)).replace(b"\\", b"\\\\")
            return re.sub(
                rb"(?m)^" + name + rb":[^\r\n]*", name.replace(b"\\", b"") + b": " + value, raw, count=1
            )
    if op == "charset":
        return re.sub(rb'(?i)charset="?[^";\r\n]*"?', b"charset=" + draw(st.sampled_from(CHARSETS)), raw)
    if op == "cte":
        cte = draw(st.sampled_from(ENCODINGS))
        return re.sub(rb"(?i)Content-Transfer-Encoding:[^\r\n]*", b"Content-Transfer-Encoding: " + cte, raw)
    if op == "boundary":
        closing = raw.rfind(b"--\r\n")
        return raw[:closing] + raw[closing + 4 :] if closing >= 0 else raw
    return raw


@st.composite
def mutated_corpus_messages(draw: st.DrawFn) -> bytes:
    """A real message (often sent as the token owner, to reach the deep steps), mutated 1–4 times."""
    _, original = draw(st.sampled_from(CORPUS))
    raw = from_owner(original) if draw(st.integers(0, 3)) else crlf(original)
    for _ in range(draw(st.integers(1, 4))):
        raw = _mutate(draw, raw)
    return crlf(raw) if draw(st.integers(0, 3)) else raw


# ---- the properties ---------------------------------------------------------------------------------


@settings(PROFILE)
@given(raw=arbitrary_bytes())
def test_arbitrary_bytes_get_a_defined_answer_and_a_log_row(world: PipelineWorld, raw: bytes) -> None:
    check(world, raw)


@settings(PROFILE)
@given(raw=structured_messages())
def test_hostile_headers_and_bodies_get_a_defined_answer(world: PipelineWorld, raw: bytes) -> None:
    check(world, raw)


@settings(PROFILE)
@given(raw=mutated_corpus_messages() if CORPUS else st.just(b""))
def test_mutated_real_messages_get_a_defined_answer(world: PipelineWorld, raw: bytes) -> None:
    if not CORPUS:
        pytest.skip("../shared/corpora is absent (a user's fresh clone): the mutation test needs it")
    check(world, raw)


# ---- HOSTILE-INPUTS rows through a real SMTP client --------------------------------------------------


@pytest.fixture
def mail(sqlite_services: Services) -> Iterator[Any]:
    seed(sqlite_services)
    with live_server(sqlite_services) as server:
        yield server


def answer(reply: replies.SmtpReply) -> tuple[int, bytes]:
    return reply.code, f"{reply.enhanced} {reply.text}".encode()


def dialogue(port: int, lines: list[bytes], data: bytes | None = None) -> list[bytes]:
    """A raw SMTP dialogue (what smtplib would refuse to send): one answer line per command."""
    with socket.create_connection(("127.0.0.1", port), timeout=20) as sock, sock.makefile("rb") as reader:
        answers = [reader.readline()]
        for line in lines:
            sock.sendall(line + b"\r\n")
            reply = reader.readline()
            while reply[3:4] == b"-":
                reply = reader.readline()
            answers.append(reply)
        if data is not None:
            sock.sendall(data)
            answers.append(reader.readline())
        return answers


def transaction_lines(address: str) -> list[bytes]:
    return [b"EHLO client.test", b"MAIL FROM:<alice@client.test>", f"RCPT TO:<{address}>".encode(), b"DATA"]


def wire_bytes(msg: EmailMessage) -> bytes:
    return msg.as_bytes(policy=SMTP_POLICY)


def send_raw(server: Any, raw: bytes, rcpt: str, mail_from: str = OWNER) -> tuple[int, bytes]:
    return mailhelpers.send_raw(server, raw, mail_from, rcpt)


def posted(services: Services, conversation_id: str) -> list[Message]:
    with services.sessions() as session:
        return list(
            session.scalars(
                select(Message)
                .where(Message.conversation_id == conversation_id, Message.source == MessageSource.email)
                .order_by(Message.created_at)
            ).unique()
        )


def log_rows(services: Services) -> list[InboundLog]:
    with services.sessions() as session:
        return list(session.scalars(select(InboundLog).order_by(InboundLog.received_at)).all())


def add_client(services: Services, external_id: str, email: str) -> None:
    with transaction(services.sessions) as session:
        practice = directory.get_practice(session, "acme")
        directory.upsert_user(
            session, practice, external_id, email=email, alt_emails=[], name=external_id.title(),
            kind=directory.UserKind.client, role=None, active=True, locale="en",
        )  # fmt: skip


def test_p4_data_line_of_1500_bytes_is_refused_and_nothing_stored(
    sqlite_services: Services, mail: Any
) -> None:
    conv = open_conversation(sqlite_services)
    address = reply_address(sqlite_services, conv, "alice")
    data = b"From: alice@client.test\r\nSubject: hi\r\n\r\n" + b"a" * 1500 + b"\r\nshort line\r\n.\r\n"
    answers = dialogue(mail.port, [*transaction_lines(address)], data)
    assert answers[-1] == b"500 5.5.2 Line too long (see RFC5321 4.5.3.1.6)\r\n"
    assert posted(sqlite_services, conv) == []
    assert [(r.state, r.reason) for r in log_rows(sqlite_services)] == [
        (InboundState.rejected, "line_too_long")
    ]
    assert dialogue(mail.port, [b"EHLO client.test", b"NOOP"])[-1] == b"250 OK\r\n"


def test_p7_long_command_line_refused_and_connection_stays_usable(mail: Any) -> None:
    answers = dialogue(
        mail.port,
        [
            b"EHLO client.test",
            b"MAIL FROM:<" + b"a" * 600 + b"@client.test>",
            b"MAIL FROM:<alice@client.test>",
        ],
    )
    assert answers[2].startswith(b"500 ") and b"too long" in answers[2].lower()
    assert answers[3] == b"250 OK\r\n"  # the long MAIL had no effect: a new MAIL is accepted


def test_p8_thousand_rcpts_one_accepted_the_rest_452_then_posted_once(
    sqlite_services: Services, mail: Any
) -> None:
    conv = open_conversation(sqlite_services)
    address = reply_address(sqlite_services, conv, "alice")
    other = reply_address(sqlite_services, open_conversation(sqlite_services, subject="Invoice"), "alice")
    with mail.client() as client:
        client.ehlo("client.test")
        client.mail("alice@client.test")
        answers = [client.rcpt(address if n % 2 else other) for n in range(1, 1001)]
        assert answers[0][0] == 250
        assert set(answers[1:]) == {answer(replies.TOO_MANY_TOKENS)}  # never 421: these are not bad tokens
        code, _ = client.data(wire_bytes(reply_message(OWNER, address, "One reply, a thousand recipients.")))
    assert code == 250
    assert [m.body for m in posted(sqlite_services, conv)] == ["One reply, a thousand recipients."]


def _spool(services: Services) -> list[Path]:
    folder = services.settings.data_dir / "spool"
    return list(folder.iterdir()) if folder.exists() else []


def _wait(predicate: Any, what: str, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


def _disconnect_mid_data(services: Services, port: int) -> str:
    conv = open_conversation(services)
    address = reply_address(services, conv, "alice")
    sock = socket.create_connection(("127.0.0.1", port), timeout=20)
    with sock, sock.makefile("rb") as reader:
        assert reader.readline().startswith(b"220")
        for line in transaction_lines(address):
            sock.sendall(line + b"\r\n")
            reply = reader.readline()
            while reply[3:4] == b"-":
                reply = reader.readline()
        assert reply.startswith(b"354")
        sock.sendall(b"From: alice@client.test\r\nSubject: hi\r\n\r\nhalf of a reply, then the line dro")
        _wait(lambda: len(_spool(services)) == 1, "the spool file")
    _wait(lambda: _spool(services) == [], "the spool file to be removed")
    return conv


def test_p11_client_disconnects_mid_data_nothing_stored(sqlite_services: Services, mail: Any) -> None:
    conv = _disconnect_mid_data(sqlite_services, mail.port)
    assert posted(sqlite_services, conv) == []
    assert log_rows(sqlite_services) == []
    assert list((sqlite_services.settings.data_dir / "inbound").rglob("*.eml")) == []


def test_p11_disconnect_mid_data_is_logged(
    sqlite_services: Services, mail: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """Was a bug (fixed): mailbridge/ingress/smtp.py `_SpoolingMixin.smtp_DATA` lets the CancelledError /
    IncompleteReadError of a lost connection pass through its ``finally`` (the spool file is removed,
    correctly) without logging ``conn_lost_in_data`` (peer IP), so an operator cannot see clients
    dropping mid-transfer; only aiosmtpd's own INFO line "Connection lost during _handle_client()"."""
    caplog.set_level(logging.INFO)
    _disconnect_mid_data(sqlite_services, mail.port)
    # The spool file is gone, so smtp_DATA's clean-up ran: any log line of its own is already there.
    assert "conn_lost_in_data" in [r.getMessage() for r in caplog.records]


def test_p13_per_ip_connection_cap_answers_421(tmp_path: Path) -> None:
    services = make_services(tmp_path, f"sqlite:///{tmp_path / 'db.sqlite'}", smtp_max_connections_per_ip=2)
    seed(services)
    with live_server(services) as server:
        first = socket.create_connection(("127.0.0.1", server.port), timeout=10)
        second = socket.create_connection(("127.0.0.1", server.port), timeout=10)
        with first, second:
            assert first.recv(100).startswith(b"220") and second.recv(100).startswith(b"220")
            with socket.create_connection(("127.0.0.1", server.port), timeout=10) as third:
                assert third.recv(100) == b"421 4.7.0 Too many connections, try again later\r\n"
                assert third.recv(100) == b""  # and closed
            first.close()

            def greeted() -> bool:
                with socket.create_connection(("127.0.0.1", server.port), timeout=10) as again:
                    return again.recv(100).startswith(b"220")

            _wait(greeted, "a slot to free up once a connection closes")
    services.close()


def test_p14_nul_in_a_header_refused(sqlite_services: Services, mail: Any) -> None:
    conv = open_conversation(sqlite_services)
    address = reply_address(sqlite_services, conv, "alice")
    raw = wire_bytes(reply_message(OWNER, address, "Tuesday works for me."))
    raw = raw.replace(b"Subject: Re:", b"Subject: R\x00e:")
    code, text = send_raw(mail, raw, address)
    assert (code, text[:5]) == (550, b"5.6.0")
    assert posted(sqlite_services, conv) == []
    assert log_rows(sqlite_services)[-1].reason == "nul_in_header"


@pytest.mark.parametrize(
    ("label", "make", "reason"),
    [("M1", lambda: nested_multiparts(3000), "mime_depth"), ("M2", lambda: many_parts(50_000), "mime_parts")],
)
def test_m1_m2_mime_bombs_refused_through_smtp(
    sqlite_services: Services, mail: Any, label: str, make: Any, reason: str
) -> None:
    conv = open_conversation(sqlite_services)
    address = reply_address(sqlite_services, conv, "alice")
    bomb = make()
    started = time.perf_counter()
    assert send_raw(mail, bomb, address) == answer(replies.MIME_TOO_COMPLEX)
    print(f"{label}: {len(bomb)} bytes refused in {(time.perf_counter() - started) * 1000:.0f} ms over SMTP")
    assert posted(sqlite_services, conv) == []
    assert log_rows(sqlite_services)[-1].reason == reason


@pytest.mark.parametrize("charset", ["x-evil", "utf-8"])
def test_m5_unknown_charset_or_invalid_utf8_posted_with_replacement_characters(
    sqlite_services: Services, mail: Any, charset: str
) -> None:
    conv = open_conversation(sqlite_services)
    address = reply_address(sqlite_services, conv, "alice")
    raw = (
        f"From: {OWNER}\r\nTo: {address}\r\nSubject: Re: charset\r\nMessage-ID: <m5.{charset}@client.test>\r\n"
        f'MIME-Version: 1.0\r\nContent-Type: text/plain; charset="{charset}"\r\n'
        "Content-Transfer-Encoding: 8bit\r\n\r\n"
    ).encode() + b"Caf\xe9 on Tuesday works for me \xff\xfe thanks\r\n"
    assert send_raw(mail, raw, address)[0] == 250
    (message,) = posted(sqlite_services, conv)
    assert "\ufffd" in message.body and "on Tuesday works for me" in message.body


def test_m6_html_only_body_stored_sanitized(sqlite_services: Services, mail: Any) -> None:
    conv = open_conversation(sqlite_services)
    address = reply_address(sqlite_services, conv, "alice")
    msg = reply_message(OWNER, address, "placeholder")
    msg.set_content(
        "<html><body><p>Tuesday works for me, thanks</p><script>alert(1)</script>"
        "<img src=x onerror=alert(2)><a href='javascript:alert(3)'>click</a>"
        "<img src='https://evil.test/pixel.png'><div style='background:url(https://evil.test/t)'>x</div>"
        "</body></html>",
        subtype="html",
    )
    assert send(mail, msg, OWNER, address)[0] == 250
    (message,) = posted(sqlite_services, conv)
    html = (message.body_html or "").lower()
    assert "tuesday works for me" in html and "tuesday works for me" in message.body.lower()
    for bad in ("<script", "alert(", "onerror", "javascript:", "evil.test", "<img", "style="):
        assert bad not in html, bad
    assert "alert(" not in message.body


def test_m8_attached_message_with_another_token_is_never_processed_as_a_reply(
    sqlite_services: Services, mail: Any
) -> None:
    conv = open_conversation(sqlite_services)
    other = open_conversation(sqlite_services, subject="Invoice")
    address = reply_address(sqlite_services, conv, "alice")
    other_address = reply_address(sqlite_services, other, "alice")
    outer = reply_message(OWNER, address, "Forwarding the note I got, see the attachment.")
    inner = reply_message(OWNER, other_address, "Inner text that must never be posted anywhere.")
    outer.add_attachment(inner)
    assert outer.get_payload()[1].get_content_type() == "message/rfc822"
    assert send(mail, outer, OWNER, address)[0] == 250
    (message,) = posted(sqlite_services, conv)
    assert message.body.startswith("Forwarding the note I got")
    assert posted(sqlite_services, other) == []
    with sqlite_services.sessions() as session:
        bodies = session.scalars(select(Message.body)).all()
    assert not any("Inner text" in body for body in bodies)


def test_m9_missing_message_id_accepted_and_still_deduplicated(sqlite_services: Services, mail: Any) -> None:
    conv = open_conversation(sqlite_services)
    address = reply_address(sqlite_services, conv, "alice")
    msg = reply_message(OWNER, address, "No Message-ID here, Tuesday is fine.")
    del msg["Message-ID"]
    assert send(mail, msg, OWNER, address)[0] == 250
    assert send(mail, msg, OWNER, address)[0] == 250  # the MTA retries: the raw hash dedupes it
    assert [m.body for m in posted(sqlite_services, conv)] == ["No Message-ID here, Tuesday is fine."]
    assert [r.state for r in log_rows(sqlite_services)] == [InboundState.posted, InboundState.duplicate]


@pytest.mark.parametrize("body", ["", "   \n\n  \n"])
def test_m11_empty_body_refused(sqlite_services: Services, mail: Any, body: str) -> None:
    conv = open_conversation(sqlite_services)
    address = reply_address(sqlite_services, conv, "alice")
    assert send(mail, reply_message(OWNER, address, body), OWNER, address) == answer(replies.EMPTY_MESSAGE)
    assert posted(sqlite_services, conv) == []


def test_t6_token_only_in_the_to_header_is_not_posted(sqlite_services: Services, mail: Any) -> None:
    conv = open_conversation(sqlite_services)
    address = reply_address(sqlite_services, conv, "alice")
    msg = reply_message(OWNER, address, "Routed by the envelope, not by this header.")
    assert send(mail, msg, OWNER, "postmaster@reply.acme.test")[0] == 250  # the operator's, not a post
    # the practice's own domain, but no route there; then a domain that is nobody's
    assert send(mail, msg, OWNER, "frontdesk@acme.test") == answer(replies.UNKNOWN_RECIPIENT)
    assert send(mail, msg, OWNER, "frontdesk@elsewhere.test") == answer(replies.RELAY_DENIED)
    assert posted(sqlite_services, conv) == []
    assert log_rows(sqlite_services)[0].state == InboundState.forwarded


def test_t7_only_in_reply_to_pointing_at_a_conversation_is_not_posted(
    sqlite_services: Services, mail: Any
) -> None:
    import email

    from mailbridge.outbound.worker import Worker
    from tests.test_outbound import drain

    conv = open_conversation(sqlite_services)
    drain(Worker.from_services(sqlite_services))  # the real notification, written to the outbox folder
    (eml,) = (sqlite_services.settings.data_dir / "outbox").glob("*.eml")
    notification_id = email.message_from_bytes(eml.read_bytes())["Message-ID"]
    assert notification_id
    msg = reply_message(
        OWNER,
        "reply@reply.acme.test",
        "Threaded by headers only.",
        headers={"In-Reply-To": notification_id, "References": notification_id},
    )
    for rcpt in ("reply@reply.acme.test", "reply+@reply.acme.test", "notify@acme.test"):
        code, text = send(mail, msg, OWNER, rcpt)
        assert code == 550 and text[:1] == b"5", (rcpt, code, text)
    assert posted(sqlite_services, conv) == []


def test_a8_forged_authentication_results_are_ignored(sqlite_services: Services, mail: Any) -> None:
    add_client(sqlite_services, "finn", "finn@nodns.test")  # a domain with no SPF, DKIM or DMARC
    conv = open_conversation(sqlite_services, participants=("finn",))
    address = reply_address(sqlite_services, conv, "finn")
    forged = (
        "dkim=pass header.d=nodns.test; spf=pass smtp.mailfrom=nodns.test; dmarc=pass header.from=nodns.test"
    )
    msg = reply_message("finn@nodns.test", address, "Trust me, I am authenticated.")
    msg["Authentication-Results"] = f"mailbridge.localhost; {forged}"
    msg["Authentication-Results"] = f"mailbridge; {forged}"
    assert send(mail, msg, "finn@nodns.test", address)[0] == 250
    assert posted(sqlite_services, conv) == []  # held: a private conversation needs a real aligned pass
    with sqlite_services.sessions() as session:
        assert session.scalars(select(QuarantineItem.reason)).all() == ["auth_not_aligned"]
    row = log_rows(sqlite_services)[-1]
    assert row.state == InboundState.quarantined and "dmarc=pass" not in (row.auth_results or "")


def test_a12_mail_from_our_own_addresses_is_dropped_as_a_loop(sqlite_services: Services, mail: Any) -> None:
    """From = the practice's notify address, or our loop header on a reflected notification: 250 (no
    backscatter to our own VERP address), logged loop_detected, never posted."""
    conv = open_conversation(sqlite_services)
    address = reply_address(sqlite_services, conv, "alice")
    own = reply_message("Acme <notify@acme.test>", address, "A copy of our own notification came back.")
    code, text = send(mail, own, "notify@acme.test", address)
    assert (code, text[:5]) == (250, b"2.0.0")
    assert log_rows(sqlite_services)[-1].reason == "loop_detected"
    looped = reply_message(OWNER, address, "Our notification, reflected by a forwarder.")
    looped["X-Mailbridge-Loop"] = "mailbridge.localhost"
    assert send(mail, looped, OWNER, address)[0] == 250
    assert log_rows(sqlite_services)[-1].reason == "loop_detected"
    assert posted(sqlite_services, conv) == []


def test_y3_token_of_practice_a_on_practice_b_domain_is_unknown(sqlite_services: Services, mail: Any) -> None:
    from mailbridge.directory_import import load_directory

    with transaction(sqlite_services.sessions) as session:
        beta = {
            **PRACTICE,
            "name": "Beta Clinic",
            "reply_domain": "reply.beta.test",
            "notify_from": "n@beta.test",
        }
        load_directory(session, {"practices": [{"slug": "beta", **beta, "users": USERS}]})
    acme_conv = open_conversation(sqlite_services)
    beta_conv = open_conversation(sqlite_services, practice="beta")
    acme = reply_address(sqlite_services, acme_conv, "alice")
    beta = reply_address(sqlite_services, beta_conv, "alice", practice="beta")
    crossed = [
        acme.replace("@reply.acme.test", "@reply.beta.test"),
        beta.replace("@reply.beta.test", "@reply.acme.test"),
    ]
    with mail.client() as client:
        client.ehlo("client.test")
        client.mail(OWNER)
        assert [client.rcpt(rcpt) for rcpt in crossed] == [answer(replies.UNKNOWN_RECIPIENT)] * 2
        assert client.rcpt("reply+" + "a" * 32 + "@reply.beta.test") == answer(replies.UNKNOWN_RECIPIENT)
    assert [r.reason for r in log_rows(sqlite_services)] == ["token_invalid"] * 3


def test_y4_no_5xx_text_names_people_subjects_or_exceptions(
    sqlite_services: Services, mail: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    subject = "Zorblax appointment for Alice Martin"
    private = open_conversation(sqlite_services, subject=subject)
    group = open_conversation(sqlite_services, participants=("alice", "bob"), subject=subject)
    address = reply_address(sqlite_services, private, "alice")
    bob = reply_address(sqlite_services, group, "bob")
    seen: list[tuple[int, bytes]] = []

    def msg(sender: str, to: str, body: str) -> EmailMessage:
        return reply_message(sender, to, body, subject=f"Re: {subject}")

    seen.append(
        send(mail, msg('"Alice Martin" <mallory@evil.test>', address, "Zorblax body."), OWNER, address)
    )
    both = msg(OWNER, address, "Zorblax body.")
    both.replace_header("From", f"Alice Martin <{OWNER}>, Bob Durand <bob@client.test>")
    seen.append(send(mail, both, OWNER, address))
    seen.append(send(mail, msg(OWNER, address, ""), OWNER, address))
    seen.append(
        send(
            mail, msg("Bob Durand <bob@client.test>", bob, "Zorblax merci beaucoup."), "bob@client.test", bob
        )
    )
    seen.append(send_raw(mail, nested_multiparts(50), address))
    seen.append(
        send(mail, msg(OWNER, "reply+zorblax@reply.acme.test", "x"), OWNER, "reply+zorblax@reply.acme.test")
    )
    seen.append(send(mail, msg(OWNER, "alice.martin@zorblax.test", "x"), OWNER, "alice.martin@zorblax.test"))
    with mail.client() as client:
        client.ehlo("client.test")
        assert client.mail(OWNER, ["SIZE=90000000"])[0] == 250  # over the practice limit only
        seen.append(client.rcpt(address))

    def boom(ctx: Any) -> None:
        raise KeyError("Alice Martin's Zorblax appointment")

    monkeypatch.setattr(pipeline, "STEPS", (*pipeline.STEPS[:3], boom))
    seen.append(send(mail, msg(OWNER, address, "Zorblax body, long enough."), OWNER, address))

    assert [code for code, _ in seen] == [550, 550, 550, 550, 550, 550, 550, 552, 451]
    forbidden = {"zorblax", "keyerror", "error", "traceback", "exception", "acme", "counselling"}
    forbidden |= {part.lower() for user in USERS.values() for part in user["name"].split() if len(part) > 2}
    forbidden |= {"alice", "bob", "client.test", "mallory", "evil"}
    for code, text in seen:
        lowered = text.decode().lower()
        assert not [word for word in forbidden if word in lowered], (code, text)


@pytest.mark.parametrize(
    "diagnostic",
    [b"smtp; 550 utilisateur inconnu \xc3\xa9", b"smtp; 550 unknown user \x80"],
    ids=["utf8", "8bit"],
)
def test_dsn_with_non_ascii_diagnostic_is_recorded_not_deferred(
    sqlite_services: Services, mail: Any, diagnostic: bytes
) -> None:
    """Found by test_mutated_real_messages (HYPOTHESIS_PROFILE=long).

    Bug: mailbridge/inbound/classify.py ``_dsn_blocks`` builds the delivery-status fields with
    ``str(v)`` over ``block.raw_items()``; for a message parsed from bytes, every non-ASCII byte of a
    field (a localized MTA's ``Diagnostic-Code``, even valid UTF-8) is a lone surrogate (``\\udcc3``).
    ``bounces.record_bounce`` → ``note_bounce`` stored it in ``Suppression.reason`` (and, for a VERP
    bounce, ``Outbox.last_answer``); the flush raises ``UnicodeEncodeError: surrogates not allowed``,
    the pipeline turns it into ``internal_error`` and answers ``451 4.3.0``. The reporting MTA retries
    the same DSN until it expires, and the bounce is never recorded (no suppression, no
    ``email_bouncing``). Expected: ``250``, log row ``bounce``; decode the fields as UTF-8 with
    replacement (``v.encode("utf-8", "surrogateescape").decode("utf-8", "replace")``).

    Since issue 11, a DSN at a reply address is logged and never recorded (``not_verp``); the same
    diagnostic at a VERP address is stored in the suppression (tests/test_bounces.py).
    """
    address = reply_address(sqlite_services, open_conversation(sqlite_services), "alice")
    dsn = (
        b"From: MAILER-DAEMON@mx.client.test\r\nTo: " + address.encode() + b"\r\n"
        b"Subject: Undelivered Mail Returned to Sender\r\nMIME-Version: 1.0\r\n"
        b'Content-Type: multipart/report; report-type=delivery-status; boundary="b"\r\n\r\n'
        b"--b\r\nContent-Type: text/plain\r\n\r\nYour message bounced.\r\n"
        b"--b\r\nContent-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; mx.client.test\r\n\r\n"
        b"Final-Recipient: rfc822; bob@client.test\r\nAction: failed\r\nStatus: 5.1.1\r\n"
        b"Diagnostic-Code: " + diagnostic + b"\r\n\r\n--b--\r\n"
    )
    assert send_raw(mail, dsn, address, mail_from="") == answer(replies.OK)
    assert log_rows(sqlite_services)[-1].state == InboundState.bounce


@pytest.mark.parametrize(
    "content_type",
    [
        b"multipart/mixed; boundary*=utf-8''%C3%A9",  # RFC 2231, the whole header 7-bit
        b'multipart/mixed; boundary="caf\xc3\xa9" (comment)',
        b'multipart/mixed; boundary="B\xa9',  # unterminated quote, 8-bit
    ],
    ids=["rfc2231", "comment", "unterminated"],
)
def test_non_ascii_multipart_boundary_gets_a_defined_answer(
    world: PipelineWorld, content_type: bytes
) -> None:
    """Found by fuzz/fuzz_pipeline.py (atheris).

    Bug: mailbridge/inbound/prescan.py ``_entity_kind``, last line: when the boundary comes from the
    real header parser (``holder.get_boundary()``: RFC 2231, comments, unbalanced quotes), it is a
    decoded str that may hold non-ASCII characters (``\xe9``, or ``\ufffd`` for 8-bit bytes), and
    ``boundary.encode("ascii", "surrogateescape")`` raises ``UnicodeEncodeError``. The pipeline turns
    it into ``internal_error``: ``451 4.3.0``, so the sender's MTA retries the same message until it
    expires. The first case is a plain 7-bit header. Expected: a defined answer (the stdlib parser
    finds no part for such a boundary: a boundary that cannot match, then 250 or 550 5.6.0);
    e.g. encode with ``"utf-8", "surrogateescape"``, or treat an unencodable boundary as none.
    """
    raw = (
        f"From: Alice Martin <{OWNER}>\r\nSubject: Re: hi\r\nContent-Type: ".encode()
        + content_type
        + b"\r\n\r\n--x\r\nContent-Type: text/plain\r\n\r\nTuesday works for me, thanks.\r\n--x--\r\n"
    )
    check(world, raw)
