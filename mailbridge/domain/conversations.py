"""Conversations and messages: the one place that creates, posts and deletes, for the app and for email alike.

Every post goes through ``post_message`` which asks the policy, writes the message, its attachment
rows and the notifications to send (transactional outbox) in the caller's transaction. A reply by
email, the hot path (issue 17), goes through ``post_reply``: the same policy, rows and fan-out, from
plain rows read in one Core statement (``post_view``) instead of ORM entities.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Table, Text, and_, bindparam, cast, func, insert, select, update
from sqlalchemy.orm import Session, contains_eager, lazyload, make_transient_to_detached
from sqlalchemy.orm.attributes import set_committed_value

from mailbridge.domain import audit, erasure, events, pagination, suppressions
from mailbridge.domain.directory import friendship_of, holders_of
from mailbridge.domain.errors import Forbidden, Invalid, NotFound
from mailbridge.domain.models import (
    Attachment,
    Company,
    Conversation,
    ConversationKind,
    Favorite,
    Message,
    MessageSource,
    NotificationMute,
    Participant,
    Practice,
    StaffRole,
    Suppression,
    User,
    UserKind,
    new_id,
    utcnow,
)
from mailbridge.domain.practice_settings import PracticeSettings, settings_from_json
from mailbridge.domain.suppressions import Block
from mailbridge.domain.visibility import readable_by
from mailbridge.policy.rules import (
    Joining,
    Membership,
    Person,
    Situation,
    Verdict,
    account_verdict,
    can_change_members,
    can_join,
    can_post,
    can_read,
    can_read_message,
    is_read_refusal,
)

MAX_SUBJECT = 255


@dataclass(frozen=True, slots=True)
class NewAttachment:
    """An attachment already checked and written to the blob store, waiting for its row."""

    filename: str
    content_type: str
    declared_type: str
    size: int
    sha256: str
    content_id: str | None = None
    storage_key: str | None = None  # the blob store's reference (None: the legacy hash-named file)


# Policy refusals about what is posted rather than who posts: invalid input (422), not 403.
INPUT_REASONS = {"body_too_short": "body"}


class PolicyDenied(Forbidden):
    """The policy's refusal: 403 with its reason code, or 422 for a refusal of the input itself
    (docs/api.md: one status per class of error). The rule's name stays out of the text."""

    def __init__(self, verdict: Verdict) -> None:
        super().__init__(
            verdict.reason, "not allowed by the conversation's rules", INPUT_REASONS.get(verdict.reason)
        )
        if verdict.reason in INPUT_REASONS:
            self.status = 422
        self.verdict = verdict


def practice_settings(practice: Practice) -> PracticeSettings:
    return PracticeSettings.model_validate(practice.settings or {})


def _person(user: User, holds_company: bool) -> Person:
    return Person(
        id=user.id,
        kind=user.kind.value,
        role=user.role.value if user.role else None,
        active=user.active,
        holds_company=holds_company,
    )


@dataclass(frozen=True)
class KnownHolders:
    """Which of *covered* hold the conversation's company among their favourites, read with the
    conversation (``conversation_for_policy``): ``situation`` asks again only for anyone else."""

    covered: frozenset[int]
    holders: frozenset[int]


# ``conversation_for_policy``'s statement, built once: building an ORM select cost more CPU than
# SQLite takes to run it (issue 17). The conversation's company and creator are left to load when
# asked for: the policy reads their ids only.
_POLICY_READ = (
    select(Conversation, Favorite.user_id)
    .outerjoin(Conversation.participants)
    .outerjoin(Participant.user)
    .outerjoin(
        Favorite,
        and_(Favorite.company_id == Conversation.company_id, Favorite.user_id == Participant.user_id),
    )
    .where(Conversation.id == bindparam("conversation_id"))
    .options(
        contains_eager(Conversation.participants).contains_eager(Participant.user),
        lazyload(Conversation.company),
        lazyload(Conversation.creator),
    )
    .execution_options(populate_existing=True)
)


def conversation_for_policy(
    session: Session, conversation_id: str
) -> tuple[Conversation | None, KnownHolders]:
    """The conversation, its company, its participants with their users and which of them hold its
    company among their favourites: everything ``situation`` reads, in ONE statement (it took three:
    the conversation, its participants, the favourites). Rows already loaded are refreshed
    (``populate_existing``): the policy is judged on what the database says now."""
    rows = session.execute(_POLICY_READ, {"conversation_id": conversation_id}).unique().all()
    if not rows:
        return None, KnownHolders(frozenset(), frozenset())
    conversation = rows[0][0]
    covered = frozenset(p.user_id for p in conversation.participants)
    return conversation, KnownHolders(covered, frozenset(uid for _, uid in rows if uid is not None))


