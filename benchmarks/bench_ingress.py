"""Ingress throughput: valid replies over real SMTP through the full pipeline, against a bare aiosmtpd.

Run from the repository root::

    .venv/bin/python -m benchmarks.bench_ingress [--quick] [-n N] [--no-postgres]

N distinct ~5 KB Gmail-like replies (quoted history in text and HTML, a valid reply token, a
From that matches the token's owner, SPF passing through the tests' static DNS table; company
conversations so nothing is quarantined; spread over 400 tokens so nothing is a duplicate) are sent
by 20 concurrent senders, (a) one connection per message and (b) reused connections, to

* a bare aiosmtpd server whose handler only answers 250 (the baseline),
* mailbridge's ingress (``runtime.start_ingress``, worker off) on SQLite, then on PostgreSQL, as one
  process (the default) and as one process per CPU (``smtp_processes``, SO_REUSEPORT).

Then, on SQLite with one process and reused connections, the same load once per storage variant
(``harness.STORAGE_VARIANTS``: raw copies and attachments on local disk or in S3 — moto's server on
loopback — encrypted or not), each with a fresh database, in the same run.

Server and load generator each run in their own process; the generator (an asyncio client over
raw sockets) is the same for every row. Latency is end-of-DATA → reply, measured by the client
from writing the final "." to reading the answer. Afterwards every 250 is checked against the
database (messages posted by email, inbound rows in state posted).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import time
from dataclasses import dataclass

from benchmarks.harness import (
    STORAGE_VARIANTS,
    LoadResult,
    Mail,
    Thread,
    backend,
    bare_server,
    count_posted,
    mailbridge_server,
    percentile,
    postgres_available,
    replies,
    seed_practice,
    storage_settings,
    table,
)

CONCURRENCY = 20
CONVERSATIONS = 200  # x 2 clients = 400 reply tokens
TIME_LIMIT = 30.0  # seconds per row at most (the quick run: 15 s); the row counts what was answered


@dataclass
class Row:
    server: str
    mode: str
    result: LoadResult
    posted: int | None = None  # messages posted by email during the row
    baseline: float | None = None
    logged: int | None = None  # inbound-log rows in state "posted" during the row


def _load(port: int, mails: list[Mail], reuse: bool, time_limit: float = TIME_LIMIT) -> LoadResult:
    from benchmarks.harness import run_load

    return run_load(port, mails, concurrency=CONCURRENCY, reuse=reuse, time_limit=time_limit)


def _smtp_source(port: int, count: int, reuse: bool) -> float | None:
    """Postfix's smtp-source against the same bare server: shows our generator is not the ceiling."""
    exe = shutil.which("smtp-source") or "/usr/sbin/smtp-source"
    if not shutil.which(exe):
        return None
    args = [exe, "-s", str(CONCURRENCY), "-m", str(count), "-l", "5000", "-f", "alice@client.test"]
    args += ["-t", "bench@reply.acme.test", *(["-d"] if reuse else []), f"127.0.0.1:{port}"]
    started = time.perf_counter()
    done = subprocess.run(args, capture_output=True, timeout=4 * TIME_LIMIT, check=False)
    elapsed = time.perf_counter() - started
    return count / elapsed if done.returncode == 0 else None


