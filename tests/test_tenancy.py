"""A practice never reaches another practice, the process's secrets or the network behind us (issue 11
#5, #6, #15; issue 15 #3): each attack performed through a public door (HTTP API, SMTP, the CLI) and
shown to fail. The IMAP side (password_env, hosts) is in test_tenancy_imap.py."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from alembic import command
from fastapi.testclient import TestClient
from sqlalchemy import select, text, update
from sqlalchemy.exc import IntegrityError

from mailbridge.access.egress import why_not_public
from mailbridge.api.app import create_app
from mailbridge.directory_import import load_directory
from mailbridge.domain import directory
from mailbridge.domain.db import MigrationRefused, alembic_config, make_engine, transaction
from mailbridge.domain.models import (
    ApiKey,
    InboundLog,
    Practice,
    PracticeDomain,
    QuarantineItem,
    Route,
    utcnow,
)
from mailbridge.replies import RELAY_DENIED, UNKNOWN_RECIPIENT
from mailbridge.wiring import Services
from tests.conftest import API_KEY, PRACTICE, USERS, make_services, seed
from tests.mailhelpers import live_server, reply_message, send

A = "/api/v1/practices/acme"
B = "/api/v1/practices/beta"
CLIENT_OF_A = "alice@client.test"
MAILBRIDGE = [sys.executable, "-m", "mailbridge.cli"]


def answer(reply: Any) -> tuple[int, bytes]:
    return reply.code, f"{reply.enhanced} {reply.text}".encode()


@pytest.fixture
def two(tmp_path: Path) -> Iterator[Services]:
    """Practice A (acme: reply.acme.test, acme.test approved) and practice B (beta: reply.beta.test)."""
    services = make_services(tmp_path, f"sqlite:///{tmp_path / 'mailbridge.db'}")
    seed(services)
    with transaction(services.sessions) as session:
        beta = {
            **PRACTICE,
            "name": "Beta Clinic",
            "reply_domain": "reply.beta.test",
            "notify_from": "n@beta.test",
        }
        staff = {k: v for k, v in USERS.items() if v["kind"] == "staff"}
        load_directory(session, {"practices": [{"slug": "beta", **beta, "users": staff}]})
    yield services
    services.close()


@pytest.fixture
def api(two: Services) -> Iterator[TestClient]:
    with TestClient(create_app(two), headers={"Authorization": f"Bearer {API_KEY}"}) as client:
        yield client


def cli(services: Services, *args: str) -> subprocess.CompletedProcess[str]:
    """The operator's door: the real command, on the test's database and data directory."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAILBRIDGE_")} | {
        "MAILBRIDGE_DATA_DIR": str(services.settings.data_dir),
        "MAILBRIDGE_DATABASE_URL": services.settings.effective_database_url,
    }
    return subprocess.run([*MAILBRIDGE, *args], capture_output=True, text=True, env=env, timeout=60)


def held(services: Services, practice: str) -> list[QuarantineItem]:
    with services.sessions() as session:
        pid = directory.get_practice(session, practice).id
        return list(session.scalars(select(QuarantineItem).where(QuarantineItem.practice_id == pid)))


# ---- routes and domains are owned (issue 11 #6) -----------------------------------------------------


def test_practice_b_cannot_put_a_route_on_a_domain_it_does_not_own(api: TestClient) -> None:
    body = {"roles": ["front_office"], "unknown_senders": "triage"}
    for address in ("desk@reply.acme.test", "frontdesk@acme.test", "ceo@bank.example", "x@REPLY.ACME.TEST"):
        response = api.put(f"{B}/routes/{address}", json=body)
        assert response.status_code == 422, (address, response.text)
        assert response.json()["code"] == "domain_not_owned"
        assert response.headers["content-type"].startswith("application/problem+json")
    assert api.put(f"{B}/routes/desk@reply.beta.test", json=body).status_code == 201  # its own reply domain
    assert api.put(f"{A}/routes/frontdesk@acme.test", json=body).status_code == 201  # approved for A
    assert api.get(f"{B}/domains").json()["items"] == [
        {"domain": "reply.beta.test", "kind": "reply", "source": "practice"}
    ]
    assert [d["domain"] for d in api.get(f"{A}/domains").json()["items"]] == ["reply.acme.test", "acme.test"]


