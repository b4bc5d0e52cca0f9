"""The console's pages for one practice: overview, trace, inbound, quarantine, deliveries, routes and
mailboxes, DNS and DKIM, templates; and the audit of operator actions.

Every action calls the domain function the JSON API calls (quarantine release and discard,
routes, mailboxes, un-suppress, reprocess): no rule is written twice. Every action is a form POST
with the session's CSRF token, answered by a redirect (the result shown on the next page).
"""

from __future__ import annotations

import email.parser
import email.policy
from datetime import UTC, datetime
from typing import Annotated, Any, cast
from urllib.parse import urlencode

from fastapi import APIRouter, Form, Query, Request, Response
from fastapi.responses import HTMLResponse, RedirectResponse
from pydantic import ValidationError

from mailbridge.domain import audit as domain_audit
from mailbridge.domain import directory, suppressions
from mailbridge.domain.db import transaction, writer_gate
from mailbridge.domain.errors import DomainError, NotFound
from mailbridge.domain.models import ConversationKind, InboundLog, InboundState, OutboxState
from mailbridge.domain.routes import RouteIn, delete_route, upsert_route
from mailbridge.inbound import quarantine, reprocess
from mailbridge.ingress.mailboxes import MailboxIn, delete_mailbox, upsert_mailbox
from mailbridge.outbound.render import LOCALES, NOTICE_TEXTS
from mailbridge.storage.raw import raw_available, read_raw_head
from mailbridge.wiring import pipeline_deps

from . import auth, charts, dnscheck, queries, samples
from .deps import CtxDep, PracticeCtx, ServicesDep, audit, record
from .i18n import translator
from .web import PREVIEW_CSP, Ctx, page

router = APIRouter()
P = "/p/{practice}"
Csrf = Annotated[str, Form(max_length=200)]
MAX_RAW_SHOWN = 512 * 1024
MAX_HEADERS = 200


def _back(ctx: Ctx, path: str, **params: str) -> RedirectResponse:
    assert ctx.practice is not None
    query = urlencode({k: v for k, v in params.items() if v})
    return RedirectResponse(
        f"/console/p/{ctx.practice.slug}{path}" + (f"?{query}" if query else ""), status_code=303
    )


def _date(value: str | None) -> datetime | None:
    if not value:
        return None
    try:
        parsed = datetime.fromisoformat(value.strip()[:32])
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _flash(request: Request) -> dict[str, str]:
    return {k: request.query_params.get(k, "")[:500] for k in ("done", "error")}


# ---- overview --------------------------------------------------------------------------------------

INBOUND_SERIES = (
    ("posted", ("posted",)),
    ("refused", ("rejected",)),
    ("quarantined", ("quarantined",)),
    ("auto-reply", ("dropped_auto_reply",)),
    ("bounce", ("bounce",)),
    ("duplicate", ("duplicate",)),
    ("deferred", ("deferred",)),
)
OUTBOUND_SERIES = (
    ("sent", ("sent",)),
    ("deferred", ("deferred",)),
    ("failed", ("failed",)),
    ("suppressed", ("suppressed",)),
)


@router.get(P + "/", response_class=HTMLResponse)
def overview(svc: ServicesDep, ctx: PracticeCtx) -> Response:
    assert ctx.practice is not None
    _ = translator(ctx.locale)
    pid = ctx.practice.id
    graphs: dict[str, list[tuple[str, str]]] = {}
    with svc.sessions() as session:
        for unit, label in (("hour", _("Last 24 hours")), ("day", _("Last 7 days"))):
            samples_ = queries.latencies(session, pid, unit)
            graphs[unit] = [
                (
                    label,
                    charts.stacked(
                        _("Inbound by outcome"),
                        unit,
                        queries.inbound_counts(session, pid, unit),
                        INBOUND_SERIES,
                        _,
                    ),
                ),
                (label, charts.reasons(_("Refused by reason"), queries.refused_reasons(session, pid, unit))),
                (
                    label,
                    charts.stacked(
                        _("Outbound by state"),
                        unit,
                        queries.outbound_counts(session, pid, unit),
                        OUTBOUND_SERIES,
                        _,
                    ),
                ),
                (
                    label,
                    charts.latency(_("Reply → notification latency (seconds)"), unit, samples_),
                ),
            ]
        waiting, oldest = queries.waiting_quarantine(session, pid)
        boxes = queries.mailboxes(session, pid)
    report = dnscheck.practice_records(
        svc.sessions, ctx.practice.slug, svc.settings, svc.resolver, live=False
    )
    return page(
        "overview.html",
        ctx,
        title=_("Overview"),
        graphs=graphs,
        waiting=waiting,
        oldest=oldest,
        mailboxes=boxes,
        dns=report,
    )


