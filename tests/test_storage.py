"""Object storage and encryption at rest: the streaming AEAD, the S3 backend against a real S3 server
(moto's, on loopback), the pipeline and API on it, the sweep of orphans, and attacks by someone who
can write to the bucket, performed through SMTP and the HTTP API.
"""

from __future__ import annotations

import hashlib
import io
import secrets
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from mailbridge.crypto.keyring import OpenDataKey
from mailbridge.crypto.stream import SEGMENT, DecryptingReader, EncryptingReader, StreamError
from mailbridge.domain.models import Attachment, InboundLog, InboundState, Message, MessageSource
from mailbridge.housekeeping import sweep_raw_objects
from mailbridge.storage.objects import LocalObjectStore, ObjectNotFoundError, S3ObjectStore, open_store
from tests import filemakers as fm
from tests.conftest import API_KEY, make_services, seed
from tests.mailhelpers import live_server, open_conversation, reply_address, reply_message, send
from tests.s3peer import S3Peer
from tests.test_attachments_e2e import with_files

BASE = "/api/v1/practices/acme"
UNALIGNED = "relay@elsewhere.test"  # nothing aligned with the From: a private conversation holds it


def key(name: str = "dk1") -> OpenDataKey:
    return OpenDataKey(name, 1, secrets.token_bytes(32))


def seal(plain: bytes, data_key: OpenDataKey, context: bytes = b"raw/1/x") -> bytes:
    return EncryptingReader(io.BytesIO(plain), data_key, context).read()


def unseal(blob: bytes, data_key: OpenDataKey, context: bytes = b"raw/1/x") -> bytes:
    keys = {data_key.id: data_key}

    def find(key_id: str) -> OpenDataKey:
        return keys[key_id]

    reader = DecryptingReader(io.BytesIO(blob), find, context)
    out = bytearray()
    while block := reader.read(10_000):  # small reads: the segment boundaries fall mid-read
        out += block
    return bytes(out)


# ---- the streaming AEAD -----------------------------------------------------------------------------


@pytest.mark.parametrize("size", [0, 1, SEGMENT - 1, SEGMENT, SEGMENT + 1, 3 * SEGMENT, 3 * SEGMENT + 17])
def test_stream_round_trips_every_size_around_segment_boundaries(size: int) -> None:
    data_key = key()
    plain = secrets.token_bytes(size)
    blob = seal(plain, data_key)
    assert plain[:64] not in blob or size < 16
    assert unseal(blob, data_key) == plain


def test_stream_refuses_tampering_truncation_extension_wrong_key_and_wrong_place() -> None:
    data_key = key()
    plain = secrets.token_bytes(2 * SEGMENT + 100)
    blob = seal(plain, data_key)
    header = len(blob) - len(plain) - 3 * 16
    flipped = bytearray(blob)
    flipped[header + SEGMENT + 40] ^= 1  # one bit in the second segment
    attempts = {
        "tampered": bytes(flipped),
        "truncated at a segment boundary": blob[: header + SEGMENT + 16],
        "truncated mid-segment": blob[:-5],
        "extended": blob + b"\x00" * 16,
        "segments swapped": blob[:header]
        + blob[header + SEGMENT + 16 : header + 2 * (SEGMENT + 16)]
        + blob[header : header + SEGMENT + 16]
        + blob[header + 2 * (SEGMENT + 16) :],
    }
    for what, bad in attempts.items():
        with pytest.raises(StreamError):
            unseal(bad, data_key)
            pytest.fail(what)
    with pytest.raises(StreamError):
        unseal(blob, OpenDataKey(data_key.id, 1, secrets.token_bytes(32)))  # same id, another key
    with pytest.raises(StreamError):
        unseal(blob, data_key, b"raw/2/x")  # the object copied under another practice's key
    with pytest.raises(StreamError):
        unseal(b"plaintext pretending to be sealed", data_key)


