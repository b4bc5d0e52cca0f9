"""Group commit (issue 17 item 5): replies processed together share one SQLite commit, each in its
own savepoint, and none is answered before the commit that contains it."""

from __future__ import annotations

import threading
import time
from email.message import EmailMessage
from email.policy import SMTP
from pathlib import Path
from typing import Any

from sqlalchemy import func, select

from mailbridge.domain.models import InboundLog, InboundState, Message, MessageSource
from mailbridge.inbound import pipeline
from mailbridge.inbound.envelope import decide_recipient
from mailbridge.wiring import pipeline_deps
from tests.conftest import seed
from tests.mailhelpers import open_conversation, reply_address, reply_message


def posted(services: Any) -> int:
    with services.sessions() as session:
        query = select(func.count()).select_from(Message).where(Message.source == MessageSource.email)
        return int(session.scalar(query) or 0)


def start_run(services: Any, path: Path, address: str, msg: EmailMessage, out: list[Any]) -> threading.Thread:
    with services.sessions() as session:
        target = decide_recipient(session, services.tokens, services.verp_secret, address).target
    assert target is not None
    raw = msg.as_bytes(policy=SMTP)
    path.write_bytes(raw)
    envelope = pipeline.Envelope("smtp", "127.0.0.1", "client.test", str(msg["From"]), target)
    deps = pipeline_deps(services)
    thread = threading.Thread(target=lambda: out.append(pipeline.run(deps, envelope, path, len(raw))))
    thread.start()
    return thread


def test_three_replies_one_commit_a_duplicate_rolled_back_alone(sqlite_services: Any, tmp_path: Path) -> None:
    services = sqlite_services
    seed(services)
    committer = pipeline_deps(services).committer
    assert committer is not None  # on by default on SQLite
    first = open_conversation(services, participants=("alice",))
    second = open_conversation(services, participants=("bob",))
    to_first, to_second = reply_address(services, first, "alice"), reply_address(services, second, "bob")
    one = reply_message("alice@client.test", to_first, "Tuesday at 10 works for me.")
    other = reply_message("bob@client.test", to_second, "Thanks, the form is attached in my head.")
    commits, transactions = committer.commits, committer.transactions
    outcomes: list[Any] = []
    # Hold the commit: the three runs queue their final transactions behind it.
    with committer._commit_lock:
        threads = [
            start_run(services, tmp_path / f"{i}.eml", address, msg, outcomes)
            for i, (address, msg) in enumerate([(to_first, one), (to_first, one), (to_second, other)])
        ]
        deadline = time.monotonic() + 60
        while len(committer._pending) < 3 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert len(committer._pending) == 3
        # Nobody has an answer, nothing is posted, while the commit has not happened.
        assert outcomes == [] and all(t.is_alive() for t in threads)
        assert posted(services) == 0
    for thread in threads:
        thread.join(60)
    assert sorted((o.reply.code, o.state.value, o.reason) for o in outcomes) == [
        (250, "duplicate", "duplicate_suppressed"),
        (250, "posted", "posted"),
        (250, "posted", "posted"),
    ]
    assert (committer.commits - commits, committer.transactions - transactions) == (1, 3)
    assert posted(services) == 2
    with services.sessions() as session:
        states = session.scalars(select(InboundLog.state)).all()
    assert sorted(s.value for s in states) == ["duplicate", "posted", "posted"]
    assert InboundState.received not in states


def test_group_commit_off_commits_each_run(sqlite_services: Any) -> None:
    services = sqlite_services
    services.settings = services.settings.model_copy(update={"group_commit": False})
    assert pipeline_deps(services).committer is None
