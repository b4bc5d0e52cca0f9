"""The delivery worker: claims due outbox rows, builds, sends, and records; at-least-once across restarts.

Claiming takes a lease: ``FOR UPDATE SKIP LOCKED`` on PostgreSQL so several nodes share the work,
a conditional UPDATE on SQLite (its single writer serialises claims). A row whose worker died is
claimed again once the lease expires, so a message may be sent twice (same Message-ID), never zero.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import or_, select, update
from sqlalchemy.orm import Session, sessionmaker

from mailbridge.domain.db import transaction
from mailbridge.domain.models import Outbox, OutboxState, utcnow
from mailbridge.observability import DELIVERIES
from mailbridge.outbound.build import Builder, Built, NothingToSend
from mailbridge.outbound.deliver import Delivery, FileTransport, SmtpTransport, Transport
from mailbridge.outbound.keys import KeyStore
from mailbridge.outbound.render import Renderer
from mailbridge.settings import split_listen

log = logging.getLogger(__name__)


def _aware(value: datetime) -> datetime:
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def backoff(schedule: list[int], attempts: int) -> timedelta:
    """1 min, 5 min, 30 min, 2 h … then the last step repeats until the row's lifetime ends."""
    return timedelta(seconds=schedule[min(max(attempts - 1, 0), len(schedule) - 1)])


@dataclass
class Worker:
    sessions: sessionmaker[Session]
    builder: Builder
    transport: Transport
    schedule: list[int]
    lifetime: timedelta
    lease: timedelta
    batch: int = 50
    poll: float = 1.0

    @classmethod
    def from_services(cls, services: Any) -> Worker:
        settings = services.settings
        transport: Transport
        if settings.smarthost:
            host, port = split_listen(settings.smarthost)
            transport = SmtpTransport(
                host,
                port,
                starttls=settings.smarthost_starttls,
                username=settings.smarthost_username,
                password=settings.smarthost_password,
                ca_file=settings.smarthost_ca_file,
                local_hostname=settings.smtp_hostname,
            )
        else:
            transport = FileTransport(settings.data_dir / "outbox")
        builder = Builder(
            renderer=Renderer(settings.templates_dir) if settings.templates_dir else Renderer(),
            tokens=services.tokens,
            keys=KeyStore(settings.data_dir / "dkim"),
            verp_secret=services.verp_secret,
            app_url=settings.app_url,
            loop_value=settings.smtp_hostname,
        )
        return cls(
            sessions=services.sessions,
            builder=builder,
            transport=transport,
            schedule=settings.outbox_retry_schedule,
            lifetime=timedelta(seconds=settings.outbox_lifetime_seconds),
            lease=timedelta(seconds=settings.outbox_lease_seconds),
            batch=settings.outbox_batch,
            poll=settings.outbox_poll_seconds,
        )

    # ---- claiming -----------------------------------------------------------------------------------

    def claim(self) -> list[str]:
        now = utcnow()
        with transaction(self.sessions) as session:
            due = (
                select(Outbox.id)
                .where(
                    Outbox.state == OutboxState.pending,
                    Outbox.next_attempt_at <= now,
                    or_(Outbox.lease_until.is_(None), Outbox.lease_until < now),
                )
                .order_by(Outbox.next_attempt_at)
                .limit(self.batch)
            )
            if session.get_bind().dialect.name == "postgresql":
                due = due.with_for_update(skip_locked=True)
            ids = list(session.scalars(due).all())
            claimed = []
            for row_id in ids:
                result = session.execute(
                    update(Outbox)
                    .where(
                        Outbox.id == row_id,
                        Outbox.state == OutboxState.pending,
                        or_(Outbox.lease_until.is_(None), Outbox.lease_until < now),
                    )
                    .values(lease_until=now + self.lease)
                )
                if getattr(result, "rowcount", 0) == 1:
                    claimed.append(row_id)
            return claimed

    # ---- one row ------------------------------------------------------------------------------------

    def build(self, row_id: str) -> Built | None:
        with transaction(self.sessions) as session:
            row = session.get_one(Outbox, row_id)
            try:
                built = self.builder.build(session, row)
            except NothingToSend as why:
                row.state = OutboxState.failed
                row.last_answer = f"cancelled: {why}"
                row.lease_until = None
                return None
            row.message_id_header = built.message_id
            return built

    def record(self, row_id: str, delivery: Delivery) -> None:
        with transaction(self.sessions) as session:
            row = session.get_one(Outbox, row_id)
            row.attempts += 1
            row.last_answer = delivery.answer[:512]
            row.lease_until = None
            now = utcnow()
            if delivery.result == "sent":
                row.state = OutboxState.sent
                row.sent_at = now
            elif delivery.result == "permanent":
                row.state = OutboxState.failed
                from mailbridge.outbound.bounces import hard_failure

                hard_failure(session, row, delivery.answer)
            elif now - _aware(row.created_at) > self.lifetime:
                row.state = OutboxState.expired
                log.error("outbox_expired", extra={"outbox": row.id, "attempts": row.attempts})
            else:
                row.next_attempt_at = now + backoff(self.schedule, row.attempts)
        DELIVERIES.labels(delivery.result).inc()

    async def run_once(self) -> int:
        ids = await asyncio.to_thread(self.claim)
        for row_id in ids:
            try:
                built = await asyncio.to_thread(self.build, row_id)
                if built is None:
                    continue
                delivery = await self.transport.send(built.mail_from, built.rcpt, built.data)
                await asyncio.to_thread(self.record, row_id, delivery)
            except Exception:
                log.exception("outbox_row_error", extra={"outbox": row_id})
                await asyncio.to_thread(self._release_after_error, row_id)
        return len(ids)

    def _release_after_error(self, row_id: str) -> None:
        try:
            self.record(row_id, Delivery("temporary", "internal error while building or sending"))
        except Exception:
            log.warning("outbox_release_failed", extra={"outbox": row_id})

    async def run_forever(self, stop: asyncio.Event) -> None:
        try:
            while not stop.is_set():
                try:
                    worked = await self.run_once()
                except Exception:
                    log.warning("worker_cycle_failed", exc_info=True)
                    worked = 0
                if worked == 0:
                    await self.transport.close()  # do not hold an idle smarthost connection
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stop.wait(), timeout=self.poll)
        finally:
            await self.transport.close()
