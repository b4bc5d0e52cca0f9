"""Sender authentication at the doors (finding 15): an explicit SPF fail is refused without DMARC, and our
MTA's DMARC verdict counts only for the From we read. Each attack is sent through SMTP or LMTP."""

from __future__ import annotations

import smtplib
from email.policy import SMTP
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from mailbridge import replies
from mailbridge.domain.models import InboundLog, Message
from tests.conftest import make_services, seed
from tests.mailhelpers import add_client, live_server, open_conversation, reply_address, reply_message, send


def posted(services: Any, conversation_id: str) -> list[str]:
    with services.sessions() as session:
        return list(
            session.scalars(
                select(Message.body)
                .where(Message.conversation_id == conversation_id)
                .order_by(Message.created_at)
            ).all()
        )


def last_row(services: Any) -> InboundLog:
    with services.sessions() as session:
        row = session.scalars(select(InboundLog).order_by(InboundLog.received_at.desc())).first()
        assert row is not None
        return row


@pytest.fixture
def live(seeded: Any) -> Any:
    with live_server(seeded) as server:
        yield server


def test_explicit_spf_fail_without_dmarc_is_refused(seeded: Any, live: Any) -> None:
    """RFC 7208 §8.4: "fail" says this host may not send for the domain; with no DMARC record and no
    aligned DKIM nothing else vouches for the sender. A company conversation (no alignment required)
    used to take the forged reply; now the session answers 550 5.7.1 and nothing is posted."""
    add_client(seeded, "gina", "gina@nodmarc.test")
    conv = open_conversation(seeded, kind="company", company="bakery", participants=("gina",))
    address = reply_address(seeded, conv, "gina")
    forged = reply_message("gina@nodmarc.test", address, "Please send my file to this new address.")
    code, text = send(live, forged, "gina@nodmarc.test", address)
    assert (code, text) == (
        replies.SPF_FAILED.code,
        f"{replies.SPF_FAILED.enhanced} {replies.SPF_FAILED.text}".encode(),
    )
    row = last_row(seeded)
    assert (row.reason, row.smtp_reply) == ("spf_fail", replies.SPF_FAILED.wire())
    assert "spf=fail" in (row.auth_results or "")
    assert posted(seeded, conv) == ["Hello, shall we meet on Tuesday at 10?"]


def test_spf_none_without_dmarc_still_follows_the_conversation_rules(seeded: Any, live: Any) -> None:
    """Only an explicit fail is refused: a domain with no SPF at all is unauthenticated, not forged
    (a company conversation takes it, as before)."""
    add_client(seeded, "finn", "finn@nodns.test")
    conv = open_conversation(seeded, kind="company", company="bakery", participants=("finn",))
    address = reply_address(seeded, conv, "finn")
    msg = reply_message("finn@nodns.test", address, "Thursday works for me as well.")
    assert send(live, msg, "finn@nodns.test", address)[0] == 250
    assert posted(seeded, conv)[-1] == "Thursday works for me as well."


@pytest.fixture
def lmtp(tmp_path: Path) -> Any:
    services = make_services(
        tmp_path, f"sqlite:///{tmp_path / 'db.sqlite'}", lmtp=True, trusted_authserv_ids=["mx.acme.test"]
    )
    seed(services)
    with live_server(services) as server:
        yield services, server
    services.close()


def deliver_lmtp(server: Any, raw: bytes, mail_from: str, rcpt: str) -> dict[str, tuple[int, bytes]]:
    client = smtplib.LMTP("127.0.0.1", server.port, timeout=10)
    try:
        assert client.ehlo("mx.acme.test")[0] == 250
        try:
            return client.sendmail(mail_from, [rcpt], raw)
        except smtplib.SMTPRecipientsRefused as exc:
            return {k: (v[0], v[1]) for k, v in exc.recipients.items()}
        except smtplib.SMTPDataError as exc:
            return {rcpt: (exc.smtp_code, exc.smtp_error)}
    finally:
        client.quit()


@pytest.mark.parametrize(
    "claim",
    [
        "dmarc=pass (p=REJECT) header.from=evil.test",  # a verdict about another From
        "dmarc=pass (p=REJECT)",  # a verdict about no From at all
    ],
)
def test_trusted_dmarc_pass_for_another_from_is_not_believed(lmtp: Any, claim: str) -> None:
    """Our MTA's Authentication-Results (trusted authserv-id, top of the header) says dmarc=pass, but
    for evil.test (or names no From): it says nothing about alice@client.test, whose domain publishes
    p=reject. DMARC is evaluated here on the MTA's DKIM and SPF results (both for evil.test) and fails,
    so the forged reply to a private conversation is refused instead of posted as aligned."""
    services, server = lmtp
    conv = open_conversation(services)  # private: dr-smith and alice
    address = reply_address(services, conv, "alice")
    forged = reply_message("alice@client.test", address, "Please send my records to evil.test.")
    forged["Authentication-Results"] = (
        f"mx.acme.test; dkim=pass header.d=evil.test; spf=pass smtp.mailfrom=evil.test; {claim}"
    )
    refused = deliver_lmtp(server, forged.as_bytes(policy=SMTP), "attacker@evil.test", address)
    assert refused == {
        address: (
            replies.AUTH_FAILED.code,
            f"{replies.AUTH_FAILED.enhanced} {replies.AUTH_FAILED.text}".encode(),
        )
    }
    assert last_row(services).reason == "dmarc_fail"
    assert posted(services, conv) == ["Hello, shall we meet on Tuesday at 10?"]


def test_trusted_dmarc_pass_for_the_same_from_is_believed(lmtp: Any) -> None:
    """The control: the same header naming the From we read is our MTA's word and is taken (no DNS)."""
    services, server = lmtp
    conv = open_conversation(services)
    address = reply_address(services, conv, "alice")
    msg = reply_message("alice@client.test", address, "Tuesday at 10 works for me.")
    msg["Authentication-Results"] = (
        "mx.acme.test; dkim=pass header.d=client.test; spf=pass smtp.mailfrom=client.test;"
        " dmarc=pass (p=REJECT) header.from=client.test"
    )
    assert deliver_lmtp(server, msg.as_bytes(policy=SMTP), "alice@client.test", address) == {}
    assert posted(services, conv)[-1] == "Tuesday at 10 works for me."
