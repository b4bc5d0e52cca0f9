"""The SMTP door end to end with a real client over a loopback socket: every refusal code, posting, never losing."""

from __future__ import annotations

import smtplib
import socket
import sqlite3
from typing import Any

import pytest
from sqlalchemy import select

from mailbridge import replies
from mailbridge.domain.models import InboundLog, InboundState, Message, Outbox, OutboxKind, QuarantineItem
from tests.mailhelpers import (
    QUOTED_REPLY,
    SIGNED_REPLY,
    add_client,
    live_server,
    open_conversation,
    reply_address,
    reply_message,
    send,
)


@pytest.fixture
def live(seeded: Any) -> Any:
    with live_server(seeded) as server:
        yield server


def wire(reply: replies.SmtpReply) -> tuple[int, bytes]:
    return reply.code, f"{reply.enhanced} {reply.text}".encode()


def messages(services: Any, conversation_id: str) -> list[Message]:
    with services.sessions() as session:
        return list(
            session.scalars(
                select(Message).where(Message.conversation_id == conversation_id).order_by(Message.created_at)
            ).all()
        )


def log_rows(services: Any) -> list[InboundLog]:
    with services.sessions() as session:
        return list(session.scalars(select(InboundLog).order_by(InboundLog.received_at)).all())


def test_relay_attempt_refused(live: Any) -> None:
    with live.client() as client:
        client.ehlo("evil.test")
        client.mail("spam@evil.test")
        assert client.rcpt("victim@gmail.com") == wire(replies.RELAY_DENIED)


def test_bad_tokens_get_one_identical_answer(seeded: Any, live: Any) -> None:
    conv = open_conversation(seeded)
    good = reply_address(seeded, conv, "alice")
    token = good.split("+", 1)[1].split("@", 1)[0]
    off_by_one = token[:-1] + ("b" if token[-1] != "b" else "c")  # never the token itself
    with live.client() as client:
        client.ehlo("client.test")
        client.mail("alice@client.test")
        answers = {
            client.rcpt("reply+garbage@reply.acme.test"),
            client.rcpt(f"reply+{'a' * 32}@reply.acme.test"),  # well-formed, unknown
            client.rcpt(f"reply+{off_by_one}@reply.acme.test"),  # one character off
        }
    assert answers == {wire(replies.UNKNOWN_RECIPIENT)}
    assert [r.reason for r in log_rows(seeded)] == ["token_invalid"] * 3
    assert all(token not in (r.rcpt or "") for r in log_rows(seeded))  # never a full token in the log


def test_reply_posted_trimmed_and_staff_notified(seeded: Any, live: Any) -> None:
    conv = open_conversation(seeded)
    address = reply_address(seeded, conv, "alice")
    code, _ = send(
        live,
        reply_message("Alice Martin <alice@client.test>", address, QUOTED_REPLY),
        "alice@client.test",
        address,
    )
    assert code == 250
    posted = messages(seeded, conv)[-1]
    assert posted.source.value == "email"
    assert posted.body.startswith("Tuesday at 10 works for me")
    assert "wrote:" not in posted.body and "shall we meet" not in posted.body
    assert posted.hidden_text and "shall we meet" in posted.hidden_text  # kept, hidden
    with seeded.sessions() as session:
        notified = session.scalars(select(Outbox.to_address).where(Outbox.message_id == posted.id)).all()
    assert notified == ["dr.smith@acme.test"]
    assert log_rows(seeded)[-1].state == InboundState.posted


def test_signature_and_mobile_footer_trimmed(seeded: Any, live: Any) -> None:
    conv = open_conversation(seeded)
    address = reply_address(seeded, conv, "alice")
    assert (
        send(live, reply_message("alice@client.test", address, SIGNED_REPLY), "alice@client.test", address)[0]
        == 250
    )
    body = messages(seeded, conv)[-1].body
    assert body == "Tuesday at 10 works for me, thank you."
    assert "555" not in body


