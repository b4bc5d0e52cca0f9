"""Webhooks end to end: a real HTTP receiver on loopback verifies every delivery with ``standardwebhooks``.

Events are written with their cause; the worker fans them out, signs, sends, retries and disables,
and these tests watch what reaches a real server: a reply by email, a receiver that is down then
back, a slow one, a failing one, a redirect; and the attacks on the URL (private addresses, DNS
rebinding) through the HTTP API.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from sqlalchemy import select

from mailbridge.domain import conversations as convs
from mailbridge.domain import directory
from mailbridge.domain.db import transaction
from mailbridge.domain.models import (
    Conversation,
    Event,
    Message,
    WebhookDelivery,
    WebhookDeliveryState,
    WebhookEndpoint,
)
from mailbridge.inbound.dns import StaticResolver
from mailbridge.observability import WEBHOOK_DISABLED
from mailbridge.webhooks.worker import WebhookWorker, wake_on_commit
from tests.conftest import DNS_TABLE
from tests.mailhelpers import live_server, open_conversation, reply_address, reply_message, send
from tests.receiver import Receiver

BASE = "/api/v1/practices/acme"
PUBLIC = "93.184.216.34"  # a public address; nothing ever connects to it (the tests' DNS only)


def resolver(**a: list[str]) -> StaticResolver:
    return StaticResolver(DNS_TABLE, a=a, aaaa={"v6.test": ["::1"]})


@pytest.fixture
def hooked(seeded: Any) -> Iterator[Any]:
    """Seeded services whose operator allows loopback receivers over http, with a short schedule."""
    seeded.settings = seeded.settings.model_copy(
        update={
            "webhook_allow_private": True,
            "webhook_allow_http": True,
            "webhook_timeout_seconds": 0.5,
            "webhook_retry_schedule": [0.05, 0.05, 0.05],
        }
    )
    seeded.resolver = resolver()
    yield seeded


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    server = Receiver()
    server.start()
    yield server
    server.stop()


def hook(api: Any, receiver: Receiver, name: str = "app", base: str = BASE, **body: Any) -> dict[str, Any]:
    created = api.put(f"{base}/webhooks/{name}", json={"url": receiver.url, "events": ["*"]} | body)
    assert created.status_code == 201, created.text
    out: dict[str, Any] = created.json()
    assert out["secret"].startswith("whsec_")
    receiver.secrets.append(out["secret"])
    return out


def worker(services: Any, **over: Any) -> WebhookWorker:
    w = WebhookWorker.from_services(services)
    for key, value in over.items():
        setattr(w, key, value)
    return w


def drive(w: WebhookWorker, until: Callable[[], bool], timeout: float = 20.0) -> None:
    """Run the worker's cycles until *until* holds (bounded), in one event loop (one HTTP client)."""

    async def main() -> None:
        deadline = time.monotonic() + timeout
        try:
            while not until():
                assert time.monotonic() < deadline, "the worker did not get there in time"
                if await w.run_once() == 0:
                    await asyncio.sleep(0.02)
        finally:
            await w.sender.close()

    asyncio.run(main())


def deliveries(services: Any, state: WebhookDeliveryState | None = None) -> list[WebhookDelivery]:
    with services.sessions() as session:
        query = select(WebhookDelivery).order_by(WebhookDelivery.event_seq)
        if state is not None:
            query = query.where(WebhookDelivery.state == state)
        return list(session.scalars(query).all())


def attempted(services: Any) -> int:
    rows = deliveries(services)
    return rows[0].attempts if rows else 0


def settled(services: Any) -> Callable[[], bool]:
    """Every event fanned out and no delivery left pending."""

    def check() -> bool:
        with services.sessions() as session:
            waiting = session.scalar(select(Event.seq).where(Event.dispatched_at.is_(None)).limit(1))
            pending = session.scalar(
                select(WebhookDelivery.id)
                .where(WebhookDelivery.state == WebhookDeliveryState.pending)
                .limit(1)
            )
        return waiting is None and pending is None

    return check


def post(services: Any, conversation_id: str, author: str, body: str) -> str:
    with transaction(services.sessions) as session:
        p = directory.get_practice(session, "acme")
        conversation = session.get_one(Conversation, conversation_id)
        message = convs.post_message(
            session, p, conversation, directory.get_user(session, p, author), body=body
        )
        return message.id


