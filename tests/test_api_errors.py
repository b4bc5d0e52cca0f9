"""One status per class of error (issue 20 #7, docs/api.md), through HTTP on SQLite and PostgreSQL."""

from __future__ import annotations

from typing import Any

from tests.test_api import BASE, new_conv

PROBLEM = "application/problem+json"


def is_problem(response: Any, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith(PROBLEM)
    body: dict[str, Any] = response.json()
    assert body["code"] == code and body["status"] == status
    return body


def test_unreadable_bodies_are_400_and_other_media_types_415(seeded: Any, api: Any) -> None:
    user = f"{BASE}/users/zed"
    bad = is_problem(
        api.put(user, content=b'{"email": ', headers={"content-type": "application/json"}),
        400,
        "invalid_json",
    )
    assert "field" not in bad  # no bogus "0"
    text = {"content-type": "text/plain"}
    is_problem(api.put(user, content=b"hello", headers=text), 415, "unsupported_media_type")
    conv = new_conv(api).json()
    for path in (f"{BASE}/conversations", f"{BASE}/conversations/{conv['id']}/messages"):
        is_problem(api.post(path, content=b"hello", headers=text), 415, "unsupported_media_type")
        bad = is_problem(
            api.post(path, content=b"{nope", headers={"content-type": "application/json"}),
            400,
            "invalid_json",
        )
        assert "field" not in bad
    files = {"attachments": ("a.txt", b"hi", "text/plain")}
    is_problem(api.put(f"{BASE}/companies/c9", files=files), 415, "unsupported_media_type")  # JSON only here
    form = {"content-type": "application/x-www-form-urlencoded"}
    is_problem(
        api.put(f"{BASE}/companies/c9", content=b"name=Bakery", headers=form), 415, "unsupported_media_type"
    )


def test_every_validation_error_is_reported(seeded: Any, api: Any) -> None:
    body = {"email": "not-an-email", "name": "", "kind": "robot"}
    problem = is_problem(api.put(f"{BASE}/users/zed", json=body), 422, "invalid_request")
    fields = [e["field"] for e in problem["errors"]]
    assert set(fields) == {"email", "name", "kind"}
    assert problem["field"] == problem["errors"][0]["field"]  # the first, as before, for compatibility
    conv = is_problem(
        api.post(f"{BASE}/conversations", json={"kind": "secret", "subject": ""}), 422, "invalid_request"
    )
    assert {"kind", "subject", "author", "participants", "body"} <= {e["field"] for e in conv["errors"]}
    query = is_problem(api.get(f"{BASE}/conversations?limit=0"), 422, "invalid_request")
    assert {e["field"] for e in query["errors"]} == {"as", "limit"}


def test_refusals_of_the_input_are_422_of_the_actor_403_of_the_state_409(seeded: Any, api: Any) -> None:
    one = new_conv(api).json()
    empty = api.post(f"{BASE}/conversations/{one['id']}/messages", json={"author": "alice", "body": ""})
    assert is_problem(empty, 422, "body_too_short")["field"] == "body"
    kind = {"email": "alice@client.test", "name": "Alice", "kind": "staff", "role": "provider"}
    assert is_problem(api.put(f"{BASE}/users/alice", json=kind), 409, "kind_change")["field"] == "kind"
    friends = api.put(f"{BASE}/friendships/dr-smith/alice", json={"state": "accepted"})
    is_problem(friends, 422, "direct_staff_only")


def test_upserts_answer_201_then_200_and_deletes_of_links_are_idempotent(seeded: Any, api: Any) -> None:
    staff = {"email": "s9@acme.test", "name": "S9", "kind": "staff", "role": "provider"}
    assert api.put(f"{BASE}/users/s9", json=staff).status_code == 201
    assert api.put(f"{BASE}/users/s9", json=staff).status_code == 200
    first = api.put(f"{BASE}/friendships/s9/dr-smith", json={"state": "requested"})
    assert (first.status_code, first.json()["state"]) == (201, "requested")
    assert api.put(f"{BASE}/friendships/dr-smith/s9", json={"state": "accepted"}).status_code == 200
    conv = new_conv(api, participants=["alice", "bob"]).json()
    for _ in range(2):  # the retry of a DELETE answers as the first did
        assert (
            api.delete(f"{BASE}/conversations/{conv['id']}/participants/bob?as=dr-smith").status_code == 204
        )
        assert api.delete(f"{BASE}/users/alice/favorites/bakery").status_code == 204
    # a link to something that does not exist is still 404
    is_problem(
        api.delete(f"{BASE}/conversations/{conv['id']}/participants/nobody?as=dr-smith"),
        404,
        "user_not_found",
    )
    is_problem(
        api.delete(f"{BASE}/conversations/nope/participants/bob?as=dr-smith"), 404, "conversation_not_found"
    )


def test_unknown_routes_and_methods(api: Any) -> None:
    is_problem(api.get("/api/v1/nothing-here"), 404, "not_found")
    is_problem(api.post("/healthz"), 405, "method_not_allowed")
