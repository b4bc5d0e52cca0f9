"""A practice's own portal: ``app_url`` and link paths per practice (issue 20, item 13).

The app sets them through the practice's settings (HTTP); the delivery worker sends the
notification to a real SMTP sink; its links point at the practice's portal. Dangerous values are
refused with 422 ``invalid_settings``, so a practice cannot point its clients anywhere else."""

from __future__ import annotations

from typing import Any

import pytest

from mailbridge.settings import SettingsError, load_settings
from tests.conftest import PRACTICE
from tests.test_agents import deliver, html, to
from tests.test_outbound import plain_text

BASE = "/api/v1/practices/acme"
CONVERSATION = {
    "kind": "company",
    "company": "bakery",
    "subject": "Opening hours",
    "author": "dr-smith",
    "participants": ["alice"],
    "body": "We open at nine on Saturdays.",
}


def set_settings(api: Any, settings: dict[str, Any]) -> Any:
    return api.put(BASE, json=PRACTICE | {"settings": settings})


def test_a_practice_portal_gets_its_own_links(seeded: Any, api: Any) -> None:
    answer = set_settings(
        api,
        {
            "app_url": "https://portal.acme-counselling.test/app/",
            "conversation_link_path": "/#/threads/{conversation}?from=email",
            "preferences_link_path": "/#/me/notifications",
        },
    )
    assert answer.status_code == 200, answer.text
    shown = api.get(BASE).json()["settings"]
    assert shown["app_url"] == "https://portal.acme-counselling.test/app"  # stored without the slash
    conversation = api.post(f"{BASE}/conversations", json=CONVERSATION).json()["id"]
    (mail,) = to(deliver(seeded), "alice@client.test")
    text, page = plain_text(mail), html(mail)
    link = f"https://portal.acme-counselling.test/app/#/threads/{conversation}?from=email"
    assert link in text
    assert link.replace("&", "&amp;") in page
    assert "https://portal.acme-counselling.test/app/#/me/notifications" in text + page
    assert "app.example.test" not in text + page  # the operator's app_url (tests/conftest.py) is unused

    # Removed (null, a merge patch): the operator's app_url and paths apply again.
    set_settings(api, {"app_url": None, "conversation_link_path": None, "preferences_link_path": None})
    conversation = api.post(f"{BASE}/conversations", json=CONVERSATION).json()["id"]
    (mail,) = to(deliver(seeded), "alice@client.test")
    assert f"https://app.example.test/conversations/{conversation}" in plain_text(mail)


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("app_url", "javascript:alert(1)"),
        ("app_url", "data:text/html,<script>alert(1)</script>"),
        ("app_url", "http://portal.acme.test"),  # https only (http only to localhost)
        ("app_url", "https://portal.acme.test@evil.test"),
        ("app_url", "//evil.test"),
        ("app_url", "/relative"),
        ("app_url", "https://portal.acme.test/?next=https://evil.test"),
        ("conversation_link_path", "//evil.test/{conversation}"),
        ("conversation_link_path", "/threads/"),  # no placeholder
        ("conversation_link_path", "javascript:go('{conversation}')"),
        ("conversation_link_path", "/a b/{conversation}"),
        ("preferences_link_path", "https://evil.test/"),
        ("preferences_link_path", "/x/{conversation}"),
    ],
)
def test_dangerous_links_are_refused(seeded: Any, api: Any, key: str, value: str) -> None:
    answer = set_settings(api, {key: value})
    assert answer.status_code == 422, answer.text
    assert answer.json()["code"] == "invalid_settings"
    assert key not in api.get(BASE).json()["settings"] or api.get(BASE).json()["settings"][key] is None


def test_localhost_portals_may_use_http(seeded: Any, api: Any) -> None:
    assert set_settings(api, {"app_url": "http://localhost:3000"}).status_code == 200


def test_the_operator_settings_are_checked_at_start_up() -> None:
    assert load_settings(app_url="http://app.internal:8080/").app_url == "http://app.internal:8080"
    for bad in ({"app_url": "javascript:alert(1)"}, {"conversation_link_path": "/no-placeholder"}):
        with pytest.raises(SettingsError):
            load_settings(**bad)
