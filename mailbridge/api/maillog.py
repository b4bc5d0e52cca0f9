"""What mail did: the inbound log and the outbound deliveries, for the practice's staff and IT
(suppressed addresses: ``api.suppressions``)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Depends
from sqlalchemy import select

from mailbridge.domain import directory, pagination
from mailbridge.domain.db import transaction
from mailbridge.domain.models import InboundLog, InboundState, Outbox, OutboxState
from mailbridge.domain.pagination import Key

from . import listings
from .deps import ServicesDep
from .paging import PageQuery, page_query
from .schemas import Page

router = APIRouter(prefix="/api/v1/practices/{practice}", tags=["mail"])


INBOUND_KEYS = (Key(InboundLog.received_at, "received_at"), Key(InboundLog.id, "id"))
OUTBOUND_KEYS = (Key(Outbox.created_at, "created_at"), Key(Outbox.id, "id"))
LogPage = Annotated[PageQuery, Depends(page_query(default=100, maximum=1000))]


@router.get("/inbound", response_model=listings.InboundPage)
def inbound(
    practice: str,
    svc: ServicesDep,
    paging: LogPage,
    state: InboundState | None = None,
    reason: str | None = None,
    since: datetime | None = None,
) -> Page:
    """Newest first."""
    with transaction(svc.sessions) as session:
        p = directory.get_practice(session, practice)
        query = select(InboundLog).where(InboundLog.practice_id == p.id)
        if state is not None:
            query = query.where(InboundLog.state == state)
        if reason:
            query = query.where(InboundLog.reason == reason)
        if since is not None:
            query = query.where(InboundLog.received_at >= since)
        page = pagination.page(
            session, query, INBOUND_KEYS, limit=paging.limit, cursor=paging.cursor, descending=True
        )
        return Page(
            next_cursor=page.next_cursor,
            items=[
                {
                    "id": r.id,
                    "received_at": r.received_at,
                    "door": r.door,
                    "peer": r.peer,
                    "mail_from": r.mail_from,
                    "rcpt": r.rcpt,
                    "from": r.from_header,
                    "message_id": r.message_id_header,
                    "token_id": r.token_id,
                    "auth_results": r.auth_results,
                    "rule": r.rule,
                    "reason": r.reason,
                    "state": r.state.value,
                    "smtp_reply": r.smtp_reply,
                    "size": r.size,
                    "conversation": r.conversation_id,
                    "posted_message": r.posted_message_id,
                    "details": r.details,
                }
                for r in page.items
            ],
        )


@router.get("/outbound", response_model=listings.OutboundPage)
def outbound(practice: str, svc: ServicesDep, paging: LogPage, state: OutboxState | None = None) -> Page:
    """Newest first."""
    with transaction(svc.sessions) as session:
        p = directory.get_practice(session, practice)
        query = select(Outbox).where(Outbox.practice_id == p.id)
        if state is not None:
            query = query.where(Outbox.state == state)
        page = pagination.page(
            session, query, OUTBOUND_KEYS, limit=paging.limit, cursor=paging.cursor, descending=True
        )
        return Page(
            next_cursor=page.next_cursor,
            items=[
                {
                    "id": r.id,
                    "kind": r.kind.value,
                    "state": r.state.value,
                    "to": r.to_address,
                    "message": r.message_id,
                    "conversation": r.conversation_id,
                    "attempts": r.attempts,
                    "next_attempt_at": r.next_attempt_at,
                    "last_answer": r.last_answer,
                    "message_id_header": r.message_id_header,
                    "created_at": r.created_at,
                    "sent_at": r.sent_at,
                }
                for r in page.items
            ],
        )
