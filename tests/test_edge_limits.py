"""Security review findings 9, 10 and 11, each attack made through a public door (SMTP or HTTP over a
real socket) and shown to fail now. Caps are set tiny in each test's settings instead of opening
thousands of connections or sending hundreds of megabytes.

9  unauthenticated senders cost DNS and CPU before refusal: cheap refusals first, bounded work;
10 resource limits: connection caps, timeouts, large-transfer slots, the size limit, raw retention;
11 end-of-DATA desynchronisation on long lines.
"""

from __future__ import annotations

import asyncio
import base64
import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from email.message import EmailMessage
from email.policy import SMTP as SMTP_POLICY
from pathlib import Path
from typing import Any

import dkim
import pytest
import uvicorn
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from sqlalchemy import create_engine, select, text, update

from mailbridge import replies
from mailbridge.domain.db import alembic_config, transaction, upgrade
from mailbridge.domain.models import (
    InboundLog,
    InboundState,
    Message,
    MessageSource,
    QuarantineItem,
    utcnow,
)
from mailbridge.domain.practice_settings import SERVER_MAX_MESSAGE_BYTES, PracticeSettings
from mailbridge.housekeeping import purge_raw
from mailbridge.inbound.dns import DnsTempError, StaticResolver
from mailbridge.ingress.smtp import ConnectionLimits, address_block
from mailbridge.runtime import LoopErrorLog, http_config
from mailbridge.storage.vault import raw_key
from mailbridge.wiring import Services
from tests.conftest import API_KEY, DNS_TABLE, make_services, seed
from tests.mailhelpers import add_client, live_server, open_conversation, reply_address, reply_message

OWNER = "alice@client.test"
BASE = "/api/v1/practices/acme"


def world(tmp_path: Path, **overrides: Any) -> Services:
    services = make_services(tmp_path, f"sqlite:///{tmp_path / 'mailbridge.db'}", **overrides)
    seed(services)
    return services


def wire(reply: replies.SmtpReply) -> bytes:
    return reply.wire().encode() + b"\r\n"


def wire_bytes(msg: EmailMessage) -> bytes:
    return msg.as_bytes(policy=SMTP_POLICY)


class Peer:
    """A raw SMTP client: bytes sent as they are, in the segments the test chooses."""

    def __init__(self, port: int, source: str | None = None) -> None:
        self.sock = socket.create_connection(
            ("127.0.0.1", port), timeout=20, source_address=(source, 0) if source else None
        )
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.reader = self.sock.makefile("rb")

    def reply(self) -> bytes:
        """The last line of the next reply (continuation lines skipped); b"" once the peer closed."""
        line = self.reader.readline()
        while line[3:4] == b"-":
            line = self.reader.readline()
        return line

    def command(self, line: bytes) -> bytes:
        self.sock.sendall(line + b"\r\n")
        return self.reply()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def open_transaction(self, rcpt: str, mail_from: str = OWNER, size: int | None = None) -> None:
        assert self.reply().startswith(b"220")
        assert self.command(b"EHLO client.test").startswith(b"250")
        option = f" SIZE={size}" if size else ""
        assert self.command(f"MAIL FROM:<{mail_from}>{option}".encode()).startswith(b"250")
        assert self.command(f"RCPT TO:<{rcpt}>".encode()).startswith(b"250")

    def close(self) -> None:
        self.reader.close()
        self.sock.close()


@contextmanager
def peer(port: int, source: str | None = None) -> Iterator[Peer]:
    client = Peer(port, source)
    try:
        yield client
    finally:
        client.close()


def selectors_ready(sock: socket.socket, timeout: float) -> bool:
    """Whether *sock* has something to read within *timeout* seconds."""
    import select as io_select

    return bool(io_select.select([sock], [], [], timeout)[0])


