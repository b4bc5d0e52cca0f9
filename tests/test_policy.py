"""The posting policy as a table: one row per product rule (seeds 000-004), for reading and posting;
seed 003's external agents on every conversation kind; who may join a conversation; quick notes."""

from __future__ import annotations

import pytest

from mailbridge.policy.rules import (
    Joining,
    Membership,
    Person,
    Situation,
    can_change_members,
    can_join,
    can_post,
    can_quick_note,
    can_read,
    can_read_message,
)

PROVIDER = Person(1, "staff", "provider", holds_company=True)
PROVIDER_NOFAV = Person(2, "staff", "provider", holds_company=False)
BILLER = Person(3, "staff", "biller", holds_company=True)
FRONT = Person(4, "staff", "front_office")
CLIENT_FAV = Person(10, "client", holds_company=True)
CLIENT_FAV2 = Person(11, "client", holds_company=True)
CLIENT_NOFAV = Person(12, "client", holds_company=False)
INACTIVE = Person(13, "client", active=False, holds_company=True)
INACTIVE_STAFF = Person(5, "staff", "provider", active=False, holds_company=True)
# seed 003's external agents: outside the practice (a referring physician, a school counsellor)
AGENT = Person(20, "external")
AGENT2 = Person(21, "external")
AGENT_FAV = Person(22, "external", holds_company=True)  # a favourite row would change nothing
INACTIVE_AGENT = Person(23, "external", active=False)


def sit(actor: Person, kind: str, participants: tuple[Person, ...], **kw: object) -> Situation:
    return Situation(actor=actor, kind=kind, participants=participants, **kw)  # type: ignore[arg-type]


