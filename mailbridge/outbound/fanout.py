"""Fan-out: one outbox row per participant to notify, written in the same transaction as the message."""

from __future__ import annotations

import logging
from collections.abc import Collection, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Table, insert, null, select, update
from sqlalchemy.orm import Session

from mailbridge.domain import suppressions
from mailbridge.domain.db import note_written
from mailbridge.domain.models import (
    Conversation,
    Message,
    Outbox,
    OutboxKind,
    OutboxState,
    Practice,
    Suppression,
    User,
    UserKind,
    new_id,
    utcnow,
)
from mailbridge.domain.mutes import muted_users
from mailbridge.logs import redact_address
from mailbridge.observability import NOTIFICATIONS_SUPPRESSED
from mailbridge.policy.rules import Situation, can_read

log = logging.getLogger(__name__)


OUTBOX: Table = Outbox.__table__  # type: ignore[assignment]
_INSERT_OUTBOX = insert(OUTBOX)  # built once: the hot path runs it for every posted reply


def enqueue_notifications(
    session: Session,
    practice: Practice,
    conversation: Conversation,
    message: Message,
    snapshot: Situation | None = None,
    *,
    muted: Collection[int] | None = None,
    suppressed: Mapping[str, Suppression] | None = None,
) -> int:
    """Every participant but the author who may read the conversation now; internal notes to staff only.

    Seed 003: "recipients with a portal account created will be immediately notified": a staff member
    or client without one is skipped (``skipped: no_portal_account`` in the delivery log). External
    agents never have one and are always notified: the email is the only way they read.

    ``muted`` and ``suppressed``: who muted the conversation and the suppressions stopping mail to
    its participants, when the caller read them in this transaction already
    (``conversations.conversation_for_policy(fanout=True)``); else they are read here. The rows go
    in as one INSERT (an executemany), not as objects for a flush to write."""
    from dataclasses import replace

    from mailbridge.domain.conversations import practice_settings, situation

    delay = practice_settings(practice).notify_delay_seconds
    now = utcnow()
    recipients = [
        p.user
        for p in conversation.active_participants()
        if p.user_id != message.author_id and (not message.internal or p.user.kind == UserKind.staff)
    ]
    if not recipients:
        return 0
    # One snapshot of the conversation; each recipient is then judged as its actor (same rules, fewer queries).
    base = snapshot if snapshot is not None else situation(session, message.author, conversation)
    people = {person.id: person for person in base.participants}
    if suppressed is None:
        blocked = suppressions.active_among(session, practice.id, [u.email for u in recipients], now)
    else:  # an address SQL could not compare exactly is looked up as always
        blocked = dict(suppressed)
        unusual = [u.email for u in recipients if not suppressions.sql_comparable(u.email)]
        if unusual:
            blocked.update(suppressions.active_among(session, practice.id, unusual, now))
    if muted is None:
        muted = set(muted_users(session, conversation.id))
    rows: list[dict[str, Any]] = []

    def skip(user: User, reason: str, answer: str | None = None) -> None:
        rows.append(_skipped(practice, conversation, message, user.id, user.email, reason, now, answer))

    for user in recipients:
        verdict = can_read(replace(base, actor=people[user.id]))
        if verdict.reason == "account_inactive":
            skip(user, verdict.reason)
            continue
        if not verdict.allowed:
            continue
        if not notifiable(user):
            skip(user, "no_portal_account")
            continue
        if user.id in muted:  # one-click unsubscribe from this conversation's notifications (RFC 8058)
            skip(user, "conversation_muted")
            continue
        hit = blocked.get(user.email.lower())
        if hit is not None:  # never a silent drop: a row that says so, with the address, in …/outbound
            NOTIFICATIONS_SUPPRESSED.labels(hit.reason.value).inc()
            skip(user, hit.reason.value, suppressions.describe(hit))
            continue
        if delay and _coalesce(session, conversation.id, user.id, message.id):
            continue
        rows.append(
            _row(
                practice.id,
                message.id,
                conversation.id,
                user.id,
                user.email,
                OutboxState.pending,
                None,
                now,
                now + timedelta(seconds=delay),
            )
        )
    if rows:
        session.connection().execute(_INSERT_OUTBOX, rows)
        note_written(session, Outbox)
    return sum(1 for row in rows if row["state"] == OutboxState.pending)


