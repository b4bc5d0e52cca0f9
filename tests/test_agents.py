"""Seed 003's recipients through the doors (issue 19): external agents who take part by email only,
and notifications only for participants with a portal account.

The app syncs users and creates conversations over the HTTP API; the delivery worker sends the
notifications to a real SMTP sink; the agent answers over the live SMTP ingress as their mail client
would; the API and the delivery log show what happened.
"""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import select

from mailbridge import replies
from mailbridge.domain.models import InboundLog
from tests.conftest import PRACTICE
from tests.mailhelpers import live_server, reply_message, send
from tests.sink import Sink
from tests.test_outbound import drain, parse, plain_text, worker_for

BASE = "/api/v1/practices/acme"
AGENT = {"email": "dr.referrer@client.test", "name": "Dr Rita Referrer", "kind": "external"}
# An agent whose domain publishes nothing: no aligned SPF/DKIM pass, as from a small clinic's server.
UNALIGNED = {"email": "counsellor@school.test", "name": "Sam Counsellor", "kind": "external", "locale": "fr"}
SECRET = "Quixotic referral notes for the Zorblax assessment"


@pytest.fixture
def live(seeded: Any) -> Any:
    with live_server(seeded) as server:
        yield server


def put_user(api: Any, ext: str, body: dict[str, Any]) -> dict[str, Any]:
    response = api.put(f"{BASE}/users/{ext}", json=body)
    assert response.status_code in (200, 201), response.text
    out: dict[str, Any] = response.json()
    return out


def create(api: Any, *, kind: str = "private", participants: list[str], **extra: Any) -> dict[str, Any]:
    body = {
        "kind": kind,
        "subject": "Referral for Alice",
        "author": "dr-smith",
        "participants": participants,
        "body": SECRET,
    } | extra
    response = api.post(f"{BASE}/conversations", json=body)
    assert response.status_code == 201, response.text
    out: dict[str, Any] = response.json()
    return out


def deliver(services: Any) -> Sink:
    """Run the worker once against a fresh sink; what it received."""
    with Sink() as sink:
        drain(worker_for(services, sink, public_url="https://mailbridge.acme.test"))
    return sink


def to(sink: Sink, address: str) -> list[Any]:
    return [parse(r.data) for r in sink.received if r.rcpts == [address]]


def html(msg: Any) -> str:
    body = msg.get_body(("html",))
    assert body is not None
    return str(body.get_content())


def last_log(services: Any) -> InboundLog:
    with services.sessions() as session:
        row = session.scalars(select(InboundLog).order_by(InboundLog.received_at.desc())).first()
        assert row is not None
        return row


def messages(api: Any, conversation: str, reader: str = "dr-smith") -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = api.get(f"{BASE}/conversations/{conversation}/messages?as={reader}").json()[
        "items"
    ]
    return items


# ---- the directory ----------------------------------------------------------------------------------


def test_the_user_payload_carries_external_agents_and_portal_accounts(seeded: Any, api: Any) -> None:
    agent = put_user(api, "referrer", AGENT | {"alt_emails": ["rita@clinic.test"]})
    assert (agent["kind"], agent["role"], agent["portal_account"]) == ("external", None, False)
    assert agent["alt_emails"] == ["rita@clinic.test"]
    assert api.get(f"{BASE}/users/alice").json()["portal_account"] is True  # the default
    erin = put_user(
        api, "erin", {"email": "erin@client.test", "name": "Erin", "kind": "client", "portal_account": False}
    )
    assert erin["portal_account"] is False
    refused = [
        (AGENT | {"role": "provider"}, "invalid_role"),
        (AGENT | {"portal_account": True}, "invalid_portal_account"),
        (AGENT | {"kind": "agent"}, "invalid_request"),
    ]
    for body, code in refused:
        response = api.put(f"{BASE}/users/referrer-2", json=body)
        assert (response.status_code, response.json()["code"]) == (422, code), body
    # a client does not become an agent (nor the reverse): a kind never changes
    changed = api.put(f"{BASE}/users/alice", json=AGENT)
    assert (changed.status_code, changed.json()["code"]) == (409, "kind_change")
    # an agent follows no company: take part only where staff add them
    favourite = api.put(f"{BASE}/users/referrer/favorites/bakery")
    assert (favourite.status_code, favourite.json()["code"]) == (422, "external_no_favorites")


