"""The IMAP door against a real Dovecot: posting, refusals, IDLE, crashes, UIDVALIDITY, reconnects, credentials.

One Dovecot for the session (``tests/dovecot.py``), one IMAP user per test so folders never collide,
a fresh SQLite database per test. Every wait is a bounded wait on a condition, never a fixed sleep.
"""

from __future__ import annotations

import asyncio
import ssl
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from email.message import EmailMessage
from email.utils import make_msgid
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from mailbridge.access.credentials import seal_password
from mailbridge.domain import directory
from mailbridge.domain.db import transaction
from mailbridge.domain.models import (
    Event,
    InboundLog,
    InboundState,
    Mailbox,
    Message,
    MessageSource,
)
from mailbridge.ingress import imap
from mailbridge.ingress.imap import (
    Access,
    ConfigError,
    Connection,
    MailboxConfig,
    PollerConfig,
    Pollers,
    check_command,
    encode_mailbox_name,
    envelope_recipient,
    parse_fetch,
    parse_search,
    quote_mailbox,
    return_path,
    run_pollers,
    short_error,
)
from mailbridge.wiring import Services
from tests.conftest import API_KEY, make_services, seed
from tests.dovecot import PASSWORD, Dovecot, running_dovecot
from tests.mailhelpers import add_client, open_conversation, reply_address

CLIENT = "erin@mail.example"  # no DMARC record: From-match is the proof a company conversation needs

FAST = PollerConfig(
    idle_seconds=20,
    poll_seconds=20,
    reload_seconds=0.1,
    timeout_seconds=5,
    backoff_initial=0.05,
    backoff_max=0.4,
    auth_retry_seconds=0.3,
    retry_seconds=0.2,
    stop_grace_seconds=5,
)


# ---- fixtures --------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def dovecot() -> Iterator[Dovecot]:
    with running_dovecot() as server:
        yield server


@pytest.fixture
def svc(tmp_path: Path) -> Iterator[Services]:
    services = make_services(tmp_path, f"sqlite:///{tmp_path / 'mailbridge.db'}")
    seed(services)
    add_client(services, "erin", CLIENT, name="Erin Client")
    yield services
    services.close()


@pytest.fixture
def user(dovecot: Dovecot, request: pytest.FixtureRequest) -> str:
    """A fresh IMAP account per test."""
    return dovecot.add_user(f"{request.node.name.replace('[', '-').rstrip(']')}@imap.test")


@pytest.fixture
def token_address(svc: Services) -> str:
    conversation = open_conversation(
        svc, kind="company", company="bakery", participants=("erin",), subject="Your invoice"
    )
    return reply_address(svc, conversation, "erin")


# ---- helpers ---------------------------------------------------------------------------------------


def add_mailbox(svc: Services, dovecot: Dovecot, user: str, name: str = "inbox", **over: Any) -> int:
    values: dict[str, Any] = {
        "host": "127.0.0.1",
        "port": dovecot.port,
        "security": "none",
        "username": user,
        "password": PASSWORD,
        "folder": "INBOX",
        "routing_address": None,
        "on_done": "move",
    } | over
    password = values.pop("password")
    with transaction(svc.sessions) as session:
        practice = directory.get_practice(session, "acme")
        if password is not None:  # as the API stores it: sealed with the practice's data key
            values["password_sealed"] = seal_password(session, svc.keyring, practice.id, name, password)
        row = Mailbox(practice_id=practice.id, name=name, last_uid=0, status="new", **values)
        session.add(row)
        session.flush()
        return row.id


class _Static:
    def __init__(self, password: str) -> None:
        self._password = password

    def password(self, mailbox_id: int) -> str:
        return self._password

    def addresses(self, host: str) -> list[str] | None:
        return None  # connect by name, as when the operator allows private hosts


def static_access(password: str) -> Access:
    """A connection's outside world for tests that build a Connection by hand."""
    return Access(_Static(password), _Static(password))


