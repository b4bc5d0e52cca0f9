"""Issue 18 and issue 12 item 17 through the public doors: one-click unsubscribe (RFC 8058) over HTTP
without the API key, the practice's identity in notifications, its own templates through the API
(and the attacks a tenant can try with them), and its logo sent inline."""

from __future__ import annotations

import email
import email.policy
import io
import re
from typing import Any

import dkim
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from sqlalchemy import func, select

from mailbridge.api.app import create_app
from mailbridge.domain.db import transaction
from mailbridge.domain.models import NotificationMute, Outbox, OutboxState
from mailbridge.outbound.sandbox import remote_references
from mailbridge.outbound.unsubscribe import UnsubscribeTokens
from tests.mailhelpers import open_conversation
from tests.sink import Sink
from tests.test_outbound import drain, enable_dkim, parse, plain_text, worker_for

BASE = "/api/v1/practices/acme"


def html_of(msg: email.message.EmailMessage) -> str:
    part = msg.get_body(("html",))
    assert part is not None
    return str(part.get_content())


def public(services: Any) -> TestClient:
    """A client of the HTTP listener with no API key: what a mail client is."""
    return TestClient(create_app(services))


def unsubscribe_path(msg: email.message.EmailMessage) -> str:
    header = str(msg["List-Unsubscribe"])
    match = re.fullmatch(r"<http://127\.0\.0\.1:0(/u/[A-Za-z0-9_-]+)>", header)
    assert match, header
    return match.group(1)


def deliver(services: Any, raw: list[bytes] | None = None) -> list[email.message.EmailMessage]:
    with Sink() as sink:
        drain(worker_for(services, sink))
    if raw is not None:
        raw.extend(r.data for r in sink.received)
    return [parse(r.data) for r in sink.received]


def mutes(services: Any) -> int:
    with services.sessions() as session:
        return int(session.scalar(select(func.count()).select_from(NotificationMute)) or 0)


# ---- one-click unsubscribe ------------------------------------------------------------------------


