"""Seed 003's quick note through the HTTP API: staff only, one client only, prefilled from the thread,
stored in the client's chart notes and announced by ``chart_note.created``."""

from __future__ import annotations

import io
from typing import Any

import pytest
from sqlalchemy import select

from mailbridge.domain.models import Event
from mailbridge.policy.rules import Person, Situation, can_quick_note
from tests.mailhelpers import open_conversation

BASE = "/api/v1/practices/acme"


def note(api: Any, conversation_id: str, **body: Any) -> Any:
    return api.post(f"{BASE}/conversations/{conversation_id}/quick-note", json={"author": "dr-smith"} | body)


def test_a_quick_note_is_prefilled_from_the_thread_and_kept_in_the_clients_chart(
    seeded: Any, api: Any
) -> None:
    conversation_id = open_conversation(seeded, participants=("alice", "billing"))  # 1 client + staff
    reply = api.post(
        f"{BASE}/conversations/{conversation_id}/messages",
        data={"payload": '{"author": "alice", "body": "Here is my scan, as promised."}'},
        files=[
            (
                "attachments",
                (
                    "scan.pdf",
                    io.BytesIO(b"%PDF-1.4\n%\xe2\xe3\n1 0 obj<<>>endobj\n%%EOF\n"),
                    "application/pdf",
                ),
            )
        ],
    )
    assert reply.status_code == 201, reply.text
    internal = api.post(
        f"{BASE}/conversations/{conversation_id}/messages",
        json={"author": "dr-smith", "body": "Results look normal, no follow-up.", "internal": True},
    )
    assert internal.status_code == 201
    created = note(api, conversation_id)
    assert created.status_code == 201, created.text
    body = created.json()
    assert (
        body["client"] == "alice" and body["author"] == "dr-smith" and body["conversation"] == conversation_id
    )
    assert body["title"] == "Your next appointment"  # the subject, when no title is given
    text = body["text"]
    assert text.startswith("Your next appointment\n\nDr Alex Smith — ")
    assert "Hello, shall we meet on Tuesday at 10?" in text
    assert "Alice Martin — " in text and "Here is my scan, as promised." in text
    assert "Attachments: scan.pdf" in text
    assert "(internal note)\nResults look normal" in text  # chart notes are staff records
    assert text.index("Dr Alex Smith") < text.index("Alice Martin") < text.index("Results look normal")
    own = note(api, conversation_id, title="Scan received", text="Client sent the scan; reviewed.").json()
    assert own["title"] == "Scan received" and own["text"] == "Client sent the scan; reviewed."
    chart = api.get(f"{BASE}/clients/alice/chart-notes?limit=1")
    assert [n["id"] for n in chart.json()["items"]] == [own["id"]]  # newest first, paginated
    rest = api.get(f"{BASE}/clients/alice/chart-notes?limit=1&cursor={chart.json()['next_cursor']}").json()
    assert [n["id"] for n in rest["items"]] == [body["id"]] and rest["next_cursor"] is None
    assert api.get(f"{BASE}/clients/bob/chart-notes").json()["items"] == []
    with seeded.sessions() as session:
        announced = session.scalars(select(Event).where(Event.type == "chart_note.created")).all()
    assert [e.data["chart_note"] for e in announced] == [body["id"], own["id"]]
    assert announced[0].data["client"] == "alice" and "text" not in announced[0].data  # ids only


def test_quick_note_rules(seeded: Any, api: Any) -> None:
    group = open_conversation(seeded, participants=("alice", "bob"))
    assert note(api, group).json()["code"] == "group_conversation"
    assert note(api, group).status_code == 403
    alone = api.post(
        f"{BASE}/conversations",
        json={
            "kind": "direct",
            "subject": "Lunch?",
            "author": "dr-smith",
            "participants": ["dr-jones"],
            "body": "Lunch on Friday, doctor?",
        },
    ).json()["id"]
    assert note(api, alone).json()["code"] == "no_client"
    single = open_conversation(seeded, participants=("alice",))
    assert (
        note(api, single, author="alice").json()["code"] == "staff_only"
    )  # clients do not write chart notes
    # dr-jones cannot read it: answered as a conversation that does not exist (issue 20 item 2)
    assert note(api, single, author="dr-jones").json()["code"] == "conversation_not_found"
    assert note(api, single, text="   ").json()["code"] == "empty_note"
    assert note(api, single, author="nobody").status_code == 404
    assert api.get(f"{BASE}/clients/alice/chart-notes?as=alice").json()["code"] == "staff_only"
    assert api.get(f"{BASE}/clients/dr-smith/chart-notes").json()["code"] == "not_a_client"
    # a removed second client no longer makes it a group: only active client participants count
    assert api.delete(f"{BASE}/conversations/{group}/participants/bob?as=dr-smith").status_code == 204
    assert note(api, group).status_code == 201
    assert api.delete(f"{BASE}/conversations/{single}?as=dr-smith").status_code == 204
    assert note(api, single).json()["code"] == "conversation_not_found"


STAFF = Person(1, "staff", "provider")
OTHER_STAFF = Person(2, "staff", "biller")
ALICE = Person(3, "client")
BOB = Person(4, "client")


@pytest.mark.parametrize(
    ("actor", "kind", "participants", "allowed", "reason"),
    [
        # seed 003: "only 1 client is included (+ unlimited staff)"
        (STAFF, "private", (STAFF, ALICE), True, "allowed"),
        (STAFF, "private", (STAFF, OTHER_STAFF, ALICE), True, "allowed"),
        (STAFF, "company", (STAFF, ALICE), True, "allowed"),
        # "Group messages (2+ clients) do not support this feature"
        (STAFF, "private", (STAFF, ALICE, BOB), False, "group_conversation"),
        (STAFF, "company", (STAFF, ALICE, BOB), False, "group_conversation"),
        (STAFF, "direct", (STAFF, OTHER_STAFF), False, "no_client"),
        # chart notes are staff records; and one must be able to read the thread
        (ALICE, "private", (STAFF, ALICE), False, "staff_only"),
        (OTHER_STAFF, "private", (STAFF, ALICE), False, "not_participant"),
        (Person(5, "staff", "provider", active=False), "private", (STAFF, ALICE), False, "account_inactive"),
    ],
)
def test_can_quick_note_table(
    actor: Person, kind: Any, participants: Any, allowed: bool, reason: str
) -> None:
    verdict = can_quick_note(
        Situation(actor=actor, kind=kind, participants=participants, friendship="accepted")
    )
    assert (verdict.allowed, verdict.reason) == (allowed, reason)
