"""Staff review of held mail: release posts exactly what the pipeline would have posted, judged now; or discard.

Release has no extraction of its own. It reads the stored raw message and runs the pipeline's own
steps on it (``parse_stored``, ``derive_post``, the attachment intake, ``post_key``), then posts
through ``conversations.post_message`` or ``pipeline.open_from_route``, the calls the pipeline's
store step makes, after asking the policy as its policy step does. So a staff member's ``#note``
stays an internal note (never shown or notified to a client), the trimmed quote stays hidden, files
are judged by the same rules, and a post the policy refuses now is refused (403 with its reason).

Held route mail from an unknown sender is released to an existing client, to the sender's directory
entry when there is exactly one, or to a new contact created on the spot from the sender's address
and display name. Every decision is an audit row (who, what, when, never the content), and the raw
copy goes once the decision is committed (``forget_raw``).
"""

from __future__ import annotations

import contextlib
import logging
import re
import secrets
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from mailbridge.domain import audit, directory, events, pagination
from mailbridge.domain import conversations as convs
from mailbridge.domain.conversations import NewAttachment
from mailbridge.domain.db import transaction
from mailbridge.domain.domains import domain_of, owns
from mailbridge.domain.erasure import raw_refs
from mailbridge.domain.errors import Conflict, Forbidden, Invalid, NotFound
from mailbridge.domain.fingerprint import Fingerprint
from mailbridge.domain.models import (
    AuditEvent,
    InboundLog,
    InboundState,
    Message,
    MessageSource,
    Practice,
    QuarantineItem,
    ReplyToken,
    Route,
    User,
    UserKind,
    utcnow,
)
from mailbridge.domain.practice_settings import PracticeSettings
from mailbridge.domain.routes import group_members
from mailbridge.inbound.answered import answered_fingerprints, message_ids
from mailbridge.inbound.mimestream import STREAM_THRESHOLD
from mailbridge.inbound.parse import ParsedMail, header_text, single_from
from mailbridge.inbound.pipeline import Post, body_hash, derive_post, open_from_route, parse_stored, post_key
from mailbridge.policy.rules import can_post
from mailbridge.storage.blobs import BlobStore
from mailbridge.storage.intake import Intake, intake_uploads, judge_uploads
from mailbridge.storage.objects import ObjectNotFoundError
from mailbridge.storage.vault import Vault

log = logging.getLogger(__name__)

# What each hold reason means, and what staff should do about it (shown beside the item).
REASON_TEXT: dict[str, str] = {
    "auth_not_aligned": (
        "The sender's address could not be verified: neither SPF nor DKIM passed for the domain in "
        "From, and this conversation requires it. Release it only if you know the sender wrote it."
    ),
    "ambiguous_sender": (
        "The sender's address belongs to more than one person in the practice's directory (a "
        "duplicate from before addresses were unique), so it was not attributed to anyone. Have the "
        "app give each person their own address, then release it to the right client."
    ),
    "unknown_sender": (
        "The sender is not in the practice's directory. If this is a genuine enquiry, release it to "
        "an existing client or to a new contact; otherwise discard it."
    ),
}

STATES = ("held", "released", "discarded")


@dataclass(frozen=True)
class NewContact:
    """A client created on release from the sender's address; the rest chosen by staff or derived."""

    external_id: str | None = None  # generated ("contact-…") when not given; returned to the caller
    name: str | None = None  # the From display name, else the address's local part
    locale: str | None = None  # the practice's locale when not given


@dataclass
class Released:
    message: Message
    inbound_id: str
    contact: User | None = None  # the client a route release opened the conversation with
    contact_created: bool = False


# ---- reading ------------------------------------------------------------------------------------------


def get_item(session: Session, practice: Practice, item_id: str) -> QuarantineItem:
    item = session.get(QuarantineItem, item_id)
    if item is None or item.practice_id != practice.id:
        raise NotFound("quarantine_not_found", "quarantined message not found")
    return item