def run(quick: bool = False, count: int | None = None, postgres: bool = True) -> str:
    n = count or (400 if quick else 2000)
    limit = TIME_LIMIT / 2 if quick else TIME_LIMIT
    warm = 40
    rows: list[Row] = []
    breakdown: list[Row] = []
    storage_rows: list[Row] = []
    group_rows: list[Row] = []
    calibration: list[str] = []
    mails_seed = 0

    def fresh(threads: list[Thread], k: int) -> list[Mail]:
        nonlocal mails_seed
        mails_seed += 1
        return replies(threads, k, seed=mails_seed, start=mails_seed * 100_000)

    kinds = ["sqlite"]
    # One process (the default), then one per CPU (``smtp_processes = 0``): the bare server stays one
    # process, so the second row shows what the setting buys on this machine, not a like-for-like.
    process_counts = sorted({1, os.cpu_count() or 1})
    skipped = ""
    if postgres:
        reason = postgres_available()
        if reason is None:
            kinds.append("postgres")
        else:
            skipped = f"PostgreSQL rows skipped: {reason}"
    # The baseline: same messages, same generator, a server that only says 250. It is measured
    # right before each mailbridge row, so both see the same machine (other load drifts).
    dummy = [_fake_thread(i) for i in range(2 * CONVERSATIONS)]
    with bare_server() as bare:
        _load(bare.port, fresh(dummy, warm), reuse=True)
        for reuse in (False, True):
            rate = _smtp_source(bare.port, n, reuse)
            if rate:
                calibration.append(
                    f"calibration: the bare server driven by Postfix smtp-source instead "
                    f"({_mode(reuse)}, 5 KB): {rate:,.0f} msg/s"
                )
        for kind in kinds:
            with backend(kind, "mbingress") as b:
                threads = seed_practice(b, CONVERSATIONS)
                for processes in process_counts:
                    name = f"mailbridge {b.name}" + (f", {processes} processes" if processes > 1 else "")
                    with mailbridge_server(b.root, b.url, smtp_processes=processes) as server:
                        _load(server.port, fresh(threads, warm), reuse=True)
                        for reuse in (False, True):
                            base = _load(bare.port, fresh(dummy, n), reuse, limit)
                            rows.append(Row("bare aiosmtpd (250 only)", _mode(reuse), base))
                            before, logged_before = count_posted(b)
                            result = _load(server.port, fresh(threads, n), reuse, limit)
                            after, logged = count_posted(b)
                            rows.append(
                                Row(
                                    name,
                                    _mode(reuse),
                                    result,
                                    after - before,
                                    base.rate,
                                    logged - logged_before,
                                )
                            )

        # Where the time goes: the same load into mailbridge's SMTP door with the costly layers
        # replaced by free answers (SQLite, one process). Not mailbridge's throughput: its ceiling.
        with backend("sqlite", "mbingress") as b:
            threads = seed_practice(b, CONVERSATIONS)
            for stub, label in (
                ("rcpt+pipeline", "SMTP door only"),
                ("pipeline", "SMTP door + RCPT decision"),
            ):
                with mailbridge_server(b.root, b.url, stub=stub) as server:
                    _load(server.port, fresh(threads, warm), reuse=True)
                    for reuse in (False, True):
                        base = _load(bare.port, fresh(dummy, n), reuse, limit)
                        result = _load(server.port, fresh(threads, n), reuse, limit)
                        breakdown.append(Row(f"{label} (stubbed)", _mode(reuse), result, None, base.rate))

        # Storage and encryption: the default (local disk, encrypted) beside the other variants.
        for label, s3, encrypted in STORAGE_VARIANTS:
            with backend("sqlite", "mbingress") as b:
                threads = seed_practice(b, CONVERSATIONS)
                with (
                    storage_settings(s3, encrypted) as overrides,
                    mailbridge_server(b.root, b.url, **overrides) as server,
                ):
                    _load(server.port, fresh(threads, warm), reuse=True)
                    base = _load(bare.port, fresh(dummy, n), True, limit)
                    before, logged_before = count_posted(b)
                    result = _load(server.port, fresh(threads, n), True, limit)
                    after, logged = count_posted(b)
                    storage_rows.append(
                        Row(label, _mode(True), result, after - before, base.rate, logged - logged_before)
                    )

        # Group commit (issue 17 item 5): the same load with the final transactions committed one
        # by one, then grouped (the default), each on a fresh database, baseline just before.
        for label, grouped in (("group commit off", False), ("group commit on (default)", True)):
            with backend("sqlite", "mbingress") as b:
                threads = seed_practice(b, CONVERSATIONS)
                with mailbridge_server(b.root, b.url, group_commit=grouped) as server:
                    _load(server.port, fresh(threads, warm), reuse=True)
                    base = _load(bare.port, fresh(dummy, n), True, limit)
                    before, logged_before = count_posted(b)
                    result = _load(server.port, fresh(threads, n), True, limit)
                    after, logged = count_posted(b)
                    group_rows.append(
                        Row(label, _mode(True), result, after - before, base.rate, logged - logged_before)
                    )

    out = [
        f"Ingress: up to {n:,} replies of ~5.3 KB per row (at most {limit:.0f} s), {CONCURRENCY} concurrent "
        "senders, asyncio raw-socket load generator in its own process; the bare server is one "
        "process, mailbridge one or one per CPU (smtp_processes)",
        table(
            ["server", "connections", "msg/s", "vs baseline", "p50 ms", "p99 ms", "answers", "posted"],
            [
                [
                    r.server,
                    r.mode,
                    r.result.rate,
                    f"{r.result.rate / r.baseline:.2f}" if r.baseline else "1.00",
                    percentile(r.result.latencies, 50) * 1e3,
                    percentile(r.result.latencies, 99) * 1e3,
                    r.result.codes_text(),
                    "-" if r.posted is None else f"{r.posted:,}",
                ]
                for r in rows
            ],
        ),
    ]
    out.extend(calibration)
    if storage_rows:
        out.append(
            "Storage and encryption (SQLite, one process, reused connections): where raw copies and "
            "attachments go, encrypted or not; each with a fresh database, baseline measured just before"
        )
        out.append(
            table(
                ["raw mail and attachments", "msg/s", "vs baseline", "p50 ms", "p99 ms", "answers", "posted"],
                [
                    [
                        r.server,
                        r.result.rate,
                        f"{r.result.rate / (r.baseline or 1):.2f}",
                        percentile(r.result.latencies, 50) * 1e3,
                        percentile(r.result.latencies, 99) * 1e3,
                        r.result.codes_text(),
                        "-" if r.posted is None else f"{r.posted:,}",
                    ]
                    for r in storage_rows
                ],
            )
        )
    if group_rows:
        out.append(
            "Group commit (SQLite, one process, reused connections): the posts' final transactions "
            "committed one by one, then sharing commits; each with a fresh database, baseline measured just before"
        )
        out.append(
            table(
                ["final transactions", "msg/s", "vs baseline", "p50 ms", "p99 ms", "answers", "posted"],
                [
                    [
                        r.server,
                        r.result.rate,
                        f"{r.result.rate / (r.baseline or 1):.2f}",
                        percentile(r.result.latencies, 50) * 1e3,
                        percentile(r.result.latencies, 99) * 1e3,
                        r.result.codes_text(),
                        "-" if r.posted is None else f"{r.posted:,}",
                    ]
                    for r in group_rows
                ],
            )
        )
    if breakdown:
        out.append(
            "Breakdown (diagnostic, SQLite, one process): the pipeline, then also the RCPT decision, "
            "replaced by answers that cost nothing; ratio to the bare server measured just before"
        )
        out.append(
            table(
                ["mailbridge layers", "connections", "msg/s", "vs baseline"],
                [
                    [r.server, r.mode, r.result.rate, f"{r.result.rate / (r.baseline or 1):.2f}"]
                    for r in breakdown
                ],
            )
        )
    out.extend(_verdicts(rows))
    for r in rows + storage_rows + group_rows:
        if r.posted is not None and not r.posted == r.logged == r.result.ok:
            out.append(
                f"MISMATCH {r.server} {r.mode}: {r.result.ok} answered 250, {r.posted} messages posted, "
                f"{r.logged} inbound rows in state posted"
            )
        if r.result.errors:
            out.append(f"{r.server} {r.mode}: {len(r.result.errors)} errors, first: {r.result.errors[0]}")
    stopped = [f"{r.server.removeprefix('mailbridge ')} {r.mode}" for r in rows if r.result.unsent]
    if stopped:
        out.append(
            f"stopped by the {limit:.0f} s limit before sending all {n:,} (rate = 250s ÷ time): "
            + ", ".join(stopped)
        )
    if skipped:
        out.append(skipped)
    return "\n".join(out)


