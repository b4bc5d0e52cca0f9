"""Issue 20 items 9 and 11 through HTTP: refusals an app can act on, and what an app needs next to it
(directory lists, deletion, bulk upsert, conversation summaries, one message, the conversation id)."""

from __future__ import annotations

import io
import json
from typing import Any

from sqlalchemy import func, select

from mailbridge.domain.models import Attachment, Message
from tests import filemakers as fm
from tests.conftest import PRACTICE, USERS
from tests.test_pagination import counting

BASE = "/api/v1/practices/acme"


def _payload(**over: Any) -> dict[str, Any]:
    return {
        "kind": "private",
        "subject": "Your report",
        "author": "dr-smith",
        "participants": ["alice"],
        "body": "The report you asked for.",
    } | over


# ---------------------------------------------------------------------------------------- item 9


def test_an_upload_whose_file_is_withheld_is_refused_with_the_file_and_the_reason(
    seeded: Any, api: Any
) -> None:
    """An .exe named report.pdf: 422 attachment_refused naming it, and nothing posted or stored."""
    with seeded.sessions() as session:
        before = session.scalar(select(func.count()).select_from(Message))
    refused = api.post(
        f"{BASE}/conversations",
        data={"payload": json.dumps(_payload())},
        files=[
            ("attachments", ("scan.png", io.BytesIO(fm.png()), "image/png")),
            ("attachments", ("report.pdf", io.BytesIO(fm.pe()), "application/pdf")),
        ],
    )
    assert refused.status_code == 422, refused.text
    assert refused.headers["content-type"].startswith("application/problem+json")
    problem = refused.json()
    assert problem["code"] == "attachment_refused" and problem["field"] == "attachments"
    assert problem["filename"] == "report.pdf" and problem["reason"]
    assert [a["filename"] for a in problem["attachments"]] == ["report.pdf"]
    with seeded.sessions() as session:
        assert session.scalar(select(func.count()).select_from(Message)) == before
        assert session.scalar(select(func.count()).select_from(Attachment)) == 0

    created = api.post(f"{BASE}/conversations", json=_payload()).json()
    on_reply = api.post(
        f"{BASE}/conversations/{created['id']}/messages",
        data={"payload": json.dumps({"author": "dr-smith", "body": "Here it is."})},
        files=[("attachments", ("report.pdf", io.BytesIO(fm.pe()), "application/pdf"))],
    )
    assert on_reply.status_code == 422 and on_reply.json()["code"] == "attachment_refused"
    page = api.get(f"{BASE}/conversations/{created['id']}/messages?as=dr-smith").json()
    assert len(page["items"]) == 1  # nothing posted


def test_an_unknown_multipart_field_is_named(seeded: Any, api: Any) -> None:
    png = [("attachments", ("a.png", io.BytesIO(fm.png()), "image/png"))]  # makes the body multipart
    refused = api.post(
        f"{BASE}/conversations",
        data={"payload": json.dumps(_payload()), "attachment": "typo"},
        files=png,
    )
    assert refused.status_code == 422
    assert refused.json()["code"] == "invalid_request" and refused.json()["field"] == "attachment"
    wrong_file_field = api.post(
        f"{BASE}/conversations",
        data={"payload": json.dumps(_payload())},
        files=[("file", ("a.png", io.BytesIO(fm.png()), "image/png"))],
    )
    assert wrong_file_field.status_code == 422 and wrong_file_field.json()["field"] == "file"
    text_as_attachment = api.post(
        f"{BASE}/conversations",
        data={"payload": json.dumps(_payload()), "attachments": "not a file"},
        files=[("attachments", ("a.png", io.BytesIO(fm.png()), "image/png"))],
    )
    assert text_as_attachment.status_code == 422
    assert text_as_attachment.json()["field"] == "attachments"


def test_unknown_settings_keys_are_refused_like_unknown_top_level_keys(seeded: Any, api: Any) -> None:
    practice = {k: v for k, v in PRACTICE.items() if k != "settings"}
    top = api.put(BASE, json=practice | {"colour": "#fff"})
    assert top.status_code == 422 and top.json()["field"] == "colour"
    refused = api.put(BASE, json=practice | {"settings": {"brand_colour": "#fff", "min_body_chars": 3}})
    assert refused.status_code == 422
    assert refused.json()["code"] == "invalid_settings"
    assert refused.json()["field"] == "settings.brand_colour"
    assert api.get(BASE).json()["settings"]["min_body_chars"] == 10  # nothing stored
    nested = api.put(BASE, json=practice | {"settings": {"notify_content": {"privat": "full"}}})
    assert nested.status_code == 422 and nested.json()["code"] == "invalid_settings"
    known = api.put(BASE, json=practice | {"settings": {"brand_color": "#fff"}})
    assert known.status_code == 200 and known.json()["settings"]["brand_color"] == "#fff"
    cleared = api.put(BASE, json=practice | {"settings": {"some_old_key": None}})
    assert cleared.status_code == 200  # null clears a key an older version stored: allowed


