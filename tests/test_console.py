"""The operator console through its HTTP door (no browser): sign-in, sessions, CSRF, throttling,
scope and content rights, headers, every page and action; the reason catalogue and the French texts."""

from __future__ import annotations

import ast
import io
import re
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select, update

from mailbridge.api.app import create_app
from mailbridge.domain.db import transaction
from mailbridge.domain.models import (
    InboundLog,
    InboundState,
    Mailbox,
    OperatorAudit,
    OperatorSession,
    QuarantineItem,
    Route,
    utcnow,
)
from mailbridge.wiring import Services
from tests.conftest import make_services, seed
from tests.console_live import add_operator

ROOT = Path(__file__).resolve().parent.parent
PASSWORD = "console-test-password"


@pytest.fixture
def svc(tmp_path: Path) -> Iterator[Services]:
    services = make_services(
        tmp_path, f"sqlite:///{tmp_path / 'mailbridge.db'}", console_trusted_proxies=["10.9.0.0/16"]
    )
    seed(services)
    seed(services, "other")
    add_operator(services, "ops", PASSWORD, all_practices=True, content=True, email="ops@acme.test")
    add_operator(services, "meta", PASSWORD, practices=["acme"])
    yield services
    services.close()


def client(services: Services) -> TestClient:
    return TestClient(create_app(services), base_url="http://testserver", follow_redirects=False)


def login(c: TestClient, name: str = "ops", password: str = PASSWORD, **headers: str) -> Any:
    form = c.get("/console/login")
    token = re.search(r'name="login_token" value="([^"]+)"', form.text)
    assert token is not None
    return c.post(
        "/console/login",
        data={"name": name, "password": password, "login_token": token.group(1), "next": "/console/"},
        headers=headers,
    )


def csrf(c: TestClient, path: str) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', c.get(path).text)
    assert found is not None
    return found.group(1)


def hold(
    services: Services, practice: str = "acme", subject: str = "Hello", body: str = "Hi there"
) -> QuarantineItem:
    """A held message as the pipeline leaves one: an inbound row, its raw file, the quarantine item."""
    from mailbridge.domain import directory

    raw_dir = services.settings.data_dir / "inbound"
    raw_dir.mkdir(parents=True, exist_ok=True)
    with transaction(services.sessions) as session:
        p = directory.get_practice(session, practice)
        row = InboundLog(
            practice_id=p.id,
            door="smtp",
            mail_from="x@client.test",
            rcpt="frontdesk@acme.test",
            from_header="x@client.test",
            state=InboundState.quarantined,
            reason="unknown_sender",
            details={},
        )
        session.add(row)
        session.flush()
        path = raw_dir / f"{row.id}.eml"
        path.write_bytes(
            f"From: x@client.test\r\nSubject: {subject}\r\nMessage-ID: <m.{row.id}@client.test>\r\n\r\n{body}\r\n".encode()
        )
        row.raw_path = str(path)
        item = QuarantineItem(
            practice_id=p.id,
            inbound_id=row.id,
            route_address="frontdesk@acme.test",
            reason="unknown_sender",
            from_address="x@client.test",
            subject=subject,
        )
        session.add(item)
        session.flush()
        return item


def test_sign_in_sets_a_strict_httponly_cookie_and_pages_carry_the_security_headers(svc: Services) -> None:
    c = client(svc)
    answer = login(c)
    assert answer.status_code == 303 and answer.headers["location"] == "/console/"
    cookie = next(v for v in answer.headers.get_list("set-cookie") if v.startswith("mb_console="))
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Path=/console" in cookie
    assert "Secure" not in cookie  # plain http from an untrusted peer
    page = c.get("/console/p/acme/")
    assert page.status_code == 200
    csp = page.headers["content-security-policy"]
    assert "script-src 'self';" in csp and "unsafe-inline" not in csp.split("style-src")[0]
    assert "frame-ancestors 'none'" in csp and "unsafe-inline" not in csp
    assert page.headers["cache-control"] == "no-store"
    assert page.headers["x-content-type-options"] == "nosniff"
    assert page.headers["referrer-policy"] == "no-referrer"
    assert "<script>" not in page.text and " style=" not in page.text  # no inline script or style
    assert 'src="data:image/svg+xml' in page.text  # pygal's charts
    with svc.sessions() as session:
        stored = session.scalars(select(OperatorSession.id)).all()
    token = c.cookies.get("mb_console")
    assert token and token not in stored  # only its hash is kept