def held_item(session: Session, practice: Practice, item_id: str) -> QuarantineItem:
    item = get_item(session, practice, item_id)
    if item.state != "held":
        raise Conflict("already_decided", f"already {item.state}")
    return item


def item_out(item: QuarantineItem, decision: AuditEvent | None = None) -> dict[str, object]:
    """The list's shape: the original fields, then what helps staff decide, then who decided."""
    summary: dict[str, Any] = item.summary or {}
    details: dict[str, Any] = (decision.details or {}) if decision is not None else {}
    return {
        "id": item.id,
        "reason": item.reason,
        "from": item.from_address,
        "subject": item.subject,
        "route": item.route_address,
        "conversation": item.conversation_id or details.get("conversation"),
        "state": item.state,
        "created_at": item.created_at,
        "decided_at": item.decided_at,
        "reason_text": REASON_TEXT.get(item.reason, item.reason),
        "from_name": summary.get("from_name"),
        "preview": summary.get("preview"),
        "preview_truncated": bool(summary.get("truncated", False)),
        "internal": bool(summary.get("internal", False)),
        "attachments": summary.get("attachments", []),
        "decided_by": decision.actor if decision is not None else None,
        "message": details.get("message"),
        "contact": details.get("contact"),
    }


ITEM_KEYS = (
    pagination.Key(QuarantineItem.created_at, "created_at"),
    pagination.Key(QuarantineItem.id, "id"),
)


def list_items(
    session: Session,
    practice: Practice,
    state: str,
    *,
    limit: int = pagination.DEFAULT_LIMIT,
    cursor: str | None = None,
) -> pagination.Page[dict[str, object]]:
    """A page of items in *state*, newest first (with who decided, for decided ones)."""
    if state not in STATES:
        raise Invalid("invalid_state", f"state is one of {', '.join(STATES)}", "state")
    query = select(QuarantineItem).where(
        QuarantineItem.practice_id == practice.id, QuarantineItem.state == state
    )
    page = pagination.page(session, query, ITEM_KEYS, limit=limit, cursor=cursor, descending=True)
    rows = page.items
    decisions = audit.last_actions(session, "quarantine", [r.id for r in rows]) if state != "held" else {}
    return pagination.Page([item_out(r, decisions.get(r.id)) for r in rows], page.next_cursor)


def describe(
    session: Session, practice: Practice, item_id: str, vault: Vault, fingerprint_key: bytes = b""
) -> dict[str, object]:
    """One item with what a release would post now: the visible text, the hidden part, the internal
    flag, and each file's verdict (nothing is stored; the console shows this beside the actions)."""
    item = get_item(session, practice, item_id)
    out = item_out(item, audit.last_actions(session, "quarantine", [item.id]).get(item.id))
    inbound = session.get(InboundLog, item.inbound_id)
    if item.state != "held" or inbound is None or not _raw_exists(inbound, vault):
        return out | {"body": None, "hidden": None, "body_html": None}
    settings = convs.practice_settings(practice)
    with _parsed(inbound, vault) as (parsed, _digest):
        sender = (
            _reply_author(session, item, inbound)
            if item.conversation_id
            else _known_client(session, practice, item.from_address)
        )
        sent = _answered(session, practice, item, parsed, sender)
        post = derive_post(parsed, sender, settings.note_marker, sent, fingerprint_key)
        files = [
            {
                "filename": verdict.filename,
                "content_type": verdict.sniffed_type,
                "declared_type": declared,
                "size": size,
                "accepted": verdict.accepted,
                "reason": verdict.reason,
                "explanation": verdict.explanation,
            }
            for verdict, declared, size in judge_uploads(settings, parsed.attachments)
        ]
    return out | {
        "body": post.body,
        "hidden": post.hidden,
        "body_html": post.body_html,
        "internal": post.internal,
        "attachments": files,
    }