# ---- the path of a reply ---------------------------------------------------------------------------


def test_a_reply_by_email_reaches_the_receiver_signed_as_message_created(
    hooked: Any, api: Any, receiver: Receiver
) -> None:
    hook(api, receiver, events=["message.created"])
    conversation_id = open_conversation(hooked)  # posted from the app
    rcpt = reply_address(hooked, conversation_id, "alice")
    with live_server(hooked) as server:
        reply = reply_message("alice@client.test", rcpt, "Tuesday at 10 works for me, thank you.")
        assert send(server, reply, "alice@client.test", rcpt)[0] == 250
    drive(worker(hooked), lambda: len(receiver.accepted()) == 2)
    first, second = receiver.accepted()
    assert all(d.verified for d in receiver.received)  # standardwebhooks.Webhook(secret).verify
    assert [d.payload["type"] for d in (first, second)] == ["message.created", "message.created"]
    data = second.payload["data"]
    assert data["conversation"] == conversation_id
    assert data["source"] == "email" and data["author"] == "alice" and data["internal"] is False
    assert data["practice"] == "acme"
    assert first.payload["data"]["source"] == "app"
    assert "body" not in data and "subject" not in data  # no content unless include_content
    assert first.webhook_id != second.webhook_id and second.webhook_id.startswith("evt_")
    assert second.headers["content-type"] == "application/json"
    with hooked.sessions() as session:
        stored = session.scalars(
            select(Event.id).where(Event.type == "message.created").order_by(Event.seq)
        ).all()
    assert [first.webhook_id, second.webhook_id] == list(stored)  # the stable id is the event's


def test_include_content_adds_text_and_files_read_at_delivery(
    hooked: Any, api: Any, receiver: Receiver
) -> None:
    hook(api, receiver, events=["message.created"], include_content=True)
    conversation_id = open_conversation(hooked, body="Hello Alice, your results are in.")
    erased = post(hooked, conversation_id, "dr-smith", "Sorry, wrong patient: please ignore this.")
    assert api.delete(f"{BASE}/messages/{erased}?as=dr-smith").status_code == 204
    drive(worker(hooked), lambda: len(receiver.accepted()) == 2)
    kept, deleted = (d.payload["data"] for d in receiver.accepted())
    assert kept["body"] == "Hello Alice, your results are in." and kept["subject"] == "Your next appointment"
    assert kept["attachments"] == [] and kept["deleted"] is False
    # deleted before it was delivered: the event says so, and the text never leaves
    assert deleted["deleted"] is True and deleted["body"] is None
    assert b"wrong patient" not in receiver.received[1].body


# ---- failures: down, slow, failing, redirected ---------------------------------------------------


def test_a_receiver_down_for_a_while_gets_every_event_once_in_order(
    hooked: Any, api: Any, receiver: Receiver
) -> None:
    hook(api, receiver)
    receiver.stop()  # connection refused from now on
    first = open_conversation(hooked, participants=("alice",))
    second = open_conversation(hooked, participants=("bob",), subject="Invoice")
    for n in range(3):
        post(hooked, first, "dr-smith", f"Follow-up number {n} for you.")
        post(hooked, second, "dr-smith", f"Invoice line {n} is ready.")
    w = worker(hooked, schedule=[0.05] * 200)
    drive(w, lambda: all(d.attempts >= 2 for d in deliveries(hooked, WebhookDeliveryState.pending)[:2]))
    receiver.start()  # the same port again
    drive(w, settled(hooked))
    with hooked.sessions() as session:
        events = session.scalars(
            select(Event).where(Event.type == "message.created").order_by(Event.seq)
        ).all()
        expected = {e.id: e.conversation_id for e in events}
    accepted = receiver.accepted()
    assert sorted(d.webhook_id for d in accepted) == sorted(expected)  # every event, once by webhook-id
    assert all(d.verified for d in receiver.received)
    assert {d.state for d in deliveries(hooked)} == {WebhookDeliveryState.delivered}
    order = list(expected)
    for conversation in (first, second):  # per conversation, in the order they happened
        got = [d.webhook_id for d in accepted if d.payload["data"]["conversation"] == conversation]
        assert got == [i for i in order if expected[i] == conversation]


