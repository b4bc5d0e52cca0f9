"""Fan-out: one outbox row per participant to notify, written in the same transaction as the message."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
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
    User,
    UserKind,
    new_id,
    utcnow,
)
from mailbridge.domain.mutes import muted_users
from mailbridge.domain.suppressions import Block
from mailbridge.logs import redact_address
from mailbridge.observability import NOTIFICATIONS_SUPPRESSED
from mailbridge.policy.rules import Situation, can_read

log = logging.getLogger(__name__)


OUTBOX: Table = Outbox.__table__  # type: ignore[assignment]
_INSERT_OUTBOX = insert(OUTBOX)  # built once: the hot path runs it for every posted reply


@dataclass(frozen=True, slots=True)
class Recipient:
    """A participant the fan-out may notify, as plain values (from entities, or a reply's rows)."""

    id: int
    email: str
    kind: UserKind
    portal_account: bool
    muted: bool  # asked for no more email about this conversation
    block: Block | None  # a suppression known to stop mail to ``email`` now


def enqueue_notifications(
    session: Session,
    practice: Practice,
    conversation: Conversation,
    message: Message,
    snapshot: Situation | None = None,
) -> int:
    """Every participant but the author who may read the conversation now; internal notes to staff
    only (``fan_out``), for a message posted with entities (the app, a release, a new conversation)."""
    from mailbridge.domain.conversations import practice_settings, situation

    users = [p.user for p in conversation.active_participants()]
    if not any(u.id != message.author_id for u in users):
        return 0
    base = snapshot if snapshot is not None else situation(session, message.author, conversation)
    muted = set(muted_users(session, conversation.id))
    return fan_out(
        session,
        practice.id,
        practice.slug,
        conversation.id,
        message.id,
        author_id=message.author_id,
        internal=message.internal,
        delay=practice_settings(practice).notify_delay_seconds,
        snapshot=base,
        recipients=[Recipient(u.id, u.email, u.kind, u.portal_account, u.id in muted, None) for u in users],
        blocks_known=False,
    )


def fan_out(
    session: Session,
    practice_id: int,
    practice_slug: str,
    conversation_id: str,
    message_id: str,
    *,
    author_id: int,
    internal: bool,
    delay: int,
    snapshot: Situation,
    recipients: Sequence[Recipient],
    blocks_known: bool,
) -> int:
    """One outbox row per active participant but the author who may read the conversation now
    (each judged as the actor of *snapshot*, the one the post was judged on); internal notes to
    staff only. Returns how many notifications will be sent.

    Seed 003: "recipients with a portal account created will be immediately notified": a staff member
    or client without one is skipped (``skipped: no_portal_account`` in the delivery log). External
    agents never have one and are always notified: the email is the only way they read.

    ``blocks_known``: the recipients' suppressions were read with them (``Recipient.block``), for
    every address SQL compares exactly (``suppressions.sql_comparable``); the others, or all of
    them when False, are looked up here. The rows go in as one INSERT (an executemany), not as
    objects for a flush to write."""
    from dataclasses import replace

    now = utcnow()
    candidates = [r for r in recipients if r.id != author_id and (not internal or r.kind == UserKind.staff)]
    if not candidates:
        return 0
    people = {person.id: person for person in snapshot.participants}
    lookup = [r.email for r in candidates if not (blocks_known and suppressions.sql_comparable(r.email))]
    found = suppressions.active_among(session, practice_id, lookup, now) if lookup else {}
    rows: list[dict[str, Any]] = []

    def skip(r: Recipient, reason: str, answer: str | None = None) -> None:
        log.info(
            "notification_skipped",
            extra={"practice": practice_slug, "to": redact_address(r.email), "reason": reason},
        )
        rows.append(
            _row(
                practice_id,
                message_id,
                conversation_id,
                r.id,
                r.email,
                OutboxState.suppressed,
                answer or f"skipped: {reason}",
                now,
                now,
            )
        )

    for r in candidates:
        verdict = can_read(replace(snapshot, actor=people[r.id]))
        if verdict.reason == "account_inactive":
            skip(r, verdict.reason)
            continue
        if not verdict.allowed:
            continue
        if not notifiable(r):
            skip(r, "no_portal_account")
            continue
        if r.muted:  # one-click unsubscribe from this conversation's notifications (RFC 8058)
            skip(r, "conversation_muted")
            continue
        hit = r.block
        if hit is None:
            row = found.get(suppressions.normalize(r.email))
            hit = suppressions.block_of(row) if row is not None else None
        if hit is not None:  # never a silent drop: a row that says so, with the address, in …/outbound
            NOTIFICATIONS_SUPPRESSED.labels(hit.reason.value).inc()
            skip(r, hit.reason.value, suppressions.describe(hit))
            continue
        if delay and _coalesce(session, conversation_id, r.id, message_id):
            continue
        rows.append(
            _row(
                practice_id,
                message_id,
                conversation_id,
                r.id,
                r.email,
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


def notifiable(user: User | Recipient) -> bool:
    """Seed 003's rule: someone with a portal account is notified; an external agent too, who reads
    by email and never in a portal. Fan-out and the worker (at send time) both ask this."""
    return user.portal_account or user.kind == UserKind.external


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