def mail(
    *,
    sender: str = CLIENT,
    to: str = "desk@acme.test",
    delivered_to: str | None = None,
    body: str = "Thank you, the invoice is paid now.",
) -> bytes:
    msg = EmailMessage()
    if delivered_to:
        msg["Delivered-To"] = delivered_to  # added by the provider, so above everything the sender wrote
    msg["Return-Path"] = f"<{sender}>"
    msg["From"] = sender
    msg["To"] = to
    msg["Subject"] = "Re: Your invoice"
    msg["Message-ID"] = make_msgid(domain="mail.example")
    msg["Date"] = "Sat, 21 Nov 2026 10:00:00 +0000"
    msg.set_content(body)
    return msg.as_bytes().replace(b"\n", b"\r\n")


def posts(svc: Services) -> int:
    with svc.sessions() as session:
        return int(
            session.scalar(
                select(func.count()).select_from(Message).where(Message.source == MessageSource.imap)
            )
            or 0
        )


def inbound(svc: Services) -> list[InboundLog]:
    with svc.sessions() as session:
        return list(session.scalars(select(InboundLog).order_by(InboundLog.received_at)))


def mailbox_row(svc: Services, mailbox_id: int) -> Mailbox:
    with svc.sessions() as session:
        row = session.get(Mailbox, mailbox_id)
        assert row is not None
        return row


async def until(predicate: Callable[[], bool], timeout: float = 30.0, what: str = "") -> float:
    """Wait for a condition checked in a thread (it may query Dovecot or the database); return the time taken."""
    started = time.monotonic()
    while True:
        if await asyncio.to_thread(predicate):
            return time.monotonic() - started
        if time.monotonic() - started > timeout:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or predicate}")
        await asyncio.sleep(0.02)


class Running:
    """``run_pollers`` in the test's event loop; ``stop()`` must return promptly."""

    def __init__(self, svc: Services, config: PollerConfig = FAST, runner: Any = None) -> None:
        self.pollers = Pollers(svc, config, runner)
        self.stop_event = asyncio.Event()
        self.task = asyncio.create_task(self.pollers.run(self.stop_event))

    def poller(self, mailbox_id: int) -> imap.MailboxPoller | None:
        return self.pollers.poller(mailbox_id)

    async def stop(self, within: float = 5.0) -> None:
        self.stop_event.set()
        await asyncio.wait_for(self.task, within)