def test_uppercased_token_and_alternate_address_accepted(seeded: Any, live: Any) -> None:
    conv = open_conversation(seeded)
    address = reply_address(seeded, conv, "alice").upper()
    msg = reply_message("alice.work@client.test", address, "Yes, Tuesday is fine for me.")
    assert send(live, msg, "alice.work@client.test", address)[0] == 250
    assert messages(seeded, conv)[-1].body == "Yes, Tuesday is fine for me."


def test_spoofed_from_with_valid_token_refused(seeded: Any, live: Any) -> None:
    conv = open_conversation(seeded)
    address = reply_address(seeded, conv, "alice")
    msg = reply_message('"alice@client.test" <mallory@client.test>', address, "I am Alice, honestly.")
    assert send(live, msg, "mallory@client.test", address) == wire(replies.SENDER_MISMATCH)
    assert len(messages(seeded, conv)) == 1
    assert log_rows(seeded)[-1].reason == "reply_user_mismatch"


def test_two_from_addresses_refused(seeded: Any, live: Any) -> None:
    conv = open_conversation(seeded)
    address = reply_address(seeded, conv, "alice")
    msg = reply_message("alice@client.test", address, "Two senders at once here.")
    msg.replace_header("From", "alice@client.test, bob@client.test")
    assert send(live, msg, "alice@client.test", address) == wire(replies.AMBIGUOUS_FROM)


def test_dmarc_failure_refused(seeded: Any, live: Any) -> None:
    add_client(seeded, "erin", "erin@strict.test")
    conv = open_conversation(seeded, participants=("erin",))
    address = reply_address(seeded, conv, "erin")
    msg = reply_message("erin@strict.test", address, "Hello from a domain with p=reject.")
    assert send(live, msg, "erin@strict.test", address) == wire(replies.AUTH_FAILED)
    assert log_rows(seeded)[-1].reason == "dmarc_fail"


def test_auto_reply_and_dsn_never_posted(seeded: Any, live: Any) -> None:
    conv = open_conversation(seeded)
    address = reply_address(seeded, conv, "alice")
    ooo = reply_message(
        "alice@client.test",
        address,
        "I am away until Monday.",
        subject="Out of Office: Re: appointment",
        headers={"Auto-Submitted": "auto-replied"},
    )
    assert send(live, ooo, "alice@client.test", address)[0] == 250
    french = reply_message(
        "alice@client.test",
        address,
        "Je suis absente jusqu'à lundi.",
        subject="Réponse automatique : Re: rendez-vous",
    )
    assert send(live, french, "alice@client.test", address)[0] == 250
    dsn = reply_message(
        "MAILER-DAEMON@client.test",
        address,
        "Delivery failed.",
        subject="Undelivered Mail Returned to Sender",
    )
    assert send(live, dsn, "", address)[0] == 250
    assert len(messages(seeded, conv)) == 1
    states = [r.state for r in log_rows(seeded)]
    assert states == [InboundState.dropped_auto_reply, InboundState.dropped_auto_reply, InboundState.bounce]
    with seeded.sessions() as session:
        assert (
            session.scalar(select(Outbox).where(Outbox.kind == OutboxKind.notice)) is None
        )  # nothing sent back


def test_human_with_auto_response_suppress_is_posted(seeded: Any, live: Any) -> None:
    conv = open_conversation(seeded)
    address = reply_address(seeded, conv, "alice")
    msg = reply_message(
        "alice@client.test",
        address,
        "Sent from Outlook, a real human reply.",
        headers={"X-Auto-Response-Suppress": "All"},
    )
    assert send(live, msg, "alice@client.test", address)[0] == 250
    assert len(messages(seeded, conv)) == 2


