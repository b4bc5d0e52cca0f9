"""Bulk directory load (``mailbridge import``, ``mailbridge demo``) in the same shapes as the API."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy.orm import Session

from mailbridge.api.schemas import CompanyIn, PracticeIn, UserIn
from mailbridge.domain import directory
from mailbridge.domain.models import FriendshipState


class PracticeImport(PracticeIn):
    slug: str = Field(pattern=r"^[a-z0-9][a-z0-9-]{0,62}$")
    users: dict[str, UserIn] = {}
    companies: dict[str, CompanyIn] = {}
    favorites: list[tuple[str, str]] = []  # (user, company)
    friendships: list[tuple[str, str, str]] = []  # (user_a, user_b, state)
    domains: list[str] = []  # approved by the operator (who runs the import): routes may use them
    routes: dict[str, dict[str, Any]] = {}


class ImportFile(BaseModel):
    model_config = ConfigDict(extra="forbid")
    practices: list[PracticeImport]


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
        users = {}
        for ext, u in item.users.items():
            users[ext], _ = directory.upsert_user(session, practice, ext, **u.fields())
            counts["users"] += 1
        for ext, c in item.companies.items():
            directory.upsert_company(session, practice, ext, name=c.name)
            counts["companies"] += 1
        for user_ext, company_ext in item.favorites:
            directory.set_favorite(
                session,
                directory.get_user(session, practice, user_ext),
                directory.get_company(session, practice, company_ext),
                True,
            )
            counts["favorites"] += 1
        for a, b, state in item.friendships:
            directory.set_friendship(
                session,
                practice,
                directory.get_user(session, practice, a),
                directory.get_user(session, practice, b),
                FriendshipState(state),
            )
            counts["friendships"] += 1
        if item.routes:
            from mailbridge.domain.routes import RouteIn, upsert_route

            for address, body in item.routes.items():
                upsert_route(session, practice, address, RouteIn.model_validate(body))
                counts["routes"] += 1
    return counts
