"""The console application, mounted at /console/ by ``api/app.py``: sign-in, sign-out, errors, headers.

Its own session cookie and CSRF tokens, never the API's bearer key; every page server-rendered and
every action a plain form POST (the small script only adds copy buttons and "select all").
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from typing import Annotated
from urllib.parse import quote

from fastapi import FastAPI, Form, Request, Response
from fastapi.responses import HTMLResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException

from mailbridge.domain.db import transaction, writer_gate
from mailbridge.domain.errors import DomainError
from mailbridge.domain.models import Operator, OperatorAudit
from mailbridge.wiring import Services

from . import accounts, auth, pages
from .deps import CtxDep, PracticeNotFound, ServicesDep, record
from .i18n import negotiate, translator
from .web import STATIC_DIR, page, security_headers

log = logging.getLogger(__name__)


def _next(value: str | None) -> str:
    """Only a path inside the console: never an open redirect."""
    if value and value.startswith("/console/") and "//" not in value and "\\" not in value:
        return value
    return "/console/"


def _login_page(request: Request, status: int = 200, error: str = "", retry_after: int = 0) -> Response:
    locale = negotiate(request.headers.get("accept-language", ""))
    token = request.cookies.get(auth.LOGIN_COOKIE) or secrets.token_urlsafe(32)
    response = page(
        "login.html",
        None,
        locale=locale,
        status=status,
        title=translator(locale)("Sign in"),
        login_token=token,
        error=error,
        retry_after=retry_after,
        next=_next(request.query_params.get("next")),
        expired=request.query_params.get("expired") == "1",
    )
    svc: Services = request.app.state.services
    response.set_cookie(
        auth.LOGIN_COOKIE,
        token,
        path=auth.COOKIE_PATH,
        httponly=True,
        samesite="strict",
        secure=auth.is_secure(request, svc.settings),
    )
    if retry_after:
        response.headers["Retry-After"] = str(retry_after)
    return response


def create_console(services: Services) -> FastAPI:
    app = FastAPI(openapi_url=None, docs_url=None, redoc_url=None, title="mailbridge console")
    app.state.services = services

    @app.middleware("http")
    async def _headers(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        started = time.perf_counter()
        response = await call_next(request)
        security_headers(response.headers, request.url.path)
        response.headers["Server-Timing"] = f"app;dur={(time.perf_counter() - started) * 1000:.1f}"
        return response

    @app.exception_handler(auth.LoginRequired)
    async def _login_required(request: Request, _exc: auth.LoginRequired) -> Response:
        target = request.url.path if request.method == "GET" else "/console/"
        expired = "1" if request.cookies.get(auth.COOKIE) else ""
        query = f"?next={quote(_next(target))}" + ("&expired=1" if expired else "")
        response = RedirectResponse(f"/console/login{query}", status_code=303)
        response.delete_cookie(auth.COOKIE, path=auth.COOKIE_PATH)
        return response

    def _error(request: Request, status: int, title: str, message: str) -> Response:
        locale = negotiate(request.headers.get("accept-language", ""))
        _ = translator(locale)
        return page("error.html", None, locale=locale, status=status, title=_(title), message=_(message))

    @app.exception_handler(PracticeNotFound)
    async def _no_practice(request: Request, _exc: PracticeNotFound) -> Response:
        return _error(request, 404, "Not found", "This page does not exist, or you may not see it.")

    @app.exception_handler(auth.CsrfRefused)
    async def _csrf(request: Request, _exc: auth.CsrfRefused) -> Response:
        log.warning("console_csrf_refused", extra={"path": request.url.path})
        return _error(
            request,
            403,
            "Refused",
            "The form was too old or not from this console. Go back, reload the page and try again.",
        )

    @app.exception_handler(DomainError)
    async def _domain(request: Request, exc: DomainError) -> Response:
        if exc.status == 404:
            return _error(request, 404, "Not found", "This page does not exist, or you may not see it.")
        locale = negotiate(request.headers.get("accept-language", ""))
        return page(
            "error.html",
            None,
            locale=locale,
            status=exc.status,
            title=translator(locale)("Error"),
            message=exc.detail,
        )

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> Response:
        if exc.status_code == 404:
            return _error(request, 404, "Not found", "This page does not exist, or you may not see it.")
        return _error(request, exc.status_code, "Error", str(exc.detail))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, _exc: Exception) -> Response:
        log.exception("console_unexpected_error")
        return _error(request, 500, "Something went wrong", "The error was logged.")

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")

    @app.get("/login", response_class=HTMLResponse)
    def login_form(request: Request) -> Response:
        return _login_page(request)

    @app.post("/login", response_class=HTMLResponse)
    def login(
        request: Request,
        svc: ServicesDep,
        name: Annotated[str, Form(max_length=320)] = "",
        password: Annotated[str, Form(max_length=1024)] = "",
        login_token: Annotated[str, Form(max_length=200)] = "",
        next: Annotated[str, Form(max_length=2000)] = "/console/",
    ) -> Response:
        auth.check_csrf(request.cookies.get(auth.LOGIN_COOKIE) or "", login_token)
        settings = svc.settings
        peer = auth.client_address(request, settings)
        keys = auth.throttle_keys(name, peer)
        _ = translator(negotiate(request.headers.get("accept-language", "")))
        with auth.verify_slot() as free:
            if not free:  # every slot busy checking a password: a burst, or someone making one
                log.warning("console_login_busy", extra={"peer": peer})
                return _login_page(request, 429, _("Too many sign-ins at once. Try again in a moment."), 1)
            # The attempt counts before its password is checked (taken back below if it was right).
            with writer_gate(svc.sessions), transaction(svc.sessions) as session:
                wait = auth.blocked_for(session, keys)
                if not wait:
                    blocked = [
                        auth.note_failure(
                            session,
                            keys[0],
                            settings.console_login_max_failures,
                            settings.console_login_window_seconds,
                        ),
                        auth.note_failure(
                            session,
                            keys[1],
                            settings.console_login_max_failures_per_address,
                            settings.console_login_window_seconds,
                        ),
                    ]
            if wait:
                log.warning("console_login_throttled", extra={"peer": peer})
                message = _("Too many failed sign-ins. Try again in {seconds} seconds.").format(seconds=wait)
                return _login_page(request, 429, message, wait)
            with svc.sessions() as session:
                operator = accounts.get_operator(session, name)
                good = accounts.verify(operator, password)  # argon2: outside any write lock
        with writer_gate(svc.sessions), transaction(svc.sessions) as session:
            if not good or operator is None:
                if operator is not None:
                    session.add(_audit_row(operator, "login_failed", peer))
                log.warning("console_login_failed", extra={"peer": peer})
                if any(blocked):
                    wait = settings.console_login_window_seconds
                    message = _("Too many failed sign-ins. Try again in {seconds} seconds.").format(
                        seconds=wait
                    )
                    return _login_page(request, 429, message, wait)
                return _login_page(request, 401, _("Wrong name or password."))
            fresh = session.merge(operator)
            if accounts.needs_rehash(fresh):
                fresh.password_hash = accounts.HASHER.hash(password)
            auth.clear_failures(session, keys[0])
            auth.forgive(session, keys[1])
            auth.purge_expired(session, settings)
            token = auth.open_session(session, fresh, settings, peer)
            session.add(_audit_row(fresh, "login", peer))
        response = RedirectResponse(_next(next), status_code=303)
        response.set_cookie(
            auth.COOKIE,
            token,
            path=auth.COOKIE_PATH,
            httponly=True,
            samesite="strict",
            secure=auth.is_secure(request, settings),
        )
        response.delete_cookie(auth.LOGIN_COOKIE, path=auth.COOKIE_PATH)
        return response

    @app.post("/logout")
    def logout(
        request: Request, svc: ServicesDep, ctx: CtxDep, csrf: Annotated[str, Form(max_length=200)] = ""
    ) -> Response:
        auth.check_csrf(ctx.csrf, csrf)
        with writer_gate(svc.sessions), transaction(svc.sessions) as session:
            auth.close_session(session, ctx.session_id)
            record(session, ctx, "logout", peer=auth.client_address(request, svc.settings))
        response = RedirectResponse("/console/login", status_code=303)
        response.delete_cookie(auth.COOKIE, path=auth.COOKIE_PATH)
        return response

    @app.post("/locale")
    def set_locale(
        svc: ServicesDep,
        ctx: CtxDep,
        csrf: Annotated[str, Form(max_length=200)] = "",
        locale: Annotated[str, Form(max_length=8)] = "en",
        back: Annotated[str, Form(max_length=2000)] = "/console/",
    ) -> Response:
        auth.check_csrf(ctx.csrf, csrf)
        with writer_gate(svc.sessions), transaction(svc.sessions) as session:
            operator = session.get_one(Operator, ctx.operator.id)
            operator.locale = "fr" if locale == "fr" else "en"
        return RedirectResponse(_next(back), status_code=303)

    @app.get("/", response_class=HTMLResponse)
    def home(ctx: CtxDep) -> Response:
        if len(ctx.practices) == 1:
            return RedirectResponse(f"/console/p/{ctx.practices[0].slug}/", status_code=303)
        return page("home.html", ctx, title=translator(ctx.locale)("Practices"))

    app.include_router(pages.router)
    return app


def _audit_row(operator: Operator, action: str, peer: str) -> OperatorAudit:
    return OperatorAudit(
        operator_id=operator.id,
        operator_name=operator.name,
        practice_id=None,
        action=action,
        details={},
        peer=peer,
    )
