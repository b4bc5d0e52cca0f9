"""``/u/{token}``: the one-click unsubscribe endpoint of every notification (RFC 8058), without the API key.

A mail client's unsubscribe button POSTs ``List-Unsubscribe=One-Click`` here, with no cookie and no
key of ours: the signed token is the only credential, and it mutes exactly one (recipient,
conversation) pair. ``GET`` never mutes anything (link scanners and previews fetch URLs on their
own): it shows a tiny page with a button that POSTs. The pages say nothing about the practice, the
conversation or the recipient; they send no referrer (the token is in the URL), cannot be framed,
and are not cached. A forged or altered token answers 404, an expired one 410; both mute nothing.
Muting twice is muting once.
"""

from __future__ import annotations

import logging
from typing import Annotated

from fastapi import APIRouter, Depends, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse
from markupsafe import escape
from pydantic import BaseModel, Field
from sqlalchemy import select
from sqlalchemy.orm import Session

from mailbridge.domain import conversations as convs
from mailbridge.domain import directory, mutes
from mailbridge.domain.db import transaction
from mailbridge.domain.models import Conversation, Practice, User
from mailbridge.observability import NOTIFICATION_MUTES
from mailbridge.outbound.unsubscribe import BadUnsubscribeToken, ExpiredUnsubscribeToken, Muting
from mailbridge.wiring import Services

from .deps import ServicesDep, services

log = logging.getLogger(__name__)
router = APIRouter(tags=["unsubscribe"])
MAX_BODY = 4096

TEXTS = {
    "en": {
        "confirm_title": "Stop email notifications?",
        "confirm": "You will no longer receive emails about new messages in this conversation. You can "
        "still read and answer it in the app, and turn its notifications back on there.",
        "button": "Stop notifications",
        "done_title": "Notifications stopped",
        "done": "You will no longer receive emails about new messages in this conversation.",
        "gone_title": "This link does not work",
        "gone": "It may have been copied incompletely. You can manage your notifications in the app.",
        "expired_title": "This link has expired",
        "expired": "You can manage your notifications in the app.",
    },
    "fr": {
        "confirm_title": "Ne plus recevoir d'e-mails ?",
        "confirm": "Vous ne recevrez plus d'e-mails pour les nouveaux messages de cette conversation. Vous "
        "pouvez toujours la lire et y répondre dans l'application, et y réactiver ses notifications.",
        "button": "Arrêter les notifications",
        "done_title": "Notifications arrêtées",
        "done": "Vous ne recevrez plus d'e-mails pour les nouveaux messages de cette conversation.",
        "gone_title": "Ce lien ne fonctionne pas",
        "gone": "Il a peut-être été copié incomplètement. Vous pouvez gérer vos notifications dans "
        "l'application.",
        "expired_title": "Ce lien a expiré",
        "expired": "Vous pouvez gérer vos notifications dans l'application.",
    },
}
HEADERS = {
    "Cache-Control": "no-store",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; "
    "frame-ancestors 'none'; base-uri 'none'",
}


def page(lang: str, title_key: str, text_key: str, status: int, form: bool = False) -> HTMLResponse:
    """A tiny page: constant text in *lang*, and with *form* a button that POSTs to this same URL
    (no ``action``: the page's own address, whatever prefix a proxy put in front)."""
    texts = TEXTS.get(lang, TEXTS["en"])
    button = ""
    if form:
        button = (
            '<form method="post"><input type="hidden" name="from" value="page">'
            f'<button type="submit">{escape(texts["button"])}</button></form>'
        )
    body = (
        f'<!DOCTYPE html><html lang="{escape(lang)}"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        '<meta name="robots" content="noindex">'
        f"<title>{escape(texts[title_key])}</title>"
        "<style>body{font-family:-apple-system,'Segoe UI',Roboto,Helvetica,Arial,sans-serif;max-width:32rem;"
        "margin:3rem auto;padding:0 1rem;line-height:1.5;color:#1f2933}button{font:inherit;padding:.6rem 1.2rem;"
        "border:0;border-radius:6px;background:#3b6ea5;color:#fff;cursor:pointer}"
        "@media (prefers-color-scheme: dark){body{background:#121417;color:#e3e6ea}}</style></head>"
        f"<body><h1>{escape(texts[title_key])}</h1><p>{escape(texts[text_key])}</p>{button}</body></html>"
    )
    return HTMLResponse(body, status_code=status, headers=HEADERS)