# ---------------------------------------------------------------------------------------- item 11


def _walk(api: Any, url: str, limit: int) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    cursor = None
    while True:
        sep = "&" if "?" in url else "?"
        page = api.get(f"{url}{sep}limit={limit}" + (f"&cursor={cursor}" if cursor else ""))
        assert page.status_code == 200, page.text
        items += page.json()["items"]
        cursor = page.json()["next_cursor"]
        if cursor is None:
            return items


def test_users_are_listed_by_id_with_filters_a_page_at_a_time(seeded: Any, api: Any) -> None:
    every = _walk(api, f"{BASE}/users", 3)
    assert [u["id"] for u in every] == sorted(USERS)
    alice = next(u for u in every if u["id"] == "alice")
    assert alice["alt_emails"] == ["alice.work@client.test"] and alice["email_bouncing"] is False
    clients = _walk(api, f"{BASE}/users?kind=client", 2)
    assert {u["id"] for u in clients} == {"alice", "bob", "carol", "dave"}
    inactive = _walk(api, f"{BASE}/users?active=false", 10)
    assert [u["id"] for u in inactive] == ["carol"]
    staff_active = _walk(api, f"{BASE}/users?kind=staff&active=true", 10)
    assert [u["id"] for u in staff_active] == ["billing", "dr-jones", "dr-smith", "frontdesk"]
    assert api.get(f"{BASE}/users?kind=robot").status_code == 422
    assert api.get(f"{BASE}/users?cursor=nope").json()["code"] == "invalid_cursor"


def test_companies_favourites_and_friendships_are_listed(seeded: Any, api: Any) -> None:
    assert _walk(api, f"{BASE}/companies", 1) == [
        {"id": "bakery", "name": "Acme Bakery"},
        {"id": "garage", "name": "Garage Ltd"},
    ]
    assert api.put(f"{BASE}/users/alice/favorites/garage").status_code == 204
    assert [c["id"] for c in _walk(api, f"{BASE}/users/alice/favorites", 1)] == ["bakery", "garage"]
    assert _walk(api, f"{BASE}/users/dave/favorites", 5) == []
    assert api.get(f"{BASE}/users/nobody/favorites").status_code == 404
    assert api.put(f"{BASE}/friendships/billing/dr-jones", json={"state": "requested"}).status_code == 201
    every = _walk(api, f"{BASE}/friendships", 1)
    pairs = {(f["user_a"], f["user_b"], f["state"]) for f in every}
    assert len(every) == 2 and ("dr-smith", "dr-jones", "accepted") in pairs
    assert {frozenset((f["user_a"], f["user_b"])) for f in every} == {
        frozenset(("dr-smith", "dr-jones")),
        frozenset(("billing", "dr-jones")),
    }
    of_smith = _walk(api, f"{BASE}/friendships?user=dr-smith", 5)
    assert [(f["state"]) for f in of_smith] == ["accepted"]
    requested = _walk(api, f"{BASE}/friendships?state=requested", 5)
    assert {requested[0]["user_a"], requested[0]["user_b"]} == {"billing", "dr-jones"}


def test_directory_lists_cost_the_same_statements_whatever_the_page_size(seeded: Any, api: Any) -> None:
    """No N+1: addresses and suppressions are loaded for the whole page."""
    for n in range(30):
        api.put(
            f"{BASE}/users/c{n:02}", json={"email": f"c{n}@client.test", "name": f"C {n}", "kind": "client"}
        )
        api.put(f"{BASE}/companies/k{n:02}", json={"name": f"K {n}"})
        api.put(f"{BASE}/users/c{n:02}/favorites/k{n:02}")
        api.put(f"{BASE}/users/c00/favorites/k{n:02}")
    for url in (
        f"{BASE}/users",
        f"{BASE}/companies",
        f"{BASE}/users/c00/favorites",
        f"{BASE}/conversations?as=alice",
    ):
        counts = {}
        for limit in (3, 25):
            with counting(seeded) as statements:
                page = api.get(f"{url}{'&' if '?' in url else '?'}limit={limit}")
            assert page.status_code == 200, page.text
            counts[limit] = len(statements)
        assert counts[3] == counts[25], (url, counts)


