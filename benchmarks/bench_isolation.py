"""Isolation: small replies and HTTP GETs while a 100 MB message streams in, against the same load without it.

Run from the repository root::

    .venv/bin/python -m benchmarks.bench_isolation [--quick] [--mb 100]

One process serves SMTP and the HTTP API on one event loop, as ``mailbridge serve`` does (SQLite,
worker off, the practice's attachment limit raised to 100 MiB). A load generator in its own
process sends small replies (~5 KB, one connection each, Poisson arrivals at 10/s) and, at 10/s
each, ``GET /healthz`` (the event loop alone) and ``GET …/conversations?as=alice`` (a database
read in the API's thread pool). Each round makes two runs: idle, then with one 100 MB reply (a
PDF attachment, as in bench_memory; 137 MB on the wire) sent by a third process from 1 s in, paced
at 10 MB/s (a fast remote sender) so that it streams for most of the run; the full run makes two
rounds and pools their samples (the machine is shared: alternating the two conditions spreads
whatever else runs on it over both).

Reported per load: p50 and p99 latency (small replies: end of DATA → 250; GETs: connect → whole
response) over the whole run, and for the busy runs also over the samples that started while the
big message was streaming (354 → its final dot) and while it was being processed (final dot →
its 250); then p99 busy ÷ p99 idle. Target (issue 17.3): within 1.5× of the idle figures.

A last run sends six replies from clients whose domain's DNS answers only after 5 s (finding 9:
they used to hold every pipeline thread) beside the same small replies. Client-side latencies move
with whatever else the shared machine runs; the serving process also samples its own event loop's
lag (a 5 ms sleeper's oversleep) throughout, reported per phase: that figure is the server's alone.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import time
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from benchmarks.bench_memory import _raise_limit, big_reply
from benchmarks.harness import (
    _MP,
    CHILD_LIFETIME,
    HOST,
    Mail,
    _child,
    _child_main,
    _die_with_parent,
    _stop_process,
    _watch_parent,
    backend,
    drive,
    free_port,
    percentile,
    replies,
    seed_practice,
    table,
)

MB = 1_000_000
RATE = 10.0  # small replies per second
GET_EVERY = 0.1  # seconds between GETs, per path
START_BIG_AFTER = 1.0  # seconds into the busy run
STREAM_RATE = 10 * MB  # bytes per second the big message is sent at (--rate; 0: as fast as loopback allows)
CONVERSATIONS = "/api/v1/practices/acme/conversations?as=alice"
LAG_FILE = "loop-lag.txt"
SLOW_DNS = 5.0  # seconds each look-up under slow.test takes (finding 9's slow DNS)
SLOW_SENDERS = 6  # messages held by it at once, more than the pipeline's 4 CPU threads


class _SlowDomain:
    """The tests' static DNS, except that names under slow.test answer after SLOW_DNS seconds."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    def _wait(self, name: str) -> None:
        if name.rstrip(".").endswith("slow.test"):
            time.sleep(SLOW_DNS)

    def txt(self, name: str) -> list[bytes]:
        self._wait(name)
        if name.rstrip(".") == "slow.test":
            return [b"v=spf1 ip4:127.0.0.1 -all"]
        return list(self.inner.txt(name))

    def a(self, name: str) -> list[str]:
        self._wait(name)
        return list(self.inner.a(name))

    def aaaa(self, name: str) -> list[str]:
        self._wait(name)
        return list(self.inner.aaaa(name))

    def mx(self, name: str) -> list[str]:
        self._wait(name)
        return list(self.inner.mx(name))


# ---- the server: SMTP and HTTP on one event loop ----------------------------------------------------


