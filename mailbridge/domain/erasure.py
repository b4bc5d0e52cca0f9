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

Raw copies live in the object store (``storage.vault``), which any node reads. The rows stop
naming them in the caller's transaction, and the caller deletes the objects once it committed
(``for_messages``/``for_conversation`` return their references): a row never names a missing
object, and an object left behind by a crash between the commit and the delete is named by no row,
which the housekeeping sweep removes.
"""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from mailbridge.domain import audit, events
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


def erase_item(item: QuarantineItem) -> None:
    item.from_address = ""
    item.subject = ""
    item.summary = None


def raw_refs(row: InboundLog) -> list[str]:
    """The stored raw copies a row names (the object, and a pre-upgrade path)."""
    return [ref for ref in (row.raw_ref, row.raw_path) if ref]


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


def erase_rows(
    session: Session, rows: Sequence[InboundLog], raw: list[str] | None = None
) -> list[QuarantineItem]:
    """Erase what these inbound rows and their quarantine items hold of the mail; returns those items.
    The raw copies' references are appended to *raw*, to delete after the commit."""
    erase_notices(session, rows)
    for row in rows:
        if raw is not None:
            raw.extend(raw_refs(row))
        row.raw_path = None
        row.raw_ref = None
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


def for_messages(session: Session, message_ids: Sequence[str]) -> list[str]:
    """A deleted message's own email: the inbound rows that posted it (a released reply included).
    Returns the raw copies to delete after the commit."""
    if not message_ids:
        return []
    rows = session.scalars(
        select(InboundLog).where(InboundLog.posted_message_id.in_(list(message_ids)))
    ).all()
    raw: list[str] = []
    erase_rows(session, rows, raw)
    return raw


def for_conversation(
    session: Session,
    practice: Practice,
    conversation_id: str,
    message_ids: Sequence[str],
    actor: audit.Actor,
) -> list[str]:
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
    raw: list[str] = []
    for item in erase_rows(session, rows, raw):
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
            events.quarantine_decided(session, item, actor.label, cause="conversation_deleted")
    return raw
