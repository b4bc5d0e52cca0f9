"""The RCPT decision's one statement (issue 17 item 4): every rule it replaced still decides."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select, update

from mailbridge.domain.db import transaction
from mailbridge.domain.models import Practice, ReplyToken
from mailbridge.inbound.envelope import decide_recipient
from mailbridge.ingress.smtp import make_decider
from tests.mailhelpers import open_conversation, reply_address


def _settings(services: Any, **changes: Any) -> None:
    """A settings write as the API makes it: a new stored text, nothing else told."""
    with transaction(services.sessions) as session:
        practice = session.scalars(select(Practice).where(Practice.slug == "acme")).one()
        practice.settings = {**(practice.settings or {}), **changes}


def test_reply_token_route_operator_and_relay(seeded: Any) -> None:
    decide = make_decider(seeded)
    conv = open_conversation(seeded, kind="company", company="bakery")
    address = reply_address(seeded, conv, "alice")
    found = decide(address.upper())  # addresses are case-insensitive
    assert found.reason == "token_ok" and found.target is not None
    assert found.target.conversation_id == conv and found.size_limit is not None
    assert decide("postmaster@reply.acme.test").reason == "operator"
    assert decide("someone@elsewhere.test").reason == "relay_denied"
    assert decide("reply+" + "a" * 32 + "@reply.acme.test").reason == "token_invalid"
    assert decide("not-an-address").reason == "address_malformed"


def test_revoked_token_is_unknown(seeded: Any) -> None:
    decide = make_decider(seeded)
    conv = open_conversation(seeded, kind="company", company="bakery")
    address = reply_address(seeded, conv, "alice")
    with transaction(seeded.sessions) as session:
        session.execute(update(ReplyToken).values(revoked_at=ReplyToken.created_at))
    assert decide(address).reason == "token_invalid"


def test_settings_changes_apply_to_the_next_decision(seeded: Any) -> None:
    """The validated settings are cached by their stored text: a write is seen at once."""
    decide = make_decider(seeded)
    conv = open_conversation(seeded, kind="company", company="bakery")
    address = reply_address(seeded, conv, "alice")
    assert decide(address).reason == "token_ok"
    _settings(seeded, reply_by_email=False)
    assert decide(address).reason == "reply_by_email_disabled"
    _settings(seeded, reply_by_email=True, message_max_bytes=2 * 1024 * 1024)
    assert decide(address).size_limit == 2 * 1024 * 1024


def test_address_templates_without_a_prefix_or_with_another_one(seeded: Any) -> None:
    """The token is the local part's last 32 characters for every template the settings accept;
    the practice's own template still decides whether the local part is one of its tokens."""
    decide = make_decider(seeded)
    conv = open_conversation(seeded, kind="company", company="bakery")
    token = reply_address(seeded, conv, "alice").split("+", 1)[1].split("@")[0]
    _settings(seeded, reply_local_template="{token}")
    assert decide(f"{token}@reply.acme.test").reason == "token_ok"
    assert decide(f"reply+{token}@reply.acme.test").reason == "token_invalid"
    _settings(seeded, reply_local_template="r-{token}")
    assert decide(f"r.{token}@reply.acme.test").reason == "token_ok"
    assert decide(f"reply+{token}@reply.acme.test").reason == "token_invalid"


def test_another_practices_token_is_unknown_here(seeded: Any) -> None:
    """Tenant isolation: a live token of practice A, sent to practice B's reply domain."""
    conv = open_conversation(seeded, kind="company", company="bakery")
    token = reply_address(seeded, conv, "alice").split("+", 1)[1].split("@")[0]
    with transaction(seeded.sessions) as session:
        session.add(
            Practice(slug="beta", name="Beta", reply_domain="reply.beta.test", notify_from="n@beta.test")
        )
    with seeded.sessions() as session:
        found = decide_recipient(session, seeded.tokens, seeded.verp_secret, f"reply+{token}@reply.beta.test")
    assert found.reason == "token_invalid" and found.target is None
