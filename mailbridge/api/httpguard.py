"""The HTTP door's own limits on top of uvicorn: a connection cap and a header-read timeout.

uvicorn (its h11 protocol) has neither. ``limit_concurrency`` answers 503 only once a request has
arrived, and a connection that sends nothing, or half a request line, stays open for ever: 1,100 idle
connections used up 1,024 descriptors and took SMTP down with the API (security review, finding 10).
uvicorn's ``timeout_keep_alive`` only starts after a response. So the protocol class uvicorn uses is
subclassed (``Config(http=...)`` takes a class, a documented option):

- past ``max_connections`` open connections a new one gets ``503`` and is closed at once, before it
  can hold a descriptor for long (the listening socket stays served: the cap never stops accepting);
- from the moment a connection opens, and again from the first byte of each following request, the
  request's headers must be complete within ``header_timeout`` (Apache's ``mod_reqtimeout``, nginx's
  ``client_header_timeout``); otherwise the connection is closed.

The size of a request head stays bounded by h11 (``h11_max_incomplete_event_size``, 16 KB).
Written against uvicorn's ``H11Protocol`` (semi-public: its constructor and ``handle_events`` are
what uvicorn itself calls); ``tests/test_edge_limits.py`` fails loudly if that changes.
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.h11_impl import H11Protocol

from mailbridge.observability import HTTP_LIMITS

_BUSY = (
    b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain; charset=utf-8\r\n"
    b"content-length: 21\r\nconnection: close\r\nretry-after: 5\r\n\r\nToo many connections\n"
)


class GuardedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with a connection cap and a header-read timeout (class attributes)."""

    max_connections = 200
    header_timeout = 20.0

    _refused = False
    _header_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        if len(self.connections) >= self.max_connections:
            self._refused = True
            self.transport = transport  # connection_lost expects one
            HTTP_LIMITS.labels("connections").inc()
            transport.write(_BUSY)
            transport.close()
            return
        super().connection_made(transport)
        self._arm_header_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm_header_timer()
        if self._refused:
            return  # never counted among the connections, nothing to finish
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return
        if self._header_timer is None and (self.cycle is None or self.cycle.response_complete):
            self._arm_header_timer()  # the first byte of the next request on a kept-alive connection
        super().data_received(data)

    def handle_events(self) -> None:
        before = self.cycle
        super().handle_events()
        if self.cycle is not before:  # h11 produced a Request: its headers are complete
            self._disarm_header_timer()

    def _arm_header_timer(self) -> None:
        self._disarm_header_timer()
        self._header_timer = self.loop.call_later(self.header_timeout, self._header_timed_out)

    def _disarm_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _header_timed_out(self) -> None:
        self._header_timer = None
        if self.cycle is not None and not self.cycle.response_complete:
            return  # a request is being answered: its headers did arrive
        HTTP_LIMITS.labels("header_timeout").inc()
        if not self.transport.is_closing():
            self.transport.close()


def guarded_protocol(max_connections: int, header_timeout: float) -> type[GuardedH11Protocol]:
    """A protocol class with these limits, for ``uvicorn.Config(http=...)``."""
    attributes: dict[str, Any] = {"max_connections": max_connections, "header_timeout": header_timeout}
    return type("GuardedH11Protocol", (GuardedH11Protocol,), attributes)