def test_conversation_list_items_carry_the_count_and_latest_time_the_reader_may_see(
    seeded: Any, api: Any
) -> None:
    created = api.post(f"{BASE}/conversations", json=_payload()).json()
    assert (
        created["message_count"] == 1 and created["last_message_at"] == created["messages"][0]["created_at"]
    )
    cid = created["id"]
    api.post(
        f"{BASE}/conversations/{cid}/messages",
        json={"author": "dr-smith", "body": "Internal: call her.", "internal": True},
    )
    last = api.post(
        f"{BASE}/conversations/{cid}/messages", json={"author": "alice", "body": "Thank you, got it."}
    ).json()
    assert last["conversation"] == cid
    empty = api.post(f"{BASE}/conversations", json=_payload(subject="Other", participants=["bob"])).json()
    by_staff = {c["id"]: c for c in api.get(f"{BASE}/conversations?as=dr-smith").json()["items"]}
    assert by_staff[cid]["message_count"] == 3 and by_staff[cid]["last_message_at"] == last["created_at"]
    assert by_staff[cid]["messages"] == []  # kept for compatibility, deprecated
    assert by_staff[empty["id"]]["message_count"] == 1
    by_client = {c["id"]: c for c in api.get(f"{BASE}/conversations?as=alice").json()["items"]}
    assert by_client[cid]["message_count"] == 2  # the internal note is not hers to count
    one = api.get(f"{BASE}/conversations/{cid}?as=alice").json()
    assert one["message_count"] == 2 and all(m["conversation"] == cid for m in one["messages"])
    thread = api.get(f"{BASE}/conversations/{cid}/messages?as=dr-smith").json()["items"]
    assert {m["conversation"] for m in thread} == {cid}


def test_one_message_is_read_by_the_rules_and_unreadable_is_exactly_unknown(seeded: Any, api: Any) -> None:
    created = api.post(f"{BASE}/conversations", json=_payload()).json()
    cid, first = created["id"], created["messages"][0]
    note = api.post(
        f"{BASE}/conversations/{cid}/messages",
        json={"author": "dr-smith", "body": "Internal: she called.", "internal": True},
    ).json()
    got = api.get(f"{BASE}/messages/{first['id']}?as=alice")
    assert got.status_code == 200 and got.json() == first | {"withheld": []}
    assert got.json()["conversation"] == cid
    assert api.get(f"{BASE}/messages/{note['id']}?as=dr-smith").json()["internal"] is True
    unknown = api.get(f"{BASE}/messages/{'0' * 32}?as=alice")
    assert unknown.status_code == 404
    for actor, refused in (
        ("alice", api.get(f"{BASE}/messages/{note['id']}?as=alice")),  # an internal note, to a client
        ("bob", api.get(f"{BASE}/messages/{first['id']}?as=bob")),  # not his conversation
        ("dr-jones", api.get(f"{BASE}/messages/{first['id']}?as=dr-jones")),  # private, not a participant
    ):
        # The same answer as an unknown id asked by the same person (in that person's language)
        unknown_to_them = api.get(f"{BASE}/messages/{'0' * 32}?as={actor}")
        assert refused.status_code == 404 and refused.json() == unknown_to_them.json()
    other = {"name": "Other", "reply_domain": "reply.other.test", "notify_from": "n@other.test"}
    assert api.put("/api/v1/practices/other", json=other).status_code == 201
    api.put(
        "/api/v1/practices/other/users/alice",
        json=USERS["alice"] | {"email": "alice@other.test", "alt_emails": []},
    )
    assert api.get(f"/api/v1/practices/other/messages/{first['id']}?as=alice").json() == unknown.json()
    assert api.delete(f"{BASE}/messages/{first['id']}?as=dr-smith").status_code == 204
    assert api.get(f"{BASE}/messages/{first['id']}?as=dr-smith").json() == unknown.json()
    assert api.put(f"{BASE}/users/dr-jones", json=USERS["dr-jones"] | {"active": False}).status_code == 200
    assert api.get(f"{BASE}/messages/{note['id']}?as=dr-jones").json()["code"] == "account_inactive"