def test_the_importer_loads_agents_and_portal_accounts(seeded: Any) -> None:
    from mailbridge.directory_import import load_directory
    from mailbridge.domain import directory
    from mailbridge.domain.db import transaction

    with transaction(seeded.sessions) as session:
        counts = load_directory(
            session,
            {
                "practices": [
                    {
                        "slug": "acme",
                        **PRACTICE,
                        "reply_domain": "reply.acme.test",
                        "users": {
                            "referrer": AGENT,
                            "erin": {
                                "email": "erin@client.test",
                                "name": "Erin",
                                "kind": "client",
                                "portal_account": False,
                            },
                        },
                    }
                ]
            },
        )
        assert counts["users"] == 2
        practice = directory.get_practice(session, "acme")
        referrer = directory.get_user(session, practice, "referrer")
        erin = directory.get_user(session, practice, "erin")
        assert (referrer.kind.value, referrer.portal_account) == ("external", False)
        assert (erin.kind.value, erin.portal_account) == ("client", False)


# ---- an agent reads and replies by email ------------------------------------------------------------


def test_an_agent_is_notified_minimally_replies_by_email_and_the_reply_is_posted(
    seeded: Any, api: Any, live: Any
) -> None:
    put_user(api, "referrer", AGENT)
    conversation = create(api, participants=["alice", "referrer"])["id"]
    sink = deliver(seeded)
    (notification,) = to(sink, "dr.referrer@client.test")
    raw = next(r.data for r in sink.received if r.rcpts == ["dr.referrer@client.test"])
    # minimal by default (private): nothing of the conversation, and no portal to sign in to
    for leak in (b"Quixotic", b"Zorblax", b"Referral", b"Dr Alex Smith", b"Alice", b"app.example.test"):
        assert leak not in raw, leak
    assert notification["Subject"] == "You have a new secure message"
    text = plain_text(notification)
    assert "reply to this email" in text and "sign in" not in text.lower()
    assert "Sign in" not in html(notification) and 'href="https://mailbridge.acme.test/u/' in html(
        notification
    )
    reply_to = str(notification["Reply-To"])
    assert reply_to.startswith("reply+") and reply_to.endswith("@reply.acme.test")
    # the client's own notification is the usual one, with the sign-in link
    (to_alice,) = to(sink, "alice@client.test")
    assert "https://app.example.test/" in plain_text(to_alice)

    answer = reply_message(
        "Dr Rita Referrer <dr.referrer@client.test>",
        reply_to,
        "Thank you, I will see Alice next week and send my report.",
        headers={"In-Reply-To": notification["Message-ID"]},
    )
    assert send(live, answer, "dr.referrer@client.test", reply_to)[0] == 250
    assert (last_log(seeded).state.value, last_log(seeded).rule) == (
        "posted",
        "external_agent_participants_only",
    )
    posted = messages(api, conversation)[-1]
    assert (posted["author"], posted["source"]) == ("referrer", "email")
    assert posted["body"] == "Thank you, I will see Alice next week and send my report."
    # staff and the client are notified of the agent's post; webhooks say who wrote it
    sink = deliver(seeded)
    assert len(to(sink, "dr.smith@acme.test")) == 1 and len(to(sink, "alice@client.test")) == 1
    created = api.get(f"{BASE}/events?type=message.created").json()["items"][-1]["data"]
    assert (created["author"], created["author_kind"]) == ("referrer", "external")
    # the client may still reply (one client + an agent), by email as in the app
    assert (
        api.post(
            f"{BASE}/conversations/{conversation}/messages",
            json={"author": "alice", "body": "See you then, thanks."},
        ).status_code
        == 201
    )