# ---- deciding -----------------------------------------------------------------------------------------


def require_own_mail(session: Session, practice: Practice, item: QuarantineItem) -> None:
    """Mail a route caught on a domain that is not this practice's (held before ownership was
    enforced, issue 11 #6) is another's mail: it may be discarded, never released. Here, in the one
    release every door calls (the API and the console), so no door can skip it."""
    if item.route_address and not owns(session, practice, domain_of(item.route_address)):
        raise Conflict(
            "domain_not_owned", "this mail was sent to a domain that is not this practice's", "item"
        )


def staff_actor(session: Session, practice: Practice, external_id: str | None) -> audit.Actor:
    """The staff member deciding, named by ``?as=``: required, so every decision has someone behind it."""
    user = directory.get_actor(session, practice, external_id)
    if user.kind != UserKind.staff:
        raise Forbidden("staff_only", "only staff review quarantined mail", "as")
    convs.require_active_account(user)  # a deactivated account decides nothing
    return audit.Actor.staff(user)


def release(
    session: Session,
    blobs: BlobStore,
    practice: Practice,
    item_id: str,
    actor: audit.Actor,
    *,
    vault: Vault,
    client_ext: str | None = None,
    new_contact: NewContact | None = None,
    fingerprint_key: bytes = b"",
) -> Released:
    """Post the held mail as the pipeline would have, judged now, in the caller's transaction.

    A held reply posts into its conversation as the owner of the reply address it was sent to. Held
    route mail opens a conversation with the route's group, from ``client_ext``, a ``new_contact``,
    or the one client the directory now has at the sender's address. Call ``forget_raw`` after the
    commit.
    """
    item = held_item(session, practice, item_id)
    require_own_mail(session, practice, item)
    inbound = session.get_one(InboundLog, item.inbound_id)
    settings = convs.practice_settings(practice)
    source = MessageSource.imap if inbound.door == "imap" else MessageSource.email
    with _parsed(inbound, vault) as (parsed, digest):
        message_id = inbound.message_id_header or ""
        if item.conversation_id:
            if client_ext or new_contact:
                raise Invalid(
                    "not_route_mail", "a held reply posts as its sender; no client to choose", "client"
                )
            author = _reply_author(session, item, inbound)
            if author is None:
                raise Conflict("token_revoked", "the reply address this mail was sent to is no longer valid")
            reply_key = post_key(f"t{inbound.token_id}", message_id, digest)
            sent = _answered(session, practice, item, parsed, author)
            message = _release_reply(
                session,
                blobs,
                practice,
                item,
                author,
                parsed,
                settings,
                source,
                reply_key,
                sent,
                fingerprint_key,
            )
            contact, created = None, False
        else:
            route = session.scalar(
                select(Route).where(Route.practice_id == practice.id, Route.address == item.route_address)
            )
            contact, created = _route_sender(session, practice, item, parsed, client_ext, new_contact)
            key = post_key(f"r{route.id}:{item.from_address}", message_id, digest) if route else None
            message = _release_route(
                session, blobs, practice, route, contact, actor, parsed, settings, source, key
            )
    item.state = "released"
    item.decided_at = utcnow()
    inbound.state = InboundState.posted
    inbound.reason = "released_by_staff"
    inbound.posted_message_id = message.id
    inbound.conversation_id = message.conversation_id
    audit.record(
        session,
        practice,
        "quarantine_released",
        actor,
        "quarantine",
        item.id,
        {
            "message": message.id,
            "conversation": message.conversation_id,
            "contact": contact.external_id if contact is not None else None,
            "contact_created": created,
        },
    )
    events.quarantine_decided(
        session, item, actor.label, message=message.id, conversation=message.conversation_id
    )
    session.flush()
    return Released(message, inbound.id, contact, created)