def wait_for(predicate: Any, what: str, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


def rows(services: Services) -> list[InboundLog]:
    with services.sessions() as session:
        return list(session.scalars(select(InboundLog).order_by(InboundLog.received_at)).all())


def posted(services: Services, conversation_id: str) -> list[str]:
    """Bodies of the messages that came in by email (the conversation's opening post is not one)."""
    with services.sessions() as session:
        return [
            m.body
            for m in session.scalars(
                select(Message)
                .where(Message.conversation_id == conversation_id, Message.source == MessageSource.email)
                .order_by(Message.created_at)
            ).unique()
        ]


def spooled(services: Services) -> list[Path]:
    folder = services.settings.data_dir / "spool"
    return list(folder.iterdir()) if folder.exists() else []


def body_lines(size: int) -> bytes:
    line = b"x" * 76 + b"\r\n"
    return line * (size // len(line) + 1)


# ---- finding 11: a long line never loses track of line boundaries ---------------------------------


def test_f11_a_dot_ending_a_long_line_in_its_own_segment_is_not_the_end_of_data(tmp_path: Path) -> None:
    """The attack: a 1,500-octet line whose last octet '.' ends one TCP segment, CRLF opening the next,
    then a whole second transaction. The old reader took '.' CRLF for the end of the data and ran the
    rest as commands (posting the smuggled reply). Now all of it is data of the first message, which
    gets one answer, the line-too-long refusal, and nothing is posted."""
    services = world(tmp_path)
    conversation = open_conversation(services)
    address = reply_address(services, conversation, "alice")
    smuggled = wire_bytes(reply_message(OWNER, address, "Smuggled past the end of the data."))
    assert b"\r\n.\r\n" not in smuggled
    with live_server(services) as server, peer(server.port) as client:
        client.open_transaction(address)
        assert client.command(b"DATA").startswith(b"354")
        client.send(b"From: alice@client.test\r\nSubject: hi\r\n\r\n" + b"a" * 1500 + b".")
        time.sleep(0.2)  # the next bytes arrive in a segment (and a read) of their own
        client.send(
            b"\r\nRSET\r\nMAIL FROM:<alice@client.test>\r\n"
            + f"RCPT TO:<{address}>\r\n".encode()
            + b"DATA\r\n"
            + smuggled
            + b".\r\n"
        )
        assert client.reply() == wire(replies.LINE_TOO_LONG)
        assert client.command(b"NOOP") == b"250 OK\r\n"  # no other answer came in between
    assert posted(services, conversation) == []
    assert [(r.state, r.reason) for r in rows(services)] == [(InboundState.rejected, "line_too_long")]
    assert spooled(services) == []
    services.close()


def test_f11_commands_sent_right_after_the_terminator_are_answered(tmp_path: Path) -> None:
    """Bytes read past the end of the data (a client pipelining QUIT) go back to the command reader."""
    services = world(tmp_path)
    conversation = open_conversation(services)
    address = reply_address(services, conversation, "alice")
    with live_server(services) as server, peer(server.port) as client:
        client.open_transaction(address)
        assert client.command(b"DATA").startswith(b"354")
        client.send(
            wire_bytes(reply_message(OWNER, address, "Tuesday works for me.")) + b".\r\nNOOP\r\nQUIT\r\n"
        )
        assert client.reply().startswith(b"250 2.0.0")
        assert client.reply() == b"250 OK\r\n"
        assert client.reply().startswith(b"221")
    assert posted(services, conversation) == ["Tuesday works for me."]
    services.close()


# ---- finding 10: resource limits at the SMTP door --------------------------------------------------


def test_f10_noop_no_longer_keeps_an_idle_session_open(tmp_path: Path) -> None:
    """NOOP used to restart the idle timer: a peer could hold a connection for ever. Now only progress
    does; the NOOPs are answered until the timeout, then 421 4.4.2 and the connection closes."""
    services = world(tmp_path, smtp_timeout_seconds=1.0)
    with live_server(services) as server, peer(server.port) as client:
        assert client.reply().startswith(b"220")
        assert client.command(b"EHLO client.test").startswith(b"250")
        answers = []
        for _ in range(50):  # 10 s of NOOPs: far past the 1 s timeout
            answer = client.command(b"NOOP")
            answers.append(answer)
            if answer != b"250 OK\r\n":
                break
            # Wait for the next NOOP, or for the 421 the server sends on its own meanwhile: a NOOP
            # written after it has closed could only meet a reset, not an answer.
            if selectors_ready(client.sock, 0.2):
                answers.append(client.reply())
                break
        assert answers[-1] == wire(replies.TIMEOUT), answers
        assert client.reply() == b""  # closed
    services.close()


def test_f10_junk_commands_are_limited(tmp_path: Path) -> None:
    services = world(tmp_path, smtp_max_junk_commands=3)
    with live_server(services) as server, peer(server.port) as client:
        assert client.reply().startswith(b"220")
        assert client.command(b"EHLO client.test").startswith(b"250")
        assert [client.command(c) for c in (b"NOOP", b"RSET", b"EHLO again.test")] == [
            b"250 OK\r\n",
            b"250 OK\r\n",
            b"250 HELP\r\n",
        ]
        assert client.command(b"NOOP") == wire(replies.TOO_MANY_JUNK_COMMANDS)
        assert client.reply() == b""
    services.close()


def test_f10_per_ip_cap_counts_address_blocks() -> None:
    """An IPv6 /64 is one subscriber: it used to get a cap per address, so any count of connections."""
    limits = ConnectionLimits(total=100, per_ip=2)
    assert limits.acquire("2001:db8:1:2::1") and limits.acquire("2001:db8:1:2:ffff::9")
    assert not limits.acquire("2001:db8:1:2:abcd:ef01:2345:6789")  # same /64
    assert limits.acquire("2001:db8:1:3::1")  # the next /64
    assert limits.acquire("192.0.2.1") and limits.acquire("::ffff:192.0.2.1")  # one IPv4 address
    assert not limits.acquire("192.0.2.1")
    limits.release("2001:db8:1:2::1")
    assert limits.acquire("2001:db8:1:2:1234::")
    assert address_block("2001:db8:1:2:3:4:5:6") == "2001:db8:1:2::/64"
    assert address_block("fe80::1%lo") == "fe80::/64"


def test_f10_per_ip_cap_through_the_door(tmp_path: Path) -> None:
    services = world(tmp_path, smtp_max_connections_per_ip=1)
    with live_server(services) as server, peer(server.port) as first:
        assert first.reply().startswith(b"220")
        with peer(server.port) as second:
            assert second.reply() == wire(replies.TOO_MANY_CONNECTIONS)
        with peer(server.port, source="127.0.0.2") as other:  # another IPv4 address: a cap of its own
            assert other.reply().startswith(b"220")
    services.close()


def _take_the_slot(services: Services, client: Peer, address: str) -> None:
    """Start a large transfer and wait until the server holds it in a slot (past 1 MiB its spool
    file grows on disk, and the slot is taken before the first write)."""
    client.open_transaction(address)
    assert client.command(b"DATA").startswith(b"354")
    client.send(b"From: alice@client.test\r\nSubject: big\r\n\r\n" + body_lines(1_200_000))
    wait_for(lambda: any(p.stat().st_size >= 1024 * 1024 for p in spooled(services)), "the spool file")


def test_f10_a_stalled_transfer_loses_its_slot_to_a_waiting_one(tmp_path: Path) -> None:
    """Stalled transfers held every large-transfer slot, so a legitimate large message timed out.
    Now the stalled peer is cut off after the data idle time, and the waiting transfer goes on."""
    services = world(
        tmp_path,
        max_concurrent_large_transfers=1,
        smtp_large_transfer_bytes=64 * 1024,
        smtp_data_idle_seconds=1.0,
        smtp_large_transfer_min_rate=0,
    )
    conversation = open_conversation(services)
    address = reply_address(services, conversation, "alice")
    legitimate = reply_message(OWNER, address, "The signed form is attached.")
    legitimate.add_attachment(
        b"signed form\n" * 15_000, maintype="text", subtype="plain", filename="form.txt"
    )
    raw = wire_bytes(legitimate)
    with live_server(services) as server, peer(server.port) as stalled, peer(server.port) as waiting:
        _take_the_slot(services, stalled, address)
        waiting.open_transaction(address, size=len(raw))
        assert waiting.command(b"DATA").startswith(b"354")  # once the stalled one lost the slot
        assert stalled.reply() == wire(replies.TIMEOUT)
        assert stalled.reply() == b""
        waiting.send(raw + b".\r\n")
        assert waiting.reply().startswith(b"250 2.0.0")
    assert posted(services, conversation) == ["The signed form is attached."]
    services.close()


def test_f10_the_wait_for_a_slot_is_bounded(tmp_path: Path) -> None:
    """With the slot busy, a transfer announced by SIZE= gets 451 4.3.2 instead of 354; one that
    grows past the threshold unannounced is drained and gets 451 4.3.2 after its data. The holder,
    still sending, finishes normally."""
    services = world(
        tmp_path,
        max_concurrent_large_transfers=1,
        smtp_large_transfer_bytes=64 * 1024,
        smtp_large_transfer_wait_seconds=0.3,
        smtp_large_transfer_min_rate=0,
    )
    conversation = open_conversation(services)
    address = reply_address(services, conversation, "alice")
    with live_server(services) as server, peer(server.port) as holder:
        _take_the_slot(services, holder, address)
        with peer(server.port) as announced:
            announced.open_transaction(address, size=500_000)
            assert announced.command(b"DATA") == wire(replies.LARGE_TRANSFERS_BUSY)
            assert announced.command(b"NOOP") == b"250 OK\r\n"
        with peer(server.port) as unannounced:
            unannounced.open_transaction(address)
            assert unannounced.command(b"DATA").startswith(b"354")
            unannounced.send(b"From: alice@client.test\r\n\r\n" + body_lines(200_000) + b".\r\n")
            assert unannounced.reply() == wire(replies.LARGE_TRANSFERS_BUSY)
        holder.send(b".\r\n")
        assert holder.reply()[:1] in (b"2", b"5")  # its own answer, whatever the pipeline decided
    busy = [r for r in rows(services) if r.reason == "large_transfer_busy"]
    assert [(r.state, r.smtp_reply) for r in busy] == [
        (InboundState.deferred, replies.LARGE_TRANSFERS_BUSY.wire())
    ] * 2
    wait_for(lambda: spooled(services) == [], "the spool files to go")
    services.close()


def test_f10_a_trickling_slot_holder_is_cut_off(tmp_path: Path) -> None:
    """A peer that keeps its slot by sending a few bytes now and then (never idle long enough for the
    idle timeout) is cut off once a data-idle window passes below the minimum rate."""
    services = world(
        tmp_path,
        max_concurrent_large_transfers=1,
        smtp_large_transfer_bytes=64 * 1024,
        smtp_data_idle_seconds=0.5,
        smtp_large_transfer_min_rate=10 * 1024 * 1024,
    )
    address = reply_address(services, open_conversation(services), "alice")
    with live_server(services) as server, peer(server.port) as trickler:
        _take_the_slot(services, trickler, address)
        answer = b""
        trickler.sock.settimeout(0.1)
        for _ in range(100):  # up to 10 s of trickling
            try:
                trickler.send(b"x")
                answer = trickler.sock.recv(1000)
            except TimeoutError:
                continue
            break
        assert answer == wire(replies.TIMEOUT)
    services.close()


def test_f10_a_practice_limit_never_exceeds_the_servers(tmp_path: Path) -> None:
    """A practice's message_max_bytes replaced the server-wide limit (a 200 MB message was accepted
    with SIZE 145752064 advertised). Now it is refused on PUT beyond the server's, and only ever lowers it."""
    from fastapi.testclient import TestClient

    from mailbridge.api.app import create_app
    from tests.conftest import PRACTICE

    services = world(tmp_path)
    with TestClient(create_app(services), headers={"Authorization": f"Bearer {API_KEY}"}) as api:
        too_big = {**PRACTICE, "settings": {"message_max_bytes": 200 * 1024 * 1024}}
        answer = api.put(BASE, json=too_big)
        assert answer.status_code == 422
        assert answer.json()["field"] == "settings.message_max_bytes"
        small = {**PRACTICE, "settings": {**PRACTICE["settings"], "message_max_bytes": 1024 * 1024}}
        assert api.put(BASE, json=small).status_code == 200
    assert PracticeSettings(message_max_bytes=SERVER_MAX_MESSAGE_BYTES).effective_message_max_bytes == (
        SERVER_MAX_MESSAGE_BYTES
    )
    conversation = open_conversation(services)
    address = reply_address(services, conversation, "alice")
    with live_server(services) as server, peer(server.port) as client:
        assert client.reply().startswith(b"220")
        client.sock.sendall(b"EHLO client.test\r\n")
        ehlo = [client.reader.readline()]
        while ehlo[-1][3:4] == b"-":
            ehlo.append(client.reader.readline())
        assert f"250-SIZE {SERVER_MAX_MESSAGE_BYTES}\r\n".encode() in ehlo
    with live_server(services) as server, peer(server.port) as client:
        client.open_transaction(address)
        assert client.command(b"DATA").startswith(b"354")
        client.send(b"From: alice@client.test\r\n\r\n" + body_lines(1_100_000) + b".\r\n")
        assert client.reply() == wire(replies.message_too_big(1024 * 1024))
    assert [(r.state, r.reason) for r in rows(services)] == [(InboundState.rejected, "size_exceeded")]
    assert spooled(services) == []
    services.close()


def test_f10_stored_limits_above_the_servers_are_lowered_by_the_migration(tmp_path: Path) -> None:
    from alembic import command

    engine = create_engine(f"sqlite:///{tmp_path / 'old.db'}")
    command.upgrade(alembic_config(engine), "0002")
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO practices"
                " (slug, name, reply_domain, notify_from, locale, settings, created_at, updated_at)"
                " VALUES ('old', 'Old', 'reply.old.test', 'n@old.test', 'en', :settings, :now, :now)"
            ),
            {"settings": '{"message_max_bytes": 209715200, "min_body_chars": 3}', "now": utcnow()},
        )
    upgrade(engine)
    with engine.connect() as conn:
        stored = conn.execute(text("SELECT settings FROM practices")).scalar_one()
    assert '"message_max_bytes": 145752064' in stored and '"min_body_chars": 3' in stored
    engine.dispose()


