"""List pages on a big practice: 10,000 conversations and 100,000 messages, first page and a deep one.

Run from the repository root::

    .venv/bin/python -m benchmarks.bench_pagination [--quick] [--postgres]

The practice is filled with bulk inserts (a staff member in every conversation, a client in half of
them, one thread of 10,000 messages and nine messages in every other conversation), then each page
is asked for through the HTTP application in process (FastAPI's test client, no network), timed
inside the server by an ASGI middleware: from the request's arrival to the answer's last byte
(routing, the queries, serialisation). A deep page starts at the 9,000th row,
from the cursor the previous page would have returned. Reported per page: median and 95th
percentile of ``REPEAT`` requests, the statements it ran, and whether it stays under 50 ms. Before
keyset pagination, the same list for a user with 3,000 conversations took 2.3 to 2.6 s (measured).
"""

from __future__ import annotations

import argparse
import time
from datetime import UTC, datetime, timedelta
from typing import Any

from benchmarks.harness import backend, percentile, postgres_available, table

REPEAT = 30
BUDGET_MS = 50.0
PAGE = 50


def _fill(services: Any, conversations: int, messages: int) -> tuple[str, int]:
    """Bulk rows straight into the tables; returns the big thread's id and its message count."""
    from sqlalchemy import insert, select

    from mailbridge.domain.models import Conversation, Message, Participant, Practice, User, new_id

    with services.engine.begin() as conn:
        practice_id = conn.execute(select(Practice.id).where(Practice.slug == "acme")).scalar_one()
        users = dict(
            conn.execute(select(User.external_id, User.id).where(User.practice_id == practice_id)).all()
        )
        staff, alice, bob = users["dr-smith"], users["alice"], users["bob"]
        start = datetime(2026, 1, 1, tzinfo=UTC)
        ids = [new_id() for _ in range(conversations)]
        rows, members = [], []
        for n, cid in enumerate(ids):
            when = start + timedelta(minutes=n)
            rows.append(
                {
                    "id": cid,
                    "practice_id": practice_id,
                    "kind": "private",
                    "company_id": None,
                    "subject": f"Conversation {n}",
                    "creator_id": staff,
                    "created_at": when,
                    "updated_at": when + timedelta(seconds=30),
                    "deleted_at": None,
                }
            )
            client = alice if n % 2 == 0 else bob
            members += [
                {"conversation_id": cid, "user_id": staff, "added_at": when, "removed_at": None},
                {"conversation_id": cid, "user_id": client, "added_at": when, "removed_at": None},
            ]
        conn.execute(insert(Conversation.__table__), rows)  # type: ignore[arg-type]
        conn.execute(insert(Participant.__table__), members)  # type: ignore[arg-type]
        thread = ids[0]  # alice takes part (n = 0)
        per_other = (messages - messages // 10) // max(conversations - 1, 1)
        in_thread = messages - per_other * (conversations - 1)
        batch: list[dict[str, Any]] = []

        def message(cid: str, author: int, when: datetime) -> None:
            batch.append(
                {
                    "id": new_id(),
                    "conversation_id": cid,
                    "author_id": author,
                    "body": "Thank you, see you on Tuesday at 10. " * 3,
                    "body_html": None,
                    "hidden_text": None,
                    "source": "app",
                    "internal": False,
                    "idempotency_key": None,
                    "created_at": when,
                    "deleted_at": None,
                }
            )
            if len(batch) >= 5000:
                conn.execute(insert(Message.__table__), batch)  # type: ignore[arg-type]
                batch.clear()

        for k in range(in_thread):
            message(thread, staff if k % 2 else alice, start + timedelta(seconds=k))
        for n, cid in enumerate(ids[1:], start=1):
            for k in range(per_other):
                message(cid, staff, start + timedelta(minutes=n, seconds=k))
        if batch:
            conn.execute(insert(Message.__table__), batch)  # type: ignore[arg-type]
        conn.exec_driver_sql("ANALYZE")  # both databases plan from statistics
    return thread, in_thread


def _deep_cursor(services: Any, url_kind: str, thread: str, depth: int) -> str:
    """The cursor a walk would hold after *depth* rows (the key of the row at that position)."""
    from sqlalchemy import select

    from mailbridge.domain import pagination
    from mailbridge.domain.models import Conversation, Message

    with services.sessions() as session:
        if url_kind == "conversations":
            row = session.execute(
                select(Conversation.updated_at, Conversation.id)
                .order_by(Conversation.updated_at.desc(), Conversation.id.desc())
                .offset(depth - 1)
                .limit(1)
            ).one()
        else:
            row = session.execute(
                select(Message.created_at, Message.id)
                .where(Message.conversation_id == thread)
                .order_by(Message.created_at, Message.id)
                .offset(depth - 1)
                .limit(1)
            ).one()
    return pagination.encode(list(row))


class ServerTime:
    """ASGI middleware: from the request's arrival to the last byte of the answer, in the server."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.last_ms = 0.0

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        started = time.perf_counter()

        async def timed_send(message: Any) -> None:
            await send(message)
            if message["type"] == "http.response.body" and not message.get("more_body"):
                self.last_ms = (time.perf_counter() - started) * 1000

        await self.app(scope, receive, timed_send)


def _time(client: Any, url: str, services: Any, server: ServerTime) -> tuple[float, float, int, int]:
    from sqlalchemy import event

    statements = [0]

    def count(*_: Any) -> None:
        statements[0] += 1

    for _ in range(3):  # warm: connections, statement caches
        assert client.get(url).status_code == 200
    samples = []
    event.listen(services.engine, "before_cursor_execute", count)
    try:
        for _ in range(REPEAT):
            response = client.get(url)
            samples.append(server.last_ms)
            assert response.status_code == 200, response.text
    finally:
        event.remove(services.engine, "before_cursor_execute", count)
    items = len(response.json()["items"])
    return percentile(samples, 50), percentile(samples, 95), statements[0] // REPEAT, items


def _measure(kind: str, conversations: int, messages: int) -> tuple[str, list[list[Any]], float]:
    from fastapi.testclient import TestClient

    from mailbridge.api.app import create_app
    from tests.conftest import API_KEY, make_services, seed

    with backend(kind, "mbpages") as b:
        services = make_services(b.root, b.url)
        try:
            seed(services)
            started = time.perf_counter()
            thread, in_thread = _fill(services, conversations, messages)
            fill = time.perf_counter() - started
            depth_c = min(9000, conversations - PAGE)
            depth_t = min(9000, in_thread - PAGE)
            base = "/api/v1/practices/acme"
            pages = [
                ("conversations, staff: first page", f"{base}/conversations?as=dr-smith&limit={PAGE}", None),
                (
                    f"conversations, staff: after {depth_c:,}",
                    f"{base}/conversations?as=dr-smith&limit={PAGE}",
                    _deep_cursor(services, "conversations", thread, depth_c),
                ),
                ("conversations, client: first page", f"{base}/conversations?as=alice&limit={PAGE}", None),
                (
                    f"thread of {in_thread:,}, client: first page",
                    f"{base}/conversations/{thread}/messages?as=alice&limit={PAGE}",
                    None,
                ),
                (
                    f"thread of {in_thread:,}, client: after {depth_t:,}",
                    f"{base}/conversations/{thread}/messages?as=alice&limit={PAGE}",
                    _deep_cursor(services, "thread", thread, depth_t),
                ),
            ]
            rows = []
            server = ServerTime(create_app(services))
            with TestClient(server, headers={"Authorization": f"Bearer {API_KEY}"}) as client:
                for label, url, cursor in pages:
                    full = url + (f"&cursor={cursor}" if cursor else "")
                    p50, p95, statements, items = _time(client, full, services, server)
                    rows.append([label, items, p50, p95, statements, "yes" if p95 < BUDGET_MS else "NO"])
            return b.name, rows, fill
        finally:
            services.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2,000 conversations and 20,000 messages")
    parser.add_argument("--postgres", action="store_true", help="also on PostgreSQL, when it answers")
    args = parser.parse_args()
    conversations, messages = (2_000, 20_000) if args.quick else (10_000, 100_000)
    kinds = ["sqlite"]
    if args.postgres:
        why = postgres_available()
        if why is None:
            kinds.append("postgres")
        else:
            print(f"PostgreSQL skipped: {why}")
    for kind in kinds:
        name, rows, fill = _measure(kind, conversations, messages)
        print(
            table(
                ["page (50 rows)", "rows", "p50 ms", "p95 ms", "SQL/page", f"p95 < {BUDGET_MS:g} ms"],
                rows,
                title=f"{name}: {conversations:,} conversations, {messages:,} messages "
                f"(bulk fill {fill:.1f} s), {REPEAT} requests per page, in-process HTTP",
            )
        )
        print()


if __name__ == "__main__":
    main()