def test_per_conversation_order_holds_while_an_earlier_event_is_retried(
    hooked: Any, api: Any, receiver: Receiver
) -> None:
    hook(api, receiver, events=["message.created"])
    receiver.mode = "fail"
    conversation_id = open_conversation(hooked)
    w = worker(hooked, schedule=[0.3] * 100)
    drive(w, lambda: len(receiver.received) == 1)  # the first event failed once
    post(hooked, conversation_id, "dr-smith", "A second message, written after.")
    other = open_conversation(hooked, participants=("bob",), subject="Elsewhere")
    drive(w, lambda: any(d.payload["data"]["conversation"] == other for d in receiver.received))
    # the other conversation went ahead; this one's second event waits for its first (retried meanwhile)
    ours = {d.webhook_id for d in receiver.received if d.payload["data"]["conversation"] == conversation_id}
    assert ours == {receiver.received[0].webhook_id}
    receiver.mode = "ok"
    drive(w, settled(hooked))
    ours = [d for d in receiver.accepted() if d.payload["data"]["conversation"] == conversation_id]
    with hooked.sessions() as session:
        order = session.scalars(
            select(Event.id).where(Event.conversation_id == conversation_id).order_by(Event.seq)
        ).all()
    assert [d.webhook_id for d in ours] == list(order)


def test_a_slow_receiver_times_out_and_is_retried_with_the_same_id(
    hooked: Any, api: Any, receiver: Receiver
) -> None:
    hook(api, receiver, events=["message.created"])
    receiver.mode, receiver.delay, receiver.slow_times = "slow", 1.5, 1  # the timeout is 0.5 s
    open_conversation(hooked)
    drive(worker(hooked), settled(hooked))
    (row,) = deliveries(hooked)
    assert row.state == WebhookDeliveryState.delivered and row.attempts == 2
    log = api.get(f"{BASE}/webhooks/app/deliveries").json()["items"]
    assert log[0]["attempts"] == 2 and log[0]["state"] == "delivered" and log[0]["last_status"] == 204
    deadline = time.monotonic() + 5
    while len(receiver.received) < 2 and time.monotonic() < deadline:  # the slow copy lands late
        time.sleep(0.05)
    ids = [d.webhook_id for d in receiver.received]
    assert len(ids) == 2 and len(set(ids)) == 1  # the retry is the same event: the receiver dedupes it


def test_an_endpoint_that_keeps_failing_is_disabled_and_then_receives_nothing(
    hooked: Any, api: Any, receiver: Receiver
) -> None:
    failing = Receiver(mode="fail")
    failing.start()
    try:
        hook(api, failing, name="flaky", events=["message.created"])
        hook(api, receiver, name="ops", base="/api/v1", events=["webhook.disabled"])  # platform-wide
        before = WEBHOOK_DISABLED._value.get()
        conversation_id = open_conversation(hooked)
        w = worker(hooked)
        drive(w, lambda: len(receiver.accepted()) == 1)
        assert len(failing.received) == 4  # 1 + the 3 retries of the schedule
        assert WEBHOOK_DISABLED._value.get() == before + 1
        disabled = receiver.accepted()[0].payload
        assert disabled["type"] == "webhook.disabled"
        assert disabled["data"]["endpoint"] == "flaky" and disabled["data"]["practice"] == "acme"
        shown = api.get(f"{BASE}/webhooks/flaky").json()
        assert shown["disabled_at"] and "4 attempts" in shown["disabled_reason"]
        (gave_up,) = api.get(f"{BASE}/webhooks/flaky/deliveries?state=failed").json()["items"]
        assert gave_up["attempts"] == 4 and gave_up["last_status"] == 500
        # disabled: nothing more reaches it, though events keep coming (logged as skipped)
        post(hooked, conversation_id, "dr-smith", "Are you still there?")
        drive(w, settled(hooked))
        assert len(failing.received) == 4
        (skipped,) = api.get(f"{BASE}/webhooks/flaky/deliveries?state=skipped").json()["items"]
        # the owner fixes the receiver, enables the endpoint and asks for what it missed
        failing.mode = "ok"
        assert (
            api.put(
                f"{BASE}/webhooks/flaky", json={"url": failing.url, "events": ["message.created"]}
            ).json()["disabled_at"]
            is None
        )
        for row in (gave_up, skipped):
            again = api.post(f"{BASE}/webhooks/flaky/deliveries/{row['id']}/redeliver")
            assert again.status_code == 202 and again.json()["state"] == "pending"
        drive(w, settled(hooked))
        assert sorted(d.webhook_id for d in failing.accepted()) == sorted(
            [gave_up["event_id"], skipped["event_id"]]
        )
    finally:
        failing.stop()


