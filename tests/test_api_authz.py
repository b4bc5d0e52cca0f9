"""Issue 20 items 1 and 2 as tables, through HTTP: every route that changes something on a user's
behalf, called as each kind of actor, with the status, the code and the state that results.

The world: a private conversation started by dr-smith (staff, provider) with billing (staff), alice
(client), an external agent (seed 003) and a staff member deactivated since (seed 003's inactive
users). Around it: dr-jones (staff, no part in it), dave (a client with no part in it), carol (an
inactive client with no part in it) and ghost (nobody). Each row starts from a fresh world.

Item 2: whatever the actor may not read answers exactly as what does not exist: the same status, code,
detail and field as the same request for an unknown id (compared whole, not just the code).
"""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
from sqlalchemy import func, select

from mailbridge.domain.models import ChartNote, Conversation, Message, Participant, User

BASE = "/api/v1/practices/acme"
PDF = b"%PDF-1.4\n%\xe2\xe3\n1 0 obj<<>>endobj\n%%EOF\n"
UNKNOWN = "0123456789abcdef01234567"  # an id nothing has

AGENT = {"email": "rita@clinic.test", "name": "Dr Rita Referrer", "kind": "external"}
GONE = {"email": "gone@acme.test", "name": "Gus Gone", "kind": "staff", "role": "provider"}


@dataclass
class World:
    conversation: str
    opening: str  # dr-smith's opening message
    note: str  # dr-smith's internal note
    attachment: str  # a file dr-smith sent


@pytest.fixture
def world(seeded: Any, api: Any) -> World:
    assert api.put(f"{BASE}/users/referrer", json=AGENT).status_code == 201
    assert api.put(f"{BASE}/users/gone", json=GONE).status_code == 201
    created = api.post(
        f"{BASE}/conversations",
        json={
            "kind": "private",
            "subject": "Your results",
            "author": "dr-smith",
            "participants": ["alice", "billing", "referrer", "gone"],
            "body": "Hello Alice, your results are in.",
        },
    )
    assert created.status_code == 201, created.text
    conversation = created.json()
    note = api.post(
        f"{BASE}/conversations/{conversation['id']}/messages",
        json={"author": "dr-smith", "body": "Discussed with the lab, all fine.", "internal": True},
    )
    with_file = api.post(
        f"{BASE}/conversations/{conversation['id']}/messages",
        data={"payload": '{"author": "dr-smith", "body": "The report, attached."}'},
        files=[("attachments", ("report.pdf", io.BytesIO(PDF), "application/pdf"))],
    )
    assert note.status_code == with_file.status_code == 201, with_file.text
    assert api.put(f"{BASE}/users/gone", json=GONE | {"active": False}).status_code == 200
    return World(
        conversation=conversation["id"],
        opening=conversation["messages"][0]["id"],
        note=note.json()["id"],
        attachment=with_file.json()["attachments"][0]["id"],
    )


def _as(actor: str | None) -> str:
    return "" if actor is None else f"?as={actor}"


# ---- the routes: each calls one state-changing route as ``actor`` on ``target`` ----------------------

Call = Callable[[Any, World, str | None, str | None], Any]


def add_participant(api: Any, w: World, actor: str | None, target: str | None) -> Any:
    conversation = target or w.conversation
    return api.put(f"{BASE}/conversations/{conversation}/participants/frontdesk{_as(actor)}")


def remove_participant(api: Any, w: World, actor: str | None, target: str | None) -> Any:
    conversation = target or w.conversation
    return api.delete(f"{BASE}/conversations/{conversation}/participants/billing{_as(actor)}")


def post_message(api: Any, w: World, actor: str | None, target: str | None) -> Any:
    return api.post(
        f"{BASE}/conversations/{target or w.conversation}/messages",
        json={"author": actor, "body": "A message of some length."},
    )


def delete_message(api: Any, w: World, actor: str | None, target: str | None) -> Any:
    return api.delete(f"{BASE}/messages/{target or w.opening}{_as(actor)}")


def delete_note(api: Any, w: World, actor: str | None, target: str | None) -> Any:
    return api.delete(f"{BASE}/messages/{target or w.note}{_as(actor)}")


def delete_conversation(api: Any, w: World, actor: str | None, target: str | None) -> Any:
    return api.delete(f"{BASE}/conversations/{target or w.conversation}{_as(actor)}")


def quick_note(api: Any, w: World, actor: str | None, target: str | None) -> Any:
    return api.post(f"{BASE}/conversations/{target or w.conversation}/quick-note", json={"author": actor})


def mute(api: Any, w: World, actor: str | None, target: str | None) -> Any:
    return api.put(f"{BASE}/conversations/{target or w.conversation}/mutes/{actor}")