def discard(session: Session, practice: Practice, item_id: str, actor: audit.Actor) -> str:
    """Never posted; the audit row keeps who and when. Returns the inbound id for ``forget_raw``."""
    item = held_item(session, practice, item_id)
    item.state = "discarded"
    item.decided_at = utcnow()
    inbound = session.get(InboundLog, item.inbound_id)
    if inbound is not None:
        inbound.reason = "discarded_by_staff"
    audit.record(session, practice, "quarantine_discarded", actor, "quarantine", item.id)
    events.quarantine_decided(session, item, actor.label)
    return item.inbound_id


def forget_raw(sessions: Any, vault: Vault, inbound_ids: Sequence[str]) -> None:
    """After a decision's commit: remove the raw copies (a posted message lives in the database; a
    discarded one nowhere). The rows stop naming them first, then the objects go: a crash in
    between leaves an object no row names, which the housekeeping sweep removes; a crash before
    this leaves the reference, and the retention purge (only held items are exempt) or a deletion
    removes it later. Never a row naming a missing object."""
    refs: list[str] = []
    with transaction(sessions) as session:
        for row in session.scalars(select(InboundLog).where(InboundLog.id.in_(list(inbound_ids)))):
            refs.extend(raw_refs(row))
            row.raw_path = None
            row.raw_ref = None
    for ref in refs:
        try:
            vault.delete(ref)
        except OSError:
            log.warning("raw_delete_failed", extra={"ref": ref}, exc_info=True)


# ---- the two kinds of release -------------------------------------------------------------------------


def _release_reply(
    session: Session,
    blobs: BlobStore,
    practice: Practice,
    item: QuarantineItem,
    author: User,
    parsed: ParsedMail,
    settings: PracticeSettings,
    source: MessageSource,
    key: str,
    sent: Sequence[Fingerprint] = (),
    fingerprint_key: bytes = b"",
) -> Message:
    conversation = convs.get_conversation(session, practice, str(item.conversation_id))
    post = _post(parsed, author, settings, sent, fingerprint_key)
    # The pipeline's policy step, on what is true now (before any file is stored).
    verdict = can_post(
        convs.post_situation(
            session,
            author,
            conversation,
            body=post.body,
            internal=post.internal,
            has_files=bool(parsed.attachments),
            by_email=True,  # a held email, posted as it would have been on arrival
        )
    )
    if not verdict.allowed:
        raise convs.PolicyDenied(verdict)
    _not_posted_yet(session, key)
    intake = _intake(blobs, settings, parsed, author.locale, practice.id)
    return _posting(
        session,
        blobs,
        intake.accepted,
        lambda: convs.post_message(
            session,
            practice,
            conversation,
            author,
            body=intake.with_withheld_line(post.body),
            body_html=post.body_html,
            hidden_text=post.hidden,
            internal=post.internal,
            source=source,
            attachments=intake.accepted,
            idempotency_key=key,
        ),
    )


def _release_route(
    session: Session,
    blobs: BlobStore,
    practice: Practice,
    route: Route | None,
    sender: User,
    actor: audit.Actor,
    parsed: ParsedMail,
    settings: PracticeSettings,
    source: MessageSource,
    key: str | None,
) -> Message:
    members = group_members(session, route) if route is not None else []
    if not members:  # the route is gone or has nobody: whoever released it takes the conversation
        if actor.user is None:
            raise Conflict("route_empty", "the route has no staff to open the conversation with")
        members = [actor.user]
    post = _post(parsed, sender, settings)
    if key is not None:
        _not_posted_yet(session, key)
    intake = _intake(blobs, settings, parsed, sender.locale, practice.id)
    return _posting(
        session,
        blobs,
        intake.accepted,
        lambda: open_from_route(
            session,
            practice,
            route,
            sender,
            members,
            subject=header_text(parsed.message, "Subject"),
            post=Post(intake.with_withheld_line(post.body), post.body_html, post.hidden, internal=False),
            source=source,
            attachments=intake.accepted,
            key=key,
        ),
    )