def test_an_inactive_endpoint_receives_nothing(hooked: Any, api: Any, receiver: Receiver) -> None:
    hook(api, receiver, active=False)
    open_conversation(hooked)
    drive(worker(hooked), settled(hooked))
    assert receiver.received == []
    assert {d.state for d in deliveries(hooked)} == {WebhookDeliveryState.skipped}
    assert api.post(f"{BASE}/webhooks/app/deliveries/{deliveries(hooked)[0].id}/redeliver").json()[
        "code"
    ] == ("webhook_inactive")


def test_a_redirect_is_not_followed(hooked: Any, api: Any, receiver: Receiver) -> None:
    hook(api, receiver, events=["message.created"])
    receiver.mode = "redirect"
    open_conversation(hooked)
    w = worker(hooked, schedule=[60.0])
    drive(w, lambda: attempted(hooked) == 1)
    assert [d.path for d in receiver.received] == ["/hooks/mailbridge"]  # never /elsewhere
    assert deliveries(hooked)[0].last_status == 302
    assert "redirect not followed" in (deliveries(hooked)[0].last_error or "")


# ---- secrets -----------------------------------------------------------------------------------------


def test_the_secret_is_shown_once_sealed_at_rest_and_rotated_with_an_overlap(
    hooked: Any, api: Any, receiver: Receiver
) -> None:
    created = hook(api, receiver, events=["message.created"])
    old = created["secret"]
    assert "secret" not in api.get(f"{BASE}/webhooks/app").json()
    again = api.put(f"{BASE}/webhooks/app", json={"url": receiver.url, "events": ["message.created"]})
    assert again.status_code == 200 and "secret" not in again.json()
    with hooked.sessions() as session:
        stored = session.scalar(select(WebhookEndpoint.secret))
    assert stored is not None and stored.startswith("mbs1.") and old not in stored and old[6:] not in stored
    rotated = api.post(f"{BASE}/webhooks/app/rotate-secret").json()
    new = rotated["secret"]
    assert new != old and rotated["previous_secret_expires_at"]
    open_conversation(hooked)
    w = worker(hooked)
    drive(w, settled(hooked))
    (during,) = receiver.received
    assert len(during.headers["webhook-signature"].split(" ")) == 2  # both secrets sign
    for secret in (old, new):
        receiver.secrets[:] = [secret]
        receiver.received.clear()
        receiver._record(during.path, during.headers, during.body, 204)
        assert receiver.received[0].verified
    receiver.secrets[:] = [new]
    api.post(f"{BASE}/webhooks/app/rotate-secret", json={"overlap_seconds": 0})
    assert "secret" not in api.get(f"{BASE}/webhooks/app").json()


def test_platform_endpoints_receive_every_practice_and_need_the_platform_route(
    hooked: Any, api: Any, receiver: Receiver
) -> None:
    from tests.conftest import seed

    seed(hooked, "beta")
    hook(api, receiver, name="all", base="/api/v1", events=["message.created"])
    assert api.get(f"{BASE}/webhooks/all").json()["code"] == "webhook_not_found"  # not a practice's
    assert [e["name"] for e in api.get("/api/v1/webhooks").json()["items"]] == ["all"]
    open_conversation(hooked)
    open_conversation(hooked, practice="beta")
    drive(worker(hooked), lambda: len(receiver.accepted()) == 2)
    assert sorted(d.payload["data"]["practice"] for d in receiver.accepted()) == ["acme", "beta"]
    assert api.delete("/api/v1/webhooks/all").status_code == 204


def test_endpoint_input_is_checked(hooked: Any, api: Any, receiver: Receiver) -> None:
    put = lambda body: api.put(f"{BASE}/webhooks/app", json=body)  # noqa: E731
    assert put({"url": receiver.url, "events": ["message.exploded"]}).json()["code"] == "unknown_event_type"
    assert put({"url": receiver.url, "events": []}).status_code == 422
    assert put({"url": "ftp://127.0.0.1/x", "events": ["*"]}).json()["code"] == "url_invalid"
    assert put({"url": "http://user:pw@127.0.0.1/x", "events": ["*"]}).json()["code"] == "url_invalid"
    assert api.put(f"{BASE}/webhooks/Bad Name", json={"url": receiver.url, "events": ["*"]}).json()[
        "code"
    ] == ("invalid_name")
    assert api.get(f"{BASE}/webhooks/nope").status_code == 404