# ---- trace and inbound -----------------------------------------------------------------------------


@router.get(P + "/trace", response_class=HTMLResponse)
def trace(
    svc: ServicesDep,
    ctx: PracticeCtx,
    address: Annotated[str, Query(max_length=320)] = "",
    message_id: Annotated[str, Query(max_length=998)] = "",
    conversation: Annotated[str, Query(max_length=64)] = "",
    since: Annotated[str, Query(max_length=40)] = "",
    until: Annotated[str, Query(max_length=40)] = "",
    cursor: Annotated[str, Query(max_length=200)] = "",
) -> Response:
    assert ctx.practice is not None
    base = f"/console/p/{ctx.practice.slug}"
    events: list[queries.Event] = []
    rows: queries.Page | None = None
    with svc.sessions() as session:
        if address or message_id or conversation:
            events = queries.timeline(
                session,
                ctx.practice.id,
                base,
                address=address or None,
                message_id=message_id or None,
                conversation=conversation or None,
                since=_date(since),
                until=_date(until),
            )
        elif since or until:
            rows = queries.inbound_page(
                session,
                ctx.practice.id,
                queries.InboundFilter(since=_date(since), until=_date(until)),
                cursor or None,
            )
    return page(
        "trace.html",
        ctx,
        title=translator(ctx.locale)("Trace"),
        events=events,
        rows=rows,
        form={
            "address": address,
            "message_id": message_id,
            "conversation": conversation,
            "since": since,
            "until": until,
        },
        limit=queries.TIMELINE_LIMIT,
    )


@router.get(P + "/inbound", response_class=HTMLResponse)
def inbound_list(
    svc: ServicesDep,
    ctx: PracticeCtx,
    state: Annotated[str, Query(max_length=32)] = "",
    reason: Annotated[str, Query(max_length=64)] = "",
    address: Annotated[str, Query(max_length=320)] = "",
    cursor: Annotated[str, Query(max_length=200)] = "",
) -> Response:
    assert ctx.practice is not None
    state = state if state in InboundState.__members__ else ""
    f = queries.InboundFilter(state=state or None, reason=reason or None, address=address or None)
    with svc.sessions() as session:
        rows = queries.inbound_page(session, ctx.practice.id, f, cursor or None)
    return page(
        "inbound_list.html",
        ctx,
        title=translator(ctx.locale)("Inbound"),
        rows=rows,
        states=list(InboundState.__members__),
        form={"state": state, "reason": reason, "address": address},
    )


# What an operator without content rights may read of a header block: the fields that say how mail
# travelled and was judged. Any other field may repeat what the mail says (Outlook's Thread-Topic,
# X-Original-Subject, Keywords, Comments, a sender's own X- fields…): its name is shown, never its value.
HANDLING_HEADERS = frozenset(
    {
        "return-path",
        "received",
        "delivered-to",
        "x-original-to",
        "envelope-to",
        "from",
        "sender",
        "reply-to",
        "to",
        "cc",
        "date",
        "message-id",
        "in-reply-to",
        "references",
        "authentication-results",
        "arc-authentication-results",
        "arc-seal",
        "arc-message-signature",
        "dkim-signature",
        "received-spf",
        "mime-version",
        "content-transfer-encoding",
        "auto-submitted",
        "precedence",
        "x-auto-response-suppress",
        "list-id",
        "x-mailer",
        "user-agent",
        "x-forwarded-to",
        "x-forwarded-for",
    }
)


