"""Quarantine release and discard through the doors: mail in over SMTP, decisions over the HTTP API.

Release posts exactly what the pipeline would have posted (finding 7: a staff ``#note`` stays an
internal note), judged by the policy at release time; a stranger's enquiry is released to a new contact
created on the spot; every decision is an audit row; the raw copy goes once the decision is made.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from mailbridge.domain import directory
from mailbridge.domain.db import transaction
from mailbridge.domain.models import AuditEvent, InboundLog, InboundState, Message, Outbox, QuarantineItem
from tests import filemakers as fm
from tests.mailhelpers import (
    QUOTED_REPLY,
    add_client,
    live_server,
    open_conversation,
    reply_address,
    reply_message,
    send,
)

BASE = "/api/v1/practices/acme"
# An envelope sender on a domain with no SPF: nothing aligned with the From, so a confidential or
# private conversation holds the reply for review (auth_not_aligned).
UNALIGNED = "relay@elsewhere.test"


@pytest.fixture
def live(seeded: Any) -> Any:
    with live_server(seeded) as server:
        yield server


def held(api: Any, state: str = "held") -> list[dict[str, Any]]:
    response = api.get(f"{BASE}/quarantine?state={state}")
    assert response.status_code == 200, response.text
    return list(response.json()["items"])


def raw_path_of(services: Any, item_id: str) -> str | None:
    with services.sessions() as session:
        item = session.get_one(QuarantineItem, item_id)
        return session.get_one(InboundLog, item.inbound_id).raw_ref


def audit_rows(services: Any) -> list[tuple[str, str | None, str, str]]:
    with services.sessions() as session:
        return [
            (a.action, a.actor, a.target_kind, a.target_id)
            for a in session.scalars(select(AuditEvent).order_by(AuditEvent.id))
        ]


def with_files(msg: Any, files: list[tuple[str, str, bytes]]) -> Any:
    for name, ctype, data in files:
        maintype, subtype = ctype.split("/")
        msg.add_attachment(data, maintype=maintype, subtype=subtype, filename=name)
    return msg


STAFF_NOTE = """#note
She sounded stressed on the phone; follow up before Friday.

