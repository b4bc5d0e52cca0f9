"""One webhook request: signed with ``standardwebhooks``, sent over one kept ``httpx`` client.

Headers (the Standard Webhooks specification): ``webhook-id`` (the event's stable id: a receiver
dedupes on it), ``webhook-timestamp`` (this attempt, in seconds; receivers refuse one older than
five minutes, so each attempt is signed anew) and ``webhook-signature`` (``v1,<base64 HMAC-SHA256>``,
space-separated when a rotated secret still signs beside the new one). The signing is the library's
(``Webhook.sign``), never ours.

The request goes to the address ``addresses.resolve`` checked a moment before (DNS rebinding cannot
swap it), with the host name in ``Host`` and in TLS (SNI and the certificate check); no redirect is
followed (a 3xx is a failed attempt), no proxy from the environment is used, and the whole request,
answer included, is bounded by ``webhook_timeout_seconds``. Only the status is read, never the body.
"""

from __future__ import annotations

import asyncio
import ipaddress
import time
from dataclasses import dataclass
from datetime import UTC, datetime

import httpx
from standardwebhooks import Webhook

from mailbridge import __version__
from mailbridge.domain.errors import Invalid
from mailbridge.inbound.dns import Resolver
from mailbridge.webhooks.addresses import Refused, parse, resolve

USER_AGENT = f"mailbridge-webhooks/{__version__}"


@dataclass(frozen=True)
class Request:
    delivery_id: str
    webhook_id: str
    url: str
    body: bytes
    secrets: tuple[str, ...]


@dataclass(frozen=True)
class Result:
    ok: bool
    status: int | None = None
    error: str | None = None
    duration_ms: int = 0


def signature_headers(
    secrets: tuple[str, ...], webhook_id: str, when: datetime, body: bytes
) -> dict[str, str]:
    """The three Standard Webhooks headers, one ``v1,`` signature per secret."""
    signatures = " ".join(Webhook(secret).sign(webhook_id, when, body) for secret in secrets)
    return {
        "webhook-id": webhook_id,
        "webhook-timestamp": str(int(when.timestamp())),
        "webhook-signature": signatures,
    }


class Sender:
    """Sends requests; one ``httpx.AsyncClient`` (connection pool) for the worker's life."""

    def __init__(
        self,
        resolver: Resolver,
        *,
        timeout: float,
        allow_private: bool,
        allow_http: bool,
    ) -> None:
        self.resolver = resolver
        self.timeout = timeout
        self.allow_private = allow_private
        self.allow_http = allow_http
        self._client: httpx.AsyncClient | None = None

    def client(self) -> httpx.AsyncClient:
        if self._client is None:
            self._client = httpx.AsyncClient(
                follow_redirects=False,
                trust_env=False,  # no HTTP(S)_PROXY, no .netrc: the checked address is the one we reach
                timeout=httpx.Timeout(self.timeout),
                limits=httpx.Limits(max_connections=100, max_keepalive_connections=20),
                headers={"user-agent": USER_AGENT},
            )
        return self._client

    async def close(self) -> None:
        if self._client is not None:
            client, self._client = self._client, None
            await client.aclose()

    async def send(self, request: Request) -> Result:
        started = time.perf_counter()

        def took() -> int:
            return int((time.perf_counter() - started) * 1000)

        try:
            parsed = parse(request.url, allow_http=self.allow_http)
            target = await asyncio.to_thread(resolve, parsed, self.resolver, allow_private=self.allow_private)
        except Invalid as exc:
            return Result(False, error=f"{exc.code}: {exc.detail}"[:512], duration_ms=took())
        except Refused as exc:
            return Result(False, error=f"{exc.code}: {exc.detail}"[:512], duration_ms=took())
        headers = signature_headers(request.secrets, request.webhook_id, datetime.now(UTC), request.body)
        headers |= {"content-type": "application/json", "host": target.host_header}
        extensions = {}
        if parsed.scheme == "https" and not _is_literal(parsed.host):
            extensions["sni_hostname"] = parsed.host
        try:
            async with asyncio.timeout(self.timeout):
                built = self.client().build_request(
                    "POST", target.connect_url(), content=request.body, headers=headers, extensions=extensions
                )
                response = await self.client().send(built, stream=True)
                await response.aclose()  # the status is all we need; the body is never read
        except (TimeoutError, httpx.TimeoutException):
            return Result(False, error=f"timeout: no answer within {self.timeout:g} s", duration_ms=took())
        except httpx.HTTPError as exc:
            return Result(False, error=f"{type(exc).__name__}: {exc}"[:512], duration_ms=took())
        status = response.status_code
        if 200 <= status < 300:
            return Result(True, status=status, duration_ms=took())
        why = "redirect not followed" if 300 <= status < 400 else "not a 2xx answer"
        return Result(False, status=status, error=f"HTTP {status}: {why}", duration_ms=took())


def _is_literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True
