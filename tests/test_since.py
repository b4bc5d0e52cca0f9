"""``since`` on the inbound log honours the UTC offset it is given, on SQLite and PostgreSQL (issue 20, item 8).

A reply arrives over the live SMTP ingress (an inbound-log row stamped now); the app then asks for the
log ``since`` instants written with different offsets. SQLite used to drop the offset, so
``…+01:00`` was read as UTC, an hour off."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from typing import Any

from tests.mailhelpers import live_server, open_conversation, reply_address, reply_message, send

BASE = "/api/v1/practices/acme"
PARIS = timezone(timedelta(hours=1))
NEW_YORK = timezone(timedelta(hours=-5))


def since(api: Any, instant: datetime | str) -> list[dict[str, Any]]:
    text = instant if isinstance(instant, str) else instant.isoformat()
    response = api.get(f"{BASE}/inbound", params={"since": text})
    assert response.status_code == 200, response.text
    items: list[dict[str, Any]] = response.json()["items"]
    return items


def test_since_converts_every_offset_to_utc(seeded: Any, api: Any) -> None:
    conversation = open_conversation(seeded)
    with live_server(seeded) as server:
        code, _ = send(
            server,
            reply_message(
                "alice@client.test", reply_address(seeded, conversation, "alice"), "Tuesday is fine."
            ),
            "alice@client.test",
            reply_address(seeded, conversation, "alice"),
        )
    assert code == 250
    now = datetime.now(UTC)
    # Twenty minutes ago, written in Paris time: the wall clock reads forty minutes *after* UTC now.
    assert len(since(api, (now - timedelta(minutes=20)).astimezone(PARIS))) == 1
    # Twenty minutes from now, written in New York time: the wall clock reads hours *before* UTC now.
    assert since(api, (now + timedelta(minutes=20)).astimezone(NEW_YORK)) == []
    assert len(since(api, (now - timedelta(minutes=20)).astimezone(NEW_YORK))) == 1
    # Z and a naive time are UTC (documented in docs/integration.md).
    earlier = (now - timedelta(minutes=20)).replace(tzinfo=None)
    assert len(since(api, earlier.isoformat() + "Z")) == 1
    assert len(since(api, earlier.isoformat())) == 1
    assert since(api, (now + timedelta(minutes=20)).replace(tzinfo=None).isoformat()) == []
    # What the log shows is UTC, with its offset.
    (row,) = since(api, now - timedelta(hours=1))
    assert row["received_at"].endswith(("+00:00", "Z"))
