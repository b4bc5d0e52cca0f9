"""Safe retries of API writes: the ``Idempotency-Key`` request header (draft-ietf-httpapi-idempotency-key-header).

A POST, PUT, PATCH or DELETE carrying ``Idempotency-Key: <key>`` (1–255 printable ASCII characters,
the draft's quoted sf-string form accepted too) runs at most once per practice, caller and key:

- the first request inserts a row (``idempotency_keys``) before it runs: the row is the lock, so a
  second node sharing the database sees it; a request arriving while it runs gets ``409
  idempotency_key_in_flight`` (``Retry-After: 1``);
- its answer (status, body, headers but ``date``/``server``) is stored with the request's
  fingerprint and replayed, with ``Idempotent-Replayed: true``, to a retry with the same
  fingerprint; a retry with the same key and another method, path or body gets ``422
  idempotency_key_reused``;
- a 5xx, a 401 or a 429 is not stored (the request did not complete, or never ran): the row goes,
  and the client may retry with the same key; a node that dies mid-request leaves a row whose lock
  expires after ``domain.idempotency.LEASE`` (renewed while a long upload streams);
- rows live ``api_idempotency_retention_hours`` (at least 24), then housekeeping purges them.

The fingerprint is a SHA-256 of the method, path, query, media type and the body *as it streams*
to the route (no copy is kept: a 100 MB upload costs a hash, not 100 MB). A multipart body is
hashed part by part (each part's headers and bytes, not the random boundary), so a client library
that rebuilds the same upload with a new boundary is recognised as the same request.

Written as a plain ASGI middleware because only there is the raw body seen as it streams and the
response seen whole; the route code knows nothing of it.
"""

from __future__ import annotations

import hashlib
import re
import time
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from fastapi import FastAPI
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.concurrency import run_in_threadpool
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from mailbridge.access import apikeys
from mailbridge.domain.db import transaction
from mailbridge.domain.idempotency import LEASE, Stored, claim, complete, release, renew
from mailbridge.wiring import Services

from .problems import send_problem

METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
HEADER = b"idempotency-key"
REPLAYED = b"idempotent-replayed"
_KEY = re.compile(r"[\x21-\x7e](?:[\x20-\x7e]{0,253}[\x21-\x7e])?")
_PRACTICE = re.compile(r"^/api/v1/practices/([^/]+)")
_NOT_STORED = frozenset({401, 429})
_DROPPED_HEADERS = frozenset({b"date", b"server", b"set-cookie", b"retry-after"})


class Fingerprint:
    """SHA-256 of what identifies a request, fed chunk by chunk; the result never depends on how the
    body was cut into chunks."""

    def __init__(self, method: str, path: str, query: bytes, content_type: bytes) -> None:
        self._hash = hashlib.sha256()
        media, params = parse_options_header(content_type)
        for part in (method.encode(), path.encode(), query, media):
            self._hash.update(len(part).to_bytes(4, "big") + part)
        self._last = ""
        self._parser: MultipartParser | None = None
        boundary = params.get(b"boundary")
        if media == b"multipart/form-data" and boundary:
            self._parser = MultipartParser(
                boundary,
                {
                    "on_part_begin": lambda: self._event("B"),
                    "on_header_field": lambda d, s, e: self._data("F", d[s:e]),
                    "on_header_value": lambda d, s, e: self._data("V", d[s:e]),
                    "on_header_end": lambda: self._event("E"),
                    "on_part_data": lambda d, s, e: self._data("D", d[s:e]),
                    "on_part_end": lambda: self._event("P"),
                },
            )

    def _event(self, tag: str) -> None:
        self._hash.update(b"\x00" + tag.encode())
        self._last = ""

    def _data(self, tag: str, data: bytes) -> None:
        if tag != self._last:  # a new run of this kind: chunking inside a run changes nothing
            self._event(tag)
            self._last = tag
        self._hash.update(data)

    def feed(self, chunk: bytes) -> None:
        if not chunk:
            return
        if self._parser is not None:
            try:
                self._parser.write(chunk)
                return
            except Exception:  # not multipart after all: the raw bytes from here on
                self._parser = None
                self._event("R")
        self._data("R", chunk)

    def hexdigest(self) -> str:
        return self._hash.hexdigest()


def _lookup_key(services: Services, given: str) -> str | None:
    with transaction(services.sessions) as session:
        found = apikeys.authenticate(session, given)
    return found.key_id if found is not None else None


async def caller(services: Services, authorization: str) -> str | None:
    """Whom the key belongs to (``platform`` or the API key's id), or None: the route answers 401."""
    scheme, _, given = authorization.partition(" ")
    given = given.strip()
    if scheme.lower() != "bearer" or not given or not given.isascii() or not given.isprintable():
        return None
    if apikeys.is_platform_key(given, services.settings.api_key):
        return "platform"
    if given.startswith(apikeys.KEY_PREFIX):
        return await run_in_threadpool(_lookup_key, services, given)
    return None


def _header(scope: Scope, name: bytes) -> bytes | None:
    for key, value in scope["headers"]:
        if key == name:
            return bytes(value)
    return None