def test_a_practice_may_show_company_conversations_in_full_to_agents(seeded: Any, api: Any) -> None:
    put_user(api, "referrer", AGENT)
    put_user(api, "counsellor", UNALIGNED)  # French
    settings = {**PRACTICE["settings"], "external_content": {"company": "full"}}
    updated = api.put(BASE, json={**PRACTICE, "settings": settings}).json()["settings"]
    assert updated["external_content"] == {"company": "full", "confidential": "minimal", "private": "minimal"}
    assert updated["notify_content"]["company"] == "full"  # clients' setting untouched
    bad = api.put(BASE, json={**PRACTICE, "settings": {"external_content": {"direct": "full"}}})
    assert (bad.status_code, bad.json()["code"]) == (422, "invalid_settings")
    create(api, kind="company", company="bakery", participants=["alice", "referrer", "counsellor"])
    create(
        api, kind="confidential", company="bakery", participants=["alice", "referrer"], subject="Assessment"
    )
    sink = deliver(seeded)
    company, confidential = to(sink, "dr.referrer@client.test")
    assert company["Subject"] == "Referral for Alice" and SECRET in plain_text(company)
    assert str(company["From"]) == "Dr Alex Smith via Acme Counselling <notify@acme.test>"
    for part in (plain_text(company), html(company)):
        assert "app.example.test" not in part  # neither the conversation's page nor the settings
        assert "reply to this email" in part
    assert confidential["Subject"] == "You have a new secure message"  # still minimal
    assert SECRET not in plain_text(confidential)
    (french,) = to(sink, "counsellor@school.test")
    assert SECRET in plain_text(french) and "répondez à cet e-mail" in plain_text(french)
    # an agent's notification is their own template: the practice's notification_full is not used
    assert api.get(f"{BASE}/templates/notification_external_full?locale=fr").json()["variables"]
    assert (
        "signin_link"
        not in api.get(f"{BASE}/templates/notification_external_full?locale=en").json()["variables"]
    )


def test_an_unaligned_agent_reply_waits_for_staff_and_is_released_as_theirs(
    seeded: Any, api: Any, live: Any
) -> None:
    put_user(api, "counsellor", UNALIGNED)
    conversation = create(api, kind="confidential", company="bakery", participants=["alice", "counsellor"])[
        "id"
    ]
    (notification,) = to(deliver(seeded), "counsellor@school.test")
    reply_to = str(notification["Reply-To"])
    answer = reply_message("counsellor@school.test", reply_to, "Bien reçu, je prépare mon compte rendu.")
    assert send(live, answer, "counsellor@school.test", reply_to)[0] == 250
    assert (last_log(seeded).state.value, last_log(seeded).reason) == ("quarantined", "auth_not_aligned")
    (item,) = api.get(f"{BASE}/quarantine?state=held").json()["items"]
    released = api.post(f"{BASE}/quarantine/{item['id']}/release?as=dr-smith", json={})
    assert released.status_code == 201, released.text
    assert messages(api, conversation)[-1]["author"] == "counsellor"
    # someone else writing from the agent's address with the token is refused: sender proof
    forged = reply_message("mallory@client.test", reply_to, "Please send me the whole file.")
    assert send(live, forged, "mallory@client.test", reply_to)[0] == replies.SENDER_MISMATCH.code


def test_a_removed_agent_is_refused_with_550_5_1_1(seeded: Any, api: Any, live: Any) -> None:
    put_user(api, "referrer", AGENT)
    conversation = create(api, participants=["alice", "referrer"])["id"]
    (notification,) = to(deliver(seeded), "dr.referrer@client.test")
    reply_to = str(notification["Reply-To"])
    assert (
        api.delete(f"{BASE}/conversations/{conversation}/participants/referrer?as=dr-smith").status_code
        == 204
    )
    answer = reply_message("dr.referrer@client.test", reply_to, "One more thing about Alice.")
    code, text = send(live, answer, "dr.referrer@client.test", reply_to)
    assert (code, text) == (550, b"5.1.1 No such recipient")
    # and the agent is notified of nothing any more
    api.post(
        f"{BASE}/conversations/{conversation}/messages",
        json={"author": "dr-smith", "body": "Update for all."},
    )
    assert to(deliver(seeded), "dr.referrer@client.test") == []


def test_an_inactive_agent_gets_nothing_and_cannot_post(seeded: Any, api: Any, live: Any) -> None:
    put_user(api, "referrer", AGENT)
    conversation = create(api, participants=["alice", "referrer"])["id"]
    (notification,) = to(deliver(seeded), "dr.referrer@client.test")
    reply_to = str(notification["Reply-To"])
    put_user(api, "referrer", AGENT | {"active": False})
    api.post(
        f"{BASE}/conversations/{conversation}/messages", json={"author": "dr-smith", "body": "An update."}
    )
    assert to(deliver(seeded), "dr.referrer@client.test") == []
    skipped = api.get(f"{BASE}/outbound?state=suppressed").json()["items"]
    assert [(r["to"], r["last_answer"]) for r in skipped] == [
        ("dr.referrer@client.test", "skipped: account_inactive")
    ]
    answer = reply_message("dr.referrer@client.test", reply_to, "Here is my report on Alice.")
    assert send(live, answer, "dr.referrer@client.test", reply_to) == (
        550,
        b"5.7.1 This reply cannot be accepted; please contact the practice",
    )
    log = last_log(seeded)
    assert (log.state.value, log.reason, log.rule) == (
        "rejected",
        "account_inactive",
        "account_inactive_external",
    )
    assert api.get(f"{BASE}/conversations?as=referrer").json()["code"] == "account_inactive"