def _verdicts(rows: list[Row]) -> list[str]:
    """Issue 17 item 6's targets against this run's rows: ≥ 0.2 of the bare server with one process,
    ≥ 0.3 with one per CPU; and what time per message each target leaves, against the time taken."""
    out = []
    for many, goal in ((False, 0.2), (True, 0.3)):
        mine = [
            r
            for r in rows
            if r.baseline and r.server.startswith("mailbridge") and ("processes" in r.server) == many
        ]
        if not mine:
            continue
        parts, met = [], True
        for r in mine:
            base = r.baseline or 1.0
            ratio = r.result.rate / base
            met = met and ratio >= goal
            parts.append(
                f"{r.server.removeprefix('mailbridge ')} {r.mode} {ratio:.2f} "
                f"({1e3 / (goal * base):.1f} ms per message allowed, {1e3 / max(r.result.rate, 1e-9):.1f} ms taken)"
            )
        out.append(
            f"Target (issue 17 item 6): ≥ {goal} of the bare server with "
            + ("one process per CPU" if many else "one process")
            + f" — {'met' if met else 'not met'}: "
            + "; ".join(parts)
        )
    return out


def _mode(reuse: bool) -> str:
    return "reused" if reuse else "one per message"


def _fake_thread(i: int) -> Thread:
    """The baseline accepts any recipient: same message shapes, made-up tokens."""
    return Thread(f"c{i}", "alice" if i % 2 else "bob", f"reply+bench{i:04d}@reply.acme.test")


def main() -> None:
    from benchmarks.harness import exit_cleanly_on_sigterm

    exit_cleanly_on_sigterm()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="400 messages per row instead of 2,000")
    parser.add_argument("-n", "--count", type=int, help="messages per row")
    parser.add_argument("--no-postgres", action="store_true")
    args = parser.parse_args()
    print(run(args.quick, args.count, not args.no_postgres), flush=True)


if __name__ == "__main__":
    main()
