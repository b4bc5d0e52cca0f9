"""Permanent deletion erases every copy (finding 14): after DELETE no file under the data dir, the SQLite
database and its journal included, holds a word of the message, and the API shows nothing of it.

The mail comes in over SMTP, is held, released and deleted over HTTP, as an attacker reading the disk
later (a backup, a stolen volume) would find it.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from mailbridge.domain.models import (
    Attachment,
    AuditEvent,
    InboundLog,
    Outbox,
    OutboxKind,
    OutboxState,
    QuarantineItem,
)
from mailbridge.wiring import Services
from tests.conftest import API_KEY, make_services, seed
from tests.mailhelpers import live_server, open_conversation, reply_address, reply_message, send

BASE = "/api/v1/practices/acme"
UNALIGNED = "relay@elsewhere.test"  # nothing aligned with the From: a private conversation holds it
BODY_WORD = "Quokka7781zebra"
HIDDEN_WORD = "Pangolin5521heron"
FILE_WORD = "Axolotl3390marten"
SUBJECT_WORD = "Narwhal4404ibis"
WORDS = (BODY_WORD, HIDDEN_WORD, FILE_WORD, SUBJECT_WORD)


@pytest.fixture
def world(tmp_path: Path) -> Iterator[tuple[Services, Any, Any]]:
    """SQLite inside the data dir, as ``make run`` keeps it: the database is searched too."""
    from fastapi.testclient import TestClient

    from mailbridge.api.app import create_app

    data = tmp_path / "var"
    services = make_services(tmp_path, f"sqlite:///{data / 'mailbridge.db'}")
    seed(services)
    with (
        live_server(services) as server,
        TestClient(create_app(services), headers={"Authorization": f"Bearer {API_KEY}"}) as api,
    ):
        yield services, server, api
    services.close()


def stored_raw(services: Any, word: str) -> list[str]:
    """Raw copies in the object store (decrypted through the vault) that contain *word*."""
    keys = [info.key for info in services.vault.objects.list("raw/")]
    return [key for key in keys if word.encode() in services.vault.read_bytes(key)]


def files_containing(root: Path, word: str) -> list[str]:
    needle = word.encode()
    return sorted(
        str(path.relative_to(root))
        for path in root.rglob("*")
        if path.is_file() and needle in path.read_bytes()
    )


def staff_reply(address: str) -> Any:
    msg = reply_message(
        "dr.smith@acme.test",
        address,
        f"Results attached: {BODY_WORD} levels are normal.\n\n"
        f"On Sat, Nov 21, 2026 at 9:00 AM Alice Martin <alice@client.test> wrote:\n> {HIDDEN_WORD}?\n",
        subject=f"Re: {SUBJECT_WORD}",
    )
    msg.add_attachment(
        f"Lab notes: {FILE_WORD}\n".encode(), maintype="text", subtype="plain", filename="notes.txt"
    )
    return msg


def held_id(api: Any) -> str:
    (item,) = api.get(f"{BASE}/quarantine").json()["items"]
    return str(item["id"])


def test_deleting_a_released_email_reply_leaves_no_copy(world: Any) -> None:
    services, server, api = world
    data = services.settings.data_dir
    conv = open_conversation(services, subject="Lab results")
    address = reply_address(services, conv, "dr-smith")
    assert send(server, staff_reply(address), UNALIGNED, address)[0] == 250
    assert files_containing(data, BODY_WORD)  # held: the raw mail is on disk, as it must be
    released = api.post(f"{BASE}/quarantine/{held_id(api)}/release?as=frontdesk", json={})
    assert released.status_code == 201, released.text
    message = released.json()
    assert BODY_WORD in message["body"] and [a["filename"] for a in message["attachments"]] == ["notes.txt"]
    attachment = message["attachments"][0]["id"]

    assert api.delete(f"{BASE}/messages/{message['id']}?as=dr-smith").status_code == 204

    for word in WORDS:
        assert files_containing(data, word) == [], word
    items = api.get(f"{BASE}/conversations/{conv}/messages?as=dr-smith").json()["items"]
    assert [m["id"] for m in items if m["id"] == message["id"]] == []
    assert api.get(f"{BASE}/attachments/{attachment}?as=dr-smith").status_code == 404
    (item,) = api.get(f"{BASE}/quarantine?state=released").json()["items"]
    assert (item["subject"], item["from"], item["preview"], item["attachments"]) == ("", "", None, [])
    log = api.get(f"{BASE}/inbound").json()["items"]
    assert [(r["from"], r["message_id"], r["auth_results"], r["mail_from"]) for r in log] == [
        (None, None, None, "")
    ]
    assert log[0]["state"] == "posted" and log[0]["details"] == {"erased": True}
    with services.sessions() as session:
        assert session.scalars(select(Attachment)).all() == []
        actions = session.scalars(select(AuditEvent.action).order_by(AuditEvent.id)).all()
    assert actions == ["quarantine_released", "message_deleted"]  # who did what stays, without content


def test_deleting_a_conversation_discards_and_erases_mail_still_held_for_it(world: Any) -> None:
    services, server, api = world
    data = services.settings.data_dir
    conv = open_conversation(services, subject="Lab results")
    address = reply_address(services, conv, "dr-smith")
    assert send(server, staff_reply(address), UNALIGNED, address)[0] == 250
    item = held_id(api)
    refused = reply_message("dr.smith@acme.test", address, f"#note\n{HIDDEN_WORD}")
    refused.replace_header("From", "someone@elsewhere.test")  # not the token owner: refused, kept a while
    assert send(server, refused, UNALIGNED, address)[0] == 550
    # Both raw copies are kept, sealed (encryption at rest): the word is in them, in no file in clear.
    assert len(stored_raw(services, HIDDEN_WORD)) == 2
    assert files_containing(data, HIDDEN_WORD) == []

    assert api.delete(f"{BASE}/conversations/{conv}?as=dr-smith").status_code == 204

    for word in WORDS:
        assert files_containing(data, word) == [], word
    assert stored_raw(services, HIDDEN_WORD) == []
    assert list(services.vault.objects.list("raw/")) == []
    assert api.get(f"{BASE}/quarantine").json()["items"] == []
    (discarded,) = api.get(f"{BASE}/quarantine?state=discarded").json()["items"]
    assert (
        discarded["id"] == item and discarded["subject"] == "" and discarded["decided_by"] == "staff:dr-smith"
    )
    with services.sessions() as session:
        rows = session.scalars(select(InboundLog)).all()
        assert [(r.raw_ref, r.from_header) for r in rows] == [(None, None), (None, None)]
        assert session.get_one(QuarantineItem, item).state == "discarded"


def test_deleting_a_conversation_erases_the_file_names_its_notices_named(world: Any) -> None:
    """A reply whose file was withheld is posted, and its sender gets a notice naming the file; the
    notice's payload kept the name (and the email's Message-ID) after the conversation was deleted."""
    services, server, api = world
    data = services.settings.data_dir
    conv = open_conversation(services, subject="Lab results")
    address = reply_address(services, conv, "alice")
    msg = reply_message("alice@client.test", address, "Here is the program you asked about.")
    msg.add_attachment(
        b"MZ\x90\x00" + b"\x00" * 60,
        maintype="application",
        subtype="octet-stream",
        filename=f"{FILE_WORD}.exe",
    )
    assert send(server, msg, "alice@client.test", address)[0] == 250
    assert files_containing(data, FILE_WORD)  # the message and the notice, in the database
    with services.sessions() as session:
        notice = session.scalars(select(Outbox).where(Outbox.kind == OutboxKind.notice)).one()
        assert any(FILE_WORD in f for f in notice.payload["files"])

    assert api.delete(f"{BASE}/conversations/{conv}?as=dr-smith").status_code == 204

    assert files_containing(data, FILE_WORD) == []
    with services.sessions() as session:
        notice = session.scalars(select(Outbox).where(Outbox.kind == OutboxKind.notice)).one()
        assert notice.payload == {"reason": "attachment_withheld", "locale": "en", "erased": True}
        assert notice.state == OutboxState.failed  # not sent after the deletion
