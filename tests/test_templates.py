"""The shipped templates: valid HTML that loads nothing, within Gmail's clipping size, obeying the
language practices' templates must obey, and liked by SpamAssassin once DKIM-signed as sent."""

from __future__ import annotations

import email
import email.policy
import hashlib
import io
import mailbox
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import html5lib
import pytest
from PIL import Image

from mailbridge.domain import directory
from mailbridge.domain.db import transaction
from mailbridge.domain.fingerprint import fingerprint
from mailbridge.domain.models import InboundLog, OutboxKind
from mailbridge.outbound.catalog import LOOP_FIELDS, SPECS, sample_context
from mailbridge.outbound.context import BODY_MAX_CHARS, split_withheld, wrap_text
from mailbridge.outbound.fanout import enqueue_email
from mailbridge.outbound.render import HTML_MAX_BYTES, LOCALES, SAMPLE_LOGO, Renderer
from mailbridge.outbound.sandbox import check_syntax, iter_links, remote_references
from mailbridge.storage.vault import raw_key
from tests.mailhelpers import open_conversation
from tests.sink import Sink
from tests.test_outbound import drain, enable_dkim, worker_for

RENDERER = Renderer()
CASES = [(name, lang) for name in SPECS for lang in LOCALES]


def rendered_html(name: str, lang: str, **overrides: Any) -> str:
    return RENDERER.render(name, lang, sample_context(name, lang) | overrides).html


@pytest.mark.parametrize(("name", "lang"), CASES)
def test_shipped_templates_obey_the_rules_of_practices_templates(name: str, lang: str) -> None:
    """What a practice may save, the shipped templates are: so GET …/templates/{name} is a valid start."""
    source = RENDERER.default(name, lang)
    spec = SPECS[name]
    for part, env in (
        ("subject", RENDERER.text_env),
        ("text", RENDERER.text_env),
        ("mjml", RENDERER.html_env),
    ):
        assert check_syntax(env, getattr(source, part), spec.variables, spec.lists, LOOP_FIELDS) == [], part
    RENDERER.check(name, lang, source)  # raises TemplateProblems


@pytest.mark.parametrize(("name", "lang"), CASES)
@pytest.mark.parametrize("logo", ["", SAMPLE_LOGO])
def test_html_is_valid_accessible_and_loads_nothing(name: str, lang: str, logo: str) -> None:
    html = rendered_html(name, lang, logo_src=logo)
    # well-formed as browsers parse it (the WHATWG algorithm, strict: any parse error fails)
    document = html5lib.HTMLParser(strict=True, namespaceHTMLElements=False).parse(html)
    assert document.get("lang") == lang
    assert document.find("head/title") is not None and document.find("head/title").text
    images = document.findall(".//img")
    assert len(images) == (1 if logo else 0)
    assert all(img.get("alt") for img in images)  # alt text: the practice's name
    assert remote_references(html, frozenset({logo} - {""})) == []
    for href, text in iter_links(html):
        assert text and not text.startswith(("http://", "https://")), (href, text)  # no bare URL as link text
    assert len(html.encode()) < HTML_MAX_BYTES


def test_a_huge_message_stays_under_gmails_clipping_size() -> None:
    body = ("A long paragraph of a very long message. " * 40 + "\n\n") * 200
    assert len(body) > 300_000
    from markupsafe import Markup

    from mailbridge.outbound.context import body_html, cut_body

    cut, truncated = cut_body(body)
    assert truncated and len(cut) <= BODY_MAX_CHARS + 2
    for lang in LOCALES:
        context = sample_context("notification_full", lang) | {
            "body": cut,
            "body_html": Markup(body_html(cut)),
            "body_truncated": True,
            "attachments": [
                {"name": f"file-{i}.pdf", "size": 1000 * i, "size_text": f"{i} KB"} for i in range(200)
            ],
        }
        rendered = RENDERER.render("notification_full", lang, context)
        assert len(rendered.html.encode()) < 102 * 1024
        assert "continues in the app" in rendered.text or "suite du message" in rendered.text


def test_text_parts_read_well_alone() -> None:
    for name, lang in CASES:
        text = RENDERER.render(name, lang, sample_context(name, lang)).text
        assert all(len(line) <= 76 or "://" in line for line in text.splitlines()), (name, lang)
        for link in SPECS[name].links:
            assert sample_context(name, lang)[link] in text
    assert wrap_text("> " + "word " * 40).splitlines()[1].startswith("> ")
    assert wrap_text("see https://example.org/" + "x" * 100) == "see\nhttps://example.org/" + "x" * 100


def test_the_withheld_line_is_found_in_both_languages() -> None:
    from mailbridge.inbound.attachments import Verdict, withheld_line

    verdicts = [Verdict(False, "a.exe", None, "executable", "program or script")]
    for lang in LOCALES:
        line = withheld_line(verdicts, lang)
        assert line is not None
        assert split_withheld(f"Hello there\n\n{line}") == ("Hello there", line)
        assert split_withheld(line) == ("", line)
    assert split_withheld("Hello\n\n2 attachments withheld? no") == (
        "Hello\n\n2 attachments withheld? no",
        "",
    )


