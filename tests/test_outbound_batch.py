"""The worker by batch: one claim, one build transaction, one record transaction, same outcomes per row.

Each test puts several rows in one batch and checks that every row ends as it did when the worker
went row by row: a row that cannot be built, a database error, a failed record, a recipient who may
no longer read, all stay confined to their own row. The batch snapshot must answer the policy as
``conversations.situation`` does, for every recipient.
"""

from __future__ import annotations

import asyncio
import collections
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import select, update
from sqlalchemy.exc import OperationalError

from mailbridge.domain import conversations as convs
from mailbridge.domain import directory
from mailbridge.domain.db import transaction
from mailbridge.domain.models import Conversation, Message, Outbox, OutboxKind, OutboxState, User, utcnow
from mailbridge.outbound.build import POLICY_BODY, Draft
from mailbridge.outbound.deliver import Delivery
from mailbridge.outbound.snapshot import BatchSnapshot, first_message_ids
from mailbridge.outbound.worker import Worker
from tests.mailhelpers import open_conversation
from tests.sink import Sink
from tests.test_outbound import drain, parse, worker_for


def rows(services: Any) -> list[Outbox]:
    with services.sessions() as session:
        return list(session.scalars(select(Outbox).order_by(Outbox.to_address, Outbox.created_at)))


def bobs(services: Any) -> Outbox:
    (row,) = [row for row in rows(services) if row.to_address == "bob@client.test"]
    return row


def three_notifications(services: Any) -> None:
    """One company conversation: alice and bob notified; a private one: alice notified again."""
    open_conversation(services, kind="company", company="bakery", participants=("alice", "bob"), subject="A")
    open_conversation(services, kind="private", participants=("alice",), subject="B")


def test_one_batch_sends_everything_and_stores_each_message_id_first(seeded: Any) -> None:
    three_notifications(seeded)
    unstored: list[str] = []

    def message_id_already_committed(data: bytes) -> None:
        """At the smarthost, the Message-ID must already be in the database (a retry reuses it)."""
        with seeded.sessions() as session:
            stored = set(session.scalars(select(Outbox.message_id_header)))
        if parse(data)["Message-ID"] not in stored:
            unstored.append(str(parse(data)["Message-ID"]))

    with Sink() as sink:
        sink.handler.before_answer = message_id_already_committed
        worker = worker_for(seeded, sink)
        claims: list[list[str]] = []
        claim = worker.claim
        worker.claim = lambda: claims.append(claim()) or claims[-1]  # type: ignore[method-assign,func-returns-value]
        drain(worker)
    assert len(claims[0]) == 3  # the three rows went as one batch
    assert len(sink.received) == 3 and unstored == []
    for row in rows(seeded):
        assert (row.state, row.attempts, row.lease_until) == (OutboxState.sent, 1, None)


def test_a_row_that_cannot_be_built_is_released_alone(seeded: Any) -> None:
    three_notifications(seeded)
    with transaction(seeded.sessions) as session:  # bob's address went bad after the fan-out
        session.execute(
            update(User).where(User.email == "bob@client.test").values(email="bob@client.test\r\nBcc: x")
        )
    with Sink() as sink:
        drain(worker_for(seeded, sink), rounds=1)
    assert sorted(r.rcpts[0] for r in sink.received) == ["alice@client.test", "alice@client.test"]
    bob = bobs(seeded)
    assert (bob.state, bob.attempts, bob.lease_until) == (OutboxState.pending, 1, None)
    assert bob.last_answer == "internal error while building or sending"
    assert bob.next_attempt_at > utcnow()  # backoff, as for any temporary failure


def test_a_database_error_falls_back_to_one_transaction_per_row(seeded: Any, monkeypatch: Any) -> None:
    three_notifications(seeded)
    worker = worker_for(seeded, None)
    real = worker.builder.reply_token

    def reply_token(session: Any, draft: Draft) -> str | None:
        if draft.rcpt == "bob@client.test":
            raise OperationalError("INSERT INTO reply_tokens", {}, Exception("disk I/O error"))
        return real(session, draft)

    monkeypatch.setattr(worker.builder, "reply_token", reply_token)
    with Sink() as sink:
        worker.transport = worker_for(seeded, sink).transport
        drain(worker, rounds=1)
        assert len(sink.received) == 2
        sent_ids = {parse(r.data)["Message-ID"] for r in sink.received}
    assert (bobs(seeded).state, bobs(seeded).attempts) == (OutboxState.pending, 1)
    assert {r.message_id_header for r in rows(seeded) if r.state == OutboxState.sent} == sent_ids


