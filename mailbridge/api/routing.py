"""Practice addresses (routes) and the staff-only quarantine of mail from unknown senders."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Query, Response
from pydantic import BaseModel, ConfigDict
from sqlalchemy import select

from mailbridge.domain import directory
from mailbridge.domain.db import transaction
from mailbridge.domain.models import QuarantineItem, Route
from mailbridge.domain.routes import RouteIn, route_out, upsert_route
from mailbridge.domain.routes import delete_route as remove_route
from mailbridge.inbound import quarantine

from .deps import ServicesDep, message_out
from .schemas import Items, MessageOut

router = APIRouter(prefix="/api/v1/practices/{practice}", tags=["routing"])


class ReleaseIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    client: str | None = None


@router.put("/routes/{address}")
def put_route(
    practice: str, address: str, body: RouteIn, svc: ServicesDep, response: Response
) -> dict[str, Any]:
    with transaction(svc.sessions) as session:
        p = directory.get_practice(session, practice)
        route, created = upsert_route(session, p, address, body)
        response.status_code = 201 if created else 200
        return route_out(route)


@router.get("/routes", response_model=Items)
def list_routes(practice: str, svc: ServicesDep) -> Items:
    with transaction(svc.sessions) as session:
        p = directory.get_practice(session, practice)
        rows = session.scalars(select(Route).where(Route.practice_id == p.id).order_by(Route.address)).all()
        return Items(items=[route_out(r) for r in rows])


@router.delete("/routes/{address}", status_code=204)
def delete_route(practice: str, address: str, svc: ServicesDep) -> Response:
    with transaction(svc.sessions) as session:
        p = directory.get_practice(session, practice)
        remove_route(session, p, address)
    return Response(status_code=204)


@router.get("/quarantine", response_model=Items)
def list_quarantine(practice: str, svc: ServicesDep, state: str = Query(default="held")) -> Items:
    with transaction(svc.sessions) as session:
        p = directory.get_practice(session, practice)
        rows = session.scalars(
            select(QuarantineItem)
            .where(QuarantineItem.practice_id == p.id, QuarantineItem.state == state)
            .order_by(QuarantineItem.created_at.desc())
        ).all()
        return Items(items=[quarantine.item_out(r) for r in rows])


@router.post("/quarantine/{item}/release", status_code=201, response_model=MessageOut)
def release(
    practice: str, item: str, body: ReleaseIn, svc: ServicesDep, as_: str = Query(alias="as")
) -> MessageOut:
    with transaction(svc.sessions) as session:
        p = directory.get_practice(session, practice)
        return message_out(quarantine.release(session, svc.blobs, p, item, body.client, as_))


@router.post("/quarantine/{item}/discard", status_code=204)
def discard(practice: str, item: str, svc: ServicesDep) -> Response:
    with transaction(svc.sessions) as session:
        p = directory.get_practice(session, practice)
        quarantine.discard(session, p, item)
    return Response(status_code=204)
