"""Issue 11 #5 through the IMAP door: a practice's mailbox never carries the process's secrets, and
never points the poller at the network behind us. Against the real Dovecot (tests/dovecot.py) and a
fake IMAP server on loopback that records whatever reaches it."""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from mailbridge.access.credentials import MailboxCredentials, seal_password
from mailbridge.api.app import create_app
from mailbridge.domain import directory
from mailbridge.domain.db import transaction, upgrade
from mailbridge.domain.models import Mailbox
from mailbridge.inbound.dns import StaticResolver
from mailbridge.ingress.imap import (
    Access,
    ConfigError,
    Connection,
    MailboxConfig,
    PollerConfig,
    check_command,
)
from mailbridge.settings import load_settings
from mailbridge.wiring import Services, build_services
from tests.conftest import API_KEY, DNS_TABLE, make_services, seed
from tests.dovecot import PASSWORD, Dovecot, running_dovecot
from tests.test_imap import FAST, Running, mail, mailbox_row, run, until

BASE = "/api/v1/practices/acme/mailboxes"
PATIENT = PollerConfig(**{**FAST.__dict__, "timeout_seconds": 20})  # Dovecot delays a failed LOGIN
PUBLIC = "93.184.216.34"


class FakeImap:
    """Greets like an IMAP server, refuses everything, and records every connection and byte."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.port = int(self.sock.getsockname()[1])
        self.connections = 0
        self.received = bytearray()
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with self._lock:
                self.connections += 1
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        conn.settimeout(5)
        with conn:
            try:
                conn.sendall(b"* OK [CAPABILITY IMAP4rev1] ready\r\n")
                while data := conn.recv(4096):
                    with self._lock:
                        self.received += data
                    for line in data.split(b"\r\n"):
                        if line.strip():
                            conn.sendall(line.split(b" ", 1)[0] + b" NO refused\r\n")
            except OSError:
                return

    def close(self) -> None:
        self.sock.close()


class Dns(StaticResolver):
    """The test DNS table plus A records a test may change (to play DNS rebinding)."""

    def __init__(self) -> None:
        super().__init__(DNS_TABLE)
        self.records: dict[str, list[str]] = {}

    def a(self, name: str) -> list[str]:
        super().a(name)
        return list(self.records.get(name.rstrip(".").lower(), ()))

    def aaaa(self, name: str) -> list[str]:
        super().aaaa(name)
        return []


@pytest.fixture(scope="module")
def dovecot() -> Iterator[Dovecot]:
    with running_dovecot() as server:
        yield server


@pytest.fixture
def fake() -> Iterator[FakeImap]:
    server = FakeImap()
    yield server
    server.close()


def services_with(tmp_path: Path, resolver: Any = None, **settings: Any) -> Services:
    if resolver is None:
        return make_services(tmp_path, f"sqlite:///{tmp_path / 'mailbridge.db'}", **settings)
    built = build_services(
        load_settings(
            data_dir=tmp_path / "var",
            database_url=f"sqlite:///{tmp_path / 'mailbridge.db'}",
            api_key=API_KEY,
            **settings,
        ),
        resolver=resolver,
    )
    upgrade(built.engine)
    return built


@pytest.fixture
def loopback(tmp_path: Path) -> Iterator[Services]:
    """The operator allows private hosts (the test servers are on loopback): only the password rules guard."""
    services = services_with(tmp_path, imap_allow_private_hosts=True, imap_password_envs=["MB_TENANT_PW"])
    seed(services)
    yield services
    services.close()


@pytest.fixture
def dns() -> Dns:
    return Dns()


@pytest.fixture
def guarded(tmp_path: Path, dns: Dns) -> Iterator[Services]:
    """The default: private hosts refused, names resolved through the injected resolver."""
    services = services_with(tmp_path, dns)
    seed(services)
    yield services
    services.close()


def client(services: Services) -> TestClient:
    return TestClient(create_app(services), headers={"Authorization": f"Bearer {API_KEY}"})


def force_mailbox(services: Services, name: str = "inbox", **values: Any) -> int:
    """A row written straight into the database: what the API now refuses, as old data or a bug might."""
    with transaction(services.sessions) as session:
        practice = directory.get_practice(session, "acme")
        row = Mailbox(
            practice_id=practice.id,
            name=name,
            last_uid=0,
            status="new",
            **(
                {"security": "none", "username": "desk@acme.test", "folder": "INBOX", "on_done": "move"}
                | values
            ),
        )
        session.add(row)
        session.flush()
        return row.id


# ---- password_env: the process's secrets ----------------------------------------------------------


def test_password_env_naming_our_secret_is_refused(loopback: Services, fake: FakeImap) -> None:
    body = {"host": "127.0.0.1", "port": fake.port, "security": "none", "username": "desk@acme.test"}
    with client(loopback) as api:
        for name in (
            "MAILBRIDGE_API_KEY",
            "MAILBRIDGE_MASTER_KEY",
            "MAILBRIDGE_TOKEN_SECRET",
            "HOME",
            "PATH",
        ):
            response = api.put(f"{BASE}/desk", json={**body, "password_env": name})
            assert response.status_code == 422, (name, response.text)
            assert response.json()["code"] == "password_env_not_allowed"
        assert api.put(f"{BASE}/desk", json={**body, "password_env": "MB_TENANT_PW"}).status_code == 201
    assert fake.connections == 0


def test_a_row_naming_our_secret_never_sends_it(
    loopback: Services, fake: FakeImap, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The reproduced attack: the global key as the IMAP password of a mailbox on a fake server."""
    monkeypatch.setenv("MAILBRIDGE_API_KEY", API_KEY)
    mailbox_id = force_mailbox(loopback, host="127.0.0.1", port=fake.port, password_env="MAILBRIDGE_API_KEY")

    async def scenario() -> None:
        running = Running(loopback)
        await until(lambda: mailbox_row(loopback, mailbox_id).status == "error", what="the mailbox refused")
        await running.stop()

    run(scenario)
    error = mailbox_row(loopback, mailbox_id).last_error or ""
    assert "imap_password_envs" in error and API_KEY not in error
    assert check_command(loopback, "acme", FAST) == 1
    assert "imap_password_envs" in capsys.readouterr().out
    assert fake.connections == 0 and API_KEY.encode() not in bytes(fake.received)


