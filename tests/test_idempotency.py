"""Retried writes are safe: ``Idempotency-Key`` (issue 20, item 4), through HTTP on SQLite and PostgreSQL.

A retried POST used to create a second message and email the client twice. Now the retry gets the
first answer back (``Idempotent-Replayed: true``), the outbox holds one notification, a retry with
another body is ``422 idempotency_key_reused``, and a retry while the first is still running (on
another node sharing the database) is ``409 idempotency_key_in_flight``."""

from __future__ import annotations

import json
import socket
from datetime import timedelta
from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient
from sqlalchemy import func, select, update

from mailbridge.api.app import create_app
from mailbridge.domain.models import IdempotencyKey, Message, Outbox, OutboxKind, utcnow
from mailbridge.housekeeping import purge_idempotency_keys
from tests.conftest import API_KEY, make_services
from tests.test_edge_limits import LiveHttp, read_response, wait_for

BASE = "/api/v1/practices/acme"
CONVERSATION = {
    "kind": "private",
    "subject": "Your next appointment",
    "author": "dr-smith",
    "participants": ["alice"],
    "body": "Hello Alice, shall we meet on Tuesday?",
}


def count(services: Any, model: Any, *where: Any) -> int:
    with services.sessions() as session:
        return int(session.scalar(select(func.count()).select_from(model).where(*where)) or 0)


def notifications(services: Any) -> int:
    return count(services, Outbox, Outbox.kind == OutboxKind.notification)


def test_the_same_post_twice_creates_one_message_and_one_email(seeded: Any, api: Any) -> None:
    key = {"Idempotency-Key": "7f3c9a52-5a1e-4c07-9a57-0d1b8c3e2f10"}
    first = api.post(f"{BASE}/conversations", json=CONVERSATION, headers=key)
    assert first.status_code == 201, first.text
    assert "idempotent-replayed" not in first.headers
    again = api.post(f"{BASE}/conversations", json=CONVERSATION, headers=key)
    assert again.status_code == 201
    assert again.headers["idempotent-replayed"] == "true"
    assert again.content == first.content
    assert again.headers["content-type"] == first.headers["content-type"]
    assert count(seeded, Message) == 1
    assert notifications(seeded) == 1  # Alice is emailed once
    # The draft's quoted form names the same key.
    quoted = api.post(
        f"{BASE}/conversations", json=CONVERSATION, headers={"Idempotency-Key": f'"{key["Idempotency-Key"]}"'}
    )
    assert quoted.headers["idempotent-replayed"] == "true"

    # The same key with another body (or another route): refused, nothing written.
    other = api.post(
        f"{BASE}/conversations", json=CONVERSATION | {"body": "Something else entirely."}, headers=key
    )
    assert (other.status_code, other.json()["code"]) == (422, "idempotency_key_reused")
    assert other.headers["content-type"].startswith("application/problem+json")
    conversation = first.json()["id"]
    elsewhere = api.post(
        f"{BASE}/conversations/{conversation}/messages",
        json={"author": "dr-smith", "body": "Hi"},
        headers=key,
    )
    assert (elsewhere.status_code, elsewhere.json()["code"]) == (422, "idempotency_key_reused")
    assert count(seeded, Message) == 1

    # Another key, or none: a new message each time, as before.
    reply = {"author": "alice", "body": "Tuesday works for me."}
    for headers in ({"Idempotency-Key": "second"}, {}, {}):
        assert (
            api.post(f"{BASE}/conversations/{conversation}/messages", json=reply, headers=headers).status_code
            == 201
        )
    assert count(seeded, Message) == 4


def test_a_key_belongs_to_its_caller_and_practice(seeded: Any, api: Any) -> None:
    """A practice key and the platform key using the same key string never see each other's answers."""
    from mailbridge.access.apikeys import create
    from mailbridge.domain import directory
    from mailbridge.domain.db import transaction

    with transaction(seeded.sessions) as session:
        _, practice_key = create(session, directory.get_practice(session, "acme"), scope="app")
    key = {"Idempotency-Key": "shared-string"}
    assert api.post(f"{BASE}/conversations", json=CONVERSATION, headers=key).status_code == 201
    theirs = api.post(
        f"{BASE}/conversations", json=CONVERSATION, headers=key | {"Authorization": f"Bearer {practice_key}"}
    )
    assert theirs.status_code == 201 and "idempotent-replayed" not in theirs.headers
    assert count(seeded, Message) == 2