On Sat, Nov 21, 2026 at 9:00 AM Alice Martin <alice@client.test> wrote:
> Can we talk about my results?
"""


def test_released_staff_note_stays_internal(seeded: Any, api: Any, live: Any) -> None:
    """Finding 7 through the doors: a staff email reply starting with #note, to a confidential
    conversation, unaligned so it is held; released over HTTP it is an internal note (marker line
    gone, quote hidden, files judged): the client neither reads it nor is notified of it."""
    conv = open_conversation(seeded, kind="confidential", company="bakery", participants=("alice",))
    address = reply_address(seeded, conv, "dr-smith")
    note = with_files(
        reply_message("Dr Alex Smith <dr.smith@acme.test>", address, STAFF_NOTE, subject="Re: results"),
        [
            ("labs.pdf", "application/pdf", fm.pdf()),
            ("remote.rdp", "text/plain", b"full address:s:x:3389\r\n"),
        ],
    )
    assert send(live, note, UNALIGNED, address)[0] == 250
    (item,) = held(api)
    assert item["reason"] == "auth_not_aligned" and item["conversation"] == conv
    assert item["internal"] is True and item["from_name"] == "Dr Alex Smith"
    assert item["preview"] == "She sounded stressed on the phone; follow up before Friday."
    assert "#note" not in item["preview"] and "could not be verified" in item["reason_text"]
    assert [(a["filename"], a["content_type"]) for a in item["attachments"]] == [
        ("labs.pdf", "application/pdf"),
        ("remote.rdp", "text/plain"),
    ]
    detail = api.get(f"{BASE}/quarantine/{item['id']}").json()
    assert detail["internal"] is True and detail["body"] == item["preview"]
    assert "Can we talk about my results?" in detail["hidden"]
    assert [(f["filename"], f["accepted"], f["reason"]) for f in detail["attachments"]] == [
        ("labs.pdf", True, None),
        ("remote.rdp", False, "executable"),
    ]
    raw = raw_path_of(seeded, item["id"])
    assert raw is not None and seeded.vault.exists(raw)

    released = api.post(f"{BASE}/quarantine/{item['id']}/release?as=frontdesk", json={})
    assert released.status_code == 201, released.text
    out = released.json()
    assert out["internal"] is True and out["author"] == "dr-smith" and out["conversation"] == conv
    assert out["body"].startswith("She sounded stressed on the phone; follow up before Friday.")
    assert "#note" not in out["body"] and "1 attachment withheld: remote.rdp" in out["body"]
    assert [a["filename"] for a in out["attachments"]] == ["labs.pdf"] and out["contact"] is None

    client_view = api.get(f"{BASE}/conversations/{conv}/messages?as=alice").json()["items"]
    assert [m["id"] for m in client_view if m["id"] == out["id"]] == []
    assert all("stressed" not in m["body"] for m in client_view)
    staff_view = api.get(f"{BASE}/conversations/{conv}/messages?as=dr-smith").json()["items"]
    assert [m["internal"] for m in staff_view if m["id"] == out["id"]] == [True]
    with seeded.sessions() as session:
        message = session.get_one(Message, out["id"])
        assert "Can we talk about my results?" in (message.hidden_text or "")
        assert session.scalars(select(Outbox.to_address).where(Outbox.message_id == out["id"])).all() == []
        row = session.scalars(select(InboundLog).where(InboundLog.posted_message_id == out["id"])).one()
        assert (row.state, row.reason, row.raw_path) == (InboundState.posted, "released_by_staff", None)
    assert not Path(raw).exists()  # posted: the raw copy goes, as after any posted message
    (decided,) = held(api, "released")
    assert (decided["decided_by"], decided["message"]) == ("staff:frontdesk", out["id"])
    assert audit_rows(seeded) == [("quarantine_released", "staff:frontdesk", "quarantine", item["id"])]


def test_release_is_judged_by_the_policy_now(seeded: Any, api: Any, live: Any) -> None:
    """A reply held for review is refused at release if the policy refuses it now: here the client
    was made inactive meanwhile (seed 003: inactive clients cannot write to their provider)."""
    add_client(seeded, "finn", "finn@nodns.test")
    conv = open_conversation(seeded, participants=("finn",))
    address = reply_address(seeded, conv, "finn")
    assert (
        send(live, reply_message("finn@nodns.test", address, QUOTED_REPLY), "finn@nodns.test", address)[0]
        == 250
    )
    (item,) = held(api)
    finn = {"email": "finn@nodns.test", "name": "Finn", "kind": "client"}
    assert api.put(f"{BASE}/users/finn", json=finn | {"active": False}).status_code == 200
    refused = api.post(f"{BASE}/quarantine/{item['id']}/release?as=frontdesk", json={})
    assert (refused.status_code, refused.json()["code"]) == (403, "inactive_client")
    assert held(api)[0]["id"] == item["id"]  # still held, nothing posted
    assert raw_path_of(seeded, item["id"]) is not None
    assert api.put(f"{BASE}/users/finn", json=finn | {"active": True}).status_code == 200
    assert api.put(f"{BASE}/conversations/{conv}/participants/billing?as=dr-smith").status_code == 204
    assert api.delete(f"{BASE}/conversations/{conv}/participants/finn?as=dr-smith").status_code == 204
    gone = api.post(f"{BASE}/quarantine/{item['id']}/release?as=frontdesk", json={})
    assert (gone.status_code, gone.json()["code"]) == (409, "token_revoked")  # as the pipeline would


def test_release_of_a_client_reply_posts_the_trimmed_text_and_notifies_staff(
    seeded: Any, api: Any, live: Any
) -> None:
    add_client(seeded, "finn", "finn@nodns.test")
    conv = open_conversation(seeded, participants=("finn",))
    address = reply_address(seeded, conv, "finn")
    msg = reply_message("finn@nodns.test", address, QUOTED_REPLY)
    assert send(live, msg, "finn@nodns.test", address)[0] == 250
    (item,) = held(api)
    assert (
        api.post(f"{BASE}/quarantine/{item['id']}/release?as=dr-jones", json={"client": "alice"}).json()[
            "code"
        ]
        == "not_route_mail"
    )
    out = api.post(f"{BASE}/quarantine/{item['id']}/release?as=dr-jones", json={}).json()
    assert out["body"].startswith("Tuesday at 10 works for me, thank you.") and out["author"] == "finn"
    assert "shall we meet" not in out["body"]  # the quote is trimmed, as the pipeline trims it
    with seeded.sessions() as session:
        assert session.scalars(select(Outbox.to_address).where(Outbox.message_id == out["id"])).all() == [
            "dr.smith@acme.test"
        ]
    # The same email delivered again later is a duplicate of the released post, never a second one.
    assert send(live, msg, "finn@nodns.test", address)[0] == 250
    with seeded.sessions() as session:
        last = session.scalars(select(InboundLog).order_by(InboundLog.received_at.desc())).first()
        assert last is not None and last.state == InboundState.duplicate


@pytest.fixture
def triage(seeded: Any, api: Any, live: Any) -> Any:
    response = api.put(
        f"{BASE}/routes/frontdesk@acme.test", json={"roles": ["front_office"], "unknown_senders": "triage"}
    )
    assert response.status_code == 201
    return live


ENQUIRY = "Hello, do you take new clients? I am looking for weekly sessions."


def test_stranger_released_to_a_new_contact(seeded: Any, api: Any, triage: Any) -> None:
    msg = reply_message(
        "Nina Newcomer <nina@client.test>", "frontdesk@acme.test", ENQUIRY, subject="New client enquiry"
    )
    assert send(triage, msg, "nina@client.test", "frontdesk@acme.test")[0] == 250
    (item,) = held(api)
    assert (item["reason"], item["route"], item["from_name"]) == (
        "unknown_sender",
        "frontdesk@acme.test",
        "Nina Newcomer",
    )
    assert item["preview"] == ENQUIRY
    missing = api.post(f"{BASE}/quarantine/{item['id']}/release?as=frontdesk", json={})
    assert (missing.status_code, missing.json()["code"]) == (422, "client_required")
    both = api.post(
        f"{BASE}/quarantine/{item['id']}/release?as=frontdesk", json={"client": "dave", "new_contact": {}}
    )
    assert both.json()["code"] == "choose_one"

    released = api.post(f"{BASE}/quarantine/{item['id']}/release?as=frontdesk", json={"new_contact": {}})
    assert released.status_code == 201, released.text
    out = released.json()
    contact = out["contact"]
    assert contact["created"] is True and re.fullmatch(r"contact-[0-9a-f]{12}", contact["id"])
    assert (contact["email"], contact["name"]) == ("nina@client.test", "Nina Newcomer")
    assert out["author"] == contact["id"] and out["body"] == ENQUIRY
    user = api.get(f"{BASE}/users/{contact['id']}").json()  # the app learns the new client here
    assert (user["kind"], user["email"], user["active"]) == ("client", "nina@client.test", True)
    conversation = api.get(f"{BASE}/conversations/{out['conversation']}?as={contact['id']}").json()
    assert conversation["kind"] == "private" and conversation["subject"] == "New client enquiry"
    assert sorted(conversation["participants"]) == sorted([contact["id"], "frontdesk"])
    with seeded.sessions() as session:
        assert session.scalars(select(Outbox.to_address).where(Outbox.message_id == out["id"])).all() == [
            "desk@acme.test"
        ]
        event = session.scalars(select(AuditEvent)).one()
        assert event.details == {
            "message": out["id"],
            "conversation": out["conversation"],
            "contact": contact["id"],
            "contact_created": True,
        }
    (decided,) = held(api, "released")
    assert decided["contact"] == contact["id"] and decided["conversation"] == out["conversation"]


def test_new_contact_with_a_chosen_id_and_refusals(seeded: Any, api: Any, triage: Any) -> None:
    add_client(seeded, "finn", "finn@nodns.test")  # a known client on a domain with no SPF or DMARC
    for sender in ("nina@client.test", "finn@nodns.test"):
        msg = reply_message(sender, "frontdesk@acme.test", ENQUIRY, subject=f"From {sender}")
        assert send(triage, msg, sender, "frontdesk@acme.test")[0] == 250
    items = {i["from"]: i for i in held(api)}
    nina, finn = items["nina@client.test"], items["finn@nodns.test"]
    assert finn["reason"] == "auth_not_aligned"  # a known client, unverified: held too
    taken = api.post(
        f"{BASE}/quarantine/{nina['id']}/release?as=frontdesk", json={"new_contact": {"external_id": "alice"}}
    )
    assert (taken.status_code, taken.json()["code"]) == (409, "user_exists")
    exists = api.post(f"{BASE}/quarantine/{finn['id']}/release?as=frontdesk", json={"new_contact": {}})
    assert (exists.status_code, exists.json()["code"], exists.json()["users"]) == (
        409,
        "contact_exists",
        ["finn"],
    )
    # A known client's held route mail needs no choice: the directory says who it is.
    known = api.post(f"{BASE}/quarantine/{finn['id']}/release?as=frontdesk", json={}).json()
    assert known["author"] == "finn" and known["contact"] == {
        "id": "finn",
        "email": "finn@nodns.test",
        "name": "Finn",
        "created": False,
    }
    chosen = api.post(
        f"{BASE}/quarantine/{nina['id']}/release?as=frontdesk",
        json={"new_contact": {"external_id": "crm-4711", "name": "Nina N.", "locale": "fr"}},
    ).json()
    assert chosen["contact"] == {
        "id": "crm-4711",
        "email": "nina@client.test",
        "name": "Nina N.",
        "created": True,
    }
    assert api.get(f"{BASE}/users/crm-4711").json()["locale"] == "fr"


def test_discard_needs_a_staff_actor_and_is_audited(seeded: Any, api: Any, triage: Any) -> None:
    msg = reply_message("spam@client.test", "frontdesk@acme.test", "Cheap pills, click here now.")
    assert send(triage, msg, "spam@client.test", "frontdesk@acme.test")[0] == 250
    (item,) = held(api)
    raw = raw_path_of(seeded, item["id"])
    url = f"{BASE}/quarantine/{item['id']}/discard"
    missing = api.post(url)
    assert (missing.status_code, missing.json()["code"], missing.json()["field"]) == (
        422,
        "actor_required",
        "as",
    )
    client = api.post(f"{url}?as=alice")  # a client may not decide: 403 (docs/api.md), not 422
    assert (client.status_code, client.json()["code"]) == (403, "staff_only")
    assert api.post(f"{url}?as=nobody").json()["code"] == "user_not_found"
    with transaction(seeded.sessions) as session:
        directory.get_user(session, directory.get_practice(session, "acme"), "billing").active = False
    assert api.post(f"{url}?as=billing").json()["code"] == "account_inactive"
    assert api.post(f"{url}?as=frontdesk").status_code == 204
    assert held(api) == []
    (discarded,) = held(api, "discarded")
    assert discarded["decided_by"] == "staff:frontdesk" and discarded["decided_at"] is not None
    assert audit_rows(seeded) == [("quarantine_discarded", "staff:frontdesk", "quarantine", item["id"])]
    assert raw is not None and not seeded.vault.exists(raw) and raw_path_of(seeded, item["id"]) is None
    assert api.post(f"{url}?as=frontdesk").json()["code"] == "already_decided"
    assert api.get(f"{BASE}/quarantine?state=bogus").json()["code"] == "invalid_state"


def test_another_practice_cannot_see_or_decide(seeded: Any, api: Any, triage: Any) -> None:
    from tests.conftest import PRACTICE, USERS

    assert (
        api.put("/api/v1/practices/beta", json={**PRACTICE, "reply_domain": "reply.beta.test"}).status_code
        == 201
    )
    assert api.put("/api/v1/practices/beta/users/frontdesk", json=USERS["frontdesk"]).status_code == 201
    msg = reply_message("nina@client.test", "frontdesk@acme.test", ENQUIRY)
    assert send(triage, msg, "nina@client.test", "frontdesk@acme.test")[0] == 250
    (item,) = held(api)
    other = "/api/v1/practices/beta/quarantine"
    assert api.get(other).json()["items"] == []
    assert api.get(f"{other}/{item['id']}").status_code == 404
    assert api.post(f"{other}/{item['id']}/release?as=frontdesk", json={"new_contact": {}}).status_code == 404
    assert api.post(f"{other}/{item['id']}/discard?as=frontdesk").status_code == 404
    assert len(held(api)) == 1
