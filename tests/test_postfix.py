"""Postfix in front, exactly as docs/deploy.md says: refusals reach the sender in its own session, no bounce.

A real Postfix instance is built from the document's blocks (tests/postfix.py) and proxies to a real
mailbridge started with the document's environment. The sender is an smtplib client bound to
127.0.0.2 while Postfix and mailbridge talk over 127.0.0.1, and the test DNS lets client.test send
only from 127.0.0.2 (DMARC p=reject): a good reply is posted only if mailbridge judged SPF on the
address Postfix forwarded with XFORWARD, not on Postfix's own.
"""

from __future__ import annotations

import smtplib
import socket
import ssl
import subprocess
from collections.abc import Iterator
from email.policy import SMTP as SMTP_POLICY
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select, update

from mailbridge import replies
from mailbridge.domain.db import transaction, upgrade
from mailbridge.domain.models import InboundLog, Message, Practice
from mailbridge.inbound.dns import StaticResolver
from mailbridge.settings import load_settings
from mailbridge.wiring import Services, build_services
from tests import postfix
from tests.conftest import API_KEY, DNS_TABLE, seed
from tests.mailhelpers import LiveServer, add_client, open_conversation, reply_address, reply_message

SENDER_IP = "127.0.0.2"  # the "Internet" client; Postfix reaches mailbridge from 127.0.0.1
REPLY_DOMAIN = "reply.acme.example"  # the document's own domain, used as it is
DNS = DNS_TABLE | {
    "client.test": ["v=spf1 ip4:127.0.0.2 -all"],  # only the real client's address passes SPF
    "_dmarc.client.test": ["v=DMARC1; p=reject"],
}


def doc_environment() -> dict[str, str]:
    """The `mailbridge serve` block's variables; it must name the address smtpd_proxy_filter names."""
    text = postfix.section()
    env, command = postfix.env_assignments(postfix.block_containing(text, "mailbridge serve"))
    assert command == ["mailbridge", "serve"], (
        "deploy.md: mailbridge must speak SMTP (no --lmtp) behind the proxy"
    )
    main = postfix.block_after(text, "`/etc/postfix/main.cf`").body
    assert f"smtpd_proxy_filter = {env['MAILBRIDGE_SMTP_LISTEN']}\n" in main
    assert env["MAILBRIDGE_SMTP_LISTEN"] == "127.0.0.1:2525"
    return env


class Stack:
    def __init__(self, services: Services, mailbridge: LiveServer, mta: postfix.PostfixInstance) -> None:
        self.services = services
        self.mailbridge = mailbridge
        self.mta = mta

    def client(self, *, tls: bool = False) -> smtplib.SMTP:
        client = smtplib.SMTP("127.0.0.1", self.mta.port, timeout=30, source_address=(SENDER_IP, 0))
        client.ehlo("client.test")
        if tls:
            context = ssl.create_default_context()
            self.mta.ca.configure_trust(context)
            context.check_hostname = False  # the certificate names mx.acme.example; we dial 127.0.0.1
            assert client.starttls(context=context)[0] == 220
            client.ehlo("client.test")
        return client

    def send(self, msg: Any, mail_from: str, rcpt: str, *, tls: bool = False) -> tuple[str, int, bytes]:
        """(stage, code, text): the first refusal (MAIL, RCPT) or the answer to the final dot."""
        with self.client(tls=tls) as client:
            code, text = client.mail(mail_from)
            if code >= 400:
                return "MAIL", code, text
            code, text = client.rcpt(rcpt)
            if code >= 400:
                return "RCPT", code, text
            code, text = client.data(msg.as_bytes(policy=SMTP_POLICY))
            return "DATA", code, text


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    postfix.skip_without_postfix()
    tmp: Path = tmp_path_factory.mktemp("postfix-stack")
    env = doc_environment()
    with pytest.MonkeyPatch.context() as mp:  # the document's environment, its port made free
        for key, value in env.items():
            mp.setenv(key, "127.0.0.1:0" if key == "MAILBRIDGE_SMTP_LISTEN" else value)
        settings = load_settings(
            data_dir=tmp / "var",
            database_url=f"sqlite:///{tmp / 'mailbridge.db'}",
            api_key=API_KEY,
            app_url="https://app.example.test",
            http_listen="127.0.0.1:0",
        )
    assert settings.smtp_xforward_hosts == ["127.0.0.1"]
    services = build_services(settings, resolver=StaticResolver(DNS))
    upgrade(services.engine)
    seed(services)
    with transaction(services.sessions) as session:
        session.execute(update(Practice).values(reply_domain=REPLY_DOMAIN))
    mailbridge = LiveServer(services)
    mailbridge.start()
    try:
        with postfix.running_postfix(mailbridge.port) as mta:
            yield Stack(services, mailbridge, mta)
    finally:
        if mailbridge.server is not None and mailbridge.thread.is_alive():
            mailbridge.stop()
        services.close()