def test_one_click_unsubscribe_end_to_end(seeded: Any, api: Any) -> None:
    dns = enable_dkim(seeded)
    conv = open_conversation(
        seeded, kind="company", company="bakery", participants=("alice", "billing"), subject="VAT"
    )
    sent: list[bytes] = []
    first = deliver(seeded, sent)
    to_alice = next(m for m in first if str(m["To"]).endswith("<alice@client.test>"))
    assert to_alice["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    path = unsubscribe_path(to_alice)
    assert conv not in path and "VAT" not in path  # the token names nothing in clear
    # both one-click fields are covered by the DKIM signature (RFC 8058 section 4)
    signature = str(to_alice["DKIM-Signature"]).replace(" ", "").replace("\r\n", "")
    h = re.search(r"h=([^;]+)", signature)
    assert h and {"list-unsubscribe", "list-unsubscribe-post"} <= set(h.group(1).lower().split(":"))

    client = public(seeded)
    looked = client.get(path)  # a link scanner, or the person reading the page: mutes nothing
    assert looked.status_code == 200 and '<form method="post">' in looked.text
    assert "VAT" not in looked.text and "Acme" not in looked.text and "Alice" not in looked.text
    assert (
        looked.headers["referrer-policy"] == "no-referrer" and looked.headers["cache-control"] == "no-store"
    )
    assert mutes(seeded) == 0
    # what Gmail or Apple Mail send when the person presses "unsubscribe" (RFC 8058 section 3.2)
    done = client.post(
        path,
        content=b"List-Unsubscribe=One-Click",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert done.status_code == 200 and mutes(seeded) == 1
    assert client.post(path, content=b"List-Unsubscribe=One-Click").status_code == 200  # idempotent
    assert mutes(seeded) == 1
    assert api.get(f"{BASE}/conversations/{conv}/mutes").json() == {"muted": ["alice"]}

    posted = api.post(
        f"{BASE}/conversations/{conv}/messages", json={"author": "dr-smith", "body": "Any news on this?"}
    )
    assert posted.status_code == 201, posted.text
    second = deliver(seeded)
    assert [str(m["To"]) for m in second] == ["Bea Biller <billing@acme.test>"]  # the others still are
    for data in sent:
        assert dkim.verify(data, dnsfunc=lambda name, timeout=5: dns.get(name, b""))
    skipped = api.get(f"{BASE}/outbound", params={"state": "suppressed"}).json()["items"]
    assert [row["last_answer"] for row in skipped] == ["skipped: conversation_muted"]

    # the app can undo it
    assert api.delete(f"{BASE}/conversations/{conv}/mutes/alice").status_code == 204
    api.post(f"{BASE}/conversations/{conv}/messages", json={"author": "dr-smith", "body": "Hello again"})
    assert sorted(str(m["To"]) for m in deliver(seeded)) == [
        "Alice Martin <alice@client.test>",
        "Bea Biller <billing@acme.test>",
    ]


def test_a_notification_waiting_when_the_mute_arrives_is_cancelled(seeded: Any, api: Any) -> None:
    conv = open_conversation(seeded, kind="company", company="bakery", participants=("alice",))
    assert api.put(f"{BASE}/conversations/{conv}/mutes/alice").status_code == 204
    assert deliver(seeded) == []
    with seeded.sessions() as session:
        row = session.scalar(select(Outbox).where(Outbox.to_address == "alice@client.test"))
        assert row is not None and row.state == OutboxState.failed
        assert row.last_answer == "cancelled: recipient muted this conversation"


def test_forged_altered_and_expired_unsubscribe_links_mute_nothing(seeded: Any) -> None:
    conv = open_conversation(seeded, kind="company", company="bakery", participants=("alice",))
    (msg,) = deliver(seeded)
    path = unsubscribe_path(msg)
    token = path.removeprefix("/u/")
    client = public(seeded)
    flipped = token[:20] + ("A" if token[20] != "A" else "B") + token[21:]
    with transaction(seeded.sessions) as session:
        from mailbridge.domain import directory

        p = directory.get_practice(session, "acme")
        alice = directory.get_user(session, p, "alice")
        bob = directory.get_user(session, p, "bob")
        ids = (p.id, alice.id, bob.id)
    other_secret = UnsubscribeTokens(b"not the deployment's secret", 3600).issue(ids[0], ids[1], conv)
    expired = UnsubscribeTokens(
        seeded.settings.data_dir.joinpath("secrets", "token.key").read_bytes().strip(),
        60,
        clock=lambda: 1_000_000.0,
    ).issue(ids[0], ids[1], conv)
    wrong_user = seeded.unsubscribe.issue(ids[0] + 1, ids[1], conv)  # another practice's id
    cases = {
        flipped: 404,
        token[:-4]: 404,
        other_secret: 404,
        "x" * 600: 404,
        conv: 404,  # guessing with the conversation id
        expired: 410,
        wrong_user: 404,
    }
    for bad, status in cases.items():
        assert client.post(f"/u/{bad}", content=b"List-Unsubscribe=One-Click").status_code == status, bad
        assert client.get(f"/u/{bad}").status_code == status
    assert client.post(path, headers={"Content-Length": "100000"}, content=b"x").status_code == 413
    assert mutes(seeded) == 0


def test_unsubscribe_needs_no_api_key_but_the_mutes_api_does(seeded: Any) -> None:
    conv = open_conversation(seeded, kind="company", company="bakery", participants=("alice",))
    client = public(seeded)
    assert client.get(f"{BASE}/conversations/{conv}/mutes").status_code == 401
    assert client.put(f"{BASE}/conversations/{conv}/mutes/alice").status_code == 401
    assert mutes(seeded) == 0


# ---- identity, minimal mode -----------------------------------------------------------------------


def _png(width: int = 320, height: int = 80) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (width, height), (59, 110, 165)).save(out, "PNG")
    return out.getvalue()


def _practice(api: Any, **settings: Any) -> None:
    from tests.conftest import PRACTICE

    response = api.put(BASE, json={**PRACTICE, "settings": settings})
    assert response.status_code == 200, response.text


SECRETS = (b"Zorblax", b"Quixotic", b"Flibber", b"Dr Alex Smith", b"Alice", b"Acme Bakery")


def _secret_conversation(api: Any) -> None:
    payload = {
        "kind": "confidential",
        "company": "bakery",
        "subject": "Anxiety follow-up Zorblax",
        "author": "dr-smith",
        "participants": ["alice"],
        "body": "Your panic attacks Quixotic plan",
    }
    files = {
        "attachments": (
            "therapy-notes-Flibber.pdf",
            io.BytesIO(b"%PDF-1.4\n1 0 obj\n<<>>\nendobj\n%%EOF\n"),
            "application/pdf",
        )
    }
    import json

    created = api.post(f"{BASE}/conversations", data={"payload": json.dumps(payload)}, files=files)
    assert created.status_code == 201, created.text


def test_minimal_notification_names_the_practice_and_nothing_of_the_conversation(
    seeded: Any, api: Any
) -> None:
    _practice(api, brand_color="#0a7", footer="12 Harbour Street\nBristol")
    assert api.put(f"{BASE}/logo", content=_png()).status_code == 200
    _secret_conversation(api)
    with Sink() as sink:
        drain(worker_for(seeded, sink))
    (delivered,) = sink.received
    for leak in SECRETS:
        assert leak not in delivered.data, leak  # the whole raw message, every part and header
    msg = parse(delivered.data)
    assert str(msg["From"]) == "Acme Counselling <notify@acme.test>"
    html = html_of(msg)
    assert "Acme Counselling" in html and "12 Harbour Street" in html and "#0a7" in html
    assert re.search(r'<img[^>]+src="cid:logo\.[0-9a-f]{16}@acme\.test"', html)


def test_a_practice_can_keep_its_name_out_of_minimal_notifications(seeded: Any, api: Any) -> None:
    _practice(api, footer="Counselling for anxiety, 12 Harbour Street", minimal_shows_practice=False)
    assert api.put(f"{BASE}/logo", content=_png()).status_code == 200
    _secret_conversation(api)
    with Sink() as sink:
        drain(worker_for(seeded, sink))
    (delivered,) = sink.received
    for leak in (*SECRETS, b"Acme Counselling", b"anxiety", b"Harbour", b"image/png"):
        assert leak not in delivered.data, leak
    assert str(parse(delivered.data)["From"]) == "notify@acme.test"


def test_full_notification_lists_attachments_sizes_and_withheld_files(seeded: Any, api: Any) -> None:
    import json

    files = [
        (
            "attachments",
            ("report.pdf", io.BytesIO(b"%PDF-1.4\n" + b"0" * 2000 + b"\n%%EOF\n"), "application/pdf"),
        ),
        ("attachments", ("setup.exe", io.BytesIO(b"MZ\x90\x00" + b"\x00" * 200), "application/octet-stream")),
    ]
    payload = {
        "kind": "company",
        "company": "bakery",
        "subject": "Documents <b>bold</b>",
        "author": "dr-smith",
        "participants": ["alice"],
        "body": "Here are the documents.\n\n<script>alert(1)</script>",
    }
    # The app's door refuses a withheld file (422, issue 20 item 9); email posts without it, with the
    # withheld line, through the same intake: that is the post made here.
    refused = api.post(f"{BASE}/conversations", data={"payload": json.dumps(payload)}, files=files)
    assert refused.status_code == 422 and refused.json()["code"] == "attachment_refused"
    from mailbridge.domain import conversations as convs
    from mailbridge.domain import directory
    from mailbridge.domain.models import ConversationKind, MessageSource
    from mailbridge.storage.intake import Upload, intake_uploads

    with transaction(seeded.sessions) as session:
        p = directory.get_practice(session, "acme")
        uploads = [Upload(name, kind, handle) for _, (name, handle, kind) in files]
        for upload in uploads:
            upload.file.seek(0)
        intake = intake_uploads(seeded.blobs, convs.practice_settings(p), uploads, "en", p.id)
        convs.create_conversation(
            session,
            p,
            kind=ConversationKind.company,
            company=directory.get_company(session, p, "bakery"),
            subject=payload["subject"],
            author=directory.get_user(session, p, "dr-smith"),
            participants=[directory.get_user(session, p, "alice")],
            body=intake.with_withheld_line(payload["body"]),
            source=MessageSource.email,
            attachments=intake.accepted,
        )
    (msg,) = deliver(seeded)
    html, text = html_of(msg), plain_text(msg)
    assert "report.pdf" in html and "2 KB" in html
    assert "1 attachment withheld: setup.exe" in html and "1 attachment withheld: setup.exe" in text
    assert text.count("attachment withheld") == 1  # moved out of the body, not repeated
    assert "<script>" not in html and "&lt;script&gt;" in html and "&lt;b&gt;bold" in html
    assert "- report.pdf (2 KB)" in text
    assert all(len(line) <= 78 or "://" in line for line in text.splitlines())


def test_identity_settings_are_validated(seeded: Any, api: Any) -> None:
    from tests.conftest import PRACTICE

    for bad in (
        {"brand_color": "red"},
        {"brand_color": "#12345g"},
        {"brand_color": "#fff;background:url(https://t.example/p.gif)"},
        {"footer": "x" * 501},
        {"footer": "a\nb\nc\nd\ne\nf\ng"},
        {"footer": "evil\u202eeliv"},
    ):
        response = api.put(BASE, json={**PRACTICE, "settings": bad})
        assert response.status_code == 422 and response.json()["code"] == "invalid_settings", bad
    for bad_logo in (
        b"GIF89a" + b"\0" * 40,
        b"<svg xmlns='http://www.w3.org/2000/svg'/>",
        _png(8, 8),
        b"\x89PNG" + b"\0" * 200_000,
    ):
        response = api.put(f"{BASE}/logo", content=bad_logo)
        assert response.status_code == 422 and response.json()["code"] in ("logo_invalid", "logo_too_large")
    assert api.get(f"{BASE}/logo").status_code == 404
    assert api.put(f"{BASE}/logo", content=_png()).json()["width"] == 320
    got = api.get(f"{BASE}/logo")
    assert got.headers["content-type"] == "image/png" and got.content == _png()


# ---- a practice's own templates -------------------------------------------------------------------


@pytest.fixture
def sqlite_api(sqlite_services: Any) -> Any:
    from tests.conftest import API_KEY, seed

    seed(sqlite_services)
    with TestClient(create_app(sqlite_services), headers={"Authorization": f"Bearer {API_KEY}"}) as client:
        yield client


MINIMAL_MJML = """<mjml lang="{{ lang }}"><mj-head><mj-title>New message</mj-title></mj-head><mj-body>
<mj-section><mj-column>
<mj-text>{{ practice_name }}: you have a new message (house style).</mj-text>
<mj-button href="{{ signin_link }}">Read it</mj-button>
<mj-text><a href="{{ unsubscribe_link }}">Stop these emails</a></mj-text>
</mj-column></mj-section></mj-body></mjml>"""
MINIMAL_TEXT = "House style. Read it: {{ signin_link }}\nStop: {{ unsubscribe_link }}\n"


def test_practice_template_saved_versioned_previewed_and_used(seeded: Any, api: Any) -> None:
    url = f"{BASE}/templates/notification_minimal?locale=en"
    saved = api.put(
        url, json={"subject": "A note from {{ practice_name }}", "text": MINIMAL_TEXT, "mjml": MINIMAL_MJML}
    )
    assert saved.status_code == 201, saved.text
    assert saved.json()["version"] == 1 and "house style" in saved.json()["preview"]["html"]
    assert (
        api.put(
            url, json={"subject": "Note from {{ practice_name }}", "text": MINIMAL_TEXT, "mjml": MINIMAL_MJML}
        ).json()["version"]
        == 2
    )
    listed = {(i["name"], i["locale"]): i for i in api.get(f"{BASE}/templates").json()["items"]}
    assert listed[("notification_minimal", "en")] == {
        "name": "notification_minimal",
        "locale": "en",
        "source": "practice",
        "version": 2,
    }
    assert listed[("notification_minimal", "fr")]["source"] == "default"
    detail = api.get(url).json()
    assert [v["version"] for v in detail["versions"]] == [2, 1] and detail["active_version"] == 2
    assert "<mjml" in detail["default"]["mjml"] and "body" not in detail["variables"]
    preview = api.post(f"{BASE}/templates/notification_minimal/preview?locale=en").json()
    assert preview["source"] == "practice" and preview["subject"] == "Note from Acme Counselling"
    draft = api.post(
        f"{BASE}/templates/notification_minimal/preview?locale=en",
        json={"subject": "Draft {{ practice_name }}"},
    )
    assert draft.json()["source"] == "draft" and draft.json()["subject"] == "Draft Acme Counselling"

    open_conversation(seeded, kind="private", participants=("alice",))
    (msg,) = deliver(seeded)
    assert msg["Subject"] == "Note from Acme Counselling" and "house style" in html_of(msg)
    assert "House style." in plain_text(msg)

    assert api.delete(url).status_code == 204
    open_conversation(seeded, kind="private", participants=("alice",), subject="Another")
    (msg,) = deliver(seeded)
    assert msg["Subject"] == "You have a new secure message"
    assert api.get(url).json()["active_version"] is None


@pytest.mark.parametrize(
    ("parts", "problem"),
    [
        # a minimal template may not show anything of the conversation
        ({"subject": "{{ subject }}"}, "unknown or forbidden variables: subject"),
        ({"text": MINIMAL_TEXT + "{{ body }}"}, "unknown or forbidden variables: body"),
        (
            {"mjml": MINIMAL_MJML.replace("house style", "{{ author_name }}")},
            "forbidden variables: author_name",
        ),
        # the sandbox: no Python objects, globals, settings or other templates
        ({"subject": "{{ ''.__class__.__mro__ }}"}, "only the fields of a loop's item"),
        ({"subject": "{{ signin_link.__class__ }}"}, "only the fields of a loop's item"),
        ({"subject": "{{ lipsum.__globals__ }}"}, "only the fields of a loop's item"),
        (
            {"subject": "{{ lipsum }}{{ range }}{{ cycler }}"},
            "unknown or forbidden variables: cycler, lipsum, range",
        ),
        ({"subject": "{{ config }}{{ self }}{{ request }}"}, "unknown or forbidden variables"),
        ({"subject": "{% include 'en/notification_full.subject.txt' %}"}, "include is not allowed"),
        (
            {"subject": "{% for x in footer_lines %}{% for y in footer_lines %}{% endfor %}{% endfor %}"},
            "nested",
        ),
        ({"subject": "{{ 'x' * 1000000000 }}"}, "mul is not allowed"),
        ({"subject": "{{ signin_link|replace('a', 'b') }}"}, "filter 'replace' is not allowed"),
        # MJML that reads files or fetches URLs, HTML that loads anything: never
        (
            {
                "mjml": MINIMAL_MJML.replace(
                    "<mj-section>", '<mj-include path="/etc/passwd" type="html" /><mj-section>'
                )
            },
            "does not compile",
        ),
        (
            {
                "mjml": MINIMAL_MJML.replace(
                    "<mj-section>",
                    '<mj-section><mj-column><mj-image src="https://t.example/p.gif" alt="x" /></mj-column></mj-section><mj-section>',
                )
            },
            "images may only be the practice's logo",
        ),
        (
            {
                "mjml": MINIMAL_MJML.replace(
                    "</mj-head>",
                    "<mj-style>body { background: url(https://t.example/p.gif) }</mj-style></mj-head>",
                )
            },
            "url()",
        ),
        (
            {"mjml": MINIMAL_MJML.replace("(house style)", '<img src="https://t.example/p.gif">')},
            "images may only be",
        ),
        (
            {"mjml": MINIMAL_MJML.replace("(house style)", "<script>alert(1)</script>")},
            "<script> is not allowed",
        ),
        (
            {"mjml": MINIMAL_MJML.replace("(house style)", '<a href="javascript:alert(1)">x</a>')},
            "links may be",
        ),
        # the links a notification must carry
        (
            {
                "mjml": MINIMAL_MJML.replace(
                    '<mj-text><a href="{{ unsubscribe_link }}">Stop these emails</a></mj-text>', ""
                )
            },
            "the unsubscribe_link link",
        ),
        ({"text": "Sign in: {{ signin_link }}"}, "text: the unsubscribe_link link"),
        ({"mjml": "<mjml><mj-body><mj-section>"}, "does not compile"),
        # 3,500 levels (88 KB, within the size limit) crash mrml 0.2.4 with a segmentation fault: the
        # whole API process would die; refused before mrml sees it
        (
            {
                "mjml": MINIMAL_MJML.replace(
                    "<mj-section>", "<mj-wrapper>" * 3_500 + "</mj-wrapper>" * 3_500 + "<mj-section>"
                )
            },
            "nested more than 100 deep",
        ),
    ],
)
def test_practice_templates_that_break_the_rules_are_refused(
    sqlite_api: Any, parts: dict[str, str], problem: str
) -> None:
    """Refused before anything is stored: one backend is enough (the refusals are the renderer's)."""
    api = sqlite_api
    body = {"subject": "New message", "text": MINIMAL_TEXT, "mjml": MINIMAL_MJML} | parts
    response = api.put(f"{BASE}/templates/notification_minimal?locale=en", json=body)
    assert response.status_code == 422, response.text
    assert response.json()["code"] == "template_invalid"
    assert any(problem in p for p in response.json()["problems"]), response.json()["problems"]
    assert api.get(f"{BASE}/templates/notification_minimal?locale=en").json()["versions"] == []


def test_a_practice_template_that_fails_on_real_data_falls_back_to_the_default(
    seeded: Any, api: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """Checked with the sample, broken by real data (the subject put into a style attribute spells a
    url()): the default goes out instead, with a WARNING and a metric; never an unsent notification."""
    from mailbridge.observability import TEMPLATE_OVERRIDE_FAILED

    default = api.get(f"{BASE}/templates/notification_full?locale=en").json()["default"]
    mjml = (
        default["mjml"]
        .replace('<mj-text font-size="21px"', '<mj-text css-class="{{ subject }}" font-size="21px"')
        .replace(
            "{{ subject }}</mj-text>", '<span style="color:{{ subject }}">{{ subject }}</span></mj-text>'
        )
    )
    assert api.put(f"{BASE}/templates/notification_full?locale=en", json={"mjml": mjml}).status_code == 201
    before = TEMPLATE_OVERRIDE_FAILED.labels("acme")._value.get()
    open_conversation(
        seeded,
        kind="company",
        company="bakery",
        participants=("alice",),
        subject="x;background:url(https://t.example/p.gif)",
    )
    (msg,) = deliver(seeded)
    assert '<span style="color:' not in html_of(msg) and remote_references(html_of(msg)) == []
    assert TEMPLATE_OVERRIDE_FAILED.labels("acme")._value.get() == before + 1
    assert any(r.message == "template_override_failed" and r.levelname == "WARNING" for r in caplog.records)


def test_a_practice_template_is_that_practices_only(seeded: Any, api: Any) -> None:
    from tests.conftest import seed

    seed(seeded, "other")
    url = "/api/v1/practices/other/templates/notification_minimal?locale=en"
    assert api.put(url, json={"subject": "Other's house style"}).status_code == 201
    open_conversation(seeded, kind="private", participants=("alice",))
    (msg,) = deliver(seeded)
    assert msg["Subject"] == "You have a new secure message"
    assert (
        api.put("/api/v1/practices/nobody/templates/notice?locale=en", json={"subject": "x"}).status_code
        == 404
    )
    assert api.put(f"{BASE}/templates/not_a_template?locale=en", json={"subject": "x"}).status_code == 422
    assert api.put(f"{BASE}/templates/notice?locale=de", json={"subject": "x"}).status_code == 422


def test_the_demo_notifications_use_the_new_templates(sqlite_services: Any) -> None:
    """`make run` loads the demo: its notifications carry its colour, footer and logo."""
    from mailbridge.demo import load_demo

    with transaction(sqlite_services.sessions) as session:
        load_demo(session)
    drain(worker_for(sqlite_services, None), rounds=5)
    sent = [
        parse(p.read_bytes()) for p in sorted((sqlite_services.settings.data_dir / "outbox").glob("*.eml"))
    ]
    assert len(sent) >= 8
    full = next(m for m in sent if m["Subject"] == "Quarterly VAT return" and "alice" in str(m["To"]))
    html = html_of(full)
    assert "#0a7766" in html and "12 Harbour Street" in html and 'src="cid:logo.' in html
    assert full["List-Unsubscribe"].startswith("<http://127.0.0.1:0/u/")
    french = next(m for m in sent if m["Subject"] == "Vous avez un nouveau message sécurisé")
    assert "#8a3ffc" in html_of(french) and "Cabinet Lumière" in str(french["From"])