def _headers(raw: bytes, content: bool) -> list[tuple[str, str]]:
    """The header block as sent (undecoded, bounded). Without content rights, only the handling fields
    keep their value, and Content-Type only its media type (its ``name=`` is a file's name)."""
    msg = email.parser.BytesParser(policy=email.policy.compat32).parsebytes(raw, headersonly=True)
    out = []
    for name, value in list(msg.items())[:MAX_HEADERS]:
        shown = str(value)[:4000]
        lowered = str(name).strip().lower()
        if not content:
            if lowered == "content-type":
                shown = shown.split(";", 1)[0].strip()
            elif lowered not in HANDLING_HEADERS:
                shown = "—"
        out.append((str(name), shown))
    return out


@router.get(P + "/inbound/{row_id}", response_class=HTMLResponse)
def inbound_detail(request: Request, svc: ServicesDep, ctx: PracticeCtx, row_id: str) -> Response:
    assert ctx.practice is not None
    with svc.sessions() as session:
        row = queries.inbound_row(session, ctx.practice.id, row_id)
        if row is None:
            raise NotFound("inbound_not_found", "not found")
        held = queries.quarantine_for(session, row.id)
        notifications = (
            queries.outbox_for_message(session, ctx.practice.id, row.posted_message_id)
            if row.posted_message_id
            else []
        )
        history = queries.audit_for(session, ctx.practice.id, "inbound", row.id)
    raw = read_raw_head(svc.vault, row, MAX_RAW_SHOWN)
    headers = _headers(raw, ctx.content) if raw is not None else []
    raw_text = raw[:MAX_RAW_SHOWN].decode("utf-8", "replace") if raw is not None and ctx.content else None
    return page(
        "inbound_detail.html",
        ctx,
        title=translator(ctx.locale)("Inbound message"),
        row=row,
        held=held,
        notifications=notifications,
        history=history,
        headers=headers,
        raw_text=raw_text,
        raw_kept=raw is not None,
        raw_truncated=raw is not None and len(raw) > MAX_RAW_SHOWN,
        can_reprocess=reprocess.can_reprocess(svc.vault, row),
        flash=_flash(request),
    )


@router.post(P + "/inbound/{row_id}/reprocess")
def reprocess_row(
    request: Request, svc: ServicesDep, ctx: PracticeCtx, row_id: str, csrf: Csrf = ""
) -> Response:
    auth.check_csrf(ctx.csrf, csrf)
    assert ctx.practice is not None
    try:
        outcome = reprocess.reprocess(
            pipeline_deps(svc), svc.tokens, svc.verp_secret, svc.vault, ctx.practice.id, row_id
        )
    except DomainError as exc:
        if exc.status == 404:
            raise
        return _back(ctx, f"/inbound/{row_id}", error=exc.detail)
    audit(
        svc,
        ctx,
        "reprocess",
        "inbound",
        row_id,
        {
            "new": outcome.inbound_id,
            "state": outcome.state.value,
            "reason": outcome.reason,
            "smtp": outcome.reply.wire(),
        },
        auth.client_address(request, svc.settings),
    )
    return _back(ctx, f"/inbound/{outcome.inbound_id or row_id}", done="reprocessed")


# ---- quarantine ------------------------------------------------------------------------------------


@router.get(P + "/quarantine", response_class=HTMLResponse)
def quarantine_list(
    request: Request,
    svc: ServicesDep,
    ctx: PracticeCtx,
    state: Annotated[str, Query(max_length=16)] = "held",
    cursor: Annotated[str, Query(max_length=200)] = "",
) -> Response:
    assert ctx.practice is not None
    state = state if state in ("held", "released", "discarded") else "held"
    with svc.sessions() as session:
        rows = queries.quarantine_page(session, ctx.practice.id, state, cursor or None)
    return page(
        "quarantine_list.html",
        ctx,
        title=translator(ctx.locale)("Quarantine"),
        rows=rows,
        state=state,
        flash=_flash(request),
    )


