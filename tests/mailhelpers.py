"""Helpers for mail tests: a live ingress on a loopback port, conversations with reply tokens, messages."""

from __future__ import annotations

import asyncio
import smtplib
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from email.message import EmailMessage
from email.policy import SMTP as SMTP_POLICY
from email.utils import make_msgid
from typing import Any

from mailbridge.domain import conversations as convs
from mailbridge.domain import directory
from mailbridge.domain.db import transaction
from mailbridge.domain.models import Company, ConversationKind
from mailbridge.wiring import Services


class LiveServer:
    """The real ingress (aiosmtpd subclass + pipeline) on 127.0.0.1:<free port>, in its own event loop thread."""

    def __init__(self, services: Services) -> None:
        self.services = services
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.server: Any = None
        self.port = 0

    def start(self) -> None:
        from mailbridge.runtime import start_ingress

        self.thread.start()
        self.server = asyncio.run_coroutine_threadsafe(start_ingress(self.services), self.loop).result(10)
        self.port = self.server.sockets[0].getsockname()[1]

    def stop(self) -> None:
        async def _close() -> None:
            self.server.close()
            await self.server.wait_closed()

        asyncio.run_coroutine_threadsafe(_close(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)

    def client(self) -> smtplib.SMTP:
        return smtplib.SMTP("127.0.0.1", self.port, timeout=30)


@contextmanager
def live_server(services: Services) -> Iterator[LiveServer]:
    server = LiveServer(services)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def open_conversation(
    services: Services,
    *,
    kind: str = "private",
    author: str = "dr-smith",
    participants: tuple[str, ...] = ("alice",),
    company: str | None = None,
    subject: str = "Your next appointment",
    body: str = "Hello, shall we meet on Tuesday at 10?",
    practice: str = "acme",
) -> str:
    with transaction(services.sessions) as session:
        p = directory.get_practice(session, practice)
        company_row: Company | None = directory.get_company(session, p, company) if company else None
        conversation, _ = convs.create_conversation(
            session,
            p,
            kind=ConversationKind(kind),
            company=company_row,
            subject=subject,
            author=directory.get_user(session, p, author),
            participants=[directory.get_user(session, p, u) for u in participants],
            body=body,
        )
        return conversation.id


def add_client(
    services: Services, external_id: str, email: str, practice: str = "acme", name: str | None = None
) -> None:
    """A client whose address is on a domain the test's DNS table treats specially."""
    from mailbridge.domain.models import UserKind

    with transaction(services.sessions) as session:
        p = directory.get_practice(session, practice)
        directory.upsert_user(
            session,
            p,
            external_id,
            email=email,
            alt_emails=[],
            name=name or external_id.title(),
            kind=UserKind.client,
            role=None,
            active=True,
            locale="en",
        )


def reply_address(services: Services, conversation_id: str, user: str, practice: str = "acme") -> str:
    """The Reply-To a notification to this participant carries."""
    with transaction(services.sessions) as session:
        p = directory.get_practice(session, practice)
        u = directory.get_user(session, p, user)
        token = services.tokens.issue(session, p.id, u.id, conversation_id)
        return f"reply+{token}@{p.reply_domain}"


def reply_message(
    sender: str,
    to: str,
    body: str,
    *,
    subject: str = "Re: Your next appointment",
    headers: dict[str, str] | None = None,
    msgid: str | None = None,
) -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = sender
    msg["To"] = to
    msg["Subject"] = subject
    msg["Message-ID"] = msgid or make_msgid(domain="client.test")
    msg["Date"] = "Sat, 21 Nov 2026 10:00:00 +0000"
    for name, value in (headers or {}).items():
        msg[name] = value
    msg.set_content(body)
    return msg


QUOTED_REPLY = """Tuesday at 10 works for me, thank you.

See you then,
Alice

On Sat, Nov 21, 2026 at 9:00 AM Dr Alex Smith via Acme <notify@acme.test> wrote:
> Hello, shall we meet on Tuesday at 10?
>
> Reply to this email to answer.
"""

SIGNED_REPLY = """Tuesday at 10 works for me, thank you.

--
Alice Martin
Phone: +1 555 0100 1234
Sent from my iPhone
"""


def send(server: LiveServer, msg: EmailMessage, mail_from: str, rcpt: str) -> tuple[int, bytes]:
    """Send one message; return the final DATA answer (or the RCPT refusal)."""
    return send_raw(server, msg.as_bytes(policy=SMTP_POLICY), mail_from, rcpt)


def send_raw(server: Any, raw: bytes, mail_from: str, rcpt: str) -> tuple[int, bytes]:
    """Send bytes as they are (hostile input included); the final DATA answer or the RCPT refusal."""
    with server.client() as client:
        client.ehlo("client.test")
        client.mail(mail_from)
        code, text = client.rcpt(rcpt)
        if code >= 400:
            return code, text
        code, text = client.data(raw)
        return code, text
