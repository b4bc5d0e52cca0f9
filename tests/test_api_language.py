"""Refusals speak the user's language (issue 20 #10): every problem code has a title, a meaning and
what to do in English and French, never naming an internal rule; the API picks the ``as`` user's
locale, else Accept-Language."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient

from mailbridge.reasons import API_CODES, CATALOGUE
from tests.test_api import BASE, new_conv

ROOT = Path(__file__).resolve().parent.parent
RULES = set(re.findall(r'_(?:deny|allow)\(\s*"([a-z_]+)"', (ROOT / "mailbridge/policy/rules.py").read_text()))


def test_every_problem_code_is_explained_in_english_and_french_without_rule_names(api: Any) -> None:
    served = set(
        TestClient(api.app).get("/openapi.json").json()["components"]["schemas"]["ProblemCode"]["enum"]
    )
    assert served == set(API_CODES)
    assert len(RULES) > 15
    for code in API_CODES:
        en, fr = CATALOGUE[code].problem("en"), CATALOGUE[code].problem("fr-CA")
        assert all(en) and all(fr), code
        assert en[0] != fr[0] or en[0] in {"Conversation", "Message"}, code  # a title per language
        text = " ".join((*en, *fr))
        assert not [rule for rule in RULES if rule in text], code
        assert "seed" not in text.lower(), code


def test_the_answer_follows_the_actor_then_accept_language(seeded: Any, api: Any) -> None:
    group = new_conv(api, participants=["alice", "bob"]).json()
    url = f"{BASE}/conversations/{group['id']}/messages"
    english = api.post(url, json={"author": "alice", "body": "Reply to all of you"})
    assert english.status_code == 403 and english.headers["content-language"] == "en"
    body = english.json()
    assert body["code"] == "group_conversation"
    assert (body["title"], body["detail"], body["hint"]) == CATALOGUE["group_conversation"].problem("en")
    assert not [rule for rule in RULES if rule in english.text]  # e.g. never "group_privacy"
    french = api.post(
        url,
        json={"author": "alice", "body": "Reply to all of you"},
        headers={"Accept-Language": "fr-CA,fr;q=0.9,en;q=0.5"},
    )
    assert french.headers["content-language"] == "fr"
    assert (
        french.json()["title"] == "Conversation de groupe" and french.json()["code"] == "group_conversation"
    )
    # a route with as=: the acting user's locale (bob is French) whatever the header says
    first = group["messages"][0]["id"]  # bob reads it (a participant) but did not write it
    refused = api.delete(f"{BASE}/messages/{first}?as=bob", headers={"Accept-Language": "en"})
    assert refused.status_code == 403 and refused.headers["content-language"] == "fr"
    assert refused.json()["detail"] == CATALOGUE[refused.json()["code"]].problem("fr")[1]
    alice = api.get(f"{BASE}/conversations/nope?as=alice", headers={"Accept-Language": "fr"})
    assert alice.status_code == 404 and alice.headers["content-language"] == "en"  # alice's own locale
    # input errors too, and the developer's details stay in errors
    invalid = api.put(f"{BASE}/users/zed", json={"email": "x"}, headers={"Accept-Language": "fr"})
    assert invalid.json()["title"] == "Requête non valide" and invalid.json()["errors"][0]["field"]
    assert api.get("/api/v1/nothing", headers={"Accept-Language": "fr"}).json()["title"] == "Introuvable"
    bare = TestClient(api.app).get(f"{BASE}/users/zed", headers={"Accept-Language": "fr"})
    assert bare.status_code == 401 and bare.json()["title"] == "Authentification requise"


def test_another_practices_key_learns_nothing_from_the_language(seeded: Any, api: Any, services: Any) -> None:
    from mailbridge.access import apikeys
    from mailbridge.domain import directory
    from mailbridge.domain.db import transaction

    with transaction(services.sessions) as session:
        p, _ = directory.upsert_practice(
            session,
            "beta",
            name="Beta",
            reply_domain="reply.beta.test",
            notify_from="n@beta.test",
            locale="en",
            settings={},
        )
        _, key = apikeys.create(session, p, "app", "test")
    stranger = TestClient(api.app, headers={"Authorization": f"Bearer {key}"})
    answer = stranger.get(f"{BASE}/conversations?as=bob")  # bob is French, in acme
    assert answer.status_code == 404 and answer.json()["code"] == "practice_not_found"
    assert answer.headers["content-language"] == "en"