def test_encrypting_reader_holds_one_segment_at_a_time() -> None:
    """A 100 MB object streams: the reader never asks its source for more than a segment at once."""

    class Source(io.RawIOBase):
        def __init__(self, size: int) -> None:
            self.left = size
            self.biggest = 0

        def readable(self) -> bool:
            return True

        def read(self, n: int | None = -1) -> bytes:
            n = self.left if n is None or n < 0 else min(n, self.left)
            self.biggest = max(self.biggest, n)
            self.left -= n
            return b"x" * n

    source = Source(20 * SEGMENT)
    reader = EncryptingReader(source, key(), b"att/1/x")  # type: ignore[arg-type]
    total = 0
    while block := reader.read(1024 * 1024):
        total += len(block)
    assert source.biggest <= SEGMENT and total > 20 * SEGMENT


# ---- the stores -------------------------------------------------------------------------------------


def test_keys_never_climb_out_of_the_store(tmp_path: Path) -> None:
    store = LocalObjectStore(tmp_path / "objects")
    for bad in ("../x", "/etc/passwd", "a/../../b", "", "a//b", "raw/.hidden"):
        with pytest.raises(ValueError):
            store.put(bad, io.BytesIO(b"x"))
    with pytest.raises(ValueError):
        open_store("ftp://host/x", tmp_path)


def test_s3_store_round_trip_multipart_list_and_delete(s3_peer: S3Peer) -> None:
    bucket = s3_peer.new_bucket()
    store = S3ObjectStore(bucket, "node-data", s3_peer.endpoint)
    store.check()
    big = secrets.token_bytes(17 * 1024 * 1024)  # over the 8 MiB part size: a multipart upload
    store.put("att/1/big", io.BytesIO(big))
    store.put("raw/1/2026-01-01/a", io.BytesIO(b"hello"))
    with store.get("att/1/big") as handle:
        assert hashlib.sha256(handle.read()).digest() == hashlib.sha256(big).digest()
    assert [o.key for o in store.list("raw/")] == ["raw/1/2026-01-01/a"]
    listed = s3_peer.client().list_objects_v2(Bucket=bucket)["Contents"]
    assert sorted(o["Key"] for o in listed) == ["node-data/att/1/big", "node-data/raw/1/2026-01-01/a"]
    assert store.exists("att/1/big") and not store.exists("att/1/none")
    store.delete("att/1/big")
    store.delete("att/1/big")  # absent: not an error
    with pytest.raises(ObjectNotFoundError):
        store.get("att/1/big")


# ---- the pipeline and the API on S3 -------------------------------------------------------------------


@pytest.fixture
def on_s3(tmp_path: Path, s3_peer: S3Peer) -> Iterator[tuple[Any, str]]:
    bucket = s3_peer.new_bucket()
    services = make_services(
        tmp_path,
        f"sqlite:///{tmp_path / 'mailbridge.db'}",
        storage_url=f"s3://{bucket}/mb",
        s3_endpoint_url=s3_peer.endpoint,
    )
    seed(services)
    yield services, bucket
    services.close()


def bucket_keys(s3_peer: S3Peer, bucket: str) -> list[str]:
    return sorted(o["Key"] for o in s3_peer.client().list_objects_v2(Bucket=bucket).get("Contents", []))


def test_reply_with_attachment_on_s3_is_sealed_and_downloads(on_s3: Any, s3_peer: S3Peer) -> None:
    from fastapi.testclient import TestClient

    from mailbridge.api.app import create_app

    services, bucket = on_s3
    pdf = fm.pdf()
    conv = open_conversation(services)
    address = reply_address(services, conv, "alice")
    msg = with_files(
        reply_message("alice@client.test", address, "My results, attached."),
        [("results.pdf", "application/pdf", pdf)],
    )
    with live_server(services) as server:
        assert send(server, msg, "alice@client.test", address)[0] == 250
    with services.sessions() as session:
        file = session.scalars(select(Attachment)).one()
        row = session.scalars(select(InboundLog)).one()
        assert row.raw_ref is None and row.raw_path is None  # posted: the raw copy is gone
    # Only the attachment is left in the bucket, sealed, under a name that is not its hash.
    assert bucket_keys(s3_peer, bucket) == [f"mb/{file.storage_key}"]
    stored = s3_peer.client().get_object(Bucket=bucket, Key=f"mb/{file.storage_key}")["Body"].read()
    assert stored.startswith(b"MBE1") and pdf[:100] not in stored and file.sha256 not in file.storage_key
    with TestClient(create_app(services), headers={"Authorization": f"Bearer {API_KEY}"}) as api:
        got = api.get(f"{BASE}/attachments/{file.id}?as=dr-smith")
        assert got.status_code == 200 and got.content == pdf
        ready = api.get("/readyz").json()
        assert ready["checks"]["object_storage"] == {"ok": True}