def test_f10_refused_raw_mail_is_kept_short_and_briefly(tmp_path: Path) -> None:
    """Refused mail was kept whole for 30 days: anyone could fill the disk. Now only its first
    raw_refused_keep_bytes, for raw_refused_retention_days; quarantined mail stays until decided."""
    services = world(tmp_path, raw_refused_keep_bytes=4096, raw_refused_retention_days=2)
    conversation = open_conversation(services)
    address = reply_address(services, conversation, "alice")
    forged = reply_message("mallory@client.test", address, "Not Alice at all. " * 20_000)
    with live_server(services) as server:
        from tests.mailhelpers import send

        assert send(server, forged, "mallory@client.test", address)[0] == 550
    (row,) = rows(services)
    assert (row.reason, row.details["raw_kept_bytes"]) == ("reply_user_mismatch", 4096)
    assert row.raw_ref is not None and len(services.vault.read_bytes(row.raw_ref)) == 4096  # the stored copy
    with transaction(services.sessions) as session:
        session.execute(update(InboundLog).values(received_at=utcnow() - timedelta(days=3)))
    assert purge_raw(services) == 1
    assert not services.vault.exists(row.raw_ref)
    services.close()


# ---- finding 10: resource limits at the HTTP door --------------------------------------------------


class LiveHttp:
    """The real HTTP door (uvicorn with mailbridge's limits) on 127.0.0.1:<free port>, in a thread."""

    def __init__(self, services: Services) -> None:
        self.server = uvicorn.Server(http_config(services))
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_until_complete, args=(self.server.serve(),))
        self.port = 0

    def __enter__(self) -> LiveHttp:
        self.thread.start()
        wait_for(lambda: self.server.started, "the HTTP server")
        self.port = self.server.servers[0].sockets[0].getsockname()[1]
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(10)
        self.loop.close()

    def get(self, path: str) -> bytes:
        with socket.create_connection(("127.0.0.1", self.port), timeout=10) as sock:
            sock.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
            return b"".join(iter(lambda: sock.recv(65536), b""))