def test_a_failed_batch_record_is_recorded_row_by_row(seeded: Any, monkeypatch: Any) -> None:
    three_notifications(seeded)
    worker = worker_for(seeded, None)
    real = worker._record_row
    calls: list[str] = []

    def record_row(session: Any, row: Outbox, delivery: Delivery) -> None:
        calls.append(row.id)
        if len(calls) == 2:  # the batch transaction fails on its second row
            raise OperationalError("UPDATE outbox", {}, Exception("database is locked"))
        real(session, row, delivery)

    monkeypatch.setattr(worker, "_record_row", record_row)
    drain(worker, rounds=1)
    assert len(calls) == 2 + 3  # the failed batch, then each row in its own transaction
    for row in rows(seeded):
        assert (row.state, row.attempts) == (OutboxState.sent, 1)


def test_policy_is_asked_for_every_recipient_of_a_batch(seeded: Any) -> None:
    """Two recipients of one conversation in one batch: the one removed since the fan-out gets nothing."""
    conv = open_conversation(seeded, kind="private", participants=("alice", "bob"), subject="Group")
    with transaction(seeded.sessions) as session:
        p = directory.get_practice(session, "acme")
        conversation = convs.get_conversation(session, p, conv)
        smith, bob = directory.get_user(session, p, "dr-smith"), directory.get_user(session, p, "bob")
        convs.remove_participant(session, conversation, smith, bob)
    with Sink() as sink:
        drain(worker_for(seeded, sink))
    assert [r.rcpts for r in sink.received] == [["alice@client.test"]]
    bob = bobs(seeded)
    assert (bob.state, bob.last_answer) == (OutboxState.failed, "cancelled: recipient may no longer read")


def favourite(services: Any, user: str, company: str, on: bool) -> None:
    with transaction(services.sessions) as session:
        p = directory.get_practice(session, "acme")
        directory.set_favorite(
            session, directory.get_user(session, p, user), directory.get_company(session, p, company), on
        )


@pytest.mark.parametrize("order", ["alice_first", "bob_first"])
def test_snapshot_situation_is_conversations_situation(seeded: Any, order: str) -> None:
    """Every user of the practice, in every kind of conversation, asked in either order."""
    favourite(seeded, "dave", "bakery", True)  # a confidential conversation is created with clients of
    confidential = open_conversation(  # the company only; dave drops the favourite afterwards
        seeded, kind="confidential", company="bakery", participants=("alice", "dave")
    )
    favourite(seeded, "dave", "bakery", False)
    conversations = [
        open_conversation(seeded, kind="company", company="bakery", participants=("alice", "bob")),
        open_conversation(seeded, kind="company", company="garage", participants=("alice",)),
        confidential,
        open_conversation(seeded, kind="private", participants=("alice", "bob", "carol")),
        open_conversation(seeded, kind="direct", author="dr-smith", participants=("dr-jones",)),
    ]
    with transaction(seeded.sessions) as session:
        p = directory.get_practice(session, "acme")
        removed = convs.get_conversation(session, p, conversations[3])
        smith, bob = directory.get_user(session, p, "dr-smith"), directory.get_user(session, p, "bob")
        convs.remove_participant(session, removed, smith, bob)
    with seeded.sessions() as session:
        users = list(session.scalars(select(User).order_by(User.id)))
        if order == "bob_first":
            users.sort(key=lambda u: u.external_id != "bob")
        snapshot = BatchSnapshot.load(session, list(session.scalars(select(Outbox))))
        for conv_id in conversations:
            conversation = session.get_one(Conversation, conv_id)
            for user in users:
                expected = convs.situation(session, user, conversation, body=POLICY_BODY)
                assert snapshot.situation(session, user, conversation, POLICY_BODY) == expected, (
                    conversation.kind,
                    user.external_id,
                )


def test_first_message_ids_are_conversations_first_message(seeded: Any) -> None:
    ids = [open_conversation(seeded, participants=("alice",), subject=f"S{i}") for i in range(3)]
    with transaction(seeded.sessions) as session:
        p = directory.get_practice(session, "acme")
        author = directory.get_user(session, p, "dr-smith")
        for conv_id in ids[:2]:
            conversation = convs.get_conversation(session, p, conv_id)
            for i in range(3):
                convs.post_message(session, p, conversation, author, body=f"follow-up number {i}")
        first = convs.first_message(session, ids[0])
        assert first is not None
        first.deleted_at = utcnow()  # a deleted first message still roots the thread
    with seeded.sessions() as session:
        found = first_message_ids(session, [*ids, "no-such-conversation"])
        for conv_id in ids:
            expected = convs.first_message(session, conv_id)
            assert expected is not None and found[conv_id] == expected.id
        assert "no-such-conversation" not in found
        assert session.scalar(select(Message.id).where(Message.id == found[ids[0]])) is not None