def _serve_child(conn: Connection, root: str, database_url: str, overrides: dict[str, Any]) -> None:
    async def main() -> None:
        import logging

        import uvicorn

        logging.basicConfig(level=logging.WARNING)
        from mailbridge.runtime import bind_http, http_config, install_loop_guards, start_ingress
        from tests.conftest import make_services

        services = make_services(Path(root), database_url, **overrides)
        services.resolver = _SlowDomain(services.resolver)
        install_loop_guards(asyncio.get_running_loop())
        smtp = await start_ingress(services)
        http = uvicorn.Server(http_config(services))
        # the socket is bound by bind_http, as `mailbridge serve` does: without it uvicorn listens on
        # its default port, not http_listen, and every GET failed
        serving = asyncio.create_task(http.serve(sockets=[bind_http(services.settings.http_listen)]))
        while not http.started:
            await asyncio.sleep(0.01)
        stop = asyncio.Event()
        lags: list[tuple[float, float]] = []

        async def lag_monitor() -> None:
            """The event loop's own lag: how late a 5 ms sleep wakes up, sampled all along."""
            while not stop.is_set():
                began = time.monotonic()
                await asyncio.sleep(0.005)
                lags.append((began, time.monotonic() - began - 0.005))

        monitor = asyncio.create_task(lag_monitor())
        _watch_parent(conn, stop, CHILD_LIFETIME)
        conn.send(("ready", smtp.sockets[0].getsockname()[1], os.getpid()))
        await stop.wait()
        await monitor
        Path(root, LAG_FILE).write_text("".join(f"{t:.6f} {lag:.6f}\n" for t, lag in lags))
        smtp.close()
        http.should_exit = True
        await serving
        services.close()

    _child_main(conn, main)


# ---- the load --------------------------------------------------------------------------------------


@dataclass
class Samples:
    """(start on the monotonic clock, latency in seconds) per request."""

    smtp: list[tuple[float, float]] = field(default_factory=list)
    healthz: list[tuple[float, float]] = field(default_factory=list)
    conversations: list[tuple[float, float]] = field(default_factory=list)
    codes: str = ""
    http_errors: int = 0


async def _get(port: int, path: str, key: str) -> None:
    reader, writer = await asyncio.open_connection(HOST, port)
    try:
        writer.write(
            f"GET {path} HTTP/1.1\r\nHost: bench\r\nAuthorization: Bearer {key}\r\nConnection: close\r\n\r\n".encode()
        )
        data = await reader.read()
        if not data.startswith(b"HTTP/1.1 200"):
            raise OSError(data[:80])
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()


async def _load(smtp_port: int, http_port: int, key: str, mails: list[Mail]) -> Samples:
    samples = Samples()
    done = asyncio.Event()

    async def getter(path: str, out: list[tuple[float, float]]) -> None:
        while not done.is_set():
            started = time.monotonic()
            try:
                await asyncio.wait_for(_get(http_port, path, key), 60)
                out.append((started, time.monotonic() - started))
            except (OSError, TimeoutError):
                samples.http_errors += 1
            await asyncio.sleep(max(0.0, GET_EVERY - (time.monotonic() - started)))

    rng = random.Random(5)
    spacing = [rng.expovariate(RATE) for _ in mails]
    getters = [
        asyncio.create_task(getter("/healthz", samples.healthz)),
        asyncio.create_task(getter(CONVERSATIONS, samples.conversations)),
    ]
    result = await drive(smtp_port, mails, concurrency=1, reuse=False, time_limit=600, spacing=spacing)
    done.set()
    await asyncio.gather(*getters)
    for index, latency in zip(result.accepted_ids, result.latencies, strict=False):
        samples.smtp.append((result.accepted_at[index] - latency, latency))
    samples.codes = result.codes_text()
    return samples


def _load_child(conn: Connection, smtp_port: int, http_port: int, key: str, mails: list[Mail]) -> None:
    import threading

    threading.Thread(target=_die_with_parent, args=(900.0,), daemon=True).start()
    try:
        conn.send(("done", asyncio.run(_load(smtp_port, http_port, key, mails))))
    except BaseException:
        import traceback

        conn.send(("error", traceback.format_exc()))