def test_duplicate_delivery_posted_once(seeded: Any, live: Any) -> None:
    conv = open_conversation(seeded)
    address = reply_address(seeded, conv, "alice")
    msg = reply_message(
        "alice@client.test", address, "Tuesday works, see you then.", msgid="<same@client.test>"
    )
    assert send(live, msg, "alice@client.test", address)[0] == 250
    msg["Received"] = "from relay2.client.test by mx.acme.test"  # an MTA retry via another relay
    assert send(live, msg, "alice@client.test", address)[0] == 250
    assert len(messages(seeded, conv)) == 2
    assert [r.state for r in log_rows(seeded)][-1] == InboundState.duplicate
    # Same Message-ID, different body: a collision, not a duplicate (M10)
    other = reply_message(
        "alice@client.test", address, "Actually, Wednesday is better.", msgid="<same@client.test>"
    )
    assert send(live, other, "alice@client.test", address)[0] == 250
    assert len(messages(seeded, conv)) == 3


def test_group_conversation_refused_with_one_notice_per_day(seeded: Any, live: Any) -> None:
    conv = open_conversation(seeded, participants=("alice", "bob"))
    address = reply_address(seeded, conv, "bob")
    for _ in range(2):
        msg = reply_message("bob@client.test", address, "Merci, mardi me convient très bien.")
        assert send(live, msg, "bob@client.test", address) == wire(replies.POLICY_DENIED)
    with seeded.sessions() as session:
        notices = session.scalars(select(Outbox).where(Outbox.kind == OutboxKind.notice)).all()
    assert len(notices) == 1
    assert notices[0].to_address == "bob@client.test"
    assert notices[0].payload["reason"] == "group_conversation" and notices[0].payload["locale"] == "fr"
    assert log_rows(seeded)[-1].reason == "group_conversation"


def test_inactive_client_refused_to_provider(seeded: Any, live: Any) -> None:
    conv = open_conversation(seeded, participants=("carol",))
    address = reply_address(seeded, conv, "carol")
    msg = reply_message("carol@client.test", address, "Hello doctor, I have a question.")
    assert send(live, msg, "carol@client.test", address) == wire(replies.POLICY_DENIED)
    assert log_rows(seeded)[-1].reason == "inactive_client"


def test_removed_participant_token_revoked(seeded: Any, live: Any) -> None:
    from mailbridge.domain import conversations as convs
    from mailbridge.domain import directory
    from mailbridge.domain.db import transaction

    conv = open_conversation(seeded, participants=("alice", "billing"))
    address = reply_address(seeded, conv, "alice")
    with transaction(seeded.sessions) as session:
        p = directory.get_practice(session, "acme")
        convs.remove_participant(
            session,
            convs.get_conversation(session, p, conv),
            directory.get_user(session, p, "dr-smith"),
            directory.get_user(session, p, "alice"),
        )
    msg = reply_message("alice@client.test", address, "Am I still in this conversation?")
    assert send(live, msg, "alice@client.test", address) == wire(replies.UNKNOWN_RECIPIENT)


def test_staff_reply_and_internal_note(seeded: Any, live: Any) -> None:
    conv = open_conversation(
        seeded, author="alice", participants=("dr-smith",), body="Can we move my appointment?"
    )
    address = reply_address(seeded, conv, "dr-smith")
    assert (
        send(
            live,
            reply_message("dr.smith@acme.test", address, "Of course, Thursday at 3?"),
            "dr.smith@acme.test",
            address,
        )[0]
        == 250
    )
    note = reply_message("dr.smith@acme.test", address, "#note\nShe sounded stressed, follow up.")
    assert send(live, note, "dr.smith@acme.test", address)[0] == 250
    posted = messages(seeded, conv)
    assert [m.internal for m in posted] == [False, False, True]
    assert posted[-1].body == "She sounded stressed, follow up."
    with seeded.sessions() as session:  # the note goes to staff only: the client is not notified
        assert (
            session.scalars(select(Outbox.to_address).where(Outbox.message_id == posted[-1].id)).all() == []
        )


