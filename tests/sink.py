"""A real SMTP server on loopback that records what it receives and can be told to refuse (451, 550)."""

from __future__ import annotations

import asyncio
import ssl
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiosmtpd.smtp import SMTP, Envelope, Session


@dataclass
class Received:
    mail_from: str
    rcpts: list[str]
    data: bytes


@dataclass
class SinkHandler:
    received: list[Received] = field(default_factory=list)
    answers: list[str] = field(default_factory=list)  # queued answers for DATA, then 250
    rcpt_answer: str | None = None
    mail_answer: str | None = None  # e.g. "553 5.7.1 Sender address rejected": refuse our MAIL FROM
    event: threading.Event = field(default_factory=threading.Event)
    delay: float = 0.0  # seconds before each DATA answer: a slow smarthost
    before_answer: Callable[[bytes], None] | None = None  # runs on each message, before the answer

    async def handle_MAIL(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        if self.mail_answer:
            return self.mail_answer
        envelope.mail_from = address
        envelope.mail_options.extend(options)
        return "250 OK"

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        if self.rcpt_answer:
            return self.rcpt_answer
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.before_answer is not None:
            self.before_answer(bytes(envelope.original_content or b""))
        if self.answers:
            return self.answers.pop(0)
        self.received.append(
            Received(
                str(envelope.mail_from), list(envelope.rcpt_tos), bytes(envelope.original_content or b"")
            )
        )
        self.event.set()
        return "250 2.0.0 queued"


class Sink:
    def __init__(self, tls: ssl.SSLContext | None = None, auth: Any = None) -> None:
        self.handler = SinkHandler()
        self.tls = tls
        self.auth = auth
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.server: Any = None
        self.port = 0

    def __enter__(self) -> Sink:
        self.thread.start()

        async def start() -> Any:
            return await self.loop.create_server(
                lambda: SMTP(
                    self.handler,
                    hostname="sink.test",
                    tls_context=self.tls,
                    require_starttls=False,
                    authenticator=self.auth,
                    auth_require_tls=False,
                ),
                host="127.0.0.1",
                port=0,
            )

        self.server = asyncio.run_coroutine_threadsafe(start(), self.loop).result(10)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    def __exit__(self, *exc: object) -> None:
        async def stop() -> None:
            self.server.close()
            await self.server.wait_closed()

        asyncio.run_coroutine_threadsafe(stop(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)

    @property
    def received(self) -> list[Received]:
        return self.handler.received
