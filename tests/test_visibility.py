"""The read rules as SQL (``domain/visibility.py``) equal ``policy.rules.can_read``, situation by situation.

A table of conversations covers every kind, staff, clients and external agents (seed 003), participants
removed, companies followed by the reader and by the other clients, deleted conversations; for every
reader, the set the list query returns is compared with the conversations ``can_read`` allows one at a
time.
"""

from __future__ import annotations

import itertools
from typing import Any

from sqlalchemy import select

from mailbridge.domain import conversations as convs
from mailbridge.domain import directory
from mailbridge.domain.db import transaction
from mailbridge.domain.models import (
    Company,
    Conversation,
    ConversationKind,
    Favorite,
    Participant,
    User,
    UserKind,
    utcnow,
)
from mailbridge.domain.visibility import readable_by

READERS = (
    "dr-smith",
    "dr-jones",
    "billing",
    "frontdesk",
    "alice",
    "bob",
    "carol",
    "dave",
    "agent",
    "agent-2",
)
# External agents are not in the shared seed: made here, one inactive (refused whole, like inactive staff).
AGENTS = {"agent": True, "agent-2": True, "agent-off": False}


def _agents(session: Any, practice: Any) -> None:
    for ext, active in AGENTS.items():
        directory.upsert_user(
            session,
            practice,
            ext,
            email=f"{ext}@referrer.test",
            alt_emails=[],
            name=ext.title(),
            kind=UserKind.external,
            role=None,
            active=active,
            locale="en",
        )


def _table(session: Any, practice: Any) -> None:
    """Conversations written straight into the tables (no policy at creation): every combination."""
    users = {u.external_id: u for u in session.scalars(select(User).where(User.practice_id == practice.id))}
    bakery = session.scalar(select(Company).where(Company.external_id == "bakery"))
    garage = session.scalar(select(Company).where(Company.external_id == "garage"))
    staff_sets = [("dr-smith",), ("dr-jones",), ("dr-smith", "billing")]
    client_sets = [
        (),
        ("alice",),
        ("bob",),
        ("dave",),
        ("alice", "dave"),
        ("carol",),
        ("agent",),
        ("alice", "agent"),
        ("bob", "agent", "agent-2"),
        ("agent-off",),
    ]
    n = 0
    for kind, staff, clients, removed, deleted in itertools.product(
        ConversationKind, staff_sets, client_sets, (False, True), (False, True)
    ):
        if kind == ConversationKind.direct and clients and clients != ("agent",):
            continue  # an agent listed in a direct channel (only by a direct write) still reads nothing
        for company in (
            (bakery, garage) if kind in (ConversationKind.company, ConversationKind.confidential) else (None,)
        ):
            n += 1
            conversation = Conversation(
                practice_id=practice.id,
                kind=kind,
                company_id=company.id if company else None,
                subject=f"c{n}",
                creator_id=users[staff[0]].id,
                deleted_at=utcnow() if deleted else None,
            )
            session.add(conversation)
            members = [*staff, *clients]
            for position, ext in enumerate(members):
                gone = removed and position == len(members) - 1  # the last one was removed
                conversation.participants.append(
                    Participant(user_id=users[ext].id, user=users[ext], removed_at=utcnow() if gone else None)
                )
    session.flush()


def test_the_list_query_is_can_read(seeded: Any) -> None:
    with transaction(seeded.sessions) as session:
        practice = directory.get_practice(session, "acme")
        _agents(session, practice)
        _table(session, practice)
        # dave follows the garage, carol (inactive) the bakery: more situations for company_clients
        for ext, company in (("dave", "garage"), ("carol", "bakery"), ("dr-jones", "garage")):
            directory.set_favorite(
                session,
                directory.get_user(session, practice, ext),
                directory.get_company(session, practice, company),
                True,
            )
        # The directory refuses an agent's favourite (tests/test_agents.py); one written straight
        # into the table must open nothing either, in SQL as in the rules.
        session.add(
            Favorite(
                user_id=directory.get_user(session, practice, "agent").id,
                company_id=directory.get_company(session, practice, "bakery").id,
            )
        )
    checked = allowed = 0
    with seeded.sessions() as session:
        practice = directory.get_practice(session, "acme")
        everything = session.scalars(
            select(Conversation).where(Conversation.practice_id == practice.id)
        ).all()
        assert len(everything) > 300
        for ext in READERS:
            reader = directory.get_user(session, practice, ext)
            if reader.kind in (UserKind.staff, UserKind.external) and not reader.active:
                continue  # refused whole (403 account_inactive) before any query
            by_sql = set(
                session.scalars(
                    select(Conversation.id).where(
                        Conversation.practice_id == practice.id, readable_by(reader)
                    )
                ).all()
            )
            by_rules = {c.id for c in everything if convs.readable(session, reader, c).allowed}
            assert by_sql == by_rules, ext
            if ext.startswith("agent"):
                assert by_rules  # the agents read something: the table exercises their clause
            allowed += len(by_rules)
            checked += len(everything)
    assert checked > 2000 and 100 < allowed < checked - 100  # both answers, many times


def test_a_deactivated_staff_member_lists_nothing(seeded: Any, api: Any) -> None:
    staff = {"email": "gone@acme.test", "name": "Gone", "kind": "staff", "role": "provider", "active": False}
    assert api.put("/api/v1/practices/acme/users/gone", json=staff).status_code == 201
    assert api.get("/api/v1/practices/acme/conversations?as=gone").json()["code"] == "account_inactive"
