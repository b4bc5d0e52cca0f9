"""Shared benchmark machinery: servers and load in child processes, percentiles, tables, RSS sampling.

Every server and every load generator runs in its own process (``spawn``), so the generator never
shares the server's GIL; each child stops by itself when its parent goes away or its lifetime ends.
Traffic goes to 127.0.0.1 only and DNS answers come from the tests' static table.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import os
import platform
import secrets
import shutil
import signal
import subprocess
import tempfile
import threading
import time
import traceback
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

_MP = multiprocessing.get_context("spawn")
CHILD_LIFETIME = 900.0  # seconds: a forgotten child exits by itself
HOST = "127.0.0.1"


def exit_cleanly_on_sigterm() -> None:
    """SIGTERM (run_all's time limit) raises SystemExit, so temp dirs, children and schemas are cleaned."""

    def handler(signum: int, frame: Any) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, handler)


# ---- numbers and tables -----------------------------------------------------------------------------


def percentile(values: Sequence[float], p: float) -> float:
    """Linear interpolation between closest ranks (numpy's default); NaN for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = (len(ordered) - 1) * p / 100
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]], title: str = "") -> str:
    """A plain-text table: first column left-aligned, the others right-aligned."""
    cells = [[_fmt(c) for c in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(headers)]
    lines = [title] if title else []

    def line(values: Sequence[str]) -> str:
        parts = [values[0].ljust(widths[0])] + [
            v.rjust(w) for v, w in zip(values[1:], widths[1:], strict=True)
        ]
        return "  ".join(parts).rstrip()

    lines.append(line(list(headers)))
    lines.append("  ".join("-" * w for w in widths))
    lines.extend(line(r) for r in cells)
    return "\n".join(lines)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        if value != value:  # NaN
            return "-"
        return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.2f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


# ---- a tiny SMTP client for the load generator --------------------------------------------------


@dataclass
class Mail:
    mail_from: str
    rcpt: str
    data: bytes  # CRLF line endings, dot-stuffed, ends with CRLF (without the final ".")


def dot_stuff(data: bytes) -> bytes:
    data = data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    if not data.endswith(b"\r\n"):
        data += b"\r\n"
    if data.startswith(b"."):
        data = b"." + data
    return data.replace(b"\r\n.", b"\r\n..")


class SmtpError(Exception):
    pass


class _Conn:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, timeout: float) -> None:
        self.reader, self.writer, self.timeout = reader, writer, timeout

    @classmethod
    async def open(cls, port: int, timeout: float) -> tuple[_Conn, int]:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(HOST, port, limit=1 << 20), timeout)
        conn = cls(reader, writer, timeout)
        code = await conn.reply()
        return conn, code

    async def reply(self) -> int:
        async with asyncio.timeout(self.timeout):
            while True:
                line = await self.reader.readline()
                if not line:
                    raise SmtpError("connection closed")
                if line[3:4] != b"-":
                    return int(line[:3])

    async def command(self, line: str) -> int:
        self.writer.write(line.encode() + b"\r\n")
        return await self.reply()

    async def transaction(self, mail: Mail) -> tuple[int, float | None]:
        """One MAIL/RCPT/DATA; returns the final code and the end-of-DATA → reply latency."""
        code = await self.command(f"MAIL FROM:<{mail.mail_from}>")
        if code >= 400:
            return code, None
        code = await self.command(f"RCPT TO:<{mail.rcpt}>")
        if code >= 400:
            await self.command("RSET")
            return code, None
        code = await self.command("DATA")
        if code != 354:
            return code, None
        view = memoryview(mail.data)
        for start in range(0, len(view), 1 << 20):
            self.writer.write(view[start : start + (1 << 20)])
            await self.writer.drain()
        started = time.perf_counter()
        self.writer.write(b".\r\n")
        code = await self.reply()
        return code, time.perf_counter() - started

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.command("QUIT"), 5)
        self.writer.close()
        with contextlib.suppress(Exception):
            await self.writer.wait_closed()


@dataclass
class LoadResult:
    sent: int = 0  # transactions attempted
    elapsed: float = 0.0
    codes: dict[int, int] = field(default_factory=dict)
    latencies: list[float] = field(default_factory=list)  # end-of-DATA → reply, accepted ones
    accepted_ids: list[int] = field(default_factory=list)  # indexes of the messages answered 250
    accepted_at: dict[int, float] = field(default_factory=dict)  # index → time.monotonic() of the 250
    errors: list[str] = field(default_factory=list)
    unsent: int = 0

    @property
    def ok(self) -> int:
        return self.codes.get(250, 0)

    @property
    def rate(self) -> float:
        return self.ok / self.elapsed if self.elapsed else 0.0

    def codes_text(self) -> str:
        return " ".join(f"{c}×{n}" for c, n in sorted(self.codes.items())) or "-"


async def drive(
    port: int,
    mails: Sequence[Mail],
    *,
    concurrency: int,
    reuse: bool,
    time_limit: float,
    op_timeout: float = 60.0,
    helo: str = "mail.client.test",
    spacing: Sequence[float] | None = None,
) -> LoadResult:
    """Send *mails* with *concurrency* senders; stops at the end of the list or of *time_limit*.

    With *spacing* (seconds before each message, one sender) the load is open-loop: for latency runs.
    """
    result = LoadResult()
    queue = list(range(len(mails)))
    queue.reverse()
    deadline = time.perf_counter() + time_limit

    def record(index: int, code: int, latency: float | None) -> None:
        result.sent += 1
        result.codes[code] = result.codes.get(code, 0) + 1
        if code == 250:
            result.accepted_ids.append(index)
            result.accepted_at[index] = time.monotonic()
            if latency is not None:
                result.latencies.append(latency)

    async def one_shot(index: int) -> None:
        try:
            conn, code = await _Conn.open(port, op_timeout)
        except (OSError, TimeoutError, SmtpError) as exc:
            result.errors.append(f"connect: {type(exc).__name__}: {exc}")
            record(index, 0, None)
            return
        try:
            if code != 220:
                record(index, code, None)
                return
            if (code := await conn.command(f"EHLO {helo}")) != 250:
                record(index, code, None)
                return
            code, latency = await conn.transaction(mails[index])
            record(index, code, latency)
        except (OSError, TimeoutError, SmtpError) as exc:
            result.errors.append(f"{type(exc).__name__}: {exc}")
            record(index, 0, None)
        finally:
            await conn.close()

    async def sender() -> None:
        conn: _Conn | None = None
        try:
            while queue and time.perf_counter() < deadline:
                index = queue.pop()
                if spacing is not None:
                    await asyncio.sleep(spacing[index])
                if not reuse:
                    await one_shot(index)
                    continue
                try:
                    if conn is None:
                        conn, code = await _Conn.open(port, op_timeout)
                        if code != 220 or await conn.command(f"EHLO {helo}") != 250:
                            record(index, code, None)
                            await conn.close()
                            conn = None
                            continue
                    code, latency = await conn.transaction(mails[index])
                    record(index, code, latency)
                    if code in (421, 0):
                        await conn.close()
                        conn = None
                except (OSError, TimeoutError, SmtpError) as exc:
                    result.errors.append(f"{type(exc).__name__}: {exc}")
                    record(index, 0, None)
                    if conn is not None:
                        await conn.close()
                    conn = None
        finally:
            if conn is not None:
                await conn.close()

    started = time.perf_counter()
    await asyncio.gather(*(sender() for _ in range(concurrency)))
    result.elapsed = time.perf_counter() - started
    result.unsent = len(queue)
    return result


def _loadgen_child(conn: Connection, port: int, mails: list[Mail], options: dict[str, Any]) -> None:
    limit = options.get("time_limit", 300) + 60
    threading.Thread(target=_die_with_parent, args=(limit,), daemon=True).start()
    try:
        conn.send(("done", asyncio.run(drive(port, mails, **options))))
    except BaseException:
        conn.send(("error", traceback.format_exc()))


def run_load(port: int, mails: list[Mail], **options: Any) -> LoadResult:
    """The load generator in its own process; see :func:`drive` for the options."""
    parent, child = _MP.Pipe()
    proc = _MP.Process(target=_loadgen_child, args=(child, port, mails, options), daemon=True)
    proc.start()
    child.close()
    try:
        limit = options.get("time_limit", 300) + 60
        if not parent.poll(limit):
            raise RuntimeError(f"load generator gave no result within {limit:.0f} s")
        kind, payload = parent.recv()
        if kind == "error":
            raise RuntimeError(f"load generator failed:\n{payload}")
        return payload  # type: ignore[no-any-return]
    finally:
        _stop_process(proc)
        parent.close()


# ---- servers in child processes ---------------------------------------------------------------------


def _watch_parent(conn: Connection, stop: asyncio.Event, lifetime: float) -> None:
    """Set *stop* when the parent says so, closes the pipe (it died) or the lifetime ends."""
    loop = asyncio.get_running_loop()

    def wait() -> None:
        with contextlib.suppress(Exception):
            conn.poll(lifetime)
        loop.call_soon_threadsafe(stop.set)

    threading.Thread(target=wait, daemon=True).start()


def _die_with_parent(lifetime: float) -> None:
    parent = os.getppid()
    end = time.monotonic() + lifetime
    while time.monotonic() < end:
        if os.getppid() != parent:
            os._exit(3)
        time.sleep(0.5)
    os._exit(3)


class _BareHandler:
    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        return "250 OK"


def _bare_child(conn: Connection, data_size_limit: int) -> None:
    from aiosmtpd.smtp import SMTP

    async def main() -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(
            lambda: SMTP(
                _BareHandler(),
                hostname="baseline.localhost",
                data_size_limit=data_size_limit,
                enable_SMTPUTF8=True,
                decode_data=False,
            ),
            host=HOST,
            port=0,
        )
        stop = asyncio.Event()
        _watch_parent(conn, stop, CHILD_LIFETIME)
        conn.send(("ready", server.sockets[0].getsockname()[1], os.getpid()))
        await stop.wait()
        server.close()

    _child_main(conn, main)


def _stub(layers: str) -> None:
    """Diagnostics only: replace the pipeline ("pipeline") or the pipeline and the RCPT decision
    ("rcpt+pipeline") with answers that cost nothing, to see what the layers around them cost."""
    from mailbridge import replies
    from mailbridge.domain.models import InboundState
    from mailbridge.inbound import pipeline
    from mailbridge.inbound.envelope import RecipientDecision, Target
    from mailbridge.ingress import smtp

    class Accept:
        """Stands in for pipeline.Run at the SMTP door: one phase, the file dropped, 250."""

        pool = "cpu"

        def __init__(self, deps: Any, envelope: Any, raw_path: Path, size: int) -> None:
            self.raw_path = raw_path

        def advance(self) -> Any:
            Path(self.raw_path).unlink(missing_ok=True)
            return pipeline.Outcome(replies.OK, InboundState.posted, "stub")

    pipeline.Run = Accept  # type: ignore[assignment, misc]
    if layers == "rcpt+pipeline":

        def decider(services: Any) -> Any:
            def decide(address: str) -> RecipientDecision:
                target = Target("reply", 1, address, token_id=1, user_id=1, conversation_id="stub")
                return RecipientDecision(replies.OK_RECIPIENT, target, "stub", 1 << 30)

            return decide

        smtp.make_decider = decider  # type: ignore[assignment]


def _mailbridge_child(
    conn: Connection, root: str, database_url: str, overrides: dict[str, Any], stub: str | None = None
) -> None:
    async def main() -> None:
        import logging

        logging.basicConfig(level=logging.WARNING)
        from mailbridge.runtime import start_ingress
        from tests.conftest import make_services

        if stub:
            _stub(stub)

        services = make_services(Path(root), database_url, **overrides)
        processes = services.settings.effective_smtp_processes
        server = await start_ingress(services, reuse_port=processes > 1)
        cluster = None
        if processes > 1:
            from mailbridge.ingress.cluster import start_cluster

            cluster = await start_cluster(services, server.sockets[0].getsockname()[1], processes - 1)
        stop = asyncio.Event()
        tasks = []
        if services.settings.worker_enabled:
            from mailbridge.outbound.worker import start_worker

            tasks.append(start_worker(services, stop))
        _watch_parent(conn, stop, CHILD_LIFETIME)
        port = server.sockets[0].getsockname()[1]
        conn.send(("ready", port, os.getpid()))
        await stop.wait()
        server.close()
        if cluster is not None:
            await cluster.stop()
        await asyncio.gather(*tasks, return_exceptions=True)
        services.close()

    _child_main(conn, main)


def _child_main(conn: Connection, main: Any) -> None:
    try:
        asyncio.run(main())
    except BaseException:
        with contextlib.suppress(Exception):
            conn.send(("error", traceback.format_exc()))


@dataclass
class Child:
    process: Any
    conn: Connection
    port: int
    pid: int


def _stop_process(proc: Any, grace: float = 10.0) -> None:
    if proc.is_alive():
        proc.join(grace)
    if proc.is_alive():
        proc.terminate()
        proc.join(5)
    if proc.is_alive():
        proc.kill()
        proc.join(5)


@contextlib.contextmanager
def _child(target: Any, *args: Any, start_timeout: float = 60.0) -> Iterator[Child]:
    parent, child = _MP.Pipe()
    # Not daemonic: a mailbridge server with smtp_processes > 1 starts children of its own.
    proc = _MP.Process(target=target, args=(child, *args), daemon=False)
    proc.start()
    child.close()
    try:
        if not parent.poll(start_timeout):
            raise RuntimeError(f"{target.__name__} did not start within {start_timeout:.0f} s")
        message = parent.recv()
        if message[0] != "ready":
            raise RuntimeError(f"{target.__name__} failed to start:\n{message[1]}")
        yield Child(proc, parent, message[1], message[2])
    finally:
        with contextlib.suppress(OSError):
            parent.send("stop")
        _stop_process(proc)
        if parent.poll(0):
            with contextlib.suppress(EOFError, OSError):
                message = parent.recv()
                if message[0] == "error":
                    print(f"[child error] {message[1]}")
        parent.close()


def bare_server(data_size_limit: int = 64 * 1024 * 1024) -> contextlib.AbstractContextManager[Child]:
    """A bare aiosmtpd server whose handler only answers 250, in its own process: the baseline."""
    return _child(_bare_child, data_size_limit)


def mailbridge_server(
    root: Path, database_url: str, stub: str | None = None, **overrides: Any
) -> contextlib.AbstractContextManager[Child]:
    """mailbridge's ingress (``start_ingress``), optionally with the delivery worker, in its own process.

    Services are built like ``tests.conftest.make_services`` under *root* (the same data dir, hence
    the same token secret, as the parent that seeded it). *stub* (see ``_stub``) is for the ingress
    benchmark's breakdown rows only.
    """
    settings = {"smtp_listen": f"{HOST}:0", "worker_enabled": False, "log_level": "WARNING", **overrides}
    return _child(_mailbridge_child, str(root), database_url, settings, stub)


# ---- databases ----------------------------------------------------------------------------------------


@dataclass
class Backend:
    name: str  # "SQLite" | "PostgreSQL"
    url: str
    root: Path


@contextlib.contextmanager
def backend(kind: str, prefix: str = "mbbench") -> Iterator[Backend]:
    """A fresh data dir and database: SQLite in the temp dir, or a throwaway PostgreSQL schema."""
    root = Path(tempfile.mkdtemp(prefix=f"{prefix}-"))
    schema = ""
    admin: Any = None
    try:
        if kind == "sqlite":
            yield Backend("SQLite", f"sqlite:///{root / 'mailbridge.db'}", root)
            return
        from sqlalchemy import create_engine, text

        from tests.conftest import PG_URL, pg_url_for

        schema = f"{prefix}_{secrets.token_hex(4)}"
        admin = create_engine(PG_URL, connect_args={"connect_timeout": 5})
        with admin.begin() as conn:
            conn.execute(text(f"CREATE SCHEMA {schema}"))
        yield Backend("PostgreSQL", pg_url_for(schema), root)
    finally:
        if admin is not None:
            from sqlalchemy import text

            with admin.begin() as conn:
                conn.execute(text(f"DROP SCHEMA IF EXISTS {schema} CASCADE"))
            admin.dispose()
        shutil.rmtree(root, ignore_errors=True)


def postgres_available() -> str | None:
    """None when PostgreSQL answers, else the reason it does not."""
    from tests.conftest import pg_unavailable

    return pg_unavailable()


# ---- Postfix smtp-sink --------------------------------------------------------------------------------


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def smtp_sink() -> Iterator[int]:
    """Postfix's ``smtp-sink`` on a free loopback port (as root it must drop to ``nobody``)."""
    exe = shutil.which("smtp-sink") or "/usr/sbin/smtp-sink"
    if not os.path.exists(exe):
        raise RuntimeError("smtp-sink not found: install postfix (see /work/shared/RECIPES.md)")
    port = free_port()
    args = [exe, "-4"]
    if os.geteuid() == 0:
        args += ["-u", "nobody"]
    args += [f"{HOST}:{port}", "256"]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_port(port)
        yield port
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def wait_port(port: int, timeout: float = 10.0) -> None:
    import socket

    end = time.monotonic() + timeout
    while time.monotonic() < end:
        with contextlib.suppress(OSError), socket.create_connection((HOST, port), 0.5):
            return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {HOST}:{port} after {timeout:.0f} s")


