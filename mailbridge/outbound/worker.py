"""The delivery worker: claims due outbox rows, builds, sends, and records; at-least-once across restarts.

Claiming takes a lease: ``FOR UPDATE SKIP LOCKED`` on PostgreSQL so several nodes share the work,
a conditional UPDATE on SQLite (its single writer serialises claims). A row whose worker died is
claimed again once the lease expires, so a message may be sent twice (same Message-ID), never zero.

The work goes by claimed batch, not by row: one transaction plans the whole batch (a few set-based
reads, the policy asked for every row) and stores every row's Message-ID, composing and signing
follow outside any transaction, the emails go out over the transport's one connection, and one
transaction records every result. Per-row transactions and queries cost far more than the email
itself; a row that fails on its own is still released on its own, as before batching.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import or_, select, update
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from mailbridge.domain import events
from mailbridge.domain.db import nudge_on_commit, transaction, writer_gate, written_by_core
from mailbridge.domain.models import Outbox, OutboxState, Practice, utcnow
from mailbridge.domain.suppressions import SuppressionPolicy
from mailbridge.logs import delivery_attempt, redact_address
from mailbridge.observability import (
    DELIVERIES,
    DKIM_CANNOT_SIGN,
    NOTIFICATIONS_SUPPRESSED,
    UNSIGNED,
    count_practice_delivery,
)
from mailbridge.outbound.bounces import record_refusal
from mailbridge.outbound.build import Builder, Built, Draft, NothingToSend, Suppressed
from mailbridge.outbound.deliver import Delivery, FileTransport, SmtpTransport, Transport
from mailbridge.outbound.keys import CannotSign
from mailbridge.outbound.render import Renderer
from mailbridge.outbound.snapshot import BatchSnapshot
from mailbridge.settings import split_listen
from mailbridge.wiring import suppression_policy

log = logging.getLogger(__name__)


def backoff(schedule: list[int], attempts: int) -> timedelta:
    """1 min, 5 min, 30 min, 2 h … then the last step repeats until the row's lifetime ends."""
    return timedelta(seconds=schedule[min(max(attempts - 1, 0), len(schedule) - 1)])


INTERNAL_ERROR = Delivery("temporary", "internal error while building or sending")


@dataclass
class Prepared:
    """One claimed row after the build transaction: a draft to finish, or nothing (cancelled, *failed*)."""

    row_id: str
    draft: Draft | None = None
    token: str | None = None  # the reply token, when the draft's recipient may answer by email
    failed: bool = False


