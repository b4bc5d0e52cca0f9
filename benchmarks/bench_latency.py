"""Reply-to-notification latency: 250 at the replying client → the notification reaches the smarthost.

Run from the repository root::

    .venv/bin/python -m benchmarks.bench_latency [--quick] [-n N]

A ``mailbridge serve``-like process (SMTP ingress + delivery worker in one event loop, SQLite,
practice DKIM key, smarthost = a recording SMTP sink on loopback, STARTTLS off) receives N valid
replies, one connection each, at random (Poisson) moments averaging 10 per second; each reply
makes exactly one notification (to the conversation's author). The client notes the moment of
each 250, the sink the moment each notification's DATA completes, both on the same monotonic
clock in this process; notifications are matched to replies through the inbound log (reply
Message-ID → posted message) and the notification's Message-ID (``<n.{message}.{recipient}@…>``).
Run with the default poll interval (1 s) and with 0.05 s. (The HTTP API and IMAP pollers of
``serve`` are not started: they do no work here.)
"""

from __future__ import annotations

import argparse
import asyncio
import random
import re
import time
from dataclasses import dataclass, field
from typing import Any

from benchmarks.harness import (
    HOST,
    Mail,
    backend,
    drive,
    mailbridge_server,
    percentile,
    replies,
    seed_practice,
    table,
)

RATE = 10.0  # replies per second, on average
NOTIFICATION_ID = re.compile(rb"^Message-ID:\s*<n\.([0-9A-Za-z_-]+)\.", re.IGNORECASE | re.MULTILINE)
REPLY_ID = re.compile(rb"^Message-ID:\s*(<[^>\r\n]+>)", re.IGNORECASE | re.MULTILINE)


@dataclass
class Recorder:
    """An aiosmtpd handler that notes when each notification arrives (monotonic clock)."""

    arrivals: dict[str, float] = field(default_factory=dict)  # posted message id → first arrival
    count: int = 0
    unmatched: int = 0

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        now = time.monotonic()
        self.count += 1
        found = NOTIFICATION_ID.search(bytes(envelope.original_content or b""))
        if found:
            self.arrivals.setdefault(found.group(1).decode(), now)
        else:
            self.unmatched += 1
        return "250 2.0.0 queued"


@dataclass
class Run:
    poll: float
    accepted: int
    received: int
    latencies: list[float]
    reply_p50: float
    missing: int
    codes: str


async def _one_config(b: Any, mails: list[Mail], poll: float, sink_recorder: Recorder, sink_port: int) -> Run:
    rng = random.Random(11)
    spacing = [rng.expovariate(RATE) for _ in mails]
    loop = asyncio.get_running_loop()
    with mailbridge_server(
        b.root,
        b.url,
        worker_enabled=True,
        outbox_poll_seconds=poll,
        smarthost=f"{HOST}:{sink_port}",
        smarthost_starttls="off",
    ) as server:
        result = await drive(server.port, mails, concurrency=1, reuse=False, time_limit=120, spacing=spacing)
        posted = await loop.run_in_executor(None, _posted_ids, b.url)
        wanted = {posted[_reply_id(mails[i])] for i in result.accepted_ids if _reply_id(mails[i]) in posted}
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not wanted <= sink_recorder.arrivals.keys():
            await asyncio.sleep(0.05)
    latencies = []
    for i in result.accepted_ids:
        message = posted.get(_reply_id(mails[i]))
        if message in sink_recorder.arrivals:
            latencies.append(sink_recorder.arrivals[message] - result.accepted_at[i])
    return Run(
        poll,
        result.ok,
        len(latencies),
        latencies,
        percentile(result.latencies, 50),
        result.ok - len(latencies),
        result.codes_text(),
    )


def _reply_id(mail: Mail) -> str:
    found = REPLY_ID.search(mail.data)
    return found.group(1).decode() if found else ""


def _posted_ids(url: str) -> dict[str, str]:
    from sqlalchemy import select

    from mailbridge.domain.db import make_engine
    from mailbridge.domain.models import InboundLog

    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(
                select(InboundLog.message_id_header, InboundLog.posted_message_id).where(
                    InboundLog.posted_message_id.is_not(None)
                )
            ).all()
        return {str(h): str(m) for h, m in rows if h}
    finally:
        engine.dispose()


def _prepare(b: Any) -> None:
    """A DKIM key as in tests/test_outbound.py, and an empty outbox (seeding notified every client once)."""
    from sqlalchemy import delete

    from mailbridge.domain.db import transaction
    from mailbridge.domain.models import Outbox
    from tests.conftest import make_services
    from tests.test_outbound import enable_dkim

    services = make_services(b.root, b.url)
    try:
        enable_dkim(services)
        with transaction(services.sessions) as session:
            session.execute(delete(Outbox))
    finally:
        services.close()


async def _main(n: int, polls: list[float]) -> list[Run]:
    from aiosmtpd.smtp import SMTP

    runs = []
    for number, poll in enumerate(polls):
        recorder = Recorder()
        loop = asyncio.get_running_loop()

        def factory(r: Recorder = recorder) -> SMTP:
            return SMTP(r, hostname="sink.localhost", decode_data=False)

        sink = await loop.create_server(factory, host=HOST, port=0)
        try:
            with backend("sqlite", "mblatency") as b:
                threads = await loop.run_in_executor(None, seed_practice, b, 100, ("alice",))
                await loop.run_in_executor(None, _prepare, b)
                mails = replies(threads, n, seed=20 + number, start=(number + 1) * 100_000)
                runs.append(await _one_config(b, mails, poll, recorder, sink.sockets[0].getsockname()[1]))
        finally:
            sink.close()
            await sink.wait_closed()
    return runs


def run(quick: bool = False, count: int | None = None) -> str:
    n = count or (50 if quick else 150)
    runs = asyncio.run(_main(n, [1.0, 0.05]))
    rows = [
        [
            f"{r.poll:g} s" + (" (default)" if r.poll == 1.0 else ""),
            r.codes,
            r.received,
            percentile(r.latencies, 50) * 1e3,
            percentile(r.latencies, 90) * 1e3,
            percentile(r.latencies, 99) * 1e3,
            max(r.latencies, default=float("nan")) * 1e3,
            r.reply_p50 * 1e3,
        ]
        for r in runs
    ]
    out = [
        f"Latency: {n} replies per row (one connection each, Poisson arrivals, {RATE:g}/s), "
        "ingress + worker in one process (SQLite, DKIM), smarthost = recording sink on loopback",
        table(
            [
                "worker poll",
                "replies",
                "notified",
                "p50 ms",
                "p90 ms",
                "p99 ms",
                "max ms",
                "reply end-of-DATA→250 p50 ms",
            ],
            rows,
        ),
        "latency = the 250 at the client → the notification's DATA complete at the sink",
    ]
    out.extend(
        f"poll {r.poll:g} s: {r.missing} accepted replies without a notification" for r in runs if r.missing
    )
    return "\n".join(out)


def main() -> None:
    from benchmarks.harness import exit_cleanly_on_sigterm

    exit_cleanly_on_sigterm()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="50 replies per row instead of 150")
    parser.add_argument("-n", "--count", type=int, help="replies per row")
    args = parser.parse_args()
    print(run(args.quick, args.count), flush=True)


if __name__ == "__main__":
    main()