def _conversation_kind(session: Any, item: Any) -> str:
    from mailbridge.domain.models import Conversation, Route

    if item.conversation_id:
        conv = session.get(Conversation, item.conversation_id)
        return conv.kind.value if conv is not None else ConversationKind.private.value
    route = (
        session.query(Route)
        .filter(Route.practice_id == item.practice_id, Route.address == item.route_address)
        .first()
        if item.route_address
        else None
    )
    return route.kind.value if route is not None else ConversationKind.private.value


@router.get(P + "/quarantine/{item_id}", response_class=HTMLResponse)
def quarantine_detail(request: Request, svc: ServicesDep, ctx: PracticeCtx, item_id: str) -> Response:
    assert ctx.practice is not None
    with svc.sessions() as session:
        item = queries.quarantine_item(session, ctx.practice.id, item_id)
        if item is None:
            raise NotFound("quarantine_not_found", "not found")
        inbound = session.get(InboundLog, item.inbound_id)
        history = queries.audit_for(session, ctx.practice.id, "quarantine", item.id)
        kind = _conversation_kind(session, item)
    visible = hidden = subject = None
    files: list[dict[str, Any]] = []
    if item.state == "held" and inbound is not None and raw_available(svc.vault, inbound):
        # What a release would post now, through the one derivation the pipeline uses (nothing stored).
        with svc.sessions() as session:
            practice = directory.get_practice(session, ctx.practice.slug)
            shown = quarantine.describe(session, practice, item.id, svc.vault, svc.fingerprint_key)
        files = [
            {"filename": f["filename"] or "(no name)", "type": f["content_type"], "size": f["size"]}
            for f in cast(list[dict[str, Any]], shown.get("attachments") or [])
        ]
        if ctx.content:
            visible = cast(str | None, shown.get("body"))
            hidden = cast(str | None, shown.get("hidden"))
            subject = item.subject
    return page(
        "quarantine_detail.html",
        ctx,
        title=translator(ctx.locale)("Quarantine"),
        item=item,
        inbound=inbound,
        history=history,
        kind=kind,
        visible=visible,
        hidden=hidden,
        subject=subject,
        files=files,
        flash=_flash(request),
    )


def _release(svc: Any, ctx: Ctx, item_id: str, mode: str, client: str, name: str) -> str:
    """One release through the domain's function (the post the pipeline would have made, judged
    now, audited with this operator as the actor); returns the posted message's id."""
    assert ctx.practice is not None
    with writer_gate(svc.sessions), transaction(svc.sessions) as session:
        practice = directory.get_practice(session, ctx.practice.slug)
        done = quarantine.release(
            session,
            svc.blobs,
            practice,
            item_id,
            domain_audit.Actor.operator(ctx.operator.name),
            vault=svc.vault,
            client_ext=(client.strip() or None) if mode == "client" else None,
            new_contact=quarantine.NewContact(name=name.strip() or None) if mode == "contact" else None,
            fingerprint_key=svc.fingerprint_key,
        )
        contact = done.contact.external_id if done.contact is not None else None
        record(
            session,
            ctx,
            "release",
            "quarantine",
            item_id,
            {"mode": mode, "client": contact, "message": done.message.id},
        )
        message_id, inbound_id = done.message.id, done.inbound_id
    quarantine.forget_raw(svc.sessions, svc.vault, [inbound_id])
    return message_id


@router.post(P + "/quarantine/{item_id}/release")
def release_item(
    svc: ServicesDep,
    ctx: PracticeCtx,
    item_id: str,
    csrf: Csrf = "",
    mode: Annotated[str, Form(max_length=16)] = "conversation",
    client: Annotated[str, Form(max_length=128)] = "",
    contact_name: Annotated[str, Form(max_length=255)] = "",
) -> Response:
    auth.check_csrf(ctx.csrf, csrf)
    try:
        _release(svc, ctx, item_id, mode, client, contact_name)
    except DomainError as exc:
        if exc.code == "quarantine_not_found":
            raise
        return _back(ctx, f"/quarantine/{item_id}", error=f"{exc.code}: {exc.detail}")
    return _back(ctx, f"/quarantine/{item_id}", done="released")


