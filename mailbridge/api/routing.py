"""Practice addresses (routes) and the staff-only quarantine of mail from unknown senders."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Query, Response
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import select

from mailbridge.domain import directory
from mailbridge.domain.db import transaction
from mailbridge.domain.models import Route
from mailbridge.domain.routes import RouteIn, route_out, upsert_route
from mailbridge.domain.routes import delete_route as remove_route
from mailbridge.inbound import quarantine

from . import listings
from .deps import ServicesDep, message_out
from .paging import PageQuery, page_query
from .schemas import Items, Locale, MessageOut, Page

router = APIRouter(prefix="/api/v1/practices/{practice}", tags=["routing"])


class NewContactIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    external_id: str | None = Field(default=None, min_length=1, max_length=128)
    name: str | None = Field(default=None, min_length=1, max_length=255)
    locale: Locale | None = None


class ReleaseIn(BaseModel):
    """Route mail: ``client`` (an existing client) or ``new_contact`` (created from the sender), or
    neither when the directory now has exactly one client at the sender's address. Replies: neither."""

    model_config = ConfigDict(extra="forbid")
    client: str | None = None
    new_contact: NewContactIn | None = None


class ContactOut(BaseModel):
    id: str
    email: str
    name: str
    created: bool


class ReleasedOut(MessageOut):
    """The posted message (as ``GET …/messages`` shows it), its conversation and, for route mail, the
    client it was released to (``created``: a new contact; the app learns its ``id`` here)."""

    conversation: str
    contact: ContactOut | None = None


@router.put("/routes/{address}")
def put_route(
    practice: str, address: str, body: RouteIn, svc: ServicesDep, response: Response
) -> dict[str, Any]:
    with transaction(svc.sessions) as session:
        p = directory.get_practice(session, practice)
        route, created = upsert_route(session, p, address, body)
        response.status_code = 201 if created else 200
        return route_out(route)


@router.get("/routes", response_model=listings.RouteList)
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


@router.get("/quarantine", response_model=listings.QuarantinePage)
def list_quarantine(
    practice: str,
    svc: ServicesDep,
    state: str = Query(default="held"),
    paging: PageQuery = Depends(page_query()),
) -> Page:
    """Newest first."""
    with transaction(svc.sessions) as session:
        p = directory.get_practice(session, practice)
        page = quarantine.list_items(session, p, state, limit=paging.limit, cursor=paging.cursor)
        return Page(items=page.items, next_cursor=page.next_cursor)


@router.get("/quarantine/{item}")
def get_quarantined(practice: str, item: str, svc: ServicesDep) -> dict[str, Any]:
    """One item with what a release would post now (text, hidden part, internal flag, file verdicts)."""
    with transaction(svc.sessions) as session:
        p = directory.get_practice(session, practice)
        return quarantine.describe(session, p, item, svc.vault, fingerprint_key=svc.fingerprint_key)


@router.post("/quarantine/{item}/release", status_code=201, response_model=ReleasedOut)
def release(
    practice: str,
    item: str,
    body: ReleaseIn,
    svc: ServicesDep,
    as_: str | None = Query(default=None, alias="as"),
) -> ReleasedOut:
    with transaction(svc.sessions) as session:
        p = directory.get_practice(session, practice)
        # Mail held on a domain that is not this practice's is refused (409 domain_not_owned) by
        # quarantine.release itself, before the actor is even asked for: the console calls it too.
        quarantine.require_own_mail(session, p, quarantine.get_item(session, p, item))
        actor = quarantine.staff_actor(session, p, as_)
        spec = body.new_contact
        done = quarantine.release(
            session,
            svc.blobs,
            p,
            item,
            actor,
            vault=svc.vault,
            client_ext=body.client,
            new_contact=quarantine.NewContact(spec.external_id, spec.name, spec.locale) if spec else None,
            fingerprint_key=svc.fingerprint_key,
        )
        contact = done.contact
        out = ReleasedOut(
            **message_out(done.message).model_dump(),  # conversation included
            contact=ContactOut(
                id=contact.external_id, email=contact.email, name=contact.name, created=done.contact_created
            )
            if contact is not None
            else None,
        )
    quarantine.forget_raw(svc.sessions, svc.vault, [done.inbound_id])
    return out


@router.post("/quarantine/{item}/discard", status_code=204)
def discard(
    practice: str, item: str, svc: ServicesDep, as_: str | None = Query(default=None, alias="as")
) -> Response:
    """``as`` (the staff member discarding) is required since discards are audited: 422 ``actor_required``."""
    with transaction(svc.sessions) as session:
        p = directory.get_practice(session, practice)
        inbound_id = quarantine.discard(session, p, item, quarantine.staff_actor(session, p, as_))
    quarantine.forget_raw(svc.sessions, svc.vault, [inbound_id])
    return Response(status_code=204)