def test_secure_cookie_behind_a_trusted_proxy_and_its_client_address(svc: Services) -> None:
    c = TestClient(
        create_app(svc), base_url="http://testserver", follow_redirects=False, client=("10.9.0.1", 5000)
    )
    answer = login(c, **{"X-Forwarded-Proto": "https", "X-Forwarded-For": "203.0.113.7"})
    assert "Secure" in next(v for v in answer.headers.get_list("set-cookie") if v.startswith("mb_console="))
    with svc.sessions() as session:
        row = session.scalar(select(OperatorAudit).where(OperatorAudit.action == "login"))
        assert row is not None and row.peer == "203.0.113.7"
    # an untrusted peer's X-Forwarded-Proto changes nothing
    other = client(svc)
    assert "Secure" not in login(other, **{"X-Forwarded-Proto": "https"}).headers["set-cookie"]


def test_wrong_password_sign_in_csrf_and_throttling_per_address(svc: Services) -> None:
    c = client(svc)
    assert c.get("/console/p/acme/").status_code == 303  # not signed in: to the sign-in page
    assert login(c, password="wrong-password-here").status_code == 401
    refused = c.post("/console/login", data={"name": "ops", "password": PASSWORD, "login_token": "forged"})
    assert refused.status_code == 403
    svc.settings.console_login_max_failures_per_address = 3
    answers = [login(c, name=f"nobody{n}", password="x" * 12).status_code for n in range(2)]
    assert answers == [401, 429]  # the address failed three times in all (unknown names count too)
    blocked = login(c)  # even the right account from that address, for the window
    assert blocked.status_code == 429 and int(blocked.headers["retry-after"]) > 0


def test_logout_idle_expiry_and_password_reset_end_sessions(svc: Services) -> None:
    from mailbridge.console.accounts import reset_password

    c = client(svc)
    login(c)
    assert c.get("/console/p/acme/").status_code == 200
    with transaction(svc.sessions) as session:
        session.execute(update(OperatorSession).values(last_seen_at=utcnow() - timedelta(minutes=31)))
    expired = c.get("/console/p/acme/")
    assert expired.status_code == 303 and "expired=1" in expired.headers["location"]
    login(c)
    token = csrf(c, "/console/p/acme/")
    assert c.post("/console/logout", data={"csrf": token}).status_code == 303
    assert c.get("/console/p/acme/").status_code == 303
    login(c)
    with transaction(svc.sessions) as session:
        reset_password(session, "ops", "another-long-password")
    assert c.get("/console/p/acme/").status_code == 303


@pytest.mark.parametrize(
    "action",
    [
        "/quarantine/{item}/discard",
        "/quarantine/{item}/release",
        "/quarantine",
        "/routes/save",
        "/routes/delete",
        "/mailboxes/save",
        "/suppressions/unsuppress",
        "/inbound/{inbound}/reprocess",
        "/templates/test",
    ],
)
def test_every_form_without_the_csrf_token_is_refused(svc: Services, action: str) -> None:
    item = hold(svc)
    c = client(svc)
    login(c)
    path = "/console/p/acme" + action.format(item=item.id, inbound=item.inbound_id)
    answer = c.post(path, data={"ids": [item.id], "action": "discard", "address": "frontdesk@acme.test"})
    assert answer.status_code == 403
    assert c.post(path, data={"csrf": "wrong", "ids": [item.id], "action": "discard"}).status_code == 403
    with svc.sessions() as session:
        assert session.get(QuarantineItem, item.id).state == "held"  # nothing happened


def test_scope_other_practices_and_their_rows_answer_404(svc: Services) -> None:
    theirs = hold(svc, "other")
    c = client(svc)
    login(c, "meta")
    assert c.get("/console/").status_code == 303  # one practice: straight to it
    for path in (
        "/console/p/other/",
        "/console/p/missing/",
        "/console/p/other/quarantine",
        f"/console/p/acme/quarantine/{theirs.id}",
        f"/console/p/acme/inbound/{theirs.inbound_id}",
    ):
        assert c.get(path).status_code == 404, path
    token = csrf(c, "/console/p/acme/")
    assert c.post(f"/console/p/acme/quarantine/{theirs.id}/discard", data={"csrf": token}).status_code == 404
    assert c.post(f"/console/p/other/quarantine/{theirs.id}/discard", data={"csrf": token}).status_code == 404
    with svc.sessions() as session:
        assert session.get(QuarantineItem, theirs.id).state == "held"