def test_a_sealed_password_is_never_returned_and_a_new_one_applies_without_restart(
    loopback: Services, dovecot: Dovecot, tmp_path: Path
) -> None:
    user = dovecot.add_user("sealed@imap.test")
    from tests.mailhelpers import open_conversation, reply_address

    conversation = open_conversation(loopback, participants=("alice",))
    to = reply_address(loopback, conversation, "alice")
    body = {"host": "127.0.0.1", "port": dovecot.port, "security": "none", "username": user}
    with client(loopback) as api:
        wrong = api.put(f"{BASE}/desk", json={**body, "password": "not-the-password-77"})
        assert wrong.status_code == 201 and wrong.json()["has_password"] is True
        assert "not-the-password-77" not in wrong.text and "password_sealed" not in wrong.text
        database = (tmp_path / "mailbridge.db").read_bytes()
        assert b"not-the-password-77" not in database  # sealed at rest
        with loopback.sessions() as session:
            (row,) = session.scalars(select(Mailbox))
            assert row.password is None and (row.password_sealed or "").startswith("mbs1.")
            mailbox_id = row.id

        async def scenario() -> None:
            running = Running(loopback, PATIENT)
            await until(
                lambda: mailbox_row(loopback, mailbox_id).status == "auth_failed", 30, what="auth_failed"
            )
            right = api.put(f"{BASE}/desk", json={**body, "password": PASSWORD})
            assert right.status_code == 200 and PASSWORD not in right.text
            await until(
                lambda: mailbox_row(loopback, mailbox_id).status == "ok", 30, what="the new password used"
            )
            dovecot.deliver(user, mail(sender="alice@client.test", delivered_to=to))
            await until(lambda: dovecot.count(user) == 0, 30, what="the mail read and moved")
            await running.stop()

        run(scenario)
        assert PASSWORD not in api.get(BASE).text


def test_plaintext_passwords_from_before_are_sealed(loopback: Services, dovecot: Dovecot) -> None:
    """Rows of an older version kept the password in clear: the poller's first read seals it, and
    ``mailbridge db upgrade`` seals every one left."""
    from mailbridge.access.credentials import reseal_legacy_passwords

    user = dovecot.add_user("legacy@imap.test")
    first = force_mailbox(
        loopback, "first", host="127.0.0.1", port=dovecot.port, username=user, password=PASSWORD
    )
    second = force_mailbox(
        loopback, "second", host="127.0.0.1", port=dovecot.port, username=user, password="x-1"
    )
    credentials = MailboxCredentials(loopback.sessions, loopback.keyring, ())
    assert credentials.password(first) == PASSWORD
    assert mailbox_row(loopback, first).password is None
    assert credentials.password(first) == PASSWORD  # now opened from the sealed value
    assert reseal_legacy_passwords(loopback.sessions, loopback.keyring) == 1
    row = mailbox_row(loopback, second)
    assert row.password is None and (row.password_sealed or "").startswith("mbs1.")

    async def scenario() -> None:
        running = Running(loopback)
        await until(
            lambda: mailbox_row(loopback, first).status == "ok", what="logged in with the sealed password"
        )
        await running.stop()

    run(scenario)