@dataclass
class BigRun:
    streaming: tuple[float, float] = (0.0, 0.0)  # 354 → final dot
    processing: tuple[float, float] = (0.0, 0.0)  # final dot → answer
    code: int = 0


async def _send_big(port: int, mail: Mail, delay: float, rate: float) -> BigRun:
    await asyncio.sleep(delay)
    reader, writer = await asyncio.open_connection(HOST, port)

    async def reply() -> int:
        while True:
            line = await reader.readline()
            if line[3:4] != b"-":
                return int(line[:3])

    await reply()
    for command in (
        "EHLO big.client.test",
        f"MAIL FROM:<{mail.mail_from}>",
        f"RCPT TO:<{mail.rcpt}>",
        "DATA",
    ):
        writer.write(command.encode() + b"\r\n")
        await reply()
    started = time.monotonic()
    view = memoryview(mail.data)
    for offset in range(0, len(view), 1 << 20):
        writer.write(view[offset : offset + (1 << 20)])
        await writer.drain()
        if rate:
            await asyncio.sleep(max(0.0, started + (offset + (1 << 20)) / rate - time.monotonic()))
    writer.write(b".\r\n")
    dot = time.monotonic()
    code = await reply()
    answered = time.monotonic()
    writer.close()
    return BigRun((started, dot), (dot, answered), code)


def _big_child(conn: Connection, port: int, mail: Mail, delay: float, rate: float) -> None:
    import threading

    threading.Thread(target=_die_with_parent, args=(900.0,), daemon=True).start()
    try:
        conn.send(("done", asyncio.run(_send_big(port, mail, delay, rate))))
    except BaseException:
        import traceback

        conn.send(("error", traceback.format_exc()))


async def _send_slow(port: int, mails: list[Mail], delay: float) -> str:
    await asyncio.sleep(delay)
    result = await drive(port, mails, concurrency=len(mails), reuse=False, time_limit=120, op_timeout=120)
    return result.codes_text()


def _slow_child(conn: Connection, port: int, mails: list[Mail], delay: float) -> None:
    import threading

    threading.Thread(target=_die_with_parent, args=(900.0,), daemon=True).start()
    try:
        conn.send(("done", asyncio.run(_send_slow(port, mails, delay))))
    except BaseException:
        import traceback

        conn.send(("error", traceback.format_exc()))


def _slow_senders(b: Any) -> list[Mail]:
    """Clients at slow.test, each with a conversation: their replies need the slow DNS."""
    from benchmarks.harness import dot_stuff
    from tests.conftest import make_services
    from tests.mailhelpers import add_client, open_conversation, reply_address, reply_message

    services = make_services(b.root, b.url)
    mails = []
    try:
        for n in range(SLOW_SENDERS):
            user, address = f"slow{n}", f"slow{n}@slow.test"
            add_client(services, user, address)
            conversation = open_conversation(services, kind="company", company="bakery", participants=(user,))
            to = reply_address(services, conversation, user)
            data = reply_message(address, to, "Held up by a slow DNS.").as_bytes()
            mails.append(Mail(address, to, dot_stuff(data)))
    finally:
        services.close()
    return mails


def _in_process(target: Any, *args: Any) -> tuple[Any, Connection]:
    parent, child = _MP.Pipe()
    proc = _MP.Process(target=target, args=(child, *args), daemon=True)
    proc.start()
    child.close()
    return proc, parent


def _result(proc: Any, pipe: Connection, limit: float) -> Any:
    try:
        if not pipe.poll(limit):
            raise RuntimeError(f"no result within {limit:.0f} s")
        kind, payload = pipe.recv()
        if kind == "error":
            raise RuntimeError(payload)
        return payload
    finally:
        _stop_process(proc)
        pipe.close()


# ---- the figures -----------------------------------------------------------------------------------