def wire(reply: replies.SmtpReply) -> tuple[int, bytes]:
    return reply.code, f"{reply.enhanced} {reply.text}".encode()


def posted(services: Services, conversation_id: str) -> list[str]:
    with services.sessions() as session:
        return [
            m.body for m in session.scalars(select(Message).where(Message.conversation_id == conversation_id))
        ]


def last_log(services: Services) -> InboundLog:
    with services.sessions() as session:
        row = session.scalars(select(InboundLog).order_by(InboundLog.received_at.desc()).limit(1)).one()
        session.expunge(row)
        return row


def test_the_documents_configuration_is_clean(stack: Stack) -> None:
    """main.cf takes comments only on lines of their own (a trailing one becomes part of the value)."""
    main = postfix.block_after(postfix.section(), "`/etc/postfix/main.cf`").body
    for line in main.splitlines():
        assert line.startswith("#") or "#" not in line, f"trailing comment in main.cf: {line!r}"
    assert stack.mta.check_output == ""  # `postfix check` had nothing to say
    done = subprocess.run(
        [postfix.tool("postconf"), "-c", str(stack.mta.conf), "-n"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 0 and done.stderr == "", done.stderr  # no unknown or misspelt parameter
    assert "smtpd_proxy_filter = 127.0.0.1:" in done.stdout


def test_good_reply_through_postfix_is_posted_with_the_senders_address(stack: Stack) -> None:
    conv = open_conversation(stack.services)
    address = reply_address(stack.services, conv, "alice")
    assert address.endswith("@" + REPLY_DOMAIN)
    msg = reply_message("alice@client.test", address, "Tuesday works for me, see you then.")
    assert stack.send(msg, "alice@client.test", address, tls=True) == ("DATA", *wire(replies.OK))
    assert any("Tuesday works for me" in body for body in posted(stack.services, conv))
    row = last_log(stack.services)
    assert (row.state.value, row.peer, row.helo) == ("posted", SENDER_IP, "client.test")  # from XFORWARD
    assert "proxy-accept: END-OF-MESSAGE: 250 2.0.0" in stack.mta.log_text()


def test_chunking_and_esmtp_parameters_reach_mailbridge(stack: Stack) -> None:
    """What big senders use (BDAT, SIZE, BODY=8BITMIME, SMTPUTF8) passes; DSN is refused by Postfix."""
    conv = open_conversation(stack.services)
    address = reply_address(stack.services, conv, "alice")
    raw = reply_message("alice@client.test", address, "Chunked, and Tuesday works.").as_bytes(
        policy=SMTP_POLICY
    )
    half = len(raw) // 2
    with (
        socket.create_connection(
            ("127.0.0.1", stack.mta.port), timeout=30, source_address=(SENDER_IP, 0)
        ) as sock,
        sock.makefile("rb") as replies_in,
    ):

        def command(data: bytes) -> bytes:
            sock.sendall(data)
            lines = [replies_in.readline()]
            while lines[-1][3:4] == b"-":
                lines.append(replies_in.readline())
            return lines[-1]

        assert replies_in.readline().startswith(b"220 ")
        assert b"CHUNKING" in command(b"EHLO client.test\r\n")
        assert (
            command(b"MAIL FROM:<alice@client.test> BODY=8BITMIME SIZE=%d SMTPUTF8\r\n" % len(raw))[:3]
            == b"250"
        )
        assert command(b"RCPT TO:<%s> NOTIFY=NEVER\r\n" % address.encode()).startswith(b"501 5.7.1")
        assert command(b"RCPT TO:<%s>\r\n" % address.encode())[:3] == b"250"
        assert command(b"BDAT %d\r\n" % half + raw[:half])[:3] == b"250"
        assert (
            command(b"BDAT %d LAST\r\n" % (len(raw) - half) + raw[half:]) == b"250 2.0.0 Message accepted\r\n"
        )
    assert any("Chunked, and Tuesday works." in body for body in posted(stack.services, conv))


def test_unknown_token_refused_at_rcpt_by_postfix(stack: Stack) -> None:
    msg = reply_message("alice@client.test", f"reply+{'a' * 26}@{REPLY_DOMAIN}", "Hello there, anyone?")
    stage = stack.send(msg, "alice@client.test", f"reply+{'a' * 26}@{REPLY_DOMAIN}")
    assert stage == ("RCPT", *wire(replies.UNKNOWN_RECIPIENT))
    assert last_log(stack.services).reason == "token_invalid"


def test_forged_sender_refused_at_end_of_data_by_postfix(stack: Stack) -> None:
    add_client(stack.services, "erin", "erin@strict.test")
    conv = open_conversation(stack.services, participants=("erin",))
    address = reply_address(stack.services, conv, "erin")
    msg = reply_message("erin@strict.test", address, "Hello from a domain with p=reject.")
    assert stack.send(msg, "erin@strict.test", address) == ("DATA", *wire(replies.AUTH_FAILED))
    row = last_log(stack.services)
    assert (row.reason, row.peer) == ("dmarc_fail", SENDER_IP)
    assert len(posted(stack.services, conv)) == 1  # only the opening message


def test_relay_attempt_refused_by_postfix_itself(stack: Stack) -> None:
    before = last_log(stack.services).id
    msg = reply_message("spam@evil.test", "victim@elsewhere.test", "Buy now, limited offer.")
    stage, code, text = stack.send(msg, "spam@evil.test", "victim@elsewhere.test")
    assert (stage, code) == ("RCPT", 454) and b"Relay access denied" in text
    assert last_log(stack.services).id == before  # never reached mailbridge


def test_the_documents_own_check_gives_what_it_says(stack: Stack) -> None:
    """The swaks line of deploy.md, against this instance: 550 5.1.1 at RCPT and an empty queue."""
    block = postfix.block_containing(postfix.section(), "swaks --server")
    (swaks, mailq) = postfix.shell_lines(block)
    assert mailq == "mailq"
    argv = swaks.replace("--server mx.acme.example", f"--server 127.0.0.1:{stack.mta.port}").split()
    done = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
    assert "<** 550 5.1.1 No such recipient" in done.stdout, done.stdout[-1500:]
    assert "Mail queue is empty" in stack.mta.mailq()


def test_no_bounce_and_nothing_queued(stack: Stack) -> None:
    """After every refusal above: Postfix made no non-delivery report and holds no message."""
    log = stack.mta.log_text()
    assert "proxy-reject: END-OF-MESSAGE: 550 5.7.1" in log  # the forged sender, refused in session
    for sign in ("status=bounced", "status=deferred", "sender non-delivery notification", "queued as"):
        assert sign not in log
    assert stack.mta.queued_files() == []


def test_mailbridge_down_gives_a_temporary_failure_and_queues_nothing(stack: Stack) -> None:
    """Runs last: with mailbridge stopped the sender gets 451 (and retries); Postfix keeps nothing."""
    stack.mailbridge.stop()
    msg = reply_message("alice@client.test", f"reply+{'b' * 26}@{REPLY_DOMAIN}", "Anyone home today?")
    stage, code, text = stack.send(msg, "alice@client.test", f"reply+{'b' * 26}@{REPLY_DOMAIN}")
    assert (stage, code, text) == ("RCPT", 451, b"4.3.0 Error: queue file write error")
    assert "warning: connect to proxy filter 127.0.0.1:" in stack.mta.log_text()
    assert stack.mta.queued_files() == []
