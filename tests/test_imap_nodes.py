"""The IMAP door with several nodes and real mailboxes: one poller per mailbox (a lease in the
database), a dead node's mailbox taken over, mail without Return-Path, settings that apply without a
restart, and the documented way to receive replies in a polled mailbox. Real Dovecot throughout."""

from __future__ import annotations

import asyncio
import email
import email.policy
import imaplib
import json
import re
import time
from collections.abc import Iterator
from dataclasses import replace
from datetime import timedelta
from email.message import EmailMessage
from email.utils import make_msgid
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from mailbridge.cli import main
from mailbridge.domain import directory
from mailbridge.domain.db import transaction
from mailbridge.domain.models import InboundState, Mailbox, utcnow
from mailbridge.inbound import pipeline
from mailbridge.wiring import Services
from tests.conftest import API_KEY, _truncate_pg, make_services, pg_url_for, seed
from tests.dovecot import PASSWORD, Dovecot
from tests.mailhelpers import add_client, open_conversation, reply_address
from tests.test_imap import (
    CLIENT,
    FAST,
    Running,
    add_mailbox,
    dovecot,  # noqa: F401  (the session's Dovecot)
    inbound,
    mail,
    posts,
    run,
    svc,  # noqa: F401  (a seeded SQLite world with the client erin)
    token_address,  # noqa: F401
    until,
    user,  # noqa: F401
)
from tests.test_outbound import drain, worker_for

LEASED = replace(FAST, lease_seconds=1.5)  # for the take-over: a dead holder's lease runs out fast
# Sharing: a lease long enough that a loaded machine never lets it lapse while the holder works, so
# that "one node fetched them all" is about the lease, not about the scheduler's mood.
HELD = replace(FAST, lease_seconds=30.0)


def add_erin(services: Services) -> None:
    add_client(services, "erin", CLIENT, name="Erin Client")


@pytest.fixture
def nodes(pg_schema: str, tmp_path: Path) -> Iterator[tuple[Services, Services]]:
    """Two nodes on one PostgreSQL, sharing the data directory (token secret, master key)."""
    _truncate_pg(schema=pg_schema)
    first = make_services(tmp_path, pg_url_for(pg_schema))
    second = make_services(tmp_path, pg_url_for(pg_schema))
    seed(first)
    add_erin(first)
    yield first, second
    first.close()
    second.close()


class Counting:
    """A pipeline runner that records which node ran each message."""

    def __init__(self) -> None:
        self.by: list[str] = []

    def runner(self, name: str) -> Any:
        def run_it(deps: Any, envelope: pipeline.Envelope, path: Path, size: int) -> pipeline.Outcome:
            self.by.append(name)
            return pipeline.run(deps, envelope, path, size)

        return run_it


def holder_of(services: Services, mailbox_id: int) -> str | None:
    with services.sessions() as session:
        row = session.get(Mailbox, mailbox_id)
        assert row is not None
        return row.lease_holder


@pytest.mark.postgres
def test_two_nodes_poll_a_mailbox_through_one_node_only(
    nodes: tuple[Services, Services],
    dovecot: Dovecot,  # noqa: F811
    user: str,  # noqa: F811
) -> None:
    first, second = nodes
    conversation = open_conversation(first, kind="company", company="bakery", participants=("erin",))
    address = reply_address(first, conversation, "erin")
    mailbox_id = add_mailbox(first, dovecot, user)
    for n in range(8):
        dovecot.deliver(user, mail(delivered_to=address, body=f"Reply number {n}, the invoice is paid."))
    counting = Counting()

    async def scenario() -> None:
        a = Running(first, HELD, counting.runner("a"))
        b = Running(second, HELD, counting.runner("b"))
        await until(lambda: dovecot.count(user, "Processed") == 8, 30, "all eight in Processed")
        holders = {a.pollers.holder: "a", b.pollers.holder: "b"}
        holder = holder_of(first, mailbox_id) or ""
        assert holders[holder] in ("a", "b")
        from mailbridge.api.mailboxes import mailbox_out

        with first.sessions() as session:  # the API names the node polling it
            assert mailbox_out(session.get_one(Mailbox, mailbox_id)).polled_by == holder
        assert [bool(a.poller(mailbox_id)), bool(b.poller(mailbox_id))].count(True) == 1
        await a.stop()
        await b.stop()

    run(scenario)
    assert len(set(counting.by)) == 1 and len(counting.by) == 8  # one node fetched them all, once each
    assert posts(first) == 8
    assert [row.state for row in inbound(first)] == [InboundState.posted] * 8  # one row per message
    assert holder_of(first, mailbox_id) is None  # a clean stop gives the lease back


