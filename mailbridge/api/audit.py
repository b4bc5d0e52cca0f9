"""The practice's audit trail as the API sees it: who did what to what, newest first, never content."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query
from sqlalchemy import select

from mailbridge.domain import directory, pagination
from mailbridge.domain.db import transaction
from mailbridge.domain.models import AuditEvent

from . import listings
from .deps import ServicesDep
from .paging import PageQuery, page_query
from .schemas import Page

router = APIRouter(prefix="/api/v1/practices/{practice}", tags=["audit"])
AUDIT_KEYS = (pagination.Key(AuditEvent.created_at, "created_at"), pagination.Key(AuditEvent.id, "id"))


@router.get("/audit", response_model=listings.AuditPage)
def audit_trail(
    practice: str,
    svc: ServicesDep,
    paging: Annotated[PageQuery, Depends(page_query())],
    action: str | None = Query(default=None, max_length=64, description="e.g. quarantine_released"),
    target_kind: str | None = Query(default=None, max_length=32, description="e.g. quarantine, message"),
) -> Page:
    with transaction(svc.sessions) as session:
        p = directory.get_practice(session, practice)
        query = select(AuditEvent).where(AuditEvent.practice_id == p.id)
        if action:
            query = query.where(AuditEvent.action == action)
        if target_kind:
            query = query.where(AuditEvent.target_kind == target_kind)
        page = pagination.page(
            session, query, AUDIT_KEYS, limit=paging.limit, cursor=paging.cursor, descending=True
        )
        return Page(
            next_cursor=page.next_cursor,
            items=[
                {
                    "id": row.id,
                    "action": row.action,
                    "actor": row.actor,
                    "target_kind": row.target_kind,
                    "target_id": row.target_id,
                    "details": row.details,
                    "created_at": row.created_at,
                }
                for row in page.items
            ],
        )
