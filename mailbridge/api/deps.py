"""Request plumbing shared by the API modules: the services, the API key, and serialisers."""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends, HTTPException, Request

from mailbridge.domain.models import Attachment, Conversation, Message
from mailbridge.wiring import Services

from .schemas import AttachmentOut, ConversationOut, MessageOut


async def services(request: Request) -> Services:
    svc: Services = request.app.state.services
    return svc


async def require_api_key(request: Request, svc: Annotated[Services, Depends(services)]) -> None:
    """Bearer key on every route but /healthz; compared in constant time. ``async``: pure CPU, no
    reason to hop to the threadpool twice per request."""
    expected = svc.settings.api_key
    header = request.headers.get("authorization", "")
    scheme, _, given = header.partition(" ")
    if not expected or scheme.lower() != "bearer" or not hmac.compare_digest(given.strip(), expected):
        raise HTTPException(status_code=401, detail="missing or wrong API key")


async def require_platform_key(request: Request) -> None:
    """Platform-wide settings (webhooks receiving every practice's events) are for the global key.

    Today every key is the global key (``require_api_key`` runs first). Practice-scoped keys, when
    they land, mark the request with the practice they are limited to (``request.state.key_practice``);
    this one dependency then refuses them, and every platform route uses it."""
    if getattr(request.state, "key_practice", None) is not None:
        raise HTTPException(status_code=403, detail="platform routes need the global API key")


ServicesDep = Annotated[Services, Depends(services)]


def attachment_out(a: Attachment) -> AttachmentOut:
    return AttachmentOut(
        id=a.id, filename=a.filename, content_type=a.content_type, size=a.size, sha256=a.sha256
    )


def message_out(m: Message) -> MessageOut:
    return MessageOut(
        id=m.id,
        author=m.author.external_id,
        body=m.body,
        body_html=m.body_html,
        source=m.source.value,
        internal=m.internal,
        created_at=m.created_at,
        attachments=[attachment_out(a) for a in m.attachments],
    )


def conversation_out(c: Conversation, messages: list[Message] | None = None) -> ConversationOut:
    return ConversationOut(
        id=c.id,
        kind=c.kind.value,
        company=c.company.external_id if c.company else None,
        subject=c.subject,
        participants=[p.user.external_id for p in c.active_participants()],
        created_at=c.created_at,
        messages=[message_out(m) for m in messages or []],
    )