def test_deleting_a_user_ends_their_part_and_keeps_what_they_wrote(seeded: Any, api: Any) -> None:
    created = api.post(f"{BASE}/conversations", json=_payload(participants=["alice", "dr-jones"])).json()
    cid = created["id"]
    said = api.post(
        f"{BASE}/conversations/{cid}/messages", json={"author": "alice", "body": "Thanks, received."}
    ).json()
    assert api.delete(f"{BASE}/users/alice").status_code == 204
    assert api.get(f"{BASE}/users/alice").status_code == 404
    assert api.delete(f"{BASE}/users/alice").status_code == 404  # already gone: unknown
    assert api.delete(f"{BASE}/users/nobody").json()["code"] == "user_not_found"
    assert "alice" not in [u["id"] for u in _walk(api, f"{BASE}/users", 50)]
    conversation = api.get(f"{BASE}/conversations/{cid}?as=dr-smith").json()
    assert conversation["participants"] == ["dr-smith", "dr-jones"]
    assert [m["author"] for m in conversation["messages"]] == ["dr-smith", "alice"]  # what she wrote stays
    assert api.get(f"{BASE}/messages/{said['id']}?as=dr-jones").json()["body"] == "Thanks, received."
    assert api.get(f"{BASE}/conversations?as=alice").json()["code"] == "user_not_found"
    assert api.put(f"{BASE}/users/alice/favorites/bakery").status_code == 404
    trail = api.get(f"{BASE}/audit?action=user_deleted").json()["items"]
    assert trail[0]["target_id"] == "alice" and trail[0]["details"]["conversations_left"] == 1
    assert trail[0]["details"]["favorites_removed"] == 1
    # Her address is free: someone else may hold it (sender recognition follows the new holder).
    assert api.put(f"{BASE}/users/alicia", json=USERS["alice"] | {"name": "Alicia"}).status_code == 201
    # The same id comes back as a new member: no conversation, no favourite.
    back = api.put(
        f"{BASE}/users/alice", json=USERS["alice"] | {"email": "alice2@client.test", "alt_emails": []}
    )
    assert back.status_code == 201
    assert api.get(f"{BASE}/conversations?as=alice").json()["items"] == []
    assert _walk(api, f"{BASE}/users/alice/favorites", 5) == []


def test_deleting_a_staff_member_closes_their_friendships(seeded: Any, api: Any) -> None:
    assert api.delete(f"{BASE}/users/dr-jones").status_code == 204
    assert _walk(api, f"{BASE}/friendships", 10) == []
    back = api.put(f"{BASE}/users/dr-jones", json=USERS["dr-jones"])
    assert back.status_code == 201
    assert [f["state"] for f in _walk(api, f"{BASE}/friendships?user=dr-jones", 10)] == ["closed"]
    direct = api.post(f"{BASE}/conversations", json=_payload(kind="direct", participants=["dr-jones"]))
    assert direct.status_code == 403  # a new friendship is needed


def test_deleting_a_company_ends_its_memberships_and_keeps_its_conversations(seeded: Any, api: Any) -> None:
    company = api.post(
        f"{BASE}/conversations", json=_payload(kind="company", company="bakery", participants=["alice"])
    ).json()
    confidential = api.post(
        f"{BASE}/conversations", json=_payload(kind="confidential", company="bakery", participants=["alice"])
    ).json()
    assert api.delete(f"{BASE}/companies/bakery").status_code == 204
    assert api.delete(f"{BASE}/companies/bakery").status_code == 404
    assert api.get(f"{BASE}/companies").json()["items"] == [{"id": "garage", "name": "Garage Ltd"}]
    assert _walk(api, f"{BASE}/users/bob/favorites", 5) == []
    readable = lambda who: {c["id"] for c in api.get(f"{BASE}/conversations?as={who}").json()["items"]}  # noqa: E731
    assert readable("dr-smith") == {company["id"], confidential["id"]}  # the creator takes part in both
    assert readable("alice") == {company["id"]}  # confidential: only clients following the company
    assert readable("bob") == set() and readable("billing") == set()  # they only followed it
    assert api.get(f"{BASE}/conversations/{company['id']}?as=dr-smith").json()["company"] == "bakery"
    refused = api.post(f"{BASE}/conversations", json=_payload(kind="company", company="bakery"))
    assert refused.status_code == 404 and refused.json()["code"] == "company_not_found"
    trail = api.get(f"{BASE}/audit?action=company_deleted").json()["items"]
    assert trail[0]["details"] == {"favorites_removed": 4, "conversations_kept": 2}
    assert api.put(f"{BASE}/companies/bakery", json={"name": "Acme Bakery"}).status_code == 201
    assert _walk(api, f"{BASE}/users/bob/favorites", 5) == []  # members do not come back


