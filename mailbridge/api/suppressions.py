"""Suppressed addresses of a practice: what bounced or complained, why and until when; and forgetting one.

The full address is shown here (the practice's staff need it to fix a client's record); log lines
carry it redacted. Removing a suppression lets notifications go again at once, and the user's
``email_bouncing`` follows (it is derived from these rows).
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Response
from pydantic import BaseModel

from mailbridge.access.apikeys import Principal
from mailbridge.domain import audit, directory, pagination, suppressions
from mailbridge.domain.db import transaction
from mailbridge.domain.errors import NotFound
from mailbridge.domain.models import Suppression, SuppressionReason, utcnow

from .deps import ServicesDep, require_api_key
from .paging import PageQuery, page_query

router = APIRouter(prefix="/api/v1/practices/{practice}", tags=["mail"])
SUPPRESSION_KEYS = (pagination.Key(Suppression.id, "id"),)  # stable: a row's id never changes


class SuppressionOut(BaseModel):
    address: str
    reason: SuppressionReason
    active: bool  # notifications to this address are not sent now (a soft bounce counts first)
    status: str | None  # RFC 3463 status of the report that set the reason, e.g. 5.1.1
    diagnostic: str | None  # the remote server's or the smarthost's words
    count: int  # reports counted since first_seen
    first_seen: datetime
    last_seen: datetime
    expires_at: datetime | None  # soft bounces only; hard bounces and complaints last until removed
    outbox: str | None  # the last notification reported on (GET …/outbound)


class SuppressionItems(BaseModel):
    items: list[SuppressionOut]
    next_cursor: str | None = None


def suppression_out(row: Suppression) -> SuppressionOut:
    now = utcnow()
    live = row.expires_at is None or row.expires_at > now
    return SuppressionOut(
        address=row.address,
        reason=row.reason,
        active=row.active and live,
        status=row.status,
        diagnostic=row.diagnostic,
        count=row.count,
        first_seen=row.first_seen,
        last_seen=row.last_seen,
        expires_at=row.expires_at,
        outbox=row.outbox_id,
    )


@router.get("/suppressions", response_model=SuppressionItems)
def list_suppressions(
    practice: str,
    svc: ServicesDep,
    paging: Annotated[PageQuery, Depends(page_query(default=100, maximum=1000))],
    reason: SuppressionReason | None = None,
    address: str | None = Query(default=None, max_length=320),
) -> SuppressionItems:
    """Newest first (keyset pages: ``limit``, ``cursor`` → ``next_cursor``); expired ones are gone."""
    with transaction(svc.sessions) as session:
        p = directory.get_practice(session, practice)
        query = suppressions.listing_query(p.id, reason=reason, address=address)
        page = pagination.page(
            session, query, SUPPRESSION_KEYS, limit=paging.limit, cursor=paging.cursor, descending=True
        )
        return SuppressionItems(items=[suppression_out(r) for r in page.items], next_cursor=page.next_cursor)


@router.delete("/suppressions/{address}", status_code=204)
def delete_suppression(
    practice: str, address: str, svc: ServicesDep, who: Annotated[Principal, Depends(require_api_key)]
) -> Response:
    """Audited (``suppression_removed``, actor ``api`` for the platform key, ``api-key:<id>`` for a
    practice key): notifications go to the address again at once."""
    actor = audit.SERVICE if who.key_id is None else audit.Actor(f"api-key:{who.key_id}")
    with transaction(svc.sessions) as session:
        p = directory.get_practice(session, practice)
        if not suppressions.remove(session, p, address, actor):
            raise NotFound("suppression_not_found", "no suppression for this address", "address")
    return Response(status_code=204)