def unmute(api: Any, w: World, actor: str | None, target: str | None) -> Any:
    return api.delete(f"{BASE}/conversations/{target or w.conversation}/mutes/{actor}")


# and the reads item 2 speaks of (nothing changes: the state check is "nothing changed")
def read_conversation(api: Any, w: World, actor: str | None, target: str | None) -> Any:
    return api.get(f"{BASE}/conversations/{target or w.conversation}{_as(actor)}")


def read_attachment(api: Any, w: World, actor: str | None, target: str | None) -> Any:
    return api.get(f"{BASE}/attachments/{target or w.attachment}{_as(actor)}")


# ---- what each route changes, read back from the database ------------------------------------------


def _participants(services: Any, w: World) -> set[str]:
    with services.sessions() as session:
        rows = session.scalars(
            select(User.external_id)
            .join(Participant, Participant.user_id == User.id)
            .where(Participant.conversation_id == w.conversation, Participant.removed_at.is_(None))
        )
        return set(rows)


def _live_messages(services: Any, w: World) -> set[str]:
    with services.sessions() as session:
        rows = session.scalars(
            select(Message.id).where(Message.conversation_id == w.conversation, Message.deleted_at.is_(None))
        )
        return set(rows)


def state(services: Any, api: Any, w: World) -> dict[str, Any]:
    with services.sessions() as session:
        notes = session.scalar(select(func.count()).select_from(ChartNote))
        deleted = session.get_one(Conversation, w.conversation).deleted_at is not None
    return {
        "participants": _participants(services, w),
        "messages": _live_messages(services, w),
        "deleted": deleted,
        "chart_notes": notes,
        "muted": set(api.get(f"{BASE}/conversations/{w.conversation}/mutes").json()["muted"]),
    }


# The change each route makes when it is allowed (before → after, on the state above).
def _changed(route: Call, actor: str | None, w: World, before: dict[str, Any], answer: Any) -> dict[str, Any]:
    after = dict(before)
    if route is post_message:
        after["messages"] = before["messages"] | {answer.json()["id"]}
    elif route is add_participant:
        after["participants"] = before["participants"] | {"frontdesk"}
    elif route is remove_participant:
        after["participants"] = before["participants"] - {"billing"}
    elif route is delete_message:
        after["messages"] = before["messages"] - {w.opening}
    elif route is delete_note:
        after["messages"] = before["messages"] - {w.note}
    elif route is delete_conversation:
        after |= {"deleted": True, "messages": set(), "participants": before["participants"]}
    elif route is quick_note:
        after["chart_notes"] = before["chart_notes"] + 1
    elif route is mute:
        after["muted"] = before["muted"] | {actor}
    return after


# ---- the table --------------------------------------------------------------------------------------

NOT_FOUND = "not_found"  # the answer of the same request on an id that does not exist
INACTIVE = (403, "account_inactive")
NO_SUCH_USER = (404, "user_not_found")