def _check(svc: Services, token: str) -> tuple[Muting, str] | HTMLResponse:
    """The token's (recipient, conversation) and the recipient's language, or the page saying why not."""
    try:
        muting = svc.unsubscribe.open(token)
    except ExpiredUnsubscribeToken:
        return page("en", "expired_title", "expired", 410)
    except BadUnsubscribeToken:
        return page("en", "gone_title", "gone", 404)
    with svc.sessions() as session:
        user = session.get(User, muting.user_id)
        conversation = session.get(Conversation, muting.conversation_id)
        if (
            user is None
            or conversation is None
            or user.practice_id != muting.practice_id
            or conversation.practice_id != muting.practice_id
        ):
            return page("en", "gone_title", "gone", 404)
        return muting, user.locale


@router.get("/u/{token}", response_class=HTMLResponse, include_in_schema=True)
def unsubscribe_page(token: str, svc: Annotated[Services, Depends(services)]) -> HTMLResponse:
    """A page with one button that stops this conversation's notifications; looking mutes nothing."""
    checked = _check(svc, token)
    if isinstance(checked, HTMLResponse):
        return checked
    _, lang = checked
    return page(lang, "confirm_title", "confirm", 200, form=True)


@router.post("/u/{token}", response_class=HTMLResponse)
async def unsubscribe(
    token: str, request: Request, svc: Annotated[Services, Depends(services)]
) -> HTMLResponse:
    """RFC 8058 one-click (``List-Unsubscribe=One-Click``) or the page's button: mute, idempotently."""
    declared = request.headers.get("content-length", "0")
    if not declared.isdigit() or int(declared) > MAX_BODY:
        return page("en", "gone_title", "gone", 413)
    body = await request.body()
    source = "page" if b"from=page" in body[:MAX_BODY] else "one_click"
    return await run_in_threadpool(_mute, svc, token, source)


def _mute(svc: Services, token: str, source: str) -> HTMLResponse:
    checked = _check(svc, token)
    if isinstance(checked, HTMLResponse):
        return checked
    muting, lang = checked
    with transaction(svc.sessions) as session:
        created = mutes.mute(session, muting.practice_id, muting.user_id, muting.conversation_id, source)
        practice = session.get(Practice, muting.practice_id)
        slug = practice.slug if practice is not None else None
    if created:
        NOTIFICATION_MUTES.labels(source).inc()
    log.info(
        "notification_muted",
        extra={
            "practice": slug,
            "conversation": muting.conversation_id,
            "source": source,
            "already": not created,
        },
    )
    return page(lang, "done_title", "done", 200)


# ---- the same mutes for the messaging app, behind the API key ------------------------------------

api_router = APIRouter(prefix="/api/v1/practices/{practice}/conversations/{conversation}", tags=["mutes"])


class MutesOut(BaseModel):
    muted: list[str] = Field(description="external ids of the participants who get no notification emails")


def _conversation(session: Session, practice: str, conversation: str) -> tuple[Practice, Conversation]:
    p = directory.get_practice(session, practice)
    return p, convs.get_conversation(session, p, conversation)


@api_router.get("/mutes", response_model=MutesOut)
def list_mutes(practice: str, conversation: str, svc: ServicesDep) -> MutesOut:
    with transaction(svc.sessions) as session:
        _, c = _conversation(session, practice, conversation)
        ids = mutes.muted_users(session, c.id)
        users = {u.id: u.external_id for u in session.scalars(select(User).where(User.id.in_(ids)))}
        return MutesOut(muted=sorted(users.values()))


@api_router.put("/mutes/{user}", status_code=204)
def put_mute(practice: str, conversation: str, user: str, svc: ServicesDep) -> Response:
    """No more notification emails about this conversation for *user* (as the one-click link does).
    *user* acts for themselves: a conversation they may not read answers 404 ``conversation_not_found``,
    as one that does not exist."""
    with transaction(svc.sessions) as session:
        p = directory.get_practice(session, practice)
        u = directory.get_user(session, p, user)
        c = convs.conversation_for(session, p, conversation, u)  # theirs to mute: one they read
        if mutes.mute(session, p.id, u.id, c.id, "api"):
            NOTIFICATION_MUTES.labels("api").inc()
    return Response(status_code=204)


@api_router.delete("/mutes/{user}", status_code=204)
def delete_mute(practice: str, conversation: str, user: str, svc: ServicesDep) -> Response:
    """Notification emails again (a one-click unsubscribe undone from the app)."""
    with transaction(svc.sessions) as session:
        p = directory.get_practice(session, practice)
        u = directory.get_user(session, p, user)
        mutes.unmute(session, u.id, convs.conversation_for(session, p, conversation, u).id)
    return Response(status_code=204)
