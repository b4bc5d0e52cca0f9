"""Shared fixtures: a migrated database on SQLite and on PostgreSQL, services, an API client, a seeded practice."""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, text

from mailbridge.domain.db import make_engine, transaction, upgrade
from mailbridge.domain.models import Base
from mailbridge.inbound.dns import StaticResolver
from mailbridge.settings import load_settings
from mailbridge.wiring import Services, build_services
from tests.s3peer import s3_peer  # noqa: F401 (a session fixture: one S3 server on loopback)

PG_URL = os.environ.get("MAILBRIDGE_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
SHARED = Path(__file__).resolve().parent.parent.parent / "shared"
API_KEY = "test-key-" + "x" * 24
TEST_PASSWORD_ENVS = ["MB_TEST_IMAP_PASSWORD", "MB_TEST_NEW_PASSWORD", "MB_TEST_UNSET_PASSWORD", "DESK_PW"]

# A static DNS table: the tests never ask the machine's resolver. Clients' domains publish SPF for
# loopback, so mail from 127.0.0.1 passes SPF aligned, as it would from the client's real provider.
DNS_TABLE: dict[str, list[str]] = {
    "client.test": ["v=spf1 ip4:127.0.0.1 ip6:::1 -all"],
    "acme.test": ["v=spf1 ip4:127.0.0.1 -all"],
    "_dmarc.client.test": ["v=DMARC1; p=reject"],
    "strict.test": ["v=spf1 -all"],
    "_dmarc.strict.test": ["v=DMARC1; p=reject"],
    "nodmarc.test": ["v=spf1 -all"],  # an explicit SPF fail for every host, and no DMARC record
}


def static_resolver() -> StaticResolver:
    return StaticResolver(DNS_TABLE)


def pg_unavailable() -> str | None:
    """None when PostgreSQL answers at PG_URL, else why not (the tests skip, the benchmarks say so)."""
    try:
        engine = create_engine(PG_URL, connect_args={"connect_timeout": 3})
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        engine.dispose()
        return None
    except Exception as exc:
        return f"PostgreSQL not reachable at {PG_URL}: {type(exc).__name__}"


def _pg_available() -> bool:
    return pg_unavailable() is None


@pytest.fixture(scope="session")
def pg_schema() -> Iterator[str]:
    """One throwaway schema per test run, so parallel runs and leftovers never collide."""
    if not _pg_available():
        if os.environ.get("CI"):
            pytest.fail(f"PostgreSQL is required in CI but not reachable at {PG_URL}")
        pytest.skip(f"PostgreSQL not reachable at {PG_URL}")
    schema = f"mbtest_{secrets.token_hex(4)}"
    admin = create_engine(PG_URL)
    with admin.begin() as conn:
        conn.execute(text(f"CREATE SCHEMA {schema}"))
    engine = make_engine(PG_URL, connect_args={"options": f"-csearch_path={schema}"})
    upgrade(engine)
    engine.dispose()
    yield schema
    with admin.begin() as conn:
        conn.execute(text(f"DROP SCHEMA {schema} CASCADE"))
    admin.dispose()


def pg_url_for(schema: str) -> str:
    return f"{PG_URL}?options=-csearch_path%3D{schema}"


def _truncate_pg(schema: str) -> None:
    engine = create_engine(PG_URL)
    names = ", ".join(f"{schema}.{t.name}" for t in Base.metadata.sorted_tables)
    with engine.begin() as conn:
        conn.execute(text(f"TRUNCATE {names} RESTART IDENTITY CASCADE"))
    engine.dispose()


def make_services(tmp_path: Path, database_url: str, **overrides: Any) -> Services:
    settings = load_settings(
        data_dir=tmp_path / "var",
        database_url=database_url,
        api_key=API_KEY,
        app_url="https://app.example.test",
        **(
            {
                "smtp_listen": "127.0.0.1:0",
                "http_listen": "127.0.0.1:0",
                # the test IMAP servers listen on loopback, and tests name these variables; the
                # tests of the refusals (test_tenancy*.py) build services without either
                "imap_allow_private_hosts": True,
                "imap_password_envs": TEST_PASSWORD_ENVS,
            }
            | overrides
        ),
    )
    services = build_services(settings, resolver=static_resolver())
    upgrade(services.engine)
    return services


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def services(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Services]:
    if backend == "postgres":
        schema = request.getfixturevalue("pg_schema")
        _truncate_pg(schema)
        svc = make_services(tmp_path, pg_url_for(schema))
    else:
        svc = make_services(tmp_path, f"sqlite:///{tmp_path / 'mailbridge.db'}")
    yield svc
    svc.close()


@pytest.fixture
def sqlite_services(tmp_path: Path) -> Iterator[Services]:
    svc = make_services(tmp_path, f"sqlite:///{tmp_path / 'mailbridge.db'}")
    yield svc
    svc.close()


@pytest.fixture
def api(services: Services) -> Iterator[Any]:
    from fastapi.testclient import TestClient

    from mailbridge.api.app import create_app

    with TestClient(create_app(services), headers={"Authorization": f"Bearer {API_KEY}"}) as client:
        yield client


PRACTICE = {
    "name": "Acme Counselling",
    "reply_domain": "reply.acme.test",
    "notify_from": "notify@acme.test",
    "locale": "en",
    "settings": {"min_body_chars": 10},
}

USERS: dict[str, dict[str, Any]] = {
    "dr-smith": {"email": "dr.smith@acme.test", "name": "Dr Alex Smith", "kind": "staff", "role": "provider"},
    "dr-jones": {"email": "dr.jones@acme.test", "name": "Dr Sam Jones", "kind": "staff", "role": "provider"},
    "billing": {"email": "billing@acme.test", "name": "Bea Biller", "kind": "staff", "role": "biller"},
    "frontdesk": {"email": "desk@acme.test", "name": "Fran Desk", "kind": "staff", "role": "front_office"},
    "alice": {
        "email": "alice@client.test",
        "alt_emails": ["alice.work@client.test"],
        "name": "Alice Martin",
        "kind": "client",
    },
    "bob": {"email": "bob@client.test", "name": "Bob Durand", "kind": "client", "locale": "fr"},
    "carol": {"email": "carol@client.test", "name": "Carol Petit", "kind": "client", "active": False},
    "dave": {"email": "dave@client.test", "name": "Dave Outsider", "kind": "client"},
}


def seed(services: Services, practice: str = "acme") -> None:
    """The practice used across tests, loaded through the same import path as `mailbridge import`."""
    from mailbridge.directory_import import load_directory

    with transaction(services.sessions) as session:
        load_directory(
            session,
            {
                "practices": [
                    {
                        "slug": practice,
                        **PRACTICE,
                        "reply_domain": f"reply.{practice}.test",  # one practice per reply domain
                        "domains": [f"{practice}.test"],  # approved by the operator: routes live there
                        "users": USERS,
                        "companies": {"bakery": {"name": "Acme Bakery"}, "garage": {"name": "Garage Ltd"}},
                        "favorites": [
                            ["dr-smith", "bakery"],
                            ["billing", "bakery"],
                            ["alice", "bakery"],
                            ["bob", "bakery"],
                        ],
                        "friendships": [["dr-smith", "dr-jones", "accepted"]],
                    }
                ]
            },
        )


@pytest.fixture
def seeded(services: Services) -> Services:
    seed(services)
    return services


def shared_corpora() -> Path:
    path = SHARED / "corpora"
    if not path.is_dir():
        pytest.skip("../shared/corpora is absent (a user's fresh clone): corpus tests need it")
    return path