def read_response(sock: socket.socket) -> bytes:
    """One whole HTTP/1.1 response with a Content-Length, the connection left open."""
    data = b""
    while b"\r\n\r\n" not in data:
        data += sock.recv(65536)
    head, _, body = data.partition(b"\r\n\r\n")
    found = re.search(rb"(?i)content-length: *(\d+)", head)
    assert found is not None
    while len(body) < int(found.group(1)):
        body += sock.recv(65536)
    return head + b"\r\n\r\n" + body


def test_f10_http_connection_cap(tmp_path: Path) -> None:
    """No cap used to exist: idle connections piled up until descriptors ran out."""
    services = world(tmp_path, http_max_connections=3)
    with LiveHttp(services) as http:
        idle = [socket.create_connection(("127.0.0.1", http.port), timeout=10) for _ in range(3)]
        try:
            with socket.create_connection(("127.0.0.1", http.port), timeout=10) as extra:
                answer = b"".join(iter(lambda: extra.recv(65536), b""))  # read until closed
            assert answer.startswith(b"HTTP/1.1 503 ")
            idle.pop().close()
            wait_for(lambda: http.get("/healthz").startswith(b"HTTP/1.1 200"), "a free connection")
        finally:
            for sock in idle:
                sock.close()
    services.close()


def test_f10_http_header_read_timeout(tmp_path: Path) -> None:
    """A request whose headers never complete (slow-loris) used to hold its connection for ever."""
    services = world(tmp_path, http_header_timeout_seconds=0.5)
    with LiveHttp(services) as http:
        with socket.create_connection(("127.0.0.1", http.port), timeout=10) as slow:
            slow.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")  # and never the empty line
            assert slow.recv(65536) == b""  # closed by the server, well before the 10 s timeout
        with socket.create_connection(("127.0.0.1", http.port), timeout=10) as silent:
            assert silent.recv(65536) == b""
        with socket.create_connection(("127.0.0.1", http.port), timeout=10) as kept:
            kept.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            assert read_response(kept).startswith(b"HTTP/1.1 200")
            kept.sendall(b"GET /healthz HTTP/1.1\r\n")  # the next request on the kept-alive connection
            assert kept.recv(65536) == b""
    services.close()