def test_multipart_uploads_are_recognised_whatever_their_boundary(seeded: Any, api: Any) -> None:
    """Each TestClient request draws a new multipart boundary: the parts, not the boundary, are compared."""
    files = [("attachments", ("scan.pdf", b"%PDF-1.4\n" + b"x" * 300_000, "application/pdf"))]
    data = {"payload": json.dumps(CONVERSATION)}
    key = {"Idempotency-Key": "upload-1"}
    first = api.post(f"{BASE}/conversations", data=data, files=files, headers=key)
    assert first.status_code == 201, first.text
    again = api.post(f"{BASE}/conversations", data=data, files=files, headers=key)
    assert (again.status_code, again.headers.get("idempotent-replayed")) == (201, "true")
    assert again.json() == first.json()
    assert count(seeded, Message) == 1
    changed = [("attachments", ("scan.pdf", b"%PDF-1.4\n" + b"y" * 300_000, "application/pdf"))]
    other = api.post(f"{BASE}/conversations", data=data, files=changed, headers=key)
    assert (other.status_code, other.json()["code"]) == (422, "idempotency_key_reused")


def test_deletes_and_refusals_replay_and_bad_keys_are_refused(seeded: Any, api: Any) -> None:
    conversation = api.post(f"{BASE}/conversations", json=CONVERSATION).json()["id"]
    key = {"Idempotency-Key": "delete-1"}
    gone = api.delete(f"{BASE}/conversations/{conversation}?as=dr-smith", headers=key)
    assert gone.status_code == 204, gone.text
    again = api.delete(f"{BASE}/conversations/{conversation}?as=dr-smith", headers=key)
    assert (again.status_code, again.headers["idempotent-replayed"]) == (204, "true")
    # A 4xx is an answer too: replayed, not run again.
    refused = {"Idempotency-Key": "refused-1"}
    bad = CONVERSATION | {"author": "nobody"}
    first = api.post(f"{BASE}/conversations", json=bad, headers=refused)
    assert first.status_code in (403, 404, 422)
    assert (
        api.post(f"{BASE}/conversations", json=bad, headers=refused).headers["idempotent-replayed"] == "true"
    )
    for wrong in ("", "x" * 256, "bad\tkey"):
        response = api.post(f"{BASE}/conversations", json=CONVERSATION, headers={"Idempotency-Key": wrong})
        assert (response.status_code, response.json()["code"]) == (422, "idempotency_key_invalid"), wrong
    # A wrong API key is refused as without the header, and leaves nothing behind.
    unauthorized = api.post(
        f"{BASE}/conversations",
        json=CONVERSATION,
        headers={"Idempotency-Key": "k", "Authorization": "Bearer nope"},
    )
    assert unauthorized.status_code == 401
    assert count(seeded, IdempotencyKey, IdempotencyKey.key == "k") == 0


def test_housekeeping_forgets_keys_after_the_retention(seeded: Any, api: Any) -> None:
    key = {"Idempotency-Key": "old"}
    assert api.post(f"{BASE}/conversations", json=CONVERSATION, headers=key).status_code == 201
    assert purge_idempotency_keys(seeded) == 0
    with seeded.sessions() as session, session.begin():
        session.execute(update(IdempotencyKey).values(created_at=utcnow() - timedelta(hours=25)))
    assert purge_idempotency_keys(seeded) == 1
    assert (
        api.post(f"{BASE}/conversations", json=CONVERSATION, headers=key).headers.get("idempotent-replayed")
        is None
    )
    assert count(seeded, Message) == 2


