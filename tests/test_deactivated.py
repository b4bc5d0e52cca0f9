"""Deactivated staff (finding 12): no notifications (skipped with a reason in the delivery log), no reading
through the API (403 ``account_inactive``), no posting by email; reactivation restores all three."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import select

from mailbridge import replies
from mailbridge.domain.models import InboundLog, Outbox
from mailbridge.outbound.worker import Worker
from tests.conftest import USERS
from tests.mailhelpers import live_server, reply_address, reply_message, send
from tests.test_outbound import drain

BASE = "/api/v1/practices/acme"


def set_active(api: Any, user: str, active: bool) -> None:
    assert api.put(f"{BASE}/users/{user}", json={**USERS[user], "active": active}).status_code == 200


def conversation(api: Any) -> dict[str, Any]:
    created = api.post(
        f"{BASE}/conversations",
        json={
            "kind": "private",
            "subject": "Your results",
            "author": "dr-smith",
            "participants": ["alice", "dr-jones"],
            "body": "Your results are in; let us talk on Tuesday.",
        },
    )
    assert created.status_code == 201, created.text
    return dict(created.json())


def notifications(services: Any, message_id: str) -> dict[str, tuple[str, str | None]]:
    with services.sessions() as session:
        rows = session.scalars(select(Outbox).where(Outbox.message_id == message_id)).all()
        return {r.to_address: (r.state.value, r.last_answer) for r in rows}


def test_deactivated_staff_get_no_notification_and_the_log_says_why(seeded: Any, api: Any) -> None:
    conv = conversation(api)
    set_active(api, "dr-smith", False)
    reply = api.post(
        f"{BASE}/conversations/{conv['id']}/messages",
        json={"author": "alice", "body": "Tuesday is fine, thank you."},
    ).json()
    assert notifications(seeded, reply["id"]) == {
        "dr.smith@acme.test": ("suppressed", "skipped: account_inactive"),
        "dr.jones@acme.test": ("pending", None),
    }
    shown = api.get(f"{BASE}/outbound?state=suppressed").json()["items"]
    assert [(r["to"], r["last_answer"]) for r in shown] == [
        ("dr.smith@acme.test", "skipped: account_inactive")
    ]
    drain(Worker.from_services(seeded))  # the skipped row is never sent
    assert notifications(seeded, reply["id"])["dr.smith@acme.test"][0] == "suppressed"
    assert notifications(seeded, reply["id"])["dr.jones@acme.test"][0] == "sent"


def test_a_notification_waiting_when_staff_are_deactivated_is_not_sent(seeded: Any, api: Any) -> None:
    conv = conversation(api)
    reply = api.post(
        f"{BASE}/conversations/{conv['id']}/messages",
        json={"author": "alice", "body": "Tuesday is fine, thank you."},
    ).json()
    set_active(api, "dr-jones", False)
    drain(Worker.from_services(seeded))
    sent = notifications(seeded, reply["id"])
    assert sent["dr.smith@acme.test"][0] == "sent"
    assert sent["dr.jones@acme.test"] == ("failed", "cancelled: recipient may no longer read")


def test_deactivated_staff_cannot_read_through_the_api(seeded: Any, api: Any) -> None:
    conv = conversation(api)
    set_active(api, "dr-smith", False)
    reads = [
        f"{BASE}/conversations?as=dr-smith",
        f"{BASE}/conversations/{conv['id']}?as=dr-smith",
        f"{BASE}/conversations/{conv['id']}/messages?as=dr-smith",
    ]
    for url in reads:
        refused = api.get(url)
        assert (refused.status_code, refused.json()["code"]) == (403, "account_inactive"), url
    post = api.post(
        f"{BASE}/conversations/{conv['id']}/messages", json={"author": "dr-smith", "body": "Still here?"}
    )
    assert (post.status_code, post.json()["code"]) == (403, "account_inactive")
    deletion = api.delete(f"{BASE}/conversations/{conv['id']}?as=dr-smith")
    assert (deletion.status_code, deletion.json()["code"]) == (403, "account_inactive")
    assert api.get(f"{BASE}/conversations?as=alice").json()["items"]  # others are not affected
    set_active(api, "dr-smith", True)  # reactivation restores reading (the policy is asked at each use)
    assert api.get(reads[0]).status_code == 200 and api.get(reads[2]).status_code == 200


def test_deactivated_staff_reply_by_email_refused_with_a_reason(seeded: Any, api: Any) -> None:
    conv = conversation(api)
    address = reply_address(seeded, conv["id"], "dr-smith")  # the Reply-To of an earlier notification
    set_active(api, "dr-smith", False)
    with live_server(seeded) as server:
        msg = reply_message("dr.smith@acme.test", address, "Answering from my phone after leaving.")
        code, text = send(server, msg, "dr.smith@acme.test", address)
    assert (code, text) == (550, f"{replies.POLICY_DENIED.enhanced} {replies.POLICY_DENIED.text}".encode())
    with seeded.sessions() as session:
        row = session.scalars(select(InboundLog)).one()
    assert (row.state.value, row.reason, row.rule) == (
        "rejected",
        "account_inactive",
        "account_inactive_staff",
    )
    with seeded.sessions() as session:  # no notice to a deactivated account either
        assert "dr.smith@acme.test" not in session.scalars(select(Outbox.to_address)).all()


@pytest.mark.parametrize("route_staff", [["dr-jones"], []])
def test_deactivated_staff_are_not_put_in_new_route_conversations(
    seeded: Any, api: Any, route_staff: list[str]
) -> None:
    body = {"staff": route_staff, "roles": ["provider"]}
    assert api.put(f"{BASE}/routes/doctors@acme.test", json=body).status_code == 201
    set_active(api, "dr-jones", False)
    with live_server(seeded) as server:
        msg = reply_message("alice@client.test", "doctors@acme.test", "A question for my doctor, please.")
        assert send(server, msg, "alice@client.test", "doctors@acme.test")[0] == 250
    (conv,) = api.get(f"{BASE}/conversations?as=alice").json()["items"]
    assert sorted(conv["participants"]) == ["alice", "dr-smith"]