@dataclass(frozen=True, slots=True)
class Member:
    """A participant as a post by email reads it (``post_view``): plain values, no ORM entity."""

    id: int
    external_id: str
    email: str
    kind: UserKind
    role: StaffRole | None
    active: bool
    portal_account: bool
    removed: bool
    holds_company: bool
    muted: bool
    block: Block | None  # the suppression stopping mail to ``email`` now, if SQL could compare it


@dataclass(frozen=True, slots=True)
class PostView:
    """What the final transaction of a reply by email reads, in ONE Core statement (``post_view``):
    the conversation, its practice's settings, every participant with their user, whether they
    hold the conversation's company, muted it, or have their address suppressed. Plain rows are
    several times cheaper than loading and refreshing ORM entities (issue 17); the rules they are
    judged by are the same (``policy.rules``, ``fanout.fan_out``)."""

    id: str
    practice_id: int
    practice_slug: str
    kind: ConversationKind
    company_id: int | None
    deleted: bool
    settings: PracticeSettings
    members: tuple[Member, ...]

    def member(self, user_id: int) -> Member | None:
        return next((m for m in self.members if m.id == user_id), None)


_C: Table = Conversation.__table__  # type: ignore[assignment]
_P: Table = Practice.__table__  # type: ignore[assignment]
_PT: Table = Participant.__table__  # type: ignore[assignment]
_U: Table = User.__table__  # type: ignore[assignment]
_F: Table = Favorite.__table__  # type: ignore[assignment]
_M: Table = NotificationMute.__table__  # type: ignore[assignment]
_S: Table = Suppression.__table__  # type: ignore[assignment]
# One row per participant at most in each outer join (unique keys): favourites (user, company),
# mutes (user, conversation), suppressions (practice, address).
_POST_VIEW = (
    select(
        _C.c.practice_id,
        _C.c.kind,
        _C.c.company_id,
        _C.c.deleted_at,
        _P.c.slug,
        cast(_P.c.settings, Text).label("settings_text"),  # validated once per text: settings_from_json
        _PT.c.user_id,
        _PT.c.removed_at,
        _U.c.external_id,
        _U.c.email,
        _U.c.kind.label("user_kind"),
        _U.c.role,
        _U.c.active,
        _U.c.portal_account,
        _F.c.user_id.label("holds"),
        _M.c.user_id.label("muted"),
        _S.c.reason,
        _S.c.status,
        _S.c.first_seen,
    )
    .select_from(
        _C.join(_P, _P.c.id == _C.c.practice_id)
        .outerjoin(_PT, _PT.c.conversation_id == _C.c.id)
        .outerjoin(_U, _U.c.id == _PT.c.user_id)
        .outerjoin(_F, and_(_F.c.company_id == _C.c.company_id, _F.c.user_id == _PT.c.user_id))
        .outerjoin(_M, and_(_M.c.conversation_id == _C.c.id, _M.c.user_id == _PT.c.user_id))
        .outerjoin(
            _S,
            and_(
                _S.c.practice_id == _C.c.practice_id,
                _S.c.address == func.lower(_U.c.email),
                suppressions.suppressing(bindparam("now")),
            ),
        )
    )
    .where(_C.c.id == bindparam("conversation_id"))
)


def post_view(session: Session, conversation_id: str) -> PostView | None:
    """The conversation as a reply's final transaction judges and notifies it (``PostView``), read
    now, in the caller's transaction; None when it is gone. A suppression is read here only for an
    address SQL compares exactly (``suppressions.sql_comparable``): the fan-out looks up the others."""
    rows = (
        session.connection().execute(_POST_VIEW, {"conversation_id": conversation_id, "now": utcnow()}).all()
    )
    if not rows:
        return None
    first = rows[0]
    members = tuple(
        Member(
            id=row.user_id,
            external_id=row.external_id,
            email=row.email,
            kind=row.user_kind,
            role=row.role,
            active=row.active,
            portal_account=row.portal_account,
            removed=row.removed_at is not None,
            holds_company=row.holds is not None,
            muted=row.muted is not None,
            block=Block(row.reason, row.status, row.first_seen) if row.reason is not None else None,
        )
        for row in rows
        if row.user_id is not None
    )
    return PostView(
        id=conversation_id,
        practice_id=first.practice_id,
        practice_slug=first.slug,
        kind=first.kind,
        company_id=first.company_id,
        deleted=first.deleted_at is not None,
        settings=settings_from_json(first.settings_text),
        members=members,
    )


