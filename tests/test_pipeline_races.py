"""Rights that change while a reply is being processed: the post is judged on what is true when written.

A reply takes milliseconds to seconds between RCPT and the final commit (DNS look-ups, a large
attachment). A client deactivated, a participant removed or a token revoked in that window must
not get the message in: each case below changes the world at one step of a real pipeline run.
"""

from __future__ import annotations

from collections.abc import Callable
from email.message import EmailMessage
from email.policy import SMTP
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select, update

from mailbridge.domain import conversations as convs
from mailbridge.domain import directory
from mailbridge.domain.db import transaction
from mailbridge.domain.models import (
    InboundLog,
    InboundState,
    Message,
    MessageSource,
    Outbox,
    OutboxKind,
    User,
)
from mailbridge.inbound import pipeline
from mailbridge.inbound.envelope import decide_recipient
from mailbridge.wiring import pipeline_deps
from tests.mailhelpers import open_conversation, reply_address, reply_message


def deactivate(services: Any, who: str) -> None:
    with transaction(services.sessions) as session:
        session.execute(update(User).where(User.external_id == who).values(active=False))


def remove(services: Any, conversation_id: str, who: str, actor: str = "dr-smith") -> None:
    with transaction(services.sessions) as session:
        practice = directory.get_practice(session, "acme")
        conversation = convs.get_conversation(session, practice, conversation_id)
        convs.remove_participant(
            session,
            conversation,
            directory.get_user(session, practice, actor),
            directory.get_user(session, practice, who),
        )


def run_reply(
    services: Any,
    tmp_path: Path,
    address: str,
    msg: EmailMessage,
    monkeypatch: pytest.MonkeyPatch,
    step: str | None = None,
    change: Callable[[], None] | None = None,
) -> pipeline.Outcome:
    """One pipeline run as the SMTP door makes it: the RCPT decision first, then DATA; *change*
    runs when the pipeline reaches *step* (a name the pipeline module looks up at call time)."""
    with services.sessions() as session:
        target = decide_recipient(session, services.tokens, services.verp_secret, address).target
    assert target is not None
    if step and change:
        original = getattr(pipeline, step)

        def meddle(*args: Any, **kwargs: Any) -> Any:
            change()
            return original(*args, **kwargs)

        monkeypatch.setattr(pipeline, step, meddle)
    raw = msg.as_bytes(policy=SMTP)
    path = tmp_path / "spool.eml"
    path.write_bytes(raw)
    envelope = pipeline.Envelope("smtp", "127.0.0.1", "client.test", str(msg["From"]), target)
    return pipeline.run(pipeline_deps(services), envelope, path, len(raw))


def posted_by_email(services: Any) -> int:
    with services.sessions() as session:
        return int(
            session.scalar(
                select(func.count()).select_from(Message).where(Message.source == MessageSource.email)
            )
            or 0
        )


def final_row(services: Any, inbound_id: str | None) -> tuple[InboundState, str | None]:
    with services.sessions() as session:
        row = session.get_one(InboundLog, inbound_id)
        return row.state, row.reason


def assert_refused(services: Any, outcome: pipeline.Outcome, reason: str) -> None:
    """550 with *reason*, the inbound row final with the same reason, nothing posted."""
    assert (outcome.state, outcome.reason, outcome.reply.code) == (InboundState.rejected, reason, 550)
    assert final_row(services, outcome.inbound_id) == (InboundState.rejected, reason)
    assert posted_by_email(services) == 0