def _discard(svc: Any, ctx: Ctx, item_id: str) -> None:
    assert ctx.practice is not None
    with writer_gate(svc.sessions), transaction(svc.sessions) as session:
        practice = directory.get_practice(session, ctx.practice.slug)
        inbound_id = quarantine.discard(
            session, practice, item_id, domain_audit.Actor.operator(ctx.operator.name)
        )
        record(session, ctx, "discard", "quarantine", item_id)
    quarantine.forget_raw(svc.sessions, svc.vault, [inbound_id])


@router.post(P + "/quarantine/{item_id}/discard")
def discard_item(svc: ServicesDep, ctx: PracticeCtx, item_id: str, csrf: Csrf = "") -> Response:
    auth.check_csrf(ctx.csrf, csrf)
    try:
        _discard(svc, ctx, item_id)
    except DomainError as exc:
        if exc.code == "quarantine_not_found":
            raise
        return _back(ctx, f"/quarantine/{item_id}", error=f"{exc.code}: {exc.detail}")
    return _back(ctx, f"/quarantine/{item_id}", done="discarded")


@router.post(P + "/quarantine")
def bulk(
    svc: ServicesDep,
    ctx: PracticeCtx,
    csrf: Csrf = "",
    action: Annotated[str, Form(max_length=16)] = "",
    ids: Annotated[list[str], Form()] = [],  # noqa: B006 (FastAPI copies defaults)
) -> Response:
    """Release or discard the checked items, each on its own (one failure does not stop the rest)."""
    auth.check_csrf(ctx.csrf, csrf)
    done = failed = 0
    for item_id in ids[:200]:
        try:
            if action == "release":
                _release(svc, ctx, item_id, "conversation", "", "")
            elif action == "discard":
                _discard(svc, ctx, item_id)
            else:
                break
            done += 1
        except DomainError:
            failed += 1
    return _back(ctx, "/quarantine", done=f"{action}:{done}:{failed}")


# ---- deliveries ------------------------------------------------------------------------------------

OUTBOX_STATES = ("pending", "deferred", "sent", "failed", "expired", "suppressed")


@router.get(P + "/deliveries", response_class=HTMLResponse)
def deliveries(
    request: Request,
    svc: ServicesDep,
    ctx: PracticeCtx,
    state: Annotated[str, Query(max_length=16)] = "",
    cursor: Annotated[str, Query(max_length=200)] = "",
) -> Response:
    assert ctx.practice is not None
    state = state if state in OUTBOX_STATES else ""
    with svc.sessions() as session:
        rows = queries.outbox_page(session, ctx.practice.id, state or None, cursor or None)
        bounced = queries.bounces(session, ctx.practice.id)
        suppressed = queries.suppressions(session, ctx.practice.id)
    return page(
        "deliveries.html",
        ctx,
        title=translator(ctx.locale)("Deliveries"),
        rows=rows,
        state=state,
        states=OUTBOX_STATES,
        bounced=bounced,
        suppressed=suppressed,
        outbox_state=queries.outbox_state,
        flash=_flash(request),
        pending=OutboxState.pending,
    )


@router.post(P + "/suppressions/unsuppress")
def unsuppress_address(
    request: Request,
    svc: ServicesDep,
    ctx: PracticeCtx,
    csrf: Csrf = "",
    address: Annotated[str, Form(max_length=320)] = "",
) -> Response:
    auth.check_csrf(ctx.csrf, csrf)
    assert ctx.practice is not None
    with writer_gate(svc.sessions), transaction(svc.sessions) as session:
        practice = directory.get_practice(session, ctx.practice.slug)
        found = suppressions.remove(
            session, practice, address, domain_audit.Actor.operator(ctx.operator.name)
        )
        if found:
            record(
                session,
                ctx,
                "unsuppress",
                "address",
                address.strip().lower(),
                peer=auth.client_address(request, svc.settings),
            )
    return _back(
        ctx, "/deliveries", done="unsuppressed" if found else "", error="" if found else "not suppressed"
    )