def _snapshot(
    actor: Person,
    kind: ConversationKind,
    participants: tuple[Person, ...],
    *,
    deleted: bool,
    friendship: str | None,
    settings: PracticeSettings,
    internal: bool,
    body: str,
    is_reply: bool,
    by_email: bool,
) -> Situation:
    """The one place a ``Situation`` is put together, from entities (``situation``) or from a
    reply's plain rows (``view_situation``)."""
    return Situation(
        actor=actor,
        kind=kind.value,
        participants=participants,
        deleted=deleted,
        friendship=friendship,  # type: ignore[arg-type]
        internal=internal,
        body_chars=len(body.strip()),
        min_body_chars=settings.min_body_chars,
        group_privacy=settings.group_privacy,
        is_reply=is_reply,
        by_email=by_email,
    )


def _member_person(member: Member) -> Person:
    return Person(
        id=member.id,
        kind=member.kind.value,
        role=member.role.value if member.role else None,
        active=member.active,
        holds_company=member.holds_company,
    )


def view_situation(
    session: Session, view: PostView, actor: Member, *, body: str, internal: bool, has_files: bool
) -> Situation:
    """``post_situation`` for a reply by email, from its ``PostView`` (*actor* is one of its members)."""
    members = [m for m in view.members if not m.removed]
    friendship = None
    if view.kind == ConversationKind.direct and len(members) == 2:
        found = friendship_of(session, members[0].id, members[1].id)
        friendship = found.state.value if found else None
    return _snapshot(
        _member_person(actor),
        view.kind,
        tuple(_member_person(m) for m in members),
        deleted=view.deleted,
        friendship=friendship,
        settings=view.settings,
        internal=internal,
        body=_effective_body(body, has_files),
        is_reply=True,
        by_email=True,
    )


def situation(
    session: Session,
    actor: User,
    conversation: Conversation,
    *,
    internal: bool = False,
    body: str = "",
    is_reply: bool = True,
    by_email: bool = False,
    known: KnownHolders | None = None,
) -> Situation:
    """A fresh snapshot of everything the policy looks at: favourites removed yesterday matter today.
    ``by_email``: the post being judged arrives by email (external agents post no other way).
    ``known``: favourites read with the conversation in the same transaction (no second read)."""
    members = [p.user for p in conversation.active_participants()]
    holders: set[int] = set()
    if conversation.company_id is not None:
        ids = [u.id for u in members] + [actor.id]
        if known is not None:
            holders = set(known.holders)
            ids = [i for i in ids if i not in known.covered]
        if ids:
            holders |= holders_of(session, conversation.company_id, ids)
    friendship = None
    if conversation.kind == ConversationKind.direct and len(members) == 2:
        found = friendship_of(session, members[0].id, members[1].id)
        friendship = found.state.value if found else None
    settings = practice_settings(session.get_one(Practice, conversation.practice_id))
    return _snapshot(
        _person(actor, actor.id in holders),
        conversation.kind,
        tuple(_person(u, u.id in holders) for u in members),
        deleted=conversation.deleted_at is not None,
        friendship=friendship,
        settings=settings,
        internal=internal,
        body=body,
        is_reply=is_reply,
        by_email=by_email,
    )


def get_conversation(session: Session, practice: Practice, conversation_id: str) -> Conversation:
    conversation = session.get(Conversation, conversation_id)
    if conversation is None or conversation.practice_id != practice.id:
        raise NotFound("conversation_not_found", "conversation not found")
    return conversation


def readable(session: Session, actor: User, conversation: Conversation) -> Verdict:
    return can_read(situation(session, actor, conversation))


def conversation_not_found() -> NotFound:
    return NotFound("conversation_not_found", "conversation not found")


def conversation_for(session: Session, practice: Practice, conversation_id: str, actor: User) -> Conversation:
    """The conversation, if the actor may read it (the read rules). One they may not read answers
    exactly as one that does not exist (404 ``conversation_not_found``): a refusal would tell them it
    exists. A deactivated account is told so first (403 ``account_inactive``), whatever it asks for."""
    require_active_account(actor)
    conversation = get_conversation(session, practice, conversation_id)
    if not readable(session, actor, conversation).allowed:
        raise conversation_not_found()
    return conversation