def test_company_reply_without_alignment_quarantined_for_private(seeded: Any, live: Any) -> None:
    """Private conversations need an aligned pass; a client domain with no SPF and no DKIM waits for staff."""
    add_client(seeded, "finn", "finn@nodns.test")
    private = open_conversation(seeded, participants=("finn",))
    address = reply_address(seeded, private, "finn")
    assert (
        send(
            live,
            reply_message("finn@nodns.test", address, "Unauthenticated but from-matching."),
            "finn@nodns.test",
            address,
        )[0]
        == 250
    )
    assert len(messages(seeded, private)) == 1
    with seeded.sessions() as session:
        held = session.scalars(select(QuarantineItem)).all()
    assert [h.reason for h in held] == ["auth_not_aligned"]


def test_bare_lf_smuggling_refused(seeded: Any, live: Any) -> None:
    conv = open_conversation(seeded)
    address = reply_address(seeded, conv, "alice")
    with socket.create_connection(("127.0.0.1", live.port), timeout=10) as sock:
        reader = sock.makefile("rb")
        assert reader.readline().startswith(b"220")
        for line in (
            b"EHLO client.test",
            b"MAIL FROM:<alice@client.test>",
            f"RCPT TO:<{address}>".encode(),
            b"DATA",
        ):
            sock.sendall(line + b"\r\n")
            answer = reader.readline()
            while answer[3:4] == b"-":
                answer = reader.readline()
        assert answer.startswith(b"354")
        sock.sendall(
            b"From: alice@client.test\r\nSubject: hi\r\n\r\nhello\n.\r\nMAIL FROM:<x@evil.test>\r\n"
            b"RCPT TO:<victim@example.org>\r\nDATA\r\nsmuggled\r\n.\r\n"
        )
        assert reader.readline() == b"550 5.6.0 Bare CR or LF not allowed\r\n"
    assert len(messages(seeded, conv)) == 1
    assert log_rows(seeded)[-1].reason == "bare_line_ending"


def test_size_declared_too_big_refused_at_rcpt(seeded: Any, live: Any) -> None:
    conv = open_conversation(seeded)
    address = reply_address(seeded, conv, "alice")
    with live.client() as client:
        client.ehlo("client.test")
        assert b"SIZE" in (client.ehlo_resp or b"")
        client.mail("alice@client.test", ["SIZE=90000000"])
        code, text = client.rcpt(address)
    assert code == 552 and text.startswith(b"5.3.4") and b"MB" in text


def test_second_token_in_transaction_deferred(seeded: Any, live: Any) -> None:
    first = reply_address(seeded, open_conversation(seeded), "alice")
    second = reply_address(seeded, open_conversation(seeded, subject="Invoice"), "alice")
    with live.client() as client:
        client.ehlo("client.test")
        client.mail("alice@client.test")
        assert client.rcpt(first)[0] == 250
        assert client.rcpt(second) == wire(replies.TOO_MANY_TOKENS)


def test_token_bruteforce_cut_off(seeded: Any, live: Any) -> None:
    with live.client() as client:
        client.ehlo("evil.test")
        client.mail("x@evil.test")
        codes = [client.rcpt(f"reply+{i:032d}@reply.acme.test")[0] for i in range(9)]
        assert codes == [550] * 9
        code, text = client.rcpt(f"reply+{'b' * 32}@reply.acme.test")
        assert (code, text) == wire(replies.TOO_MANY_BAD_RECIPIENTS)
        with pytest.raises(smtplib.SMTPServerDisconnected):  # the server closed the connection
            client.noop()
            client.rcpt("reply+c@reply.acme.test")