_EMFILE_CHILD = """
import asyncio, resource, sys
from pathlib import Path
import uvicorn
from mailbridge.logs import configure_logging
from mailbridge.runtime import http_config, install_loop_guards, raise_descriptor_limit
from tests.conftest import make_services

root = Path(sys.argv[1])
services = make_services(root, f"sqlite:///{root / 'db.sqlite'}", http_max_connections=500)
configure_logging(services.settings)
resource.setrlimit(resource.RLIMIT_NOFILE, (48, 48))

async def main():
    install_loop_guards(asyncio.get_running_loop())
    raise_descriptor_limit(services.settings.http_max_connections + 200)
    server = uvicorn.Server(http_config(services))
    task = asyncio.create_task(server.serve())
    while not server.started:
        await asyncio.sleep(0.01)
    print(server.servers[0].sockets[0].getsockname()[1], flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    server.should_exit = True
    await task

asyncio.run(main())
"""


def test_f10_out_of_descriptors_is_logged_once_and_counted_without_flooding(tmp_path: Path) -> None:
    """With every descriptor in use, accept() fails. asyncio retries a second later; each failure
    was an ERROR with a traceback (a 655 MB log in a minute with several listeners). Now: one
    WARNING per minute saying how many were suppressed, a metric for each, and the door recovers."""
    child = subprocess.Popen(
        [sys.executable, "-c", _EMFILE_CHILD, str(tmp_path)],
        cwd=Path(__file__).resolve().parent.parent,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    lines: list[str] = []
    try:
        assert child.stdout is not None and child.stderr is not None
        port = int(child.stdout.readline())
        reader = threading.Thread(
            target=lambda: lines.extend(line.decode() for line in child.stderr), daemon=True
        )
        reader.start()
        held = []
        try:
            for _ in range(60):  # more than the 48 descriptors the child has
                held.append(socket.create_connection(("127.0.0.1", port), timeout=10))
            wait_for(lambda: any("accept_failed" in line for line in lines), "the first accept failure")
            time.sleep(2.5)  # asyncio tries again every second: two more failures, not two more lines
        finally:
            for sock in held:
                sock.close()
        metrics = b""

        def recovered() -> bool:
            nonlocal metrics
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
                    sock.sendall(
                        f"GET /metrics HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {API_KEY}\r\n"
                        "Connection: close\r\n\r\n".encode()
                    )
                    metrics = b"".join(iter(lambda: sock.recv(65536), b""))
            except OSError:
                return False
            return metrics.startswith(b"HTTP/1.1 200")

        wait_for(recovered, "the HTTP door to serve again")
        found = re.search(rb"mailbridge_accept_errors_total (\d+)", metrics)
        assert found is not None and int(found.group(1)) >= 3
        assert sum("accept_failed" in line for line in lines) == 1
        assert any("descriptor_limit_low" in line for line in lines)
    finally:
        child.communicate(b"", timeout=20)


def test_loop_error_log_rate_limits_and_counts() -> None:
    from mailbridge.observability import ACCEPT_ERRORS

    now = [0.0]
    handler = LoopErrorLog(interval=60.0, clock=lambda: now[0])
    context = {"message": "socket.accept() out of system resource", "exception": OSError(24, "Too many")}
    before = ACCEPT_ERRORS._value.get()
    loop = asyncio.new_event_loop()
    try:
        for _ in range(5):
            handler(loop, context)
            now[0] += 1
        key = "socket.accept() out of system resource OSError"
        assert handler.suppressed[key] == 4
        now[0] += 60
        handler(loop, context)
        assert handler.suppressed[key] == 0
    finally:
        loop.close()
    assert ACCEPT_ERRORS._value.get() - before == 6


# ---- finding 9: cheap refusals first, bounded work -------------------------------------------------


@pytest.fixture
def routed(tmp_path: Path) -> Iterator[Services]:
    from fastapi.testclient import TestClient

    from mailbridge.api.app import create_app

    services = world(tmp_path)
    with TestClient(create_app(services), headers={"Authorization": f"Bearer {API_KEY}"}) as api:
        assert api.put(f"{BASE}/routes/billing@acme.test", json={"roles": ["biller"]}).status_code == 201
    yield services
    services.close()


def test_f9_unknown_sender_to_a_rejecting_route_is_refused_before_any_dns(routed: Services) -> None:
    resolver = routed.resolver
    assert isinstance(resolver, StaticResolver)
    from tests.mailhelpers import send

    stranger = reply_message("newcomer@stranger.test", "billing@acme.test", "Do you take new clients?")
    impostor = reply_message("mallory@client.test", "billing@acme.test", "Invoice attached.")
    with live_server(routed) as server:
        resolver.queries.clear()
        assert send(server, stranger, "newcomer@stranger.test", "billing@acme.test")[1].startswith(b"5.7.1")
        assert send(server, impostor, "mallory@client.test", "billing@acme.test")[1].startswith(b"5.7.1")
        assert resolver.queries == []  # neither cost a DKIM, SPF or DMARC look-up
    assert [r.reason for r in rows(routed)] == ["unknown_sender", "unknown_sender"]


def test_f9_a_huge_from_field_is_refused_by_the_prescan(tmp_path: Path) -> None:
    """A ~195 KB From of quoted words cost ~5 s in the stdlib's address parser; now the prescan
    refuses it (a field the parser reads structurally may not exceed 4 KB)."""
    services = world(tmp_path)
    conversation = open_conversation(services)
    address = reply_address(services, conversation, "alice")
    words = "a b c d e f g h i j k l m n o p q r s t u v w x y z"
    huge = '"' + "\r\n ".join([words] * 3800) + '" <alice@client.test>'  # ~195 KB, folded
    raw = (
        f"From: {huge}\r\nTo: {address}\r\nSubject: hi\r\nMessage-ID: <1@client.test>\r\n\r\nhello\r\n"
    ).encode()
    from tests.mailhelpers import send_raw

    resolver = services.resolver
    assert isinstance(resolver, StaticResolver)
    with live_server(services) as server:
        resolver.queries.clear()
        assert send_raw(server, raw, OWNER, address) == (550, b"5.6.0 A header field is too long")
        assert resolver.queries == []
    assert rows(services)[-1].reason == "header_field_size"
    services.close()


def _dkim_key() -> tuple[bytes, str]:
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = private.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )
    spki = private.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return pem, "v=DKIM1; k=rsa; p=" + base64.b64encode(spki).decode()


