"""Staff review of held mail: release into a conversation (through the same body and attachment steps) or discard."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from mailbridge.domain import conversations as convs
from mailbridge.domain import directory
from mailbridge.domain.errors import Conflict, Invalid, NotFound
from mailbridge.domain.models import (
    Conversation,
    ConversationKind,
    InboundLog,
    InboundState,
    Message,
    MessageSource,
    Practice,
    QuarantineItem,
    Route,
    User,
    UserAddress,
    UserKind,
    utcnow,
)
from mailbridge.domain.practice_settings import PracticeSettings
from mailbridge.inbound.body import extract_reply, extract_reply_from_html, sanitize_html
from mailbridge.inbound.parse import header_text, parse_mail
from mailbridge.storage.blobs import BlobStore
from mailbridge.storage.intake import intake_uploads
from mailbridge.storage.raw import forget_raw, read_raw


def get_item(session: Session, practice: Practice, item_id: str) -> QuarantineItem:
    item = session.get(QuarantineItem, item_id)
    if item is None or item.practice_id != practice.id:
        raise NotFound("quarantine_not_found", "quarantined message not found")
    if item.state != "held":
        raise Conflict("already_decided", f"already {item.state}")
    return item


def item_out(item: QuarantineItem) -> dict[str, object]:
    return {
        "id": item.id,
        "reason": item.reason,
        "from": item.from_address,
        "subject": item.subject,
        "route": item.route_address,
        "conversation": item.conversation_id,
        "state": item.state,
        "created_at": item.created_at,
        "decided_at": item.decided_at,
    }


def release(
    session: Session,
    blobs: BlobStore,
    practice: Practice,
    item_id: str,
    client_ext: str | None,
    actor_ext: str | None,
) -> Message:
    """A held reply posts into its conversation as its sender; held route mail opens one with the chosen client.

    *actor_ext* is the staff member deciding (the API's ``as``); None when an operator of the console
    decides, whom the console has authorised and audits itself."""
    item = get_item(session, practice, item_id)
    actor = directory.get_user(session, practice, actor_ext, "as") if actor_ext is not None else None
    if actor is not None and actor.kind != UserKind.staff:
        raise Invalid("staff_only", "only staff review quarantined mail", "as")
    inbound = session.get_one(InboundLog, item.inbound_id)
    parsed = parse_mail(read_raw(inbound))
    extracted = (
        extract_reply(parsed.text)
        if parsed.text and parsed.text.strip()
        else extract_reply_from_html(parsed.html or "")
    )
    settings = PracticeSettings.model_validate(practice.settings or {})
    if item.conversation_id:
        conversation = session.get_one(Conversation, item.conversation_id)
        author = _sender(session, practice, item.from_address)
        intake = intake_uploads(blobs, settings, parsed.attachments, author.locale)
        message = convs.post_message(
            session,
            practice,
            conversation,
            author,
            body=intake.with_withheld_line(extracted.visible.strip()),
            body_html=sanitize_html(parsed.html) if parsed.html and not parsed.text else None,
            hidden_text=extracted.hidden or None,
            source=MessageSource.email,
            attachments=intake.accepted,
        )
    else:
        if not client_ext:
            raise Invalid("client_required", "choose the client this conversation is with", "client")
        client = directory.get_user(session, practice, client_ext, "client")
        if client.kind != UserKind.client:
            raise Invalid("client_required", "the chosen user is not a client", "client")
        route = session.scalar(select(Route).where(Route.address == item.route_address))
        from mailbridge.domain.routes import group_members

        members = group_members(session, route) if route else [actor] if actor else []
        intake = intake_uploads(blobs, settings, parsed.attachments, client.locale)
        _, message = convs.create_conversation(
            session,
            practice,
            kind=ConversationKind.private,
            company=None,
            subject=header_text(parsed.message, "Subject")[:255] or "(no subject)",
            author=client,
            participants=[m for m in members if m.id != client.id],
            body=intake.with_withheld_line(extracted.visible.strip()),
            source=MessageSource.email,
            attachments=intake.accepted,
        )
    item.state = "released"
    item.decided_at = utcnow()
    inbound.state = InboundState.posted
    inbound.reason = "released_by_staff"
    inbound.posted_message_id = message.id
    session.flush()
    return message


def discard(session: Session, practice: Practice, item_id: str) -> None:
    item = get_item(session, practice, item_id)
    item.state = "discarded"
    item.decided_at = utcnow()
    inbound = session.get(InboundLog, item.inbound_id)
    if inbound is not None and inbound.raw_path:
        forget_raw(inbound)
        inbound.reason = "discarded_by_staff"


def new_contact(session: Session, practice: Practice, address: str, name: str) -> User:
    """A client created on the spot for a stranger's enquiry to a route, so it can be released to them.

    The external id is ``contact-`` and a random suffix; the messaging app finds the new client in
    its next directory sync (or the API) and may merge it with a record of its own."""
    from mailbridge.domain.models import new_id

    address = address.strip().lower()
    if "@" not in address or any(c in address for c in " \r\n<>"):
        raise Invalid("invalid_address", "not an email address", "address")
    existing = session.scalar(
        select(User)
        .join(UserAddress, UserAddress.user_id == User.id)
        .where(UserAddress.practice_id == practice.id, UserAddress.address == address)
    )
    if existing is not None:
        raise Conflict("contact_exists", f"{existing.external_id} already has this address")
    user, _ = directory.upsert_user(
        session,
        practice,
        f"contact-{new_id()[:12]}",
        email=address,
        alt_emails=[],
        name=(name.strip() or address)[:255],
        kind=UserKind.client,
        role=None,
        active=True,
        locale=practice.locale,
    )
    return user


def _sender(session: Session, practice: Practice, address: str) -> User:
    user = session.scalar(
        select(User)
        .join(UserAddress, UserAddress.user_id == User.id)
        .where(UserAddress.practice_id == practice.id, UserAddress.address == address.lower())
    )
    if user is None:
        raise Conflict("sender_unknown", "the sender is no longer in the directory")
    return user