def test_locked_database_answers_451_then_retry_succeeds(tmp_path: Any) -> None:
    """A database that cannot be written (another process holds the lock): 451 4.3.0, nothing lost on retry."""
    from tests.conftest import make_services, seed

    services = make_services(
        tmp_path, f"sqlite:///{tmp_path / 'db.sqlite'}", database_busy_timeout_seconds=0.3
    )
    seed(services)
    conv = open_conversation(services)
    address = reply_address(services, conv, "alice")
    msg = reply_message("alice@client.test", address, "Tuesday is fine, thanks!", msgid="<retry@client.test>")
    with live_server(services) as server:
        blocker = sqlite3.connect(tmp_path / "db.sqlite", timeout=0)
        blocker.execute("BEGIN EXCLUSIVE")
        try:
            assert send(server, msg, "alice@client.test", address) == wire(replies.TEMPFAIL)
        finally:
            blocker.rollback()
            blocker.close()
        assert send(server, msg, "alice@client.test", address)[0] == 250
        assert send(server, msg, "alice@client.test", address)[0] == 250  # a further retry: still once
    assert [m.body for m in messages(services, conv)][1:] == ["Tuesday is fine, thanks!"]
    services.close()


def test_transcript_of_a_successful_reply(seeded: Any, live: Any) -> None:
    """The exact dialogue of the common path (after the greeting and EHLO lines)."""
    conv = open_conversation(seeded)
    address = reply_address(seeded, conv, "alice")
    body = (
        reply_message("alice@client.test", address, "Thanks, Tuesday works.")
        .as_bytes()
        .replace(b"\n", b"\r\n")
    )
    transcript = []
    with socket.create_connection(("127.0.0.1", live.port), timeout=10) as sock:
        reader = sock.makefile("rb")
        greeting = reader.readline()
        for line in (
            b"HELO client.test",
            b"MAIL FROM:<alice@client.test>",
            f"RCPT TO:<{address}>".encode(),
            b"DATA",
        ):
            sock.sendall(line + b"\r\n")
            transcript.append(reader.readline().decode().strip())
        sock.sendall(body + b"\r\n.\r\n")
        transcript.append(reader.readline().decode().strip())
        sock.sendall(b"QUIT\r\n")
        transcript.append(reader.readline().decode().strip())
    assert greeting.startswith(b"220 mailbridge.localhost")
    assert transcript == [
        "250 mailbridge.localhost",
        "250 OK",
        "250 2.1.5 Recipient OK",
        "354 End data with <CR><LF>.<CR><LF>",
        "250 2.0.0 Message accepted",
        "221 Bye",
    ]


def test_transcript_of_refusals(seeded: Any, live: Any) -> None:
    transcript = []
    with socket.create_connection(("127.0.0.1", live.port), timeout=10) as sock:
        reader = sock.makefile("rb")
        reader.readline()
        for line in (
            b"HELO evil.test",
            b"MAIL FROM:<x@evil.test>",
            b"RCPT TO:<victim@example.org>",
            b"RCPT TO:<reply+nope@reply.acme.test>",
            b"DATA",
            b"QUIT",
        ):
            sock.sendall(line + b"\r\n")
            transcript.append(reader.readline().decode().strip())
    assert transcript == [
        "250 mailbridge.localhost",
        "250 OK",
        "550 5.7.1 Relay access denied",
        "550 5.1.1 No such recipient",
        "503 5.5.1 Error: need RCPT command",
        "221 Bye",
    ]


def test_token_forms_without_plus_accepted(seeded: Any, live: Any) -> None:
    """Providers that drop sub-addresses: reply.TOKEN@ and reply-TOKEN@ reach the same conversation."""
    conv = open_conversation(seeded, kind="company", company="bakery")
    plus = reply_address(seeded, conv, "alice")
    for separator in (".", "-"):
        address = plus.replace("reply+", f"reply{separator}")
        msg = reply_message("alice@client.test", address, f"Sent to the {separator} form of the address.")
        assert send(live, msg, "alice@client.test", address)[0] == 250
    assert len(messages(seeded, conv)) == 3


def test_aiosmtpd_has_the_smuggling_and_starttls_fixes() -> None:
    """HOSTILE P3: 1.4.5 fixed SMTP smuggling, 1.4.6 STARTTLS command injection."""
    from importlib.metadata import version

    assert tuple(int(p) for p in version("aiosmtpd").split(".")[:3]) >= (1, 4, 6)


