"""Permanent deletion reaches every copy of the content: raw mail on disk, log headers, quarantine items.

Seed 003: "Once deleted please keep in mind this action is permanent and cannot be recovered." A
message that came by email leaves copies beside its own row: the raw ``.eml`` (kept while a reply
waits in quarantine, and for the retention period when it was refused), the inbound log's From,
envelope sender, Message-ID, Authentication-Results and per-attachment details, the quarantine
item's subject, sender and summary, and the notices it caused (their payload names its files).
``conversations.delete_*`` erase the message rows and report the attachment blobs no row references
any more; this module erases the rest. What stays is the
shape of what happened (when, which door, the decision and its reason, sizes) and the audit rows,
never text written by a person.

Raw files are unlinked inside the caller's transaction, before its commit: if the commit then fails,
the content is still in the database and the deletion can be repeated, whereas a file left behind
after a committed deletion would be found by nobody.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from pathlib import Path

from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from mailbridge.domain import audit
from mailbridge.domain.models import (
    InboundLog,
    Outbox,
    OutboxKind,
    OutboxState,
    Practice,
    QuarantineItem,
    ReplyToken,
    utcnow,
)

ERASED = {"erased": True}


def _unlink(path: str | None) -> None:
    if path:
        with contextlib.suppress(OSError):
            Path(path).unlink(missing_ok=True)


def erase_item(item: QuarantineItem) -> None:
    item.from_address = ""
    item.subject = ""
    item.summary = None


def erase_notices(session: Session, rows: Sequence[InboundLog]) -> None:
    """The notices these emails caused (a file withheld, a reply refused) name the sender's files and
    the email's Message-ID in their payload: erased too, and a notice not sent yet is not sent."""
    wanted: dict[tuple[int, str], set[str]] = {}
    for row in rows:
        said = (row.details or {}).get("message_id") or row.message_id_header
        sender = row.from_header or row.mail_from
        if row.practice_id is not None and said and sender:
            wanted.setdefault((row.practice_id, sender.lower()), set()).add(str(said))
    for (practice_id, sender), message_ids in wanted.items():
        notices = session.scalars(
            select(Outbox).where(
                Outbox.practice_id == practice_id,
                Outbox.to_address == sender,
                Outbox.kind == OutboxKind.notice,
            )
        ).all()
        for notice in notices:
            payload = notice.payload or {}
            if str(payload.get("in_reply_to") or "") not in message_ids:
                continue
            notice.payload = {"reason": payload.get("reason"), "locale": payload.get("locale"), **ERASED}
            if notice.state == OutboxState.pending:
                notice.state = OutboxState.failed
                notice.last_answer = "cancelled: message deleted"


def erase_rows(session: Session, rows: Sequence[InboundLog]) -> list[QuarantineItem]:
    """Erase what these inbound rows and their quarantine items hold of the mail; returns those items."""
    erase_notices(session, rows)
    for row in rows:
        _unlink(row.raw_path)
        row.raw_path = None
        row.mail_from = ""
        row.from_header = None
        row.message_id_header = None
        row.auth_results = None
        row.details = dict(ERASED)
    ids = [row.id for row in rows]
    if not ids:
        return []
    items = list(session.scalars(select(QuarantineItem).where(QuarantineItem.inbound_id.in_(ids))).all())
    for item in items:
        erase_item(item)
    return items


def for_messages(session: Session, message_ids: Sequence[str]) -> None:
    """A deleted message's own email: the inbound rows that posted it (a released reply included)."""
    if not message_ids:
        return
    rows = session.scalars(
        select(InboundLog).where(InboundLog.posted_message_id.in_(list(message_ids)))
    ).all()
    erase_rows(session, rows)


def for_conversation(
    session: Session,
    practice: Practice,
    conversation_id: str,
    message_ids: Sequence[str],
    actor: audit.Actor,
) -> None:
    """Every email that was, or tried to be, part of a deleted conversation: posted, refused or held.

    Refused replies are found through their reply token (the log row names the token, not the
    conversation); a reply still held for review quotes the conversation, so it is discarded and
    erased too, with an audit row saying why.
    """
    tokens = select(ReplyToken.id).where(ReplyToken.conversation_id == conversation_id)
    held_here = select(QuarantineItem.inbound_id).where(QuarantineItem.conversation_id == conversation_id)
    conditions = [
        InboundLog.conversation_id == conversation_id,
        InboundLog.token_id.in_(tokens),
        InboundLog.id.in_(held_here),
    ]
    if message_ids:
        conditions.append(InboundLog.posted_message_id.in_(list(message_ids)))
    rows = session.scalars(
        select(InboundLog).where(InboundLog.practice_id == practice.id, or_(*conditions))
    ).all()
    for item in erase_rows(session, rows):
        if item.state == "held":
            item.state = "discarded"
            item.decided_at = utcnow()
            audit.record(
                session,
                practice,
                "quarantine_discarded",
                actor,
                "quarantine",
                item.id,
                {"cause": "conversation_deleted"},
            )