def test_bucket_tampering_is_an_error_never_another_file(on_s3: Any, s3_peer: S3Peer) -> None:
    """The attack: someone with write access to the bucket (not to the database) swaps one sealed
    attachment for another, then flips a byte. Downloads through the API refuse both."""
    from fastapi.testclient import TestClient

    from mailbridge.api.app import create_app

    services, bucket = on_s3
    conv = open_conversation(services)
    address = reply_address(services, conv, "alice")
    secret_pdf, public_png = fm.pdf(), fm.png()
    msg = with_files(
        reply_message("alice@client.test", address, "Two files."),
        [("secret.pdf", "application/pdf", secret_pdf), ("photo.png", "image/png", public_png)],
    )
    with live_server(services) as server:
        assert send(server, msg, "alice@client.test", address)[0] == 250
    with services.sessions() as session:
        pdf_row, png_row = session.scalars(select(Attachment).order_by(Attachment.position)).all()
    client = s3_peer.client()
    pdf_object = client.get_object(Bucket=bucket, Key=f"mb/{pdf_row.storage_key}")["Body"].read()
    client.put_object(Bucket=bucket, Key=f"mb/{png_row.storage_key}", Body=pdf_object)  # swapped
    with TestClient(create_app(services), headers={"Authorization": f"Bearer {API_KEY}"}) as api:
        swapped = api.get(f"{BASE}/attachments/{png_row.id}?as=dr-smith")
        assert (swapped.status_code, swapped.json()["code"]) == (500, "attachment_unreadable")
        flipped = bytearray(pdf_object)
        flipped[-20] ^= 0x40
        client.put_object(Bucket=bucket, Key=f"mb/{pdf_row.storage_key}", Body=bytes(flipped))
        tampered = api.get(f"{BASE}/attachments/{pdf_row.id}?as=dr-smith")
        assert (tampered.status_code, tampered.json()["code"]) == (500, "attachment_unreadable")
        assert secret_pdf[:50] not in tampered.content
        client.delete_object(Bucket=bucket, Key=f"mb/{pdf_row.storage_key}")
        missing = api.get(f"{BASE}/attachments/{pdf_row.id}?as=dr-smith")
        assert (missing.status_code, missing.json()["code"]) == (500, "attachment_unreadable")


def test_quarantined_reply_keeps_its_sealed_raw_copy_in_the_bucket_until_released(
    on_s3: Any, s3_peer: S3Peer
) -> None:
    from fastapi.testclient import TestClient

    from mailbridge.api.app import create_app

    services, bucket = on_s3
    conv = open_conversation(services)
    address = reply_address(services, conv, "dr-smith")
    msg = with_files(
        reply_message("dr.smith@acme.test", address, "Notes from the session, see the scan."),
        [("scan.png", "image/png", fm.png())],
    )
    with live_server(services) as server:
        assert send(server, msg, UNALIGNED, address)[0] == 250
    with services.sessions() as session:
        row = session.scalars(select(InboundLog)).one()
        assert row.state == InboundState.quarantined and row.raw_ref is not None
        ref = row.raw_ref
    assert ref.startswith("raw/") and ref.endswith(".mbe") and bucket_keys(s3_peer, bucket) == [f"mb/{ref}"]
    with TestClient(create_app(services), headers={"Authorization": f"Bearer {API_KEY}"}) as api:
        (item,) = api.get(f"{BASE}/quarantine").json()["items"]
        released = api.post(f"{BASE}/quarantine/{item['id']}/release?as=dr-smith", json={})
        assert released.status_code == 201, released.text
        attachment = released.json()["attachments"][0]
        got = api.get(f"{BASE}/attachments/{attachment['id']}?as=dr-smith")
        assert got.status_code == 200 and got.content == fm.png()
    keys = bucket_keys(s3_peer, bucket)
    assert len(keys) == 1 and keys[0].startswith("mb/att/")  # the raw copy went with the decision