def test_a_sealed_password_moved_to_another_mailbox_does_not_open(loopback: Services, fake: FakeImap) -> None:
    with transaction(loopback.sessions) as session:
        practice = directory.get_practice(session, "acme")
        sealed = seal_password(session, loopback.keyring, practice.id, "theirs", "their-password")
    mailbox_id = force_mailbox(loopback, "mine", host="127.0.0.1", port=fake.port, password_sealed=sealed)

    async def scenario() -> None:
        running = Running(loopback)
        await until(lambda: mailbox_row(loopback, mailbox_id).status == "error", what="refused")
        await running.stop()

    run(scenario)
    assert "cannot be opened" in (mailbox_row(loopback, mailbox_id).last_error or "")
    assert fake.connections == 0


# ---- hosts: the network behind us -----------------------------------------------------------------


def test_hosts_on_the_network_behind_us_are_refused(guarded: Services, dns: Dns) -> None:
    dns.records |= {
        "internal.corp.test": ["10.1.2.3"],
        "metadata.google.internal": ["169.254.169.254"],
        "imap.public.test": [PUBLIC],
    }
    body = {"username": "desk@acme.test", "password": "pw-1"}
    with client(guarded) as api:
        for host in (
            "127.0.0.1",
            "localhost",
            "imap.localhost",
            "169.254.169.254",
            "[fd00:ec2::254]",
            "10.0.0.1",
            "[::ffff:127.0.0.1]",
            "[::1]",
            "internal.corp.test",
            "metadata.google.internal",
        ):
            response = api.put(f"{BASE}/desk", json={**body, "host": host})
            assert response.status_code == 422, (host, response.text)
            assert response.json()["code"] == "host_not_public" and response.json()["field"] == "host"
        for host in (PUBLIC, "imap.public.test", "not-yet-in-dns.test"):
            assert api.put(f"{BASE}/desk", json={**body, "host": host}).status_code in (200, 201), host


def test_dns_rebinding_is_caught_when_connecting(guarded: Services, dns: Dns, fake: FakeImap) -> None:
    """Public when configured, loopback when the poller connects: refused then, nothing sent."""
    dns.records["rebind.test"] = [PUBLIC]
    with client(guarded) as api:
        created = api.put(
            f"{BASE}/desk",
            json={"host": "rebind.test", "port": fake.port, "username": "u", "password": "pw-2"},
        )
        assert created.status_code == 201, created.text
    dns.records["rebind.test"] = ["127.0.0.1"]
    with guarded.sessions() as session:
        mailbox_id = session.scalars(select(Mailbox.id)).one()

    async def scenario() -> None:
        running = Running(guarded)
        await until(lambda: mailbox_row(guarded, mailbox_id).status == "error", what="refused at connect")
        await running.stop()

    run(scenario)
    assert "loopback" in (mailbox_row(guarded, mailbox_id).last_error or "")
    assert fake.connections == 0 and b"pw-2" not in bytes(fake.received)


def test_the_connection_goes_to_the_address_that_was_checked(fake: FakeImap) -> None:
    """No second look-up between check and connect: the checked address is dialled, the name is kept
    for TLS (the machine's resolver would not know this name anyway)."""

    class Checked:
        credentials: Any
        egress: Any

        def __init__(self) -> None:
            self.credentials = self
            self.egress = self
            self.asked: list[str] = []

        def password(self, mailbox_id: int) -> str:
            return "pw-3"

        def addresses(self, host: str) -> list[str]:
            self.asked.append(host)
            return ["127.0.0.1"]

    checked = Checked()
    box = MailboxConfig(
        1, 1, "m", "imap.pinned.test", fake.port, "tls", "u", None, None, "INBOX", None, "move"
    )

    async def scenario() -> None:
        connection = Connection(box, FAST, asyncio.Event(), Access(checked, checked))
        with pytest.raises(Exception) as raised:
            await connection.open()  # the fake speaks no TLS: the handshake fails, after connecting
        assert not isinstance(raised.value, ConfigError)
        await connection.close()

    asyncio.run(asyncio.wait_for(scenario(), 20))
    assert checked.asked == ["imap.pinned.test"] and fake.connections == 1