def test_client_deactivated_during_the_dns_checks_is_refused_with_a_notice(
    seeded: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    conversation = open_conversation(seeded)
    address = reply_address(seeded, conversation, "alice")
    msg = reply_message("alice@client.test", address, "Tuesday at 10 works for me.")
    outcome = run_reply(
        seeded, tmp_path, address, msg, monkeypatch, "authenticate", lambda: deactivate(seeded, "alice")
    )
    assert_refused(seeded, outcome, "inactive_client")
    with seeded.sessions() as session:  # the polite notice still finds its way (the sender is known)
        notices = session.scalars(select(Outbox.to_address).where(Outbox.kind == OutboxKind.notice)).all()
    assert notices == ["alice@client.test"]


def test_participant_removed_while_the_attachments_are_checked_is_refused(
    seeded: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    conversation = open_conversation(seeded, participants=("alice", "billing"))  # someone stays
    address = reply_address(seeded, conversation, "alice")
    msg = reply_message("alice@client.test", address, "Tuesday at 10 works, notes attached.")
    msg.add_attachment(b"some notes\n" * 20, maintype="text", subtype="plain", filename="notes.txt")
    outcome = run_reply(
        seeded,
        tmp_path,
        address,
        msg,
        monkeypatch,
        "intake_uploads",
        lambda: remove(seeded, conversation, "alice"),
    )
    assert outcome.state == InboundState.rejected
    assert final_row(seeded, outcome.inbound_id)[0] == InboundState.rejected
    assert posted_by_email(seeded) == 0


def test_token_revoked_between_rcpt_and_the_end_of_data_is_refused(
    seeded: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Staff removed from a company conversation may still read it (they follow the company), but
    the address they were given as a participant died with their participation."""
    conversation = open_conversation(
        seeded, kind="company", company="bakery", author="billing", participants=("alice", "dr-smith")
    )
    address = reply_address(seeded, conversation, "dr-smith")
    msg = reply_message("dr.smith@acme.test", address, "Noted, I will call the bakery.")
    outcome = run_reply(
        seeded,
        tmp_path,
        address,
        msg,
        monkeypatch,
        "authenticate",
        lambda: remove(seeded, conversation, "dr-smith", actor="billing"),
    )
    assert_refused(seeded, outcome, "token_revoked")


def test_nothing_changed_posts(seeded: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    conversation = open_conversation(seeded)
    address = reply_address(seeded, conversation, "alice")
    outcome = run_reply(
        seeded, tmp_path, address, reply_message("alice@client.test", address, "See you then."), monkeypatch
    )
    assert outcome.state == InboundState.posted
    assert posted_by_email(seeded) == 1


def test_two_refusals_at_once_send_one_notice_and_both_are_recorded(seeded: Any, tmp_path: Path) -> None:
    """The second refusal's notice meets the first one's row (uncommitted when it looked): it gives
    way inside a savepoint and its own transaction still commits."""
    import threading

    from mailbridge.domain.models import NoticeSent
    from mailbridge.inbound.classify import Classification

    if seeded.engine.dialect.name != "postgresql":
        pytest.skip("SQLite has one writer at a time: the two transactions cannot overlap there")
    ctx = pipeline.Context(deps=None, envelope=None, raw_path=tmp_path / "x.eml", size=0)  # type: ignore[arg-type]
    ctx.classification = Classification("human", "human")
    ctx.auth = object()  # type: ignore[assignment]
    ctx.from_address = "alice@client.test"
    with seeded.sessions() as session:
        practice = directory.get_practice(session, "acme")
        ctx.notice_to = (directory.get_user(session, practice, "alice").id, "en")
        practice_id = practice.id
    today = __import__("datetime").date.today().isoformat()
    first = seeded.sessions()
    first.add(
        NoticeSent(practice_id=practice_id, address=ctx.from_address, reason="empty_message", day=today)
    )
    first.flush()  # holds the unique key, not committed yet

    done = threading.Event()

    def second() -> None:
        with transaction(seeded.sessions) as session:
            practice = session.get_one(pipeline.Practice, practice_id)
            pipeline._notice(session, practice, ctx, "empty_message")  # waits on the first's key
        done.set()

    thread = threading.Thread(target=second)
    thread.start()
    assert not done.wait(0.5)  # blocked behind the first transaction
    first.commit()
    first.close()
    thread.join(10)
    assert done.is_set(), "the second transaction did not commit"
    with seeded.sessions() as session:
        assert session.scalar(select(func.count()).select_from(NoticeSent)) == 1
        assert session.scalar(select(func.count()).where(Outbox.kind == OutboxKind.notice)) == 0