def test_unreachable_object_store_answers_451_and_readyz_says_so(tmp_path: Path, s3_peer: S3Peer) -> None:
    from fastapi.testclient import TestClient

    from mailbridge.api.app import create_app
    from mailbridge.observability import STORAGE_ERRORS

    services = make_services(
        tmp_path,
        f"sqlite:///{tmp_path / 'mailbridge.db'}",
        storage_url="s3://no-such-bucket/mb",
        s3_endpoint_url=s3_peer.endpoint,
    )
    seed(services)
    before = STORAGE_ERRORS.labels("put")._value.get()
    conv = open_conversation(services)
    address = reply_address(services, conv, "alice")
    with live_server(services) as server:
        code, text = send(
            server, reply_message("alice@client.test", address, "Hello there."), "alice@client.test", address
        )
    assert (code, text[:5]) == (451, b"4.3.0")
    assert STORAGE_ERRORS.labels("put")._value.get() > before
    with services.sessions() as session:
        assert session.scalars(select(InboundLog)).all() == []  # no row naming an object that is not there
        assert session.scalars(select(Message).where(Message.source == MessageSource.email)).all() == []
    with TestClient(create_app(services), headers={"Authorization": f"Bearer {API_KEY}"}) as api:
        ready = api.get("/readyz")
        assert ready.status_code == 503 and ready.json()["checks"]["object_storage"]["ok"] is False
    services.close()


def test_sweep_removes_raw_objects_no_row_names(on_s3: Any, s3_peer: S3Peer) -> None:
    services, bucket = on_s3
    conv = open_conversation(services)
    address = reply_address(services, conv, "dr-smith")
    with live_server(services) as server:
        assert (
            send(
                server,
                reply_message("dr.smith@acme.test", address, "Held for review, please."),
                UNALIGNED,
                address,
            )[0]
            == 250
        )
    # What a node killed between its put and its row's commit leaves behind:
    orphan = services.vault.put("raw/1/2026-01-01/orphan", io.BytesIO(b"From: x\r\n\r\nbody"), 1)
    assert len(bucket_keys(s3_peer, bucket)) == 2
    assert sweep_raw_objects(services) == 0  # younger than a day: maybe a run about to commit
    assert sweep_raw_objects(services, older_than=timedelta(0)) == 1
    with services.sessions() as session:
        kept = session.scalars(select(InboundLog.raw_ref)).one()
    assert bucket_keys(s3_peer, bucket) == [f"mb/{kept}"] and kept != orphan


def test_a_row_cannot_name_a_file_outside_the_inbound_directory(tmp_path: Path) -> None:
    """Legacy raw paths are read only under DATA_DIR/inbound: a row is data, not a licence to read."""
    services = make_services(tmp_path, f"sqlite:///{tmp_path / 'mailbridge.db'}")
    secret = tmp_path / "var" / "secrets" / "master.key"
    assert secret.exists() and not services.vault.exists(str(secret))
    with pytest.raises(OSError):
        services.vault.open(str(secret))
    legacy = tmp_path / "var" / "inbound" / "2025-01-01" / "old.eml"
    legacy.parent.mkdir(parents=True)
    legacy.write_bytes(b"From: a@b.test\r\n\r\nold")
    assert services.vault.read_bytes(str(legacy)).endswith(b"old")
    services.close()


# ---- master-key rotation ----------------------------------------------------------------------------