def test_a_squatted_route_never_catches_the_other_practices_mail(two: Services, api: TestClient) -> None:
    """The attack as it was: B's routes on A's reply domain and on a stranger's domain (written
    before ownership was enforced). A's client writes to them: nothing reaches B's quarantine."""
    with transaction(two.sessions) as session:
        beta = directory.get_practice(session, "beta")
        for address in ("desk@reply.acme.test", "ceo@bank.example", "postmaster@bank.example"):
            session.add(
                Route(practice_id=beta.id, address=address, roles=["front_office"], unknown_senders="triage")
            )
    triage = {"roles": ["front_office"], "unknown_senders": "triage"}
    assert api.put(f"{A}/routes/frontdesk@acme.test", json=triage).status_code == 201
    with live_server(two) as server:
        to_a = reply_message(CLIENT_OF_A, "desk@reply.acme.test", "My records, please.", subject="Records")
        assert send(server, to_a, CLIENT_OF_A, "desk@reply.acme.test") == answer(UNKNOWN_RECIPIENT)
        for address in ("ceo@bank.example", "postmaster@bank.example"):
            msg = reply_message(CLIENT_OF_A, address, "Wire the money today.", subject="Payment")
            assert send(server, msg, CLIENT_OF_A, address) == answer(RELAY_DENIED)
        # A's own route still works: a stranger's mail to it is held for A's staff, not B's
        stranger = reply_message("mallory@evil.test", "frontdesk@acme.test", "Hello there.", subject="Hi")
        assert send(server, stranger, "mallory@evil.test", "frontdesk@acme.test")[0] == 250
    assert held(two, "beta") == []
    assert [h.route_address for h in held(two, "acme")] == ["frontdesk@acme.test"]
    assert api.get(f"{B}/quarantine").json()["items"] == []
    # the owner may take the squatted address for itself
    assert api.put(f"{A}/routes/desk@reply.acme.test", json=triage).status_code == 201
    assert "desk@reply.acme.test" not in [r["address"] for r in api.get(f"{B}/routes").json()["items"]]


def test_postmaster_only_for_owned_domains(two: Services) -> None:
    with transaction(two.sessions) as session:
        beta = directory.get_practice(session, "beta")
        session.add(Route(practice_id=beta.id, address="desk@acme.test", roles=["front_office"]))
    with live_server(two) as server:
        msg = reply_message("someone@else.test", "abuse@acme.test", "Spam report.", subject="Abuse")
        assert send(server, msg, "someone@else.test", "abuse@acme.test")[0] == 250
        msg = reply_message("someone@else.test", "abuse@unclaimed.test", "Spam report.", subject="Abuse")
        assert send(server, msg, "someone@else.test", "abuse@unclaimed.test") == answer(RELAY_DENIED)
    with two.sessions() as session:
        rows = list(session.scalars(select(InboundLog).order_by(InboundLog.received_at)))
        acme = directory.get_practice(session, "acme").id
    assert [(r.rcpt, r.practice_id, r.reason) for r in rows] == [
        ("abuse@acme.test", acme, "operator_mail"),  # A's operator, although B had a route there
        ("abuse…@unclaimed.test", None, "relay_denied"),
    ]


def test_a_held_message_on_a_foreign_domain_cannot_be_released(two: Services, api: TestClient) -> None:
    with transaction(two.sessions) as session:
        beta = directory.get_practice(session, "beta")
        inbound = InboundLog(practice_id=beta.id, door="smtp", rcpt="ceo@bank.example")
        session.add(inbound)
        session.flush()
        item = QuarantineItem(
            practice_id=beta.id,
            inbound_id=inbound.id,
            route_address="ceo@bank.example",
            reason="unknown_sender",
            from_address=CLIENT_OF_A,
        )
        session.add(item)
        session.flush()
        item_id = item.id
    response = api.post(f"{B}/quarantine/{item_id}/release?as=frontdesk", json={"client": None})
    assert response.status_code == 409 and response.json()["code"] == "domain_not_owned"
    assert api.post(f"{B}/quarantine/{item_id}/discard?as=frontdesk").status_code == 204


