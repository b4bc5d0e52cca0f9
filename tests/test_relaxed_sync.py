"""The received row's commit does not wait for its own flush, and nothing else inherits that: every
connection back in the pool flushes its commits again (docs/benchmarks.md, steps)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import text

from mailbridge.domain.models import InboundLog, InboundState
from tests.conftest import seed
from tests.mailhelpers import open_conversation, reply_address, reply_message
from tests.test_group_commit import start_run


def _pooled_settings(services: Any) -> list[str]:
    """The flush setting of every connection the pool holds, each checked out in turn (all held
    until the end, so each check takes a different one)."""
    engine = services.engine
    sqlite = engine.dialect.name == "sqlite"
    query = text("PRAGMA synchronous" if sqlite else "SHOW synchronous_commit")
    held, values = [], []
    try:
        for _ in range(engine.pool.checkedin()):
            conn = engine.connect()
            held.append(conn)
            values.append(str(conn.execute(query).scalar_one()))
    finally:
        for conn in held:
            conn.close()
    return values


def test_the_relaxed_commit_ends_with_its_transaction(services: Any, tmp_path: Path) -> None:
    seed(services)
    conversation = open_conversation(services, participants=("alice",))
    address = reply_address(services, conversation, "alice")
    out: list[Any] = []
    for i in range(3):
        msg = reply_message("alice@client.test", address, f"Reply number {i}, see you on Tuesday.")
        msg.replace_header("Message-ID", f"<relaxed-{i}@client.test>")
        start_run(services, tmp_path / f"{i}.eml", address, msg, out).join(60)
    assert [o.reply.code for o in out] == [250, 250, 250]
    with services.sessions() as session:
        assert session.query(InboundLog).filter_by(state=InboundState.posted).count() == 3
    settings = _pooled_settings(services)
    assert settings, "the runs left connections in the pool"
    full = "2" if services.engine.dialect.name == "sqlite" else "on"  # 2 = FULL
    assert set(settings) == {full}


def test_the_received_row_commits_without_waiting_for_its_flush(services: Any, tmp_path: Path) -> None:
    """What the run's first commit asked for, seen from the database itself."""
    from sqlalchemy import event

    seed(services)
    conversation = open_conversation(services, participants=("alice",))
    address = reply_address(services, conversation, "alice")
    seen: list[str] = []
    sqlite = services.engine.dialect.name == "sqlite"

    def before_commit(conn: Any) -> None:
        query = "PRAGMA synchronous" if sqlite else "SHOW synchronous_commit"
        seen.append(str(conn.exec_driver_sql(query).scalar_one()))

    event.listen(services.engine, "commit", before_commit)
    try:
        out: list[Any] = []
        msg = reply_message("alice@client.test", address, "Thursday is fine, thank you.")
        start_run(services, tmp_path / "r.eml", address, msg, out).join(60)
    finally:
        event.remove(services.engine, "commit", before_commit)
    assert out[0].reply.code == 250
    relaxed, full = ("1", "2") if sqlite else ("off", "on")  # 1 = NORMAL, 2 = FULL
    assert seen.count(relaxed) == 1  # the received row's commit, and no other
    assert seen[-1] == full  # the post, before its 250