def test_mail_loop_refused(seeded: Any, live: Any) -> None:
    """More than 30 Received headers (HOSTILE A12, qmail uses 100): a loop, answered 554 5.4.6."""
    conv = open_conversation(seeded, kind="company", company="bakery")
    address = reply_address(seeded, conv, "alice")
    msg = reply_message("alice@client.test", address, "Round and round we go.")
    for hop in range(31):
        msg["Received"] = f"from relay{hop}.client.test by relay{hop + 1}.client.test"
    assert send(live, msg, "alice@client.test", address) == wire(replies.LOOP_DETECTED)
    assert len(messages(seeded, conv)) == 1
    assert log_rows(seeded)[-1].reason == "loop_detected"


def test_dns_timeout_during_authentication_defers(seeded: Any) -> None:
    """HOSTILE A7: a DNS temperror is neither an accept nor a refusal; the sender retries later."""
    from mailbridge.inbound.dns import StaticResolver
    from tests.conftest import DNS_TABLE

    seeded.resolver = StaticResolver(DNS_TABLE, timeouts={"client.test", "_dmarc.client.test"})
    conv = open_conversation(seeded, kind="company", company="bakery")
    address = reply_address(seeded, conv, "alice")
    with live_server(seeded) as server:
        msg = reply_message("alice@client.test", address, "Sent while DNS was down.")
        assert send(server, msg, "alice@client.test", address) == wire(replies.AUTH_TEMPERROR)
    assert len(messages(seeded, conv)) == 1
    assert log_rows(seeded)[-1].reason == "auth_temperror"


def test_reply_by_email_switched_off_refused_at_rcpt(seeded: Any, live: Any) -> None:
    from mailbridge.domain import directory
    from mailbridge.domain.db import transaction

    conv = open_conversation(seeded)
    address = reply_address(seeded, conv, "alice")
    with transaction(seeded.sessions) as session:
        practice = directory.get_practice(session, "acme")
        practice.settings = {**(practice.settings or {}), "reply_by_email": False}
    with live.client() as client:
        client.ehlo("client.test")
        client.mail("alice@client.test")
        assert client.rcpt(address) == wire(replies.POLICY_DENIED)
    assert log_rows(seeded)[-1].reason == "reply_by_email_disabled"


def test_reply_without_from_refused(seeded: Any, live: Any) -> None:
    conv = open_conversation(seeded)
    address = reply_address(seeded, conv, "alice")
    msg = reply_message("alice@client.test", address, "Tuesday at 10 works for me.")
    del msg["From"]
    assert send(live, msg, "alice@client.test", address) == wire(replies.AMBIGUOUS_FROM)
    assert log_rows(seeded)[-1].reason == "from_ambiguous"
    assert messages(seeded, conv)[1:] == []


def test_bare_cr_refused(seeded: Any, live: Any) -> None:
    conv = open_conversation(seeded)
    address = reply_address(seeded, conv, "alice")
    with live.client() as client:
        client.ehlo("client.test")
        client.mail("alice@client.test")
        client.rcpt(address)
        raw = b"From: alice@client.test\r\nSubject: hi\r\n\r\nhello\rworld, smuggled\r\n"
        assert client.data(raw) == wire(replies.BARE_LINE_ENDING)
    assert log_rows(seeded)[-1].reason == "bare_line_ending"


def test_too_short_reply_refused_with_a_notice(seeded: Any, live: Any) -> None:
    """The seeded practice wants 10 characters at least (min_body_chars)."""
    conv = open_conversation(seeded)
    address = reply_address(seeded, conv, "alice")
    msg = reply_message("alice@client.test", address, "ok")
    assert send(live, msg, "alice@client.test", address) == wire(replies.POLICY_DENIED)
    assert log_rows(seeded)[-1].reason == "body_too_short"
    with seeded.sessions() as session:
        notices = session.scalars(select(Outbox.to_address).where(Outbox.kind == OutboxKind.notice)).all()
    assert notices == ["alice@client.test"]
