"""Webhook endpoints (per practice, and platform-wide), their delivery log, redelivery, and the events.

``PUT …/webhooks/{name}`` creates or changes an endpoint; the response that creates it is the only
one that shows its ``secret`` (so is the response of ``rotate-secret``). The same routes under
``/api/v1/webhooks/{name}`` manage platform endpoints, which receive every practice's events: only
the global API key may (``require_platform``).
"""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Response
from pydantic import Field
from sqlalchemy import select
from sqlalchemy.orm import Session

from mailbridge.domain import directory, pagination
from mailbridge.domain.db import transaction
from mailbridge.domain.events import EVENT_TYPES
from mailbridge.domain.models import Event, Practice
from mailbridge.webhooks import endpoints
from mailbridge.webhooks.addresses import check_url
from mailbridge.webhooks.payloads import Renderer, event_out

from . import listings
from .deps import ServicesDep, require_platform
from .paging import PageQuery, page_out, page_query
from .schemas import Items, Page, Strict

practice_router = APIRouter(prefix="/api/v1/practices/{practice}", tags=["webhooks"])
platform_router = APIRouter(prefix="/api/v1", tags=["webhooks"], dependencies=[Depends(require_platform)])
Paging = Annotated[PageQuery, Depends(page_query())]
EVENT_KEYS = (pagination.Key(Event.seq, "seq"),)
MAX_OVERLAP = 7 * 24 * 3600


class WebhookIn(Strict):
    url: str = Field(max_length=2048, description="https:// URL; must resolve to public addresses only")
    events: list[str] = Field(
        min_length=1,
        max_length=len(EVENT_TYPES) + 1,
        description=f'types, or ["*"]: {", ".join(EVENT_TYPES)}',
    )
    active: bool = True
    include_content: bool = Field(
        default=False,
        description="add message subject, text and attachment metadata, chart note title and text",
    )


class RotateIn(Strict):
    overlap_seconds: int | None = Field(
        default=None,
        ge=0,
        le=MAX_OVERLAP,
        description="how long the old secret keeps signing beside the new one (default: the operator's "
        "webhook_secret_overlap_seconds, 24 h)",
    )


def _scope(session: Session, practice: str | None) -> Practice | None:
    return directory.get_practice(session, practice) if practice is not None else None


def _put(practice: str | None, name: str, body: WebhookIn, svc: Any, response: Response) -> dict[str, Any]:
    settings = svc.settings
    check_url(
        body.url,
        svc.resolver,
        allow_private=settings.webhook_allow_private,
        allow_http=settings.webhook_allow_http,
    )
    with transaction(svc.sessions) as session:
        scope = _scope(session, practice)
        spec = endpoints.EndpointSpec(body.url, body.events, body.active, body.include_content)
        endpoint, secret = endpoints.upsert(session, svc.keyring, scope, name, spec)
        response.status_code = 201 if secret is not None else 200
        return endpoints.endpoint_out(endpoint, secret)


def _get(practice: str | None, name: str, svc: Any) -> dict[str, Any]:
    with transaction(svc.sessions) as session:
        return endpoints.endpoint_out(endpoints.get(session, _scope(session, practice), name))


def _list(practice: str | None, svc: Any) -> Items:
    with transaction(svc.sessions) as session:
        return Items(
            items=[endpoints.endpoint_out(e) for e in endpoints.listing(session, _scope(session, practice))]
        )


def _delete(practice: str | None, name: str, svc: Any) -> Response:
    with transaction(svc.sessions) as session:
        session.delete(endpoints.get(session, _scope(session, practice), name))
    return Response(status_code=204)


def _rotate(practice: str | None, name: str, body: RotateIn | None, svc: Any) -> dict[str, Any]:
    seconds = body.overlap_seconds if body is not None and body.overlap_seconds is not None else None
    overlap = timedelta(seconds=svc.settings.webhook_secret_overlap_seconds if seconds is None else seconds)
    with transaction(svc.sessions) as session:
        endpoint = endpoints.get(session, _scope(session, practice), name)
        secret = endpoints.rotate(session, svc.keyring, endpoint, overlap)
        return endpoints.endpoint_out(endpoint, secret)


def _deliveries(practice: str | None, name: str, state: str | None, paging: PageQuery, svc: Any) -> Page:
    with transaction(svc.sessions) as session:
        endpoint = endpoints.get(session, _scope(session, practice), name)
        page = endpoints.deliveries_page(
            session, endpoint, state=state, limit=paging.limit, cursor=paging.cursor
        )
        return page_out(page, endpoints.delivery_out)


