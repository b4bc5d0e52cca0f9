"""Bounces: match a DSN to its outbox row via the signed VERP address, record it, suppress bad addresses."""

from __future__ import annotations

import logging
from email.message import EmailMessage

from sqlalchemy import select
from sqlalchemy.orm import Session

from mailbridge.domain import events
from mailbridge.domain.models import Outbox, Suppression, User, UserAddress, utcnow
from mailbridge.inbound.classify import Classification, parse_bounce
from mailbridge.inbound.envelope import Target
from mailbridge.observability import BOUNCES

log = logging.getLogger(__name__)
SOFT_BOUNCE_LIMIT = 3


def _suppression(session: Session, practice_id: int, address: str) -> Suppression:
    row = session.scalar(
        select(Suppression).where(Suppression.practice_id == practice_id, Suppression.address == address)
    )
    if row is None:
        row = Suppression(
            practice_id=practice_id, address=address, reason="", soft_bounces=0, suppressed=False
        )
        session.add(row)
    return row


def _mark_users(session: Session, practice_id: int, address: str) -> None:
    """The app learns through the API (``email_bouncing``) that it should ask the user to fix the address."""
    for user in session.scalars(
        select(User)
        .join(UserAddress, UserAddress.user_id == User.id)
        .where(
            UserAddress.practice_id == practice_id,
            UserAddress.address == address,
            UserAddress.primary.is_(True),
        )
    ):
        user.email_bouncing = True


def note_bounce(session: Session, practice_id: int, address: str, permanent: bool, reason: str) -> None:
    address = address.lower()
    row = _suppression(session, practice_id, address)
    was_suppressed = bool(row.suppressed)
    row.reason = reason[:255]
    row.updated_at = utcnow()
    if permanent:
        row.suppressed = True
    else:
        row.soft_bounces += 1
        row.suppressed = row.soft_bounces >= SOFT_BOUNCE_LIMIT
    if row.suppressed:
        _mark_users(session, practice_id, address)
    if row.suppressed and not was_suppressed:
        events.address_suppressed(session, practice_id, address, row.reason)
    BOUNCES.labels("hard" if permanent else "soft").inc()


def hard_failure(session: Session, row: Outbox, answer: str) -> None:
    """A 5xx from the smarthost for the recipient (O8): the same score as an asynchronous hard bounce."""
    if answer.startswith("55"):
        note_bounce(session, row.practice_id, row.to_address, True, answer)


def record_bounce(session: Session, target: Target, msg: EmailMessage, result: Classification) -> None:
    """An asynchronous DSN: to our VERP address it names its row; anything else is recorded per recipient."""
    row = session.get(Outbox, target.outbox_id) if target.outbox_id else None
    bounced = result.bounced or parse_bounce(msg)
    if row is not None:
        permanent = any(b.permanent for b in bounced) if bounced else True
        row.last_answer = (
            ("bounced: " + "; ".join(f"{b.status or ''} {b.diagnostic or ''}".strip() for b in bounced))[:512]
            if bounced
            else "bounced"
        )
        note_bounce(session, row.practice_id, row.to_address, permanent, row.last_answer or "bounce")
        events.delivery_bounced(session, row, permanent)
        return
    for item in bounced:
        note_bounce(session, target.practice_id, item.address, item.permanent, item.diagnostic or "bounce")
    if not bounced:
        log.info("bounce_unmatched", extra={"practice": target.practice_id})