# ---- the network behind us (SSRF), through the HTTP API ------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1/hook",
        "http://169.254.169.254/latest/meta-data/",
        "http://[::1]/hook",
        "http://[::ffff:127.0.0.1]/hook",
        "http://10.1.2.3:8080/hook",
        "http://internal.test/hook",  # a name that resolves to a private address
        "http://mixed.test/hook",  # one public address and one private: refused
        "http://v6.test/hook",  # AAAA ::1
        "http://0.0.0.0/hook",
    ],
)
def test_private_destinations_are_refused_unless_the_operator_allows_them(
    hooked: Any, api: Any, url: str
) -> None:
    hooked.settings = hooked.settings.model_copy(update={"webhook_allow_private": False})
    hooked.resolver = resolver(**{"internal.test": ["10.0.0.5"], "mixed.test": [PUBLIC, "192.168.1.9"]})
    refused = api.put(f"{BASE}/webhooks/app", json={"url": url, "events": ["*"]})
    assert refused.status_code == 422, refused.text
    assert refused.json()["code"] == "url_private_address" and refused.json()["field"] == "url"
    with hooked.sessions() as session:
        assert session.scalars(select(WebhookEndpoint)).all() == []
    hooked.settings = hooked.settings.model_copy(update={"webhook_allow_private": True})
    assert api.put(f"{BASE}/webhooks/app", json={"url": url, "events": ["*"]}).status_code == 201


def test_names_without_address_and_plain_http_are_refused(hooked: Any, api: Any) -> None:
    hooked.settings = hooked.settings.model_copy(
        update={"webhook_allow_private": False, "webhook_allow_http": False}
    )
    hooked.resolver = resolver(**{"hooks.example.test": [PUBLIC]})
    put = lambda url: api.put(f"{BASE}/webhooks/app", json={"url": url, "events": ["*"]})  # noqa: E731
    assert put("https://nowhere.test/hook").json()["code"] == "url_unresolvable"
    assert put("http://hooks.example.test/hook").json()["code"] == "https_required"
    assert put("https://hooks.example.test/hook").status_code == 201  # public: accepted, nothing sent yet


def test_dns_rebinding_is_caught_at_delivery(hooked: Any, api: Any, receiver: Receiver) -> None:
    """The name was public when the endpoint was set; at delivery it points at loopback (a rebinding
    attack on the receiver next door): the address is checked again, and nothing connects."""
    hooked.settings = hooked.settings.model_copy(update={"webhook_allow_private": False})
    hooked.resolver = resolver(**{"rebind.test": [PUBLIC]})
    url = f"http://rebind.test:{receiver.port}/hooks/mailbridge"
    assert (
        api.put(f"{BASE}/webhooks/app", json={"url": url, "events": ["message.created"]}).status_code == 201
    )
    hooked.resolver = resolver(**{"rebind.test": ["127.0.0.1"]})
    open_conversation(hooked)
    drive(worker(hooked, schedule=[60.0]), lambda: attempted(hooked) == 1)
    assert receiver.received == []
    assert (deliveries(hooked)[0].last_error or "").startswith("url_private_address")


# ---- events from every door ------------------------------------------------------------------------


def test_refusals_and_quarantine_are_events_without_content(hooked: Any, api: Any) -> None:
    conversation_id = open_conversation(hooked)
    rcpt = reply_address(hooked, conversation_id, "alice")
    route = {"roles": ["front_office"], "unknown_senders": "triage"}
    assert api.put(f"{BASE}/routes/frontdesk@acme.test", json=route).status_code == 201
    with live_server(hooked) as server:
        short = reply_message("alice@client.test", rcpt, "ok")  # under the practice's 10 characters
        assert send(server, short, "alice@client.test", rcpt)[0] == 550
        stranger = reply_message("stranger@client.test", "frontdesk@acme.test", "Hello, is anyone there?")
        assert send(server, stranger, "stranger@client.test", "frontdesk@acme.test")[0] == 250
    (held,) = api.get(f"{BASE}/quarantine").json()["items"]
    assert api.post(f"{BASE}/quarantine/{held['id']}/discard?as=frontdesk").status_code == 204
    listed = api.get(f"{BASE}/events").json()["items"]
    by_type = {e["type"]: e for e in listed}
    assert [e["type"] for e in listed] == [
        "message.created",
        "message.refused",
        "quarantine.held",
        "quarantine.discarded",
    ]
    refused = by_type["message.refused"]["data"]
    assert refused["reason"] == "body_too_short" and refused["conversation"] == conversation_id
    assert refused["sender"] == "alice" and refused["door"] == "smtp"
    assert by_type["quarantine.held"]["data"]["reason"] == "unknown_sender"
    assert by_type["quarantine.discarded"]["data"]["actor"] == "staff:frontdesk"
    text = str(listed)
    assert "Hello, is anyone there" not in text and "stranger@client.test" not in text
    assert (
        api.get(f"{BASE}/events?type=message.refused").json()["items"][0]["id"]
        == by_type["message.refused"]["id"]
    )