def _row(
    practice_id: int,
    message_id: str,
    conversation_id: str,
    recipient_id: int,
    address: str,
    state: OutboxState,
    answer: str | None,
    now: datetime,
    due: datetime,
) -> dict[str, Any]:
    """One notification's outbox row, every column given (the rows of one INSERT share their keys)."""
    return {
        "id": new_id(),
        "practice_id": practice_id,
        "kind": OutboxKind.notification,
        "message_id": message_id,
        "conversation_id": conversation_id,
        "recipient_id": recipient_id,
        "to_address": address,
        "payload": {},
        "state": state,
        "attempts": 0,
        "next_attempt_at": due,
        "last_answer": answer,
        "created_at": now,
    }


def notifiable(user: User) -> bool:
    """Seed 003's rule: someone with a portal account is notified; an external agent too, who reads
    by email and never in a portal. Fan-out and the worker (at send time) both ask this."""
    return user.portal_account or user.kind == UserKind.external


def _skipped(
    practice: Practice,
    conversation: Conversation,
    message: Message,
    recipient_id: int,
    address: str,
    reason: str,
    now: datetime,
    answer: str | None = None,
) -> dict[str, Any]:
    """A participant deliberately not notified (a deactivated account, no portal account, a muted
    conversation, a suppressed address) leaves a row in the delivery log
    saying so, never sent: ``GET …/outbound?state=suppressed`` shows who and why."""
    log.info(
        "notification_skipped",
        extra={"practice": practice.slug, "to": redact_address(address), "reason": reason},
    )
    return _row(
        practice.id,
        message.id,
        conversation.id,
        recipient_id,
        address,
        OutboxState.suppressed,
        answer or f"skipped: {reason}",
        now,
        now,
    )


def _coalesce(session: Session, conversation_id: str, recipient_id: int, message_id: str) -> bool:
    """With a delay set, a waiting notification for the same person and conversation absorbs the new one."""
    row = session.scalar(
        select(Outbox).where(
            Outbox.kind == OutboxKind.notification,
            Outbox.conversation_id == conversation_id,
            Outbox.recipient_id == recipient_id,
            Outbox.state == OutboxState.pending,
            Outbox.attempts == 0,
            Outbox.next_attempt_at > utcnow(),
        )
    )
    if row is None:
        return False
    payload = dict(row.payload or {})
    payload["coalesced"] = int(payload.get("coalesced", 1)) + 1
    row.payload = payload
    row.message_id = message_id
    return True


def enqueue_email(
    session: Session,
    practice: Practice,
    *,
    kind: OutboxKind,
    to_address: str,
    payload: dict[str, Any],
    recipient_id: int | None = None,
    conversation_id: str | None = None,
) -> Outbox:
    """Notices (rejections) and forwards (postmaster@) ride the same durable outbox as notifications."""
    row = Outbox(
        practice_id=practice.id,
        kind=kind,
        to_address=to_address,
        payload=payload,
        recipient_id=recipient_id,
        conversation_id=conversation_id,
    )
    session.add(row)
    session.flush()
    return row


def cancel_pending(session: Session, message_ids: Sequence[str]) -> None:
    """A deleted message must not go out by email afterwards, nor leave the fingerprint of what was
    sent about it (the word-run hashes a reply's quoted copy is recognised by)."""
    if message_ids:
        session.execute(
            update(Outbox)
            .where(Outbox.message_id.in_(list(message_ids)), Outbox.sent_fingerprint.is_not(None))
            .values(sent_fingerprint=null())
        )
        session.execute(
            update(Outbox)
            .where(Outbox.message_id.in_(list(message_ids)), Outbox.state == OutboxState.pending)
            .values(state=OutboxState.failed, last_answer="cancelled: message deleted", message_id=None)
        )
