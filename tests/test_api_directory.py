"""Issue 20 items 9 and 11 through HTTP: refusals an app can act on, and what an app needs next to it
(directory lists, deletion, bulk upsert, conversation summaries, one message, the conversation id)."""

from __future__ import annotations

import io
import json
from typing import Any

from sqlalchemy import func, select

from mailbridge.domain.models import Attachment, Message
from tests import filemakers as fm
from tests.conftest import PRACTICE

BASE = "/api/v1/practices/acme"


def _payload(**over: Any) -> dict[str, Any]:
    return {
        "kind": "private",
        "subject": "Your report",
        "author": "dr-smith",
        "participants": ["alice"],
        "body": "The report you asked for.",
    } | over


# ---------------------------------------------------------------------------------------- item 9


def test_an_upload_whose_file_is_withheld_is_refused_with_the_file_and_the_reason(
    seeded: Any, api: Any
) -> None:
    """An .exe named report.pdf: 422 attachment_refused naming it, and nothing posted or stored."""
    with seeded.sessions() as session:
        before = session.scalar(select(func.count()).select_from(Message))
    refused = api.post(
        f"{BASE}/conversations",
        data={"payload": json.dumps(_payload())},
        files=[
            ("attachments", ("scan.png", io.BytesIO(fm.png()), "image/png")),
            ("attachments", ("report.pdf", io.BytesIO(fm.pe()), "application/pdf")),
        ],
    )
    assert refused.status_code == 422, refused.text
    assert refused.headers["content-type"].startswith("application/problem+json")
    problem = refused.json()
    assert problem["code"] == "attachment_refused" and problem["field"] == "attachments"
    assert problem["filename"] == "report.pdf" and problem["reason"]
    assert [a["filename"] for a in problem["attachments"]] == ["report.pdf"]
    assert "report.pdf" in problem["detail"]
    with seeded.sessions() as session:
        assert session.scalar(select(func.count()).select_from(Message)) == before
        assert session.scalar(select(func.count()).select_from(Attachment)) == 0

    created = api.post(f"{BASE}/conversations", json=_payload()).json()
    on_reply = api.post(
        f"{BASE}/conversations/{created['id']}/messages",
        data={"payload": json.dumps({"author": "dr-smith", "body": "Here it is."})},
        files=[("attachments", ("report.pdf", io.BytesIO(fm.pe()), "application/pdf"))],
    )
    assert on_reply.status_code == 422 and on_reply.json()["code"] == "attachment_refused"
    page = api.get(f"{BASE}/conversations/{created['id']}/messages?as=dr-smith").json()
    assert len(page["items"]) == 1  # nothing posted


def test_an_unknown_multipart_field_is_named(seeded: Any, api: Any) -> None:
    png = [("attachments", ("a.png", io.BytesIO(fm.png()), "image/png"))]  # makes the body multipart
    refused = api.post(
        f"{BASE}/conversations",
        data={"payload": json.dumps(_payload()), "attachment": "typo"},
        files=png,
    )
    assert refused.status_code == 422
    assert refused.json()["code"] == "invalid_request" and refused.json()["field"] == "attachment"
    wrong_file_field = api.post(
        f"{BASE}/conversations",
        data={"payload": json.dumps(_payload())},
        files=[("file", ("a.png", io.BytesIO(fm.png()), "image/png"))],
    )
    assert wrong_file_field.status_code == 422 and wrong_file_field.json()["field"] == "file"
    text_as_attachment = api.post(
        f"{BASE}/conversations",
        data={"payload": json.dumps(_payload()), "attachments": "not a file"},
        files=[("attachments", ("a.png", io.BytesIO(fm.png()), "image/png"))],
    )
    assert text_as_attachment.status_code == 422
    assert text_as_attachment.json()["field"] == "attachments"


def test_unknown_settings_keys_are_refused_like_unknown_top_level_keys(seeded: Any, api: Any) -> None:
    practice = {k: v for k, v in PRACTICE.items() if k != "settings"}
    top = api.put(BASE, json=practice | {"colour": "#fff"})
    assert top.status_code == 422 and top.json()["field"] == "colour"
    refused = api.put(BASE, json=practice | {"settings": {"brand_colour": "#fff", "min_body_chars": 3}})
    assert refused.status_code == 422
    assert refused.json()["code"] == "invalid_settings"
    assert refused.json()["field"] == "settings.brand_colour"
    assert "brand_colour" in refused.json()["detail"]
    assert api.get(BASE).json()["settings"]["min_body_chars"] == 10  # nothing stored
    nested = api.put(BASE, json=practice | {"settings": {"notify_content": {"privat": "full"}}})
    assert nested.status_code == 422 and nested.json()["code"] == "invalid_settings"
    known = api.put(BASE, json=practice | {"settings": {"brand_color": "#fff"}})
    assert known.status_code == 200 and known.json()["settings"]["brand_color"] == "#fff"
    cleared = api.put(BASE, json=practice | {"settings": {"some_old_key": None}})
    assert cleared.status_code == 200  # null clears a key an older version stored: allowed