# ---- routes and mailboxes --------------------------------------------------------------------------


@router.get(P + "/routes", response_class=HTMLResponse)
def routes_page(request: Request, svc: ServicesDep, ctx: PracticeCtx) -> Response:
    assert ctx.practice is not None
    from sqlalchemy import select

    from mailbridge.domain.models import Route

    with svc.sessions() as session:
        routes = list(
            session.scalars(select(Route).where(Route.practice_id == ctx.practice.id).order_by(Route.address))
        )
        boxes = queries.mailboxes(session, ctx.practice.id)
    return page(
        "routes.html",
        ctx,
        title=translator(ctx.locale)("Routes and mailboxes"),
        routes=routes,
        mailboxes=boxes,
        flash=_flash(request),
        edit_route=request.query_params.get("route", ""),
        edit_mailbox=request.query_params.get("mailbox", ""),
    )


def _validation_text(exc: ValidationError) -> str:
    first = exc.errors()[0]
    return ".".join(str(p) for p in first["loc"]) + ": " + str(first["msg"])


@router.post(P + "/routes/save")
def save_route(
    svc: ServicesDep,
    ctx: PracticeCtx,
    csrf: Csrf = "",
    address: Annotated[str, Form(max_length=320)] = "",
    staff: Annotated[str, Form(max_length=2000)] = "",
    roles: Annotated[list[str], Form()] = [],  # noqa: B006
    kind: Annotated[str, Form(max_length=16)] = "private",
    unknown_senders: Annotated[str, Form(max_length=16)] = "reject",
) -> Response:
    auth.check_csrf(ctx.csrf, csrf)
    assert ctx.practice is not None
    try:
        body = RouteIn.model_validate(
            {
                "staff": [s.strip() for s in staff.split(",") if s.strip()],
                "roles": roles,
                "kind": kind,
                "unknown_senders": unknown_senders,
            }
        )
        with writer_gate(svc.sessions), transaction(svc.sessions) as session:
            practice = directory.get_practice(session, ctx.practice.slug)
            route, created = upsert_route(session, practice, address, body)
            record(
                session,
                ctx,
                "route_created" if created else "route_edited",
                "route",
                route.address,
                body.model_dump(),
            )
    except ValidationError as exc:
        return _back(ctx, "/routes", error=_validation_text(exc))
    except DomainError as exc:
        return _back(ctx, "/routes", error=f"{exc.code}: {exc.detail}")
    return _back(ctx, "/routes", done="saved")


@router.post(P + "/routes/delete")
def remove_route(
    svc: ServicesDep, ctx: PracticeCtx, csrf: Csrf = "", address: Annotated[str, Form(max_length=320)] = ""
) -> Response:
    auth.check_csrf(ctx.csrf, csrf)
    assert ctx.practice is not None
    try:
        with writer_gate(svc.sessions), transaction(svc.sessions) as session:
            delete_route(session, directory.get_practice(session, ctx.practice.slug), address)
            record(session, ctx, "route_deleted", "route", address.lower())
    except DomainError as exc:
        return _back(ctx, "/routes", error=f"{exc.code}: {exc.detail}")
    return _back(ctx, "/routes", done="deleted")