# Actors: dr-smith (staff, creator), billing (staff participant), dr-jones (staff outside), alice
# (client participant), dave (client outside), carol (inactive client outside), referrer (external
# agent participant), gone (deactivated staff participant), ghost (nobody), None (no actor given).
EXPECTED: dict[Call, dict[str | None, tuple[int, str]]] = {
    add_participant: {
        "dr-smith": (204, ""),
        "billing": (204, ""),
        "dr-jones": NOT_FOUND,  # a third staff member cannot join (and then read) what they do not read
        "alice": (403, "staff_only"),  # a client does not bring someone in
        "dave": NOT_FOUND,
        "carol": NOT_FOUND,
        "referrer": (403, "staff_only"),
        "gone": INACTIVE,
        "ghost": NO_SUCH_USER,
        None: (422, "actor_required"),
    },
    remove_participant: {
        "dr-smith": (204, ""),
        "billing": (204, ""),  # staff leave
        "dr-jones": NOT_FOUND,
        "alice": (403, "staff_only"),
        "dave": NOT_FOUND,
        "carol": NOT_FOUND,
        "referrer": (403, "staff_only"),
        "gone": INACTIVE,
        "ghost": NO_SUCH_USER,
        None: (422, "actor_required"),
    },
    post_message: {
        "dr-smith": (201, ""),
        "billing": (201, ""),
        "dr-jones": NOT_FOUND,
        "alice": (201, ""),
        "dave": NOT_FOUND,
        "carol": NOT_FOUND,
        "referrer": (403, "external_by_email_only"),
        "gone": INACTIVE,
        "ghost": NO_SUCH_USER,
    },
    delete_message: {
        "dr-smith": (204, ""),
        "billing": (403, "not_author"),  # may read it, did not write it
        "dr-jones": NOT_FOUND,  # was `not_author`: told the message exists
        "alice": (403, "not_author"),
        "dave": NOT_FOUND,
        "carol": NOT_FOUND,
        "referrer": (403, "not_author"),
        "gone": INACTIVE,
        "ghost": NO_SUCH_USER,
    },
    delete_note: {
        "dr-smith": (204, ""),
        "billing": (403, "not_author"),
        "alice": NOT_FOUND,  # an internal note is not hers to read
        "referrer": NOT_FOUND,
        "dr-jones": NOT_FOUND,
    },
    delete_conversation: {
        "dr-smith": (204, ""),
        "billing": (403, "not_creator"),
        "dr-jones": NOT_FOUND,
        "alice": (403, "not_creator"),
        "dave": NOT_FOUND,
        "carol": NOT_FOUND,
        "referrer": (403, "not_creator"),
        "gone": INACTIVE,
        "ghost": NO_SUCH_USER,
    },
    quick_note: {
        "dr-smith": (201, ""),
        "billing": (201, ""),
        "dr-jones": NOT_FOUND,
        "alice": (403, "staff_only"),
        "dave": NOT_FOUND,
        "carol": NOT_FOUND,
        "referrer": (403, "staff_only"),
        "gone": INACTIVE,
        "ghost": NO_SUCH_USER,
    },
    mute: {
        "dr-smith": (204, ""),
        "alice": (204, ""),
        "referrer": (204, ""),
        "dr-jones": NOT_FOUND,
        "dave": NOT_FOUND,
        "gone": INACTIVE,
        "ghost": NO_SUCH_USER,
    },
    unmute: {
        "alice": (204, ""),
        "dr-jones": NOT_FOUND,
        "dave": NOT_FOUND,
        "gone": INACTIVE,
        "ghost": NO_SUCH_USER,
    },
    read_conversation: {
        "dr-smith": (200, ""),
        "dr-jones": NOT_FOUND,
        "dave": NOT_FOUND,
        "carol": NOT_FOUND,
        "gone": INACTIVE,
        "ghost": NO_SUCH_USER,
    },
    read_attachment: {
        "alice": (200, ""),
        "dr-jones": NOT_FOUND,
        "dave": NOT_FOUND,
        "gone": INACTIVE,
        "ghost": NO_SUCH_USER,
    },
}

ROWS = [
    pytest.param(route, actor, expected, id=f"{route.__name__}-{actor or 'no_actor'}")
    for route, table in EXPECTED.items()
    for actor, expected in table.items()
]


# The whole table on SQLite; on PostgreSQL every route with the actors whose answers come from its
# read rules in SQL (a stranger to the conversation, an outsider, the creator): the decisions are
# the same Python rules on both, and a fresh seeded practice per row costs a second on PostgreSQL.
PG_ACTORS = {"dr-smith", "dr-jones", "dave", "alice"}
PG_ROWS = [row for row in ROWS if row.values[1] in PG_ACTORS]


@pytest.mark.parametrize("backend", ["sqlite"])
@pytest.mark.parametrize(("route", "actor", "expected"), ROWS)
def test_each_state_changing_route_as_each_actor(
    world: World, seeded: Any, api: Any, route: Call, actor: str | None, expected: tuple[int, str]
) -> None:
    before = state(seeded, api, world)
    response = route(api, world, actor, None)
    if expected == NOT_FOUND:
        # Exactly what the same request answers for an object that does not exist.
        unknown = route(api, world, actor, UNKNOWN)
        assert response.status_code == 404, response.text
        assert response.json() == unknown.json()
        assert response.headers["content-type"] == unknown.headers["content-type"]
    else:
        status, code = expected
        assert response.status_code == status, response.text
        if code:
            assert response.json()["code"] == code
    allowed = response.status_code < 300
    assert state(seeded, api, world) == (
        _changed(route, actor, world, before, response) if allowed else before
    )


@pytest.mark.postgres
@pytest.mark.parametrize("backend", ["postgres"])
@pytest.mark.parametrize(("route", "actor", "expected"), PG_ROWS)
def test_each_state_changing_route_as_each_actor_on_postgres(
    world: World, seeded: Any, api: Any, route: Call, actor: str | None, expected: tuple[int, str]
) -> None:
    test_each_state_changing_route_as_each_actor(world, seeded, api, route, actor, expected)


# ---- the rules of each kind, on the participant routes (staff acting, who may read) -----------------


def _create(api: Any, **body: Any) -> str:
    full = {"kind": "private", "subject": "About", "author": "dr-smith", "body": "Hello there, all."} | body
    created = api.post(f"{BASE}/conversations", json=full)
    assert created.status_code == 201, created.text
    return str(created.json()["id"])


def _members(api: Any, conversation: str) -> list[str]:
    return sorted(api.get(f"{BASE}/conversations/{conversation}?as=dr-smith").json()["participants"])