# (name, situation, read allowed, post allowed, deciding reason for post)
TABLE = [
    # company: staff with the favourite read and post without being participants
    ("company staff favourite", sit(PROVIDER, "company", (BILLER, CLIENT_FAV)), True, True, "allowed"),
    (
        "company staff participant without favourite",
        sit(PROVIDER_NOFAV, "company", (PROVIDER_NOFAV, CLIENT_FAV)),
        True,
        True,
        "allowed",
    ),
    (
        "company staff outsider",
        sit(PROVIDER_NOFAV, "company", (BILLER, CLIENT_FAV)),
        False,
        False,
        "not_following_company",
    ),
    ("company client participant", sit(CLIENT_FAV, "company", (PROVIDER, CLIENT_FAV)), True, True, "allowed"),
    (
        "company client participant without favourite",
        sit(CLIENT_NOFAV, "company", (PROVIDER, CLIENT_NOFAV)),
        True,
        True,
        "allowed",
    ),
    (
        "company client favourite, a favourite client participates",
        sit(CLIENT_FAV2, "company", (PROVIDER, CLIENT_FAV)),
        True,
        True,
        "allowed_via_favourite",
    ),
    (
        "company client favourite, no favourite client participates",
        sit(CLIENT_FAV2, "company", (PROVIDER, CLIENT_NOFAV)),
        False,
        False,
        "not_participant",
    ),
    (
        "company client favourite, staff only",
        sit(CLIENT_FAV2, "company", (PROVIDER, BILLER)),
        False,
        False,
        "not_participant",
    ),
    (
        "company client without favourite, outsider",
        sit(CLIENT_NOFAV, "company", (PROVIDER, CLIENT_FAV)),
        False,
        False,
        "not_participant",
    ),
    # confidential: staff with favourite; among clients only designated participants of the company
    (
        "confidential staff favourite",
        sit(BILLER, "confidential", (PROVIDER, CLIENT_FAV)),
        True,
        True,
        "allowed",
    ),
    (
        "confidential staff outsider",
        sit(PROVIDER_NOFAV, "confidential", (PROVIDER, CLIENT_FAV)),
        False,
        False,
        "not_following_company",
    ),
    (
        "confidential client participant of the company",
        sit(CLIENT_FAV, "confidential", (PROVIDER, CLIENT_FAV)),
        True,
        True,
        "allowed",
    ),
    (
        "confidential client participant not of the company",
        sit(CLIENT_NOFAV, "confidential", (PROVIDER, CLIENT_NOFAV)),
        False,
        False,
        "not_company_client",
    ),
    (
        "confidential client favourite not designated",
        sit(CLIENT_FAV2, "confidential", (PROVIDER, CLIENT_FAV)),
        False,
        False,
        "not_participant",
    ),
    # private: participants only
    ("private participant staff", sit(PROVIDER, "private", (PROVIDER, CLIENT_FAV)), True, True, "allowed"),
    ("private participant client", sit(CLIENT_FAV, "private", (PROVIDER, CLIENT_FAV)), True, True, "allowed"),
    (
        "private staff outsider even with favourite",
        sit(BILLER, "private", (PROVIDER, CLIENT_FAV)),
        False,
        False,
        "not_participant",
    ),
    (
        "private client outsider",
        sit(CLIENT_FAV2, "private", (PROVIDER, CLIENT_FAV)),
        False,
        False,
        "not_participant",
    ),
    # group privacy (seed 003): more than one client, no replies from anyone
    (
        "private group: client reply",
        sit(CLIENT_FAV, "private", (PROVIDER, CLIENT_FAV, CLIENT_FAV2)),
        True,
        False,
        "group_conversation",
    ),
    (
        "private group: staff reply",
        sit(PROVIDER, "private", (PROVIDER, CLIENT_FAV, CLIENT_FAV2)),
        True,
        False,
        "group_conversation",
    ),
    (
        "private group: opening message allowed",
        sit(PROVIDER, "private", (PROVIDER, CLIENT_FAV, CLIENT_FAV2), is_reply=False),
        True,
        True,
        "allowed",
    ),
    (
        "private group: rule off",
        sit(CLIENT_FAV, "private", (PROVIDER, CLIENT_FAV, CLIENT_FAV2), group_privacy=False),
        True,
        True,
        "allowed",
    ),
    (
        "private one client, many staff: anyone replies",
        sit(CLIENT_FAV, "private", (PROVIDER, BILLER, FRONT, CLIENT_FAV)),
        True,
        True,
        "allowed",
    ),
    (
        "company with two clients: favourites rules apply",
        sit(CLIENT_FAV, "company", (PROVIDER, CLIENT_FAV, CLIENT_FAV2)),
        True,
        True,
        "allowed",
    ),
    # direct (seed 004)
    (
        "direct accepted",
        sit(PROVIDER, "direct", (PROVIDER, PROVIDER_NOFAV), friendship="accepted"),
        True,
        True,
        "allowed",
    ),
    (
        "direct requested only",
        sit(PROVIDER, "direct", (PROVIDER, PROVIDER_NOFAV), friendship="requested"),
        True,
        False,
        "friendship_not_accepted",
    ),
    (
        "direct closed: history readable, no posting",
        sit(PROVIDER, "direct", (PROVIDER, PROVIDER_NOFAV), friendship="closed"),
        True,
        False,
        "direct_channel_closed",
    ),
    (
        "direct third party",
        sit(BILLER, "direct", (PROVIDER, PROVIDER_NOFAV), friendship="accepted"),
        False,
        False,
        "not_participant",
    ),
    # inactive clients (seed 003)
    (
        "inactive client to provider",
        sit(INACTIVE, "private", (PROVIDER, INACTIVE)),
        True,
        False,
        "inactive_client",
    ),
    (
        "inactive client to billing and front office",
        sit(INACTIVE, "private", (BILLER, FRONT, INACTIVE)),
        True,
        True,
        "allowed",
    ),
    (
        "inactive client, company conversation with provider",
        sit(INACTIVE, "company", (PROVIDER, INACTIVE)),
        True,
        False,
        "inactive_client",
    ),
    # deactivated staff (seed 003's inactive users, applied to staff): neither read nor post, anywhere
    (
        "inactive staff account, private participant",
        sit(INACTIVE_STAFF, "private", (INACTIVE_STAFF, CLIENT_FAV)),
        False,
        False,
        "account_inactive",
    ),
    (
        "inactive staff account, company favourite",
        sit(INACTIVE_STAFF, "company", (PROVIDER, CLIENT_FAV)),
        False,
        False,
        "account_inactive",
    ),
    (
        "inactive staff account, confidential participant with favourite",
        sit(INACTIVE_STAFF, "confidential", (INACTIVE_STAFF, CLIENT_FAV)),
        False,
        False,
        "account_inactive",
    ),
    (
        "inactive staff account, direct channel open",
        sit(INACTIVE_STAFF, "direct", (INACTIVE_STAFF, PROVIDER), friendship="accepted"),
        False,
        False,
        "account_inactive",
    ),
    (
        "inactive staff account, internal note",
        sit(INACTIVE_STAFF, "private", (INACTIVE_STAFF, CLIENT_FAV), internal=True),
        False,
        False,
        "account_inactive",
    ),
    (
        "deleted conversation wins over an inactive account (404, not 403)",
        sit(INACTIVE_STAFF, "private", (INACTIVE_STAFF, CLIENT_FAV), deleted=True),
        False,
        False,
        "conversation_deleted",
    ),
    (
        "inactive client still reads a private conversation",
        sit(INACTIVE, "private", (BILLER, INACTIVE)),
        True,
        True,
        "allowed",
    ),
    # external agents (seed 003 "optionally include ... external agents"; issue 19): participants of
    # company, confidential and private conversations, by email only, never through favourites
    *[
        row
        for kind in ("company", "confidential", "private")
        for row in (
            (
                f"{kind}: external agent participant replies by email",
                sit(AGENT, kind, (PROVIDER, CLIENT_FAV, AGENT), by_email=True),
                True,
                True,
                "allowed",
            ),
            (
                f"{kind}: external agent participant, the app posts as them",
                sit(AGENT, kind, (PROVIDER, CLIENT_FAV, AGENT)),
                True,
                False,
                "external_by_email_only",
            ),
            (
                f"{kind}: external agent not a participant",
                sit(AGENT, kind, (PROVIDER, CLIENT_FAV), by_email=True),
                False,
                False,
                "not_participant",
            ),
            (
                f"{kind}: external agent with the company's favourite, not a participant",
                sit(AGENT_FAV, kind, (PROVIDER, CLIENT_FAV), by_email=True),
                False,
                False,
                "not_participant",
            ),
            (
                f"{kind}: inactive external agent",
                sit(INACTIVE_AGENT, kind, (PROVIDER, CLIENT_FAV, INACTIVE_AGENT), by_email=True),
                False,
                False,
                "account_inactive",
            ),
        )
    ],
    (
        "direct: an external agent never reads a direct channel, even listed in it",
        sit(AGENT, "direct", (PROVIDER, AGENT), friendship="accepted", by_email=True),
        False,
        False,
        "not_participant",
    ),
    (
        "confidential: an agent needs no favourite (designated by staff)",
        sit(AGENT, "confidential", (PROVIDER, CLIENT_FAV, AGENT), by_email=True),
        True,
        True,
        "allowed",
    ),
    (
        "private: two clients and an agent is still a group, for the agent",
        sit(AGENT, "private", (PROVIDER, CLIENT_FAV, CLIENT_FAV2, AGENT), by_email=True),
        True,
        False,
        "group_conversation",
    ),
    (
        "private: two clients and an agent is still a group, for a client",
        sit(CLIENT_FAV, "private", (PROVIDER, CLIENT_FAV, CLIENT_FAV2, AGENT)),
        True,
        False,
        "group_conversation",
    ),
    (
        "private: one client and agents, the client replies",
        sit(CLIENT_FAV, "private", (PROVIDER, CLIENT_FAV, AGENT, AGENT2)),
        True,
        True,
        "allowed",
    ),
    (
        "private: one client and agents, an agent replies",
        sit(AGENT2, "private", (PROVIDER, CLIENT_FAV, AGENT, AGENT2), by_email=True),
        True,
        True,
        "allowed",
    ),
    (
        "private: staff and agents only, an agent replies",
        sit(AGENT, "private", (PROVIDER, AGENT, AGENT2), by_email=True),
        True,
        True,
        "allowed",
    ),
    (
        "an external agent writes no internal note",
        sit(AGENT, "private", (PROVIDER, CLIENT_FAV, AGENT), internal=True, by_email=True),
        True,
        False,
        "internal_requires_staff",
    ),
    (
        "company: a client following the company does not read through an agent participant",
        sit(CLIENT_FAV2, "company", (PROVIDER, AGENT_FAV)),
        False,
        False,
        "not_participant",
    ),
    (
        "staff and clients post from the app and by email alike",
        sit(CLIENT_FAV, "private", (PROVIDER, CLIENT_FAV), by_email=True),
        True,
        True,
        "allowed",
    ),
    # internal notes, deletion, minimum body
    (
        "internal note by staff",
        sit(PROVIDER, "private", (PROVIDER, CLIENT_FAV), internal=True),
        True,
        True,
        "allowed",
    ),
    (
        "internal note by client",
        sit(CLIENT_FAV, "private", (PROVIDER, CLIENT_FAV), internal=True),
        True,
        False,
        "internal_requires_staff",
    ),
    (
        "deleted conversation",
        sit(PROVIDER, "private", (PROVIDER, CLIENT_FAV), deleted=True),
        False,
        False,
        "conversation_deleted",
    ),
    (
        "body shorter than the minimum",
        sit(CLIENT_FAV, "private", (PROVIDER, CLIENT_FAV), body_chars=5, min_body_chars=10),
        True,
        False,
        "body_too_short",
    ),
    (
        "body at the minimum",
        sit(CLIENT_FAV, "private", (PROVIDER, CLIENT_FAV), body_chars=10, min_body_chars=10),
        True,
        True,
        "allowed",
    ),
]


