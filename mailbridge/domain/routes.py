"""Practice addresses (frontdesk@, billing@) and the staff group each one opens a conversation with."""

from __future__ import annotations

import logging
from typing import Literal

from pydantic import BaseModel, ConfigDict
from sqlalchemy import select
from sqlalchemy.orm import Session

from mailbridge.domain.domains import OPERATOR_LOCALS, require_owned
from mailbridge.domain.errors import Invalid, NotFound
from mailbridge.domain.models import ConversationKind, Practice, Route, StaffRole, User, UserKind

log = logging.getLogger(__name__)


class RouteIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    staff: list[str] = []
    roles: list[Literal["provider", "biller", "front_office", "admin"]] = []
    kind: Literal["private", "confidential", "company"] = "private"
    unknown_senders: Literal["reject", "triage"] = "reject"


def _domain_ok(session: Session, practice: Practice, address: str) -> None:
    local, at, domain = address.rpartition("@")
    if not at or not local or "." not in domain or any(c in address for c in "\r\n\x00 <>"):
        raise Invalid(
            "invalid_address", "a full address such as frontdesk@acme.example is required", "address"
        )
    if local.startswith(OPERATOR_LOCALS):
        raise Invalid("reserved_address", "postmaster@ and abuse@ are reserved", "address")
    require_owned(session, practice, address)  # never another practice's domain, nor a stranger's


def upsert_route(session: Session, practice: Practice, address: str, body: RouteIn) -> tuple[Route, bool]:
    address = address.lower()
    _domain_ok(session, practice, address)
    if not body.staff and not body.roles:
        raise Invalid("empty_group", "a route needs staff or roles", "staff")
    for ext in body.staff:
        user = session.scalar(
            select(User).where(
                User.practice_id == practice.id, User.external_id == ext, User.deleted_at.is_(None)
            )
        )
        if user is None or user.kind != UserKind.staff:
            raise Invalid("unknown_staff", f"{ext!r} is not a staff member", "staff")
    route = session.scalar(select(Route).where(Route.address == address))
    if route is not None and route.practice_id != practice.id:
        # The domain is this practice's (checked above), so the other practice's route here is one
        # that receives nothing (left from before ownership, issue 11 #6): the owner takes the address.
        log.warning(
            "route_taken_over",
            extra={"address": address, "from_practice_id": route.practice_id, "practice_id": practice.id},
        )
        session.delete(route)
        session.flush()
        route = None
    created = route is None
    if route is None:
        route = Route(practice_id=practice.id, address=address)
        session.add(route)
    route.staff = list(body.staff)
    route.roles = list(body.roles)
    route.kind = ConversationKind(body.kind)
    route.unknown_senders = body.unknown_senders
    session.flush()
    return route, created


def get_route(session: Session, practice: Practice, address: str) -> Route:
    route = session.scalar(
        select(Route).where(Route.practice_id == practice.id, Route.address == address.lower())
    )
    if route is None:
        raise NotFound("route_not_found", "route not found")
    return route


def delete_route(session: Session, practice: Practice, address: str) -> None:
    session.delete(get_route(session, practice, address))


def route_for_address(session: Session, address: str) -> Route | None:
    return session.scalar(select(Route).where(Route.address == address.lower()))


def group_members(session: Session, route: Route) -> list[User]:
    """Explicit staff plus every staff member holding one of the route's roles; active ones only (a
    deactivated account takes no part in new conversations)."""
    members: dict[int, User] = {}
    if route.staff:
        for user in session.scalars(
            select(User).where(
                User.practice_id == route.practice_id,
                User.external_id.in_(route.staff),
                User.active.is_(True),
            )
        ):
            members[user.id] = user
    if route.roles:
        roles = [StaffRole(r) for r in route.roles]
        for user in session.scalars(
            select(User).where(
                User.practice_id == route.practice_id,
                User.kind == UserKind.staff,
                User.role.in_(roles),
                User.active.is_(True),
            )
        ):
            members[user.id] = user
    return list(members.values())


def route_out(route: Route) -> dict[str, object]:
    return {
        "address": route.address,
        "staff": route.staff,
        "roles": route.roles,
        "kind": route.kind.value,
        "unknown_senders": route.unknown_senders,
    }
