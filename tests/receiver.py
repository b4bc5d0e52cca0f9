"""A real HTTP webhook receiver on loopback: verifies every request with ``standardwebhooks`` and records it.

``mode`` says how it answers: ``ok`` (204), ``fail`` (500), ``slow`` (waits ``delay`` seconds, then
204), ``redirect`` (302 to itself). ``stop()`` closes the port (a receiver that is down: connection
refused) and ``start()`` opens the same port again.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from standardwebhooks import Webhook, WebhookVerificationError


@dataclass
class Delivery:
    path: str
    headers: dict[str, str]
    body: bytes
    verified: bool
    answered: int

    @property
    def webhook_id(self) -> str:
        return self.headers["webhook-id"]

    @property
    def payload(self) -> dict[str, Any]:
        data: dict[str, Any] = json.loads(self.body)
        return data


@dataclass
class Receiver:
    secrets: list[str] = field(default_factory=list)  # a delivery verifies if any of these verifies it
    mode: str = "ok"
    delay: float = 0.0
    slow_times: int = 0  # with mode "slow": only this many requests are slow (0: all)
    received: list[Delivery] = field(default_factory=list)
    port: int = 0
    _server: ThreadingHTTPServer | None = None
    _thread: threading.Thread | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _slow_done: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hooks/mailbridge"

    def start(self) -> None:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("content-length", "0"))
                body = self.rfile.read(length)
                headers = {k.lower(): v for k, v in self.headers.items()}
                status = receiver._answer()
                receiver._record(self.path, headers, body, status)
                if status == 302:
                    self.send_response(302)
                    self.send_header("Location", f"http://127.0.0.1:{receiver.port}/elsewhere")
                else:
                    self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        server.daemon_threads = True
        self.port = server.server_address[1]
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(5)

    def _answer(self) -> int:
        if self.mode == "fail":
            return 500
        if self.mode == "redirect":
            return 302
        if self.mode == "slow":
            with self._lock:
                slow = not self.slow_times or self._slow_done < self.slow_times
                self._slow_done += 1
            if slow:
                time.sleep(self.delay)
        return 204

    def _record(self, path: str, headers: dict[str, str], body: bytes, status: int) -> None:
        verified = False
        for secret in self.secrets:
            try:
                Webhook(secret).verify(body, headers)
                verified = True
                break
            except WebhookVerificationError:
                continue
        with self._lock:
            self.received.append(Delivery(path, headers, body, verified, status))

    def accepted(self) -> list[Delivery]:
        """What a receiver that dedupes by ``webhook-id`` keeps: the first 2xx copy of each event."""
        seen: set[str] = set()
        out = []
        with self._lock:
            for delivery in self.received:
                if delivery.answered < 300 and delivery.webhook_id not in seen:
                    seen.add(delivery.webhook_id)
                    out.append(delivery)
        return out
