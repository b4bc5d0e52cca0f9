"""The practice directory as the messaging app keeps it in sync: idempotent upserts, never invented users."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from mailbridge.domain.domains import check_reply_domain_free
from mailbridge.domain.errors import Conflict, Invalid, NotFound
from mailbridge.domain.models import (
    Company,
    Conversation,
    ConversationKind,
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
from mailbridge.domain.practice_settings import PracticeSettings


def get_practice(session: Session, slug: str) -> Practice:
    practice = session.scalar(select(Practice).where(Practice.slug == slug))
    if practice is None:
        raise NotFound("practice_not_found", f"practice {slug!r} not found")
    return practice


def get_user(session: Session, practice: Practice, external_id: str, field: str | None = None) -> User:
    user = session.scalar(
        select(User).where(User.practice_id == practice.id, User.external_id == external_id)
    )
    if user is None:
        raise NotFound("user_not_found", f"user {external_id!r} not found", field)
    return user


def get_company(session: Session, practice: Practice, external_id: str, field: str | None = None) -> Company:
    company = session.scalar(
        select(Company).where(Company.practice_id == practice.id, Company.external_id == external_id)
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
    validated = PracticeSettings.model_validate(settings)
    practice = session.scalar(select(Practice).where(Practice.slug == slug))
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
    practice.settings = validated.model_dump(mode="json", exclude_unset=False)
    try:
        session.flush()
    except IntegrityError as exc:  # two claims at once: the unique index decides, the loser gets 409
        if "reply_domain" not in str(exc.orig):
            raise
        raise Conflict(
            "reply_domain_taken", f"{domain} is already a domain of another practice", "reply_domain"
        ) from None
    return practice, created


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
) -> tuple[User, bool]:
    if kind == UserKind.client and role is not None:
        raise Invalid("invalid_role", "clients have no staff role", "role")
    user = session.scalar(
        select(User).where(User.practice_id == practice.id, User.external_id == external_id)
    )
    created = user is None
    if user is None:
        user = User(practice_id=practice.id, external_id=external_id)
        session.add(user)
    was_kind = user.kind if not created else None
    if was_kind is not None and was_kind != kind:
        raise Invalid("kind_change", "a user's kind cannot change", "kind")
    primary = email.lower()
    if user.email and user.email.lower() != primary:
        user.email_bouncing = False  # a new address gets a fresh start
    user.email = email
    user.name = name
    user.kind = kind
    user.role = role
    user.active = active
    user.locale = locale
    wanted = {primary: True} | {a.lower(): False for a in alt_emails if a.lower() != primary}
    existing = {a.address: a for a in user.addresses}
    for address, entry in existing.items():
        if address not in wanted:
            user.addresses.remove(entry)
    for address, is_primary in wanted.items():
        if address in existing:
            existing[address].primary = is_primary
        else:
            user.addresses.append(UserAddress(practice_id=practice.id, address=address, primary=is_primary))
    session.flush()
    # Deactivation revokes nothing: the policy is evaluated at each use, so reactivation restores it.
    return user, created


def upsert_company(
    session: Session, practice: Practice, external_id: str, *, name: str
) -> tuple[Company, bool]:
    company = session.scalar(
        select(Company).where(Company.practice_id == practice.id, Company.external_id == external_id)
    )
    created = company is None
    if company is None:
        company = Company(practice_id=practice.id, external_id=external_id)
        session.add(company)
    company.name = name
    session.flush()
    return company, created


def set_favorite(session: Session, user: User, company: Company, on: bool) -> None:
    exists = session.get(Favorite, (user.id, company.id)) is not None
    if on and not exists:
        session.add(Favorite(user_id=user.id, company_id=company.id))
    elif not on and exists:
        session.execute(
            delete(Favorite).where(Favorite.user_id == user.id, Favorite.company_id == company.id)
        )
    session.flush()


def friendship_between(session: Session, a: User, b: User) -> Friendship | None:
    low, high = sorted((a.id, b.id))
    return session.scalar(
        select(Friendship).where(Friendship.user_low_id == low, Friendship.user_high_id == high)
    )


def set_friendship(
    session: Session, practice: Practice, a: User, b: User, state: FriendshipState
) -> Friendship:
    if a.id == b.id:
        raise Invalid("same_user", "a friendship needs two different users", "user_b")
    if a.kind != UserKind.staff or b.kind != UserKind.staff:
        raise Invalid("staff_only", "direct channels are between two staff members", "user_b")
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
