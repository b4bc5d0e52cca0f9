"""The operator console in a real browser (Debian's Chromium driven by Playwright) against a live
mailbridge: mail arrives over SMTP, notifications leave for a real SMTP sink, the messaging app's view
is read through the API. One browser for the module; each test its own browser context (cookies)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from mailbridge.domain.db import transaction
from mailbridge.domain.models import InboundLog, QuarantineItem, Suppression
from tests.conftest import API_KEY, make_services, seed
from tests.console_live import CHROMIUM, LiveStack, add_operator, chromium, live_stack, sign_in
from tests.mailhelpers import add_client, open_conversation, reply_address, reply_message, send
from tests.sink import Sink

pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian's chromium is not installed")

PASSWORD = "console-test-password"
SCRIPT = "<script>alert('{}')</script>"


class World:
    def __init__(self, stack: LiveStack, sink: Sink, browser: Any) -> None:
        self.stack, self.sink, self.browser = stack, sink, browser
        self.services = stack.services
        self.base = stack.url

    def api(self, method: str, path: str, **kwargs: Any) -> Any:
        import httpx

        return httpx.request(
            method,
            f"{self.base}/api/v1/practices/acme{path}",
            headers={"Authorization": f"Bearer {API_KEY}"},
            **kwargs,
        )

    def page(self, name: str = "ops") -> Any:
        context = self.browser.new_context(viewport={"width": 1280, "height": 900})
        page = context.new_page()
        page.problems = []  # dialogs, console errors, uncaught exceptions: none may happen
        page.on("dialog", lambda d: (page.problems.append(f"dialog: {d.message}"), d.dismiss()))
        page.on(
            "console", lambda m: page.problems.append(f"console: {m.text}") if m.type == "error" else None
        )
        page.on("pageerror", lambda e: page.problems.append(f"pageerror: {e}"))
        assert sign_in(page, self.base, name, PASSWORD).status == 303
        return page

    def wait_sink(self, count: int, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while len(self.sink.received) < count and time.monotonic() < deadline:
            time.sleep(0.05)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    tmp = tmp_path_factory.mktemp("console")
    with Sink() as sink:
        services = make_services(
            tmp,
            f"sqlite:///{tmp / 'mailbridge.db'}",
            smarthost=f"127.0.0.1:{sink.port}",
            smarthost_starttls="off",
            outbox_poll_seconds=0.2,
        )
        seed(services)
        seed(services, "other")
        add_client(services, "erin", "erin@nospf.test")  # no SPF, no DMARC: replies are never aligned
        add_operator(services, "ops", PASSWORD, all_practices=True, content=True, email="ops@acme.test")
        add_operator(services, "scoped", PASSWORD, practices=["acme"])
        add_operator(services, "victim", PASSWORD, practices=["acme"])
        try:
            with live_stack(services) as stack, chromium() as browser:
                yield World(stack, sink, browser)
        finally:
            services.close()


def _held(world: World, reason: str) -> QuarantineItem:
    with world.services.sessions() as session:
        item = session.scalar(
            select(QuarantineItem).where(QuarantineItem.reason == reason, QuarantineItem.state == "held")
        )
        assert item is not None
        return item


def test_release_a_held_reply_with_hostile_text_shown_as_text(world: World) -> None:
    conv = open_conversation(world.services, kind="private", participants=("erin",), subject="Plan")
    rcpt = reply_address(world.services, conv, "erin")
    msg = EmailMessage()
    msg["From"] = f'"{SCRIPT.format("name")}" <erin@nospf.test>'
    msg["To"] = rcpt
    msg["Subject"] = SCRIPT.format("subject")
    msg["Message-ID"] = "<hostile.1@nospf.test>"
    msg.set_content(f"Thursday then. {SCRIPT.format('body')}")
    msg.add_attachment(
        b"%PDF-1.4\n%%EOF\n",
        maintype="application",
        subtype="pdf",
        filename="<img src=x onerror=alert('file')>.pdf",
    )
    code, _ = send(world.stack, msg, "erin@nospf.test", rcpt)
    assert code == 250
    item = _held(world, "auth_not_aligned")
    before = len(world.sink.received)

    page = world.page()
    page.goto(f"{world.base}/console/p/acme/quarantine")
    page.click(f"a[href$='/quarantine/{item.id}']")
    text = page.inner_text("main")
    for where in ("subject", "body"):
        assert SCRIPT.format(where) in text  # shown, as text
    # the name as stored (angle brackets made harmless on intake), shown as text
    assert "onerror=alert('file')" in page.inner_text("td.filename")
    page.goto(f"{world.base}/console/p/acme/inbound/{item.inbound_id}")
    assert SCRIPT.format("name") in page.inner_text("table.headers")
    page.goto(f"{world.base}/console/p/acme/quarantine/{item.id}")
    page.click("#release")
    assert "released" in page.inner_text(".flash.ok")
    assert page.problems == []  # no dialog ran, no script was refused, nothing threw

    messages = world.api("GET", f"/conversations/{conv}/messages", params={"as": "dr-smith"}).json()["items"]
    assert SCRIPT.format("body") in messages[-1]["body"]
    world.wait_sink(before + 1)
    # private conversations notify in minimal mode: the notification says only that something arrived
    assert any(r.rcpts == ["dr.smith@acme.test"] for r in world.sink.received[before:])
    page.goto(f"{world.base}/console/p/acme/quarantine/{item.id}")
    assert "ops" in page.inner_text("main") and "release" in page.inner_text("main")  # who did what, when
    page.context.close()


def test_discard_and_a_form_without_its_token_is_refused(world: World) -> None:
    world.api(
        "PUT", "/routes/frontdesk@acme.test", json={"roles": ["front_office"], "unknown_senders": "triage"}
    )
    for n in (1, 2):
        stranger = reply_message(
            f"stranger{n}@client.test", "frontdesk@acme.test", "I need an appointment.", subject="Hello"
        )
        assert send(world.stack, stranger, f"stranger{n}@client.test", "frontdesk@acme.test")[0] == 250
    with world.services.sessions() as session:
        first, second = session.scalars(
            select(QuarantineItem)
            .where(QuarantineItem.reason == "unknown_sender")
            .order_by(QuarantineItem.from_address)
        ).all()

    page = world.page()
    page.goto(f"{world.base}/console/p/acme/quarantine/{first.id}")
    page.evaluate("document.querySelectorAll('input[name=csrf]').forEach(e => e.remove())")
    with page.expect_response(lambda r: r.url.endswith("/discard")) as answer:
        page.click("#discard")
    assert answer.value.status == 403
    assert _held(world, "unknown_sender") is not None  # nothing was done
    page.goto(f"{world.base}/console/p/acme/quarantine/{first.id}")
    page.click("#discard")
    assert "discarded" in page.inner_text(".flash.ok")
    page.goto(f"{world.base}/console/p/acme/quarantine/{second.id}")
    page.fill("input[name=contact_name]", "Stranger Two")
    page.click("#release-contact")
    assert "released" in page.inner_text(".flash.ok")
    with world.services.sessions() as session:
        assert session.get(QuarantineItem, first.id).state == "discarded"
        assert session.get(QuarantineItem, second.id).state == "released"
    page.context.close()


def test_reprocess_after_fixing_the_clients_address(world: World) -> None:
    conv = open_conversation(world.services, kind="private", participants=("bob",), subject="Billing")
    rcpt = reply_address(world.services, conv, "bob")
    msg = reply_message("bob.other@client.test", rcpt, "Paid this morning, thanks.")
    assert send(world.stack, msg, "bob.other@client.test", rcpt)[0] == 550
    with world.services.sessions() as session:
        row = session.scalar(select(InboundLog).where(InboundLog.reason == "reply_user_mismatch"))
        assert row is not None
    fix = {
        "email": "bob@client.test",
        "alt_emails": ["bob.other@client.test"],
        "name": "Bob Durand",
        "kind": "client",
        "locale": "fr",
    }
    assert world.api("PUT", "/users/bob", json=fix).status_code == 200

    page = world.page()
    page.goto(f"{world.base}/console/p/acme/inbound/{row.id}")
    assert "reply_user_mismatch" in page.inner_text("main")
    page.click("#reprocess")
    assert "posted" in page.inner_text("main")
    assert row.id in page.inner_text("main")  # the new run names the one it reprocessed
    messages = world.api("GET", f"/conversations/{conv}/messages", params={"as": "dr-smith"}).json()["items"]
    assert messages[-1]["body"].startswith("Paid this morning")
    page.context.close()


def test_unsuppress(world: World) -> None:
    from mailbridge.domain import suppressions
    from mailbridge.domain.models import SuppressionReason

    with transaction(world.services.sessions) as session:  # what a 5.1.1 DSN at a VERP address records
        practice_id = session.execute(select(InboundLog.practice_id).limit(1)).scalar_one()
        suppressions.record(
            session,
            practice_id,
            "dave@client.test",
            SuppressionReason.hard_bounce,
            status="5.1.1",
            diagnostic="smtp; 550 5.1.1 mailbox unknown",
            outbox_id=None,
            policy=suppressions.SuppressionPolicy(),
        )
    page = world.page()
    page.goto(f"{world.base}/console/p/acme/deliveries")
    row = page.locator("#suppressions ~ table tr", has_text="dave@client.test")
    row.locator("button.unsuppress").click()
    assert "unsuppressed" in page.inner_text(".flash.ok")
    with world.services.sessions() as session:
        assert session.scalar(select(Suppression).where(Suppression.address == "dave@client.test")) is None
    page.context.close()


def test_a_scoped_operator_gets_404_for_another_practice(world: World) -> None:
    page = world.page("scoped")
    assert page.goto(f"{world.base}/console/p/acme/").status == 200
    assert page.goto(f"{world.base}/console/p/other/").status == 404
    assert page.goto(f"{world.base}/console/p/other/quarantine").status == 404
    assert page.goto(f"{world.base}/console/p/nonexistent/").status == 404  # the same answer
    page.goto(f"{world.base}/console/p/acme/quarantine?state=released")
    assert "hidden" in page.inner_text("main")  # no content rights: subjects are not shown
    page.context.close()


def test_sign_in_throttling_answers_429(world: World) -> None:
    context = world.browser.new_context()
    page = context.new_page()
    statuses = []
    for _ in range(5):
        statuses.append(sign_in(page, world.base, "victim", "not-the-password").status)
    assert statuses[:4] == [401] * 4 and statuses[4] == 429
    answer = sign_in(page, world.base, "victim", PASSWORD)  # even the right password, for now
    assert answer.status == 429 and int(answer.headers["retry-after"]) > 0
    assert "Try again in" in page.inner_text("#login-error")
    context.close()
