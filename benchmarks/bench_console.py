"""Console pages at scale: server time with 100,000 inbound rows in one practice (issue 14 §5).

Run from the repository root::

    .venv/bin/python -m benchmarks.bench_console [-n 100000] [--repeat 20] [--postgres]

Fills one practice's inbound log with N rows spread over 30 days (every state and reason, 2,000
senders, 5,000 conversations), N/10 outbox rows and N/100 held quarantine items, in bulk; then
asks each page through the real application (TestClient, signed in) and reads the server time the
console reports in its ``Server-Timing`` header (request in, page rendered), so the client's own
cost is not counted. The target: under 200 ms for the lists and the trace.
"""

from __future__ import annotations

import argparse
import random
import re
import statistics
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient
from sqlalchemy import insert

from benchmarks.harness import percentile, table
from mailbridge.api.app import create_app
from mailbridge.console.accounts import add_operator
from mailbridge.domain import directory
from mailbridge.domain.db import transaction
from mailbridge.domain.models import (
    InboundLog,
    InboundState,
    Outbox,
    OutboxKind,
    OutboxState,
    QuarantineItem,
    new_id,
    utcnow,
)
from tests.conftest import make_services, pg_url_for, seed

STATES = [
    (InboundState.posted, "posted", 70),
    (InboundState.rejected, "reply_user_mismatch", 8),
    (InboundState.rejected, "token_invalid", 6),
    (InboundState.dropped_auto_reply, "auto_reply_dropped", 6),
    (InboundState.quarantined, "auth_not_aligned", 3),
    (InboundState.bounce, "dsn", 3),
    (InboundState.duplicate, "duplicate_suppressed", 2),
    (InboundState.rejected, "dmarc_fail", 2),
]


def fill(services: Any, n: int) -> dict[str, str]:
    rng = random.Random(14)
    weights = [w for _s, _r, w in STATES]
    now = utcnow()
    with transaction(services.sessions) as session:
        practice_id = directory.get_practice(session, "acme").id
    rows, outbox, held = [], [], []
    sample: dict[str, str] = {}
    for i in range(n):
        state, reason, _w = rng.choices(STATES, weights)[0]
        sender = f"client{rng.randrange(2000)}@client.test"
        conversation = f"c{rng.randrange(5000):023d}"
        row_id = new_id()
        rows.append(
            {
                "id": row_id,
                "practice_id": practice_id,
                "received_at": now - timedelta(seconds=rng.randrange(30 * 86400)),
                "door": "smtp",
                "peer": "192.0.2.1",
                "mail_from": sender,
                "rcpt": "reply+abcdefghij…@reply.acme.test",
                "from_header": sender,
                "message_id_header": f"<m{i}@client.test>",
                "state": state,
                "reason": reason,
                "smtp_reply": "250 2.0.0 Message accepted",
                "size": 5300,
                "conversation_id": conversation if state == InboundState.posted else None,
                "details": {},
                "updated_at": now,
            }
        )
        if i % 10 == 0:
            outbox.append(
                {
                    "id": new_id(),
                    "practice_id": practice_id,
                    "kind": OutboxKind.notification,
                    "conversation_id": conversation,
                    "to_address": sender,
                    "payload": {},
                    "state": OutboxState.sent,
                    "attempts": 1,
                    "next_attempt_at": now,
                    "created_at": now - timedelta(seconds=rng.randrange(30 * 86400)),
                    "sent_at": now,
                }
            )
        if state == InboundState.quarantined and len(held) < n // 100:
            held.append(
                {
                    "id": new_id(),
                    "practice_id": practice_id,
                    "inbound_id": row_id,
                    "reason": reason,
                    "from_address": sender,
                    "subject": "Re: appointment",
                    "state": "held",
                    "created_at": now - timedelta(seconds=rng.randrange(30 * 86400)),
                }
            )
        sample.setdefault("address", sender)
        sample.setdefault("conversation", conversation)
        sample.setdefault("message_id", f"<m{i}@client.test>")
    with transaction(services.sessions) as session:
        for start in range(0, len(rows), 5000):
            session.execute(insert(InboundLog), rows[start : start + 5000])
        session.execute(insert(Outbox), outbox)
        if held:
            session.execute(insert(QuarantineItem), held)
    return sample