def validate_new_conversation(
    kind: ConversationKind,
    company: Company | None,
    subject: str,
    author: User,
    participants: Sequence[User],
    holders: Collection[int] = frozenset(),
) -> None:
    """``holders``: who among the author and participants follows ``company``."""
    if len(subject) > MAX_SUBJECT:
        raise Invalid("subject_too_long", f"subject longer than {MAX_SUBJECT} characters", "subject")
    if kind in (ConversationKind.company, ConversationKind.confidential) and company is None:
        raise Invalid("company_required", f"a {kind.value} conversation needs a company", "company")
    if kind in (ConversationKind.private, ConversationKind.direct) and company is not None:
        raise Invalid("company_not_allowed", f"a {kind.value} conversation has no company", "company")
    ids = [u.id for u in participants]
    if len(ids) != len(set(ids)):
        raise Invalid("duplicate_participants", "participants contain duplicates", "participants")
    members = {u.id: u for u in [author, *participants]}
    if kind == ConversationKind.direct and author.kind != UserKind.staff:
        raise Invalid("direct_staff_only", "direct conversations are between two staff", "participants")
    require_may_join(
        kind, [(author, None), *((u, author) for u in participants if u.id != author.id)], holders
    )
    if kind == ConversationKind.direct and len(members) != 2:
        raise Invalid("direct_two_people", "a direct conversation has exactly two people", "participants")
    if len(members) < 2:
        raise Invalid("no_recipient", "a conversation needs at least one other participant", "participants")


def require_may_join(
    kind: ConversationKind, joins: Sequence[tuple[User, User | None]], holders: Collection[int]
) -> None:
    """The joining rules (``policy.rules.can_join``) for each (person, added by) pair, whichever door
    makes them a participant: a direct channel is between two staff (422 ``direct_staff_only``); an
    external agent joins only when staff add them (403 ``external_added_by_staff``); a confidential
    conversation takes only clients of its company (422 ``client_not_following_company``, naming
    every such client in ``participants``). ``holders``: who follows the conversation's company."""
    outside: list[str] = []
    for user, added_by in joins:
        verdict = can_join(
            Joining(
                kind=kind.value,
                person=_person(user, user.id in holders),
                added_by=_person(added_by, False) if added_by is not None else None,
            )
        )
        if verdict.allowed:
            continue
        if verdict.reason == "client_not_following_company":
            outside.append(user.external_id)
            continue
        raise _refusal(verdict, "participants")
    if outside:
        raise _outside_company(outside)


def _outside_company(external_ids: Sequence[str]) -> Invalid:
    names = sorted(external_ids)
    return Invalid(
        "client_not_following_company",
        "these clients do not have the conversation's company among their favourites and could "
        f"not read it: {', '.join(names)}",
        "participants",
        {"participants": names},
    )


# What each refusal of the joining and membership rules answers: the actor may not (403), or the
# conversation would break a rule of its kind (422). Anything else the rules say is 403.
_INVALID_MEMBERSHIP = {
    "direct_staff_only": "direct conversations are between two staff",
    "direct_two_people": "a direct conversation has exactly two people, the two friends",
    "creator_stays": "the staff member who started the conversation stays in it",
    "no_recipient": "a conversation needs at least one other participant",
    "private_has_client": "a private conversation with a client takes no other client (group "
    "privacy): they would read what that client wrote; start a new conversation",
}


def _refusal(verdict: Verdict, field: str) -> Forbidden | Invalid:
    if verdict.reason in _INVALID_MEMBERSHIP:
        return Invalid(verdict.reason, _INVALID_MEMBERSHIP[verdict.reason], field)
    return Forbidden(verdict.reason, "not allowed by the conversation's rules", field)


def create_conversation(
    session: Session,
    practice: Practice,
    *,
    kind: ConversationKind,
    company: Company | None,
    subject: str,
    author: User,
    participants: Sequence[User],
    body: str,
    body_html: str | None = None,
    hidden_text: str | None = None,
    source: MessageSource = MessageSource.app,
    attachments: Sequence[NewAttachment] = (),
    idempotency_key: str | None = None,
    notify: bool = True,
) -> tuple[Conversation, Message]:
    holders = holders_of(session, company.id, [u.id for u in [author, *participants]]) if company else set()
    validate_new_conversation(kind, company, subject, author, participants, holders)
    conversation = Conversation(
        practice_id=practice.id,
        kind=kind,
        company_id=company.id if company else None,
        subject=subject,
        creator_id=author.id,
    )
    session.add(conversation)
    members = {u.id: u for u in [author, *participants]}
    for user in members.values():
        conversation.participants.append(Participant(user_id=user.id, user=user))
    session.flush()
    by_email = source != MessageSource.app
    snapshot = situation(session, author, conversation, body=body, is_reply=False, by_email=by_email)
    verdict = can_post(snapshot)
    if not verdict.allowed:
        raise PolicyDenied(verdict)
    message = _write_message(
        session,
        practice,
        conversation,
        author,
        snapshot,
        body=body,
        body_html=body_html,
        hidden_text=hidden_text,
        source=source,
        attachments=attachments,
        idempotency_key=idempotency_key,
        notify=notify,
    )
    return conversation, message