# ---- memory -------------------------------------------------------------------------------------------


def proc_status_kb(pid: int, key: str) -> int:
    with open(f"/proc/{pid}/status") as handle:
        for line in handle:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise KeyError(key)


class RssSampler:
    """Samples VmRSS of *pid* every *interval* seconds in a thread; ``peak`` in bytes."""

    def __init__(self, pid: int, interval: float = 0.01) -> None:
        self.pid, self.interval = pid, interval
        self.peak = 0
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(OSError, KeyError, ValueError):
                self.peak = max(self.peak, proc_status_kb(self.pid, "VmRSS") * 1024)
                self.samples += 1
            self._stop.wait(self.interval)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)


# ---- the machine --------------------------------------------------------------------------------------


def machine() -> dict[str, str]:
    info: dict[str, str] = {"cores": str(os.cpu_count() or "?")}
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
    with contextlib.suppress(OSError, KeyError, ValueError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                info["ram"] = f"{int(line.split()[1]) / 1024 / 1024:.1f} GiB"
    info["os"] = _os_name()
    info["python"] = platform.python_version()
    import sqlite3

    info["sqlite"] = sqlite3.sqlite_version
    info["postgresql"] = _pg_version()
    return info


def _os_name() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/etc/os-release").read_text().splitlines():
            if line.startswith("PRETTY_NAME="):
                return line.split("=", 1)[1].strip('"')
    return platform.platform()


def _pg_version() -> str:
    if postgres_available() is not None:
        return "not reachable"
    from sqlalchemy import create_engine, text

    from tests.conftest import PG_URL

    engine = create_engine(PG_URL)
    try:
        with engine.connect() as conn:
            return str(conn.execute(text("SHOW server_version")).scalar()).split()[0]
    finally:
        engine.dispose()


# ---- a seeded practice and realistic replies ---------------------------------------------------------

_WORDS = [
    "invoice",
    "quarter",
    "return",
    "figures",
    "receipts",
    "payroll",
    "pension",
    "account",
    "statement",
    "deadline",
    "bakery",
    "supplier",
    "ledger",
    "balance",
    "review",
    "meeting",
    "tuesday",
    "morning",
    "thanks",
    "attached",
    "signed",
    "copy",
    "bank",
    "transfer",
    "expenses",
    "mileage",
    "summary",
    "totals",
    "draft",
    "final",
    "question",
    "answer",
    "before",
    "friday",
]
CLIENTS = {"alice": ("Alice Martin", "alice@client.test"), "bob": ("Bob Durand", "bob@client.test")}


@dataclass
class Thread:
    conversation_id: str
    user: str  # the client who replies
    reply_to: str  # reply+token@reply.acme.test


def seed_practice(
    b: Backend, conversations: int, participants: tuple[str, ...] = ("alice", "bob")
) -> list[Thread]:
    """The tests' practice (tests.conftest.seed) and *conversations* company conversations in it.

    Company conversations, so a reply from a participant whose From matches passes without
    quarantine; one reply token per (conversation, client), so the load spreads over many tokens.
    """
    from tests.conftest import make_services, seed
    from tests.mailhelpers import open_conversation, reply_address

    services = make_services(b.root, b.url)
    try:
        seed(services)
        threads: list[Thread] = []
        for i in range(conversations):
            conv = open_conversation(
                services,
                kind="company",
                company="bakery",
                participants=participants,
                subject=f"Quarterly VAT return {i}",
                body="Your VAT return for the quarter is ready for review. Could you confirm the figures?",
            )
            threads.extend(Thread(conv, u, reply_address(services, conv, u)) for u in participants)
        return threads
    finally:
        services.close()


def _paragraph(rng: Any, words: int) -> str:
    text = " ".join(rng.choice(_WORDS) for _ in range(words)).capitalize() + "."
    return _wrap(text, 72)


def _wrap(text: str, width: int) -> str:
    import textwrap

    return "\n".join(textwrap.wrap(text, width))


def reply_mail(index: int, thread: Thread, rng: Any, *, marker: str = "", target_size: int = 5000) -> Mail:
    """A Gmail-like reply (multipart/alternative, quoted history in both parts), about 5 KB."""
    import html

    name, address = CLIENTS[thread.user]
    visible = "\n\n".join(_paragraph(rng, rng.randint(12, 30)) for _ in range(rng.randint(1, 3)))
    if marker:
        visible += f"\n\nReference {marker}"
    visible += f"\n\nThanks,\n{name.split()[0]}"
    history: list[str] = []
    while sum(len(h) for h in history) < target_size * 0.27:
        history.append(_paragraph(rng, rng.randint(25, 60)))
    older = "\n".join("> " + line for line in _paragraph(rng, 40).splitlines())
    attribution = "On Tue, 3 Mar 2026 at 09:15, Dr Alex Smith via Acme Counselling <notify@acme.test> wrote:"
    quoted = "\n".join("> " + line if line else ">" for line in "\n\n".join(history).splitlines())
    text = f"{visible}\n\n{attribution}\n{quoted}\n>\n> {older.replace(chr(10), chr(10) + '> ')}\n"
    html_body = (
        '<div dir="ltr">'
        + "".join(f"<div>{html.escape(p)}</div><br>" for p in visible.split("\n\n"))
        + '</div><br><div class="gmail_quote"><div dir="ltr" class="gmail_attr">'
        + html.escape(attribution)
        + '<br></div><blockquote class="gmail_quote" style="margin:0px 0px 0px 0.8ex;'
        + 'border-left:1px solid rgb(204,204,204);padding-left:1ex">'
        + "".join(f"<p>{html.escape(h)}</p>\n" for h in history)
        + "</blockquote></div>\n"
    )
    boundary = f"000000000000{index:08x}{rng.randrange(1 << 32):08x}"
    msgid = f"<CAbench{index}.{rng.randrange(1 << 48):012x}@mail.client.test>"
    head = (
        "MIME-Version: 1.0\n"
        "Date: Tue, 3 Mar 2026 10:02:17 +0000\n"
        f"Message-ID: {msgid}\n"
        f"In-Reply-To: <n.bench.{thread.conversation_id}@acme.test>\n"
        f"References: <n.bench.{thread.conversation_id}@acme.test>\n"
        f"Subject: Re: Quarterly VAT return\n"
        f"From: {name} <{address}>\n"
        f"To: {thread.reply_to}\n"
        f'Content-Type: multipart/alternative; boundary="{boundary}"\n\n'
    )
    part = 'Content-Type: text/{}; charset="UTF-8"\nContent-Transfer-Encoding: 7bit\n\n'
    body = (
        f"--{boundary}\n{part.format('plain')}{text}\n"
        f"--{boundary}\n{part.format('html')}{_wrap_html(html_body)}\n"
        f"--{boundary}--\n"
    )
    return Mail(address, thread.reply_to, dot_stuff((head + body).encode()))


def _wrap_html(markup: str) -> str:
    # keep every line well under RFC 5322's 998 octets, as real clients do
    return "\n".join(_wrap(line, 76) if len(line) > 900 else line for line in markup.splitlines())


def replies(threads: Sequence[Thread], count: int, *, seed: int, start: int = 0) -> list[Mail]:
    import random

    rng = random.Random(seed)
    return [reply_mail(start + i, threads[(start + i) % len(threads)], rng) for i in range(count)]


def count_posted(b: Backend) -> tuple[int, int]:
    """(messages posted by email, inbound rows in state posted) in the backend's database."""
    from sqlalchemy import func, select

    from mailbridge.domain.db import make_engine
    from mailbridge.domain.models import InboundLog, InboundState, Message, MessageSource

    engine = make_engine(b.url)
    try:
        with engine.connect() as conn:
            posted = conn.scalar(
                select(func.count()).select_from(Message).where(Message.source == MessageSource.email)
            )
            logged = conn.scalar(
                select(func.count()).select_from(InboundLog).where(InboundLog.state == InboundState.posted)
            )
            return int(posted or 0), int(logged or 0)
    finally:
        engine.dispose()


# ---- an S3-compatible server --------------------------------------------------------------------------


@contextlib.contextmanager
def s3_storage() -> Iterator[dict[str, str]]:
    """moto's S3 server on loopback (the tests' S3 peer) in this process, with a fresh bucket; yields
    the settings that point mailbridge at it. The AWS credentials are dummies in the environment,
    which the mailbridge child process inherits. An in-memory server on the same two cores: the
    figures show the cost of the S3 protocol path (HTTP, multipart), not of a real network."""
    import logging

    from moto.server import ThreadedMotoServer

    from tests.s3peer import CREDENTIALS

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one line per request otherwise
    saved = {name: os.environ.get(name) for name in CREDENTIALS}
    os.environ.update(CREDENTIALS)
    server = ThreadedMotoServer(ip_address=HOST, port=0, verbose=False)
    server.start()
    try:
        import boto3

        host, port = server.get_host_and_port()
        endpoint = f"http://{host}:{port}"
        bucket = f"mbbench-{secrets.token_hex(4)}"
        boto3.session.Session().client("s3", endpoint_url=endpoint).create_bucket(Bucket=bucket)
        yield {"storage_url": f"s3://{bucket}/bench", "s3_endpoint_url": endpoint}
    finally:
        server.stop()
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


# Where raw mail and attachments go, and whether they are encrypted: the variants the storage
# benchmarks compare in one run (the first is the default).
STORAGE_VARIANTS: tuple[tuple[str, bool, bool], ...] = (
    ("local disk, encrypted (default)", False, True),
    ("local disk, not encrypted", False, False),
    ("S3 (moto), encrypted", True, True),
    ("S3 (moto), not encrypted", True, False),
)


@contextlib.contextmanager
def storage_settings(s3: bool, encrypted: bool) -> Iterator[dict[str, Any]]:
    if not s3:
        yield {"encryption_at_rest": encrypted}
        return
    with s3_storage() as overrides:
        yield {**overrides, "encryption_at_rest": encrypted}