@pytest.mark.parametrize(
    ("kind", "company", "participants", "change", "user", "status", "code"),
    [
        # seed 004: a direct channel is exactly the two friends
        ("direct", None, ["dr-jones"], "put", "billing", 422, "direct_two_people"),
        ("direct", None, ["dr-jones"], "put", "alice", 422, "direct_staff_only"),
        ("direct", None, ["dr-jones"], "put", "dr-jones", 204, ""),  # already one of the two
        ("direct", None, ["dr-jones"], "delete", "dr-jones", 422, "direct_two_people"),
        # seed 003: group privacy; a second client would read the first one's messages
        ("private", None, ["alice"], "put", "bob", 422, "private_has_client"),
        ("private", None, ["alice"], "put", "billing", 204, ""),
        ("private", None, ["billing"], "put", "alice", 204, ""),  # the first client
        # seed 001: a confidential conversation is read by clients of its company only
        ("confidential", "bakery", ["alice"], "put", "dave", 422, "client_not_following_company"),
        ("confidential", "bakery", ["alice"], "put", "bob", 204, ""),
        # seed 000: a company conversation takes any client (favourite holders then read it too)
        ("company", "bakery", ["alice"], "put", "dave", 204, ""),
        # the creator stays; somebody besides them stays
        ("private", None, ["alice", "billing"], "delete", "dr-smith", 422, "creator_stays"),
        ("private", None, ["alice"], "delete", "alice", 422, "no_recipient"),
        ("private", None, ["alice", "billing"], "delete", "alice", 204, ""),
        ("private", None, ["alice"], "delete", "bob", 204, ""),  # not a participant: DELETE is idempotent
    ],
)
def test_the_rules_of_each_kind_apply_to_the_participant_routes(
    seeded: Any,
    api: Any,
    kind: str,
    company: str | None,
    participants: list[str],
    change: str,
    user: str,
    status: int,
    code: str,
) -> None:
    conversation = _create(api, kind=kind, company=company, participants=participants)
    before = _members(api, conversation)
    url = f"{BASE}/conversations/{conversation}/participants/{user}?as=dr-smith"
    response = api.put(url) if change == "put" else api.delete(url)
    assert response.status_code == status, response.text
    if code:
        assert response.json()["code"] == code
    if status >= 300:
        assert _members(api, conversation) == before
    elif change == "put":
        assert _members(api, conversation) == sorted(set(before) | {user})
    else:
        assert _members(api, conversation) == sorted(set(before) - {user})


def test_a_third_staff_member_cannot_join_a_direct_channel_and_read_it(seeded: Any, api: Any) -> None:
    """The issue's report, as it happened: billing added to dr-smith and dr-jones's direct channel."""
    channel = _create(api, kind="direct", participants=["dr-jones"], body="Case conference at noon?")
    for actor in ("billing", "dr-smith", "dr-jones"):
        assert api.put(f"{BASE}/conversations/{channel}/participants/billing?as={actor}").status_code in (
            404,
            422,
        )
    assert api.put(f"{BASE}/conversations/{channel}/participants/billing").json()["code"] == "actor_required"
    assert api.get(f"{BASE}/conversations/{channel}/messages?as=billing").status_code == 404
    assert _members(api, channel) == ["dr-jones", "dr-smith"]


def test_a_staff_member_following_the_company_may_add_to_a_company_conversation(
    seeded: Any, api: Any
) -> None:
    """Kinds and favourites: billing follows the bakery, so reads its company conversations without
    taking part, and may add someone; dr-jones does not, and is answered as if it did not exist."""
    conversation = _create(api, kind="company", company="bakery", participants=["alice"])
    assert (
        api.put(f"{BASE}/conversations/{conversation}/participants/frontdesk?as=billing").status_code == 204
    )
    refused = api.put(f"{BASE}/conversations/{conversation}/participants/dr-jones?as=dr-jones")
    assert (refused.status_code, refused.json()["code"]) == (404, "conversation_not_found")
    assert _members(api, conversation) == ["alice", "dr-smith", "frontdesk"]


def test_an_agent_added_by_staff_later_reads_only_from_then_on_by_email(seeded: Any, api: Any) -> None:
    """Seed 003's external agents: staff add them (a client may not), and they read the conversation."""
    assert api.put(f"{BASE}/users/referrer", json=AGENT).status_code == 201
    conversation = _create(api, participants=["alice"])
    by_client = api.put(f"{BASE}/conversations/{conversation}/participants/referrer?as=alice")
    assert (by_client.status_code, by_client.json()["code"]) == (403, "staff_only")
    assert api.get(f"{BASE}/conversations/{conversation}?as=referrer").status_code == 404
    assert (
        api.put(f"{BASE}/conversations/{conversation}/participants/referrer?as=dr-smith").status_code == 204
    )
    assert api.get(f"{BASE}/conversations/{conversation}?as=referrer").status_code == 200