def test_f9_at_most_three_dkim_signatures_are_checked_the_from_domain_first(tmp_path: Path) -> None:
    """Eight signatures used to cost eight key look-ups and RSA checks. Now three, and those of the
    From's own domain first: junk signatures placed before the real one cannot push it out."""
    pem, record = _dkim_key()
    resolver = StaticResolver({**DNS_TABLE, "sel._domainkey.client.test": [record]})
    services = world(tmp_path)
    services.resolver = resolver
    conversation = open_conversation(services)
    address = reply_address(services, conversation, "alice")
    raw = wire_bytes(reply_message(OWNER, address, "Signed, and signed again."))
    signature = dkim.sign(raw, b"sel", b"client.test", pem, include_headers=[b"from", b"subject", b"to"])
    junk = [signature.replace(b"client.test", f"junk{n}.test".encode()) for n in range(7)]
    from tests.mailhelpers import send_raw

    with live_server(services) as server:
        assert send_raw(server, b"".join(junk) + signature + raw, OWNER, address)[0] == 250
    key_lookups = [name for kind, name in resolver.queries if "._domainkey." in name]
    assert key_lookups[0] == "sel._domainkey.client.test" and len(key_lookups) == 3
    assert "dkim=pass header.d=client.test" in (rows(services)[-1].auth_results or "")
    services.close()