@router.post(P + "/mailboxes/save")
def save_mailbox(
    svc: ServicesDep,
    ctx: PracticeCtx,
    csrf: Csrf = "",
    name: Annotated[str, Form(max_length=64)] = "",
    host: Annotated[str, Form(max_length=255)] = "",
    port: Annotated[str, Form(max_length=5)] = "",
    security: Annotated[str, Form(max_length=16)] = "tls",
    username: Annotated[str, Form(max_length=320)] = "",
    password_env: Annotated[str, Form(max_length=128)] = "",
    password: Annotated[str, Form(max_length=255)] = "",
    folder: Annotated[str, Form(max_length=255)] = "INBOX",
    routing_address: Annotated[str, Form(max_length=320)] = "",
    on_done: Annotated[str, Form(max_length=16)] = "move",
    trusted_authserv_id: Annotated[str, Form(max_length=255)] = "",
) -> Response:
    auth.check_csrf(ctx.csrf, csrf)
    assert ctx.practice is not None
    data: dict[str, Any] = {
        "host": host,
        "port": int(port) if port.isdigit() else None,
        "security": security,
        "username": username,
        "password_env": password_env or None,
        "password": password or None,
        "folder": folder or "INBOX",
        "routing_address": routing_address or None,
        "on_done": on_done,
        "trusted_authserv_id": trusted_authserv_id or None,
    }
    try:
        body = MailboxIn.model_validate(data)
        with writer_gate(svc.sessions), transaction(svc.sessions) as session:
            practice = directory.get_practice(session, ctx.practice.slug)
            row, created = upsert_mailbox(svc, session, practice, name, body)
            shown = body.model_dump(exclude={"password"}) | {"password_set": body.password is not None}
            record(
                session, ctx, "mailbox_created" if created else "mailbox_edited", "mailbox", row.name, shown
            )
    except ValidationError as exc:
        return _back(ctx, "/routes", error=_validation_text(exc))
    except DomainError as exc:
        return _back(ctx, "/routes", error=f"{exc.code}: {exc.detail}")
    return _back(ctx, "/routes", done="saved")


@router.post(P + "/mailboxes/delete")
def remove_mailbox(
    svc: ServicesDep, ctx: PracticeCtx, csrf: Csrf = "", name: Annotated[str, Form(max_length=64)] = ""
) -> Response:
    auth.check_csrf(ctx.csrf, csrf)
    assert ctx.practice is not None
    try:
        with writer_gate(svc.sessions), transaction(svc.sessions) as session:
            delete_mailbox(session, directory.get_practice(session, ctx.practice.slug), name)
            record(session, ctx, "mailbox_deleted", "mailbox", name)
    except DomainError as exc:
        return _back(ctx, "/routes", error=f"{exc.code}: {exc.detail}")
    return _back(ctx, "/routes", done="deleted")


# ---- DNS and DKIM ----------------------------------------------------------------------------------


@router.get(P + "/dns", response_class=HTMLResponse)
def dns_page(svc: ServicesDep, ctx: PracticeCtx) -> Response:
    assert ctx.practice is not None
    report = dnscheck.practice_records(svc.sessions, ctx.practice.slug, svc.settings, svc.resolver)
    return page("dns.html", ctx, title=translator(ctx.locale)("DNS & DKIM"), report=report)


# ---- templates -------------------------------------------------------------------------------------


@router.get(P + "/templates", response_class=HTMLResponse)
def templates_page(
    request: Request,
    svc: ServicesDep,
    ctx: PracticeCtx,
    template: Annotated[str, Query(max_length=32)] = "notification_full",
    locale: Annotated[str, Query(max_length=8)] = "",
    reason: Annotated[str, Query(max_length=32)] = "attachment_withheld",
) -> Response:
    assert ctx.practice is not None
    sample = samples.render_sample(svc, ctx.practice, template, locale or ctx.practice.locale, reason)
    return page(
        "templates.html",
        ctx,
        title=translator(ctx.locale)("Templates"),
        sample=sample,
        templates=samples.TEMPLATES,
        locales=LOCALES,
        reasons=list(NOTICE_TEXTS["en"]),
        flash=_flash(request),
    )


@router.get(P + "/templates/preview")
def template_preview(
    svc: ServicesDep,
    ctx: PracticeCtx,
    template: Annotated[str, Query(max_length=32)] = "notification_full",
    locale: Annotated[str, Query(max_length=8)] = "en",
    reason: Annotated[str, Query(max_length=32)] = "attachment_withheld",
) -> Response:
    """The HTML part alone, for the sandboxed frame: its own CSP allows inline styles and no script."""
    assert ctx.practice is not None
    sample = samples.render_sample(svc, ctx.practice, template, locale, reason)
    response = HTMLResponse(sample.rendered.html)
    response.headers["Content-Security-Policy"] = PREVIEW_CSP
    response.headers["X-Frame-Options"] = "SAMEORIGIN"
    return response


