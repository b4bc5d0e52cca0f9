"""Keyset pagination on every list, through the HTTP API: complete walks while rows are inserted,
a constant number of SQL statements per page whatever its size, bad cursors refused, OpenAPI documented."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from sqlalchemy import event, select

from mailbridge.domain import audit, directory
from mailbridge.domain.db import transaction
from mailbridge.domain.models import (
    ChartNote,
    Conversation,
    Event,
    Message,
    Outbox,
    WebhookDelivery,
    WebhookDeliveryState,
    WebhookEndpoint,
)
from tests.mailhelpers import open_conversation

BASE = "/api/v1/practices/acme"


def post(services: Any, conversation_id: str, text: str, author: str = "dr-smith") -> None:
    from mailbridge.domain import conversations as convs

    with transaction(services.sessions) as session:
        p = directory.get_practice(session, "acme")
        conv = session.get_one(Conversation, conversation_id)
        convs.post_message(session, p, conv, directory.get_user(session, p, author), body=text)


def walk(api: Any, url: str, limit: int, between: Callable[[], None] = lambda: None) -> list[Any]:
    """Every page of *url*, calling *between* after each page (rows inserted mid-walk)."""
    seen: list[Any] = []
    cursor = None
    for _ in range(1000):
        sep = "&" if "?" in url else "?"
        page = api.get(f"{url}{sep}limit={limit}" + (f"&cursor={cursor}" if cursor else ""))
        assert page.status_code == 200, page.text
        body = page.json()
        assert len(body["items"]) <= limit
        seen += [item["id"] for item in body["items"]]
        cursor = body["next_cursor"]
        if cursor is None:
            return seen
        between()
    raise AssertionError("the walk did not end")


def test_a_thread_walked_while_messages_arrive_returns_every_message_once(seeded: Any, api: Any) -> None:
    conversation_id = open_conversation(seeded)
    for n in range(20):
        post(seeded, conversation_id, f"Message number {n}, thanks.")
    counter = iter(range(100, 200))

    def two_more() -> None:
        for _ in range(2):
            post(seeded, conversation_id, f"Message number {next(counter)}, posted during the walk.")

    seen = walk(api, f"{BASE}/conversations/{conversation_id}/messages?as=alice", 7, two_more)
    with seeded.sessions() as session:
        every = session.scalars(
            select(Message.id)
            .where(Message.conversation_id == conversation_id)
            .order_by(Message.created_at, Message.id)
        ).all()
    assert len(every) > 21 + 4
    assert seen == list(every)  # each once, in thread order, the new ones included


def test_conversations_walked_while_others_are_created(seeded: Any, api: Any) -> None:
    for n in range(15):
        open_conversation(seeded, subject=f"Before {n}")

    def one_more() -> None:
        open_conversation(seeded, subject="During the walk")

    before = walk(api, f"{BASE}/conversations?as=dr-smith&order=activity", 4)
    seen = walk(api, f"{BASE}/conversations?as=dr-smith&order=activity", 4, one_more)
    assert len(seen) == len(set(seen)) and set(before) <= set(seen)  # newest first: the new ones come first
    created = walk(api, f"{BASE}/conversations?as=dr-smith&order=created", 4, one_more)
    with seeded.sessions() as session:
        every = session.scalars(
            select(Conversation.id).order_by(Conversation.created_at, Conversation.id)
        ).all()
    assert created == list(every)  # oldest first: every conversation once, those created meanwhile too
    assert api.get(f"{BASE}/conversations?as=dr-smith&order=subject").status_code == 422


def test_logs_walked_newest_first_while_rows_are_added(seeded: Any, api: Any) -> None:
    conversation_id = open_conversation(seeded)  # one outbox row per post (alice is notified)
    for n in range(12):
        post(seeded, conversation_id, f"Reminder number {n} for you.")
    with transaction(seeded.sessions) as session:
        p = directory.get_practice(session, "acme")
        for n in range(12):
            audit.record(session, p, "test_action", audit.SERVICE, "message", f"m{n}")
    with seeded.sessions() as session:
        outbox = set(session.scalars(select(Outbox.id)).all())
    counter = iter(range(1000))

    def more() -> None:
        post(seeded, conversation_id, f"Posted during the walk {next(counter)}.")
        with transaction(seeded.sessions) as session:
            audit.record(
                session, directory.get_practice(session, "acme"), "test_action", audit.SERVICE, "x", "y"
            )

    seen = walk(api, f"{BASE}/outbound", 5, more)
    assert len(seen) == len(set(seen)) and outbox <= set(seen)
    trail = walk(api, f"{BASE}/audit?action=test_action", 5, more)
    assert len(trail) == len(set(trail)) and len(trail) >= 12


@contextmanager
def counting(services: Any) -> Iterator[list[str]]:
    statements: list[str] = []

    def before(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        statements.append(statement)

    event.listen(services.engine, "before_cursor_execute", before)
    try:
        yield statements
    finally:
        event.remove(services.engine, "before_cursor_execute", before)


def _many(services: Any) -> dict[str, str]:
    """More than 100 rows in every list measured below; returns the URLs to page through."""
    conversation_id = open_conversation(services)
    with transaction(services.sessions) as session:
        p = directory.get_practice(session, "acme")
        smith = directory.get_user(session, p, "dr-smith")
        alice = directory.get_user(session, p, "alice")
        conversation = session.get_one(Conversation, conversation_id)
        from mailbridge.domain import conversations as convs

        for n in range(110):
            convs.post_message(session, p, conversation, smith, body=f"Line {n} of a long thread.")
            audit.record(session, p, "test_action", audit.SERVICE, "message", f"m{n}")
            session.add(
                ChartNote(
                    practice_id=p.id,
                    client_id=alice.id,
                    conversation_id=conversation_id,
                    author_id=smith.id,
                    title="t",
                    text="x",
                )
            )
        for n in range(110):
            convs.create_conversation(
                session,
                p,
                kind=conversation.kind,
                company=None,
                subject=f"Another {n}",
                author=smith,
                participants=[alice],
                body="Hello there, again.",
            )
        endpoint = WebhookEndpoint(
            scope_key=f"p{p.id}:app", practice_id=p.id, name="app", url="https://x.test/"
        )
        session.add(endpoint)
        session.flush()
        for seq, event_id in session.execute(select(Event.seq, Event.id)).all():
            session.add(
                WebhookDelivery(
                    endpoint_id=endpoint.id,
                    event_seq=seq,
                    event_id=event_id,
                    event_type="message.created",
                    state=WebhookDeliveryState.delivered,
                )
            )
    return {
        "conversations": f"{BASE}/conversations?as=alice",
        "messages": f"{BASE}/conversations/{conversation_id}/messages?as=alice",
        "outbound": f"{BASE}/outbound",
        "audit": f"{BASE}/audit",
        "chart notes": f"{BASE}/clients/alice/chart-notes",
        "deliveries": f"{BASE}/webhooks/app/deliveries",
        "events": f"{BASE}/events",
    }


def test_statements_per_page_do_not_grow_with_the_page_size(seeded: Any, api: Any) -> None:
    """No N+1: a page of 100 costs the statements a page of 10 does."""
    for name, url in _many(seeded).items():
        counts = {}
        for limit in (10, 100):
            with counting(seeded) as statements:
                page = api.get(f"{url}{'&' if '?' in url else '?'}limit={limit}")
            assert page.status_code == 200 and len(page.json()["items"]) == limit, (name, page.text)
            counts[limit] = len(statements)
        assert counts[10] == counts[100], (name, counts)
        assert counts[10] <= 8, (name, counts)


@pytest.mark.parametrize(
    ("query", "code"),
    [
        ("cursor=not-a-cursor", "invalid_cursor"),
        ("cursor=WzEsMiwzXQ", "invalid_cursor"),  # [1,2,3]: no list sorts by three keys
        ("limit=0", "invalid_request"),
    ],
)
def test_bad_cursors_and_limits_are_refused(seeded: Any, api: Any, query: str, code: str) -> None:
    for url in (
        f"{BASE}/conversations?as=alice&",
        f"{BASE}/inbound?",
        f"{BASE}/quarantine?",
        f"{BASE}/suppressions?",
    ):
        refused = api.get(url + query)
        assert refused.status_code == 422 and refused.json()["code"] == code, (url, refused.text)
    assert api.get(f"{BASE}/conversations?as=alice&limit=201").status_code == 422
    assert api.get(f"{BASE}/inbound?limit=1000").status_code == 200  # the logs keep their limit of 1000


def test_openapi_documents_limit_cursor_and_next_cursor(api: Any) -> None:
    spec = api.get("/openapi.json").json()
    for path in (
        "/api/v1/practices/{practice}/conversations",
        "/api/v1/practices/{practice}/conversations/{conversation}/messages",
        "/api/v1/practices/{practice}/inbound",
        "/api/v1/practices/{practice}/outbound",
        "/api/v1/practices/{practice}/quarantine",
        "/api/v1/practices/{practice}/suppressions",
        "/api/v1/practices/{practice}/audit",
        "/api/v1/practices/{practice}/webhooks/{name}/deliveries",
        "/api/v1/practices/{practice}/clients/{user}/chart-notes",
        "/api/v1/practices/{practice}/events",
    ):
        operation = spec["paths"][path]["get"]
        names = {p["name"] for p in operation["parameters"]}
        assert {"limit", "cursor"} <= names, path
        schema = operation["responses"]["200"]["content"]["application/json"]["schema"]
        name = schema["$ref"].rpartition("/")[2]  # a typed page (ConversationPage, SuppressionItems…)
        assert "next_cursor" in spec["components"]["schemas"][name]["properties"], path
        items = spec["components"]["schemas"][name]["properties"]["items"]["items"]
        assert "$ref" in items, path  # typed items, never bare objects (issue 20 #5)