def test_f9_deeply_nested_html_is_sanitised_within_bounds(tmp_path: Path) -> None:
    """537 KB of nested HTML took ~4 s in nh3; past 2,000 start tags it is now re-nested first."""
    services = world(tmp_path)
    conversation = open_conversation(services)
    address = reply_address(services, conversation, "alice")
    msg = reply_message(OWNER, address, "unused")
    msg.set_content("<div>" * 20_000 + "Tuesday at 10 works for me." + "</div>" * 20_000, subtype="html")
    from tests.mailhelpers import send

    with live_server(services) as server:
        assert send(server, msg, OWNER, address)[0] == 250
    with services.sessions() as session:
        (reply,) = session.scalars(
            select(Message).where(
                Message.conversation_id == conversation, Message.source == MessageSource.email
            )
        ).unique()
    assert reply.body == "Tuesday at 10 works for me."
    assert reply.body_html is not None and reply.body_html.count("<div>") <= 100
    services.close()


def test_f9_a_message_over_the_cpu_budget_is_refused(tmp_path: Path) -> None:
    services = world(tmp_path, pipeline_cpu_budget_seconds=1e-9)
    address = reply_address(services, open_conversation(services), "alice")
    from tests.mailhelpers import send

    with live_server(services) as server:
        assert send(server, reply_message(OWNER, address, "Any reply at all."), OWNER, address) == (
            550,
            b"5.6.0 Message too complex to process",
        )
    assert rows(services)[-1].reason == "cpu_budget"
    services.close()


class SlowResolver(StaticResolver):
    """Answers from the table, each look-up taking *delay* seconds (a slow recursive resolver)."""

    def __init__(self, table: dict[str, list[str]], delay: float) -> None:
        super().__init__(table)
        self.delay = delay

    def _lookup(self, rtype: str, name: str) -> str:
        time.sleep(self.delay)
        return super()._lookup(rtype, name)


def test_f9_dns_time_per_message_is_bounded(tmp_path: Path) -> None:
    """An SPF record that includes others through a slow DNS: past the budget, look-ups stop and
    the answer is 451 4.7.0 (try later), not a minute of a thread's time."""
    table = {
        **DNS_TABLE,
        "slowspf.test": ["v=spf1 include:a.slowspf.test include:b.slowspf.test -all"],
        "a.slowspf.test": ["v=spf1 include:c.slowspf.test -all"],
        "b.slowspf.test": ["v=spf1 ip4:127.0.0.1 -all"],
    }
    services = world(tmp_path, dns_budget_seconds=0.3)
    resolver = SlowResolver(table, delay=0.2)
    services.resolver = resolver
    add_client(services, "erin", "erin@slowspf.test")
    address = reply_address(services, open_conversation(services, participants=("erin",)), "erin")
    from tests.mailhelpers import send

    with live_server(services) as server:
        answer = send(
            server,
            reply_message("erin@slowspf.test", address, "Slow but sure."),
            "erin@slowspf.test",
            address,
        )
    assert answer == (451, b"4.7.0 Sender authentication temporarily unavailable; try again later")
    assert len(resolver.queries) <= 3
    services.close()