def test_replies_by_email_switched_off_tell_an_agent_to_contact_the_practice(
    seeded: Any, api: Any, live: Any
) -> None:
    put_user(api, "referrer", AGENT)
    conversation = create(api, participants=["alice", "referrer"])["id"]
    (notification,) = to(deliver(seeded), "dr.referrer@client.test")
    reply_to = str(notification["Reply-To"])
    settings = {**PRACTICE["settings"], "reply_by_email": False}
    assert api.put(BASE, json={**PRACTICE, "settings": settings}).status_code == 200
    answer = reply_message("dr.referrer@client.test", reply_to, "Here is my report on Alice.")
    assert send(live, answer, "dr.referrer@client.test", reply_to) == (
        550,
        b"5.7.1 This reply cannot be accepted; please contact the practice",
    )
    api.post(
        f"{BASE}/conversations/{conversation}/messages", json={"author": "dr-smith", "body": "An update."}
    )
    (later,) = to(deliver(seeded), "dr.referrer@client.test")
    assert later["Reply-To"] is None
    assert "please contact the practice directly" in " ".join(plain_text(later).split())


# ---- the app never posts as an agent; who may bring one in --------------------------------------------


def test_the_app_cannot_post_as_an_agent_nor_let_a_client_bring_one_in(seeded: Any, api: Any) -> None:
    put_user(api, "referrer", AGENT)
    conversation = create(api, participants=["alice", "referrer"])["id"]
    as_agent = api.post(
        f"{BASE}/conversations/{conversation}/messages", json={"author": "referrer", "body": "Hello."}
    )
    assert (as_agent.status_code, as_agent.json()["code"]) == (403, "external_by_email_only")
    opened = api.post(
        f"{BASE}/conversations",
        json={
            "kind": "private",
            "subject": "Hi",
            "author": "referrer",
            "participants": ["dr-smith"],
            "body": "Hello",
        },
    )
    assert (opened.status_code, opened.json()["code"]) == (403, "external_by_email_only")
    by_client = api.post(
        f"{BASE}/conversations",
        json={
            "kind": "private",
            "subject": "Hi",
            "author": "alice",
            "participants": ["dr-smith", "referrer"],
            "body": "Please include my physician.",
        },
    )
    assert (by_client.status_code, by_client.json()["code"]) == (403, "external_added_by_staff")
    direct = api.post(
        f"{BASE}/conversations",
        json={
            "kind": "direct",
            "subject": "Hi",
            "author": "dr-smith",
            "participants": ["referrer"],
            "body": "Hello",
        },
    )
    assert (direct.status_code, direct.json()["code"]) == (422, "direct_staff_only")
    channel = create(api, kind="direct", participants=["dr-jones"])["id"]
    added = api.put(f"{BASE}/conversations/{channel}/participants/referrer?as=dr-smith")
    assert (added.status_code, added.json()["code"]) == (422, "direct_staff_only")
    # staff add an agent to a conversation later: the app's participant route, as staff
    later = create(api, participants=["bob"])["id"]
    by_bob = api.put(f"{BASE}/conversations/{later}/participants/referrer?as=bob")
    assert (by_bob.status_code, by_bob.json()["code"]) == (403, "staff_only")
    assert api.put(f"{BASE}/conversations/{later}/participants/referrer?as=dr-smith").status_code == 204
    listed = api.get(f"{BASE}/conversations?as=referrer").json()["items"]
    assert {c["id"] for c in listed} == {conversation, later}


# ---- group privacy and the quick note count clients only ---------------------------------------------


def test_an_agent_with_two_clients_is_refused_for_group_privacy_with_a_notice_for_them(
    seeded: Any, api: Any, live: Any
) -> None:
    put_user(api, "referrer", AGENT)
    conversation = create(api, participants=["alice", "bob", "referrer"])["id"]
    (notification,) = to(deliver(seeded), "dr.referrer@client.test")
    reply_to = str(notification["Reply-To"]) if notification["Reply-To"] else None
    assert reply_to is None  # two clients: no reply by email for anyone, the agent included
    assert "Replies by email are not possible" in plain_text(notification)
    from tests.mailhelpers import reply_address

    token_address = reply_address(seeded, conversation, "referrer")  # an address they kept from before
    answer = reply_message("dr.referrer@client.test", token_address, "My report on both clients is ready.")
    assert send(live, answer, "dr.referrer@client.test", token_address)[0] == replies.POLICY_DENIED.code
    assert last_log(seeded).reason == "group_conversation"
    (notice,) = to(deliver(seeded), "dr.referrer@client.test")
    text, page = plain_text(notice), html(notice)
    assert "several clients" in text and "ask the practice to start a new conversation" in text
    for part in (text, page):
        assert "app.example.test" not in part and "portal" not in part.lower()


