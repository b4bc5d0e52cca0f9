"""The practice directory as the messaging app keeps it in sync: idempotent upserts, never invented users."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

from sqlalchemy import delete, func, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from mailbridge.domain.addresses import normalise
from mailbridge.domain.domains import check_reply_domain_free
from mailbridge.domain.errors import Conflict, Invalid, NotFound
from mailbridge.domain.models import (
    Company,
    Conversation,
    ConversationKind,
    DkimAlgorithm,
    DkimKeyRow,
    DkimKeyState,
    Favorite,
    Friendship,
    FriendshipState,
    Participant,
    Practice,
    StaffRole,
    User,
    UserAddress,
    UserKind,
)
from mailbridge.domain.practice_settings import PracticeSettings, merge_patch

log = logging.getLogger(__name__)


def get_practice(session: Session, slug: str) -> Practice:
    practice = session.scalar(select(Practice).where(Practice.slug == slug))
    if practice is None:
        raise NotFound("practice_not_found", f"practice {slug!r} not found")
    return practice


def get_user(session: Session, practice: Practice, external_id: str, field: str | None = None) -> User:
    user = session.scalar(
        select(User).where(
            User.practice_id == practice.id, User.external_id == external_id, User.deleted_at.is_(None)
        )
    )
    if user is None:
        raise NotFound("user_not_found", f"user {external_id!r} not found", field)
    return user


def get_actor(session: Session, practice: Practice, external_id: str | None) -> User:
    """Who acts, named by ``?as=``: required wherever something is done on a user's behalf, so the
    rules are applied to someone (422 ``actor_required`` without it; the old participant routes took
    no actor and applied no rule)."""
    if not external_id:
        raise Invalid("actor_required", "say who acts: ?as=<the user's external id>", "as")
    return get_user(session, practice, external_id, "as")


def get_company(session: Session, practice: Practice, external_id: str, field: str | None = None) -> Company:
    company = session.scalar(
        select(Company).where(
            Company.practice_id == practice.id,
            Company.external_id == external_id,
            Company.deleted_at.is_(None),
        )
    )
    if company is None:
        raise NotFound("company_not_found", f"company {external_id!r} not found", field)
    return company


def get_company_by_id(session: Session, company_id: int) -> Company:
    return session.get_one(Company, company_id)


def upsert_practice(
    session: Session,
    slug: str,
    *,
    name: str,
    reply_domain: str,
    notify_from: str,
    locale: str,
    settings: dict[str, Any],
) -> tuple[Practice, bool]:
    """Create or update a practice; ``settings`` is merged into the stored ones (RFC 7396, see
    ``practice_settings``): omitted keys keep their value, ``null`` clears a key."""
    practice = session.scalar(select(Practice).where(Practice.slug == slug))
    patch = dict(settings)
    if "dkim_selector" in patch:
        _check_dkim_selector(session, practice, patch.pop("dkim_selector"))
    _refuse_unknown_settings(patch)
    try:
        merged = merge_patch((practice.settings or {}) if practice is not None else {}, patch)
    except ValueError as exc:
        raise Invalid("invalid_settings", f"settings: {exc}", "settings") from None
    if merged.get("dkim_selector", "") is None:
        del merged["dkim_selector"]  # a null left by the old full dumps: nothing to keep
    validated = PracticeSettings.model_validate(merged)
    created = practice is None
    domain = reply_domain.rstrip(".").lower()
    check_reply_domain_free(session, practice.id if practice else None, domain)
    if practice is None:
        practice = Practice(slug=slug)
        session.add(practice)
    practice.name = name
    practice.reply_domain = domain
    practice.notify_from = notify_from
    practice.locale = locale
    practice.settings = validated.model_dump(mode="json", exclude_unset=True)
    try:
        session.flush()
    except IntegrityError as exc:  # two claims at once: the unique index decides, the loser gets 409
        if "reply_domain" not in str(exc.orig):
            raise
        raise Conflict(
            "reply_domain_taken", f"{domain} is already a domain of another practice", "reply_domain"
        ) from None
    return practice, created


def _refuse_unknown_settings(patch: dict[str, Any]) -> None:
    """A key no version knows is a typo or a setting of another product: refused, naming it, as an
    unknown top-level key is (it used to be stored and silently ignored). Keys stored by an older
    version stay readable and may be cleared (null): only what a write sets is checked."""
    known = set(PracticeSettings.model_fields)
    for key, value in patch.items():
        if key not in known and value is not None:
            raise Invalid(
                "invalid_settings",
                f"settings.{key}: unknown setting (known: {', '.join(sorted(known | {'dkim_selector'}))})",
                f"settings.{key}",
            )


def active_dkim_selector(session: Session, practice: Practice | None) -> str | None:
    """The selector of the practice's active RSA key: what ``settings.dkim_selector`` shows.

    A selector set by an older version whose key is still on a node's disk (not yet moved into the
    database by ``mailbridge db upgrade`` on that node) is shown too: notifications wait for it.
    """
    if practice is None:
        return None
    selector = session.scalar(
        select(DkimKeyRow.selector).where(
            DkimKeyRow.practice_id == practice.id,
            DkimKeyRow.state == DkimKeyState.active,
            DkimKeyRow.algorithm == DkimAlgorithm.rsa,
        )
    )
    if selector is not None:
        return selector
    legacy = (practice.settings or {}).get("dkim_selector")
    return str(legacy) if legacy else None


def _check_dkim_selector(session: Session, practice: Practice | None, value: Any) -> None:
    """``dkim_selector`` in a settings write: accepted only unchanged (a sync echoing what it read).

    Signing keys are chosen by the key store (``mailbridge dkim check``/``activate``), never by a
    settings write: a sync that sent null or a stale selector used to stop signing without a word.
    """
    current = active_dkim_selector(session, practice)
    if value == current:
        return
    log.warning(
        "settings_refused",
        extra={
            "practice": practice.slug if practice else None,
            "key": "dkim_selector",
            "given": str(value)[:64],
        },
    )
    raise Invalid(
        "dkim_selector_read_only",
        f"settings.dkim_selector is read-only: it shows the practice's active DKIM key ({current!r}); "
        "leave it out of the write (keys change with `mailbridge dkim genkey` then `dkim check` or "
        "`dkim activate`)",
        "settings.dkim_selector",
    )


def upsert_user(
    session: Session,
    practice: Practice,
    external_id: str,
    *,
    email: str,
    alt_emails: Iterable[str],
    name: str,
    kind: UserKind,
    role: StaffRole | None,
    active: bool,
    locale: str,
    portal_account: bool | None = None,
) -> tuple[User, bool]:
    """Create or update a user. ``portal_account`` left out: staff and clients have one, external
    agents (seed 003: outside the practice, by email only) never do."""
    if kind == UserKind.client and role is not None:
        raise Invalid("invalid_role", "clients have no staff role", "role")
    if kind == UserKind.external and role is not None:
        raise Invalid("invalid_role", "external agents have no staff role", "role")
    if kind == UserKind.external and portal_account:
        raise Invalid(
            "invalid_portal_account",
            "external agents have no portal account: they read and reply by email",
            "portal_account",
        )
    if portal_account is None:
        portal_account = kind != UserKind.external
    user = session.scalar(
        select(User).where(User.practice_id == practice.id, User.external_id == external_id)
    )
    primary = normalise(email)
    wanted = {primary: True} | {normalise(a): False for a in alt_emails if normalise(a) != primary}
    created = user is None or user.deleted_at is not None
    if user is None:
        user = User(practice_id=practice.id, external_id=external_id)
        session.add(user)
    # A deleted id comes back as a new member: nothing it left (conversations, favourites,
    # friendships) returns, and its kind may differ.
    user.deleted_at = None
    was_kind = user.kind if not created else None
    if was_kind is not None and was_kind != kind:
        raise Conflict("kind_change", "a user's kind cannot change", "kind")
    _require_addresses_free(session, practice, external_id, wanted, primary)
    # A new address starts clean by itself: suppressions belong to addresses, not users, and
    # ``email_bouncing`` is derived from the primary address's (domain/suppressions.py).
    user.email = email
    user.name = name
    user.kind = kind
    user.role = role
    user.active = active
    user.locale = locale
    user.portal_account = portal_account
    existing = {a.address: a for a in user.addresses}
    for address, entry in existing.items():
        if address not in wanted:
            user.addresses.remove(entry)
    for address, is_primary in wanted.items():
        if address in existing:
            existing[address].primary = is_primary
            existing[address].address_key = address  # a duplicate from before 0017, now resolved
        else:
            user.addresses.append(
                UserAddress(practice_id=practice.id, address=address, address_key=address, primary=is_primary)
            )
    try:
        with session.begin_nested():
            session.flush()
    except IntegrityError as exc:  # two syncs claiming one address at once: the unique index decides
        if "address_key" not in str(exc.orig):
            raise
        _require_addresses_free(session, practice, external_id, wanted, primary)
        raise
    # Deactivation revokes nothing: the policy is evaluated at each use, so reactivation restores it.
    return user, created


def users_at(session: Session, practice_id: int, address: str) -> list[User]:
    """Who holds this address in the practice (compared normalised). More than one only for a
    duplicate made before addresses were unique (migration 0017): callers never pick one of them."""
    return list(
        session.scalars(
            select(User)
            .join(UserAddress, UserAddress.user_id == User.id)
            .where(UserAddress.practice_id == practice_id, UserAddress.address == normalise(address))
            .order_by(User.external_id)
        )
        .unique()
        .all()
    )


def _require_addresses_free(
    session: Session, practice: Practice, external_id: str, wanted: dict[str, bool], primary: str
) -> None:
    """An address (primary or alternate) has one holder per practice: another user's is 409
    ``email_taken``, naming the holder (``holder``, their external id) and the ``address``. Mail from
    a shared address could not be attributed to anyone (sender recognition) nor trusted as theirs."""
    with session.no_autoflush:
        taken = session.execute(
            select(UserAddress.address, User.external_id)
            .join(User, User.id == UserAddress.user_id)
            .where(
                UserAddress.practice_id == practice.id,
                UserAddress.address.in_(sorted(wanted)),
                User.external_id != external_id,
            )
            .order_by(UserAddress.address, User.external_id)
        ).first()
    if taken is None:
        return
    address, holder = taken
    raise Conflict(
        "email_taken",
        f"user {external_id!r}: {address} is already an address of user {holder!r} (addresses are "
        "unique in a practice, compared without regard to case)",
        "email" if address == primary else "alt_emails",
        {"holder": holder, "address": address},
    )


def upsert_company(
    session: Session, practice: Practice, external_id: str, *, name: str
) -> tuple[Company, bool]:
    company = session.scalar(
        select(Company).where(Company.practice_id == practice.id, Company.external_id == external_id)
    )
    created = company is None or company.deleted_at is not None
    if company is None:
        company = Company(practice_id=practice.id, external_id=external_id)
        session.add(company)
    company.deleted_at = None  # a deleted id comes back without its former members
    company.name = name
    session.flush()
    return company, created


def set_favorite(session: Session, user: User, company: Company, on: bool) -> bool:
    """Follow (*on*) or stop following a company; True when that changed something."""
    if on and user.kind == UserKind.external:
        # The read rules ignore an agent's favourites anyway (external_agent_participants_only);
        # refusing them keeps the directory saying what the rules do.
        raise Invalid(
            "external_no_favorites",
            "external agents follow no company: they take part only where staff add them",
            "user",
        )
    exists = session.get(Favorite, (user.id, company.id)) is not None
    if on and not exists:
        session.add(Favorite(user_id=user.id, company_id=company.id))
    elif not on and exists:
        session.execute(
            delete(Favorite).where(Favorite.user_id == user.id, Favorite.company_id == company.id)
        )
    session.flush()
    return on != exists


def friendship_between(session: Session, a: User, b: User) -> Friendship | None:
    return friendship_of(session, a.id, b.id)


def friendship_of(session: Session, a_id: int, b_id: int) -> Friendship | None:
    low, high = sorted((a_id, b_id))
    return session.scalar(
        select(Friendship).where(Friendship.user_low_id == low, Friendship.user_high_id == high)
    )


def set_friendship(
    session: Session, practice: Practice, a: User, b: User, state: FriendshipState
) -> Friendship:
    if a.id == b.id:
        raise Invalid("same_user", "a friendship needs two different users", "user_b")
    if a.kind != UserKind.staff or b.kind != UserKind.staff:
        raise Invalid("direct_staff_only", "direct channels are between two staff members", "user_b")
    friendship = friendship_between(session, a, b)
    if friendship is None:
        low, high = sorted((a.id, b.id))
        friendship = Friendship(practice_id=practice.id, user_low_id=low, user_high_id=high, state=state)
        session.add(friendship)
    friendship.state = state
    session.flush()
    if state == FriendshipState.closed:
        from mailbridge.inbound.tokens import revoke_for_conversations

        conversations = session.scalars(
            select(Conversation.id)
            .join(Participant, Participant.conversation_id == Conversation.id)
            .where(
                Conversation.kind == ConversationKind.direct,
                Conversation.practice_id == practice.id,
                Participant.user_id == a.id,
            )
        ).all()
        direct_with_b = [
            cid
            for cid in conversations
            if session.scalar(
                select(Participant.id).where(Participant.conversation_id == cid, Participant.user_id == b.id)
            )
        ]
        revoke_for_conversations(session, direct_with_b)
    return friendship


def _changed(result: Any) -> int:
    """Rows an UPDATE or DELETE changed (``CursorResult.rowcount``; typed as a plain ``Result``)."""
    return int(getattr(result, "rowcount", 0) or 0)


def delete_user(session: Session, practice: Practice, user: User) -> dict[str, int]:
    """The app deleted a user: they leave the directory and everything that lets them read or be
    written to, and nothing anyone else wrote, nor any record, is lost.

    What ends: every participation (as ``DELETE …/participants/{user}`` does: their reply addresses
    stop working, they are notified of nothing, pending notifications to them are cancelled), their
    favourites (company memberships), their friendships (closed, so no direct channel reopens),
    their addresses (mail from them is then a stranger's; another user may take the address).
    The account is also inactive, so every rule for deactivated accounts applies should anything
    still name it. What stays: the messages they wrote (still showing their id as the author), the
    conversations they started (only their creator could delete a whole thread, so these stay until
    their messages are deleted one by one by their authors), chart notes, and the audit trail, to
    which a ``user_deleted`` row is added. Their id answers 404 from now on; a ``PUT`` brings it back
    as a new member, with none of the above. Returns what ended, for the audit row.
    """
    from mailbridge.domain import audit
    from mailbridge.domain.models import Outbox, OutboxState, ReplyToken, utcnow

    now = utcnow()
    left = _changed(
        session.execute(
            update(Participant)
            .where(Participant.user_id == user.id, Participant.removed_at.is_(None))
            .values(removed_at=now)
        )
    )
    session.execute(
        update(ReplyToken)
        .where(ReplyToken.user_id == user.id, ReplyToken.revoked_at.is_(None))
        .values(revoked_at=now)
    )
    cancelled = _changed(
        session.execute(
            update(Outbox)
            .where(Outbox.recipient_id == user.id, Outbox.state == OutboxState.pending)
            .values(state=OutboxState.failed, last_answer="cancelled: user deleted")
        )
    )
    favourites = _changed(session.execute(delete(Favorite).where(Favorite.user_id == user.id)))
    friendships = _changed(
        session.execute(
            update(Friendship)
            .where(
                or_(Friendship.user_low_id == user.id, Friendship.user_high_id == user.id),
                Friendship.state != FriendshipState.closed,
            )
            .values(state=FriendshipState.closed)
        )
    )
    user.addresses.clear()
    user.active = False
    user.deleted_at = now
    ended = {
        "conversations_left": left,
        "favorites_removed": favourites,
        "friendships_closed": friendships,
        "notifications_cancelled": cancelled,
    }
    audit.record(session, practice, "user_deleted", audit.SERVICE, "user", user.external_id, ended)
    session.flush()
    return ended


def delete_company(session: Session, practice: Practice, company: Company) -> dict[str, int]:
    """The app deleted a company (a client file): it leaves the directory and its favourites end, so
    nobody is a member any more. Its conversations stay, with their messages (content is deleted
    only by the seed-003 deletion rules, never as a side effect), and the read rules now find no
    member: company conversations are read by their participants, confidential ones by their staff
    participants only (a client reads a confidential conversation only while following its company).
    New conversations, favourites and imports cannot name it (404) until a ``PUT`` brings the id back
    with no members. Returns what ended, for the ``company_deleted`` audit row."""
    from mailbridge.domain import audit
    from mailbridge.domain.models import utcnow

    favourites = _changed(session.execute(delete(Favorite).where(Favorite.company_id == company.id)))
    conversations = (
        session.scalar(
            select(func.count())
            .select_from(Conversation)
            .where(Conversation.company_id == company.id, Conversation.deleted_at.is_(None))
        )
        or 0
    )
    company.deleted_at = utcnow()
    ended = {"favorites_removed": favourites, "conversations_kept": conversations}
    audit.record(session, practice, "company_deleted", audit.SERVICE, "company", company.external_id, ended)
    session.flush()
    return ended


def favourite_company_ids(session: Session, user: User) -> set[int]:
    return set(session.scalars(select(Favorite.company_id).where(Favorite.user_id == user.id)).all())


def holders_of(session: Session, company_id: int, user_ids: Iterable[int]) -> set[int]:
    ids = list(user_ids)
    if not ids:
        return set()
    return set(
        session.scalars(
            select(Favorite.user_id).where(Favorite.company_id == company_id, Favorite.user_id.in_(ids))
        ).all()
    )