def test_a_retry_on_another_node_while_the_first_runs_is_409(seeded: Any, tmp_path: Path) -> None:
    """Two nodes, one database: node A receives the headers and half the body; node B, asked the
    same thing meanwhile, finds A's row (the lock) and answers 409; once A has answered, B replays."""
    node_b = make_services(tmp_path / "b", seeded.settings.effective_database_url)
    body = json.dumps(CONVERSATION).encode()
    key = "in-flight-1"
    try:
        with (
            LiveHttp(seeded) as node_a,
            TestClient(
                create_app(node_b), headers={"Authorization": f"Bearer {API_KEY}", "Idempotency-Key": key}
            ) as b,
        ):
            with socket.create_connection(("127.0.0.1", node_a.port), timeout=10) as sock:
                head = (
                    f"POST {BASE}/conversations HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer {API_KEY}\r\n"
                    f"Idempotency-Key: {key}\r\nContent-Type: application/json\r\n"
                    f"Content-Length: {len(body)}\r\n\r\n"
                )
                sock.sendall(head.encode() + body[:10])
                wait_for(
                    lambda: count(seeded, IdempotencyKey, IdempotencyKey.key == key) == 1, "node A's claim"
                )
                busy = b.post(f"{BASE}/conversations", json=CONVERSATION)
                assert (busy.status_code, busy.json()["code"]) == (409, "idempotency_key_in_flight")
                assert busy.headers["retry-after"] == "1"
                sock.sendall(body[10:])
                answer = read_response(sock)
            assert answer.startswith(b"HTTP/1.1 201")
            replayed = b.post(
                f"{BASE}/conversations", content=body, headers={"Content-Type": "application/json"}
            )
            assert (replayed.status_code, replayed.headers["idempotent-replayed"]) == (201, "true")
            assert replayed.content == answer.partition(b"\r\n\r\n")[2]
        assert count(seeded, Message) == 1
        assert notifications(seeded) == 1
    finally:
        node_b.close()


def test_a_5xx_is_not_kept_so_the_retry_runs_again(tmp_path: Path, s3_peer: Any) -> None:
    """The object store is unreachable: the upload fails with a 5xx, the key is free again, and the
    retry runs (and fails again, honestly) rather than replaying the failure."""
    from tests.conftest import seed

    services = make_services(
        tmp_path,
        f"sqlite:///{tmp_path / 'mailbridge.db'}",
        storage_url="s3://no-such-bucket/mb",
        s3_endpoint_url=s3_peer.endpoint,
    )
    try:
        seed(services)
        files = [("attachments", ("scan.pdf", b"%PDF-1.4\n" + b"x" * 1000, "application/pdf"))]
        data = {"payload": json.dumps(CONVERSATION)}
        headers = {"Authorization": f"Bearer {API_KEY}", "Idempotency-Key": "upload-5xx"}
        with TestClient(create_app(services), headers=headers, raise_server_exceptions=False) as client:
            for _ in range(2):
                failed = client.post(f"{BASE}/conversations", data=data, files=files)
                assert failed.status_code >= 500, failed.text
                assert (failed.status_code, failed.json()["code"]) == (503, "storage_unavailable")
                assert "idempotent-replayed" not in failed.headers
                assert count(services, IdempotencyKey) == 0
        assert count(services, Message) == 0
    finally:
        services.close()


def test_the_openapi_document_declares_the_header(api: Any) -> None:
    spec = api.get("/openapi.json").json()
    post = spec["paths"]["/api/v1/practices/{practice}/conversations"]["post"]
    assert [p["name"] for p in post["parameters"]].count("Idempotency-Key") == 1
    get = spec["paths"]["/api/v1/practices/{practice}/conversations"]["get"]
    assert "Idempotency-Key" not in [p["name"] for p in get.get("parameters", [])]
    assert api.get("/openapi.json").json() == spec  # built once


def test_a_key_left_in_flight_by_a_dead_node_is_taken_over(seeded: Any, api: Any) -> None:
    """A node died mid-request (its row in flight, its lease past): the retry runs rather than
    getting 409 for ever; a fresh lease still answers 409."""
    key = {"Idempotency-Key": "orphan"}
    assert api.post(f"{BASE}/conversations", json=CONVERSATION, headers=key).status_code == 201
    with seeded.sessions() as session, session.begin():  # as a node that died before answering
        session.execute(update(IdempotencyKey).values(response_status=None, locked_at=utcnow()))
    busy = api.post(f"{BASE}/conversations", json=CONVERSATION, headers=key)
    assert (busy.status_code, busy.json()["code"]) == (409, "idempotency_key_in_flight")
    with seeded.sessions() as session, session.begin():
        session.execute(update(IdempotencyKey).values(locked_at=utcnow() - timedelta(minutes=20)))
    retried = api.post(f"{BASE}/conversations", json=CONVERSATION, headers=key)
    assert retried.status_code == 201 and "idempotent-replayed" not in retried.headers
    assert (
        api.post(f"{BASE}/conversations", json=CONVERSATION, headers=key).headers["idempotent-replayed"]
        == "true"
    )