@pytest.mark.postgres
def test_a_dead_nodes_mailbox_is_taken_over_after_its_lease(
    nodes: tuple[Services, Services],
    dovecot: Dovecot,  # noqa: F811
    user: str,  # noqa: F811
) -> None:
    first, second = nodes
    conversation = open_conversation(first, kind="company", company="bakery", participants=("erin",))
    address = reply_address(first, conversation, "erin")
    mailbox_id = add_mailbox(first, dovecot, user)
    counting = Counting()

    async def scenario() -> None:
        a = Running(first, LEASED, counting.runner("a"))
        await until(lambda: a.poller(mailbox_id) is not None and a.poller(mailbox_id).phase == "idle", 10)
        b = Running(second, LEASED, counting.runner("b"))
        await asyncio.sleep(0.5)  # several of b's ticks: the lease is a's
        assert b.poller(mailbox_id) is None and holder_of(first, mailbox_id) == a.pollers.holder
        a.pollers.release_on_stop = False  # a dies: its lease stays in the database
        await a.stop()
        died = time.monotonic()
        dovecot.deliver(user, mail(delivered_to=address, body="Sent while the first node was down."))
        await until(lambda: dovecot.count(user, "Processed") == 1, 15, "the mail in Processed")
        taken_over = time.monotonic() - died
        assert holder_of(first, mailbox_id) == b.pollers.holder
        assert taken_over < LEASED.lease_seconds + 3
        await b.stop()

    run(scenario)
    assert counting.by == ["b"] and posts(first) == 1


def test_a_clean_stop_gives_the_lease_back_and_a_held_one_is_left_alone(
    svc: Services,  # noqa: F811
    dovecot: Dovecot,  # noqa: F811
    user: str,  # noqa: F811
) -> None:
    mailbox_id = add_mailbox(svc, dovecot, user)
    with transaction(svc.sessions) as session:  # another node holds it for a while yet
        row = session.get_one(Mailbox, mailbox_id)
        row.lease_holder = "other-node:1:abc"
        row.lease_until = utcnow() + timedelta(minutes=5)

    async def scenario() -> None:
        running = Running(svc, LEASED)
        await asyncio.sleep(0.5)
        assert running.poller(mailbox_id) is None  # never polled while another node holds it
        await running.stop()

    run(scenario)
    assert holder_of(svc, mailbox_id) == "other-node:1:abc"


# ---- Return-Path ------------------------------------------------------------------------------------


def appended(sender: str, delivered_to: str | None, *, return_path: str | None = None) -> bytes:
    msg = EmailMessage()
    if return_path is not None:
        msg["Return-Path"] = return_path
    if delivered_to:
        msg["Delivered-To"] = delivered_to
    msg["From"] = sender
    msg["To"] = "desk@acme.test"
    msg["Subject"] = "Re: Your invoice"
    msg["Message-ID"] = make_msgid(domain="mail.example")
    msg["Date"] = "Sat, 21 Nov 2026 10:00:00 +0000"
    msg.set_content("I moved this into the shared mailbox myself: the invoice is paid.")
    return msg.as_bytes().replace(b"\n", b"\r\n")


def imap_append(server: Dovecot, login: str, raw: bytes) -> None:
    """As a person's mail client does (drag and drop): IMAP APPEND, no envelope, no Return-Path."""
    client = imaplib.IMAP4("127.0.0.1", server.port)
    try:
        client.login(login, PASSWORD)
        status, _ = client.append("INBOX", None, None, raw)
        assert status == "OK"
    finally:
        client.logout()


def test_mail_without_return_path_is_not_a_bounce(
    svc: Services,  # noqa: F811
    dovecot: Dovecot,  # noqa: F811
    user: str,  # noqa: F811
    token_address: str,  # noqa: F811
) -> None:
    async def scenario() -> None:
        running = Running(svc)
        add_mailbox(svc, dovecot, user)
        await asyncio.to_thread(imap_append, dovecot, user, appended(CLIENT, token_address))
        await until(lambda: dovecot.count(user, "Processed") == 1, what="the dragged mail in Processed")
        # an explicit null reverse-path still is a bounce (RFC 5321 §4.5.5): never posted
        await asyncio.to_thread(imap_append, dovecot, user, appended(CLIENT, token_address, return_path="<>"))
        await until(lambda: dovecot.count(user, "Processed") == 2, what="the null-sender mail in Processed")
        await running.stop()

    run(scenario)
    assert posts(svc) == 1
    dragged, null = inbound(svc)
    assert (dragged.state, dragged.reason, dragged.mail_from) == (InboundState.posted, "posted", "")
    # classified a bounce (never posted); not at a signed VERP address, so it suppresses nobody
    assert (null.state, null.reason) == (InboundState.bounce, "not_verp")


# ---- changes without a restart -------------------------------------------------------------------


@pytest.fixture
def api(svc: Services) -> Iterator[Any]:  # noqa: F811
    from fastapi.testclient import TestClient

    from mailbridge.api.app import create_app

    with TestClient(create_app(svc), headers={"Authorization": f"Bearer {API_KEY}"}) as client:
        yield client


