"""Who is asking: the session behind the cookie, the practice in the URL (404 outside the scope)."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy import select
from sqlalchemy.orm import Session

from mailbridge.domain.db import transaction, writer_gate
from mailbridge.domain.models import OperatorAudit, OperatorSession, Practice
from mailbridge.wiring import Services

from . import accounts, auth
from .web import Ctx


class PracticeNotFound(Exception):
    """Absent, or outside the operator's scope: the same 404 (no oracle for other practices)."""


def services(request: Request) -> Services:
    svc: Services = request.app.state.services
    return svc


ServicesDep = Annotated[Services, Depends(services)]


def current(request: Request, svc: ServicesDep) -> Ctx:
    """The signed-in operator, or LoginRequired (the handler sends the browser to the sign-in page)."""
    token = request.cookies.get(auth.COOKIE)
    # No cookie, or one naming no session (a stranger's request): answered from a read, without the
    # SQLite writer gate the mail pipeline's writes wait on (a flood of those must not slow intake).
    if not token or len(token) > 128:
        raise auth.LoginRequired()
    with svc.sessions() as session:
        if session.get(OperatorSession, auth.token_hash(token)) is None:
            raise auth.LoginRequired()
    with writer_gate(svc.sessions), transaction(svc.sessions) as session:
        info, operator = auth.load_session(session, token, svc.settings)
        scope = accounts.scope_of(session, operator)
        practices = accounts.practices_for(session, scope)
    return Ctx(
        operator=operator,
        scope=scope,
        csrf=info.csrf,
        session_id=info.id,
        locale=operator.locale if operator.locale in ("en", "fr") else "en",
        practices=practices,
    )


CtxDep = Annotated[Ctx, Depends(current)]


def for_practice(practice: str, ctx: CtxDep) -> Ctx:
    """The practice named in the URL, if this operator may see it; otherwise 404 as for no practice."""
    found = next((p for p in ctx.practices if p.slug == practice), None)
    if found is None:
        raise PracticeNotFound()
    ctx.practice = found
    return ctx


PracticeCtx = Annotated[Ctx, Depends(for_practice)]


def audit(
    svc: Services,
    ctx: Ctx,
    action: str,
    target_kind: str = "",
    target_id: str = "",
    details: dict[str, object] | None = None,
    peer: str | None = None,
) -> None:
    """One row per operator action (never content): who, what, on which practice's what, when."""
    with writer_gate(svc.sessions), transaction(svc.sessions) as session:
        record(session, ctx, action, target_kind, target_id, details, peer)


def record(
    session: Session,
    ctx: Ctx,
    action: str,
    target_kind: str = "",
    target_id: str = "",
    details: dict[str, object] | None = None,
    peer: str | None = None,
) -> None:
    session.add(
        OperatorAudit(
            operator_id=ctx.operator.id,
            operator_name=ctx.operator.name,
            practice_id=ctx.practice.id if ctx.practice is not None else None,
            action=action,
            target_kind=target_kind,
            target_id=target_id[:320],
            details=details or {},
            peer=peer,
        )
    )


def practice_by_slug(svc: Services, slug: str) -> Practice | None:
    with svc.sessions() as session:
        return session.scalar(select(Practice).where(Practice.slug == slug))