def server_ms(client: TestClient, path: str) -> float:
    response = client.get(path)
    assert response.status_code == 200, (path, response.status_code)
    found = re.search(r"app;dur=([0-9.]+)", response.headers["server-timing"])
    assert found is not None
    return float(found.group(1))


def run(services: Any, n: int, repeat: int, label: str) -> list[list[Any]]:
    seed(services)
    started = time.perf_counter()
    sample = fill(services, n)
    fill_s = time.perf_counter() - started
    with transaction(services.sessions) as session:
        add_operator(session, "bench", "bench-password-long", all_practices=True, content=True)
    client = TestClient(create_app(services), base_url="http://testserver")
    form = client.get("/console/login").text
    token = re.search(r'name="login_token" value="([^"]+)"', form)
    assert token is not None
    client.post(
        "/console/login",
        data={"name": "bench", "password": "bench-password-long", "login_token": token.group(1)},
    )
    deep = client.get("/console/p/acme/inbound").text
    for _ in range(40):  # walk 40 pages in: the cursor of page 41
        found = re.search(r'href="/console/p/acme/inbound\?cursor=([^"&]+)"', deep)
        assert found is not None
        cursor = found.group(1)
        deep = client.get(f"/console/p/acme/inbound?cursor={cursor}").text
    pages = [
        ("inbound, first page", "/console/p/acme/inbound"),
        ("inbound, page 41 (keyset)", f"/console/p/acme/inbound?cursor={cursor}"),
        ("inbound, by reason", "/console/p/acme/inbound?state=rejected&reason=dmarc_fail"),
        ("inbound, by address", f"/console/p/acme/inbound?address={sample['address']}"),
        ("trace, address", f"/console/p/acme/trace?address={sample['address']}"),
        ("trace, conversation", f"/console/p/acme/trace?conversation={sample['conversation']}"),
        ("trace, Message-ID", f"/console/p/acme/trace?message_id={sample['message_id']}"),
        ("trace, one day", "/console/p/acme/trace?since=2026-01-01"),
        ("quarantine", "/console/p/acme/quarantine"),
        ("deliveries", "/console/p/acme/deliveries"),
        ("overview (charts)", "/console/p/acme/"),
    ]
    out = []
    for name, path in pages:
        server_ms(client, path)  # warm
        times = [server_ms(client, path) for _ in range(repeat)]
        out.append(
            [
                label,
                name,
                f"{statistics.median(times):.1f}",
                f"{percentile(times, 95):.1f}",
                "yes" if percentile(times, 95) < 200 else "NO",
            ]
        )
    print(f"{label}: filled {n} inbound rows in {fill_s:.1f} s", file=sys.stderr)
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("-n", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--postgres", action="store_true")
    args = parser.parse_args()
    rows: list[list[Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        services = make_services(Path(tmp), f"sqlite:///{tmp}/bench.db")
        rows += run(services, args.n, args.repeat, "SQLite")
        services.close()
    if args.postgres:
        from benchmarks.harness import postgres_available

        if postgres_available() is None:
            from sqlalchemy import create_engine, text

            from tests.conftest import PG_URL

            schema = f"mbbench_console_{random.randrange(10**6)}"
            admin = create_engine(PG_URL)
            with admin.begin() as conn:
                conn.execute(text(f"CREATE SCHEMA {schema}"))
            try:
                with tempfile.TemporaryDirectory() as tmp:
                    services = make_services(Path(tmp), pg_url_for(schema))
                    rows += run(services, args.n, args.repeat, "PostgreSQL")
                    services.close()
            finally:
                with admin.begin() as conn:
                    conn.execute(text(f"DROP SCHEMA {schema} CASCADE"))
                admin.dispose()
    print(
        table(
            ["database", "page", "p50 ms", "p95 ms", "< 200 ms"],
            rows,
            f"Console server time with {args.n:,} inbound rows in one practice ({args.repeat} requests each)",
        )
    )


if __name__ == "__main__":
    main()
