"""Bulk directory load in the same shapes as the API: ONE implementation for ``mailbridge import``,
``mailbridge demo`` and ``POST …/directory/import``.

``apply_directory`` applies a practice's users, companies, favourites and friendships item by item,
each through the same domain function its single-item route uses, and says for each one what
happened (``created``, ``updated`` or ``failed`` with the problem's code). Two modes:

* per item (the API's default): each item runs in a savepoint, so a failing one is rolled back
  alone and reported, and the others are kept;
* atomic (``mailbridge import``, ``?atomic=true``): the first failure raises, naming the item, and the
  caller's transaction rolls everything back.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy.orm import Session

from mailbridge.api.schemas import CompanyIn, PracticeIn, UserIn
from mailbridge.domain import directory
from mailbridge.domain.errors import DomainError
from mailbridge.domain.models import FriendshipState, Practice

Status = Literal["created", "updated", "failed"]
ItemType = Literal["user", "company", "favorite", "friendship"]


class DirectoryItems(BaseModel):
    """A practice's directory, as ``PUT …/users/{id}``, ``PUT …/companies/{id}``, ``PUT
    …/users/{user}/favorites/{company}`` and ``PUT …/friendships/{a}/{b}`` take it, in bulk."""

    model_config = ConfigDict(extra="forbid")
    users: dict[str, UserIn] = Field(default={}, description="id → the body of PUT …/users/{id}")
    companies: dict[str, CompanyIn] = Field(default={}, description="id → the body of PUT …/companies/{id}")
    favorites: list[tuple[str, str]] = Field(default=[], description="[user, company] pairs to follow")
    friendships: list[tuple[str, str, Literal["requested", "accepted", "closed"]]] = Field(
        default=[], description="[user_a, user_b, state] triples"
    )


class PracticeImport(PracticeIn, DirectoryItems):
    slug: str = Field(pattern=r"^[a-z0-9][a-z0-9-]{0,62}$")
    domains: list[str] = []  # approved by the operator (who runs the import): routes may use them
    routes: dict[str, dict[str, Any]] = {}


class ImportFile(BaseModel):
    model_config = ConfigDict(extra="forbid")
    practices: list[PracticeImport]


@dataclass(frozen=True)
class ItemResult:
    type: ItemType
    id: str  # the item's id; "user/company" for a favourite, "user_a/user_b" for a friendship
    status: Status
    error: DomainError | None = None


class ItemFailed(DomainError):
    """An atomic load stopped at this item: its own problem (status, code, field), naming the item."""

    def __init__(self, kind: ItemType, ident: str, error: DomainError) -> None:
        super().__init__(
            error.code,
            f"{kind} {ident}: {error.detail}",
            error.field,
            {**error.extra, "item": {"type": kind, "id": ident}},
        )
        self.status = error.status


def apply_directory(
    session: Session, practice: Practice, items: DirectoryItems, *, atomic: bool
) -> list[ItemResult]:
    """Users, then companies, then favourites, then friendships (each may name the ones before),
    in the order given. See the module's docstring for the two modes."""
    results: list[ItemResult] = []

    def run(kind: ItemType, ident: str, apply: Callable[..., bool], *args: Any) -> None:
        try:
            with _item_scope(session, atomic):
                created = apply(session, practice, *args)
        except DomainError as exc:
            if atomic:
                raise ItemFailed(kind, ident, exc) from None
            results.append(ItemResult(kind, ident, "failed", exc))
            return
        results.append(ItemResult(kind, ident, "created" if created else "updated"))

    for ext, user in items.users.items():
        run("user", ext, _user, ext, user)
    for ext, company in items.companies.items():
        run("company", ext, _company, ext, company)
    for user_ext, company_ext in items.favorites:
        run("favorite", f"{user_ext}/{company_ext}", _favorite, user_ext, company_ext)
    for a, b, state in items.friendships:
        run("friendship", f"{a}/{b}", _friendship, a, b, state)
    return results


def _user(session: Session, practice: Practice, ext: str, body: UserIn) -> bool:
    return directory.upsert_user(session, practice, ext, **body.fields())[1]


def _company(session: Session, practice: Practice, ext: str, body: CompanyIn) -> bool:
    return directory.upsert_company(session, practice, ext, name=body.name)[1]


def _favorite(session: Session, practice: Practice, user_ext: str, company_ext: str) -> bool:
    return directory.set_favorite(
        session,
        directory.get_user(session, practice, user_ext, "user"),
        directory.get_company(session, practice, company_ext, "company"),
        True,
    )


def _friendship(session: Session, practice: Practice, a_ext: str, b_ext: str, state: str) -> bool:
    a = directory.get_user(session, practice, a_ext, "user_a")
    b = directory.get_user(session, practice, b_ext, "user_b")
    created = directory.friendship_between(session, a, b) is None
    directory.set_friendship(session, practice, a, b, FriendshipState(state))
    return created


@contextmanager
def _item_scope(session: Session, atomic: bool) -> Iterator[None]:
    """A savepoint per item unless the whole load is one unit anyway."""
    if atomic:
        yield
        return
    with session.begin_nested():
        yield


def load_directory(session: Session, data: dict[str, Any]) -> dict[str, int]:
    """All or nothing: the caller's transaction rolls back on the first bad row."""
    parsed = ImportFile.model_validate(data)
    counts = {
        "practices": 0,
        "users": 0,
        "companies": 0,
        "favorites": 0,
        "friendships": 0,
        "domains": 0,
        "routes": 0,
    }
    plural = {"user": "users", "company": "companies", "favorite": "favorites", "friendship": "friendships"}
    for item in parsed.practices:
        practice, _ = directory.upsert_practice(
            session,
            item.slug,
            name=item.name,
            reply_domain=item.reply_domain,
            notify_from=str(item.notify_from),
            locale=item.locale,
            settings=item.settings,
        )
        counts["practices"] += 1
        if item.domains:
            from mailbridge.domain.domains import approve

            for domain in item.domains:
                approve(session, practice, domain, "import")
                counts["domains"] += 1
        for result in apply_directory(session, practice, item, atomic=True):
            counts[plural[result.type]] += 1
        if item.routes:
            from mailbridge.domain.routes import RouteIn, upsert_route

            for address, body in item.routes.items():
                upsert_route(session, practice, address, RouteIn.model_validate(body))
                counts["routes"] += 1
    return counts