def test_content_is_shown_only_with_content_rights(svc: Services) -> None:
    item = hold(svc, subject="Divorce papers", body="My husband must not know.")
    meta, ops = client(svc), client(svc)
    login(meta, "meta")
    login(ops)
    for path in (
        f"/console/p/acme/quarantine/{item.id}",
        "/console/p/acme/quarantine",
        f"/console/p/acme/inbound/{item.inbound_id}",
    ):
        hidden = meta.get(path).text
        assert "Divorce papers" not in hidden and "must not know" not in hidden, path
    shown = ops.get(f"/console/p/acme/quarantine/{item.id}").text
    assert "Divorce papers" in shown and "must not know" in shown
    assert "must not know" in ops.get(f"/console/p/acme/inbound/{item.inbound_id}").text  # the raw message


def test_hostile_values_are_escaped_in_the_html(svc: Services) -> None:
    item = hold(svc, subject="<script>alert(1)</script>", body="<img src=x onerror=alert(2)>")
    c = client(svc)
    login(c)
    for path in (
        f"/console/p/acme/quarantine/{item.id}",
        "/console/p/acme/quarantine",
        f"/console/p/acme/inbound/{item.inbound_id}",
        "/console/p/acme/trace?address=x@client.test",
        "/console/p/acme/inbound?address=%3Cscript%3E",
    ):
        html = c.get(path).text
        assert "<script>alert" not in html and "<img src=x" not in html, path
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in c.get(f"/console/p/acme/quarantine/{item.id}").text


def test_discard_and_bulk_actions_are_audited(svc: Services) -> None:
    first, second, third = hold(svc), hold(svc), hold(svc)
    c = client(svc)
    login(c)
    token = csrf(c, "/console/p/acme/quarantine")
    assert c.post(f"/console/p/acme/quarantine/{first.id}/discard", data={"csrf": token}).status_code == 303
    answer = c.post(
        "/console/p/acme/quarantine", data={"csrf": token, "action": "discard", "ids": [second.id, third.id]}
    )
    assert "discard%3A2%3A0" in answer.headers["location"]
    with svc.sessions() as session:
        assert {session.get(QuarantineItem, i.id).state for i in (first, second, third)} == {"discarded"}
        actions = session.scalars(
            select(OperatorAudit.action).where(OperatorAudit.target_kind == "quarantine")
        ).all()
    assert sorted(actions) == ["discard"] * 3
    audit = c.get("/console/audit?action=discard").text
    assert first.id in audit and "ops" in audit
    assert (
        "already discarded"
        in c.get(
            c.post(f"/console/p/acme/quarantine/{first.id}/discard", data={"csrf": token}).headers["location"]
        ).text
    )


def test_routes_and_mailboxes_are_edited_through_the_domain_rules(svc: Services) -> None:
    c = client(svc)
    login(c)
    token = csrf(c, "/console/p/acme/routes")
    saved = c.post(
        "/console/p/acme/routes/save",
        data={
            "csrf": token,
            "address": "desk@acme.test",
            "roles": ["front_office"],
            "kind": "private",
            "unknown_senders": "triage",
        },
    )
    assert "done=saved" in saved.headers["location"]
    bad = c.post(
        "/console/p/acme/routes/save", data={"csrf": token, "address": "x@acme.test", "staff": "alice"}
    )
    assert "unknown_staff" in bad.headers["location"]  # the API's own rule and code
    box = {
        "csrf": token,
        "name": "inbox",
        "host": "imap.acme.test",
        "security": "tls",
        "username": "desk",
        "password": "s3cret-imap-pass",
    }
    assert "done=saved" in c.post("/console/p/acme/mailboxes/save", data=box).headers["location"]
    page = c.get("/console/p/acme/routes").text
    assert "desk@acme.test" in page and "imap.acme.test" in page and "s3cret-imap-pass" not in page
    c.post("/console/p/acme/routes/delete", data={"csrf": token, "address": "desk@acme.test"})
    with svc.sessions() as session:
        assert session.scalar(select(Route).where(Route.address == "desk@acme.test")) is None
        assert session.scalar(select(Mailbox.name)) == "inbox"
        actions = set(session.scalars(select(OperatorAudit.action)).all())
    assert {"route_created", "mailbox_created", "route_deleted"} <= actions