class BlockingResolver(StaticResolver):
    """Look-ups for names under ``slow.test`` wait until the test opens the gate."""

    def __init__(self, table: dict[str, list[str]]) -> None:
        super().__init__(table)
        self.gate = threading.Event()
        self.waiting = 0
        self.lock = threading.Lock()

    def _lookup(self, rtype: str, name: str) -> str:
        if name.endswith("slow.test"):
            with self.lock:
                self.waiting += 1
            if not self.gate.wait(60):
                raise DnsTempError("gate never opened")
        return super()._lookup(rtype, name)


def test_f9_messages_waiting_on_a_slow_dns_do_not_hold_up_a_reply(tmp_path: Path) -> None:
    """Four messages held by a slow DNS used to take all four pipeline threads: a reply that needs
    no slow answer waited 31 s behind them. Authentication now runs on a pool of its own."""
    services = world(tmp_path, dns_budget_seconds=60)
    resolver = BlockingResolver({**DNS_TABLE, "slow.test": ["v=spf1 ip4:127.0.0.1 -all"]})
    services.resolver = resolver
    slow_addresses = []
    for n in range(6):
        add_client(services, f"slow{n}", f"slow{n}@slow.test")
        conversation = open_conversation(services, participants=(f"slow{n}",), subject=f"Slow {n}")
        slow_addresses.append((f"slow{n}@slow.test", reply_address(services, conversation, f"slow{n}")))
    conversation = open_conversation(services)
    address = reply_address(services, conversation, "alice")
    from tests.mailhelpers import send

    answers: dict[str, int] = {}
    with live_server(services) as server:
        slow_senders = [
            threading.Thread(
                target=lambda s=sender, a=rcpt: answers.__setitem__(
                    s, send(server, reply_message(s, a, "Held by a slow DNS."), s, a)[0]
                )
            )
            for sender, rcpt in slow_addresses
        ]
        for thread in slow_senders:
            thread.start()
        wait_for(lambda: resolver.waiting >= 6, "six messages waiting on the slow DNS")
        try:
            assert send(server, reply_message(OWNER, address, "Not slow at all."), OWNER, address)[0] == 250
        finally:
            resolver.gate.set()
        for thread in slow_senders:
            thread.join(30)
    assert set(answers.values()) == {250}
    services.close()


def test_sanitize_html_gives_up_on_absurd_markup() -> None:
    from mailbridge.inbound.body import bounded_nesting, sanitize_html

    assert sanitize_html("<b>" * 60_000) is None  # the text version of the message is kept instead
    assert bounded_nesting("<div>" * 5 + "x", limit=3) == "<div><div><div>x</div></div></div>"
    assert bounded_nesting("<p>a<p>b<div/>c") == "<p>a</p><p>b<div></div>c</p>"
    assert (
        sanitize_html("<div>" * 3000 + "<script>alert(1)</script>hi") == "<div>" * 100 + "hi" + "</div>" * 100
    )
    assert bounded_nesting("<p>AT&amp;T &hellip; AT&T <a title='1 > 0'>x</a>") == (
        '<p>AT&amp;T \u2026 AT&amp;T <a title="1 &gt; 0">x</a></p>'
    )


def test_f10_quarantined_raw_mail_is_kept_until_staff_decide(tmp_path: Path) -> None:
    """Held quarantine items keep their raw copy past every retention (staff still have to decide)."""
    services = world(tmp_path, raw_retention_days=0, raw_refused_retention_days=0)
    raw = tmp_path / "held.eml"
    raw.write_bytes(b"From: x@y.test\r\n\r\nheld\r\n")
    with transaction(services.sessions) as session:
        practice_id = session.scalar(text("SELECT id FROM practices"))
        row = InboundLog(
            practice_id=practice_id, door="smtp", mail_from="x@y.test", rcpt="frontdesk@acme.test",
            state=InboundState.quarantined, reason="unknown_sender",
            received_at=utcnow() - timedelta(days=90),
        )  # fmt: skip
        session.add(row)
        session.flush()
        row_id = row.id
        session.add(
            QuarantineItem(
                practice_id=practice_id, inbound_id=row.id, reason="unknown_sender", from_address="x@y.test"
            )
        )
    # the held mail's copy in the object store, as the pipeline keeps it (put outside the write above:
    # the vault opens the practice's data key in a transaction of its own)
    ref = services.vault.put_path(raw_key(practice_id, row_id), raw, practice_id)
    with transaction(services.sessions) as session:
        session.execute(update(InboundLog).where(InboundLog.id == row_id).values(raw_ref=ref))
    assert purge_raw(services) == 0 and services.vault.exists(ref)
    services.close()
