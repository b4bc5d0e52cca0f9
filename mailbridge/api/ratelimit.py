"""Per-key rate limits on the HTTP API: a token bucket per API key per node, ``429`` with ``Retry-After``.

Each bearer key (the platform key, each practice key, each wrong key) has a bucket of
``api_rate_limit_burst`` requests, refilled at ``api_rate_limit`` requests per second; a request
finding it empty is answered ``429 rate_limited`` (problem+json) with ``Retry-After`` in whole
seconds (RFC 9110 §10.2.3) until one request's worth is back, and counted in
``mailbridge_api_rate_limited_total``. Buckets live in this node's memory: N nodes behind a load
balancer allow N times the rate (documented; no shared store to run). The key is known by its
SHA-256 only, never kept; at most ``MAX_BUCKETS`` keys are tracked (the least recently seen are
forgotten: a flood of made-up keys costs bounded memory and only ever gets 401s).

Requests without a bearer key (``/healthz``, ``/readyz``, the one-click unsubscribe) are not
limited here: the HTTP door's connection cap bounds them (api/httpguard.py). The default is far
above what an app or the tests send; ``api_rate_limit = 0`` turns the limit off.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections import OrderedDict
from collections.abc import Callable

from starlette.types import ASGIApp, Receive, Scope, Send

from mailbridge.observability import API_RATE_LIMITED

from .problems import send_problem

MAX_BUCKETS = 10_000


class TokenBuckets:
    """One bucket per key: *burst* tokens, *rate* tokens a second; ``take`` says how long to wait."""

    def __init__(self, rate: float, burst: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate = rate
        self.burst = float(burst)
        self.clock = clock
        self._buckets: OrderedDict[bytes, tuple[float, float]] = OrderedDict()  # tokens, when

    def take(self, key: bytes) -> float:
        """0 when the request may go (a token is taken), else the seconds until one is back."""
        now = self.clock()
        tokens, then = self._buckets.pop(key, (self.burst, now))
        tokens = min(self.burst, tokens + (now - then) * self.rate)
        wait = 0.0
        if tokens >= 1:
            tokens -= 1
        else:
            wait = (1 - tokens) / self.rate
        self._buckets[key] = (tokens, now)
        while len(self._buckets) > MAX_BUCKETS:
            self._buckets.popitem(last=False)
        return wait


def _bearer(scope: Scope) -> bytes | None:
    for name, value in scope["headers"]:
        if name == b"authorization":
            scheme, _, given = bytes(value).partition(b" ")
            if scheme.lower() == b"bearer" and given.strip():
                return given.strip()
    return None


class RateLimitMiddleware:
    """See the module docstring."""

    def __init__(self, app: ASGIApp, rate: float, burst: int) -> None:
        self.app = app
        self.buckets = TokenBuckets(rate, burst) if rate > 0 else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        key = _bearer(scope) if scope["type"] == "http" and self.buckets is not None else None
        if key is None or self.buckets is None:
            await self.app(scope, receive, send)
            return
        wait = self.buckets.take(hashlib.sha256(key).digest())
        if wait <= 0:
            await self.app(scope, receive, send)
            return
        API_RATE_LIMITED.inc()
        retry_after = max(1, math.ceil(wait))
        await send_problem(
            scope,
            send,
            429,
            "rate_limited",
            f"too many requests with this key: retry after {retry_after} s",
            {"Retry-After": str(retry_after)},
        )
