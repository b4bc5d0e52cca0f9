"""Conditional reads: a strong ``ETag`` on every JSON answer of ``GET /api/…``, and ``304`` to ``If-None-Match``.

The tag is a hash of the response body (RFC 9110 §8.8.3: a strong validator, since equal tags mean
equal bytes), so it changes exactly when what the app would read changes: an app polling a list or
a conversation sends the tag it holds and gets an empty ``304 Not Modified`` when nothing changed.
The route still runs (the body must be computed to be hashed); the saving is the transfer and the
app's own work. ``If-None-Match`` is compared weakly, as §13.1.2 asks (``W/"x"`` matches ``"x"``),
and ``*`` matches any answer. Other answers (errors, downloads, ``/metrics``) are passed through
untouched. Written as a plain ASGI middleware: the body is seen whole only there.
"""

from __future__ import annotations

import hashlib
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

_JSON = (b"application/json",)


def etag_of(body: bytes) -> str:
    return '"' + hashlib.sha256(body).hexdigest()[:32] + '"'


def matches(if_none_match: str, etag: str) -> bool:
    """RFC 9110 §13.1.2: ``*``, or any listed tag equal to *etag* by weak comparison."""
    wanted = etag.removeprefix("W/")
    for candidate in if_none_match.split(","):
        candidate = candidate.strip()
        if candidate == "*" or candidate.removeprefix("W/") == wanted:
            return True
    return False


class ETagMiddleware:
    """See the module docstring."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "GET" or not scope["path"].startswith("/api/"):
            await self.app(scope, receive, send)
            return
        if_none_match = ""
        for name, value in scope["headers"]:
            if name == b"if-none-match":
                if_none_match = value.decode("latin-1")
        held: dict[str, Any] = {"start": None, "body": []}

        async def tagging_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                named = {bytes(n).lower(): bytes(v) for n, v in message.get("headers", [])}
                media = named.get(b"content-type", b"").split(b";")[0].strip()
                if message["status"] == 200 and media in _JSON and b"etag" not in named:
                    held["start"] = message
                    return
            elif message["type"] == "http.response.body" and held["start"] is not None:
                held["body"].append(bytes(message.get("body", b"")))
                if message.get("more_body", False):
                    return
                start, body = held["start"], b"".join(held["body"])
                tag = etag_of(body)
                headers = list(start.get("headers", []))
                if if_none_match and matches(if_none_match, tag):
                    kept = [
                        (n, v) for n, v in headers if n.lower() not in (b"content-length", b"content-type")
                    ]
                    await send(
                        {
                            "type": "http.response.start",
                            "status": 304,
                            "headers": [*kept, (b"etag", tag.encode())],
                        }
                    )
                    await send({"type": "http.response.body", "body": b""})
                    return
                await send({**start, "headers": [*headers, (b"etag", tag.encode())]})
                await send({"type": "http.response.body", "body": body})
                return
            await send(message)

        await self.app(scope, receive, tagging_send)