def test_bulk_upsert_reports_each_item_and_keeps_the_good_ones(seeded: Any, api: Any) -> None:
    body = {
        "users": {
            "erin": {"email": "erin@client.test", "name": "Erin", "kind": "client"},
            "alice": USERS["alice"] | {"name": "Alice M."},
            "dr-smith": USERS["dr-smith"] | {"kind": "client", "role": None},  # a kind never changes
        },
        "companies": {"florist": {"name": "Florist"}},
        "favorites": [["erin", "florist"], ["erin", "nowhere"]],
        "friendships": [["dr-smith", "billing", "requested"], ["dr-smith", "alice", "accepted"]],
    }
    answer = api.post(f"{BASE}/directory/import", json=body)
    assert answer.status_code == 200, answer.text
    results = [
        (r["type"], r["id"], r["status"], (r["error"] or {}).get("code")) for r in answer.json()["results"]
    ]
    assert results == [
        ("user", "erin", "created", None),
        ("user", "alice", "updated", None),
        ("user", "dr-smith", "failed", "kind_change"),
        ("company", "florist", "created", None),
        ("favorite", "erin/florist", "created", None),
        ("favorite", "erin/nowhere", "failed", "company_not_found"),
        ("friendship", "dr-smith/billing", "created", None),
        ("friendship", "dr-smith/alice", "failed", "direct_staff_only"),
    ]
    assert answer.json()["counts"] == {"created": 4, "updated": 1, "failed": 3}
    failed = answer.json()["results"][5]["error"]
    assert failed["status"] == 404 and failed["field"] == "company"
    assert api.get(f"{BASE}/users/erin").status_code == 200
    assert api.get(f"{BASE}/users/alice").json()["name"] == "Alice M."
    assert api.get(f"{BASE}/users/dr-smith").json()["kind"] == "staff"  # the failed item changed nothing
    assert [c["id"] for c in _walk(api, f"{BASE}/users/erin/favorites", 5)] == ["florist"]
    again = api.post(f"{BASE}/directory/import", json={"favorites": [["erin", "florist"]]}).json()
    assert again["results"][0]["status"] == "updated"


def test_bulk_upsert_atomic_is_all_or_nothing_like_the_cli(seeded: Any, api: Any) -> None:
    body = {
        "users": {"frank": {"email": "frank@client.test", "name": "Frank", "kind": "client"}},
        "favorites": [["frank", "nowhere"]],
    }
    refused = api.post(f"{BASE}/directory/import?atomic=true", json=body)
    assert refused.status_code == 404
    assert refused.json()["code"] == "company_not_found"
    assert refused.json()["item"] == {"type": "favorite", "id": "frank/nowhere"}
    assert api.get(f"{BASE}/users/frank").status_code == 404  # nothing written
    bad_shape = api.post(f"{BASE}/directory/import", json={"users": {"x": {"kind": "robot"}}})
    assert bad_shape.status_code == 422 and bad_shape.json()["field"].startswith("users.x")
    unknown = api.post(f"{BASE}/directory/import", json={"people": {}})
    assert unknown.status_code == 422 and unknown.json()["field"] == "people"


def test_the_import_command_applies_the_same_items_atomically(
    tmp_path: Any, monkeypatch: Any, capsys: Any
) -> None:
    """`mailbridge import` runs apply_directory too: a failing item names itself, nothing is written."""
    from mailbridge.cli import main

    monkeypatch.setenv("MAILBRIDGE_DATA_DIR", str(tmp_path / "var"))
    practice = {
        "slug": "imp",
        "name": "Imported",
        "reply_domain": "reply.imp.test",
        "notify_from": "n@imp.test",
    }
    bad = tmp_path / "bad.json"
    bad.write_text(
        json.dumps(
            {
                "practices": [
                    practice
                    | {
                        "users": {"u1": {"email": "u1@x.test", "name": "U", "kind": "client"}},
                        "favorites": [["u1", "nowhere"]],
                    }
                ]
            }
        )
    )
    assert main(["import", str(bad)]) == 2
    assert "company_not_found: favorite u1/nowhere" in capsys.readouterr().err
    good = tmp_path / "good.json"
    good.write_text(json.dumps({"practices": [practice | {"companies": {"k": {"name": "K"}}}]}))
    assert main(["import", str(good)]) == 0
    assert "1 practices, 0 users, 1 companies" in capsys.readouterr().out
    follow = tmp_path / "follow.json"
    follow.write_text(json.dumps({"practices": [practice | {"favorites": [["u1", "k"]]}]}))
    assert main(["import", str(follow)]) == 2
    assert "user_not_found: favorite u1/k" in capsys.readouterr().err  # the first load wrote nothing
