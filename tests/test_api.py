"""The HTTP API contract, on SQLite and PostgreSQL: directory sync, conversations, messages, deletion, errors."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import func, select

from mailbridge.domain.models import AuditEvent, Conversation, Message
from tests.conftest import API_KEY

BASE = "/api/v1/practices/acme"


def new_conv(api: Any, **over: Any) -> Any:
    body = {
        "kind": "private",
        "company": None,
        "subject": "Next appointment",
        "author": "dr-smith",
        "participants": ["alice"],
        "body": "Hello Alice, shall we meet Tuesday?",
    } | over
    return api.post(f"{BASE}/conversations", json=body)


def test_health_needs_no_key_but_api_does(api: Any) -> None:
    from fastapi.testclient import TestClient

    bare = TestClient(api.app)
    assert bare.get("/healthz").status_code == 200
    response = bare.get(f"{BASE}/conversations?as=alice")
    assert response.status_code == 401
    assert response.headers["content-type"].startswith("application/problem+json")
    assert response.json()["code"] == "unauthorized"
    wrong = bare.get(f"{BASE}/conversations?as=alice", headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401
    assert API_KEY not in wrong.text


def test_openapi_served(api: Any) -> None:
    spec = api.get("/openapi.json").json()
    assert "/api/v1/practices/{practice}/conversations" in spec["paths"]
    assert (
        "multipart/form-data"
        in spec["paths"]["/api/v1/practices/{practice}/conversations"]["post"]["requestBody"]["content"]
    )


def test_directory_upserts_are_idempotent(api: Any) -> None:
    practice = {
        "name": "Acme",
        "reply_domain": "reply.acme.test",
        "notify_from": "notify@acme.test",
        "locale": "fr",
    }
    assert api.put(BASE, json=practice).status_code == 201
    again = api.put(BASE, json=practice)
    assert again.status_code == 200
    assert again.json()["settings"]["min_body_chars"] == 1  # defaults applied
    user = {"email": "Alice@Client.test", "alt_emails": ["a2@client.test"], "name": "Alice", "kind": "client"}
    assert api.put(f"{BASE}/users/alice", json=user).status_code == 201
    assert api.put(f"{BASE}/users/alice", json=user | {"name": "Alice M."}).json()["name"] == "Alice M."
    assert api.put(f"{BASE}/companies/bakery", json={"name": "Bakery"}).status_code == 201
    assert api.put(f"{BASE}/users/alice/favorites/bakery").status_code == 204
    assert api.put(f"{BASE}/users/alice/favorites/bakery").status_code == 204
    assert api.delete(f"{BASE}/users/alice/favorites/bakery").status_code == 204
    staff = {"email": "s@acme.test", "name": "S", "kind": "staff", "role": "provider"}
    api.put(f"{BASE}/users/s1", json=staff)
    api.put(f"{BASE}/users/s2", json=staff | {"email": "s2@acme.test"})
    friendship = api.put(f"{BASE}/friendships/s1/s2", json={"state": "accepted"})
    assert friendship.json()["state"] == "accepted"


@pytest.mark.parametrize(
    ("path", "body", "status", "code"),
    [
        (
            "/api/v1/practices/nope/users/x",
            {"email": "a@b.test", "name": "A", "kind": "client"},
            404,
            "practice_not_found",
        ),
        (f"{BASE}/users/x", {"email": "not-an-email", "name": "A", "kind": "client"}, 422, "invalid_request"),
        (f"{BASE}/users/x", {"email": "a@b.test", "name": "A", "kind": "robot"}, 422, "invalid_request"),
        (f"{BASE}/users/x", {"email": "a@b.test", "name": "A", "kind": "staff"}, 422, "role_required"),
        (f"{BASE}/users/x/favorites/nope", None, 404, "user_not_found"),
        (
            f"{BASE}",
            {
                "name": "A",
                "reply_domain": "reply.acme.test",
                "notify_from": "n@acme.test",
                "settings": {"attachment_max_bytes": 500 * 1024 * 1024},
            },
            422,
            "invalid_settings",
        ),
    ],
)
def test_directory_bad_input(seeded: Any, api: Any, path: str, body: Any, status: int, code: str) -> None:
    response = api.put(path, json=body) if body is not None else api.put(path)
    assert response.status_code == status, response.text
    assert response.json()["code"] == code


def test_create_and_read_conversation(seeded: Any, api: Any) -> None:
    created = new_conv(api)
    assert created.status_code == 201, created.text
    conv = created.json()
    assert conv["kind"] == "private" and sorted(conv["participants"]) == ["alice", "dr-smith"]
    assert conv["messages"][0]["source"] == "app"
    listed = api.get(f"{BASE}/conversations?as=alice").json()["items"]
    assert [c["id"] for c in listed] == [conv["id"]]
    assert api.get(f"{BASE}/conversations?as=bob").json()["items"] == []
    # one bob may not read answers as one that does not exist (issue 20 item 2)
    assert api.get(f"{BASE}/conversations/{conv['id']}/messages?as=bob").status_code == 404
    messages = api.get(f"{BASE}/conversations/{conv['id']}/messages?as=alice").json()["items"]
    assert messages[0]["body"] == "Hello Alice, shall we meet Tuesday?"


def test_company_conversation_visible_through_favourites(seeded: Any, api: Any) -> None:
    conv = new_conv(api, kind="company", company="bakery", participants=["alice"]).json()
    # billing follows the company; bob follows it and a favourite client (alice) participates
    for user in ("billing", "bob", "dr-smith", "alice"):
        ids = [c["id"] for c in api.get(f"{BASE}/conversations?as={user}").json()["items"]]
        assert conv["id"] in ids, user
    for user in ("dr-jones", "dave"):
        ids = [c["id"] for c in api.get(f"{BASE}/conversations?as={user}").json()["items"]]
        assert conv["id"] not in ids, user
    # a favourite removed today matters today
    api.delete(f"{BASE}/users/billing/favorites/bakery")
    assert (
        api.post(
            f"{BASE}/conversations/{conv['id']}/messages",
            json={"author": "billing", "body": "Invoice attached soon"},
        ).status_code
        == 404  # billing may no longer read it: as if it did not exist
    )


@pytest.mark.parametrize(
    ("over", "status", "code", "field"),
    [
        ({"kind": "secret"}, 422, "invalid_request", "kind"),
        ({"kind": "company"}, 422, "company_required", "company"),
        ({"kind": "direct", "participants": ["alice"]}, 422, "direct_staff_only", "participants"),
        ({"participants": ["alice", "alice"]}, 422, "duplicate_participants", "participants"),
        ({"subject": "x" * 256}, 422, "invalid_request", "subject"),
        ({"author": "ghost"}, 404, "user_not_found", "author"),
        ({"company": "nope", "kind": "company"}, 404, "company_not_found", "company"),
        (
            {"kind": "direct", "author": "dr-smith", "participants": ["billing"]},
            403,
            "friendship_not_accepted",
            None,
        ),
    ],
)
def test_create_conversation_bad_input(
    seeded: Any, api: Any, over: dict[str, Any], status: int, code: str, field: str | None
) -> None:
    response = new_conv(api, **over)
    assert response.status_code == status, response.text
    problem = response.json()
    assert problem["code"] == code
    if field:
        assert problem["field"] == field
    with seeded.sessions() as session:  # nothing half-written
        assert session.scalar(select(func.count()).select_from(Conversation)) == 0


def test_post_refusals_carry_the_policy_reason(seeded: Any, api: Any) -> None:
    group = new_conv(api, participants=["alice", "bob"]).json()
    refused = api.post(
        f"{BASE}/conversations/{group['id']}/messages",
        json={"author": "alice", "body": "Reply to all of you"},
    )
    assert refused.status_code == 403 and refused.json()["code"] == "group_conversation"
    one = new_conv(api).json()
    short = api.post(f"{BASE}/conversations/{one['id']}/messages", json={"author": "alice", "body": "ok"})
    # a refusal of the input itself is 422 (docs/api.md), naming the field
    assert (short.status_code, short.json()["code"], short.json()["field"]) == (422, "body_too_short", "body")
    inactive = new_conv(api, participants=["carol"]).json()
    assert (
        api.post(
            f"{BASE}/conversations/{inactive['id']}/messages",
            json={"author": "carol", "body": "Hello doctor, a question"},
        ).json()["code"]
        == "inactive_client"
    )
    to_billing = new_conv(api, author="billing", participants=["carol"]).json()
    assert (
        api.post(
            f"{BASE}/conversations/{to_billing['id']}/messages",
            json={"author": "carol", "body": "About my invoice please"},
        ).status_code
        == 201
    )


def test_internal_notes_hidden_from_clients(seeded: Any, api: Any) -> None:
    conv = new_conv(api).json()
    note = api.post(
        f"{BASE}/conversations/{conv['id']}/messages",
        json={"author": "dr-smith", "body": "Client seemed anxious today", "internal": True},
    )
    assert note.status_code == 201 and note.json()["internal"] is True
    staff_view = api.get(f"{BASE}/conversations/{conv['id']}/messages?as=dr-smith").json()["items"]
    client_view = api.get(f"{BASE}/conversations/{conv['id']}/messages?as=alice").json()["items"]
    assert len(staff_view) == 2 and len(client_view) == 1
    refused = api.post(
        f"{BASE}/conversations/{conv['id']}/messages",
        json={"author": "alice", "body": "a note of my own", "internal": True},
    )
    assert refused.json()["code"] == "internal_requires_staff"


def test_deletion_rules_and_audit(seeded: Any, api: Any) -> None:
    conv = new_conv(api).json()
    first = conv["messages"][0]["id"]
    reply = api.post(
        f"{BASE}/conversations/{conv['id']}/messages",
        json={"author": "alice", "body": "Tuesday works for me"},
    ).json()
    assert api.delete(f"{BASE}/messages/{reply['id']}?as=dr-smith").json()["code"] == "not_author"
    assert (
        api.delete(f"{BASE}/messages/{reply['id']}?as=alice").json()["code"] == "not_author"
    )  # clients cannot
    # someone who may not read the message is not told it exists (issue 20 item 2)
    assert api.delete(f"{BASE}/messages/{reply['id']}?as=bob").json()["code"] == "message_not_found"
    assert api.delete(f"{BASE}/messages/{first}?as=dr-smith").status_code == 204
    remaining = api.get(f"{BASE}/conversations/{conv['id']}/messages?as=alice").json()["items"]
    assert [m["id"] for m in remaining] == [reply["id"]]
    assert api.delete(f"{BASE}/conversations/{conv['id']}?as=alice").json()["code"] == "not_creator"
    assert api.delete(f"{BASE}/conversations/{conv['id']}?as=billing").json()["code"] == (
        "conversation_not_found"  # billing may not read this private conversation
    )
    assert api.delete(f"{BASE}/conversations/{conv['id']}?as=dr-smith").status_code == 204
    assert api.get(f"{BASE}/conversations/{conv['id']}/messages?as=dr-smith").status_code == 404
    with seeded.sessions() as session:
        bodies = session.scalars(select(Message.body).where(Message.conversation_id == conv["id"])).all()
        assert all(b == "" for b in bodies)  # content gone for good
        actions = sorted(session.scalars(select(AuditEvent.action)).all())
        assert actions == ["conversation_deleted", "message_deleted"]
        assert session.get_one(Conversation, conv["id"]).subject == ""


def test_client_started_conversation_cannot_be_deleted(seeded: Any, api: Any) -> None:
    conv = new_conv(api, author="alice", participants=["dr-smith"]).json()
    assert api.delete(f"{BASE}/conversations/{conv['id']}?as=alice").json()["code"] == "not_creator"


def test_direct_channel_closed_keeps_history(seeded: Any, api: Any) -> None:
    conv = new_conv(api, kind="direct", participants=["dr-jones"], body="Case conference at noon?").json()
    api.put(f"{BASE}/friendships/dr-jones/dr-smith", json={"state": "closed"})
    assert len(api.get(f"{BASE}/conversations/{conv['id']}/messages?as=dr-jones").json()["items"]) == 1
    refused = api.post(
        f"{BASE}/conversations/{conv['id']}/messages",
        json={"author": "dr-jones", "body": "Still on for noon"},
    )
    assert refused.json()["code"] == "direct_channel_closed"


def test_import_cli_round_trip(tmp_path: Any, backend: str) -> None:
    import json

    from mailbridge.cli import main

    if backend != "sqlite":
        pytest.skip("CLI round trip exercised on SQLite")
    data = {
        "practices": [
            {
                "slug": "imp",
                "name": "Imported",
                "reply_domain": "reply.imp.test",
                "notify_from": "n@imp.test",
                "users": {"u1": {"email": "u1@x.test", "name": "U", "kind": "client"}},
            }
        ]
    }
    path = tmp_path / "dir.json"
    path.write_text(json.dumps(data))
    env = {"MAILBRIDGE_DATA_DIR": str(tmp_path / "var")}
    import os

    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        assert main(["import", str(path)]) == 0
        bad = tmp_path / "bad.json"
        bad.write_text(json.dumps({"practices": [{"slug": "BAD SLUG"}]}))
        assert main(["import", str(bad)]) == 2
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def test_confidential_with_a_client_outside_the_company_is_refused(seeded: Any, api: Any) -> None:
    """Issue 12 item 7: dave does not have the bakery among his favourites, so he could never read a
    confidential bakery conversation; creating one with him is refused (422) naming him, not 201."""
    refused = new_conv(api, kind="confidential", company="bakery", participants=["alice", "dave", "carol"])
    problem = refused.json()
    assert refused.status_code == 422
    assert (problem["code"], problem["field"], problem["participants"]) == (
        "client_not_following_company",
        "participants",
        ["carol", "dave"],
    )
    with seeded.sessions() as session:
        assert session.scalar(select(func.count()).select_from(Conversation)) == 0
    ok = new_conv(api, kind="confidential", company="bakery", participants=["alice"])
    assert ok.status_code == 201
    added = api.put(f"{BASE}/conversations/{ok.json()['id']}/participants/dave?as=dr-smith")
    assert (added.status_code, added.json()["code"], added.json()["participants"]) == (
        422,
        "client_not_following_company",
        ["dave"],
    )
    assert api.put(f"{BASE}/conversations/{ok.json()['id']}/participants/bob?as=dr-smith").status_code == 204
    assert (
        api.put(f"{BASE}/conversations/{ok.json()['id']}/participants/dr-jones?as=dr-smith").status_code
        == 204
    )
    # A company conversation lets a designated client read without the favourite (seed 001): allowed.
    assert new_conv(api, kind="company", company="bakery", participants=["dave"]).status_code == 201