def test_a_new_password_env_applies_without_a_restart(
    svc: Services,  # noqa: F811
    api: Any,
    dovecot: Dovecot,  # noqa: F811
    user: str,  # noqa: F811
    token_address: str,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("MB_TEST_UNSET_PASSWORD", raising=False)
    monkeypatch.setenv("MB_TEST_NEW_PASSWORD", PASSWORD)
    body = {"host": "127.0.0.1", "port": dovecot.port, "security": "none", "username": user}
    url = "/api/v1/practices/acme/mailboxes/desk"
    assert api.put(url, json={**body, "password_env": "MB_TEST_UNSET_PASSWORD"}).status_code == 201
    dovecot.deliver(user, mail(delivered_to=token_address))
    slow = replace(FAST, auth_retry_seconds=600)  # a failed login is retried only after 10 minutes

    async def scenario() -> None:
        running = Running(svc, slow)
        await until(lambda: api.get(url).json()["status"] == "error", what="the missing variable reported")
        assert "MB_TEST_UNSET_PASSWORD is not set" in api.get(url).json()["last_error"]
        assert api.put(url, json={**body, "password_env": "MB_TEST_NEW_PASSWORD"}).status_code == 200
        await until(lambda: dovecot.count(user, "Processed") == 1, what="the mail in Processed")
        assert api.get(url).json()["status"] == "ok"
        await running.stop()

    run(scenario)
    assert posts(svc) == 1


# ---- replies that must reach a polled mailbox (docs/deploy.md) -------------------------------------


def test_replies_to_a_polled_mailbox_with_a_sub_address(
    svc: Services,  # noqa: F811
    dovecot: Dovecot,  # noqa: F811
    user: str,  # noqa: F811
) -> None:
    """deploy.md: ``reply_domain`` = the mailbox's domain, ``reply_local_template`` = ``desk+{token}``:
    the provider delivers ``desk+<token>@`` into desk@'s mailbox and records it in Delivered-To."""
    with transaction(svc.sessions) as session:
        practice = directory.get_practice(session, "acme")
        practice.reply_domain = "mailbox.acme.test"
        practice.settings = {**practice.settings, "reply_local_template": "desk+{token}"}
    open_conversation(svc, kind="company", company="bakery", participants=("erin",))
    drain(worker_for(svc, None))  # the notification to erin, as an .eml file
    [eml] = (svc.settings.data_dir / "outbox").glob("*.eml")
    notification = email.message_from_bytes(eml.read_bytes(), policy=email.policy.default)
    address = str(notification["Reply-To"])
    assert address.startswith("desk+") and address.endswith("@mailbox.acme.test")

    async def scenario() -> None:
        running = Running(svc)
        add_mailbox(svc, dovecot, user)
        dovecot.deliver(user, mail(delivered_to=address))
        await until(lambda: dovecot.count(user, "Processed") == 1, what="the reply in Processed")
        await running.stop()

    run(scenario)
    assert posts(svc) == 1
    with svc.sessions() as session:
        assert session.scalar(select(Mailbox.status)) == "ok"


def test_the_deploy_md_recipe_for_a_polled_mailbox_is_accepted_as_written(api: Any) -> None:
    """The three PUTs of docs/deploy.md's IMAP section, their bodies read from the document."""
    text = (Path(__file__).resolve().parent.parent / "docs" / "deploy.md").read_text()
    section = text[
        text.index("## Practices whose mail lives in an existing mailbox") : text.index(
            "### Microsoft 365 and Google over OAuth2"
        )
    ]
    # the operator's approval of the domain first, as the document has it typed (run in-process)
    (approve,) = re.findall(r"^mailbridge domains add .*$", section, re.M)
    services = api.app.state.services
    env = {"MAILBRIDGE_DATA_DIR": str(services.settings.data_dir)}
    env["MAILBRIDGE_DATABASE_URL"] = services.settings.effective_database_url
    with pytest.MonkeyPatch.context() as patch:
        for name, value in env.items():
            patch.setenv(name, value)
        assert main(approve.split()[1:]) == 0
    # the allow-list the document tells the operator to set for its password_env
    (allowed,) = re.findall(r"MAILBRIDGE_IMAP_PASSWORD_ENVS='(\[.*?\])'", section)
    services.settings = services.settings.model_copy(update={"imap_password_envs": json.loads(allowed)})
    calls = re.findall(r"curl -X PUT .*?(http://\S+) \\\n\s+-d '(.*?)'", section, re.S)
    paths = [url.removeprefix("http://127.0.0.1:8080") for url, _ in calls]
    assert paths == [
        "/api/v1/practices/acme/routes/frontdesk@acme.example",
        "/api/v1/practices/acme/mailboxes/frontdesk",
        "/api/v1/practices/acme",
    ]
    for path, (_, body) in zip(paths, calls, strict=True):
        response = api.put(path, json=json.loads(body))
        assert response.status_code in (200, 201), (path, response.text)
    practice = api.get("/api/v1/practices/acme").json()
    assert practice["reply_domain"] == "acme.example"
    assert practice["settings"]["reply_local_template"] == "frontdesk+{token}"
