"""A commit that writes outbox rows wakes this process's worker: no waiting for the next poll."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from mailbridge.domain import conversations as convs
from mailbridge.domain import directory
from mailbridge.domain.db import transaction
from mailbridge.domain.models import Conversation, Outbox, OutboxKind
from mailbridge.outbound.fanout import enqueue_email
from mailbridge.outbound.worker import start_worker, wake_on_commit
from tests.mailhelpers import live_server, open_conversation, reply_address, reply_message, send
from tests.sink import Sink


class CountingWorker:
    def __init__(self) -> None:
        self.nudges = 0

    def nudge(self) -> None:
        self.nudges += 1


def test_only_a_committed_outbox_row_nudges(seeded: Any) -> None:
    services = seeded
    worker = CountingWorker()
    remove = wake_on_commit(services.sessions, worker)  # type: ignore[arg-type]
    try:
        conversation_id = open_conversation(services)  # posts a message: one notification row
        assert worker.nudges == 1
        with transaction(services.sessions) as session:  # a commit without outbox rows
            directory.get_practice(session, "acme").name += ""
        assert worker.nudges == 1
        try:  # outbox rows flushed, then rolled back: nothing to send, no nudge
            with transaction(services.sessions) as session:
                practice = directory.get_practice(session, "acme")
                enqueue_email(
                    session, practice, kind=OutboxKind.notice, to_address="alice@client.test", payload={}
                )
                raise RuntimeError("abandon")
        except RuntimeError:
            pass
        assert worker.nudges == 1
        with transaction(services.sessions) as session:
            practice = directory.get_practice(session, "acme")
            author = directory.get_user(session, practice, "dr-smith")
            conversation = session.get_one(Conversation, conversation_id)
            convs.post_message(session, practice, conversation, author, body="One more thing.")
        assert worker.nudges == 2
    finally:
        remove()
    open_conversation(services)
    assert worker.nudges == 2  # listeners removed


def test_a_reply_is_notified_at_once_although_the_poll_is_a_minute(seeded: Any) -> None:
    services = seeded
    conversation_id = open_conversation(services)
    address = reply_address(services, conversation_id, "alice")
    with Sink() as sink, live_server(services) as server:
        services.settings = services.settings.model_copy(
            update={
                "smarthost": f"127.0.0.1:{sink.port}",
                "smarthost_starttls": "off",
                "outbox_poll_seconds": 60.0,
            }
        )
        stop = asyncio.Event()
        task = asyncio.run_coroutine_threadsafe(_start(services, stop), server.loop).result(10)
        try:
            deadline = time.monotonic() + 10  # the first batch: the conversation's opening notification
            while time.monotonic() < deadline and len(sink.received) < 1:
                time.sleep(0.02)
            assert len(sink.received) == 1
            time.sleep(0.3)  # the worker is now idle, for up to a minute
            sent_at = time.monotonic()
            msg = reply_message("alice@client.test", address, "Tuesday at 10 suits me.")
            assert send(server, msg, "alice@client.test", address)[0] == 250
            while time.monotonic() < sent_at + 10 and len(sink.received) < 2:
                time.sleep(0.01)
            assert len(sink.received) == 2, "the reply's notification waited for the poll"
            assert time.monotonic() - sent_at < 5
            assert sink.received[1].rcpts == ["dr.smith@acme.test"]
        finally:
            server.loop.call_soon_threadsafe(stop.set)
            asyncio.run_coroutine_threadsafe(_wait(task), server.loop).result(10)
    with services.sessions() as session:
        assert session.query(Outbox).count() == 2


async def _start(services: Any, stop: asyncio.Event) -> asyncio.Task[None]:
    return start_worker(services, stop)


async def _wait(task: asyncio.Task[None]) -> None:
    await asyncio.wait_for(task, 10)