def _redeliver(practice: str | None, name: str, delivery: str, svc: Any) -> dict[str, Any]:
    with transaction(svc.sessions) as session:
        endpoint = endpoints.get(session, _scope(session, practice), name)
        return endpoints.delivery_out(endpoints.redeliver(session, endpoint, delivery))


STATE_DOC = "pending | delivered | failed | skipped"


# ---- a practice's endpoints ------------------------------------------------------------------------


@practice_router.put("/webhooks/{name}")
def put_webhook(
    practice: str, name: str, body: WebhookIn, svc: ServicesDep, response: Response
) -> dict[str, Any]:
    """201 with ``secret`` (shown this once) when created; 200 without it when changed."""
    return _put(practice, name, body, svc, response)


@practice_router.get("/webhooks", response_model=listings.WebhookList)
def list_webhooks(practice: str, svc: ServicesDep) -> Items:
    return _list(practice, svc)


@practice_router.get("/webhooks/{name}")
def get_webhook(practice: str, name: str, svc: ServicesDep) -> dict[str, Any]:
    return _get(practice, name, svc)


@practice_router.delete("/webhooks/{name}", status_code=204)
def delete_webhook(practice: str, name: str, svc: ServicesDep) -> Response:
    return _delete(practice, name, svc)


@practice_router.post("/webhooks/{name}/rotate-secret")
def rotate_secret(practice: str, name: str, svc: ServicesDep, body: RotateIn | None = None) -> dict[str, Any]:
    """A new ``secret``, shown this once; the old one keeps signing during the overlap."""
    return _rotate(practice, name, body, svc)


@practice_router.get("/webhooks/{name}/deliveries", response_model=listings.DeliveryPage)
def list_deliveries(
    practice: str,
    name: str,
    svc: ServicesDep,
    paging: Paging,
    state: str | None = Query(None, description=STATE_DOC),
) -> Page:
    """The endpoint's delivery log, newest first."""
    return _deliveries(practice, name, state, paging, svc)


@practice_router.post("/webhooks/{name}/deliveries/{delivery}/redeliver", status_code=202)
def redeliver(practice: str, name: str, delivery: str, svc: ServicesDep) -> dict[str, Any]:
    """Send the event again (same ``webhook-id``), from the start of the retry schedule."""
    return _redeliver(practice, name, delivery, svc)


@practice_router.get("/events", response_model=listings.EventPage)
def list_events(
    practice: str,
    svc: ServicesDep,
    paging: Paging,
    type: str | None = Query(default=None, description="one event type"),
) -> Page:
    """The practice's events, oldest first, without content: what a webhook would have said, for
    catching up (events recorded during a walk appear on later pages). Kept webhook_retention_days."""
    with transaction(svc.sessions) as session:
        p = directory.get_practice(session, practice)
        query = select(Event).where(Event.practice_id == p.id)
        if type:
            query = query.where(Event.type == type)
        page = pagination.page(session, query, EVENT_KEYS, limit=paging.limit, cursor=paging.cursor)
        renderer = Renderer(session, page.items, set())
        return page_out(page, lambda event: event_out(renderer, event))


# ---- platform endpoints: every practice's events --------------------------------------------------


@platform_router.put("/webhooks/{name}")
def put_platform_webhook(name: str, body: WebhookIn, svc: ServicesDep, response: Response) -> dict[str, Any]:
    """A platform endpoint receives every practice's events (``data.practice`` says whose)."""
    return _put(None, name, body, svc, response)


@platform_router.get("/webhooks", response_model=listings.WebhookList)
def list_platform_webhooks(svc: ServicesDep) -> Items:
    return _list(None, svc)


@platform_router.get("/webhooks/{name}")
def get_platform_webhook(name: str, svc: ServicesDep) -> dict[str, Any]:
    return _get(None, name, svc)


@platform_router.delete("/webhooks/{name}", status_code=204)
def delete_platform_webhook(name: str, svc: ServicesDep) -> Response:
    return _delete(None, name, svc)


@platform_router.post("/webhooks/{name}/rotate-secret")
def rotate_platform_secret(name: str, svc: ServicesDep, body: RotateIn | None = None) -> dict[str, Any]:
    return _rotate(None, name, body, svc)


@platform_router.get("/webhooks/{name}/deliveries", response_model=listings.DeliveryPage)
def list_platform_deliveries(
    name: str, svc: ServicesDep, paging: Paging, state: str | None = Query(None, description=STATE_DOC)
) -> Page:
    return _deliveries(None, name, state, paging, svc)


@platform_router.post("/webhooks/{name}/deliveries/{delivery}/redeliver", status_code=202)
def redeliver_platform(name: str, delivery: str, svc: ServicesDep) -> dict[str, Any]:
    return _redeliver(None, name, delivery, svc)
