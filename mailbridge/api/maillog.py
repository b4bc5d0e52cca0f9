"""What mail did: the inbound log and the outbound deliveries, for the practice's staff and IT."""

from __future__ import annotations

from datetime import datetime

from fastapi import APIRouter, Query
from sqlalchemy import select

from mailbridge.domain import directory
from mailbridge.domain.db import transaction
from mailbridge.domain.models import InboundLog, InboundState, Outbox, OutboxState

from .deps import ServicesDep
from .schemas import Items

router = APIRouter(prefix="/api/v1/practices/{practice}", tags=["mail"])


@router.get("/inbound", response_model=Items)
def inbound(
    practice: str,
    svc: ServicesDep,
    state: InboundState | None = None,
    reason: str | None = None,
    since: datetime | None = None,
    limit: int = Query(default=100, ge=1, le=1000),
) -> Items:
    with transaction(svc.sessions) as session:
        p = directory.get_practice(session, practice)
        query = select(InboundLog).where(InboundLog.practice_id == p.id)
        if state is not None:
            query = query.where(InboundLog.state == state)
        if reason:
            query = query.where(InboundLog.reason == reason)
        if since is not None:
            query = query.where(InboundLog.received_at >= since)
        rows = session.scalars(query.order_by(InboundLog.received_at.desc()).limit(limit)).all()
        return Items(
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
                for r in rows
            ]
        )


@router.get("/outbound", response_model=Items)
def outbound(
    practice: str,
    svc: ServicesDep,
    state: OutboxState | None = None,
    limit: int = Query(default=100, ge=1, le=1000),
) -> Items:
    with transaction(svc.sessions) as session:
        p = directory.get_practice(session, practice)
        query = select(Outbox).where(Outbox.practice_id == p.id)
        if state is not None:
            query = query.where(Outbox.state == state)
        rows = session.scalars(query.order_by(Outbox.created_at.desc()).limit(limit)).all()
        return Items(
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
                for r in rows
            ]
        )
