"""Faults while mail flows: the process killed mid-burst, the database or the disk gone, the smarthost down.

What every test here proves is the README's promise: 250 only after the commit, ``451 4.3.0`` when
the database or the disk fails (nothing half-written), and the same reply delivered again after a
fault posted once. Outbound, a notification waits out a dead smarthost and is then delivered once.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import date, timedelta
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import dns.exception
import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype
import dns.rrset
import pytest
from aiosmtpd.smtp import SMTP
from sqlalchemy import func, select, update
from sqlalchemy.engine import make_url

from mailbridge import replies
from mailbridge.domain.models import (
    Attachment,
    InboundLog,
    InboundState,
    Message,
    MessageSource,
    Outbox,
    OutboxKind,
    OutboxState,
    utcnow,
)
from mailbridge.inbound.dns import Resolver
from tests import filemakers
from tests.conftest import API_KEY, PG_URL, _truncate_pg, make_services, pg_url_for, seed, static_resolver
from tests.faultproxy import FaultProxy
from tests.mailhelpers import live_server, open_conversation, reply_address, reply_message, send
from tests.sink import Sink
from tests.test_outbound import drain, parse, worker_for

ROOT = Path(__file__).resolve().parent.parent
FINAL_STATES = frozenset(InboundState) - {InboundState.received, InboundState.deferred}


def tempfail() -> tuple[int, bytes]:
    return replies.TEMPFAIL.code, f"{replies.TEMPFAIL.enhanced} {replies.TEMPFAIL.text}".encode()


def free_port() -> int:
    """A port nothing listens on right now (the kernel picks it; we close it again at once)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until(predicate: Any, timeout: float, what: str, interval: float = 0.02) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


class Remote:
    """Quacks like tests.mailhelpers.LiveServer for ``send``: a mailbridge reachable on a port."""

    def __init__(self, port: int) -> None:
        self.port = port

    def client(self) -> Any:
        import smtplib

        client = smtplib.SMTP("127.0.0.1", self.port, timeout=30)
        # smtplib leaves Nagle on: every DATA then waits ~40 ms for a delayed ACK; an MTA would not.
        client.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return client


# ---- a loopback DNS server for the subprocess (its resolver cannot be injected otherwise) ---------


class LoopbackDns:
    """UDP DNS on 127.0.0.1:<free port>: TXT for the names given, NODATA for their other types,
    NXDOMAIN for everything else. Stops when the test ends or after ``lifetime`` seconds."""

    def __init__(self, txt: dict[str, str], lifetime: float = 170.0) -> None:
        self.txt = {name.lower(): value for name, value in txt.items()}
        self.lifetime = lifetime
        self.queries = 0
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.1)
        self.port = int(self.sock.getsockname()[1])
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True, name="loopback-dns")

    def __enter__(self) -> LoopbackDns:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(2)
        self.sock.close()

    def _serve(self) -> None:
        ends = time.monotonic() + self.lifetime
        while not self.stop.is_set() and time.monotonic() < ends:
            try:
                data, peer = self.sock.recvfrom(4096)
                query = dns.message.from_wire(data)
            except (TimeoutError, dns.exception.DNSException):
                continue
            except OSError:
                return
            self.queries += 1
            response = dns.message.make_response(query)
            question = query.question[0]
            name = question.name.to_text(omit_final_dot=True).lower()
            if name not in self.txt:
                response.set_rcode(dns.rcode.NXDOMAIN)
            elif question.rdtype == dns.rdatatype.TXT:
                response.answer.append(
                    dns.rrset.from_text(question.name, 60, "IN", "TXT", f'"{self.txt[name]}"')
                )
            response.flags |= dns.flags.AA
            with contextlib.suppress(OSError):
                self.sock.sendto(response.to_wire(), peer)


# ---- `mailbridge serve` as a real process ---------------------------------------------------------