def test_templates_preview_is_sandboxed_and_a_test_is_sent_to_the_operator(tmp_path: Path) -> None:
    from tests.sink import Sink

    with Sink() as sink:
        services = make_services(
            tmp_path,
            f"sqlite:///{tmp_path / 'm.db'}",
            smarthost=f"127.0.0.1:{sink.port}",
            smarthost_starttls="off",
        )
        seed(services)
        add_operator(services, "ops", PASSWORD, all_practices=True, email="ops@acme.test")
        c = client(services)
        login(c)
        for template in ("notification_full", "notification_minimal", "notice", "forward"):
            for locale in ("en", "fr"):
                assert (
                    c.get(f"/console/p/acme/templates?template={template}&locale={locale}").status_code == 200
                )
        preview = c.get("/console/p/acme/templates/preview?template=notification_full&locale=fr")
        assert (
            "sandbox" in preview.headers["content-security-policy"]
            and "script" not in preview.headers["content-security-policy"]
        )
        assert '<iframe class="preview" sandbox' in c.get("/console/p/acme/templates").text
        token = csrf(c, "/console/p/acme/templates")
        sent = c.post(
            "/console/p/acme/templates/test",
            data={"csrf": token, "template": "notification_full", "locale": "fr"},
        )
        assert "done=" in sent.headers["location"]
        assert sink.received and sink.received[-1].rcpts == ["ops@acme.test"]
        services.close()


def test_overview_dns_and_french(svc: Services) -> None:
    from mailbridge.domain import directory
    from mailbridge.domain.db import transaction
    from mailbridge.outbound import keys

    with transaction(svc.sessions) as session:  # what `mailbridge dkim genkey` then `dkim activate` do
        practice = directory.get_practice(session, "acme")
        keys.generate(session, svc.keyring, practice, selector="mb1")
        keys.activate(session, practice, "mb1")
    c = client(svc)
    login(c)
    dns = c.get("/console/p/acme/dns").text
    assert "mb1._domainkey.acme.test" in dns and "missing" in dns  # the static resolver publishes nothing
    assert "state-missing" in c.get("/console/p/acme/").text  # the last check, on the overview
    token = csrf(c, "/console/p/acme/")
    c.post("/console/locale", data={"csrf": token, "locale": "fr"})
    assert "Vue d&#39;ensemble" in c.get("/console/p/acme/").text
    assert "mb1" in dns and "active" in dns  # the key rotation table