def run(scenario: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(asyncio.wait_for(scenario(), 45))


# ---- the pure parts ----------------------------------------------------------------------------


def test_search_filters_the_star_quirk() -> None:
    # RFC 3501: "UID 5:*" with a highest UID of 3 still answers 3
    assert parse_search([b"3", b"Search completed"], after=4) == []
    assert parse_search([b"5 7 6", b"Search completed"], after=4) == [5, 6, 7]
    assert parse_search([b"", b"Search completed"], after=0) == []


def test_fetch_picks_the_literal_of_the_uid_asked() -> None:
    lines = [
        b"4 FETCH (FLAGS (\\Seen))",  # an unsolicited flag update from another client
        b"5 FETCH (UID 12 RFC822.SIZE 10 BODY[] {10}",
        bytearray(b"0123456789"),
        b")",
        b"Fetch completed",
    ]
    fetched = parse_fetch(lines, 12)
    assert fetched is not None and fetched.data == b"0123456789" and fetched.size == 10
    assert parse_fetch(lines, 13) is None


def test_envelope_recipient_is_the_topmost_provider_header_never_to() -> None:
    raw = (
        b"Delivered-To: reply+abc@reply.acme.test\r\nReturn-Path: <a@b.example>\r\n"
        b"Delivered-To: forged@evil.example\r\nTo: reply+other@reply.acme.test\r\n\r\n"
    )
    assert envelope_recipient(raw) == "reply+abc@reply.acme.test"
    assert (
        envelope_recipient(b"X-Original-To: Frontdesk@Acme.test\r\nTo: x@y.test\r\n\r\n")
        == "frontdesk@acme.test"
    )
    assert envelope_recipient(b"To: reply+abc@reply.acme.test\r\n\r\n") is None
    assert envelope_recipient(b"Delivered-To: a@x.test, b@x.test\r\n\r\n") is None
    assert return_path(raw) == "a@b.example"
    assert return_path(b"Return-Path: <>\r\n\r\n") == ""


def test_mailbox_names_are_quoted_in_modified_utf7() -> None:
    assert encode_mailbox_name("Boîte de réception") == "Bo&AO4-te de r&AOk-ception"
    assert encode_mailbox_name("R&D") == "R&-D"
    assert quote_mailbox('a "b"') == '"a \\"b\\""'


def test_plaintext_only_towards_loopback_and_errors_carry_no_secret() -> None:
    box = MailboxConfig(
        1, 1, "m", "imap.example.com", 143, "none", "u", None, "mbs1.dk1.sealed", "INBOX", None, "move"
    )

    async def scenario() -> None:
        connection = Connection(box, FAST, asyncio.Event(), static_access("pw-123"))
        with pytest.raises(ConfigError, match="loopback"):
            await connection.open()
        await connection.close()

    asyncio.run(scenario())
    assert "sealed" not in repr(box)
    assert short_error(OSError("login pw-123 refused"), "pw-123") == "OSError: login *** refused"
    with pytest.raises(ValueError):
        PollerConfig(idle_seconds=30 * 60)


def test_no_mailboxes_returns_promptly_and_quietly(svc: Services, caplog: pytest.LogCaptureFixture) -> None:
    async def scenario() -> None:
        stop = asyncio.Event()
        task = asyncio.create_task(run_pollers(svc, stop, FAST))
        await asyncio.sleep(0.3)  # a few reloads of an empty table
        stop.set()
        await asyncio.wait_for(task, 1)

    with caplog.at_level("INFO", logger="mailbridge"):
        run(scenario)
    assert not [r for r in caplog.records if r.levelno >= 30]


# ---- against Dovecot ---------------------------------------------------------------------------


def test_new_mail_is_posted_once_and_moved_to_processed(
    svc: Services, dovecot: Dovecot, user: str, token_address: str
) -> None:
    async def scenario() -> None:
        running = Running(svc)
        await asyncio.sleep(0.05)
        # added while the pollers run: picked up at the next reload, without a restart
        mailbox_id = add_mailbox(svc, dovecot, user)
        dovecot.deliver(user, mail(delivered_to=token_address))
        await until(lambda: dovecot.count(user, "Processed") == 1, what="the mail in Processed")
        assert dovecot.count(user) == 0
        assert "\\Seen" not in dovecot.flags(user, "Processed")[0]  # fetched with BODY.PEEK
        row = mailbox_row(svc, mailbox_id)
        assert row.status == "ok" and row.last_error is None
        assert row.last_uid == 1 and row.uidvalidity == dovecot.uidvalidity(user)
        await running.stop()

    run(scenario)
    assert posts(svc) == 1
    [log] = inbound(svc)
    assert (log.door, log.state, log.mail_from) == ("imap", InboundState.posted, CLIENT)
    assert token_address.partition("@")[0] not in log.rcpt  # the token never lands in the log in full


def test_refused_mail_is_moved_to_rejected(
    svc: Services, dovecot: Dovecot, user: str, token_address: str
) -> None:
    async def scenario() -> None:
        running = Running(svc)
        add_mailbox(svc, dovecot, user)
        # a valid token, but the sender is not its owner (HOSTILE T10)
        dovecot.deliver(user, mail(sender="dave@client.test", delivered_to=token_address))
        await until(lambda: dovecot.count(user, "Rejected") == 1, what="the mail in Rejected")
        await running.stop()

    run(scenario)
    assert posts(svc) == 0
    [log] = inbound(svc)
    assert (log.door, log.state, log.reason) == ("imap", InboundState.rejected, "reply_user_mismatch")


def test_token_only_in_to_does_not_route(
    svc: Services, dovecot: Dovecot, user: str, token_address: str
) -> None:
    """HOSTILE T6: a forwarded notification names the reply address in To:, not in the envelope."""

    async def scenario() -> None:
        running = Running(svc)
        mailbox_id = add_mailbox(svc, dovecot, user)
        dovecot.deliver(user, mail(to=token_address))
        await until(lambda: dovecot.count(user, "Rejected") == 1, what="the mail in Rejected")
        await until(lambda: mailbox_row(svc, mailbox_id).last_uid == 1, what="progress recorded")
        await running.stop()

    run(scenario)
    assert posts(svc) == 0
    [log] = inbound(svc)
    assert (log.door, log.state, log.reason) == ("imap", InboundState.rejected, "no_envelope_recipient")
    assert log.from_header == CLIENT


def test_unknown_delivered_to_falls_back_to_routing_address(
    svc: Services, dovecot: Dovecot, user: str, token_address: str
) -> None:
    async def scenario() -> None:
        running = Running(svc)
        add_mailbox(svc, dovecot, user, routing_address=token_address)
        dovecot.deliver(user, mail(delivered_to="shared-inbox@provider.example"))
        await until(lambda: dovecot.count(user, "Processed") == 1, what="the mail in Processed")
        await running.stop()

    run(scenario)
    assert posts(svc) == 1


def test_idle_wakes_the_poller_without_waiting_for_the_interval(
    svc: Services, dovecot: Dovecot, user: str, token_address: str
) -> None:
    async def scenario() -> None:
        running = Running(svc, PollerConfig(**{**FAST.__dict__, "idle_seconds": 60, "poll_seconds": 60}))
        mailbox_id = add_mailbox(svc, dovecot, user)
        await until(lambda: (p := running.poller(mailbox_id)) is not None and p.phase == "idle", what="IDLE")
        dovecot.deliver(user, mail(delivered_to=token_address))
        took = await until(lambda: dovecot.count(user, "Processed") == 1, timeout=10, what="IDLE wake-up")
        assert took < 10  # the IDLE interval is 60 s: only the server's push explains this
        await running.stop()

    run(scenario)
    assert posts(svc) == 1


def test_polling_fallback_without_idle(
    svc: Services, dovecot: Dovecot, user: str, token_address: str
) -> None:
    async def scenario() -> None:
        running = Running(svc, PollerConfig(**{**FAST.__dict__, "use_idle": False, "poll_seconds": 0.2}))
        mailbox_id = add_mailbox(svc, dovecot, user)
        await until(
            lambda: (p := running.poller(mailbox_id)) is not None and p.phase == "polling", what="polling"
        )
        dovecot.deliver(user, mail(delivered_to=token_address))
        await until(lambda: dovecot.count(user, "Processed") == 1, what="the mail in Processed")
        await running.stop()

    run(scenario)
    assert posts(svc) == 1


class Crash(Exception):
    """Stands for the process dying at a chosen point."""


def test_crash_between_fetch_and_commit_posts_exactly_once(
    svc: Services, dovecot: Dovecot, user: str, token_address: str
) -> None:
    """Killed before the pipeline commits, then after it commits but before the MOVE: one post, nothing lost."""
    from mailbridge.inbound import pipeline

    release = threading.Event()
    calls: list[str] = []

    def blocked_then_dies(deps: Any, envelope: Any, path: Path, size: int) -> Any:
        calls.append("fetched")
        release.wait(10)
        raise Crash("died before the commit")

    def commits_then_dies(deps: Any, envelope: Any, path: Path, size: int) -> Any:
        outcome = pipeline.run(deps, envelope, path, size)
        calls.append(outcome.state.value)
        raise Crash("died after the commit, before the MOVE")

    async def scenario() -> None:
        mailbox_id = add_mailbox(svc, dovecot, user)
        dovecot.deliver(user, mail(delivered_to=token_address))
        # 1. the process is killed while the fetched message is in flight: nothing committed
        first = Running(svc, runner=blocked_then_dies)
        await until(lambda: calls == ["fetched"], what="the fetch")
        first.task.cancel()  # no grace: a kill
        release.set()
        with pytest.raises(asyncio.CancelledError):
            await first.task
        assert posts(svc) == 0 and dovecot.count(user) == 1
        assert mailbox_row(svc, mailbox_id).last_uid == 0
        # 2. restarted, it commits the post and dies before marking the mail
        second = Running(svc, runner=commits_then_dies)
        await until(lambda: "posted" in calls, what="the post")
        await second.stop()
        assert posts(svc) == 1 and dovecot.count(user) == 1
        # 3. restarted once more, normally: the leftover is seen again, found duplicate, and moved
        third = Running(svc)
        await until(lambda: dovecot.count(user, "Processed") == 1, what="the leftover moved")
        await third.stop()

    run(scenario)
    assert posts(svc) == 1
    assert sorted(row.state for row in inbound(svc)) == [InboundState.duplicate, InboundState.posted]


def test_deferred_mail_stays_and_does_not_block_the_next(
    svc: Services, dovecot: Dovecot, user: str, token_address: str
) -> None:
    """A 4xx from the pipeline leaves the mail in place; later mail still flows; a restart retries it."""
    from mailbridge import replies
    from mailbridge.inbound import pipeline

    def defers_the_first(deps: Any, envelope: Any, path: Path, size: int) -> Any:
        if b"first one" in path.read_bytes():
            return pipeline.Outcome(replies.TEMPFAIL, InboundState.deferred, "tempfail_db")
        return pipeline.run(deps, envelope, path, size)

    async def scenario() -> None:
        mailbox_id = add_mailbox(svc, dovecot, user)
        dovecot.deliver(user, mail(delivered_to=token_address, body="The first one, paid on Monday."))
        dovecot.deliver(user, mail(delivered_to=token_address, body="The second one, paid on Tuesday."))
        running = Running(
            svc, PollerConfig(**{**FAST.__dict__, "retry_seconds": 30}), runner=defers_the_first
        )
        await until(lambda: dovecot.count(user, "Processed") == 1, what="the second one processed")
        assert dovecot.uids(user) == [1] and "\\Seen" not in dovecot.flags(user)[0]
        assert mailbox_row(svc, mailbox_id).last_uid == 2
        await running.stop()
        running = Running(svc)  # the deferred one is below last_uid: the start-up sweep finds it
        await until(lambda: dovecot.count(user, "Processed") == 2, what="the first one processed")
        await running.stop()

    run(scenario)
    assert posts(svc) == 2


def test_uidvalidity_change_reads_again_without_duplicate(
    svc: Services, dovecot: Dovecot, user: str, token_address: str, caplog: pytest.LogCaptureFixture
) -> None:
    raw = mail(delivered_to=token_address)

    async def scenario() -> None:
        dovecot.create_folder(user, "Practice")
        mailbox_id = add_mailbox(svc, dovecot, user, folder="Practice")
        dovecot.deliver(user, raw, folder="Practice")
        running = Running(svc)
        await until(lambda: dovecot.count(user, "Processed") == 1, what="the first copy processed")
        await running.stop()
        before = mailbox_row(svc, mailbox_id)
        assert before.last_uid == 1
        # the provider rebuilds the folder (migration, restore): same mail, UID 1 again, new UIDVALIDITY
        dovecot.delete_folder(user, "Practice")
        dovecot.create_folder(user, "Practice")
        dovecot.deliver(user, raw, folder="Practice")
        assert dovecot.uidvalidity(user, "Practice") != before.uidvalidity
        running = Running(svc)
        await until(lambda: dovecot.count(user, "Processed") == 2, what="the second copy processed")
        await running.stop()
        after = mailbox_row(svc, mailbox_id)
        assert after.uidvalidity == dovecot.uidvalidity(user, "Practice") and after.last_uid == 1

    with caplog.at_level("WARNING", logger="mailbridge.ingress.imap"):
        run(scenario)
    assert [r.getMessage() for r in caplog.records].count("imap_uidvalidity_changed") == 1
    assert posts(svc) == 1
    assert [row.state for row in inbound(svc)] == [InboundState.posted, InboundState.duplicate]


def test_flag_mode_marks_and_does_not_read_again(
    svc: Services, dovecot: Dovecot, user: str, token_address: str
) -> None:
    async def scenario() -> None:
        mailbox_id = add_mailbox(svc, dovecot, user, on_done="flag")
        dovecot.deliver(user, mail(delivered_to=token_address))
        dovecot.deliver(user, mail(to=token_address))  # no envelope recipient: refused
        running = Running(svc)
        await until(lambda: mailbox_row(svc, mailbox_id).last_uid == 2, what="both read")
        await until(lambda: all("$MailbridgeDone" in f for f in dovecot.flags(user)), what="both flagged")
        await running.stop()
        flags = dovecot.flags(user)
        assert "\\Seen" not in " ".join(flags) and "$MailbridgeRejected" in flags[1]
        assert dovecot.count(user) == 2 and "Processed" not in dovecot.folders(user)
        running = Running(svc)  # a restart sweeps nothing: both carry the keyword
        await until(lambda: (p := running.poller(mailbox_id)) is not None and p.phase == "idle", what="IDLE")
        await running.stop()

    run(scenario)
    assert posts(svc) == 1 and len(inbound(svc)) == 2


def test_reconnects_after_the_server_goes_away(
    svc: Services, dovecot: Dovecot, user: str, token_address: str
) -> None:
    async def scenario() -> None:
        running = Running(svc)
        mailbox_id = add_mailbox(svc, dovecot, user)
        await until(lambda: (p := running.poller(mailbox_id)) is not None and p.phase == "idle", what="IDLE")
        # 1. the server drops the connection (as providers do with old sessions)
        dovecot.kick(user)
        await until(lambda: mailbox_row(svc, mailbox_id).status == "error", what="the drop noticed")
        dovecot.deliver(user, mail(delivered_to=token_address))
        await until(lambda: dovecot.count(user, "Processed") == 1, what="processed after reconnecting")
        # 2. the whole server restarts
        await asyncio.to_thread(dovecot.stop)
        await until(lambda: mailbox_row(svc, mailbox_id).status == "error", what="the outage noticed")
        await asyncio.to_thread(dovecot.start)
        dovecot.deliver(user, mail(delivered_to=token_address, body="And the second one is paid too."))
        await until(lambda: dovecot.count(user, "Processed") == 2, what="processed after the restart")
        assert mailbox_row(svc, mailbox_id).status == "ok"
        await running.stop()

    try:
        run(scenario)
    finally:
        if not dovecot.running:
            dovecot.start()
    assert posts(svc) == 2


def test_bad_credentials_do_not_stop_the_other_mailbox(
    svc: Services, dovecot: Dovecot, user: str, token_address: str
) -> None:
    async def scenario() -> None:
        running = Running(svc)
        bad = add_mailbox(svc, dovecot, user, name="bad", password="wrong-password-42")
        good = add_mailbox(svc, dovecot, user, name="good")
        await until(lambda: mailbox_row(svc, bad).status == "auth_failed", what="auth_failed")
        dovecot.deliver(user, mail(delivered_to=token_address))
        await until(lambda: dovecot.count(user, "Processed") == 1, what="the good mailbox working")
        assert mailbox_row(svc, good).status == "ok"
        await running.stop()

    run(scenario)
    assert posts(svc) == 1
    with svc.sessions() as session:
        errors = [m.last_error or "" for m in session.scalars(select(Mailbox))]
    assert not any("wrong-password-42" in e or PASSWORD in e for e in errors)
    with svc.sessions() as session:  # announced once to the practice's webhooks, without the error text
        announced = [e.data for e in session.scalars(select(Event).where(Event.type == "mailbox.error"))]
    assert announced == [{"mailbox": "bad", "status": "auth_failed"}]


def test_password_from_the_environment(
    svc: Services, dovecot: Dovecot, user: str, token_address: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MB_TEST_IMAP_PASSWORD", PASSWORD)

    async def scenario() -> None:
        running = Running(svc)
        add_mailbox(svc, dovecot, user, password=None, password_env="MB_TEST_IMAP_PASSWORD")
        dovecot.deliver(user, mail(delivered_to=token_address))
        await until(lambda: dovecot.count(user, "Processed") == 1, what="the mail in Processed")
        await running.stop()

    run(scenario)
    assert posts(svc) == 1


def test_check_command(
    svc: Services, dovecot: Dovecot, user: str, capsys: pytest.CaptureFixture[str]
) -> None:
    add_mailbox(svc, dovecot, user, name="good")
    dovecot.deliver(user, mail(delivered_to="x@mail.example"))
    assert check_command(svc, "acme", FAST) == 0
    out = capsys.readouterr().out
    assert "connected: yes" in out and "IDLE yes, MOVE yes" in out
    assert "1 messages" in out and "new since last UID 0: 1" in out and PASSWORD not in out
    assert dovecot.count(user) == 1 and "\\Seen" not in dovecot.flags(user)[0]  # looked, touched nothing
    add_mailbox(svc, dovecot, user, name="bad", password="wrong-password-42")
    assert check_command(svc, "acme", FAST) == 1
    out = capsys.readouterr().out
    assert "FAILED: authentication failed" in out and "wrong-password-42" not in out
    assert check_command(svc, "nope", FAST) == 2


# ---- the API -----------------------------------------------------------------------------------


@pytest.fixture
def api(svc: Services) -> Iterator[Any]:
    from fastapi import Depends
    from fastapi.testclient import TestClient

    from mailbridge.api import mailboxes
    from mailbridge.api.app import create_app
    from mailbridge.api.deps import require_api_key

    app = create_app(svc)
    if not any(getattr(r, "path", "").endswith("/mailboxes") for r in app.routes):
        app.include_router(mailboxes.router, dependencies=[Depends(require_api_key)])
    with TestClient(app, headers={"Authorization": f"Bearer {API_KEY}"}) as client:
        yield client


BASE = "/api/v1/practices/acme/mailboxes"


def test_api_put_get_delete(api: Any) -> None:
    body = {"host": "imap.example.com", "username": "desk@acme.test", "password": "hunter2-secret"}
    created = api.put(f"{BASE}/desk", json=body)
    assert created.status_code == 201, created.text
    assert created.json()["has_password"] is True and "hunter2-secret" not in created.text
    assert created.json()["port"] == 993 and created.json()["security"] == "tls"
    updated = api.put(
        f"{BASE}/desk", json={**body, "password": None, "password_env": "DESK_PW", "port": 1993}
    )
    assert updated.status_code == 200 and updated.json()["password_env"] == "DESK_PW"
    assert updated.json()["has_password"] is False
    items = api.get(BASE).json()["items"]
    assert [i["name"] for i in items] == ["desk"]
    assert {"status", "last_error", "last_uid", "uidvalidity", "updated_at"} <= set(items[0])
    assert "password" not in items[0]
    assert api.delete(f"{BASE}/desk").status_code == 204
    assert api.delete(f"{BASE}/desk").status_code == 404
    assert api.get(BASE).json()["items"] == []


def test_api_refuses_what_cannot_work(api: Any) -> None:
    base = {"host": "imap.example.com", "username": "desk@acme.test", "password": "s3cret-pw"}
    cases = [
        ({**base, "security": "none"}, "plaintext_not_allowed"),
        ({**base, "folder": "Processed"}, "folder_reserved"),
        ({**base, "routing_address": "someone@elsewhere.example"}, "routing_address_unknown"),
        ({k: v for k, v in base.items() if k != "password"}, "password_required"),
        ({**base, "password_env": "DESK_PW"}, "password_ambiguous"),
        (
            {**{k: v for k, v in base.items() if k != "password"}, "password_env": "HOME"},
            "password_env_not_allowed",
        ),
        ({**base, "username": "a\r\nb"}, "invalid_request"),
        ({**base, "extra": 1}, "invalid_request"),
    ]
    for body, code in cases:
        response = api.put(f"{BASE}/desk", json=body)
        assert response.status_code == 422 and response.json()["code"] == code, (body, response.text)
    local = api.put(f"{BASE}/local", json={**base, "host": "127.0.0.1", "security": "none"})
    assert local.status_code == 201 and local.json()["port"] == 143
    assert api.get("/api/v1/practices/nope/mailboxes").status_code == 404


# ---- TLS ---------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def tls_dovecot(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Dovecot, ssl.SSLContext]]:
    trustme = pytest.importorskip("trustme", reason="trustme (test extra) makes the test CA")
    ca = trustme.CA()
    issued = ca.issue_cert("127.0.0.1", "localhost")
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    cert.write_bytes(b"".join(pem.bytes() for pem in issued.cert_chain_pems))
    issued.private_key_pem.write_to_path(str(key))
    with running_dovecot(tls=(cert, key)) as server:
        context = ssl.create_default_context()
        ca.configure_trust(context)
        yield server, context


def test_tls_and_starttls(
    svc: Services,
    tls_dovecot: tuple[Dovecot, ssl.SSLContext],
    token_address: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    server, context = tls_dovecot
    implicit_user = server.add_user("implicit@imap.test")
    starttls_user = server.add_user("starttls@imap.test")
    config = PollerConfig(**{**FAST.__dict__, "ssl_context": context})
    implicit = add_mailbox(
        svc, server, implicit_user, name="implicit", security="tls", port=server.imaps_port, on_done="flag"
    )
    starttls = add_mailbox(svc, server, starttls_user, name="starttls", security="starttls")
    assert check_command(svc, "acme", config) == 0, capsys.readouterr().out
    assert capsys.readouterr().out.count("result: OK") == 2
    # without the test CA the certificate is not trusted: no silent fallback to anything weaker
    assert check_command(svc, "acme", FAST) == 1
    assert capsys.readouterr().out.count("CERTIFICATE_VERIFY_FAILED") == 2

    async def scenario() -> None:
        running = Running(svc, config)
        server.deliver(implicit_user, mail(delivered_to=token_address))
        server.deliver(starttls_user, mail(delivered_to=token_address, body="Paid by card this morning."))
        await until(lambda: mailbox_row(svc, implicit).last_uid == 1, what="read over implicit TLS")
        await until(lambda: server.count(starttls_user, "Processed") == 1, what="moved over STARTTLS")
        assert "$MailbridgeDone" in server.flags(implicit_user)[0]
        await running.stop()
        assert mailbox_row(svc, starttls).status == "ok"

    run(scenario)
    assert posts(svc) == 2


def test_starttls_is_required_when_configured(dovecot: Dovecot) -> None:
    """The plain test server offers no STARTTLS: the poller refuses rather than log in in clear."""
    user = dovecot.add_user("nostarttls@imap.test")
    box = MailboxConfig(
        1, 1, "m", "127.0.0.1", dovecot.port, "starttls", user, None, None, "INBOX", None, "move"
    )

    async def scenario() -> None:
        connection = Connection(box, FAST, asyncio.Event(), static_access(PASSWORD))
        with pytest.raises(ConfigError, match="STARTTLS"):
            await connection.open()
        await connection.close()

    asyncio.run(scenario())