def _answered(
    session: Session, practice: Practice, item: QuarantineItem, parsed: ParsedMail, author: User | None
) -> list[Fingerprint]:
    """What the notifications a held reply answers said (the pipeline's own-copy cut needs them)."""
    if not item.conversation_id or author is None:
        return []
    references = message_ids(
        header_text(parsed.message, "In-Reply-To"), header_text(parsed.message, "References")
    )
    return list(
        answered_fingerprints(
            session,
            practice_id=practice.id,
            recipient_id=author.id,
            conversation_id=item.conversation_id,
            references=references,
        )
    )


def _post(
    parsed: ParsedMail,
    sender: User,
    settings: PracticeSettings,
    sent: Sequence[Fingerprint] = (),
    fingerprint_key: bytes = b"",
) -> Post:
    post = derive_post(parsed, sender, settings.note_marker, sent, fingerprint_key)
    if not post.body and not parsed.attachments:
        raise Invalid("empty_message", "the held message has no text and no files", None)
    return post


def _intake(
    blobs: BlobStore, settings: PracticeSettings, parsed: ParsedMail, locale: str, practice_id: int
) -> Intake:
    return intake_uploads(blobs, settings, parsed.attachments, locale, practice_id)


def _not_posted_yet(session: Session, key: str) -> None:
    """The same email posted already (delivered twice and both held, or posted by a retry)."""
    found = session.scalar(select(Message.id).where(Message.idempotency_key == key))
    if found is not None:
        raise Conflict("already_posted", "this email is already posted", None, {"message": found})


def _posting(
    session: Session, blobs: BlobStore, accepted: list[NewAttachment], post: Callable[[], Message]
) -> Message:
    """Post in a savepoint; if the post is refused, the files stored for it go (no orphan blobs)."""
    try:
        with session.begin_nested():
            return post()
    except IntegrityError as exc:
        _drop_blobs(session, blobs, accepted)
        raise Conflict("already_posted", "this email is already posted") from exc
    except BaseException:
        _drop_blobs(session, blobs, accepted)
        raise


def _drop_blobs(session: Session, blobs: BlobStore, accepted: list[NewAttachment]) -> None:
    for ref in convs.unreferenced(session, [a.storage_key or a.sha256 for a in accepted]):
        with contextlib.suppress(OSError):
            blobs.delete(ref)


# ---- who the mail is from -----------------------------------------------------------------------------


def _reply_author(session: Session, item: QuarantineItem, inbound: InboundLog) -> User | None:
    """The owner of the reply address, as the pipeline found them: the token must still be live, for
    this conversation, and its owner must still own the From address (else the pipeline would refuse)."""
    token = session.get(ReplyToken, inbound.token_id) if inbound.token_id is not None else None
    if token is None or token.revoked_at is not None or token.conversation_id != item.conversation_id:
        return None
    owner = session.get(User, token.user_id)
    if owner is None or not owner.owns_address(item.from_address):
        return None
    return owner


def _known_client(session: Session, practice: Practice, address: str) -> User | None:
    """The one client at this address; None when nobody, or several (never a guess), hold it."""
    users = directory.users_at(session, practice.id, address)
    return users[0] if len(users) == 1 and users[0].kind == UserKind.client else None


def _route_sender(
    session: Session,
    practice: Practice,
    item: QuarantineItem,
    parsed: ParsedMail,
    client_ext: str | None,
    new_contact: NewContact | None,
) -> tuple[User, bool]:
    if client_ext and new_contact is not None:
        raise Invalid("choose_one", "give either client or new_contact, not both", "client")
    if client_ext:
        client = directory.get_user(session, practice, client_ext, "client")
        if client.kind != UserKind.client:
            raise Invalid("client_required", "the chosen user is not a client", "client")
        return client, False
    if new_contact is not None:
        return _create_contact(session, practice, item.from_address, parsed, new_contact), True
    known = _known_client(session, practice, item.from_address)
    if known is None:
        raise Invalid(
            "client_required",
            "choose the client this conversation is with, or ask for a new contact",
            "client",
        )
    return known, False