def test_reply_domains_are_unique(two: Services, api: TestClient) -> None:
    beta = {"name": "Beta", "notify_from": "n@beta.test", "locale": "en"}
    for domain in ("reply.acme.test", "REPLY.ACME.TEST", "acme.test"):
        response = api.put(B, json={**beta, "reply_domain": domain})
        assert response.status_code == 409, response.text
        assert response.json() | {"detail": "", "hint": ""} == {
            "type": "about:blank",
            "title": "Reply domain taken",
            "hint": "",
            "status": 409,
            "code": "reply_domain_taken",
            "detail": "",
            "field": "reply_domain",
        }
    assert api.put(B, json={**beta, "reply_domain": "reply.beta.test"}).status_code == 200
    with pytest.raises(IntegrityError), transaction(two.sessions) as session:  # and the database says so too
        session.add(Practice(slug="gamma", name="G", reply_domain="reply.acme.test", notify_from="n@g.test"))
    # an operator-approved domain cannot be given to a second practice either
    assert api.put("/api/v1/platform/practices/beta/domains/acme.test").json()["code"] == "domain_taken"


def test_tenant_settings_name_no_css_and_no_extra_header(api: TestClient) -> None:
    base = {"name": "Beta", "reply_domain": "reply.beta.test", "notify_from": "n@beta.test"}
    hostile = [
        {"brand_color": "red;background:url(https://tracker.example/p.gif)"},
        {"brand_color": "url(https://evil.example/x)"},
        {"brand_color": "#12345"},
        {"brand_color": "expression(alert(1))"},
        {"operator_address": "it@beta.test\r\nBcc: spy@evil.example"},
        {"operator_address": "IT <it@beta.test>"},
        {"dkim_selector": "../acme/mb202612"},  # names the key's file: never a path
        {"dkim_selector": "s1\r\nBcc: x"},
    ]
    for settings in hostile:
        response = api.put(B, json={**base, "settings": settings})
        # dkim_selector is read-only since keys live in the database: refused before any validation
        codes = ("invalid_settings", "dkim_selector_read_only") if "dkim_selector" in settings else ()
        assert response.status_code == 422 and response.json()["code"] in (codes or ("invalid_settings",)), (
            settings
        )
    for notify_from in (
        "n@beta.test\r\nBcc: spy@evil.example",
        "Beta <n@beta.test>",
        "n@beta.test, x@y.test",
    ):
        response = api.put(B, json={**base, "notify_from": notify_from})
        assert response.status_code == 422 and response.json()["field"] == "notify_from", notify_from
    ok = api.put(B, json={**base, "settings": {"brand_color": "#3B6", "operator_address": "it@beta.test"}})
    assert ok.status_code == 200 and ok.json()["settings"]["brand_color"] == "#3B6"


def test_operator_approves_domains_not_a_practice(
    two: Services, api: TestClient, capsys: pytest.CaptureFixture[str]
) -> None:
    from mailbridge.access import apikeys, commands

    with transaction(two.sessions) as session:
        _, key = apikeys.create(session, directory.get_practice(session, "beta"), "app")
    as_b = {"Authorization": f"Bearer {key}"}
    # B's own key cannot approve a domain for B, through any route
    refused = api.put("/api/v1/platform/practices/beta/domains/bank.example", headers=as_b)
    assert refused.status_code == 403 and refused.json()["code"] == "platform_key_required"
    # the operator can, on the command line (the real command once; then the functions it calls)
    added = cli(two, "domains", "add", "--practice", "beta", "Beta.Example")
    assert added.returncode == 0 and "beta.example: approved for practice beta" in added.stdout, added.stderr
    assert commands.domains_add(two, "beta", "acme.test") == 1  # another practice's domain
    assert "domain_taken" in capsys.readouterr().err
    routed = api.put(f"{B}/routes/desk@beta.example", json={"roles": ["biller"]}, headers=as_b)
    assert routed.status_code == 201
    assert commands.domains_list(two, "beta") == 0
    listed = capsys.readouterr().out
    assert (
        listed.splitlines()[0] == "reply.beta.test  reply domain" and "beta.example  approved (cli" in listed
    )
    assert commands.domains_remove(two, "beta", "beta.example", force=False) == 1
    busy = capsys.readouterr().err
    assert "domain_in_use" in busy and "desk@beta.example" in busy
    assert commands.domains_remove(two, "beta", "beta.example", force=True) == 0
    assert "desk@beta.example" in capsys.readouterr().err
    commands.domains_list(two, "beta")
    assert "warning: route desk@beta.example" in capsys.readouterr().out
    # the platform key may approve through the API as well
    assert api.put("/api/v1/platform/practices/beta/domains/beta.example").status_code == 201
    withdraw = api.delete("/api/v1/platform/practices/beta/domains/beta.example")
    assert withdraw.status_code == 409 and withdraw.json()["code"] == "domain_in_use"


