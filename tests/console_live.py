"""A live mailbridge for the console tests and the screenshots: SMTP ingress, the delivery worker and
the HTTP listener (API and console) on loopback ports chosen by the system, in one event loop thread,
as ``mailbridge serve`` runs them; and a Chromium driven by Playwright (Debian's, never downloaded)."""

from __future__ import annotations

import asyncio
import re
import shutil
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import uvicorn

from mailbridge.api.app import create_app
from mailbridge.domain.db import transaction
from mailbridge.wiring import Services

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--headless=new",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


class LiveStack:
    def __init__(self, services: Services) -> None:
        self.services = services
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.stop_event: asyncio.Event | None = None
        self.smtp: Any = None
        self.http: uvicorn.Server | None = None
        self.tasks: list[Any] = []
        self.smtp_port = 0
        self.http_port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def start(self) -> None:
        from mailbridge.outbound.worker import start_worker
        from mailbridge.runtime import start_ingress

        self.thread.start()

        async def boot() -> None:
            self.stop_event = asyncio.Event()
            self.smtp = await start_ingress(self.services)
            self.smtp_port = self.smtp.sockets[0].getsockname()[1]
            self.tasks.append(start_worker(self.services, self.stop_event))
            config = uvicorn.Config(
                create_app(self.services),
                host="127.0.0.1",
                port=0,
                log_config=None,
                lifespan="off",
                access_log=False,
            )
            self.http = uvicorn.Server(config)
            self.tasks.append(asyncio.create_task(self.http.serve()))
            for _ in range(500):
                if self.http.started:
                    break
                await asyncio.sleep(0.01)
            self.http_port = self.http.servers[0].sockets[0].getsockname()[1]

        asyncio.run_coroutine_threadsafe(boot(), self.loop).result(30)

    def stop(self) -> None:
        async def halt() -> None:
            assert self.stop_event is not None and self.http is not None
            self.stop_event.set()
            self.http.should_exit = True
            self.smtp.close()
            await asyncio.wait_for(asyncio.gather(*self.tasks, return_exceptions=True), 15)

        asyncio.run_coroutine_threadsafe(halt(), self.loop).result(30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)

    def client(self) -> Any:
        import smtplib

        return smtplib.SMTP("127.0.0.1", self.smtp_port, timeout=30)


@contextmanager
def live_stack(services: Services) -> Iterator[LiveStack]:
    stack = LiveStack(services)
    stack.start()
    try:
        yield stack
    finally:
        stack.stop()


def add_operator(services: Services, name: str, password: str, **kwargs: Any) -> None:
    from mailbridge.console.accounts import add_operator as add

    with transaction(services.sessions) as session:
        add(session, name, password, **kwargs)


@contextmanager
def chromium() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


def sign_in(page: Any, base: str, name: str, password: str) -> Any:
    page.goto(f"{base}/console/login")
    page.fill("input[name=name]", name)
    page.fill("input[name=password]", password)
    with page.expect_response(re.compile(r".*/console/login$")) as answer:
        page.click("button[type=submit]")
    return answer.value