@pytest.mark.parametrize(
    ("name", "situation", "read", "post", "reason"), TABLE, ids=[row[0] for row in TABLE]
)
def test_policy_table(name: str, situation: Situation, read: bool, post: bool, reason: str) -> None:
    assert can_read(situation).allowed is read
    verdict = can_post(situation)
    assert verdict.allowed is post
    assert verdict.reason == reason
    assert verdict.rule  # every decision names the rule that made it


def test_account_verdict_names_only_deactivated_staff_and_agents() -> None:
    from mailbridge.policy.rules import account_verdict

    refused = account_verdict(INACTIVE_STAFF)
    assert refused is not None and (refused.allowed, refused.reason) == (False, "account_inactive")
    agent = account_verdict(INACTIVE_AGENT)
    assert agent is not None and (agent.rule, agent.reason) == (
        "account_inactive_external",
        "account_inactive",
    )
    assert account_verdict(PROVIDER) is None and account_verdict(AGENT) is None
    assert account_verdict(INACTIVE) is None  # inactive clients: seed 003 limits only whom they write to


# Who may be made a participant: (name, joining, allowed, reason)
JOIN_TABLE = (
    [
        (f"{kind}: staff add an agent", Joining(kind, AGENT, PROVIDER), True, "allowed")
        for kind in ("company", "confidential", "private")
    ]
    + [
        (f"{kind}: the app adds an agent", Joining(kind, AGENT), True, "allowed")
        for kind in ("company", "confidential", "private")
    ]
    + [
        (
            f"{kind}: a client brings an agent in",
            Joining(kind, AGENT, CLIENT_FAV),
            False,
            "external_added_by_staff",
        )
        for kind in ("company", "confidential", "private")
    ]
    + [
        (
            "private: an agent brings another agent in",
            Joining("private", AGENT2, AGENT),
            False,
            "external_added_by_staff",
        ),
        ("direct: staff add an agent", Joining("direct", AGENT, PROVIDER), False, "direct_staff_only"),
        ("direct: the app adds an agent", Joining("direct", AGENT), False, "direct_staff_only"),
        ("direct: the app adds a client", Joining("direct", CLIENT_FAV), False, "direct_staff_only"),
        ("direct: staff add staff", Joining("direct", PROVIDER_NOFAV, PROVIDER), True, "allowed"),
        ("private: a client adds staff", Joining("private", BILLER, CLIENT_FAV), True, "allowed"),
        ("private: staff add a client", Joining("private", CLIENT_FAV, PROVIDER), True, "allowed"),
    ]
)