class IdempotencyMiddleware:
    """See the module docstring."""

    def __init__(self, app: ASGIApp, services: Services) -> None:
        self.app = app
        self.services = services

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in METHODS:
            await self.app(scope, receive, send)
            return
        raw_key = _header(scope, HEADER)
        if raw_key is None:
            await self.app(scope, receive, send)
            return
        key = raw_key.decode("latin-1").strip()
        if len(key) >= 2 and key[0] == key[-1] == '"':
            key = key[1:-1]  # the draft's sf-string form
        if not _KEY.fullmatch(key):
            await send_problem(
                scope,
                send,
                422,
                "idempotency_key_invalid",
                "Idempotency-Key: 1 to 255 printable ASCII characters",
            )
            return
        principal = await caller(self.services, (_header(scope, b"authorization") or b"").decode("latin-1"))
        if principal is None:
            await self.app(scope, receive, send)  # the route refuses the key (401)
            return
        found = _PRACTICE.match(scope["path"])
        practice = found.group(1) if found else ""
        fingerprint = Fingerprint(
            scope["method"],
            scope["path"],
            scope.get("query_string", b""),
            _header(scope, b"content-type") or b"",
        )
        retention = timedelta(hours=self.services.settings.api_idempotency_retention_hours)
        sessions = self.services.sessions
        held = await run_in_threadpool(claim, sessions, practice, principal, key, retention)
        if isinstance(held, Stored):
            await self._answer_from(held, fingerprint, scope, receive, send)
            return
        await self._run(scope, receive, send, held, fingerprint)

    async def _answer_from(
        self, held: Stored, fingerprint: Fingerprint, scope: Scope, receive: Receive, send: Send
    ) -> None:
        if held.status is None:
            await send_problem(
                scope,
                send,
                409,
                "idempotency_key_in_flight",
                "a request with this Idempotency-Key is still being processed: retry shortly",
                {"Retry-After": "1"},
            )
            return
        if not await _drain(receive, fingerprint.feed):
            return  # the client went away
        if fingerprint.hexdigest() != held.fingerprint:
            await send_problem(
                scope,
                send,
                422,
                "idempotency_key_reused",
                "this Idempotency-Key was used for a different request (method, path or body)",
            )
            return
        headers = [(n.encode("latin-1"), v.encode("latin-1")) for n, v in held.headers]
        await send(
            {"type": "http.response.start", "status": held.status, "headers": [*headers, (REPLAYED, b"true")]}
        )
        await send({"type": "http.response.body", "body": held.body})

    async def _run(
        self, scope: Scope, receive: Receive, send: Send, row_id: int, fingerprint: Fingerprint
    ) -> None:
        """Run the route with the key held. A storable answer is held back until it is stored, so a
        retry sent the moment the client reads it is replayed (never a spurious 409)."""
        sessions = self.services.sessions
        state: dict[str, Any] = {"complete": False, "start": None, "body": [], "stored": False}
        renewed = [time.monotonic()]

        async def hashing_receive() -> Message:
            message = await receive()
            if message["type"] == "http.request":
                fingerprint.feed(message.get("body", b""))
                if time.monotonic() - renewed[0] > LEASE.total_seconds() / 3:  # a long upload
                    renewed[0] = time.monotonic()
                    await run_in_threadpool(renew, sessions, row_id)
                if not message.get("more_body", False):
                    state["complete"] = True
            return message

        async def capturing_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                # A route that answered without reading the body (a DELETE, a refusal): read the
                # rest now, while the connection still delivers it, so the fingerprint is whole.
                if not state["complete"]:
                    state["complete"] = await _drain(receive, fingerprint.feed)
                status = message["status"]
                if status < 500 and status not in _NOT_STORED and state["complete"]:
                    state["start"] = message  # held until stored
                    return
            elif message["type"] == "http.response.body" and state["start"] is not None:
                state["body"].append(bytes(message.get("body", b"")))
                if message.get("more_body", False):
                    return
                start, body = state["start"], b"".join(state["body"])
                headers = [
                    [bytes(n).decode("latin-1"), bytes(v).decode("latin-1")]
                    for n, v in start.get("headers", [])
                    if bytes(n).lower() not in _DROPPED_HEADERS
                ]
                await run_in_threadpool(
                    complete, sessions, row_id, fingerprint.hexdigest(), start["status"], headers, body
                )
                state["stored"] = True
                await send(start)
                await send({"type": "http.response.body", "body": body})
                return
            await send(message)

        try:
            await self.app(scope, hashing_receive, capturing_send)
        finally:
            if not state["stored"]:  # a 5xx, a 401, a 429, an error, a client gone: retry freely
                await run_in_threadpool(release, sessions, row_id)


async def _drain(receive: Receive, feed: Callable[[bytes], None]) -> bool:
    """Read the rest of the request body into *feed*; False when the client disconnected first."""
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return False
        feed(message.get("body", b""))
        if not message.get("more_body", False):
            return True


def document(app: FastAPI) -> None:
    """Declare the header on every write under ``/api/`` in the OpenAPI document (wrapping whatever
    ``app.openapi`` already is, so other customisations keep working)."""
    previous = app.openapi

    def openapi() -> dict[str, Any]:
        cached = app.openapi_schema
        schema: dict[str, Any] = previous()
        if schema is cached:  # built (and given the header) before
            return schema
        parameter = {
            "name": "Idempotency-Key",
            "in": "header",
            "required": False,
            "description": (
                "Makes a retry safe (draft-ietf-httpapi-idempotency-key-header): the same key with the "
                "same request replays the first answer (`Idempotent-Replayed: true`); with another "
                "request `422 idempotency_key_reused`; while the first runs `409 idempotency_key_in_flight`."
            ),
            "schema": {"type": "string", "minLength": 1, "maxLength": 255},
        }
        for path, item in schema.get("paths", {}).items():
            if not path.startswith("/api/"):
                continue
            for method, operation in item.items():
                if method.upper() in METHODS and isinstance(operation, dict):
                    operation.setdefault("parameters", []).append(parameter)
        return schema

    app.openapi = openapi  # type: ignore[method-assign]  # FastAPI documents this override