# ---- SpamAssassin ---------------------------------------------------------------------------------


def _spamassassin() -> str:
    found = shutil.which("spamassassin")
    if found is None:
        if os.environ.get("CI"):
            pytest.fail(
                "spamassassin is required in CI (Debian package spamassassin, in the Makefile's list)"
            )
        pytest.skip("spamassassin not installed (Debian package spamassassin; `make test` installs it)")
    return found


def _logo() -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (320, 80), (10, 119, 102)).save(out, "PNG")
    return out.getvalue()


def _everything_as_sent(services: Any, api: Any, tmp_path: Path) -> list[bytes]:
    """Every template in every locale, with the practice's identity, as the worker sends them."""
    base = "/api/v1/practices/acme"
    from tests.conftest import PRACTICE

    settings = {
        "brand_color": "#0a7766",
        "footer": "12 Harbour Street, Bristol BS1 4QA\n+44 117 496 0000",
        "external_content": {"company": "full"},  # external agents: company in full, private minimal
    }
    assert (
        api.put(base, json={**PRACTICE, "settings": {**PRACTICE["settings"], **settings}}).status_code == 200
    )
    assert api.put(f"{base}/logo", content=_logo()).status_code == 200
    agents = {"alice": "referrer", "bob": "counsellor"}  # seed 003's external agents, English and French
    for agent, email_address, locale in (
        ("referrer", "dr.referrer@client.test", "en"),
        ("counsellor", "counsellor@client.test", "fr"),
    ):
        user = {"email": email_address, "name": "Dr Rita Referrer", "kind": "external", "locale": locale}
        assert api.put(f"{base}/users/{agent}", json=user).status_code == 201
    body = (
        "Hello,\n\nYour VAT return for the second quarter is ready. I have attached the draft and the "
        "list of receipts we still need; could you check the figures and send the two missing invoices "
        "by Friday?\n\nBest regards,\nAlex"
    )
    for who in ("alice", "bob"):  # English, French
        open_conversation(
            services,
            kind="company",
            company="bakery",
            participants=(who, agents[who]),
            subject="Quarterly VAT return",
            body=body,
        )
        open_conversation(
            services,
            kind="private",
            participants=(who, agents[who]),
            subject="Your next appointment",
            body=body,
        )
    sent: list[bytes] = []
    # A raw copy as rows from before object storage name it: only DATA_DIR/inbound is read that way.
    assert services.vault.legacy_raw is not None
    services.vault.legacy_raw.mkdir(parents=True, exist_ok=True)
    raw = services.vault.legacy_raw / "forwarded.eml"
    raw.write_bytes(
        b"From: someone@example.org\r\nTo: postmaster@acme.test\r\nSubject: Hello\r\n\r\nHello postmaster.\r\n"
    )
    with services.sessions() as session:
        practice_id = directory.get_practice(session, "acme").id
    for lang in LOCALES:
        # the forwarded original, stored as the pipeline stores raw mail (the object store; the vault
        # opens the practice's data key in a transaction of its own, so before the one below)
        ref = services.vault.put_path(raw_key(practice_id, f"fwd-{lang}"), raw, practice_id)
        with transaction(services.sessions) as session:
            practice = directory.get_practice(session, "acme")
            practice.locale = lang
            enqueue_email(
                session,
                practice,
                kind=OutboxKind.notice,
                to_address="alice@client.test",
                payload={"reason": "body_too_short", "locale": lang},
            )
            agent = directory.get_user(session, practice, "referrer" if lang == "en" else "counsellor")
            enqueue_email(  # notice_external: to an external agent, no sign-in link
                session,
                practice,
                kind=OutboxKind.notice,
                to_address=agent.email,
                recipient_id=agent.id,
                payload={"reason": "group_conversation", "locale": lang},
            )
            inbound = InboundLog(
                door="smtp", raw_sha256=hashlib.sha256(raw.read_bytes()).hexdigest(), raw_ref=ref
            )
            session.add(inbound)
            session.flush()
            enqueue_email(
                session,
                practice,
                kind=OutboxKind.forward,
                to_address="operator@acme.test",
                payload={"inbound_id": inbound.id, "rcpt": "postmaster@acme.test"},
            )
        with Sink() as sink:
            drain(worker_for(services, sink, public_url="https://mailbridge.acme.test"))
        sent += [r.data for r in sink.received]
    return sent