# ---- scoped API keys (issue 15 #3) ---------------------------------------------------------------


def test_practice_keys_reach_their_practice_only(two: Services, api: TestClient) -> None:
    created = cli(two, "keys", "create", "--practice", "beta")
    assert created.returncode == 0, created.stderr
    key = created.stdout.strip().splitlines()[-1]
    assert key.startswith("mbk_") and len(key) == 47
    bare = TestClient(api.app)
    as_b = {"Authorization": f"Bearer {key}"}
    assert bare.get(f"{B}/routes", headers=as_b).status_code == 200
    assert (
        bare.put(f"{B}/routes/desk@reply.beta.test", json={"roles": ["biller"]}, headers=as_b).status_code
        == 201
    )
    unknown = bare.get("/api/v1/practices/nope/routes", headers=as_b)
    for path, method in [
        (f"{A}/routes", "GET"),
        (f"{A}", "GET"),
        (f"{A}/conversations?as=alice", "GET"),
        (f"{A}/mailboxes/x", "PUT"),  # even with no body at all: 404 before validation
        (f"{A}/quarantine/x/release?as=frontdesk", "POST"),
        (f"{A}/users/mallory", "PUT"),
    ]:
        response = bare.request(method, path, headers=as_b)
        assert response.status_code == 404, (path, response.text)
        assert response.json() | {"detail": ""} == unknown.json() | {"detail": ""}
        assert response.json()["code"] == "practice_not_found" and "acme" not in response.text
    for path in ("/metrics", "/api/v1/platform/practices/beta/domains/x.test"):
        response = bare.request("GET" if path == "/metrics" else "PUT", path, headers=as_b)
        assert response.status_code == 403 and response.json()["code"] == "platform_key_required"
    # the platform key keeps working everywhere
    assert api.get(f"{A}/routes").status_code == 200 and api.get("/metrics").status_code == 200
    listed = cli(two, "keys", "list")
    assert key not in listed.stdout and key[:12] in listed.stdout
    with two.sessions() as session:
        assert key not in str(session.execute(text("SELECT * FROM api_keys")).all())
        (row,) = session.scalars(select(ApiKey))
    assert row.last_used_at is not None
    revoked = cli(two, "keys", "revoke", row.id)
    assert revoked.returncode == 0, revoked.stderr
    gone = bare.get(f"{B}/routes", headers=as_b)
    assert gone.status_code == 401 and gone.json()["code"] == "unauthorized"


def test_read_keys_only_read(two: Services, api: TestClient) -> None:
    from mailbridge.access import apikeys

    with transaction(two.sessions) as session:
        _, key = apikeys.create(session, directory.get_practice(session, "beta"), "read")
    bare = TestClient(api.app, headers={"Authorization": f"Bearer {key}"})
    assert bare.get(f"{B}/routes").status_code == 200
    for method, path in [
        ("PUT", f"{B}/routes/desk@reply.beta.test"),
        ("DELETE", f"{B}/routes/desk@reply.beta.test"),
        ("POST", f"{B}/conversations"),
        ("PUT", B),
    ]:
        response = bare.request(method, path, json={"roles": ["biller"]})
        assert response.status_code == 403 and response.json()["code"] == "read_only_key", (method, path)
    assert bare.get(f"{A}/routes").status_code == 404


