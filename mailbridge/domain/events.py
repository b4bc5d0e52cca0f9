"""What happened, recorded as rows in the transaction that made it happen: the events table.

The domain, the pipeline and the workers say *what happened* here and nothing else; whoever listens
(the webhook worker today) reads the rows after the commit. So an event exists if and only if its
cause was committed (a transactional outbox), and the code that posts a message does not know who
is told about it.

``data`` holds ids and codes, never content: a message's text or a chart note is read when an event
is delivered to an endpoint that asked for content (``include_content``), so a permanent deletion
reaches webhooks too. Each emission point calls one function below in one line.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Table, insert
from sqlalchemy.orm import Session

from mailbridge.domain.db import note_written
from mailbridge.domain.models import (
    ChartNote,
    Event,
    MessageSource,
    Outbox,
    OutboxState,
    QuarantineItem,
    User,
    UserKind,
    new_event_id,
    utcnow,
)

# Every type an endpoint may subscribe to, and what each one means (docs/integration.md lists the payloads).
EVENT_TYPES: dict[str, str] = {
    "message.created": "a message was posted (from the app or by email); its conversation, author, internal flag",
    "message.refused": "an email to the practice was refused; the reason code, never the content",
    "quarantine.held": "an email was held for staff review",
    "quarantine.released": "staff released a held email: the message it posted",
    "quarantine.discarded": "staff discarded a held email (or its conversation was deleted)",
    "delivery.sent": "a notification email was accepted by the next mail server",
    "delivery.failed": "a notification email will not be delivered (refused, or retried until it expired)",
    "delivery.bounced": "a notification email bounced after it was sent",
    "address.suppressed": "an address gets no more email (hard bounce, or repeated soft bounces)",
    "address.unsuppressed": "an address gets email again",
    "mailbox.error": "an IMAP mailbox stopped working (connection or login failure)",
    "chart_note.created": "a quick note was saved to a client's chart notes",
    "webhook.disabled": "a webhook endpoint was disabled after failing for its whole retry schedule",
}


def record(
    session: Session,
    practice_id: int | None,
    type: str,
    conversation_id: str | None = None,
    **data: Any,
) -> Event:
    """Add the event to the caller's transaction: it commits with its cause, or not at all."""
    if type not in EVENT_TYPES:
        raise ValueError(f"unknown event type {type!r}")
    event = Event(practice_id=practice_id, type=type, conversation_id=conversation_id, data=data)
    session.add(event)
    return event


EVENTS: Table = Event.__table__  # type: ignore[assignment]
_INSERT = insert(EVENTS)


def write(
    session: Session,
    practice_id: int | None,
    type: str,
    conversation_id: str | None = None,
    **data: Any,
) -> None:
    """``record`` for the hot path (a posted reply): one INSERT now, in the caller's transaction,
    with no Event object to track and flush. The commit still wakes the webhook worker
    (``db.note_written``)."""
    if type not in EVENT_TYPES:
        raise ValueError(f"unknown event type {type!r}")
    session.connection().execute(
        _INSERT,
        {
            "id": new_event_id(),
            "practice_id": practice_id,
            "type": type,
            "conversation_id": conversation_id,
            "data": data,
            "created_at": utcnow(),
            "dispatched_at": None,
        },
    )
    note_written(session, Event)


# ---- one function per emission point ---------------------------------------------------------------


def message_created(
    session: Session,
    practice_id: int,
    *,
    conversation_id: str,
    message_id: str,
    author: str,
    author_kind: UserKind,
    source: MessageSource,
    internal: bool,
    attachments: int,
) -> None:
    """``author``: the author's external id."""
    write(
        session,
        practice_id,
        "message.created",
        conversation_id,
        conversation=conversation_id,
        message=message_id,
        author=author,
        author_kind=author_kind.value,
        source=source.value,
        internal=internal,
        attachments=attachments,
    )


def message_refused(
    session: Session,
    practice_id: int,
    *,
    inbound_id: str,
    door: str,
    reason: str,
    rule: str | None,
    conversation_id: str | None,
    sender: str | None,
) -> Event:
    """A refused email (the pipeline's final record): the reason code, never the content or addresses."""
    return record(
        session,
        practice_id,
        "message.refused",
        conversation_id,
        inbound=inbound_id,
        door=door,
        reason=reason,
        rule=rule,
        conversation=conversation_id,
        sender=sender,
    )


def quarantine_held(session: Session, item: QuarantineItem) -> Event:
    return record(
        session,
        item.practice_id,
        "quarantine.held",
        item.conversation_id,
        quarantine=item.id,
        inbound=item.inbound_id,
        reason=item.reason,
        conversation=item.conversation_id,
        route=item.route_address,
    )


def quarantine_decided(session: Session, item: QuarantineItem, actor: str, **outcome: Any) -> Event:
    """``quarantine.released`` or ``quarantine.discarded``, after the item's state changed."""
    posted_in = outcome.pop("conversation", None)
    conversation = item.conversation_id or posted_in
    return record(
        session,
        item.practice_id,
        f"quarantine.{item.state}",
        conversation,
        quarantine=item.id,
        reason=item.reason,
        actor=actor,
        conversation=conversation,
        **outcome,
    )


def delivery_result(session: Session, row: Outbox) -> Event | None:
    """``delivery.sent`` when a row is sent, ``delivery.failed`` when it will never be (refused or
    expired); nothing for a temporary failure that will be retried."""
    if row.state == OutboxState.sent:
        type = "delivery.sent"
    elif row.state in (OutboxState.failed, OutboxState.expired):
        type = "delivery.failed"
    else:
        return None
    return record(
        session,
        row.practice_id,
        type,
        row.conversation_id,
        delivery=row.id,
        kind=row.kind.value,
        message=row.message_id,
        conversation=row.conversation_id,
        recipient_id=row.recipient_id,  # shown as the user's external id when delivered
        state=row.state.value,
        attempts=row.attempts,
    )


def delivery_bounced(session: Session, row: Outbox, permanent: bool) -> Event:
    """A bounce matched to the notification it answers (through the signed VERP address)."""
    return record(
        session,
        row.practice_id,
        "delivery.bounced",
        row.conversation_id,
        delivery=row.id,
        kind=row.kind.value,
        message=row.message_id,
        conversation=row.conversation_id,
        recipient_id=row.recipient_id,
        permanent=permanent,
    )


def address_suppressed(session: Session, practice_id: int, address: str, reason: str) -> Event:
    """The address is the practice's directory data (which user to ask for a new one), not content."""
    return record(session, practice_id, "address.suppressed", address=address.lower(), reason=reason[:255])


def address_unsuppressed(session: Session, practice_id: int, address: str, reason: str = "") -> Event:
    return record(session, practice_id, "address.unsuppressed", address=address.lower(), reason=reason[:255])


def mailbox_error(session: Session, practice_id: int, mailbox: str, status: str) -> Event:
    """A mailbox went from working (or new) to failing; the error text stays in the API's mailbox status."""
    return record(session, practice_id, "mailbox.error", mailbox=mailbox, status=status)


def chart_note_created(session: Session, note: ChartNote, client: User, author: User) -> Event:
    return record(
        session,
        note.practice_id,
        "chart_note.created",
        note.conversation_id,
        chart_note=note.id,
        client=client.external_id,
        author=author.external_id,
        conversation=note.conversation_id,
    )