@pytest.mark.parametrize(("name", "joining", "allowed", "reason"), JOIN_TABLE, ids=[r[0] for r in JOIN_TABLE])
def test_joining_table(name: str, joining: Joining, allowed: bool, reason: str) -> None:
    verdict = can_join(joining)
    assert (verdict.allowed, verdict.reason) == (allowed, reason)
    assert verdict.rule


# Changing who takes part in an existing conversation (issue 20): (name, membership, allowed, reason)
def change(
    actor: Person, kind: str, members: tuple[Person, ...], person: Person, adding: bool, **kw: object
) -> Membership:
    return Membership(sit(actor, kind, members, **kw), person, adding, creator_id=PROVIDER.id)


CONFIDENTIAL_MEMBERS = (PROVIDER, CLIENT_FAV)
MEMBERSHIP_TABLE = [
    (
        "private: staff add staff",
        change(PROVIDER, "private", (PROVIDER, CLIENT_FAV), BILLER, True),
        True,
        "allowed",
    ),
    (
        "private: staff who cannot read",
        change(BILLER, "private", (PROVIDER, CLIENT_FAV), BILLER, True),
        False,
        "not_participant",
    ),
    (
        "private: a client adds a client",
        change(CLIENT_FAV, "private", (PROVIDER, CLIENT_FAV), CLIENT_NOFAV, True),
        False,
        "staff_only",
    ),
    (
        "private: an agent adds",
        change(AGENT, "private", (PROVIDER, AGENT), BILLER, True),
        False,
        "staff_only",
    ),
    (
        "private: a second client",
        change(PROVIDER, "private", (PROVIDER, CLIENT_FAV), CLIENT_FAV2, True),
        False,
        "private_has_client",
    ),
    (
        "private: a second client, group privacy off",
        change(PROVIDER, "private", (PROVIDER, CLIENT_FAV), CLIENT_FAV2, True, group_privacy=False),
        True,
        "allowed",
    ),
    (
        "private: staff add an agent",
        change(PROVIDER, "private", (PROVIDER, CLIENT_FAV), AGENT, True),
        True,
        "allowed",
    ),
    (
        "direct: a third staff member",
        change(PROVIDER, "direct", (PROVIDER, BILLER), FRONT, True),
        False,
        "direct_two_people",
    ),
    (
        "direct: a client",
        change(PROVIDER, "direct", (PROVIDER, BILLER), CLIENT_FAV, True),
        False,
        "direct_staff_only",
    ),
    (
        "direct: one of the two again",
        change(PROVIDER, "direct", (PROVIDER, BILLER), BILLER, True),
        True,
        "allowed",
    ),
    (
        "direct: one of the two leaves",
        change(PROVIDER, "direct", (PROVIDER, BILLER), BILLER, False),
        False,
        "direct_two_people",
    ),
    (
        "confidential: a client outside the company",
        change(PROVIDER, "confidential", CONFIDENTIAL_MEMBERS, CLIENT_NOFAV, True),
        False,
        "client_not_following_company",
    ),
    (
        "confidential: a client of the company",
        change(PROVIDER, "confidential", CONFIDENTIAL_MEMBERS, CLIENT_FAV2, True),
        True,
        "allowed",
    ),
    (
        "company: staff following it add",
        change(BILLER, "company", (PROVIDER, CLIENT_FAV), FRONT, True),
        True,
        "allowed",
    ),
    (
        "company: staff not following it",
        change(PROVIDER_NOFAV, "company", (PROVIDER, CLIENT_FAV), FRONT, True),
        False,
        "not_following_company",
    ),
    (
        "the creator is removed",
        change(BILLER, "private", (PROVIDER, BILLER, CLIENT_FAV), PROVIDER, False),
        False,
        "creator_stays",
    ),
    (
        "the last other participant",
        change(PROVIDER, "private", (PROVIDER, CLIENT_FAV), CLIENT_FAV, False),
        False,
        "no_recipient",
    ),
    (
        "staff leave",
        change(BILLER, "private", (PROVIDER, BILLER, CLIENT_FAV), BILLER, False),
        True,
        "allowed",
    ),
    (
        "inactive staff",
        change(INACTIVE_STAFF, "private", (PROVIDER, INACTIVE_STAFF, CLIENT_FAV), FRONT, True),
        False,
        "account_inactive",
    ),
    (
        "deleted conversation",
        change(PROVIDER, "private", (PROVIDER, CLIENT_FAV), FRONT, True, deleted=True),
        False,
        "conversation_deleted",
    ),
]