def _pool(into: Samples, run: Samples) -> None:
    into.smtp += run.smtp
    into.healthz += run.healthz
    into.conversations += run.conversations
    into.codes = " ".join(part for part in (into.codes, run.codes) if part)
    into.http_errors += run.http_errors


def _latencies(samples: list[tuple[float, float]], window: tuple[float, float] | None = None) -> list[float]:
    if window is None:
        return [latency for _, latency in samples]
    start, end = window
    return [latency for began, latency in samples if start <= began <= end]


def run(quick: bool = False, megabytes: int | None = None, rate: float = STREAM_RATE) -> str:
    size = (megabytes or (25 if quick else 100)) * MB
    count = 80 if quick else 150
    rounds = 1 if quick else 2
    idle, busy, slowed = Samples(), Samples(), Samples()
    big_runs: list[BigRun] = []
    slow_codes = []
    idle_windows: list[tuple[float, float]] = []
    slow_window = (0.0, 0.0)
    with backend("sqlite", "mbisolation") as b:
        threads = seed_practice(b, 20, participants=("alice",))
        _raise_limit(b, 100 * 1024 * 1024)
        slow_mails = _slow_senders(b)
        big = big_reply(threads[0], size)
        warm = replies(threads, 5, seed=2, start=900_000)
        http_port = free_port()
        overrides = {"smtp_listen": f"{HOST}:0", "http_listen": f"{HOST}:{http_port}", "log_level": "WARNING"}
        from tests.conftest import API_KEY

        with _child(_serve_child, str(b.root), b.url, overrides) as server:
            asyncio.run(drive(server.port, warm, concurrency=1, reuse=False, time_limit=60))
            for number in range(rounds):
                mails = replies(threads, count, seed=10 + number, start=2 * number * count)
                proc, pipe = _in_process(_load_child, server.port, http_port, API_KEY, mails)
                began = time.monotonic()
                _pool(idle, _result(proc, pipe, 900))
                idle_windows.append((began, time.monotonic()))
                mails = replies(threads, count, seed=20 + number, start=(2 * number + 1) * count)
                proc, pipe = _in_process(_load_child, server.port, http_port, API_KEY, mails)
                big_proc, big_pipe = _in_process(_big_child, server.port, big, START_BIG_AFTER, rate)
                _pool(busy, _result(proc, pipe, 900))
                big_runs.append(_result(big_proc, big_pipe, 900))
            mails = replies(threads, count, seed=30, start=2 * rounds * count)
            proc, pipe = _in_process(_load_child, server.port, http_port, API_KEY, mails)
            slow_proc, slow_pipe = _in_process(_slow_child, server.port, slow_mails, START_BIG_AFTER)
            began = time.monotonic()
            _pool(slowed, _result(proc, pipe, 900))
            slow_window = (began, time.monotonic())
            slow_codes.append(_result(slow_proc, slow_pipe, 900))
        lags = [tuple(map(float, line.split())) for line in Path(b.root, LAG_FILE).read_text().splitlines()]
    rows = []
    for label, name in (
        ("small replies: end of DATA → 250", "smtp"),
        ("GET /healthz (event loop only)", "healthz"),
        ("GET …/conversations (database read)", "conversations"),
    ):
        quiet = _latencies(getattr(idle, name))
        loaded = _latencies(getattr(busy, name))
        streaming = [x for r in big_runs for x in _latencies(getattr(busy, name), r.streaming)]
        processing = [x for r in big_runs for x in _latencies(getattr(busy, name), r.processing)]
        rows.append(
            [
                label,
                len(quiet),
                percentile(quiet, 50) * 1e3,
                percentile(quiet, 99) * 1e3,
                percentile(loaded, 50) * 1e3,
                percentile(loaded, 99) * 1e3,
                f"{percentile(loaded, 99) / percentile(quiet, 99):.2f}×",
                f"{len(streaming)}: {percentile(streaming, 99) * 1e3:.1f}",
                f"{len(processing)}: {percentile(processing, 99) * 1e3:.1f}",
            ]
        )
    stream_s = ", ".join(f"{r.streaming[1] - r.streaming[0]:.1f}" for r in big_runs)
    process_s = ", ".join(f"{r.code} after {r.processing[1] - r.processing[0]:.1f}" for r in big_runs)
    pace = f"paced at {rate / MB:g} MB/s" if rate else "at full speed"
    head = (
        f"Isolation: {rounds} round(s) of {count} small replies (Poisson, {RATE:g}/s) and GETs every "
        f"{GET_EVERY * 1e3:.0f} ms per path, one process serving SMTP + HTTP (SQLite); in each busy run one "
        f"{len(big.data) / MB:,.0f} MB reply from {START_BIG_AFTER:g} s in, {pace}: "
        f"streamed in {stream_s} s, answered {process_s} s after its final dot"
    )
    slow_rows = [
        [
            label,
            percentile(_latencies(getattr(idle, name)), 99) * 1e3,
            percentile(_latencies(getattr(slowed, name)), 99) * 1e3,
            max(_latencies(getattr(slowed, name)), default=float("nan")) * 1e3,
            f"{percentile(_latencies(getattr(slowed, name)), 99) / percentile(_latencies(getattr(idle, name)), 99):.2f}×",
        ]
        for label, name in (
            ("small replies: end of DATA → 250", "smtp"),
            ("GET /healthz (event loop only)", "healthz"),
            ("GET …/conversations (database read)", "conversations"),
        )
    ]

    def lag_cells(windows: list[tuple[float, float]]) -> list[Any]:
        values = [lag for t, lag in lags if any(start <= t <= end for start, end in windows)]
        return [len(values), percentile(values, 50) * 1e3, percentile(values, 99) * 1e3, max(values) * 1e3]

    lag_rows = [
        ["idle runs", *lag_cells(idle_windows)],
        ["big message streaming", *lag_cells([r.streaming for r in big_runs])],
        ["big message in the pipeline", *lag_cells([r.processing for r in big_runs])],
        ["slow-DNS run", *lag_cells([slow_window])],
    ]
    return "\n".join(
        [
            head,
            table(
                [
                    "load",
                    "n",
                    "idle p50 ms",
                    "idle p99 ms",
                    "busy p50 ms",
                    "busy p99 ms",
                    "p99 ÷ idle",
                    "streaming n: p99 ms",
                    "processing n: p99 ms",
                ],
                rows,
            ),
            f"answers: idle {idle.codes}, busy {busy.codes}; HTTP errors: idle {idle.http_errors}, "
            f"busy {busy.http_errors}. Target: p99 within 1.5× of idle.",
            "",
            f"Slow DNS: one more run of {count} small replies with {SLOW_SENDERS} replies from clients whose "
            f"domain's DNS answers after {SLOW_DNS:g} s each, sent together from {START_BIG_AFTER:g} s in "
            f"(answered {', '.join(slow_codes)})",
            table(["load", "idle p99 ms", "slow-DNS run p99 ms", "max ms", "p99 ÷ idle"], slow_rows),
            "",
            "The server's event-loop lag (how late a 5 ms sleep in the serving process wakes up), by phase",
            table(["phase", "samples", "p50 ms", "p99 ms", "max ms"], lag_rows),
        ]
    )


def main() -> None:
    from benchmarks.harness import exit_cleanly_on_sigterm

    exit_cleanly_on_sigterm()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one round, 80 replies, a 25 MB message")
    parser.add_argument("--mb", type=int, help="size of the big message's attachment in MB")
    parser.add_argument(
        "--rate", type=float, help="MB/s the big message is sent at (default 10; 0: no pacing)"
    )
    args = parser.parse_args()
    print(run(args.quick, args.mb, STREAM_RATE if args.rate is None else args.rate * MB))


if __name__ == "__main__":
    main()
