"""The webhook worker: fans events out to endpoints, then delivers them, at least once, across nodes.

A sibling of the outbox worker (``outbound/worker.py``) with the same lease pattern, not a passenger
in it: a receiver that takes its full 5 s timeout must not hold back a reply's notification email,
and the two do different work (one SMTP connection per batch there, up to ``webhook_concurrency``
HTTP requests in flight here). Like it, it is woken by this process's commits (``wake_on_commit``)
and polls for what other nodes wrote.

Each cycle:

1. **Fan-out.** Events not yet dispatched (``events.dispatched_at`` null), oldest first, become one
   delivery row per subscribed endpoint: the practice's own endpoints and the platform's. An endpoint
   that is inactive or disabled gets a ``skipped`` row (shown in its log, redeliverable), never a
   request.
2. **Claim.** Due ``pending`` deliveries of working endpoints are leased (``FOR UPDATE SKIP LOCKED``
   on PostgreSQL, a conditional UPDATE on SQLite), except one whose endpoint still has an earlier
   delivery pending for the same conversation: per endpoint and conversation, an event is attempted
   only once every earlier one was delivered or given up (the ordering guarantee).
3. **Send** (``delivery.Sender``), then **record** every result in one transaction: delivered; or
   retried after the next step of ``webhook_retry_schedule`` (±20% jitter); or, once the schedule is
   spent, ``failed``. An endpoint none of whose deliveries succeeded since the failed one's first
   attempt is disabled: a ``webhook.disabled`` event, a metric, a WARNING line, and the endpoint's
   ``disabled_at``/``disabled_reason`` in the API.

At least once: a worker that dies after sending and before recording leaves its rows leased, and
once the lease ends they are sent again, with the same ``webhook-id``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import delete, exists, insert, or_, select, update
from sqlalchemy.orm import Session, aliased, sessionmaker

from mailbridge.crypto.keyring import Keyring
from mailbridge.domain import events
from mailbridge.domain.db import nudge_on_commit, transaction, writer_gate, written_by_core
from mailbridge.domain.models import (
    Event,
    WebhookDelivery,
    WebhookDeliveryState,
    WebhookEndpoint,
    new_id,
    utcnow,
)
from mailbridge.observability import WEBHOOK_ATTEMPTS, WEBHOOK_DISABLED
from mailbridge.webhooks import endpoints
from mailbridge.webhooks.delivery import Request, Result, Sender
from mailbridge.webhooks.payloads import Renderer

log = logging.getLogger(__name__)

DELIVERY_TABLE: Any = WebhookDelivery.__table__
JITTER = 0.2
PURGE_EVERY = 3600.0


def retry_delay(schedule: Sequence[float], attempts: int) -> float | None:
    """Seconds before the next attempt after *attempts* failed ones; None once the schedule is spent."""
    if attempts > len(schedule):
        return None
    return float(schedule[attempts - 1]) * random.uniform(1 - JITTER, 1 + JITTER)


@dataclass
class Job:
    delivery_id: str
    request: Request | None  # None: could not be prepared (the secret would not open): a failed attempt
    error: str | None = None


@dataclass
class WebhookWorker:
    sessions: sessionmaker[Session]
    keyring: Keyring
    sender: Sender
    schedule: list[float]
    lease: timedelta
    batch: int = 50
    concurrency: int = 10
    poll: float = 1.0
    retention: timedelta = timedelta(days=30)
    _loop: asyncio.AbstractEventLoop | None = None
    _wake: asyncio.Event | None = None
    _leased_until: datetime | None = None
    _purged_at: float = field(default=0.0)

    @classmethod
    def from_services(cls, services: Any) -> WebhookWorker:
        settings = services.settings
        return cls(
            sessions=services.sessions,
            keyring=services.keyring,
            sender=Sender(
                services.resolver,
                timeout=settings.webhook_timeout_seconds,
                allow_private=settings.webhook_allow_private,
                allow_http=settings.webhook_allow_http,
            ),
            schedule=list(settings.webhook_retry_schedule),
            lease=timedelta(seconds=settings.webhook_lease_seconds),
            batch=settings.webhook_batch,
            concurrency=settings.webhook_concurrency,
            poll=settings.webhook_poll_seconds,
            retention=timedelta(days=settings.webhook_retention_days),
        )

    @contextlib.contextmanager
    def _writing(self) -> Iterator[Session]:
        with writer_gate(self.sessions), transaction(self.sessions) as session:
            session.info["webhook_worker"] = True  # our own commits do not wake us (see wake_on_commit)
            yield session

    def _postgres(self, session: Session) -> bool:
        return session.get_bind().dialect.name == "postgresql"

    # ---- 1. fan-out ----------------------------------------------------------------------------------

    def _nothing(self, query: Any) -> bool:
        """A read outside the writer gate: on SQLite an idle cycle must not queue behind (or hold up)
        the ingress's writers. PostgreSQL has no gate; its claim reads under FOR UPDATE anyway."""
        with self.sessions() as session:
            if self._postgres(session):
                return False
            return session.scalar(query.limit(1)) is None

    def dispatch(self) -> int:
        """Turn up to ``batch`` undispatched events into delivery rows; returns how many events."""
        now = utcnow()
        if self._nothing(select(Event.seq).where(Event.dispatched_at.is_(None))):
            return 0
        with self._writing() as session:
            query = select(Event).where(Event.dispatched_at.is_(None)).order_by(Event.seq).limit(self.batch)
            if self._postgres(session):
                query = query.with_for_update(skip_locked=True)
            found = list(session.scalars(query).all())
            if not found:
                return 0
            ours = set(
                session.scalars(
                    update(Event)
                    .where(Event.seq.in_([e.seq for e in found]), Event.dispatched_at.is_(None))
                    .values(dispatched_at=now)
                    .returning(Event.seq)
                    .execution_options(synchronize_session=False)
                ).all()
            )
            batch = [e for e in found if e.seq in ours]
            practice_ids = {e.practice_id for e in batch if e.practice_id is not None}
            listening = session.scalars(
                select(WebhookEndpoint).where(
                    or_(WebhookEndpoint.practice_id.is_(None), WebhookEndpoint.practice_id.in_(practice_ids))
                )
            ).all()
            rows = []
            for event in batch:
                for endpoint in listening:
                    if endpoint.practice_id not in (None, event.practice_id):
                        continue
                    if not endpoints.subscribed(endpoint, event.type):
                        continue
                    working = endpoint.active and endpoint.disabled_at is None
                    rows.append(
                        {
                            "id": new_id(),
                            "endpoint_id": endpoint.id,
                            "event_seq": event.seq,
                            "event_id": event.id,
                            "event_type": event.type,
                            "ordering_key": event.conversation_id,
                            "state": WebhookDeliveryState.pending
                            if working
                            else WebhookDeliveryState.skipped,
                            "attempts": 0,
                            "next_attempt_at": now,
                            "created_at": now,
                        }
                    )
            if rows:
                session.execute(insert(DELIVERY_TABLE), rows)
            return len(batch)

    # ---- 2. claim ------------------------------------------------------------------------------------

    def claim(self) -> list[str]:
        """Lease up to ``batch`` due deliveries, in event order, never two of one conversation and endpoint."""
        now = utcnow()
        self._leased_until = until = now + self.lease
        D = WebhookDelivery
        earlier = aliased(WebhookDelivery)
        waits_for_earlier = exists().where(
            earlier.endpoint_id == D.endpoint_id,
            earlier.ordering_key == D.ordering_key,
            earlier.state == WebhookDeliveryState.pending,
            earlier.event_seq < D.event_seq,
        )
        due = (
            select(D.id)
            .join(WebhookEndpoint, WebhookEndpoint.id == D.endpoint_id)
            .where(
                D.state == WebhookDeliveryState.pending,
                D.next_attempt_at <= now,
                or_(D.lease_until.is_(None), D.lease_until < now),
                WebhookEndpoint.active.is_(True),
                WebhookEndpoint.disabled_at.is_(None),
                or_(D.ordering_key.is_(None), ~waits_for_earlier),
            )
            .order_by(D.event_seq)
            .limit(self.batch)
        )
        if self._nothing(due):
            return []
        with self._writing() as session:
            if self._postgres(session):
                due = due.with_for_update(skip_locked=True, of=D)
            ids = list(session.scalars(due).all())
            if not ids:
                return []
            claimed = set(
                session.scalars(
                    update(D)
                    .where(
                        D.id.in_(ids),
                        D.state == WebhookDeliveryState.pending,
                        or_(D.lease_until.is_(None), D.lease_until < now),
                    )
                    .values(lease_until=until)
                    .returning(D.id)
                    .execution_options(synchronize_session=False)
                ).all()
            )
        return [row_id for row_id in ids if row_id in claimed]

    # ---- 3. prepare, send, record ------------------------------------------------------------------

    def prepare(self, ids: Sequence[str]) -> list[Job]:
        """The signed request of every claimed delivery: payloads rendered now (content included only
        for endpoints that asked), secrets opened with the keyring."""
        with self.sessions() as session:
            rows = session.execute(
                select(WebhookDelivery, WebhookEndpoint, Event)
                .join(WebhookEndpoint, WebhookEndpoint.id == WebhookDelivery.endpoint_id)
                .join(Event, Event.seq == WebhookDelivery.event_seq)
                .where(WebhookDelivery.id.in_(list(ids)))
            ).all()
            content_for = {event.seq for _, endpoint, event in rows if endpoint.include_content}
            renderer = Renderer(session, [event for _, _, event in rows], content_for)
            opened: dict[int, tuple[str, ...]] = {}
            jobs = []
            for delivery, endpoint, event in rows:
                try:
                    if endpoint.id not in opened:
                        opened[endpoint.id] = tuple(
                            endpoints.signing_secrets(session, self.keyring, endpoint)
                        )
                    body = renderer.body(event, endpoint.include_content)
                except Exception as exc:
                    log.exception("webhook_prepare_failed", extra={"delivery": delivery.id})
                    jobs.append(Job(delivery.id, None, f"cannot prepare the request: {type(exc).__name__}"))
                    continue
                jobs.append(
                    Job(delivery.id, Request(delivery.id, event.id, endpoint.url, body, opened[endpoint.id]))
                )
            session.rollback()
        return jobs

    async def send_all(self, jobs: Sequence[Job], send_until: float) -> tuple[dict[str, Result], list[str]]:
        """Up to ``concurrency`` requests at once; past *send_until* (half the lease) nothing more
        starts: those rows go back unattempted, before another node could claim them."""
        gate = asyncio.Semaphore(self.concurrency)
        results: dict[str, Result] = {}
        given_back: list[str] = []

        async def one(job: Job) -> None:
            if job.request is None:
                results[job.delivery_id] = Result(False, error=job.error)
                return
            async with gate:
                if time.monotonic() > send_until:
                    given_back.append(job.delivery_id)
                    return
                try:
                    results[job.delivery_id] = await self.sender.send(job.request)
                except Exception as exc:  # a bug must not lose the row's lease bookkeeping
                    log.exception("webhook_send_error", extra={"delivery": job.delivery_id})
                    results[job.delivery_id] = Result(False, error=f"internal error: {type(exc).__name__}")

        await asyncio.gather(*(one(job) for job in jobs))
        return results, given_back

    def record(self, results: dict[str, Result]) -> None:
        """Every result in one transaction, for rows still under this worker's lease."""
        now = utcnow()
        lines: list[dict[str, Any]] = []
        with self._writing() as session:
            rows = session.execute(
                select(WebhookDelivery, WebhookEndpoint)
                .join(WebhookEndpoint, WebhookEndpoint.id == WebhookDelivery.endpoint_id)
                .where(
                    WebhookDelivery.id.in_(list(results)), WebhookDelivery.lease_until == self._leased_until
                )
            ).all()
            # successes first: an endpoint that answered now is not disabled for another row's failure
            for delivery, endpoint in sorted(rows, key=lambda r: not results[r[0].id].ok):
                lines.append(self._record_one(session, delivery, endpoint, results[delivery.id], now))
        for line in lines:
            WEBHOOK_ATTEMPTS.labels(line["result"]).inc()
            log.info("webhook_attempt", extra=line)

    def _record_one(
        self,
        session: Session,
        delivery: WebhookDelivery,
        endpoint: WebhookEndpoint,
        result: Result,
        now: datetime,
    ) -> dict[str, Any]:
        delivery.attempts += 1
        delivery.first_attempt_at = delivery.first_attempt_at or now
        delivery.last_attempt_at = now
        delivery.last_status = result.status
        delivery.last_error = result.error[:512] if result.error else None
        delivery.last_duration_ms = result.duration_ms
        delivery.lease_until = None
        if result.ok:
            delivery.state = WebhookDeliveryState.delivered
            delivery.delivered_at = now
            endpoint.last_success_at = now
            outcome = "delivered"
        else:
            wait = retry_delay(self.schedule, delivery.attempts)
            if wait is not None:
                delivery.next_attempt_at = now + timedelta(seconds=wait)
                outcome = "failed"
            else:
                delivery.state = WebhookDeliveryState.failed
                outcome = "gave_up"
                self._maybe_disable(session, endpoint, delivery, now)
        return {
            "delivery": delivery.id,
            "endpoint": endpoint.name,
            "practice_id": endpoint.practice_id,
            "event_id": delivery.event_id,
            "event_type": delivery.event_type,
            "attempt": delivery.attempts,
            "status": result.status,
            "error": result.error,
            "duration_ms": result.duration_ms,
            "result": outcome,
        }

    def _maybe_disable(
        self, session: Session, endpoint: WebhookEndpoint, delivery: WebhookDelivery, now: datetime
    ) -> None:
        """A delivery spent its whole schedule and nothing reached the endpoint since its first attempt:
        the endpoint keeps failing. Disabled, said in the API, the log, a metric and an event."""
        if endpoint.disabled_at is not None:
            return
        since = delivery.first_attempt_at or now
        if endpoint.last_success_at is not None and endpoint.last_success_at >= since:
            return
        endpoint.disabled_at = now
        endpoint.disabled_reason = (
            f"every attempt failed from {since.isoformat(timespec='seconds')} to "
            f"{now.isoformat(timespec='seconds')} ({delivery.attempts} attempts of event {delivery.event_id}); "
            f"last: {delivery.last_error or delivery.last_status}"
        )[:512]
        events.record(
            session,
            endpoint.practice_id,
            "webhook.disabled",
            endpoint=endpoint.name,
            scope="practice" if endpoint.practice_id is not None else "platform",
            event=delivery.event_id,
            attempts=delivery.attempts,
        )
        WEBHOOK_DISABLED.inc()
        log.warning(
            "webhook_disabled",
            extra={
                "endpoint": endpoint.name,
                "practice_id": endpoint.practice_id,
                "reason": endpoint.disabled_reason,
                "hint": "fix the receiver, then PUT the webhook with active: true and redeliver what failed",
            },
        )

    def release(self, ids: Sequence[str]) -> None:
        """Rows not attempted go back at once (no attempt counted)."""
        with self._writing() as session:
            session.execute(
                update(WebhookDelivery)
                .where(WebhookDelivery.id.in_(list(ids)), WebhookDelivery.lease_until == self._leased_until)
                .values(lease_until=None)
                .execution_options(synchronize_session=False)
            )

    def purge(self) -> int:
        """Events and delivery rows older than ``webhook_retention_days`` (nothing still pending)."""
        cutoff = utcnow() - self.retention
        with self._writing() as session:
            gone = session.execute(
                delete(WebhookDelivery)
                .where(
                    WebhookDelivery.created_at < cutoff,
                    WebhookDelivery.state != WebhookDeliveryState.pending,
                )
                .execution_options(synchronize_session=False)
            )
            pending = select(WebhookDelivery.id).where(
                WebhookDelivery.event_seq == Event.seq, WebhookDelivery.state == WebhookDeliveryState.pending
            )
            session.execute(
                delete(Event)
                .where(Event.created_at < cutoff, Event.dispatched_at.is_not(None), ~exists(pending))
                .execution_options(synchronize_session=False)
            )
        return int(getattr(gone, "rowcount", 0) or 0)

    # ---- the loop ----------------------------------------------------------------------------------

    async def run_once(self) -> int:
        """Fan out, claim, send, record; returns how much work was found (0: nothing to do)."""
        fanned = await asyncio.to_thread(self.dispatch)
        claimed_at = time.monotonic()
        ids = await asyncio.to_thread(self.claim)
        if not ids:
            return fanned
        jobs = await asyncio.to_thread(self.prepare, ids)
        results, given_back = await self.send_all(jobs, claimed_at + self.lease.total_seconds() / 2)
        if results:
            await asyncio.to_thread(self.record, results)
        if given_back:
            log.warning("webhook_lease_running_out", extra={"rows": len(given_back)})
            await asyncio.to_thread(self.release, given_back)
        return fanned + len(ids)

    def nudge(self) -> None:
        loop, wake = self._loop, self._wake
        if loop is not None and wake is not None:
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(wake.set)

    async def run_forever(self, stop: asyncio.Event) -> None:
        self._loop, self._wake = asyncio.get_running_loop(), asyncio.Event()
        try:
            while not stop.is_set():
                try:
                    worked = await self.run_once()
                    if time.monotonic() - self._purged_at > PURGE_EVERY:
                        self._purged_at = time.monotonic()
                        await asyncio.to_thread(self.purge)
                except Exception:
                    log.warning("webhook_cycle_failed", exc_info=True)
                    worked = 0
                if worked == 0:
                    await self._idle(stop, self._wake)
        finally:
            self._loop = self._wake = None
            await self.sender.close()

    async def _idle(self, stop: asyncio.Event, wake: asyncio.Event) -> None:
        waiters = [asyncio.ensure_future(stop.wait()), asyncio.ensure_future(wake.wait())]
        try:
            await asyncio.wait(waiters, timeout=self.poll, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waiters:
                waiter.cancel()
        wake.clear()


WAKING = (Event, WebhookDelivery, WebhookEndpoint)


def wake_on_commit(sessions: sessionmaker[Session], worker: WebhookWorker) -> Any:
    """Nudge *worker* when a transaction of this process commits an event, or changes a delivery or an
    endpoint (a redelivery, an endpoint enabled again): webhooks leave within milliseconds. The
    worker's own commits do not wake it."""

    def wants(session: Session) -> bool:
        if session.info.get("webhook_worker"):
            return False
        if Event in written_by_core(session):  # events.write: no flush saw it
            return True
        return any(isinstance(obj, WAKING) for obj in (*session.new, *session.dirty))

    return nudge_on_commit(sessions, wants, worker.nudge, "webhook_written")


def start_webhook_worker(services: Any, stop: asyncio.Event) -> asyncio.Task[None]:
    """This process's webhook worker, woken by this process's commits (``mailbridge serve``)."""
    worker = WebhookWorker.from_services(services)
    remove = wake_on_commit(services.sessions, worker)
    task = asyncio.create_task(worker.run_forever(stop), name="webhooks")
    task.add_done_callback(lambda _task: remove())
    return task