@pytest.mark.parametrize(
    ("name", "membership", "allowed", "reason"), MEMBERSHIP_TABLE, ids=[r[0] for r in MEMBERSHIP_TABLE]
)
def test_membership_table(name: str, membership: Membership, allowed: bool, reason: str) -> None:
    verdict = can_change_members(membership)
    assert (verdict.allowed, verdict.reason) == (allowed, reason)


# Seed 003's quick note counts clients only: (name, situation, allowed, reason)
QUICK_NOTE_TABLE = [
    (
        "one client and agents",
        sit(PROVIDER, "private", (PROVIDER, CLIENT_FAV, AGENT, AGENT2)),
        True,
        "allowed",
    ),
    (
        "one client, an agent, company",
        sit(PROVIDER, "company", (PROVIDER, CLIENT_FAV, AGENT)),
        True,
        "allowed",
    ),
    (
        "two clients and an agent",
        sit(PROVIDER, "private", (PROVIDER, CLIENT_FAV, CLIENT_FAV2, AGENT)),
        False,
        "group_conversation",
    ),
    ("agents but no client", sit(PROVIDER, "private", (PROVIDER, AGENT)), False, "no_client"),
    ("an agent is not staff", sit(AGENT, "private", (PROVIDER, CLIENT_FAV, AGENT)), False, "staff_only"),
]


@pytest.mark.parametrize(
    ("name", "situation", "allowed", "reason"), QUICK_NOTE_TABLE, ids=[r[0] for r in QUICK_NOTE_TABLE]
)
def test_quick_note_counts_clients_only(name: str, situation: Situation, allowed: bool, reason: str) -> None:
    verdict = can_quick_note(situation)
    assert verdict.allowed is allowed
    assert verdict.reason == reason and verdict.rule


def test_internal_notes_hidden_from_clients() -> None:
    assert can_read_message(PROVIDER, internal=True)
    assert not can_read_message(CLIENT_FAV, internal=True)
    assert not can_read_message(AGENT, internal=True)
    assert can_read_message(CLIENT_FAV, internal=False)