def test_last_used_is_written_at_most_once_a_minute(two: Services, api: TestClient) -> None:
    from mailbridge.access import apikeys

    with transaction(two.sessions) as session:
        row, key = apikeys.create(session, directory.get_practice(session, "beta"), "app")
        key_id = row.id
    bare = TestClient(api.app, headers={"Authorization": f"Bearer {key}"})

    def last_used() -> Any:
        with two.sessions() as session:
            return session.get_one(ApiKey, key_id).last_used_at

    assert bare.get(f"{B}/routes").status_code == 200
    first = last_used()
    assert first is not None
    for _ in range(3):
        bare.get(f"{B}/routes")
    assert last_used() == first  # no write per request
    with transaction(two.sessions) as session:
        session.execute(update(ApiKey).values(last_used_at=utcnow() - timedelta(minutes=2)))
    bare.get(f"{B}/routes")
    assert last_used() > first - timedelta(seconds=1)


def test_openapi_documents_the_key(api: TestClient) -> None:
    spec = TestClient(api.app).get("/openapi.json").json()  # served without a key (README says so)
    scheme = spec["components"]["securitySchemes"]["apiKey"]
    assert scheme["type"] == "http" and scheme["scheme"] == "bearer"
    assert "read_only_key" in scheme["description"] and "practice_not_found" in scheme["description"]
    assert spec["paths"]["/api/v1/practices/{practice}/routes"]["get"]["security"] == [{"apiKey": []}]
    # no key needed (the empty requirement); the platform key shows more
    assert spec["paths"]["/readyz"]["get"]["security"] == [{}, {"apiKey": []}]
    assert "security" not in spec["paths"]["/healthz"]["get"]


# ---- the small ones (issue 11 #15, issue 12 #15) -----------------------------------------------------


def test_non_ascii_bearer_is_401_not_500(api: TestClient) -> None:
    bare = TestClient(api.app, raise_server_exceptions=False)
    for value in ("Bearer clé-secrète".encode(), b"Bearer \xff\xfe", "Bearer ключ".encode(), b"Bearer \x01"):
        response = bare.get(f"{A}/routes", headers={"Authorization": value})
        assert response.status_code == 401, value
        assert response.headers["content-type"].startswith("application/problem+json")
        assert response.json()["code"] == "unauthorized"


def test_readyz_needs_no_key_and_says_nothing_sensitive(api: TestClient) -> None:
    bare = TestClient(api.app)
    ready = bare.get("/readyz")
    assert ready.status_code in (200, 503)
    body = ready.json()
    assert set(body) == {"ready", "checks"}
    for check in body["checks"].values():
        assert set(check) <= {"ok", "seconds", "error", "count"}
    assert "acme" not in ready.text and "@" not in ready.text
    assert bare.get("/metrics").status_code == 401
    assert bare.get("/docs").status_code == 404  # off by default: its assets come from a public CDN


def test_docs_only_when_the_operator_turns_them_on(tmp_path: Path) -> None:
    services = make_services(tmp_path, f"sqlite:///{tmp_path / 'mailbridge.db'}", api_docs=True)
    try:
        assert TestClient(create_app(services)).get("/docs").status_code == 200
    finally:
        services.close()


