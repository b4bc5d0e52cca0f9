"""What an app needs next to the API (issue 20, item 12): ETag and 304 on reads, 429 and Retry-After
per key, and no CORS at all — through HTTP."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient

from mailbridge.access.apikeys import create
from mailbridge.api.app import create_app
from mailbridge.domain import directory
from mailbridge.domain.db import transaction
from tests.conftest import API_KEY, make_services, seed
from tests.test_idempotency import BASE, CONVERSATION


def test_reads_carry_an_etag_and_answer_304_when_it_matches(seeded: Any, api: Any) -> None:
    conversation = api.post(f"{BASE}/conversations", json=CONVERSATION).json()["id"]
    url = f"{BASE}/conversations/{conversation}/messages?as=alice"
    first = api.get(url)
    etag = first.headers["etag"]
    assert re.fullmatch(r'"[0-9a-f]{32}"', etag)
    assert api.get(url).headers["etag"] == etag  # the same bytes, the same tag

    unchanged = api.get(url, headers={"If-None-Match": etag})
    assert (unchanged.status_code, unchanged.content) == (304, b"")
    assert unchanged.headers["etag"] == etag
    # Weak comparison (RFC 9110 §13.1.2), lists and "*".
    for header in (f"W/{etag}", f'"other", {etag}', "*"):
        assert api.get(url, headers={"If-None-Match": header}).status_code == 304, header
    assert api.get(url, headers={"If-None-Match": '"other"'}).status_code == 200

    # Something changed: the old tag no longer matches, the answer is whole with a new tag.
    api.post(
        f"{BASE}/conversations/{conversation}/messages", json={"author": "alice", "body": "Tuesday is fine."}
    )
    changed = api.get(url, headers={"If-None-Match": etag})
    assert changed.status_code == 200
    assert changed.headers["etag"] != etag
    assert len(changed.json()["items"]) == 2

    # Errors and writes carry none.
    assert "etag" not in api.get(f"{BASE}/conversations/nope?as=alice").headers
    assert "etag" not in api.post(f"{BASE}/conversations", json=CONVERSATION).headers


def test_each_key_is_rate_limited_with_429_and_retry_after(tmp_path: Path) -> None:
    """A bucket of 3 refilled at one request per 1000 s: the fourth request of a key waits."""
    services = make_services(
        tmp_path, f"sqlite:///{tmp_path / 'mailbridge.db'}", api_rate_limit=0.001, api_rate_limit_burst=3
    )
    try:
        seed(services)
        with transaction(services.sessions) as session:
            _, practice_key = create(session, directory.get_practice(session, "acme"), scope="app")
        with TestClient(create_app(services)) as client:
            platform = {"Authorization": f"Bearer {API_KEY}"}
            practice = {"Authorization": f"Bearer {practice_key}"}
            before = refused_count(client, platform)  # the platform key's first request
            for _ in range(3):
                assert client.get(f"{BASE}/conversations?as=alice", headers=practice).status_code == 200
            refused = client.get(f"{BASE}/conversations?as=alice", headers=practice)
            assert refused.status_code == 429
            assert refused.headers["content-type"].startswith("application/problem+json")
            assert refused.json()["code"] == "rate_limited"
            assert 1 <= int(refused.headers["retry-after"]) <= 1000
            # Another key has its own bucket; requests without a key are not counted.
            assert client.get("/healthz").status_code == 200
            assert refused_count(client, platform) == before + 1
    finally:
        services.close()


def refused_count(client: TestClient, headers: dict[str, str]) -> float:
    metrics = client.get("/metrics", headers=headers)
    assert metrics.status_code == 200, metrics.text
    found = re.search(r"^mailbridge_api_rate_limited_total (\S+)$", metrics.text, re.M)
    assert found is not None
    return float(found.group(1))


def test_the_default_limit_is_far_above_what_an_app_sends(seeded: Any, api: Any) -> None:
    assert seeded.settings.api_rate_limit == 100 and seeded.settings.api_rate_limit_burst == 1000
    for _ in range(50):
        assert api.get(f"{BASE}/conversations?as=alice").status_code == 200


def test_cors_stays_off(seeded: Any, api: Any) -> None:
    """The key never belongs in a browser: no preflight succeeds, no answer allows another origin."""
    preflight = api.options(
        f"{BASE}/conversations",
        headers={
            "Origin": "https://portal.example.org",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization, content-type",
        },
    )
    assert preflight.status_code >= 400
    assert not [name for name in preflight.headers if name.lower().startswith("access-control-")]
    read = api.get(f"{BASE}/conversations?as=alice", headers={"Origin": "https://portal.example.org"})
    assert read.status_code == 200
    assert not [name for name in read.headers if name.lower().startswith("access-control-")]
