"""Issue 20 item 3: one holder per address in a practice, through HTTP, the import CLI and mail.

Addresses (primary and alternates) are compared in one normal form (``domain.addresses.normalise``:
the whole address without regard to case; dots and +tags significant), the form sender recognition
matches a From header in. A second holder is 409 ``email_taken`` naming the first. A duplicate made
before the rule (migration 0017 keeps and reports it) is never silently given to one of its holders:
mail from it is ``ambiguous_sender``.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytest
from alembic import command
from sqlalchemy import select, text

from mailbridge.domain.addresses import normalise
from mailbridge.domain.db import alembic_config, make_engine, transaction
from mailbridge.domain.models import Conversation, InboundLog, User, UserAddress
from tests.mailhelpers import live_server, reply_message, send

BASE = "/api/v1/practices/acme"


def client(email: str, **more: Any) -> dict[str, Any]:
    return {"email": email, "name": "Someone", "kind": "client"} | more


@pytest.mark.parametrize(
    ("body", "holder", "address", "field"),
    [
        # a client given a staff member's address
        (client("dr.smith@acme.test"), "dr-smith", "dr.smith@acme.test", "email"),
        # another client's address in different case
        (client("ALICE@CLIENT.test"), "alice", "alice@client.test", "email"),
        (client("Bob@Client.Test"), "bob", "bob@client.test", "email"),
        # another client's alternate address, as a primary or as an alternate
        (client("alice.work@client.test"), "alice", "alice.work@client.test", "email"),
        (
            client("zoe@client.test", alt_emails=["Alice.Work@client.test"]),
            "alice",
            "alice.work@client.test",
            "alt_emails",
        ),
    ],
)
def test_an_address_someone_holds_is_409_naming_them(
    seeded: Any, api: Any, body: dict[str, Any], holder: str, address: str, field: str
) -> None:
    refused = api.put(f"{BASE}/users/zoe", json=body)
    problem = refused.json()
    assert refused.status_code == 409, refused.text
    assert (problem["code"], problem["holder"], problem["address"], problem["field"]) == (
        "email_taken",
        holder,
        address,
        field,
    )
    assert api.get(f"{BASE}/users/zoe").status_code == 404  # nothing written
    # an existing user taking it is refused just the same, and keeps what they had
    assert api.put(f"{BASE}/users/dave", json=body).json()["code"] == "email_taken"
    assert api.get(f"{BASE}/users/dave").json()["email"] == "dave@client.test"


def test_a_user_keeps_their_own_addresses_and_a_freed_address_can_be_taken(seeded: Any, api: Any) -> None:
    again = api.put(
        f"{BASE}/users/alice", json=client("Alice@Client.test", alt_emails=["ALICE.WORK@client.test"])
    )
    assert again.status_code == 200, again.text
    assert again.json()["alt_emails"] == ["alice.work@client.test"]
    # dots and +tags are significant: these are other people's addresses
    for other in ("a.lice@client.test", "alice+x@client.test"):
        assert api.put(f"{BASE}/users/zoe", json=client(other)).status_code in (200, 201)
    # alice gives up her work address; then it is free
    assert api.put(f"{BASE}/users/alice", json=client("alice@client.test")).status_code == 200
    taken = api.put(
        f"{BASE}/users/dave", json=client("dave@client.test", alt_emails=["alice.work@client.test"])
    )
    assert taken.status_code == 200 and taken.json()["alt_emails"] == ["alice.work@client.test"]
    # practices are separate directories: another practice's user may hold the same address
    other = {"name": "Other", "reply_domain": "reply.other.test", "notify_from": "n@other.test"}
    assert api.put("/api/v1/practices/other", json=other).status_code == 201
    assert api.put("/api/v1/practices/other/users/alice", json=client("alice@client.test")).status_code == 201


def test_the_import_cli_refuses_a_duplicate_and_imports_nothing(
    tmp_path: Path, backend: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from mailbridge.cli import main

    if backend != "sqlite":
        pytest.skip("the CLI is exercised on SQLite")
    monkeypatch.setenv("MAILBRIDGE_DATA_DIR", str(tmp_path / "var"))
    practice = {
        "slug": "imp",
        "name": "Imported",
        "reply_domain": "reply.imp.test",
        "notify_from": "n@imp.test",
    }
    users = {
        "c00": {"email": "c00@client.test", "name": "C Zero", "kind": "client"},
        "c01": {"email": "C00@CLIENT.test", "name": "C One", "kind": "client"},
    }
    path = tmp_path / "dir.json"
    path.write_text(json.dumps({"practices": [practice | {"users": users}]}))
    assert main(["import", str(path)]) == 2
    err = capsys.readouterr().err
    assert "email_taken" in err and "'c01'" in err and "'c00'" in err
    users.pop("c01")
    path.write_text(json.dumps({"practices": [practice | {"users": users}]}))
    assert main(["import", str(path)]) == 0  # the first attempt left nothing behind


def test_one_normalisation_for_the_directory_and_sender_recognition(seeded: Any, api: Any) -> None:
    assert normalise(" <Alice@Client.TEST> ") == "alice@client.test"
    assert normalise("a.lice+x@client.test") == "a.lice+x@client.test"
    with seeded.sessions() as session:
        alice = session.scalar(select(User).where(User.external_id == "alice"))
        assert alice is not None and alice.owns_address("ALICE.Work@CLIENT.test")


# ---- mail ------------------------------------------------------------------------------------------


@pytest.fixture
def routed(seeded: Any, api: Any) -> Any:
    for address, triage in (("frontdesk@acme.test", "triage"), ("billing@acme.test", "reject")):
        route = {"roles": ["front_office" if triage == "triage" else "biller"], "unknown_senders": triage}
        assert api.put(f"{BASE}/routes/{address}", json=route).status_code == 201
    with live_server(seeded) as server:
        yield server


def _inbound(services: Any) -> list[tuple[str | None, str | None, Any]]:
    with services.sessions() as session:
        rows = session.scalars(select(InboundLog).order_by(InboundLog.received_at)).all()
        return [(r.state.value, r.reason, r.details.get("holders")) for r in rows]


def test_a_sender_in_any_case_is_recognised(seeded: Any, routed: Any) -> None:
    msg = reply_message("ALICE@Client.test", "billing@acme.test", "A question about my invoice.")
    assert send(routed, msg, "alice@client.test", "billing@acme.test")[0] == 250
    with seeded.sessions() as session:
        (conversation,) = session.scalars(select(Conversation)).all()
        assert sorted(p.user.external_id for p in conversation.participants) == ["alice", "billing"]


def _duplicate_from_before(services: Any) -> None:
    """What migration 0017 leaves of a duplicate made earlier: both rows kept, neither keyed."""
    with transaction(services.sessions) as session:
        alice = session.scalar(select(User).where(User.external_id == "alice"))
        dave = session.scalar(select(User).where(User.external_id == "dave"))
        assert alice is not None and dave is not None
        for row in alice.addresses:
            if row.address == "alice@client.test":
                row.address_key = None
        session.add(UserAddress(user_id=dave.id, practice_id=dave.practice_id, address="alice@client.test"))


def test_mail_from_a_duplicate_from_before_is_attributed_to_nobody(
    seeded: Any, api: Any, routed: Any
) -> None:
    _duplicate_from_before(seeded)
    refused = reply_message("alice@client.test", "billing@acme.test", "A question about my invoice.")
    assert send(routed, refused, "alice@client.test", "billing@acme.test")[0] == 550
    held = reply_message("alice@client.test", "frontdesk@acme.test", "Can I book Tuesday?")
    assert send(routed, held, "alice@client.test", "frontdesk@acme.test")[0] == 250
    assert _inbound(seeded) == [
        ("rejected", "ambiguous_sender", ["alice", "dave"]),
        ("quarantined", "ambiguous_sender", ["alice", "dave"]),
    ]
    (item,) = api.get(f"{BASE}/quarantine").json()["items"]
    assert item["reason"] == "ambiguous_sender" and "more than one person" in item["reason_text"]
    # the release does not guess either: staff name the client
    guessed = api.post(f"{BASE}/quarantine/{item['id']}/release?as=frontdesk", json={})
    assert guessed.json()["code"] == "client_required"
    # the app resolves it: dave gets his own address back, and alice's next sync keys hers again
    assert api.put(f"{BASE}/users/alice", json=client("alice@client.test")).json()["code"] == "email_taken"
    assert api.put(f"{BASE}/users/dave", json=client("dave@client.test")).status_code == 200
    assert api.put(f"{BASE}/users/alice", json=client("alice@client.test")).status_code == 200
    with seeded.sessions() as session:
        keys = session.scalars(
            select(UserAddress.address_key).where(UserAddress.address == "alice@client.test")
        )
        assert list(keys) == ["alice@client.test"]


def test_migration_0017_keeps_and_reports_duplicates(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'old.db'}")
    command.upgrade(alembic_config(engine), "0016")
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO practices (id, slug, name, reply_domain, notify_from, locale, settings, created_at, "
                "updated_at) "
                "VALUES (1, 'acme', 'Acme', 'reply.acme.test', 'n@acme.test', 'en', '{}', '2026-01-01', '2026-01-01')"
            )
        )
        for uid, ext, kind in ((1, "dr-smith", "staff"), (2, "c00", "client"), (3, "c01", "client")):
            conn.execute(
                text(
                    "INSERT INTO users (id, practice_id, external_id, email, name, locale, kind, active, "
                    "portal_account, created_at, updated_at) VALUES (:id, 1, :ext, 'x', :ext, 'en', :kind, "
                    "1, 1, '2026-01-01', '2026-01-01')"
                ),
                {"id": uid, "ext": ext, "kind": kind},
            )
        for uid, address in ((1, "dr.smith@acme.test"), (2, "c00@client.test"), (3, "c00@client.test")):
            conn.execute(
                text(
                    'INSERT INTO user_addresses (user_id, practice_id, address, "primary") VALUES (:u, 1, :a, 1)'
                ),
                {"u": uid, "a": address},
            )
    with caplog.at_level(logging.WARNING, logger="mailbridge.migrations"):
        command.upgrade(alembic_config(engine), "0017")
    (warning,) = [r.getMessage() for r in caplog.records if "duplicate_address" in r.getMessage()]
    assert "c00@client.test is held by c00, c01" in warning and "practice acme" in warning
    with engine.connect() as conn:
        rows = conn.execute(text("SELECT user_id, address_key FROM user_addresses ORDER BY user_id")).all()
    assert [tuple(r) for r in rows] == [(1, "dr.smith@acme.test"), (2, None), (3, None)]
    engine.dispose()