def test_database_files_are_private(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        path = tmp_path / "fresh" / "mailbridge.db"
        engine = make_engine(f"sqlite:///{path}")
        with engine.begin() as conn:
            conn.execute(text("CREATE TABLE t (x INTEGER)"))
            conn.execute(text("INSERT INTO t VALUES (1)"))
        with engine.connect() as conn:  # WAL files exist while a connection is open
            conn.execute(text("SELECT * FROM t")).all()
            files = [p for p in path.parent.iterdir() if p.name.startswith("mailbridge.db")]
            assert {p.name for p in files} >= {"mailbridge.db", "mailbridge.db-wal", "mailbridge.db-shm"}
            for file in files:
                assert stat.S_IMODE(file.stat().st_mode) == 0o600, file
        engine.dispose()
        # an existing, world-readable database (from an older version) is made private
        older = tmp_path / "old.db"
        older.write_bytes(b"")
        older.chmod(0o644)
        make_engine(f"sqlite:///{older}").dispose()
        assert stat.S_IMODE(older.stat().st_mode) == 0o600
    finally:
        os.umask(old)


def test_what_the_commands_write_is_private(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAILBRIDGE_")}
    data = tmp_path / "var"
    result = subprocess.run(
        ["sh", "-c", 'umask 022 && exec "$@"', "sh", *MAILBRIDGE, "db", "upgrade"],
        capture_output=True,
        text=True,
        env=env | {"MAILBRIDGE_DATA_DIR": str(data)},
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    modes = {p.relative_to(data).as_posix(): stat.S_IMODE(p.stat().st_mode) for p in data.rglob("*")}
    assert modes["mailbridge.db"] == 0o600 and modes["secrets"] == 0o700
    assert all(mode & 0o077 == 0 for mode in modes.values()), modes


def test_generated_api_key_is_private_from_the_first_byte(tmp_path: Path) -> None:
    """``serve --generate-api-key`` under a permissive umask; a bad master key then stops it right
    after the key is written (exit 2), so no server needs to run."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAILBRIDGE_")}
    data = tmp_path / "var"
    result = subprocess.run(
        ["sh", "-c", 'umask 000 && exec "$@"', "sh", *MAILBRIDGE, "serve", "--generate-api-key"],
        capture_output=True,
        text=True,
        env=env | {"MAILBRIDGE_DATA_DIR": str(data), "MAILBRIDGE_MASTER_KEY": "not-a-key"},
        timeout=60,
    )
    assert result.returncode == 2 and "master_key" in result.stderr, result.stderr
    key = data / "secrets" / "api.key"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600 and len(key.read_text().strip()) >= 40
    assert stat.S_IMODE(key.parent.stat().st_mode) == 0o700


def test_settings_refuse_our_own_variables_in_the_allow_list(tmp_path: Path) -> None:
    from mailbridge.settings import SettingsError, load_settings

    with pytest.raises(SettingsError, match="imap_password_envs"):
        load_settings(data_dir=tmp_path, imap_password_envs=["MAILBRIDGE_API_KEY"])
    with pytest.raises(SettingsError, match="api_key"):
        load_settings(data_dir=tmp_path, api_key="clé")


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1",
        "10.1.2.3",
        "172.16.0.1",
        "192.168.1.1",
        "169.254.169.254",  # cloud metadata
        "100.100.100.200",  # Alibaba metadata, shared address space
        "192.0.0.192",  # Oracle metadata
        "0.0.0.0",
        "224.0.0.1",
        "::1",
        "::",
        "fd00:ec2::254",  # AWS metadata over IPv6
        "fe80::1",
        "::ffff:127.0.0.1",
        "::ffff:169.254.169.254",
        "2002:a00:1::",  # 6to4 of 10.0.0.1
        "64:ff9b::a9fe:a9fe",  # NAT64 of 169.254.169.254
        "2001:db8::1",
    ],
)
def test_non_public_addresses(address: str) -> None:
    assert why_not_public(address) is not None


def test_public_addresses() -> None:
    assert [why_not_public(a) for a in ("93.184.216.34", "2606:2800:220:1::1", "64:ff9b::5db8:d822")] == [
        None
    ] * 3


# ---- upgrading existing data (migration 0004) -------------------------------------------------------


def _at_0002(tmp_path: Path) -> Any:
    engine = make_engine(f"sqlite:///{tmp_path / 'old.db'}")
    command.upgrade(alembic_config(engine), "0002")
    return engine


def _practice_row(conn: Any, pid: int, slug: str, reply_domain: str, settings: str = "{}") -> None:
    conn.execute(
        text(
            "INSERT INTO practices (id, slug, name, reply_domain, notify_from, locale, settings, created_at, "
            "updated_at) VALUES (:id, :slug, :slug, :domain, :nf, 'en', :settings, :now, :now)"
        ),
        {
            "id": pid,
            "slug": slug,
            "domain": reply_domain,
            "nf": f"n@{slug}.test",
            "settings": settings,
            "now": utcnow(),
        },
    )


def _route_row(conn: Any, pid: int, address: str) -> None:
    conn.execute(
        text(
            "INSERT INTO routes (practice_id, address, staff, roles, kind, unknown_senders) "
            "VALUES (:pid, :address, '[]', '[\"admin\"]', 'private', 'reject')"
        ),
        {"pid": pid, "address": address},
    )


def test_migration_stops_on_shared_reply_domains_and_names_them(tmp_path: Path) -> None:
    engine = _at_0002(tmp_path)
    with engine.begin() as conn:
        _practice_row(conn, 1, "alpha", "reply.shared.test")
        _practice_row(conn, 2, "bravo", "reply.shared.test")
        _practice_row(conn, 3, "charlie", "reply.charlie.test")
    with pytest.raises(MigrationRefused, match=r"reply\.shared\.test by alpha, bravo"):
        command.upgrade(alembic_config(engine), "head")
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAILBRIDGE_")}
    upgrade = subprocess.run(  # what the operator sees: one line, exit 2, nothing changed
        [*MAILBRIDGE, "db", "upgrade"],
        capture_output=True,
        text=True,
        env=env | {"MAILBRIDGE_DATA_DIR": str(tmp_path / "var"), "MAILBRIDGE_DATABASE_URL": str(engine.url)},
        timeout=60,
    )
    assert upgrade.returncode == 2 and len(upgrade.stderr.strip().splitlines()) == 1, upgrade.stderr
    assert "reply.shared.test by alpha, bravo" in upgrade.stderr and "Traceback" not in upgrade.stderr
    with engine.begin() as conn:  # the operator fixes it, and runs it again
        conn.execute(text("UPDATE practices SET reply_domain = 'reply.bravo.test' WHERE slug = 'bravo'"))
    command.upgrade(alembic_config(engine), "head")
    engine.dispose()


def test_migration_keeps_honest_routes_and_silences_squatted_ones(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    engine = _at_0002(tmp_path)
    with engine.begin() as conn:
        _practice_row(
            conn, 1, "acme", "reply.acme.test", '{"brand_color": "red;background:url(https://x.example)"}'
        )
        _practice_row(
            conn,
            2,
            "beta",
            "reply.beta.test",
            '{"brand_color": "#abc", "operator_address": "a@b.test\\r\\nBcc: x@y.test", "dkim_selector": "../a/s"}',
        )
        _route_row(conn, 1, "frontdesk@acme.test")  # A alone on acme.test: approved for A
        _route_row(conn, 2, "desk@reply.acme.test")  # B on A's reply domain: inert
        _route_row(conn, 1, "x@shared.test")  # two practices on one domain: neither
        _route_row(conn, 2, "y@shared.test")
        _route_row(conn, 2, "desk@reply.beta.test")  # B on its own reply domain: nothing to do
    with caplog.at_level("WARNING", logger="mailbridge.migrations"):
        command.upgrade(alembic_config(engine), "head")
    with engine.connect() as conn:
        approved = conn.execute(text("SELECT practice_id, domain, source FROM practice_domains")).all()
        settings = dict(conn.execute(text("SELECT slug, settings FROM practices")).all())
    assert approved == [(1, "acme.test", "migration")]
    warnings = " ".join(r.getMessage() for r in caplog.records)
    assert (
        "desk@reply.acme.test of practice beta" in warnings
        and "shared.test has routes of several" in warnings
    )
    assert "practice acme: invalid brand_color removed" in warnings
    assert "practice beta: invalid operator_address, dkim_selector removed" in warnings
    assert "brand_color" not in settings["acme"] and '"#abc"' in settings["beta"]
    engine.dispose()
    # what the service does with it: A's route works, B's squat on A's reply domain does not
    from sqlalchemy.orm import Session

    from mailbridge.inbound.envelope import decide_recipient
    from mailbridge.inbound.tokens import TokenIssuer

    engine = make_engine(f"sqlite:///{tmp_path / 'old.db'}")
    with Session(engine) as session:
        issuer = TokenIssuer(b"k" * 32)
        assert decide_recipient(session, issuer, b"v", "frontdesk@acme.test").reason == "route"
        assert decide_recipient(session, issuer, b"v", "desk@reply.acme.test").reason == "token_invalid"
        assert decide_recipient(session, issuer, b"v", "x@shared.test").reason == "relay_denied"
        assert session.scalars(select(PracticeDomain.domain)).all() == ["acme.test"]
    engine.dispose()
