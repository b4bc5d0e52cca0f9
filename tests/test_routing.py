"""Practice addresses: known clients open conversations, strangers are refused or held for staff, postmaster@ forwarded."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import select

from mailbridge.domain import directory
from mailbridge.domain.db import transaction
from mailbridge.domain.models import Conversation, InboundLog, InboundState, Outbox, OutboxKind
from tests.mailhelpers import live_server, reply_message, send

BASE = "/api/v1/practices/acme"


@pytest.fixture
def routed(seeded: Any, api: Any) -> Any:
    assert (
        api.put(
            f"{BASE}/routes/frontdesk@acme.test",
            json={"roles": ["front_office"], "unknown_senders": "triage"},
        ).status_code
        == 201
    )
    assert api.put(f"{BASE}/routes/billing@acme.test", json={"roles": ["biller"]}).status_code == 201
    assert (
        api.put(
            f"{BASE}/routes/doctors@acme.test", json={"staff": ["dr-smith"], "roles": ["biller"]}
        ).status_code
        == 201
    )
    with transaction(seeded.sessions) as session:
        p = directory.get_practice(session, "acme")
        p.settings = {**p.settings, "operator_address": "it@acme.test"}
    with live_server(seeded) as server:
        yield server


def conversations(services: Any) -> list[Conversation]:
    with services.sessions() as session:
        return list(session.scalars(select(Conversation).order_by(Conversation.created_at)).all())


def test_routes_api(seeded: Any, api: Any, routed: Any) -> None:
    items = api.get(f"{BASE}/routes").json()["items"]
    assert [r["address"] for r in items] == ["billing@acme.test", "doctors@acme.test", "frontdesk@acme.test"]
    assert api.put(f"{BASE}/routes/x@acme.test", json={"staff": ["alice"]}).json()["code"] == "unknown_staff"
    assert (
        api.put(f"{BASE}/routes/postmaster@acme.test", json={"roles": ["admin"]}).json()["code"]
        == "reserved_address"
    )
    assert api.delete(f"{BASE}/routes/doctors@acme.test").status_code == 204


def test_known_client_opens_conversation_with_the_group(seeded: Any, routed: Any) -> None:
    msg = reply_message(
        "alice@client.test",
        "frontdesk@acme.test",
        "I would like to book an appointment.",
        subject="Booking",
        headers={"Cc": "bob@client.test, mallory@evil.test"},
    )
    assert send(routed, msg, "alice@client.test", "frontdesk@acme.test")[0] == 250
    (conv,) = conversations(seeded)
    people = sorted(p.user.external_id for p in conv.participants)
    assert conv.kind.value == "private" and conv.subject == "Booking"
    assert people == ["alice", "frontdesk"]  # Cc'd addresses never become participants
    with seeded.sessions() as session:
        assert session.scalars(select(Outbox.to_address)).all() == ["desk@acme.test"]


def test_staff_to_route_refused(seeded: Any, routed: Any) -> None:
    msg = reply_message("dr.smith@acme.test", "frontdesk@acme.test", "Please call my patient back.")
    assert send(routed, msg, "dr.smith@acme.test", "frontdesk@acme.test") == (
        550,
        b"5.7.1 Staff members post through the application",
    )


def test_inactive_client_reaches_billing_but_not_providers(seeded: Any, routed: Any) -> None:
    to_billing = reply_message("carol@client.test", "billing@acme.test", "A question about my invoice.")
    assert send(routed, to_billing, "carol@client.test", "billing@acme.test")[0] == 250
    to_doctors = reply_message("carol@client.test", "doctors@acme.test", "A question for my doctor.")
    assert send(routed, to_doctors, "carol@client.test", "doctors@acme.test")[0] == 550
    assert len(conversations(seeded)) == 1


def test_stranger_rejected_or_triaged_then_released(seeded: Any, api: Any, routed: Any) -> None:
    stranger = reply_message("newcomer@client.test", "billing@acme.test", "Do you take new clients?")
    assert send(routed, stranger, "newcomer@client.test", "billing@acme.test")[0] == 550
    confirm = reply_message(
        "noreply@slack.test",
        "frontdesk@acme.test",
        "Confirm your Slack account: 123456",
        subject="Confirm your account",
    )
    assert send(routed, confirm, "noreply@slack.test", "frontdesk@acme.test")[0] == 250
    assert conversations(seeded) == []  # the Ticket Trick posts nothing anywhere
    with seeded.sessions() as session:
        assert session.scalars(select(Outbox)).all() == []  # never auto-replied
    held = api.get(f"{BASE}/quarantine").json()["items"]
    assert [h["reason"] for h in held] == ["unknown_sender"]
    # Staff decide: this one was a real prospective client, now in the directory as dave
    released = api.post(f"{BASE}/quarantine/{held[0]['id']}/release?as=frontdesk", json={"client": "dave"})
    assert released.status_code == 201, released.text
    assert released.json()["body"] == "Confirm your Slack account: 123456"
    assert (
        api.post(f"{BASE}/quarantine/{held[0]['id']}/discard?as=frontdesk").json()["code"]
        == "already_decided"
    )
    (conv,) = conversations(seeded)
    assert sorted(p.user.external_id for p in conv.participants) == ["dave", "frontdesk"]


def test_quarantine_discard(seeded: Any, api: Any, routed: Any) -> None:
    msg = reply_message("stranger@client.test", "frontdesk@acme.test", "Hello there, anyone?")
    assert send(routed, msg, "stranger@client.test", "frontdesk@acme.test")[0] == 250
    (held,) = api.get(f"{BASE}/quarantine").json()["items"]
    assert api.post(f"{BASE}/quarantine/{held['id']}/discard?as=frontdesk").status_code == 204
    assert api.get(f"{BASE}/quarantine").json()["items"] == []


def test_postmaster_forwarded_never_posted(seeded: Any, routed: Any) -> None:
    for rcpt in ("postmaster@reply.acme.test", "abuse@acme.test"):
        msg = reply_message("someone@elsewhere.test", rcpt, "Your server did something odd.")
        assert send(routed, msg, "someone@elsewhere.test", rcpt)[0] == 250
    assert conversations(seeded) == []
    with seeded.sessions() as session:
        forwards = session.scalars(select(Outbox).where(Outbox.kind == OutboxKind.forward)).all()
        states = session.scalars(select(InboundLog.state)).all()
    assert [f.to_address for f in forwards] == ["it@acme.test", "it@acme.test"]
    assert states == [InboundState.forwarded, InboundState.forwarded]


def test_unknown_address_on_routing_domain(seeded: Any, routed: Any) -> None:
    with routed.client() as client:
        client.ehlo("client.test")
        client.mail("alice@client.test")
        assert client.rcpt("nobody@acme.test")[0] == 550