def test_claim_takes_due_rows_in_order_and_only_once(seeded: Any) -> None:
    for i in range(4):
        open_conversation(seeded, kind="company", company="bakery", participants=("alice",), subject=f"S{i}")
    with transaction(seeded.sessions) as session:  # the oldest row is not due yet; another is leased
        ordered = list(session.scalars(select(Outbox).order_by(Outbox.next_attempt_at)))
        ordered[0].next_attempt_at = utcnow().replace(year=2999)
        ordered[1].lease_until = utcnow().replace(year=2999)
        expected = [row.id for row in ordered[2:]]
    worker: Worker = worker_for(seeded, None)
    assert worker.claim() == expected
    assert worker.claim() == []


def test_worker_killed_after_sending_resends_with_the_same_message_id(seeded: Any) -> None:
    three_notifications(seeded)
    worker = worker_for(seeded, None, outbox_lease_seconds=5)

    async def die_before_recording() -> list[bytes]:
        ids = await asyncio.to_thread(worker.claim)
        jobs = await asyncio.to_thread(worker.build, ids)
        return [job.built.data for job in jobs if job.built is not None]  # "sent", then the process dies

    first = asyncio.run(die_before_recording())
    with transaction(seeded.sessions) as session:  # the lease runs out
        session.execute(update(Outbox).values(lease_until=utcnow().replace(year=2000)))
    with Sink() as sink:
        drain(worker_for(seeded, sink))
        again = sorted(parse(r.data)["Message-ID"] for r in sink.received)
    assert again == sorted(parse(data)["Message-ID"] for data in first) and len(again) == 3


# ---- a batch that outlives its lease -------------------------------------------------------------


def count_sends(worker: Worker, sent: collections.Counter[str]) -> None:
    """Count, by Message-ID, what *worker* hands to its (real) smarthost connection."""
    send = worker.transport.send

    async def counted(mail_from: str, rcpt: str, data: bytes) -> Delivery:
        sent[str(parse(data)["Message-ID"])] += 1
        return await send(mail_from, rcpt, data)

    worker.transport.send = counted  # type: ignore[method-assign]


def test_past_half_its_lease_a_worker_gives_rows_back_instead_of_sending_them_twice(seeded: Any) -> None:
    for i in range(4):
        open_conversation(seeded, kind="private", participants=("alice",), subject=f"Appointment {i}")
    by_first: collections.Counter[str] = collections.Counter()
    by_second: collections.Counter[str] = collections.Counter()
    with Sink() as sink:
        sink.handler.delay = 0.6  # a slow smarthost: each DATA answered after 0.6 s
        first, second = worker_for(seeded, sink), worker_for(seeded, sink)
        for worker, sent in ((first, by_first), (second, by_second)):
            worker.lease = timedelta(seconds=2)
            count_sends(worker, sent)

        async def both() -> list[int]:
            async def later() -> int:
                await asyncio.sleep(1.5)  # the first worker's lease (2 s) has not run out yet
                return await second.run_once()

            claimed = list(await asyncio.gather(first.run_once(), later()))
            while await second.run_once():  # whatever was given back after the second one looked
                pass
            await first.transport.close()
            await second.transport.close()
            return claimed

        claimed = asyncio.run(both())
    assert claimed[0] == 4
    # Sends take 0.6 s and nothing leaves a claim past half its 2 s lease: the first worker sent
    # at most two and gave the rest back, which the second sent; nothing reached the sink twice.
    assert sum(by_first.values()) <= 2
    at_sink = collections.Counter(str(parse(mail.data)["Message-ID"]) for mail in sink.received)
    assert sorted(at_sink.values()) == [1, 1, 1, 1]
    assert at_sink == by_first + by_second
    with seeded.sessions() as session:
        states = session.scalars(select(Outbox.state).where(Outbox.kind == OutboxKind.notification)).all()
    assert sorted(states) == [OutboxState.sent] * 4


def test_a_late_answer_does_not_overwrite_a_row_someone_else_claimed(seeded: Any) -> None:
    open_conversation(seeded, kind="private", participants=("alice",))
    worker = worker_for(seeded, None)
    (row_id,) = worker.claim()
    with transaction(seeded.sessions) as session:  # the lease ran out; another worker claimed it
        session.get_one(Outbox, row_id).lease_until = utcnow() + timedelta(minutes=5)
    worker.record({row_id: Delivery("permanent", "550 5.1.1 no such user")})
    with seeded.sessions() as session:
        row = session.get_one(Outbox, row_id)
        assert (row.state, row.attempts) == (OutboxState.pending, 0)