_CONTACT_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:@+-]{0,127}$")
# An address we may later put in a To field: an unquoted addr-spec, nothing that could end a header.
_PLAIN_ADDRESS = re.compile(r"^[A-Za-z0-9!#$%&'*+/=?^_`{|}~.-]{1,64}@[A-Za-z0-9.-]{1,253}$")
_INVISIBLE = re.compile(r"[\x00-\x1f\x7f\u200b-\u200f\u202a-\u202e\u2060-\u2069\ufeff]")


def _create_contact(
    session: Session, practice: Practice, address: str, parsed: ParsedMail, spec: NewContact
) -> User:
    """A client from the sender's address and display name; the caller learns its external id."""
    if not _PLAIN_ADDRESS.match(address) or ".." in address:
        raise Invalid("contact_address_unusable", "the sender's address cannot receive notifications", None)
    owners = [u.external_id for u in directory.users_at(session, practice.id, address)]
    if owners:
        raise Conflict(
            "contact_exists",
            "this address already belongs to someone in the directory: release to them with client",
            "new_contact",
            {"users": sorted(owners)},
        )
    external_id = spec.external_id or f"contact-{secrets.token_hex(6)}"
    if not _CONTACT_ID.match(external_id):
        raise Invalid(
            "invalid_request", "external_id: letters, digits and ._:@+- only", "new_contact.external_id"
        )
    if session.scalar(
        select(User.id).where(User.practice_id == practice.id, User.external_id == external_id)
    ):
        raise Conflict("user_exists", f"user {external_id!r} already exists", "new_contact.external_id")
    sender = single_from(parsed.message)
    shown = " ".join(_INVISIBLE.sub("", sender.display_name if sender is not None else "").split())
    name = (spec.name or shown or address.partition("@")[0])[:255]
    user, _ = directory.upsert_user(
        session,
        practice,
        external_id,
        email=address,
        alt_emails=[],
        name=name,
        kind=UserKind.client,
        role=None,
        active=True,
        locale=spec.locale or practice.locale,
    )
    return user


# ---- the raw message ----------------------------------------------------------------------------------


def _raw_ref(inbound: InboundLog) -> str | None:
    return inbound.raw_ref or inbound.raw_path  # raw_path: rows written before object storage


def _raw_exists(inbound: InboundLog, vault: Vault) -> bool:
    ref = _raw_ref(inbound)
    return bool(ref) and vault.exists(str(ref))


@contextlib.contextmanager
def _parsed(inbound: InboundLog, vault: Vault) -> Iterator[tuple[ParsedMail, str]]:
    """The held mail, fetched from the object store (whichever node received it) to a local
    temporary file, parsed as the pipeline parses it; with its body hash (the idempotency key's)."""
    ref = _raw_ref(inbound)
    if not ref:
        raise Conflict("raw_expired", "the held message is no longer kept")
    with contextlib.ExitStack() as stack:
        try:
            path = stack.enter_context(vault.local_copy(ref))
        except ObjectNotFoundError as exc:
            raise Conflict("raw_expired", "the held message is no longer kept") from exc
        # In memory below the pipeline's streaming threshold, as the pipeline reads it; streamed above.
        raw = path.read_bytes() if path.stat().st_size <= STREAM_THRESHOLD else None
        digest = body_hash(raw, path)
        parsed, cleanup = parse_stored(raw, path, vault.spool_dir)
        stack.callback(cleanup)
        yield parsed, digest


__all__ = [
    "REASON_TEXT",
    "NewContact",
    "Released",
    "describe",
    "discard",
    "forget_raw",
    "get_item",
    "item_out",
    "list_items",
    "release",
    "require_own_mail",
    "staff_actor",
]