def test_operator_commands(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from mailbridge.cli import main

    monkeypatch.setenv("MAILBRIDGE_DATA_DIR", str(tmp_path))
    assert main(["demo"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"Console: http://127\.0\.0\.1:8080/console/ +sign in as demo / \S{20}", out)
    assert main(["operator", "add", "alex", "--practice", "demo", "--content"]) == 0
    assert re.search(r"password: \S{20}", capsys.readouterr().out)
    monkeypatch.setattr("sys.stdin", io.StringIO("a-password-from-stdin\n"))
    assert main(["operator", "add", "sam", "--all-practices", "--password-stdin"]) == 0
    assert "password:" not in capsys.readouterr().out
    assert main(["operator", "add", "sam", "--all-practices"]) == 2  # exists
    assert main(["operator", "add", "nobody"]) == 2  # no scope
    assert main(["operator", "list"]) == 0
    listing = capsys.readouterr().out
    assert "alex\tdemo\tcontent" in listing and "sam\tall practices\tno content" in listing
    assert main(["operator", "reset-password", "sam"]) == 0
    assert main(["operator", "remove", "sam"]) == 0
    assert main(["operator", "remove", "sam"]) == 2


def test_demo_mail_fills_every_page(tmp_path: Path) -> None:
    from mailbridge.demo import load_demo, load_demo_mail

    services = make_services(tmp_path, f"sqlite:///{tmp_path / 'm.db'}")
    with transaction(services.sessions) as session:
        load_demo(session)
    assert sorted(load_demo_mail(services)) == [
        "auth_not_aligned",
        "posted",
        "recipient_unknown",  # a 5.1.1 DSN at the VERP address of a notification we sent
        "reply_user_mismatch",
        "unknown_sender",
    ]
    services.close()


# ---- the reason catalogue and the French texts ----------------------------------------------------

CALLS = {
    "Rejected": 1,
    "Deferred": 1,
    "Done": 1,
    "RecipientDecision": 2,
    "_deny": 1,
    "_allow": 1,
    "_quarantine": 1,
    "_refuse": 1,
    "Classification": 1,
}
CODE = re.compile(r"^[a-z][a-z0-9_]+$")


def emitted_codes() -> set[str]:
    """Every reason the code can record: the calls above, `reason = …` values, `"reason": …` entries,
    the prescan's reasons and the attachment verdicts."""
    codes: set[str] = set()
    for path in (ROOT / "mailbridge").rglob("*.py"):
        if path.name == "reasons.py":
            continue
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Call):
                name = (
                    node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
                )
                index = CALLS.get(name)
                if (
                    index is not None
                    and len(node.args) > index
                    and isinstance(node.args[index], ast.Constant)
                ):
                    codes.add(str(node.args[index].value))
                codes |= {
                    str(k.value.value)
                    for k in node.keywords
                    if k.arg == "reason" and isinstance(k.value, ast.Constant)
                }
            elif isinstance(node, ast.Assign) and any(
                getattr(t, "id", "") in ("reason", "PrescanReason") for t in node.targets
            ):
                compared = {
                    id(c) for n in ast.walk(node.value) if isinstance(n, ast.Compare) for c in ast.walk(n)
                }
                codes |= {
                    str(c.value)
                    for c in ast.walk(node.value)
                    if isinstance(c, ast.Constant) and isinstance(c.value, str) and id(c) not in compared
                }
            elif isinstance(node, ast.Dict):
                for key, value in zip(node.keys, node.values, strict=True):
                    if (
                        isinstance(key, ast.Constant)
                        and key.value == "reason"
                        and isinstance(value, ast.Constant)
                    ):
                        codes.add(str(value.value))
            elif isinstance(node, ast.ClassDef) and node.name == "Reason":
                codes |= {
                    str(c.value)
                    for c in ast.walk(node)
                    if isinstance(c, ast.Assign) and isinstance(c.value, ast.Constant)
                    for c in [c.value]
                }
    return {c for c in codes if isinstance(c, str) and CODE.match(c)}


def test_every_reason_the_code_records_is_explained() -> None:
    from mailbridge.domain.models import InboundState, OutboxState
    from mailbridge.ingress.dataread import DataOutcome
    from mailbridge.reasons import CATALOGUE

    codes = emitted_codes() | {s.value for s in OutboxState} | {"deferred", "held", "released", "discarded"}
    codes |= {o.value for o in DataOutcome if o.value != "ok"}  # the DATA reader's refusals (log rows)
    assert {
        "reply_user_mismatch",
        "auth_not_aligned",
        "mime_depth",
        "type_mismatch",
        "size_exceeded",
    } <= codes
    assert sorted(codes - set(CATALOGUE)) == []
    assert InboundState.posted.value in CATALOGUE
    for entry in CATALOGUE.values():
        assert all(entry.en) and all(entry.fr), entry.code


def test_docs_reasons_is_current() -> None:
    from mailbridge.reasons import markdown

    assert (ROOT / "docs" / "reasons.md").read_text() == markdown(), "run `make reasons`"


def test_every_console_text_has_its_french() -> None:
    from mailbridge.console.i18n import FR

    texts: set[str] = set()
    pattern = re.compile(r'_\(\s*"((?:[^"\\]|\\.)*)"\s*\)')
    for path in [
        *(ROOT / "mailbridge" / "templates" / "console").glob("*.html"),
        *(ROOT / "mailbridge" / "console").glob("*.py"),
    ]:
        texts |= set(pattern.findall(path.read_text()))
    texts |= {
        label
        for label in re.findall(
            r'\("/[a-z]*", "([^"]+)"\)',
            (ROOT / "mailbridge" / "templates" / "console" / "base.html").read_text(),
        )
    }
    assert sorted(t for t in texts if t not in FR) == []