def test_notification_results_and_bounces_are_events(hooked: Any) -> None:
    from mailbridge.domain import audit, suppressions
    from mailbridge.domain.models import Outbox, Practice
    from mailbridge.domain.suppressions import SuppressionPolicy
    from mailbridge.inbound.classify import BouncedRecipient, Classification
    from mailbridge.inbound.envelope import Target
    from mailbridge.outbound.bounces import record_report
    from mailbridge.outbound.worker import Worker

    open_conversation(hooked)
    outbox = Worker.from_services(hooked)

    async def once() -> None:
        await outbox.run_once()
        await outbox.transport.close()

    asyncio.run(once())
    with transaction(hooked.sessions) as session:  # a 5.1.1 DSN at the row's VERP address, twice
        row = session.scalars(select(Outbox)).one()
        target = Target("bounce", row.practice_id, "bounce+x@reply.acme.test", outbox_id=row.id)
        failed = BouncedRecipient(row.to_address, True, "5.1.1", "smtp; 550 5.1.1 no such user", "failed")
        for _ in range(2):  # suppressed once: announced once
            record_report(session, target, Classification("bounce", "dsn", (failed,)), SuppressionPolicy())
    with transaction(hooked.sessions) as session:
        practice = session.get_one(Practice, row.practice_id)
        assert suppressions.remove(session, practice, row.to_address, audit.SERVICE)
    with hooked.sessions() as session:
        types = session.scalars(select(Event.type).order_by(Event.seq)).all()
    assert types == [
        "message.created",
        "delivery.sent",
        "address.suppressed",
        "delivery.bounced",
        "delivery.bounced",
        "address.unsuppressed",
    ]


def test_a_commit_with_an_event_wakes_the_worker(hooked: Any) -> None:
    class Counting:
        nudges = 0

        def nudge(self) -> None:
            self.nudges += 1

    counting = Counting()
    remove = wake_on_commit(hooked.sessions, counting)  # type: ignore[arg-type]
    try:
        open_conversation(hooked)
        assert counting.nudges == 1
        with transaction(hooked.sessions) as session:
            session.scalars(select(Message)).all()
        assert counting.nudges == 1
    finally:
        remove()


def test_one_practice_never_reaches_anothers_webhooks_or_events(
    hooked: Any, api: Any, receiver: Receiver
) -> None:
    from tests.conftest import seed

    seed(hooked, "beta")
    hook(api, receiver, name="app", base="/api/v1/practices/beta", events=["message.created"])
    open_conversation(hooked, practice="beta")
    drive(worker(hooked), settled(hooked))
    (theirs,) = deliveries(hooked)
    assert api.get(f"{BASE}/webhooks/app").status_code == 404  # same name, other practice
    hook(api, receiver, name="app", events=["message.created"])  # acme's own "app"
    assert (
        api.post(f"{BASE}/webhooks/app/deliveries/{theirs.id}/redeliver").json()["code"]
        == "delivery_not_found"
    )
    assert api.get(f"{BASE}/webhooks/app/deliveries").json()["items"] == []
    assert api.get(f"{BASE}/events").json()["items"] == []  # beta's event is not acme's
    for n in range(19):
        created = api.put(f"{BASE}/webhooks/extra-{n}", json={"url": receiver.url, "events": ["*"]})
        assert created.status_code == 201
    assert api.put(f"{BASE}/webhooks/one-more", json={"url": receiver.url, "events": ["*"]}).json()[
        "code"
    ] == ("too_many_webhooks")