@dataclass(frozen=True)
class Job:
    """One claimed row after building: signed bytes to send, or nothing (cancelled, or *failed*)."""

    row_id: str
    built: Built | None
    failed: bool = False  # building raised: released as a temporary failure, retried after backoff


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
    suppression: SuppressionPolicy = field(default_factory=SuppressionPolicy)
    _loop: asyncio.AbstractEventLoop | None = None
    _wake: asyncio.Event | None = None
    _leased_until: datetime | None = None  # the lease the last claim wrote on its rows
    _unsigned_warned: set[str] = field(default_factory=set)  # practices already logged as unsigned

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
            renderer=Renderer(settings.templates_dir),
            tokens=services.tokens,
            keys=services.dkim_keys,
            verp_secret=services.verp_secret,
            app_url=settings.app_url,
            loop_value=settings.smtp_hostname,
            fingerprint_key=services.fingerprint_key,
            vault=services.vault,
            unsubscribe=services.unsubscribe,
            public_url=settings.effective_public_url,
            conversation_link_path=settings.conversation_link_path,
            preferences_link_path=settings.preferences_link_path,
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
            suppression=suppression_policy(settings),
        )

    @contextlib.contextmanager
    def _writing(self) -> Iterator[Session]:
        """A short write transaction; on SQLite queued with this node's other writers (``writer_gate``)."""
        with writer_gate(self.sessions), transaction(self.sessions) as session:
            yield session

    # ---- claiming -----------------------------------------------------------------------------------

    def claim(self) -> list[str]:
        """Lease up to ``batch`` due rows; the ids come back in due order.

        One UPDATE for the whole batch, with the due conditions repeated: on SQLite another process
        may claim a row between our SELECT and UPDATE (the write lock is only taken at the UPDATE),
        so only the ids the UPDATE itself returns are ours. On PostgreSQL the rows are already
        locked by ``FOR UPDATE SKIP LOCKED``.
        """
        now = utcnow()
        self._leased_until = until = now + self.lease
        with self._writing() as session:
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
            if not ids:
                return []
            claimed = set(
                session.scalars(
                    update(Outbox)
                    .where(
                        Outbox.id.in_(ids),
                        Outbox.state == OutboxState.pending,
                        or_(Outbox.lease_until.is_(None), Outbox.lease_until < now),
                    )
                    .values(lease_until=until)
                    .returning(Outbox.id)
                    .execution_options(synchronize_session=False)
                ).all()
            )
            return [row_id for row_id in ids if row_id in claimed]

    # ---- building -----------------------------------------------------------------------------------

    def build(self, ids: Sequence[str]) -> list[Job]:
        """Signed bytes for every claimed row: :meth:`_prepare` (one transaction), then compose and sign.

        A row whose planning raises is released without stopping the others. A failure of the batch
        itself (a database error spoils its transaction) makes the rows be prepared one by one, each
        in its own transaction, as before batching, so that one bad row does not hold back the rest.
        """
        try:
            prepared = self._prepare(ids)
        except Exception:
            log.warning("outbox_batch_build_failed", exc_info=True, extra={"rows": len(ids)})
            prepared = []
            for row_id in ids:
                try:
                    prepared += self._prepare([row_id])
                except Exception:
                    log.exception("outbox_row_error", extra={"outbox": row_id})
                    prepared.append(Prepared(row_id, failed=True))
        return [self._finish(item) for item in prepared]

    def _prepare(self, ids: Sequence[str]) -> list[Prepared]:
        """Plan every row (reads), then issue reply tokens and store Message-IDs (writes), and commit.

        The Message-IDs are committed before anything is sent, so a retry sends the same one. The
        reads come first and the writes last, so SQLite's write lock (and, for the ingress door's
        writers, ``writer_gate``) is held only for the short write phase, never while reading or
        rendering; composing and signing come after the commit.
        """
        with self.sessions() as session:
            rows = {row.id: row for row in session.scalars(select(Outbox).where(Outbox.id.in_(ids)))}
            ordered = [rows[row_id] for row_id in ids if row_id in rows]  # a deleted row: nothing to do
            snapshot = BatchSnapshot.load(session, ordered)
            # The rows' changes are flushed once, at commit, in a single executemany.
            with session.no_autoflush:
                planned = [self._plan(session, row, snapshot) for row in ordered]
                with writer_gate(self.sessions):
                    for row, item in zip(ordered, planned, strict=True):
                        if item.draft is not None:
                            item.token = self.builder.reply_token(session, item.draft)
                            row.message_id_header = item.draft.message_id
                            if item.draft.fingerprint is not None:
                                row.sent_fingerprint = item.draft.fingerprint
                    session.commit()
            return planned

    def _plan(self, session: Session, row: Outbox, snapshot: BatchSnapshot) -> Prepared:
        try:
            return Prepared(row.id, self.builder.plan(session, row, snapshot))
        except Suppressed as why:  # suppressed since the row was written: said on the row, not sent
            row.state = OutboxState.suppressed
            row.last_answer = str(why)[:512]
            row.lease_until = None
            NOTIFICATIONS_SUPPRESSED.labels(why.reason).inc()
            log.info(
                "notification_suppressed",
                extra={"outbox": row.id, "to": redact_address(row.to_address), "reason": why.reason},
            )
            return Prepared(row.id)
        except NothingToSend as why:
            row.state = OutboxState.failed
            row.last_answer = f"cancelled: {why}"
            row.lease_until = None
            return Prepared(row.id)
        except CannotSign as why:
            self._cannot_sign(row, snapshot, str(why))
            events.delivery_result(session, row)  # delivery.failed once it expired waiting
            return Prepared(row.id)
        except SQLAlchemyError:
            raise  # the transaction is spoiled: the caller decides
        except Exception:
            log.exception("outbox_row_error", extra={"outbox": row.id})
            return Prepared(row.id, failed=True)

    def _cannot_sign(self, row: Outbox, snapshot: BatchSnapshot, why: str) -> None:
        """The practice has a DKIM key this node cannot use: the row waits (no attempt counted) for a
        node that can, or for this one once fixed; never sent unsigned. Expires like any row."""
        practice = snapshot.practices[row.practice_id].slug
        now = utcnow()
        row.lease_until = None
        row.last_answer = f"deferred: this node cannot DKIM-sign for {practice}: {why}"[:512]
        if now - row.created_at > self.lifetime:
            row.state = OutboxState.expired
            log.error("outbox_expired", extra={"outbox": row.id, "attempts": row.attempts, "reason": why})
        else:
            row.next_attempt_at = now + backoff(self.schedule, 1)
        log.warning("dkim_cannot_sign", extra={"outbox": row.id, "practice": practice, "reason": why})
        DKIM_CANNOT_SIGN.labels(practice).inc()

    def _finish(self, item: Prepared) -> Job:
        if item.draft is None:
            return Job(item.row_id, None, failed=item.failed)
        try:
            return Job(item.row_id, self.builder.finish(item.draft, item.token))
        except Exception:
            log.exception("outbox_row_error", extra={"outbox": item.row_id})
            return Job(item.row_id, None, failed=True)

    # ---- recording ----------------------------------------------------------------------------------

    def record(self, deliveries: dict[str, Delivery]) -> None:
        """Record every result in one transaction; if that fails, row by row as before batching.

        Only rows still under this worker's lease are recorded: a row whose lease ran out belongs to
        whoever claimed it next, and a late answer here must not overwrite theirs.
        """
        try:
            with self._writing() as session:
                rows = session.scalars(
                    select(Outbox).where(Outbox.id.in_(list(deliveries)), self._still_ours())
                ).all()
                # a row deleted meanwhile (its message erased) has nothing to record
                # The batch's practices, read once and held here: ``_record_row``'s ``session.get``
                # then finds them in the identity map (weak references: one read and dropped was
                # read again, one query and one autoflush of the rows so far for every row).
                practices = session.scalars(
                    select(Practice).where(Practice.id.in_({row.practice_id for row in rows}))
                ).all()
                attempts = [self._record_row(session, row, deliveries[row.id]) for row in rows]
                del practices
        except Exception:
            log.warning("outbox_batch_record_failed", exc_info=True, extra={"rows": len(deliveries)})
            for row_id, delivery in deliveries.items():
                self._record_alone(row_id, delivery)
            return
        for delivery in deliveries.values():
            DELIVERIES.labels(delivery.result).inc()
        for attempt in attempts:  # after the commit: the lines say what is recorded
            _report(attempt)

    def _still_ours(self) -> Any:
        if self._leased_until is None:
            return Outbox.lease_until.is_not(None)
        return Outbox.lease_until == self._leased_until

    def release(self, ids: Sequence[str]) -> None:
        """Give back rows not attempted (the lease was running out): no attempt counted, due now."""
        with self._writing() as session:
            session.execute(
                update(Outbox)
                .where(Outbox.id.in_(list(ids)), self._still_ours())
                .values(lease_until=None)
                .execution_options(synchronize_session=False)
            )

    def _record_alone(self, row_id: str, delivery: Delivery) -> None:
        try:
            with self._writing() as session:
                row = session.scalar(select(Outbox).where(Outbox.id == row_id, self._still_ours()))
                attempt = self._record_row(session, row, delivery) if row is not None else None
            DELIVERIES.labels(delivery.result).inc()
            if attempt is not None:
                _report(attempt)
        except Exception:
            log.exception("outbox_row_error", extra={"outbox": row_id})
            self._release_after_error(row_id)

    def _record_row(self, session: Session, row: Outbox, delivery: Delivery) -> dict[str, Any]:
        """Write one attempt's result on its row; returns the fields of its ``delivery_attempt`` line."""
        row.attempts += 1
        row.last_answer = delivery.answer[:512]
        row.lease_until = None
        now = utcnow()
        if delivery.result == "sent":
            row.state = OutboxState.sent
            row.sent_at = now
        elif delivery.result == "permanent":
            row.state = OutboxState.failed
            record_refusal(session, row, delivery.stage, delivery.answer, self.suppression)
        elif now - row.created_at > self.lifetime:  # UTCDateTime: always aware
            row.state = OutboxState.expired
            log.error("outbox_expired", extra={"outbox": row.id, "attempts": row.attempts})
        else:
            row.next_attempt_at = now + backoff(self.schedule, row.attempts)
        events.delivery_result(session, row)  # delivery.sent / delivery.failed, with the row's state
        practice = session.get(Practice, row.practice_id)  # the batch's few practices: identity map
        return {
            "outbox_id": row.id,
            "practice": practice.slug if practice is not None else None,
            "kind": row.kind.value,
            "result": delivery.result,
            "answer": delivery.answer,
            "attempt": row.attempts,
            "state": row.state.value,
        }

    def _release_after_error(self, row_id: str) -> None:
        try:
            with self._writing() as session:
                row = session.scalar(select(Outbox).where(Outbox.id == row_id, self._still_ours()))
                attempt = self._record_row(session, row, INTERNAL_ERROR) if row is not None else None
            DELIVERIES.labels(INTERNAL_ERROR.result).inc()
            if attempt is not None:
                _report(attempt)
        except Exception:
            log.warning("outbox_release_failed", extra={"outbox": row_id})

    # ---- one batch ----------------------------------------------------------------------------------

    async def run_once(self) -> int:
        """Claim a batch, build it, send it, record it: three short transactions per batch.

        At-least-once: a worker that dies after sending but before recording leaves the rows leased;
        once the lease runs out they are claimed and sent again, with the same Message-ID.
        """
        claimed_at = time.monotonic()
        ids = await asyncio.to_thread(self.claim)
        if not ids:
            return 0
        jobs = await asyncio.to_thread(self.build, ids)
        deliveries: dict[str, Delivery] = {}
        given_back: list[str] = []
        # Past half the lease, nothing more is sent from this claim: its rows could soon be claimed
        # by another worker, which would send them again. They go back, to be claimed afresh.
        send_until = claimed_at + self.lease.total_seconds() / 2
        for job in jobs:
            if job.failed:
                deliveries[job.row_id] = INTERNAL_ERROR
            elif job.built is not None and time.monotonic() > send_until:
                given_back.append(job.row_id)
            elif job.built is not None:
                deliveries[job.row_id] = delivery = await self._send(job.row_id, job.built)
                if delivery.result == "sent" and not job.built.signed:
                    self._count_unsigned(job.built.practice)
        if deliveries:
            await asyncio.to_thread(self.record, deliveries)
        if given_back:
            log.warning("outbox_lease_running_out", extra={"rows": len(given_back)})
            await asyncio.to_thread(self.release, given_back)
        return len(ids)

    def _count_unsigned(self, practice: str) -> None:
        """Sent without a DKIM signature (the practice has no key): counted, and said once per process."""
        UNSIGNED.labels(practice).inc()
        if practice not in self._unsigned_warned:
            self._unsigned_warned.add(practice)
            log.warning(
                "dkim_unsigned",
                extra={"practice": practice, "hint": f"mailbridge dkim genkey --practice {practice}"},
            )

    async def _send(self, row_id: str, built: Built) -> Delivery:
        try:
            return await self.transport.send(built.mail_from, built.rcpt, built.data)
        except Exception:
            log.exception("outbox_row_error", extra={"outbox": row_id})
            return INTERNAL_ERROR

    def nudge(self) -> None:
        """Work now rather than at the next poll; callable from any thread (see ``wake_on_commit``)."""
        loop, wake = self._loop, self._wake
        if loop is not None and wake is not None:
            with contextlib.suppress(RuntimeError):  # the loop has closed: nobody to wake
                loop.call_soon_threadsafe(wake.set)

    async def run_forever(self, stop: asyncio.Event) -> None:
        self._loop, self._wake = asyncio.get_running_loop(), asyncio.Event()
        try:
            while not stop.is_set():
                try:
                    worked = await self.run_once()
                except Exception:
                    log.warning("worker_cycle_failed", exc_info=True)
                    worked = 0
                if worked == 0:
                    await self.transport.close()  # do not hold an idle smarthost connection
                    await self._idle(stop, self._wake)
        finally:
            self._loop = self._wake = None
            await self.transport.close()

    async def _idle(self, stop: asyncio.Event, wake: asyncio.Event) -> None:
        """Until a nudge, the stop, or the poll interval (rows due later, rows other nodes wrote)."""
        waiters = [asyncio.ensure_future(stop.wait()), asyncio.ensure_future(wake.wait())]
        try:
            await asyncio.wait(waiters, timeout=self.poll, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waiters:
                waiter.cancel()
        # Cleared after the wait: a nudge that comes while a batch runs makes the next wait return
        # at once, and one that comes right here is for a row already committed, which run_once finds.
        wake.clear()


def _report(attempt: dict[str, Any]) -> None:
    delivery_attempt(**attempt)
    count_practice_delivery(attempt["practice"], attempt["result"])


def wake_on_commit(sessions: sessionmaker[Session], worker: Worker) -> Any:
    """Nudge *worker* whenever a transaction of this process commits new outbox rows (a reply's
    notification then leaves within milliseconds). Returns a function that removes the listeners."""
    return nudge_on_commit(
        sessions,
        # pre-flush state, or rows the fan-out wrote with Core statements
        lambda session: (
            Outbox in written_by_core(session) or any(isinstance(obj, Outbox) for obj in session.new)
        ),
        worker.nudge,
        "outbox_written",
    )


def start_worker(services: Any, stop: asyncio.Event) -> asyncio.Task[None]:
    """The delivery worker of this process, woken by this process's commits (``mailbridge serve``)."""
    worker = Worker.from_services(services)
    remove = wake_on_commit(services.sessions, worker)
    task = asyncio.create_task(worker.run_forever(stop), name="worker")
    task.add_done_callback(lambda _task: remove())
    return task