# A test send goes to the operator's own address only, signed as the practice: a few an hour are
# plenty, and a stolen session cannot make the practice's domain a source of mail floods.
TEST_SENDS_PER_HOUR = 10


@router.post(P + "/templates/test")
def template_test(
    request: Request,
    svc: ServicesDep,
    ctx: PracticeCtx,
    csrf: Csrf = "",
    template: Annotated[str, Form(max_length=32)] = "notification_full",
    locale: Annotated[str, Form(max_length=8)] = "en",
    reason: Annotated[str, Form(max_length=32)] = "attachment_withheld",
) -> Response:
    auth.check_csrf(ctx.csrf, csrf)
    assert ctx.practice is not None
    _ = translator(ctx.locale)
    params = {"template": template, "locale": locale, "reason": reason}
    if not ctx.operator.email:
        return _back(
            ctx,
            "/templates",
            error=_("Your account has no email address (mailbridge operator add --email)."),
            **params,
        )
    with svc.sessions() as session:
        recent = queries.recent_actions(session, ctx.operator.id, "test_sent", hours=1)
    if recent >= TEST_SENDS_PER_HOUR:
        return _back(
            ctx,
            "/templates",
            error=_("At most {n} test sends an hour: try again later.").format(n=TEST_SENDS_PER_HOUR),
            **params,
        )
    sample = samples.render_sample(svc, ctx.practice, template, locale, reason)
    delivery = samples.send_test(svc, ctx.practice, sample, ctx.operator.email)
    audit(
        svc,
        ctx,
        "test_sent",
        "template",
        f"{sample.template}/{sample.locale}",
        {"result": delivery.result, "answer": delivery.answer[:200]},
        auth.client_address(request, svc.settings),
    )
    if delivery.result == "sent":
        return _back(
            ctx,
            "/templates",
            done=_("Test sent to {address}: {answer}").format(
                address=ctx.operator.email, answer=delivery.answer[:200]
            ),
            **params,
        )
    return _back(
        ctx,
        "/templates",
        error=_("Test not sent to {address}: {answer}").format(
            address=ctx.operator.email, answer=delivery.answer[:200]
        ),
        **params,
    )


# ---- audit (all the operator's practices) ----------------------------------------------------------


@router.get("/audit", response_class=HTMLResponse)
def audit_page(
    svc: ServicesDep,
    ctx: CtxDep,
    practice: Annotated[str, Query(max_length=64)] = "",
    operator: Annotated[str, Query(max_length=64)] = "",
    action: Annotated[str, Query(max_length=64)] = "",
    target: Annotated[str, Query(max_length=320)] = "",
    since: Annotated[str, Query(max_length=40)] = "",
    cursor: Annotated[str, Query(max_length=200)] = "",
) -> Response:
    chosen = next((p for p in ctx.practices if p.slug == practice), None)
    with svc.sessions() as session:
        rows = queries.audit_page(
            session,
            None if ctx.scope.all_practices else [p.id for p in ctx.practices],
            ctx.operator.id,
            practice_id=chosen.id if chosen else None,
            operator=operator or None,
            action=action or None,
            target=target or None,
            since=_date(since),
            cursor=cursor or None,
        )
    names = {p.id: p.slug for p in ctx.practices}
    return page(
        "audit.html",
        ctx,
        title=translator(ctx.locale)("Audit"),
        rows=rows,
        names=names,
        form={"practice": practice, "operator": operator, "action": action, "target": target, "since": since},
        actions=(
            "login",
            "login_failed",
            "logout",
            "release",
            "discard",
            "reprocess",
            "unsuppress",
            "route_created",
            "route_edited",
            "route_deleted",
            "mailbox_created",
            "mailbox_edited",
            "mailbox_deleted",
            "test_sent",
        ),
    )
