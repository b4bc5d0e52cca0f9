"""A TCP proxy on 127.0.0.1 that a test can cut (every connection dropped, new ones refused) and restore.

Put it between mailbridge and PostgreSQL to stop the database as the application sees it, without
touching the shared server: ``cut()`` resets every proxied connection and closes the listening
socket (connects get ECONNREFUSED, as with a stopped server); ``restore()`` listens again on the
same port.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from typing import Any


class FaultProxy:
    """Forwards 127.0.0.1:<port> to ``upstream``; runs its own event loop in a daemon thread."""

    def __init__(self, upstream_host: str, upstream_port: int) -> None:
        self.upstream = (upstream_host, upstream_port)
        self.port = 0
        self.accepted = 0  # connections accepted over the proxy's life, for assertions
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True, name="faultproxy")
        self._server: asyncio.AbstractServer | None = None
        self._transports: set[asyncio.BaseTransport] = set()

    # ---- control, from the test's thread ----------------------------------------------------------

    def start(self) -> FaultProxy:
        self._thread.start()
        self._call(self._listen())
        return self

    def cut(self) -> None:
        """Reset every open connection and stop listening: the database is gone."""
        self._call(self._cut())

    def restore(self) -> None:
        """Listen again on the same port: the database is back."""
        self._call(self._listen())

    @property
    def is_cut(self) -> bool:
        return self._server is None

    def close(self) -> None:
        if self._thread.is_alive():
            self._call(self._cut())
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(5)
        self._loop.close()

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(10)

    # ---- inside the loop ----------------------------------------------------------------------------

    async def _listen(self) -> None:
        if self._server is not None:
            return
        # reuse_address (the asyncio default on POSIX) lets restore() bind the same port again.
        self._server = await asyncio.start_server(self._handle, host="127.0.0.1", port=self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _cut(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.close()
        for transport in list(self._transports):
            with contextlib.suppress(Exception):
                transport.abort()  # RST, like a server that died
        self._transports.clear()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        if self._server is None:  # accepted just before the cut
            writer.transport.abort()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.upstream)
        except OSError:
            writer.transport.abort()
            return
        pair = (writer.transport, up_writer.transport)
        self._transports.update(pair)
        try:
            await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer))
        finally:
            for transport in pair:
                self._transports.discard(transport)
                transport.abort()

    @staticmethod
    async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            with contextlib.suppress(Exception):
                writer.close()