@dataclass
class ServeProcess:
    data_dir: Path
    database_url: str
    dns_port: int
    smtp_port: int = field(default_factory=free_port)
    http_port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None
    starts: int = 0
    extra_env: dict[str, str] = field(default_factory=dict)
    worker: bool = False

    def command(self) -> list[str]:
        script = Path(sys.executable).parent / "mailbridge"
        base = [str(script)] if script.exists() else [sys.executable, "-m", "mailbridge.cli"]
        return [*base, "serve", *([] if self.worker else ["--no-worker"])]

    def start(self) -> None:
        keep = ("MAILBRIDGE_TOKEN_SECRET",)  # make_services (this process) reads it too
        env = {k: v for k, v in os.environ.items() if not k.startswith("MAILBRIDGE_") or k in keep}
        env.update(
            MAILBRIDGE_DATA_DIR=str(self.data_dir),
            MAILBRIDGE_DATABASE_URL=self.database_url,
            MAILBRIDGE_SMTP_LISTEN=f"127.0.0.1:{self.smtp_port}",
            MAILBRIDGE_HTTP_LISTEN=f"127.0.0.1:{self.http_port}",
            MAILBRIDGE_API_KEY=API_KEY,
            MAILBRIDGE_DNS_NAMESERVERS=json.dumps([f"127.0.0.1:{self.dns_port}"]),
            MAILBRIDGE_DNS_TIMEOUT_SECONDS="3",
            MAILBRIDGE_LOG_LEVEL="WARNING",
        )
        env.update(self.extra_env)
        self.starts += 1
        log = open(self.data_dir.parent / f"serve-{self.starts}.log", "wb")  # noqa: SIM115 (closed by the child)
        self.proc = subprocess.Popen(
            self.command(), env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        log.close()
        wait_until(self._greets, 40, "the SMTP greeting of `mailbridge serve`", interval=0.1)

    def _greets(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"mailbridge serve exited with {self.proc.returncode}: {self.log_tail()}")
        try:
            with socket.create_connection(("127.0.0.1", self.smtp_port), timeout=1) as sock:
                return sock.recv(64).startswith(b"220")
        except OSError:
            return False

    def log_tail(self) -> str:
        path = self.data_dir.parent / f"serve-{self.starts}.log"
        return path.read_text(errors="replace")[-2000:] if path.exists() else ""

    def kill9(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGKILL)  # only the process this test started
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.kill9()


# ---- the burst --------------------------------------------------------------------------------------


@dataclass
class Burst:
    """Replies sent by several client threads; the answer (or the failure) each one got."""

    server: Remote
    messages: dict[int, EmailMessage]
    address: str
    threads: int = 5
    stop_after: int | None = None  # set `reached` once this many were acknowledged
    acked: set[int] = field(default_factory=set)
    answers: dict[int, tuple[int, bytes]] = field(default_factory=dict)
    unknown: set[int] = field(default_factory=set)  # connection broke: committed or not, nobody knows
    reached: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def run(self, numbers: list[int], timeout: float = 90) -> None:
        queue = list(reversed(numbers))
        workers = [
            threading.Thread(target=self._client, args=(queue,), daemon=True) for _ in range(self.threads)
        ]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join(timeout)
            assert not worker.is_alive(), "a burst client hung"

    def _client(self, queue: list[int]) -> None:
        while True:
            with self.lock:
                if not queue:
                    return
                number = queue.pop()
            try:
                answer = send(self.server, self.messages[number], "alice@client.test", self.address)  # type: ignore[arg-type]
            except (OSError, EOFError) as exc:  # smtplib's errors are OSErrors; the server died
                del exc
                with self.lock:
                    self.unknown.add(number)
                return
            with self.lock:
                self.answers[number] = answer
                if answer[0] == 250:
                    self.acked.add(number)
                    if self.stop_after is not None and len(self.acked) >= self.stop_after:
                        self.reached.set()


def burst_body(number: int) -> str:
    return f"Burst reply {number:03d}: Tuesday at ten works for me, thank you."


def burst_messages(address: str, count: int) -> dict[int, EmailMessage]:
    png = filemakers.png()
    messages = {}
    for number in range(count):
        msg = reply_message(
            "Alice Martin <alice@client.test>",
            address,
            burst_body(number),
            msgid=f"<burst-{number:03d}@client.test>",
        )
        if number % 25 == 0:
            msg.add_attachment(png, maintype="image", subtype="png", filename=f"scan-{number}.png")
        messages[number] = msg
    return messages


def posted_numbers(services: Any, conversation_id: str) -> list[int]:
    """The burst number of every email message in the conversation (a repeat shows up twice)."""
    with services.sessions() as session:
        bodies = session.scalars(
            select(Message.body).where(
                Message.conversation_id == conversation_id, Message.source == MessageSource.email
            )
        ).all()
    numbers = []
    for body in bodies:
        assert body.startswith("Burst reply "), body
        numbers.append(int(body[len("Burst reply ") :][:3]))
    return numbers


def assert_nothing_half_written(services: Any, conversation_id: str) -> None:
    """Every log row final, or received/deferred without a message; every post complete with its
    notification and attachments; every attachment's blob on disk with the recorded hash and size."""
    with services.sessions() as session:
        rows = session.scalars(select(InboundLog)).all()
        messages = {
            m.id: m
            for m in session.scalars(
                select(Message).where(
                    Message.conversation_id == conversation_id, Message.source == MessageSource.email
                )
            ).unique()
        }
        for row in rows:
            if row.state in (InboundState.received, InboundState.deferred):
                assert row.posted_message_id is None, row.id
            else:
                assert row.state in FINAL_STATES and row.smtp_reply, (row.id, row.state)
            if row.state == InboundState.posted:
                assert row.posted_message_id in messages, row.id
        posted_rows = [r.posted_message_id for r in rows if r.state == InboundState.posted]
        assert sorted(posted_rows) == sorted(messages), "a message without its posted log row (or two)"
        outbox = session.execute(
            select(Outbox.message_id, func.count())
            .where(Outbox.kind == OutboxKind.notification, Outbox.message_id.in_(list(messages)))
            .group_by(Outbox.message_id)
        ).all()
        assert dict(outbox) == dict.fromkeys(messages, 1), "every reply notifies dr-smith exactly once"
        for message in messages.values():
            number = int(message.body[len("Burst reply ") :][:3])
            files = session.scalars(select(Attachment).where(Attachment.message_id == message.id)).all()
            assert len(files) == (1 if number % 25 == 0 else 0), number
            for file in files:
                with services.blobs.open(file.storage_key or file.sha256) as handle:
                    content = handle.read()
                assert (hashlib.sha256(content).hexdigest(), len(content)) == (file.sha256, file.size)


@pytest.mark.slow
def test_kill_9_mid_burst_keeps_every_acknowledged_reply_and_retries_post_once(tmp_path: Path) -> None:
    """HOSTILE P12 and the 250-after-commit promise, with a real process and a real SIGKILL."""
    database_url = f"sqlite:///{tmp_path / 'mailbridge.db'}"
    services = make_services(tmp_path, database_url)  # the same data dir (token secret) and database
    seed(services)
    conversation = open_conversation(services)
    address = reply_address(services, conversation, "alice")
    messages = burst_messages(address, 500)
    with LoopbackDns({"client.test": "v=spf1 ip4:127.0.0.1 -all"}) as dns_server:
        serve = ServeProcess(tmp_path / "var", database_url, dns_server.port)
        try:
            serve.start()
            burst = Burst(Remote(serve.smtp_port), messages, address, stop_after=150)
            runner = threading.Thread(target=burst.run, args=(list(messages),), daemon=True)
            runner.start()
            assert burst.reached.wait(90), f"150 replies never acknowledged: {serve.log_tail()}"
            serve.kill9()
            runner.join(60)
            assert not runner.is_alive()
        finally:
            serve.stop()
        acked, unknown = set(burst.acked), set(burst.unknown)
        assert 150 <= len(acked) < 500, len(acked)
        assert all(code == 250 for code, _ in burst.answers.values()), burst.answers
        assert unknown, "the kill should have broken at least one transaction in flight"

        # The database as the killed process left it.
        services.engine.dispose()
        before = posted_numbers(services, conversation)
        assert len(before) == len(set(before)), "a reply posted twice before any retry"
        assert acked <= set(before), f"acknowledged but lost: {sorted(acked - set(before))}"
        committed_unacked = set(before) - acked
        assert committed_unacked <= unknown, "posted although never sent"
        assert_nothing_half_written(services, conversation)

        # Restart; the clients re-send everything that was not acknowledged, and a sample of what
        # was (a 250 lost on the way back looks the same to the client as one never sent).
        lost_250 = sorted(acked)[::10]
        serve.smtp_port = free_port()
        try:
            serve.start()
            retry = Burst(Remote(serve.smtp_port), messages, address)
            retry.run(sorted(set(messages) - acked) + lost_250)
        finally:
            serve.stop()
        assert retry.unknown == set()
        assert {code for code, _ in retry.answers.values()} == {250}
    services.engine.dispose()
    after = posted_numbers(services, conversation)
    assert sorted(after) == list(range(500)), "each reply exactly once"
    assert_nothing_half_written(services, conversation)
    with services.sessions() as session:
        duplicates = session.scalar(select(func.count()).where(InboundLog.state == InboundState.duplicate))
    assert duplicates == len(committed_unacked) + len(lost_250)  # committed, re-sent: suppressed
    print(
        f"kill -9 burst: {len(acked)} acknowledged before the kill, {len(unknown)} in flight, "
        f"{len(committed_unacked)} committed with the 250 lost; {dns_server.queries} DNS queries"
    )
    services.close()


# ---- database and disk faults ------------------------------------------------------------------


class TrippingResolver:
    """The injected resolver, with a trap: armed, the first look-up runs ``on_trip`` (mid-pipeline)."""

    def __init__(self, inner: Resolver, on_trip: Any) -> None:
        self.inner = inner
        self.on_trip = on_trip
        self.armed = False

    def _maybe_trip(self) -> None:
        if self.armed:
            self.armed = False
            self.on_trip()

    def txt(self, name: str) -> list[bytes]:
        self._maybe_trip()
        return self.inner.txt(name)

    def a(self, name: str) -> list[str]:
        self._maybe_trip()
        return self.inner.a(name)

    def aaaa(self, name: str) -> list[str]:
        self._maybe_trip()
        return self.inner.aaaa(name)

    def mx(self, name: str) -> list[str]:
        self._maybe_trip()
        return self.inner.mx(name)


def open_transaction(port: int, address: str) -> tuple[socket.socket, Any]:
    """EHLO, MAIL and RCPT done (RCPT needs the database), DATA not yet sent."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=20)
    reader = sock.makefile("rb")
    assert reader.readline().startswith(b"220")
    for line in (b"EHLO client.test", b"MAIL FROM:<alice@client.test>", f"RCPT TO:<{address}>".encode()):
        sock.sendall(line + b"\r\n")
        answer = reader.readline()
        while answer[3:4] == b"-":
            answer = reader.readline()
        assert answer.startswith(b"250"), (line, answer)
    return sock, reader


def finish_data(sock: socket.socket, reader: Any, msg: EmailMessage) -> bytes:
    from email.policy import SMTP as SMTP_POLICY

    sock.sendall(b"DATA\r\n")
    assert reader.readline().startswith(b"354")
    data = msg.as_bytes(policy=SMTP_POLICY).replace(b"\r\n.", b"\r\n..")
    sock.sendall(data + b".\r\n")
    answer: bytes = reader.readline().rstrip(b"\r\n")
    sock.sendall(b"QUIT\r\n")
    reader.close()
    sock.close()
    return answer


def bodies(services: Any, conversation_id: str) -> list[str]:
    with services.sessions() as session:
        return list(
            session.scalars(
                select(Message.body).where(
                    Message.conversation_id == conversation_id, Message.source == MessageSource.email
                )
            ).all()
        )


def leftover_files(services: Any) -> list[Path]:
    data = services.settings.data_dir
    return [
        p for d in ("spool", "inbound") if (data / d).exists() for p in (data / d).rglob("*") if p.is_file()
    ]


@pytest.mark.postgres
def test_postgres_stopped_answers_451_stores_nothing_and_retries_post_once(
    tmp_path: Path, pg_schema: str
) -> None:
    """HOSTILE P9 on PostgreSQL: the database cut at RCPT, at DATA and in the middle of the pipeline."""
    _truncate_pg(pg_schema)
    upstream = make_url(PG_URL)
    with FaultProxy(upstream.host or "127.0.0.1", upstream.port or 5432) as proxy:
        url = make_url(pg_url_for(pg_schema)).set(host="127.0.0.1", port=proxy.port)
        services = make_services(tmp_path, url.render_as_string(hide_password=False))
        seed(services)
        conversation = open_conversation(services)
        address = reply_address(services, conversation, "alice")
        resolver = TrippingResolver(static_resolver(), proxy.cut)
        services.resolver = resolver
        msgs = [
            reply_message("alice@client.test", address, f"Reply {n} written while the database was down.")
            for n in range(5)
        ]
        with live_server(services) as server:
            # At RCPT: the token look-up needs the database, so the answer is already 451 4.3.0.
            proxy.cut()
            with server.client() as client:
                client.ehlo("client.test")
                client.mail("alice@client.test")
                assert client.rcpt(address) == tempfail()
            proxy.restore()

            # At DATA: recipients accepted, then the database goes away before the data ends.
            opened = [open_transaction(server.port, address) for _ in msgs[:4]]
            proxy.cut()
            answers = [
                finish_data(sock, reader, msg) for (sock, reader), msg in zip(opened, msgs, strict=False)
            ]
            assert answers == [b"451 4.3.0 Temporary failure, please try again later"] * 4
            assert leftover_files(services) == []  # the spooled bytes are not kept either
            proxy.restore()
            with services.sessions() as session:  # the inbound row is the first write: it failed
                assert session.scalar(select(func.count()).select_from(InboundLog)) == 0
            assert bodies(services, conversation) == []

            # Mid-pipeline: the inbound row is written, then the database dies during authentication.
            resolver.armed = True
            assert send(server, msgs[4], "alice@client.test", address) == tempfail()
            assert proxy.is_cut and not resolver.armed
            proxy.restore()
            with services.sessions() as session:
                (row,) = session.scalars(select(InboundLog)).all()
            assert (row.state, row.posted_message_id) == (InboundState.received, None)
            assert bodies(services, conversation) == []

            # The database is back: every retry is posted, a second retry changes nothing.
            for _ in range(2):
                for msg in msgs:
                    assert send(server, msg, "alice@client.test", address)[0] == 250
        assert sorted(bodies(services, conversation)) == sorted(msg.get_content().strip() for msg in msgs)
        with services.sessions() as session:
            states = session.scalars(select(InboundLog.state)).all()
        assert sorted(states) == sorted(
            [InboundState.received] + [InboundState.posted] * 5 + [InboundState.duplicate] * 5
        )
        services.close()


def _chattr(flag: str, paths: list[Path]) -> None:
    subprocess.run(["chattr", flag, *map(str, paths)], check=True, capture_output=True, timeout=10)


@contextlib.contextmanager
def immutable(paths: list[Path]) -> Iterator[None]:
    """chattr +i: refused even to root (which ignores permission bits), undone whatever happens."""
    try:
        _chattr("+i", paths)
    except (OSError, subprocess.SubprocessError) as exc:
        pytest.skip(
            f"cannot make files immutable here ({type(exc).__name__}: chattr needs CAP_LINUX_IMMUTABLE "
            "and an ext2/3/4-like filesystem); permission bits mean nothing to root"
        )
    try:
        yield
    finally:
        _chattr("-i", paths)


@pytest.mark.parametrize("what", ["database", "raw_dir"])
def test_sqlite_unwritable_database_or_raw_dir_answers_451_then_retry_posts_once(
    tmp_path: Path, what: str
) -> None:
    """HOSTILE P9 on SQLite beyond a lock (tests/test_smtp.py): the database file, or the raw-mail
    directory, cannot be written; the answer is 451 4.3.0 and nothing is stored."""
    db_dir = tmp_path / "db"
    services = make_services(tmp_path, f"sqlite:///{db_dir / 'mailbridge.db'}")
    seed(services)
    conversation = open_conversation(services)
    address = reply_address(services, conversation, "alice")
    msg = reply_message("alice@client.test", address, "Written while the disk was read-only.")
    if what == "database":
        # The file and its write-ahead log (the -shm index is mmapped: freezing it can SIGBUS a reader).
        paths = [db_dir / "mailbridge.db", db_dir / "mailbridge.db-wal"]
    else:
        raw = services.settings.data_dir / "inbound"
        (raw / date.today().isoformat()).mkdir(parents=True, exist_ok=True)
        paths = [raw, raw / date.today().isoformat()]
    with live_server(services) as server:
        with immutable(paths):
            assert send(server, msg, "alice@client.test", address) == tempfail()
        assert bodies(services, conversation) == []
        with services.sessions() as session:
            assert session.scalar(select(func.count()).select_from(InboundLog)) == 0
        assert send(server, msg, "alice@client.test", address)[0] == 250
        assert send(server, msg, "alice@client.test", address)[0] == 250
    assert bodies(services, conversation) == ["Written while the disk was read-only."]
    services.close()


def data_answers(port: int, address: str, body: bytes) -> list[bytes]:
    """DATA, the body and its final dot, then NOOP: every reply line the server sent, in order."""
    sock, reader = open_transaction(port, address)
    with sock, reader:
        sock.sendall(b"DATA\r\n")
        answers = [reader.readline()]
        if answers[0].startswith(b"354"):
            sock.sendall(body + b".\r\n")
            answers.append(reader.readline())
        sock.sendall(b"NOOP\r\n")
        answers.append(reader.readline())
    return answers


SMUGGLED = b"RSET\r\nMAIL FROM:<x@evil.test>\r\nRCPT TO:<victim@example.org>\r\n"
TEMPFAIL_LINE = b"451 4.3.0 Temporary failure, please try again later\r\n"


def test_unwritable_spool_answers_451_before_any_data(tmp_path: Path) -> None:
    """The spool directory cannot be written (read-only, out of inodes): DATA is refused with 451 4.3.0
    before 354, so no line of the message can ever be read as a command."""
    services = make_services(tmp_path, f"sqlite:///{tmp_path / 'mailbridge.db'}")
    seed(services)
    address = reply_address(services, open_conversation(services), "alice")
    spool = services.settings.data_dir / "spool"
    spool.mkdir(parents=True, exist_ok=True)
    with live_server(services) as server, immutable([spool]):
        body = b"From: alice@client.test\r\nSubject: hi\r\n\r\nhello\r\n" + SMUGGLED
        answers = data_answers(server.port, address, body)
    assert answers in (
        [TEMPFAIL_LINE, b"250 OK\r\n"],  # refused at DATA
        [b"354 End data with <CR><LF>.<CR><LF>\r\n", TEMPFAIL_LINE, b"250 OK\r\n"],  # or drained
    )
    with services.sessions() as session:
        assert session.scalar(select(func.count()).select_from(InboundLog)) == 0
    services.close()


def test_spool_write_failure_mid_data_answers_one_451_and_never_runs_the_body(tmp_path: Path) -> None:
    """The disk fills up while DATA is being spooled: one 451 4.3.0 for the whole transaction, the rest
    of the message drained (a body line ``RSET``/``MAIL FROM``/``RCPT TO`` is never run as a command),
    the spool file removed, and the connection still usable.

    RLIMIT_FSIZE stands in for ENOSPC: a write growing a file past the limit fails with EFBIG (Python
    ignores SIGXFSZ), exactly like a full disk, and only files past the limit are affected.
    """
    import resource

    services = make_services(tmp_path, f"sqlite:///{tmp_path / 'mailbridge.db'}")
    seed(services)
    address = reply_address(services, open_conversation(services), "alice")
    limit = 3 * 1024 * 1024
    biggest = max(p.stat().st_size for p in tmp_path.rglob("*") if p.is_file())
    assert biggest < limit // 2, "the database itself would hit the limit"
    body = (
        b"From: alice@client.test\r\nSubject: hi\r\n\r\n"
        + (b"x" * 76 + b"\r\n") * (2 * limit // 78)
        + SMUGGLED
        + b"the end\r\n"
    )
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    with live_server(services) as server:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))
        try:
            answers = data_answers(server.port, address, body)
        finally:
            resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    assert [a[:80] for a in answers] == [
        b"354 End data with <CR><LF>.<CR><LF>\r\n",
        TEMPFAIL_LINE,
        b"250 OK\r\n",
    ]
    assert list((services.settings.data_dir / "spool").iterdir()) == []
    services.close()


# ---- the smarthost down for a while -----------------------------------------------------------------


class SinkOnPort(Sink):
    """tests.sink.Sink listening on a port chosen beforehand: the smarthost comes back where it was."""

    def __init__(self, port: int) -> None:
        super().__init__()
        self.port = port

    def __enter__(self) -> SinkOnPort:
        self.thread.start()

        async def start() -> Any:
            return await self.loop.create_server(
                lambda: SMTP(self.handler, hostname="sink.test", require_starttls=False),
                host="127.0.0.1",
                port=self.port,
            )

        import asyncio

        self.server = asyncio.run_coroutine_threadsafe(start(), self.loop).result(10)
        return self


def outbox_rows(services: Any) -> list[Outbox]:
    with services.sessions() as session:
        return list(session.scalars(select(Outbox).order_by(Outbox.created_at)).all())


def time_passes(services: Any) -> None:
    """Instead of waiting out the backoff: every pending row becomes due now."""
    from mailbridge.domain.db import transaction

    with transaction(services.sessions) as session:
        session.execute(
            update(Outbox)
            .where(Outbox.state == OutboxState.pending)
            .values(next_attempt_at=utcnow() - timedelta(seconds=1))
        )


def test_smarthost_down_for_a_while_then_each_notification_delivered_once(seeded: Any) -> None:
    for n in range(5):
        open_conversation(seeded, kind="company", company="bakery", participants=("alice",), subject=f"S{n}")
    port = free_port()  # nothing listens there: the smarthost is down
    worker = worker_for(seeded, None, smarthost=f"127.0.0.1:{port}", smarthost_starttls="off")
    for attempt in range(1, 4):
        drain(worker, rounds=1)
        rows = outbox_rows(seeded)
        assert len(rows) == 5
        for row in rows:
            assert (row.state, row.attempts) == (OutboxState.pending, attempt)
            assert (row.last_answer or "").startswith("connection:"), row.last_answer
            assert row.lease_until is None
        drain(worker, rounds=1)  # not due yet: the backoff holds
        assert {row.attempts for row in outbox_rows(seeded)} == {attempt}
        time_passes(seeded)
    ids_before = {row.id: row.message_id_header for row in outbox_rows(seeded)}
    with SinkOnPort(port) as sink:
        drain(worker)
        time_passes(seeded)
        drain(worker)  # nothing left to send: no second copy
        received = list(sink.received)
    rows = outbox_rows(seeded)
    assert [row.state for row in rows] == [OutboxState.sent] * 5
    assert [row.attempts for row in rows] == [4] * 5
    assert len(received) == 5
    assert sorted(r.rcpts[0] for r in received) == ["alice@client.test"] * 5
    sent_ids = sorted(str(parse(r.data)["Message-ID"]) for r in received)
    assert sent_ids == sorted(row.message_id_header for row in rows)  # one copy of each, as recorded
    assert ids_before == {row.id: row.message_id_header for row in rows}  # the same on every attempt