def test_rotate_master_rewraps_data_keys_and_leaves_objects_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mailbridge.cli import main
    from mailbridge.crypto.agreement import Disagreement, check_agreement
    from mailbridge.crypto.keyring import Keyring, parse_master_keys
    from mailbridge.crypto.rotation import PREPARED
    from mailbridge.domain.db import transaction
    from mailbridge.domain.models import DataKey

    database_url = f"sqlite:///{tmp_path / 'mailbridge.db'}"
    services = make_services(tmp_path, database_url)
    seed(services)
    with transaction(services.sessions) as session:
        check_agreement(session, services.tokens.fingerprint, services.keyring)
    conv = open_conversation(services)
    address = reply_address(services, conv, "alice")
    msg = with_files(
        reply_message("alice@client.test", address, "Attached, as promised."),
        [("a.pdf", "application/pdf", fm.pdf())],
    )
    with live_server(services) as server:
        assert send(server, msg, "alice@client.test", address)[0] == 250
    with services.sessions() as session:
        file = session.scalars(select(Attachment)).one()
    objects = services.settings.data_dir / "objects"
    sealed_before = (objects / str(file.storage_key)).read_bytes()
    key_file = services.settings.data_dir / "secrets" / "master.key"
    old = parse_master_keys(key_file.read_text())[0]
    services.close()

    monkeypatch.setenv("MAILBRIDGE_DATA_DIR", str(tmp_path / "var"))
    monkeypatch.setenv("MAILBRIDGE_DATABASE_URL", database_url)
    monkeypatch.delenv("MAILBRIDGE_MASTER_KEY", raising=False)
    assert main(["keys", "rotate-master", "--prepare"]) == 0
    prepared = parse_master_keys(key_file.read_text())
    assert prepared[0] == old and len(prepared) == 2 and PREPARED in key_file.read_text()
    assert main(["keys", "rotate-master"]) == 0
    rotated = parse_master_keys(key_file.read_text())
    assert rotated == [prepared[1], old]  # the prepared key promoted, the old one kept as previous

    services = make_services(tmp_path, database_url)
    with services.sessions() as session:
        assert {k.master_id for k in session.scalars(select(DataKey))} == {rotated[0].id}
        with pytest.raises(Disagreement, match="master_key"):  # a node still on the old key alone
            check_agreement(session, services.tokens.fingerprint, Keyring([old]))
        check_agreement(session, services.tokens.fingerprint, Keyring([rotated[0]]))
    assert (objects / str(file.storage_key)).read_bytes() == sealed_before  # not re-encrypted
    assert services.blobs.open(str(file.storage_key)).read() == fm.pdf()
    services.close()


def test_rows_written_before_object_storage_are_still_read(tmp_path: Path) -> None:
    """After the upgrade: an attachment row without a storage key is the file named by its hash in
    DATA_DIR/attachments; a held reply's raw_path under DATA_DIR/inbound is read from there."""
    from fastapi.testclient import TestClient

    from mailbridge.api.app import create_app
    from mailbridge.domain.db import transaction

    services = make_services(tmp_path, f"sqlite:///{tmp_path / 'mailbridge.db'}")
    seed(services)
    conv = open_conversation(services)
    address = reply_address(services, conv, "alice")
    pdf = fm.pdf()
    msg = with_files(
        reply_message("alice@client.test", address, "Old style."), [("old.pdf", "application/pdf", pdf)]
    )
    with live_server(services) as server:
        assert send(server, msg, "alice@client.test", address)[0] == 250
    with transaction(services.sessions) as session:
        file = session.scalars(select(Attachment)).one()
        services.vault.delete(str(file.storage_key))
        legacy = services.settings.data_dir / "attachments" / file.sha256[:2] / file.sha256[2:4] / file.sha256
        legacy.parent.mkdir(parents=True)
        legacy.write_bytes(pdf)
        file.storage_key = None
        attachment_id = file.id
    with TestClient(create_app(services), headers={"Authorization": f"Bearer {API_KEY}"}) as api:
        got = api.get(f"{BASE}/attachments/{attachment_id}?as=dr-smith")
        assert got.status_code == 200 and got.content == pdf
    services.close()


def test_local_delete_syncs_the_directory_unless_told_the_removal_need_not_survive(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``sync=False`` (the pipeline's raw copy once no row names it): the file goes, without the
    directory fsync; an unlink lost with a power cut leaves an orphan the sweep removes."""
    from mailbridge.storage import objects

    synced: list[Path] = []
    monkeypatch.setattr(objects, "fsync_dir", synced.append)
    store = LocalObjectStore(tmp_path / "objects")
    for key in ("raw/1/2026-12-05/a", "raw/1/2026-12-05/b"):
        store.put(key, io.BytesIO(b"x"))
    synced.clear()
    store.delete("raw/1/2026-12-05/a", sync=False)
    assert not store.exists("raw/1/2026-12-05/a") and synced == []
    store.delete("raw/1/2026-12-05/b")
    assert not store.exists("raw/1/2026-12-05/b") and synced == [tmp_path / "objects/raw/1/2026-12-05"]
