"""docs/integration.md is executed: its Python examples run against a real delivery and the real API."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from tests import test_webhooks as webhooks
from tests.mailhelpers import open_conversation
from tests.receiver import Receiver
from tests.test_webhooks import drive, hook, settled, worker

hooked, receiver = webhooks.hooked, webhooks.receiver  # the fixtures, shared

DOC = Path(__file__).resolve().parent.parent / "docs" / "integration.md"


def python_block(containing: str) -> str:
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(), re.S)
    (block,) = [b for b in blocks if containing in b]
    return block


def test_the_verification_example_verifies_and_deduplicates_a_real_delivery(
    hooked: Any, api: Any, receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret = hook(api, receiver, events=["message.created"])["secret"]
    open_conversation(hooked)
    drive(worker(hooked), settled(hooked))
    (delivery,) = receiver.received
    monkeypatch.setenv("MAILBRIDGE_WEBHOOK_SECRET", secret)
    handled: list[Any] = []
    namespace: dict[str, Any] = {"handle": handled.append}
    exec(python_block("def receive("), namespace)
    receive = namespace["receive"]
    headers = dict(delivery.headers)
    assert receive(delivery.body, headers) == 204
    assert receive(delivery.body, headers) == 204  # the same webhook-id again: handled once
    assert [e["type"] for e in handled] == ["message.created"]
    assert receive(delivery.body.replace(b"acme", b"acmf"), headers) == 400  # tampered
    assert receive(delivery.body, headers | {"webhook-signature": "v1,AAAA"}) == 400


def test_the_walking_example_returns_every_conversation(seeded: Any, api: Any) -> None:
    made = {open_conversation(seeded, subject=f"Walk {n}") for n in range(5)}
    namespace: dict[str, Any] = {}
    exec(python_block("def every_conversation("), namespace)
    walked = [c["id"] for c in namespace["every_conversation"](api, "dr-smith")]
    assert sorted(walked) == sorted(made)


def test_every_refusal_an_integrator_can_meet_when_posting_is_explained() -> None:
    """Section 7 states the product rules without the seeds: every reason a posting or joining rule
    can refuse with is named there (the behaviour itself is tested through HTTP elsewhere)."""
    import inspect

    from mailbridge.policy import rules

    text = " ".join(DOC.read_text().split())
    reasons = {"account_inactive", "friendship_not_accepted", "direct_channel_closed"}  # via variables
    for rule in (*rules.POST_RULES, *rules.JOIN_RULES):
        reasons |= set(re.findall(r'_deny\("[^"]+", "([^"]+)"\)', inspect.getsource(rule)))
    assert len(reasons) >= 10
    for reason in sorted(reasons):
        assert f"`{reason}`" in text or f" {reason}`" in text, reason
    for heading in (
        "Companies and favourites: membership",
        "Deleting users and companies",
        "People: three kinds",
    ):
        assert heading in text