def post_message(
    session: Session,
    practice: Practice,
    conversation: Conversation,
    author: User,
    *,
    body: str,
    body_html: str | None = None,
    hidden_text: str | None = None,
    internal: bool = False,
    source: MessageSource = MessageSource.app,
    attachments: Sequence[NewAttachment] = (),
    idempotency_key: str | None = None,
    notify: bool = True,
    known: KnownHolders | None = None,
) -> Message:
    snapshot = post_situation(
        session,
        author,
        conversation,
        body=body,
        internal=internal,
        has_files=bool(attachments),
        by_email=source != MessageSource.app,
        known=known,
    )
    verdict = can_post(snapshot)
    if not verdict.allowed:
        raise PolicyDenied(verdict)
    return _write_message(
        session,
        practice,
        conversation,
        author,
        snapshot,
        body=body,
        body_html=body_html,
        hidden_text=hidden_text,
        source=source,
        internal=internal,
        attachments=attachments,
        idempotency_key=idempotency_key,
        notify=notify,
    )


def post_situation(
    session: Session,
    author: User,
    conversation: Conversation,
    *,
    body: str,
    internal: bool = False,
    has_files: bool = False,
    by_email: bool = False,
    known: KnownHolders | None = None,
) -> Situation:
    return situation(
        session,
        author,
        conversation,
        internal=internal,
        body=_effective_body(body, has_files),
        by_email=by_email,
        known=known,
    )


def _effective_body(body: str, has_files: bool) -> str:
    """A message that carries only files is not "too short": the minimum applies to typed text."""
    return body if body.strip() or not has_files else "x" * 10_000


def _write_message(
    session: Session,
    practice: Practice,
    conversation: Conversation,
    author: User,
    snapshot: Situation,
    *,
    body: str,
    body_html: str | None = None,
    hidden_text: str | None = None,
    source: MessageSource,
    internal: bool = False,
    attachments: Sequence[NewAttachment],
    idempotency_key: str | None,
    notify: bool,
) -> Message:
    """The message, its attachment rows, its event and its notifications (``_insert_message``), and
    the Message object callers use (the API answers with it and its files), attached to the session
    as rows already in the database: no flush writes them again."""
    values, files = _insert_message(
        session,
        practice.id,
        conversation.id,
        author.id,
        body=body,
        body_html=body_html,
        hidden_text=hidden_text,
        source=source,
        internal=internal,
        attachments=attachments,
        idempotency_key=idempotency_key,
    )
    set_committed_value(conversation, "updated_at", values["created_at"])
    rows = [Attachment(**row) for row in files]
    for row in rows:
        make_transient_to_detached(row)
    message = Message(**values, author=author, attachments=rows)
    make_transient_to_detached(message)
    session.add(message)
    events.message_created(
        session,
        practice.id,
        conversation_id=conversation.id,
        message_id=message.id,
        author=author.external_id,
        author_kind=author.kind,
        source=source,
        internal=internal,
        attachments=len(files),
    )
    if notify:
        from mailbridge.outbound.fanout import enqueue_notifications

        # The snapshot the post was judged on also says who may read: no second look-up.
        enqueue_notifications(session, practice, conversation, message, snapshot)
    return message


def post_reply(
    session: Session,
    view: PostView,
    author: Member,
    *,
    body: str,
    body_html: str | None,
    hidden_text: str | None,
    internal: bool,
    source: MessageSource,
    attachments: Sequence[NewAttachment],
    idempotency_key: str,
) -> str:
    """``post_message`` for a reply by email, from the ``PostView`` its final transaction read: the
    same policy (``can_post``), the same rows, the same fan-out (``fanout.fan_out``), without ORM
    entities. Returns the message's id; ``PolicyDenied`` when the policy refuses."""
    from mailbridge.outbound.fanout import Recipient, fan_out

    snapshot = view_situation(
        session, view, author, body=body, internal=internal, has_files=bool(attachments)
    )
    verdict = can_post(snapshot)
    if not verdict.allowed:
        raise PolicyDenied(verdict)
    values, files = _insert_message(
        session,
        view.practice_id,
        view.id,
        author.id,
        body=body,
        body_html=body_html,
        hidden_text=hidden_text,
        source=source,
        internal=internal,
        attachments=attachments,
        idempotency_key=idempotency_key,
    )
    events.message_created(
        session,
        view.practice_id,
        conversation_id=view.id,
        message_id=values["id"],
        author=author.external_id,
        author_kind=author.kind,
        source=source,
        internal=internal,
        attachments=len(files),
    )
    fan_out(
        session,
        view.practice_id,
        view.practice_slug,
        view.id,
        values["id"],
        author_id=author.id,
        internal=internal,
        delay=view.settings.notify_delay_seconds,
        snapshot=snapshot,
        recipients=[
            Recipient(m.id, m.email, m.kind, m.portal_account, m.muted, m.block)
            for m in view.members
            if not m.removed
        ],
        blocks_known=True,
    )
    return str(values["id"])


