"""Errors as application/problem+json (RFC 9457) with a stable ``code`` the app can switch on.

One status per class of error (docs/api.md): 400 the body cannot be read (``invalid_json``), 401 no
valid key, 403 the key or the acting user may not, 404 not there (or not readable by ``as``), 409
conflicts with the current state, 413 too large, 415 a Content-Type the route does not read
(``unsupported_media_type``), 422 well-formed but invalid input (every error in ``errors``, the first
also in ``field``/``detail``), 5xx ours.

``title``, ``detail`` and ``hint`` come from the reason catalogue (``mailbridge.reasons``) in the
user's language: the ``as`` user's locale when the route names one and the key may reach the
practice, else the request's ``Accept-Language``; English by default. They never name internal rules.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy import select
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import Message, Scope, Send

from mailbridge.domain.errors import DomainError
from mailbridge.reasons import CATALOGUE

log = logging.getLogger(__name__)
PROBLEM = "application/problem+json"
LOCALES = ("en", "fr")
JSON_TYPES = ("application/json",)  # the routes FastAPI parses read JSON only (files: conversations.py)


def problem(
    status: int,
    code: str,
    detail: str,
    field: str | None = None,
    extra: dict[str, object] | None = None,
    locale: str = "en",
) -> JSONResponse:
    """The problem document. *detail* (English, technical) is kept only for a code the catalogue does
    not know; a known code gets the catalogue's sentences in *locale*."""
    entry = CATALOGUE.get(code)
    title, hint = code.replace("_", " "), None
    if entry is not None:
        title, detail, hint = entry.problem(locale)
    body: dict[str, object] = {
        **(extra or {}),
        "type": "about:blank",
        "title": title,
        "status": status,
        "code": code,
        "detail": detail,
    }
    if hint:
        body["hint"] = hint
    if field:
        body["field"] = field
    return JSONResponse(body, status_code=status, media_type=PROBLEM, headers={"Content-Language": locale})


async def send_problem(
    scope: Scope, send: Send, status: int, code: str, detail: str, headers: dict[str, str] | None = None
) -> None:
    """A problem answered from ASGI middleware (idempotency, rate limit), before any route runs: the
    same document as the routes' (catalogue sentences in the Accept-Language locale)."""
    lang = ""
    for name, value in scope.get("headers", ()):
        if name == b"accept-language":
            lang = bytes(value).decode("latin-1")
    response = problem(status, code, detail, locale=accept_language(lang) or "en")
    response.headers.update(headers or {})
    await response(scope, _no_body, send)


async def _no_body() -> Message:
    return {"type": "http.request", "body": b"", "more_body": False}


def accept_language(header: str) -> str | None:
    """The best of our locales in an ``Accept-Language`` header (RFC 9110 §12.5.4), or None."""
    best: tuple[float, str] | None = None
    for part in header.split(","):
        tag, _, params = part.strip().partition(";")
        lang = tag.strip().lower()[:2]
        quality = 1.0
        if params.strip().startswith("q="):
            try:
                quality = float(params.strip()[2:])
            except ValueError:
                continue
        if lang in LOCALES and quality > 0 and (best is None or quality > best[0]):
            best = (quality, lang)
    return best[1] if best else None


def user_locale(request: Request) -> str:
    """The acting user's locale (``?as=``) once the key was found to reach the practice; else the
    request's Accept-Language; else English. Never looked up before authorisation, so a refusal's
    language cannot tell a stranger anything about another practice's users."""
    actor = request.query_params.get("as")
    slug = getattr(request.state, "authorised_practice", None)
    if actor and slug is not None and slug == request.path_params.get("practice"):
        from mailbridge.domain.models import Practice, User

        try:
            with request.app.state.services.sessions() as session:
                found = session.scalar(
                    select(User.locale)
                    .join(Practice, Practice.id == User.practice_id)
                    .where(Practice.slug == slug, User.external_id == actor)
                )
        except Exception:  # the database itself may be the problem being reported
            found = None
        if found:
            return "fr" if str(found).lower().startswith("fr") else "en"
    return accept_language(request.headers.get("accept-language", "")) or "en"


def field_errors(errors: Any, prefixes: tuple[str, ...] = ("body", "query", "path")) -> list[dict[str, Any]]:
    """Pydantic's errors as ``[{"field", "detail", "type"}]`` (field: dotted, without the location)."""
    out: list[dict[str, Any]] = []
    for error in errors:
        loc = [str(p) for p in error.get("loc", ()) if p not in prefixes]
        field = ".".join(loc) or None
        out.append(
            {"field": field, "detail": f"{field or 'request'}: {error.get('msg')}", "type": error["type"]}
        )
    return out


def invalid_request(errors: list[dict[str, Any]], locale: str) -> JSONResponse:
    first = errors[0] if errors else {"field": None, "detail": "invalid request"}
    return problem(422, "invalid_request", str(first["detail"]), first["field"], {"errors": errors}, locale)


def unreadable_body(request: Request) -> str | None:
    """``unsupported_media_type`` or ``invalid_json`` when the body is why validation failed."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type and not (content_type in JSON_TYPES or content_type.endswith("+json")):
        return "unsupported_media_type"
    return None


def install(app: FastAPI) -> None:
    @app.exception_handler(DomainError)
    async def _domain(request: Request, exc: DomainError) -> JSONResponse:
        locale = await run_in_threadpool(user_locale, request)  # a read: never on the event loop
        return problem(exc.status, exc.code, exc.detail, exc.field, exc.extra, locale)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        locale = await run_in_threadpool(user_locale, request)
        errors = list(exc.errors())
        body_errors = [e for e in errors if e.get("loc", ())[:1] == ("body",)]
        if body_errors and unreadable_body(request):
            return problem(415, "unsupported_media_type", "send application/json", None, None, locale)
        if any(e["type"] == "json_invalid" for e in errors):
            return problem(400, "invalid_json", "the body is not valid JSON", None, None, locale)
        return invalid_request(field_errors(errors), locale)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {401: "unauthorized", 404: "not_found", 405: "method_not_allowed"}.get(
            exc.status_code, "internal_error"
        )
        locale = accept_language(request.headers.get("accept-language", "")) or "en"
        response = problem(exc.status_code, code, str(exc.detail), locale=locale)
        if exc.status_code == 401:
            response.headers["WWW-Authenticate"] = "Bearer"
        return response

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled API error")
        return problem(500, "internal_error", "internal error", locale="en")