@pytest.mark.slow
def test_spamassassin_scores_every_template_under_one(sqlite_services: Any, tmp_path: Path) -> None:
    """One spamassassin process for all fourteen messages (~5 s here; one per message took ~3.5 s each)."""
    from fastapi.testclient import TestClient

    from mailbridge.api.app import create_app
    from tests.conftest import API_KEY, seed

    spamassassin = _spamassassin()
    seed(sqlite_services)
    enable_dkim(sqlite_services)
    with TestClient(create_app(sqlite_services), headers={"Authorization": f"Bearer {API_KEY}"}) as api:
        sent = _everything_as_sent(sqlite_services, api, tmp_path)
    # per language: a full and a minimal notification to a client and to an external agent, a notice
    # to each, and a forward: every template
    assert len(sent) == 14, [email.message_from_bytes(d)["Subject"] for d in sent]
    path = tmp_path / "all.mbox"
    box = mailbox.mbox(path)
    for data in sent:
        assert data.startswith(b"DKIM-Signature:") and b"Content-ID: <logo." in data
        box.add(mailbox.mboxMessage(data))
    box.flush()
    box.close()
    # -L: local tests only (no DNS blocklists, no network); -t: report; --mbox: one process for all
    result = subprocess.run(
        [spamassassin, "-L", "-t", "--mbox"],
        stdin=path.open("rb"),
        capture_output=True,
        timeout=240,
        check=True,
    )
    scored = tmp_path / "scored.mbox"
    scored.write_bytes(result.stdout)
    reports = {}
    for msg in mailbox.mbox(scored):
        status = " ".join(str(msg["X-Spam-Status"]).split())
        reports[str(msg["Message-ID"])] = status
    assert len(reports) == len(sent)
    for message_id, status in reports.items():
        score = float(re.search(r"score=(-?[\d.]+)", status).group(1))  # type: ignore[union-attr]
        assert score < 1.0, f"{message_id}: {status}"
        assert "HTML_FONT_LOW_CONTRAST" not in status  # no hidden text coloured like its background


def test_the_pictures_in_the_docs_are_the_ones_listed() -> None:
    root = Path(__file__).resolve().parent.parent / "docs"
    listed = set(re.findall(r"\]\((notifications/[^)]+\.png)\)", (root / "notifications.md").read_text()))
    on_disk = {f"notifications/{p.name}" for p in (root / "notifications").glob("*.png")}
    assert listed == on_disk
    assert len(on_disk) == len(SPECS) * 4  # each template: 375 and 800 px, light and dark
    assert all((root / p).stat().st_size < 60_000 for p in on_disk)


NOTIFICATIONS = [name for name in SPECS if name.startswith("notification")]


@pytest.mark.parametrize("lang", LOCALES)
@pytest.mark.parametrize("name", NOTIFICATIONS)
def test_a_shared_rendering_gives_each_recipient_exactly_their_own(name: str, lang: str) -> None:
    """render_shared renders a message once for all its recipients: each copy must be the one a
    rendering of its own would give, link escaped, text wrapped where it would wrap, and the
    shared rendering must have that copy's fingerprint."""
    renderer = Renderer()
    base = sample_context(name, lang) | {"body": "Un & deux <b>x</b> " * 12}
    links = [
        "https://mailbridge.example.org/u/gAAAAABn" + "A1b2-_" * 20,
        "https://mailbridge.example.org/u/gAAAAABn" + "Zz9-_x" * 20,  # same length: the kept one
        "https://mb.example/u/a&b=<c>" + "q" * 40,  # escaped in the HTML
        "https://mb.example/" + "w" * 75,  # alone on its text line
    ]
    for link in links:
        context = base | {"unsubscribe_link": link}
        own, shared = renderer.render_shared(name, lang, context)
        assert own == renderer.render(name, lang, context)
        assert link not in shared.text
        for part in (own, shared):
            assert fingerprint(
                b"k" * 32,
                text=part.text,
                html=part.html,
                body=base["body"],
                sender="s",
                address="a@b.c",
                subject=part.subject,
            ) == fingerprint(
                b"k" * 32,
                text=own.text,
                html=own.html,
                body=base["body"],
                sender="s",
                address="a@b.c",
                subject=own.subject,
            )


def test_a_shared_rendering_is_made_once_and_only_for_plain_links(monkeypatch: pytest.MonkeyPatch) -> None:
    renderer = Renderer()
    calls: list[str] = []
    real = renderer.render

    def counting(name: str, locale: str, context: dict[str, Any], override: Any = None) -> Any:
        calls.append(str(context.get("unsubscribe_link")))
        return real(name, locale, context, override)

    monkeypatch.setattr(renderer, "render", counting)
    context = sample_context("notification_full", "en")
    for token in ("a" * 60, "b" * 60, "c" * 60):
        renderer.render_shared(
            "notification_full", "en", context | {"unsubscribe_link": f"https://m.example/u/{token}"}
        )
    assert len(calls) == 1
    renderer.render_shared(
        "notification_full",
        "en",
        context | {"subject": "Other", "unsubscribe_link": "https://m.example/u/" + "d" * 60},
    )
    assert len(calls) == 2  # anything else differs: rendered again
    for odd in (
        "https://m.example/u/a b" + "c" * 40,
        "mailto:x@y.z" + "c" * 60,
        "https://m.example/é" + "c" * 60,
    ):
        own, shared = renderer.render_shared("notification_full", "en", context | {"unsubscribe_link": odd})
        assert own is shared and calls[-1] == odd  # rendered for the recipient alone