def test_one_client_and_agents_may_reply_and_take_a_quick_note(seeded: Any, api: Any, live: Any) -> None:
    put_user(api, "referrer", AGENT)
    put_user(api, "counsellor", UNALIGNED)
    conversation = create(
        api, kind="company", company="bakery", participants=["alice", "referrer", "counsellor"]
    )["id"]
    sink = deliver(seeded)
    (notification,) = to(sink, "dr.referrer@client.test")
    reply_to = str(notification["Reply-To"])
    answer = reply_message("dr.referrer@client.test", reply_to, "Noted, thank you for including me.")
    assert send(live, answer, "dr.referrer@client.test", reply_to)[0] == 250
    note = api.post(f"{BASE}/conversations/{conversation}/quick-note", json={"author": "dr-smith"})
    assert note.status_code == 201, note.text
    assert note.json()["client"] == "alice"
    as_agent = api.post(f"{BASE}/conversations/{conversation}/quick-note", json={"author": "referrer"})
    assert (as_agent.status_code, as_agent.json()["code"]) == (403, "staff_only")


# ---- portal accounts ----------------------------------------------------------------------------------


def test_a_participant_without_a_portal_account_gets_nothing_and_the_log_says_why(
    seeded: Any, api: Any
) -> None:
    put_user(
        api, "erin", {"email": "erin@client.test", "name": "Erin", "kind": "client", "portal_account": False}
    )
    put_user(api, "referrer", AGENT)  # never has one, always notified
    create(api, participants=["erin", "referrer"])
    sink = deliver(seeded)
    assert to(sink, "erin@client.test") == [] and len(to(sink, "dr.referrer@client.test")) == 1
    skipped = api.get(f"{BASE}/outbound?state=suppressed").json()["items"]
    assert [(r["to"], r["state"], r["last_answer"]) for r in skipped] == [
        ("erin@client.test", "suppressed", "skipped: no_portal_account")
    ]
    # the account is made: notified from the next message on
    put_user(api, "erin", {"email": "erin@client.test", "name": "Erin", "kind": "client"})
    conversation = create(api, participants=["erin"], subject="Welcome")["id"]
    assert len(to(deliver(seeded), "erin@client.test")) == 1
    # taken away again while a notification waits: cancelled at send time, never sent
    api.post(
        f"{BASE}/conversations/{conversation}/messages", json={"author": "dr-smith", "body": "One more."}
    )
    put_user(
        api, "erin", {"email": "erin@client.test", "name": "Erin", "kind": "client", "portal_account": False}
    )
    assert to(deliver(seeded), "erin@client.test") == []


# ---- a practice address ---------------------------------------------------------------------------------


def test_an_agent_writing_to_a_practice_address_is_an_unknown_sender(
    seeded: Any, api: Any, live: Any
) -> None:
    """Agents take part where staff add them; a practice address does not open conversations for them."""
    put_user(api, "referrer", AGENT)
    assert api.put(f"{BASE}/routes/frontdesk@acme.test", json={"roles": ["front_office"]}).status_code == 201
    enquiry = reply_message(
        "dr.referrer@client.test", "frontdesk@acme.test", "I would like to refer a patient."
    )
    assert (
        send(live, enquiry, "dr.referrer@client.test", "frontdesk@acme.test")[0] == replies.POLICY_DENIED.code
    )
    assert (last_log(seeded).state.value, last_log(seeded).reason) == ("rejected", "unknown_sender")
    assert (
        api.put(
            f"{BASE}/routes/frontdesk@acme.test",
            json={"roles": ["front_office"], "unknown_senders": "triage"},
        ).status_code
        == 200
    )
    enquiry = reply_message(
        "dr.referrer@client.test", "frontdesk@acme.test", "I would like to refer a patient."
    )
    assert send(live, enquiry, "dr.referrer@client.test", "frontdesk@acme.test")[0] == 250
    assert (last_log(seeded).state.value, last_log(seeded).reason) == ("quarantined", "unknown_sender")
