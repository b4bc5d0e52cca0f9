"""The directory as lists, a page at a time: users, companies, a user's favourites, friendships.

The app mostly pushes the directory (PUT), but it also needs to read it back: to reconcile after
an outage, to find what an import changed, to show which addresses bounce. Each list is one keyset
page (``domain.pagination``) in the order of the app's own ids, with a constant number of
statements whatever the page size: addresses are loaded for the whole page at once, and so are the
suppressions of the page's primary addresses. Deleted users and companies are not listed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, aliased, selectinload

from mailbridge.domain import pagination, suppressions
from mailbridge.domain.models import (
    Company,
    Favorite,
    Friendship,
    FriendshipState,
    Practice,
    Suppression,
    User,
    UserKind,
)

USER_KEYS = (pagination.Key(User.external_id, "external_id"), pagination.Key(User.id, "id"))
COMPANY_KEYS = (pagination.Key(Company.external_id, "external_id"), pagination.Key(Company.id, "id"))
FRIENDSHIP_KEYS = (pagination.Key(Friendship.id, "id"),)


@dataclass(frozen=True)
class UserRow:
    user: User
    suppression: Suppression | None


def users_page(
    session: Session,
    practice: Practice,
    *,
    kind: UserKind | None = None,
    active: bool | None = None,
    limit: int = pagination.DEFAULT_LIMIT,
    cursor: str | None = None,
) -> pagination.Page[UserRow]:
    """Users by id, optionally of one kind and/or (in)active, each with its primary address's
    suppression (one query for the page, not one per user)."""
    query = select(User).where(User.practice_id == practice.id, User.deleted_at.is_(None))
    if kind is not None:
        query = query.where(User.kind == kind)
    if active is not None:
        query = query.where(User.active.is_(active))
    page = pagination.page(
        session,
        query,
        USER_KEYS,
        limit=limit,
        cursor=cursor,
        prepare=lambda q: q.options(selectinload(User.addresses)),
    )
    hits = suppressions.active_among(session, practice.id, [u.email for u in page.items])
    rows = [UserRow(u, hits.get(suppressions.normalize(u.email))) for u in page.items]
    return pagination.Page(rows, page.next_cursor)


def companies_page(
    session: Session, practice: Practice, *, limit: int = pagination.DEFAULT_LIMIT, cursor: str | None = None
) -> pagination.Page[Company]:
    query = select(Company).where(Company.practice_id == practice.id, Company.deleted_at.is_(None))
    return pagination.page(session, query, COMPANY_KEYS, limit=limit, cursor=cursor)


def favorites_page(
    session: Session, user: User, *, limit: int = pagination.DEFAULT_LIMIT, cursor: str | None = None
) -> pagination.Page[Company]:
    """The companies *user* follows (their memberships), by company id."""
    query = (
        select(Company)
        .join(Favorite, Favorite.company_id == Company.id)
        .where(Favorite.user_id == user.id, Company.deleted_at.is_(None))
    )
    return pagination.page(session, query, COMPANY_KEYS, limit=limit, cursor=cursor)


def friendships_page(
    session: Session,
    practice: Practice,
    *,
    user: User | None = None,
    state: FriendshipState | None = None,
    limit: int = pagination.DEFAULT_LIMIT,
    cursor: str | None = None,
) -> pagination.Page[Any]:
    """Friendships in the order they were first recorded, as rows of (id, user_a, user_b, state):
    ``user_a`` is the lower internal id of the pair (a friendship has no direction). Those of a
    deleted user are left out (they were closed when the user was deleted)."""
    low, high = aliased(User), aliased(User)
    query: Any = (
        select(
            Friendship.id,
            low.external_id.label("user_a"),
            high.external_id.label("user_b"),
            Friendship.state,
        )
        .join(low, low.id == Friendship.user_low_id)
        .join(high, high.id == Friendship.user_high_id)
        .where(
            Friendship.practice_id == practice.id,
            low.deleted_at.is_(None),
            high.deleted_at.is_(None),
        )
    )
    if user is not None:
        query = query.where((Friendship.user_low_id == user.id) | (Friendship.user_high_id == user.id))
    if state is not None:
        query = query.where(Friendship.state == state)
    return pagination.page(session, query, FRIENDSHIP_KEYS, limit=limit, cursor=cursor, scalars=False)