# The write path's statements, built once (issue 17: statement construction cost more CPU than
# running them). Core, not the ORM: the rows are known in full here, so a flush's unit of work
# would only add bookkeeping.
MESSAGES: Table = Message.__table__  # type: ignore[assignment]
ATTACHMENTS: Table = Attachment.__table__  # type: ignore[assignment]
_INSERT_MESSAGE = insert(MESSAGES)
_INSERT_ATTACHMENTS = insert(ATTACHMENTS)
_TOUCH_CONVERSATION = update(_C).where(_C.c.id == bindparam("b_id")).values(updated_at=bindparam("b_now"))


def _insert_message(
    session: Session,
    practice_id: int,
    conversation_id: str,
    author_id: int,
    *,
    body: str,
    body_html: str | None,
    hidden_text: str | None,
    source: MessageSource,
    internal: bool,
    attachments: Sequence[NewAttachment],
    idempotency_key: str | None,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The message's row and its attachments' rows, written now in the caller's transaction; the
    conversation's activity time moves. A repeated ``idempotency_key`` raises IntegrityError at the
    message's INSERT, before anything else of it is written. Returns the rows' values."""
    session.flush()  # what the caller added first is written first (a new conversation, an event)
    now = utcnow()
    values: dict[str, Any] = {
        "id": new_id(),
        "conversation_id": conversation_id,
        "author_id": author_id,
        "body": body,
        "body_html": body_html,
        "hidden_text": hidden_text,
        "source": source,
        "internal": internal,
        "idempotency_key": idempotency_key,
        "created_at": now,
        "deleted_at": None,
    }
    files = [
        {
            "id": new_id(),
            "message_id": values["id"],
            "position": position,
            "filename": item.filename,
            "content_type": item.content_type,
            "declared_type": item.declared_type,
            "size": item.size,
            "sha256": item.sha256,
            "content_id": item.content_id,
            "storage_key": item.storage_key,
        }
        for position, item in enumerate(attachments)
    ]
    connection = session.connection()
    connection.execute(_TOUCH_CONVERSATION, {"b_id": conversation_id, "b_now": now})
    connection.execute(_INSERT_MESSAGE, values)
    if files:
        connection.execute(_INSERT_ATTACHMENTS, files)
    return values, files


def require_active_account(actor: User) -> None:
    """A deactivated staff account reads nothing: 403 ``account_inactive`` rather than an empty list."""
    verdict = account_verdict(_person(actor, False))
    if verdict is not None:
        raise Forbidden(verdict.reason, "not allowed: the account is inactive")


def conversations_for(session: Session, practice: Practice, actor: User) -> list[Conversation]:
    """Every conversation the actor may read, latest activity first (the read rules as SQL)."""
    require_active_account(actor)
    query = select(Conversation).where(Conversation.practice_id == practice.id, readable_by(actor))
    return list(session.scalars(query.order_by(Conversation.updated_at.desc(), Conversation.id.desc())).all())


# Sort keys of the paginated lists: ``activity`` (latest first, what the app's inbox shows) and
# ``created`` (oldest first: a conversation created during a walk appears on a later page, so a full
# sync walk sees every row exactly once).
CONVERSATION_ORDERS: dict[str, tuple[tuple[pagination.Key, ...], bool]] = {
    "activity": (
        (pagination.Key(Conversation.updated_at, "updated_at"), pagination.Key(Conversation.id, "id")),
        True,
    ),
    "created": (
        (pagination.Key(Conversation.created_at, "created_at"), pagination.Key(Conversation.id, "id")),
        False,
    ),
}
MESSAGE_KEYS = (pagination.Key(Message.created_at, "created_at"), pagination.Key(Message.id, "id"))


def conversations_page(
    session: Session,
    practice: Practice,
    actor: User,
    *,
    order: str = "activity",
    limit: int = pagination.DEFAULT_LIMIT,
    cursor: str | None = None,
) -> pagination.Page[Conversation]:
    """One page of what the actor may read: one query for the rows, one for their participants,
    whatever the page size (``readable_by`` is ``can_read`` as SQL)."""
    require_active_account(actor)
    if order not in CONVERSATION_ORDERS:
        raise Invalid("invalid_order", f"order is one of {', '.join(CONVERSATION_ORDERS)}", "order")
    keys, descending = CONVERSATION_ORDERS[order]
    query = select(Conversation).where(Conversation.practice_id == practice.id, readable_by(actor))
    return pagination.page(session, query, keys, limit=limit, cursor=cursor, descending=descending)


def _messages_query(conversation: Conversation, actor: User) -> Any:
    query = select(Message).where(Message.conversation_id == conversation.id, Message.deleted_at.is_(None))
    if not can_read_message(Person(id=actor.id, kind=actor.kind.value), True):
        query = query.where(Message.internal.is_(False))  # can_read_message: internal notes are for staff
    return query


def messages_for(session: Session, conversation: Conversation, actor: User) -> list[Message]:
    query = _messages_query(conversation, actor).order_by(Message.created_at, Message.id)
    return list(session.scalars(query).all())


def messages_page(
    session: Session,
    conversation: Conversation,
    actor: User,
    *,
    limit: int = pagination.DEFAULT_LIMIT,
    cursor: str | None = None,
) -> pagination.Page[Message]:
    """A thread in order, oldest first: a message posted during a walk appears on a later page."""
    query = _messages_query(conversation, actor)
    return pagination.page(session, query, MESSAGE_KEYS, limit=limit, cursor=cursor)


def first_message(session: Session, conversation_id: str) -> Message | None:
    return session.scalar(
        select(Message)
        .where(Message.conversation_id == conversation_id)
        .order_by(Message.created_at)
        .limit(1)
    )


def _erase(session: Session, message: Message) -> list[str]:
    """Remove the content for good (seed 003: deletion is permanent); return the blobs it referenced."""
    hashes = [a.storage_key or a.sha256 for a in message.attachments]
    message.body = ""
    message.body_html = None
    message.hidden_text = None
    message.deleted_at = utcnow()
    message.attachments.clear()
    return hashes


def unreferenced(session: Session, refs: Sequence[str]) -> list[str]:
    """Blobs no remaining attachment row points at; the caller deletes them after the commit.

    A reference is the row's ``storage_key``, or its bare SHA-256 for files stored before object storage."""
    if not refs:
        return []
    keys = [r for r in refs if "/" in r]
    legacy = [r for r in refs if "/" not in r]
    still: set[str] = set()
    if keys:
        still |= set(session.scalars(select(Attachment.storage_key).where(Attachment.storage_key.in_(keys))))
    if legacy:
        still |= set(
            session.scalars(
                select(Attachment.sha256).where(
                    Attachment.sha256.in_(legacy), Attachment.storage_key.is_(None)
                )
            )
        )
    return sorted(set(refs) - still)


def delete_message(session: Session, practice: Practice, message_id: str, actor: User) -> list[str]:
    """Seed 003: staff may permanently delete any message they sent. A message the actor cannot read
    (another practice's, in a conversation they may not read, an internal note and they are not staff)
    answers exactly as one that does not exist: 404 ``message_not_found``."""
    require_active_account(actor)
    message = session.get(Message, message_id)
    if (
        message is None
        or message.deleted_at is not None
        or not may_read_message(session, practice, message, actor)
    ):
        raise NotFound("message_not_found", "message not found")
    if actor.kind != UserKind.staff or message.author_id != actor.id:
        raise Forbidden("not_author", "only the staff member who sent a message may delete it")
    hashes = _erase(session, message)
    raw = erasure.for_messages(session, [message.id])
    audit.record(session, practice, "message_deleted", audit.Actor.staff(actor), "message", message.id)
    from mailbridge.outbound.fanout import cancel_pending

    cancel_pending(session, message_ids=[message.id])
    session.flush()
    return unreferenced(session, hashes) + raw


def delete_conversation(
    session: Session, practice: Practice, conversation: Conversation, actor: User
) -> list[str]:
    """Seed 003: a whole thread may be deleted only by the staff member who started it; one the actor
    cannot read answers 404 as one that does not exist."""
    require_active_account(actor)
    if conversation.deleted_at is not None or not readable(session, actor, conversation).allowed:
        raise conversation_not_found()
    if actor.kind != UserKind.staff or conversation.creator_id != actor.id:
        raise Forbidden("not_creator", "only the staff member who started a conversation may delete it")
    messages = session.scalars(select(Message).where(Message.conversation_id == conversation.id)).all()
    hashes: list[str] = []
    for message in messages:
        hashes.extend(_erase(session, message))
    conversation.subject = ""
    conversation.deleted_at = utcnow()
    from mailbridge.inbound.tokens import revoke_for_conversations
    from mailbridge.outbound.fanout import cancel_pending

    revoke_for_conversations(session, [conversation.id])
    cancel_pending(session, message_ids=[m.id for m in messages])
    who = audit.Actor.staff(actor)
    raw = erasure.for_conversation(session, practice, conversation.id, [m.id for m in messages], who)
    audit.record(session, practice, "conversation_deleted", who, "conversation", conversation.id)
    session.flush()
    return unreferenced(session, hashes) + raw


def may_read_message(session: Session, practice: Practice, message: Message, actor: User) -> bool:
    """The actor may read this message: its conversation is this practice's and readable by them, and
    it is not an internal note unless they are staff (``can_read_message``)."""
    conversation = session.get(Conversation, message.conversation_id)
    if conversation is None or conversation.practice_id != practice.id:
        return False
    if not can_read_message(_person(actor, False), message.internal):
        return False
    return readable(session, actor, conversation).allowed


def _judge_membership(
    session: Session, conversation: Conversation, actor: User, user: User, *, adding: bool
) -> None:
    """``policy.rules.can_change_members``: the actor must read the conversation (else 404, as one
    that does not exist), be staff (403 ``staff_only``), and the result must keep the rules of the
    conversation's kind, the same joining rules creation applies."""
    require_active_account(actor)
    snapshot = situation(session, actor, conversation)
    holds = conversation.company_id is not None and bool(
        holders_of(session, conversation.company_id, [user.id])
    )
    verdict = can_change_members(
        Membership(
            situation=snapshot,
            person=_person(user, holds),
            adding=adding,
            creator_id=conversation.creator_id,
        )
    )
    if verdict.allowed:
        return
    if is_read_refusal(verdict):
        raise conversation_not_found()
    if verdict.reason == "client_not_following_company":
        raise _outside_company([user.external_id])
    raise _refusal(verdict, "user")


def add_participant(session: Session, conversation: Conversation, actor: User, user: User) -> bool:
    """``actor`` makes ``user`` a participant (again); False when they already were one."""
    _judge_membership(session, conversation, actor, user, adding=True)
    for p in conversation.participants:
        if p.user_id == user.id:
            if p.removed_at is None:
                return False
            p.removed_at = None
            session.flush()
            return True
    conversation.participants.append(Participant(user_id=user.id, user=user))
    session.flush()
    return True


def remove_participant(session: Session, conversation: Conversation, actor: User, user: User) -> None:
    """``actor`` removes ``user``: their reply token is revoked (a reply then answers ``550 5.1.1``)."""
    from mailbridge.inbound.tokens import revoke_for_participant

    _judge_membership(session, conversation, actor, user, adding=False)
    for p in conversation.participants:
        if p.user_id == user.id and p.removed_at is None:
            p.removed_at = utcnow()
            revoke_for_participant(session, conversation.id, user.id)
            session.flush()
            return
    # Not (or no longer) a participant: nothing to do. DELETE is idempotent (docs/api.md): a retried
    # removal answers 204 like the first, as a repeated DELETE of a favourite or a mute does.


def count_messages(session: Session, conversation_id: str) -> int:
    return (
        session.scalar(
            select(func.count()).select_from(Message).where(Message.conversation_id == conversation_id)
        )
        or 0
    )


def message_summaries(
    session: Session, conversation_ids: Sequence[str], actor: User
) -> dict[str, tuple[int, Any]]:
    """Per conversation, how many messages *actor* may see and when the latest was posted: one
    grouped query for a whole list page (internal notes count for staff only, as they read them)."""
    if not conversation_ids:
        return {}
    query = (
        select(Message.conversation_id, func.count(), func.max(Message.created_at))
        .where(Message.conversation_id.in_(list(conversation_ids)), Message.deleted_at.is_(None))
        .group_by(Message.conversation_id)
    )
    if not can_read_message(Person(id=actor.id, kind=actor.kind.value), True):
        query = query.where(Message.internal.is_(False))
    return {cid: (count, latest) for cid, count, latest in session.execute(query).all()}


def readable_message(session: Session, practice: Practice, message_id: str, actor: User) -> Message:
    """One message, if *actor* may read it: in a conversation they may read (the read rules), not
    deleted, and not an internal note unless they are staff. Anything else is the same 404 as an
    unknown id, so the answer never tells that a message exists. A deactivated account is refused
    first (403 ``account_inactive``), whatever the id, as on every read."""
    require_active_account(actor)
    missing = NotFound("message_not_found", "message not found")
    message = session.get(Message, message_id)
    if message is None or message.deleted_at is not None:
        raise missing
    conversation = session.get(Conversation, message.conversation_id)
    if conversation is None or conversation.practice_id != practice.id:
        raise missing
    if not readable(session, actor, conversation).allowed:
        raise missing
    if not can_read_message(Person(id=actor.id, kind=actor.kind.value), message.internal):
        raise missing
    return message
