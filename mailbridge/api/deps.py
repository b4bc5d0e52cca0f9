"""Request plumbing shared by the API modules: the services, the API key, and serialisers."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import Depends, HTTPException, Request, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.concurrency import run_in_threadpool

from mailbridge.access import apikeys
from mailbridge.access.apikeys import Principal
from mailbridge.domain.db import transaction
from mailbridge.domain.errors import Forbidden, NotFound
from mailbridge.domain.models import Attachment, Conversation, Message
from mailbridge.wiring import Services

from .schemas import AttachmentOut, ConversationOut, MessageOut


async def services(request: Request) -> Services:
    svc: Services = request.app.state.services
    return svc


bearer = HTTPBearer(
    auto_error=False,
    scheme_name="apiKey",
    description=(
        "`Authorization: Bearer <key>`. The platform key (`MAILBRIDGE_API_KEY`) reaches every practice "
        "and the platform routes. A practice key (`mbk_…`, from `mailbridge keys create --practice P`) "
        "reaches its own practice only: any other practice answers 404 `practice_not_found`, exactly as "
        "an unknown one; platform routes answer 403 `platform_key_required`; a `read` key answers 403 "
        "`read_only_key` to anything but GET."
    ),
)


def _unauthorized() -> HTTPException:
    return HTTPException(status_code=401, detail="missing or wrong API key")


def _lookup(svc: Services, given: str) -> Principal | None:
    with transaction(svc.sessions) as session:
        return apikeys.authenticate(session, given)


async def principal(
    svc: Annotated[Services, Depends(services)],
    credentials: Annotated[HTTPAuthorizationCredentials | None, Security(bearer)],
) -> Principal:
    """Who calls. The platform key is compared in constant time without leaving the event loop; a
    practice key costs one indexed read in the threadpool. Anything else, including a header that
    is not printable ASCII, is 401 (never a 500)."""
    if credentials is None:
        raise _unauthorized()
    given = credentials.credentials.strip()
    if not given or not given.isascii() or not given.isprintable():
        raise _unauthorized()
    if apikeys.is_platform_key(given, svc.settings.api_key):
        return apikeys.PLATFORM
    if given.startswith(apikeys.KEY_PREFIX):
        found = await run_in_threadpool(_lookup, svc, given)
        if found is not None:
            return found
    raise _unauthorized()


async def require_api_key(request: Request, who: Annotated[Principal, Depends(principal)]) -> Principal:
    """Practice routes (``/api/v1/practices/{practice}…``): the platform key, or a key of this very
    practice. Another practice's key gets the same 404 as an unknown practice, before the body is
    even read, so a key cannot tell which practices exist."""
    if who.is_platform:
        request.state.authorised_practice = request.path_params.get("practice")
        return who
    slug = request.path_params.get("practice")
    if slug is None:
        raise Forbidden("platform_key_required", "this route needs the platform's key")
    if slug != who.practice_slug:
        raise NotFound("practice_not_found", f"practice {slug!r} not found")
    if who.scope == "read" and request.method not in apikeys.READ_METHODS:
        raise Forbidden("read_only_key", "this key may only read (GET)")
    request.state.authorised_practice = slug  # problems may now answer in the ``as`` user's language
    return who


async def require_platform(who: Annotated[Principal, Depends(principal)]) -> Principal:
    """Platform routes (``/metrics``, ``/api/v1/platform/…``): the platform key only."""
    if not who.is_platform:
        raise Forbidden("platform_key_required", "this route needs the platform's key")
    return who


ServicesDep = Annotated[Services, Depends(services)]


def attachment_out(a: Attachment) -> AttachmentOut:
    return AttachmentOut(
        id=a.id, filename=a.filename, content_type=a.content_type, size=a.size, sha256=a.sha256
    )


def message_out(m: Message) -> MessageOut:
    return MessageOut(
        id=m.id,
        conversation=m.conversation_id,
        author=m.author.external_id,
        body=m.body,
        body_html=m.body_html,
        source=m.source.value,
        internal=m.internal,
        created_at=m.created_at,
        attachments=[attachment_out(a) for a in m.attachments],
    )


def conversation_out(
    c: Conversation,
    messages: list[Message] | None = None,
    summary: tuple[int, datetime | None] | None = None,
) -> ConversationOut:
    """With *messages* (the reader's thread), the count and latest time come from them; a list item
    passes its *summary* (count, latest) from one query for the whole page instead."""
    shown = messages or []
    if summary is None:
        summary = (len(shown), max((m.created_at for m in shown), default=None))
    return ConversationOut(
        id=c.id,
        kind=c.kind.value,
        company=c.company.external_id if c.company else None,
        subject=c.subject,
        participants=[p.user.external_id for p in c.active_participants()],
        created_at=c.created_at,
        message_count=summary[0],
        last_message_at=summary[1],
        messages=[message_out(m) for m in shown],
    )
