"""The posting policy as a table: one row per product rule (seeds 000-004), for reading and posting."""

from __future__ import annotations

import pytest

from mailbridge.policy.rules import Person, Situation, can_post, can_read, can_read_message

PROVIDER = Person(1, "staff", "provider", holds_company=True)
PROVIDER_NOFAV = Person(2, "staff", "provider", holds_company=False)
BILLER = Person(3, "staff", "biller", holds_company=True)
FRONT = Person(4, "staff", "front_office")
CLIENT_FAV = Person(10, "client", holds_company=True)
CLIENT_FAV2 = Person(11, "client", holds_company=True)
CLIENT_NOFAV = Person(12, "client", holds_company=False)
INACTIVE = Person(13, "client", active=False, holds_company=True)
INACTIVE_STAFF = Person(5, "staff", "provider", active=False, holds_company=True)


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


def test_account_verdict_names_only_deactivated_staff() -> None:
    from mailbridge.policy.rules import account_verdict

    refused = account_verdict(INACTIVE_STAFF)
    assert refused is not None and (refused.allowed, refused.reason) == (False, "account_inactive")
    assert account_verdict(PROVIDER) is None
    assert account_verdict(INACTIVE) is None  # inactive clients: seed 003 limits only whom they write to


def test_internal_notes_hidden_from_clients() -> None:
    assert can_read_message(PROVIDER, internal=True)
    assert not can_read_message(CLIENT_FAV, internal=True)
    assert can_read_message(CLIENT_FAV, internal=False)
