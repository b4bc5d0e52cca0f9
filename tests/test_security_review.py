"""The second security review (after issues 11, 12, 14 and 16 were merged): each finding performed
through a public door (the console over HTTP, the HTTP API, SMTP to a live server) and shown to fail.
docs/security.md lists them with their fixes."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from mailbridge.api.app import create_app
from mailbridge.domain import directory
from mailbridge.domain.db import transaction
from mailbridge.domain.models import (
    InboundLog,
    InboundState,
    Message,
    QuarantineItem,
    Route,
)
from mailbridge.wiring import Services
from tests.conftest import API_KEY, make_services, seed
from tests.console_live import add_operator
from tests.test_bounces import mail  # noqa: F401 (the live ingress fixture, with a route and postmaster@)

PASSWORD = "console-test-password"
SECRET_SUBJECT = "Biopsy result positive"
SECRET_FILE = "hiv-test-results.pdf"


@pytest.fixture
def svc(tmp_path: Path) -> Iterator[Services]:
    """Two practices (acme, beta), an operator of beta only, one of acme without content rights."""
    services = make_services(tmp_path, f"sqlite:///{tmp_path / 'mailbridge.db'}")
    seed(services)
    seed(services, "beta")
    add_operator(services, "beta-ops", PASSWORD, practices=["beta"], content=True)
    add_operator(services, "meta", PASSWORD, practices=["acme"])
    add_operator(services, "reader", PASSWORD, practices=["acme"], content=True, email="reader@acme.test")
    yield services
    services.close()


def console(services: Services, name: str, **kwargs: Any) -> TestClient:
    c = TestClient(create_app(services), base_url="http://testserver", follow_redirects=False, **kwargs)
    form = c.get("/console/login")
    token = re.search(r'name="login_token" value="([^"]+)"', form.text)
    assert token is not None
    answer = c.post(
        "/console/login",
        data={"name": name, "password": PASSWORD, "login_token": token.group(1), "next": "/console/"},
    )
    assert answer.status_code == 303, answer.text
    return c


def csrf(c: TestClient, path: str) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', c.get(path).text)
    assert found is not None
    return found.group(1)


def held(
    services: Services,
    practice: str,
    rcpt: str,
    raw: bytes,
    *,
    sender: str = "alice@client.test",
    state: InboundState = InboundState.quarantined,
) -> tuple[str, str]:
    """An inbound row with its raw file and, when held, its quarantine item: (inbound id, item id)."""
    raw_dir = services.settings.data_dir / "inbound"
    raw_dir.mkdir(parents=True, exist_ok=True)
    with transaction(services.sessions) as session:
        p = directory.get_practice(session, practice)
        row = InboundLog(
            practice_id=p.id,
            door="smtp",
            mail_from=sender,
            rcpt=rcpt,
            from_header=sender,
            state=state,
            reason="unknown_sender",
            details={},
        )
        session.add(row)
        session.flush()
        path = raw_dir / f"{row.id}.eml"
        path.write_bytes(raw)
        row.raw_path = str(path)
        item_id = ""
        if state == InboundState.quarantined:
            item = QuarantineItem(
                practice_id=p.id,
                inbound_id=row.id,
                route_address=rcpt,
                reason="unknown_sender",
                from_address=sender,
                subject="",
            )
            session.add(item)
            session.flush()
            item_id = item.id
        return row.id, item_id


# ---- a practice's operator releasing mail a squatted route caught on another's domain -------------------


def test_a_console_operator_cannot_release_mail_held_on_a_domain_its_practice_does_not_own(
    svc: Services,
) -> None:
    """Issue 11 #6 was closed in the API's release route only: the console called the domain's release
    directly, so beta's operator could post acme's client mail, caught by a route beta had put on
    acme's domain before ownership was enforced, into a beta conversation (single and bulk)."""
    with transaction(svc.sessions) as session:
        beta = directory.get_practice(session, "beta")
        session.add(Route(practice_id=beta.id, address="ceo@acme.test", staff=["frontdesk"], roles=[]))
    raw = (
        b"From: Zoe <zoe@elsewhere.test>\r\nTo: ceo@acme.test\r\nSubject: My file\r\n"
        b"Message-ID: <m1@elsewhere.test>\r\n\r\nPlease find my medical history below, it is long.\r\n"
    )
    zoe = "zoe@elsewhere.test"
    _inbound, item = held(svc, "beta", "ceo@acme.test", raw, sender=zoe)
    _inbound2, item2 = held(svc, "beta", "ceo@acme.test", raw.replace(b"<m1@", b"<m2@"), sender=zoe)
    c = console(svc, "beta-ops")
    token = csrf(c, f"/console/p/beta/quarantine/{item}")
    answer = c.post(
        f"/console/p/beta/quarantine/{item}/release",
        data={"csrf": token, "mode": "contact", "contact_name": "Alice"},
    )
    assert answer.status_code == 303 and "domain_not_owned" in answer.headers["location"]
    bulk = c.post(
        "/console/p/beta/quarantine", data={"csrf": token, "action": "release", "ids": [item, item2]}
    )
    assert bulk.status_code == 303 and "release%3A0%3A2" in bulk.headers["location"]
    with svc.sessions() as session:
        assert session.scalar(select(Message.id)) is None  # nothing posted anywhere
        states = {i.id: i.state for i in session.scalars(select(QuarantineItem))}
        assert states == {item: "held", item2: "held"}
    # discarding stays possible (the mail is not beta's to keep)
    assert c.post(f"/console/p/beta/quarantine/{item}/discard", data={"csrf": token}).status_code == 303
    with svc.sessions() as session:
        assert session.get_one(QuarantineItem, item).state == "discarded"


# ---- content rights: what mail says never reaches an operator without them ----------------------------


HOSTILE_HEADERS = (
    "From: Alice Martin <alice@client.test>\r\n"
    "To: frontdesk@acme.test\r\n"
    f"Subject: {SECRET_SUBJECT}\r\n"
    f"Thread-Topic: {SECRET_SUBJECT}\r\n"
    f"X-Original-Subject: {SECRET_SUBJECT}\r\n"
    f"Keywords: {SECRET_SUBJECT}\r\n"
    "Message-ID: <m3@client.test>\r\n"
    "MIME-Version: 1.0\r\n"
)


def _with_attachment() -> bytes:
    return (
        HOSTILE_HEADERS
        + 'Content-Type: multipart/mixed; boundary="b"\r\n\r\n'
        + "--b\r\nContent-Type: text/plain\r\n\r\nHere are my results, as you asked.\r\n"
        + f'--b\r\nContent-Type: application/pdf; name="{SECRET_FILE}"\r\n'
        + f'Content-Disposition: attachment; filename="{SECRET_FILE}"\r\n'
        + "Content-Transfer-Encoding: base64\r\n\r\nJVBERi0xLjQKJcfsj6IK\r\n--b--\r\n"
    ).encode()


def test_an_operator_without_content_rights_sees_no_subject_copy_and_no_file_name(svc: Services) -> None:
    """The Subject header was masked, but its copies (Outlook's Thread-Topic, X-Original-Subject,
    Keywords …) and attachment file names were shown to operators without the content right."""
    inbound, item = held(svc, "acme", "frontdesk@acme.test", _with_attachment())
    single = (
        HOSTILE_HEADERS
        + f'Content-Type: application/pdf; name="{SECRET_FILE}"\r\n'
        + "Content-Transfer-Encoding: base64\r\n\r\nJVBERi0xLjQKJcfsj6IK\r\n"
    ).encode()
    refused, _ = held(svc, "acme", "frontdesk@acme.test", single, state=InboundState.rejected)
    with transaction(svc.sessions) as session:
        row = session.get_one(InboundLog, refused)
        row.details = {
            "attachments": [
                {"filename": SECRET_FILE, "sniffed_type": "application/pdf", "accepted": False, "reason": "x"}
            ]
        }
    meta = console(svc, "meta")
    pages = [
        f"/console/p/acme/inbound/{inbound}",
        f"/console/p/acme/inbound/{refused}",
        f"/console/p/acme/quarantine/{item}",
        "/console/p/acme/quarantine",
        "/console/p/acme/inbound",
        "/console/p/acme/trace?address=alice%40client.test",
    ]
    for path in pages:
        page = meta.get(path)
        assert page.status_code == 200, path
        assert SECRET_SUBJECT not in page.text, path
        assert "hiv-test-results" not in page.text, path
    detail = meta.get(f"/console/p/acme/inbound/{inbound}").text
    assert "Thread-Topic" in detail and "Message-ID" in detail and "&lt;m3@client.test&gt;" in detail
    assert ".pdf" in meta.get(f"/console/p/acme/inbound/{refused}").text  # the kind of file, not its name
    # an operator with the right reads all of it
    reader = console(svc, "reader")
    assert SECRET_SUBJECT in reader.get(f"/console/p/acme/inbound/{inbound}").text
    assert SECRET_FILE in reader.get(f"/console/p/acme/quarantine/{item}").text
    assert SECRET_FILE in reader.get(f"/console/p/acme/inbound/{refused}").text


def platform_api(services: Services) -> TestClient:
    return TestClient(create_app(services), headers={"Authorization": f"Bearer {API_KEY}"})


# ---- un-suppressing an address is audited, whichever door asks -----------------------------------------


def _suppress(services: Services, address: str) -> None:
    from mailbridge.domain import suppressions
    from mailbridge.domain.models import SuppressionReason

    with transaction(services.sessions) as session:
        p = directory.get_practice(session, "acme")
        suppressions.record(
            session,
            p.id,
            address,
            SuppressionReason.hard_bounce,
            status="5.1.1",
            diagnostic="user unknown",
            outbox_id=None,
            policy=suppressions.SuppressionPolicy(),
        )


def test_removing_a_suppression_leaves_an_audit_row_naming_who(svc: Services) -> None:
    """DELETE …/suppressions/{address} let notifications go again and left no trace of who asked."""
    from mailbridge.access import apikeys
    from mailbridge.domain.models import AuditEvent

    _suppress(svc, "alice@client.test")
    _suppress(svc, "bob@client.test")
    _suppress(svc, "dave@client.test")
    with transaction(svc.sessions) as session:
        _row, key = apikeys.create(session, directory.get_practice(session, "acme"), "app")
    with platform_api(svc) as platform:
        assert platform.delete("/api/v1/practices/acme/suppressions/Alice@Client.test").status_code == 204
    with TestClient(create_app(svc), headers={"Authorization": f"Bearer {key}"}) as own:
        assert own.delete("/api/v1/practices/acme/suppressions/bob@client.test").status_code == 204
    c = console(svc, "meta")
    token = csrf(c, "/console/p/acme/deliveries")
    done = c.post(
        "/console/p/acme/suppressions/unsuppress", data={"csrf": token, "address": "dave@client.test"}
    )
    assert done.status_code == 303 and "unsuppressed" in done.headers["location"]
    with svc.sessions() as session:
        rows = session.scalars(select(AuditEvent).where(AuditEvent.action == "suppression_removed")).all()
        by_address = {(r.details or {})["address"]: r for r in rows}
    assert set(by_address) == {"alice@client.test", "bob@client.test", "dave@client.test"}
    assert by_address["alice@client.test"].actor == "api"
    assert str(by_address["bob@client.test"].actor).startswith("api-key:")
    assert by_address["dave@client.test"].actor == "operator:meta"
    assert (by_address["alice@client.test"].details or {})["reason"] == "hard_bounce"


# ---- /readyz without a key names no practice --------------------------------------------------------


def test_readyz_without_the_key_names_no_practice_and_with_it_says_which(svc: Services) -> None:
    """The DKIM check listed, to anyone, the slugs of the practices a node could not sign for and
    the reasons (selectors, the keyring's error): the platform's tenant list, without a key."""
    from mailbridge.domain.models import DkimAlgorithm, DkimKeyRow, DkimKeyState

    with transaction(svc.sessions) as session:
        p = directory.get_practice(session, "beta")
        wrong = svc.keyring.seal(session, p.id, b"not a key", "another purpose")
        session.add(
            DkimKeyRow(
                practice_id=p.id,
                selector="mbsecret1",
                domain="beta.test",
                algorithm=DkimAlgorithm.rsa,
                private_key=wrong,
                public_txt="v=DKIM1; k=rsa; p=",
                state=DkimKeyState.active,
            )
        )
    with TestClient(create_app(svc)) as anyone:
        ready = anyone.get("/readyz")
        assert ready.status_code == 503
        assert "beta" not in ready.text and "mbsecret1" not in ready.text
        assert ready.json()["checks"]["dkim"] == {"ok": False, "count": 1}
        wrong_key = anyone.get("/readyz", headers={"Authorization": "Bearer not-the-key"})
        assert "beta" not in wrong_key.text
        practice_key = anyone.get("/readyz", headers={"Authorization": "Bearer mbk_x"})
        assert "beta" not in practice_key.text
    with platform_api(svc) as platform:
        shown = platform.get("/readyz").json()["checks"]["dkim"]
        assert list(shown["cannot_sign"]) == ["beta"] and "mbsecret1" in shown["cannot_sign"]["beta"]


# ---- console sign-in throttling: bursts, IPv6 neighbours, parallel guesses -----------------------------


def _sign_in(c: TestClient, name: str, password: str) -> Any:
    c.cookies.set("mb_console_login", "t" * 32, path="/console")
    return c.post(
        "/console/login",
        data={"name": name, "password": password, "login_token": "t" * 32, "next": "/console/"},
    )


def test_a_v6_client_cannot_walk_its_64_to_escape_the_per_address_count(svc: Services) -> None:
    svc.settings.console_login_max_failures_per_address = 3
    answers = []
    for n in range(1, 5):  # four addresses of one /64, four account names: one client
        c = TestClient(create_app(svc), follow_redirects=False, client=(f"2001:db8:7:1::{n}", 5000))
        answers.append(_sign_in(c, f"guess{n}", "wrong-password-1").status_code)
    assert answers == [401, 401, 429, 429]
    other = TestClient(create_app(svc), follow_redirects=False, client=("2001:db8:7:2::1", 5000))
    assert _sign_in(other, "guess9", "wrong-password-1").status_code == 401  # another site: its own count


def test_parallel_guesses_get_no_more_tries_than_the_limit(
    svc: Services, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Failures were counted after the (slow) password check: every request already in flight had
    its guess checked, however far past the limit (a correct one would have signed in). Counted
    before the check, a burst of 8 gets exactly the limit's 3 passwords checked."""
    import threading
    import time
    from concurrent.futures import ThreadPoolExecutor

    from mailbridge.console import accounts

    checked: list[str] = []
    lock = threading.Lock()
    real_verify = accounts.verify

    def slow_verify(operator: Any, password: str) -> bool:
        with lock:
            checked.append(password)
        time.sleep(0.3)  # a loaded machine's argon2: the window the burst fits in
        return real_verify(operator, password)

    monkeypatch.setattr(accounts, "verify", slow_verify)
    svc.settings.console_login_max_failures = 3
    with TestClient(create_app(svc), follow_redirects=False) as c:
        c.cookies.set("mb_console_login", "t" * 32, path="/console")

        def guess(n: int) -> int:
            answer = c.post(
                "/console/login",
                data={"name": "meta", "password": f"guess-number-{n}", "login_token": "t" * 32},
            )
            return int(answer.status_code)

        with ThreadPoolExecutor(max_workers=8) as pool:
            answers = list(pool.map(guess, range(8)))
    assert len(checked) == 3, checked
    assert sorted(answers) == [401, 401] + [429] * 6, answers


def test_sign_in_answers_429_at_once_when_every_password_slot_is_busy(svc: Services) -> None:
    """At most VERIFY_SLOTS argon2 checks (64 MiB each) run at once; a sign-in beyond waits briefly,
    then is refused without computing a hash and without counting against anyone."""
    from mailbridge.console import auth
    from mailbridge.domain.models import LoginThrottle

    taken = [auth._verifying.acquire(timeout=5) for _ in range(auth.VERIFY_SLOTS)]
    try:
        assert all(taken)
        answer = _sign_in(TestClient(create_app(svc), follow_redirects=False), "meta", PASSWORD)
        assert answer.status_code == 429 and answer.headers["retry-after"] == "1"
    finally:
        for _ in taken:
            auth._verifying.release()
    with svc.sessions() as session:
        assert session.scalars(select(LoginThrottle)).all() == []
    assert console(svc, "meta").get("/console/p/acme/").status_code == 200


# ---- test sends: to the operator only, and a few an hour ---------------------------------------------


def test_test_sends_are_limited_per_operator_and_hour(svc: Services) -> None:
    """ "Send a test notification to me" had no limit: a session (or a stolen one) could make the
    practice's signed domain send without end."""
    c = console(svc, "reader")
    token = csrf(c, "/console/p/acme/templates")
    outbox = svc.settings.data_dir / "outbox"
    answers = [
        c.post("/console/p/acme/templates/test", data={"csrf": token}).headers["location"] for _ in range(11)
    ]
    assert all("Test+sent+to+reader%40acme.test" in a for a in answers[:10]), answers[0]
    assert "At+most+10+test+sends+an+hour" in answers[10]
    sent = list(outbox.glob("*.eml"))
    assert len(sent) == 10
    assert all(b"\r\nTo: reader@acme.test\r\n" in p.read_bytes() for p in sent)


# ---- a VERP address replayed: late reports, and one notification reported on many times ---------------


def test_a_replayed_verp_address_suppresses_nobody_late_and_counts_once(
    seeded: Services,
    api: Any,
    mail: Any,  # noqa: F811 (the fixture imported above)
) -> None:
    """A stranger holding one notification's headers (forwarded "as attachment") could, years later,
    send a forged 5.1.1 report to its signed VERP address and silence its recipient for good; or send
    the same soft report three times and suppress them. Reports now count only within a week of the
    notification (a month for a complaint), and once per notification."""
    from datetime import timedelta

    from mailbridge.domain.models import Outbox, Suppression, utcnow
    from tests.reports import arf, dsn, failed
    from tests.test_bounces import ALICE, last_log, notify_alice, null_sender, suppressions_of

    verp, row_id, _ = notify_alice(seeded)
    with transaction(seeded.sessions) as session:
        session.get_one(Outbox, row_id).sent_at = utcnow() - timedelta(days=8)
    assert null_sender(mail, verp, dsn(verp, [failed(ALICE, "5.1.1")]))[0] == 250
    assert last_log(seeded).reason == "report_too_late"
    assert null_sender(mail, verp, arf(verp))[0] == 250  # a complaint within its month counts
    assert suppressions_of(api)[0]["reason"] == "complaint"
    assert api.delete("/api/v1/practices/acme/suppressions/" + ALICE).status_code == 204
    with transaction(seeded.sessions) as session:
        session.get_one(Outbox, row_id).sent_at = utcnow() - timedelta(days=31)
    assert null_sender(mail, verp, arf(verp))[0] == 250
    assert last_log(seeded).reason == "report_too_late"
    assert suppressions_of(api) == []

    fresh, _, _ = notify_alice(seeded, subject="Another")
    for _ in range(3):
        report = dsn(fresh, [failed(ALICE, "5.2.2", "smtp; 552 5.2.2 mailbox full")])
        assert null_sender(mail, fresh, report)[0] == 250
    (entry,) = suppressions_of(api)
    assert (entry["reason"], entry["count"], entry["active"]) == ("soft_bounce", 1, False)
    assert null_sender(mail, fresh, dsn(fresh, [failed(ALICE, "5.1.1")]))[0] == 250  # stronger: counts
    with seeded.sessions() as session:
        row = session.scalars(select(Suppression)).one()
        assert (row.reason.value, row.active) == ("hard_bounce", True)


# ---- discarded mail is kept nowhere, in time ---------------------------------------------------------


def test_what_a_discarded_item_held_of_its_mail_goes_after_the_retention_period(svc: Services) -> None:
    """Discarding removed the raw copy, but the item's subject, sender, preview of the text and file
    names stayed for ever, readable through GET …/quarantine?state=discarded."""
    from datetime import timedelta

    from mailbridge.domain.models import utcnow
    from mailbridge.housekeeping import purge_discarded

    raw = HOSTILE_HEADERS.encode() + b"Content-Type: text/plain\r\n\r\nMy biopsy came back.\r\n"
    _inbound, item = held(svc, "acme", "frontdesk@acme.test", raw, sender="zoe@elsewhere.test")
    with transaction(svc.sessions) as session:
        row = session.get_one(QuarantineItem, item)
        row.subject = SECRET_SUBJECT
        row.summary = {"preview": "My biopsy came back.", "attachments": [{"filename": SECRET_FILE}]}
    with platform_api(svc) as client:
        url = "/api/v1/practices/acme/quarantine"
        assert client.post(f"{url}/{item}/discard?as=frontdesk").status_code == 204
        (shown,) = client.get(f"{url}?state=discarded").json()["items"]
        assert shown["subject"] == SECRET_SUBJECT  # staff can look back at what was discarded, a while
        assert purge_discarded(svc) == 0
        with transaction(svc.sessions) as session:
            decided = session.get_one(QuarantineItem, item)
            decided.decided_at = utcnow() - timedelta(days=svc.settings.raw_retention_days + 1)
        assert purge_discarded(svc) == 1
        (shown,) = client.get(f"{url}?state=discarded").json()["items"]
        assert (shown["subject"], shown["from"], shown["preview"], shown["attachments"]) == ("", "", None, [])
        assert shown["decided_by"] == "staff:frontdesk"  # who discarded it, and when, stay
        assert SECRET_SUBJECT not in client.get(f"{url}/{item}").text
    assert purge_discarded(svc) == 0


# ---- a stranger's console requests never wait on (nor hold) the database's writer gate ------------------


def test_console_requests_without_a_live_session_never_take_the_writer_gate(svc: Services) -> None:
    """Every console request, even without a cookie, took the SQLite writer gate the mail pipeline's
    writes queue on: a flood of anonymous requests slowed mail intake. Now a request without a live
    session is answered from a read while the gate is held by someone else."""
    import threading

    from mailbridge.domain.db import writer_gate

    answers: list[int] = []
    c = TestClient(create_app(svc), follow_redirects=False)
    c.cookies.set("mb_console", "forged-session-token", path="/console")

    def anonymous() -> None:
        answers.append(c.get("/console/p/acme/").status_code)
        answers.append(TestClient(create_app(svc), follow_redirects=False).get("/console/").status_code)

    with writer_gate(svc.sessions):  # the pipeline is writing
        worker = threading.Thread(target=anonymous)
        worker.start()
        worker.join(timeout=20)
        finished = not worker.is_alive()
    worker.join()
    assert finished and answers == [303, 303]


# ---- docs/security.md names tests that exist ----------------------------------------------------------


def test_every_test_docs_security_names_exists() -> None:
    """Each finding's regression test is named in docs/security.md: a renamed or deleted test makes
    the document lie, so this fails instead. ``::name`` continues the file named before it."""
    root = Path(__file__).resolve().parent.parent
    text = (root / "docs" / "security.md").read_text()
    current = ""
    named: list[tuple[str, str]] = []
    for found in re.finditer(r"`(?:(test_\w+\.py))?::(test_\w+)`|`(test_\w+\.py)`", text):
        if found.group(3):
            continue
        current = found.group(1) or current or "test_security_review.py"
        named.append((current, found.group(2)))
    assert len(named) > 60
    missing = [
        f"{file}::{name}"
        for file, name in named
        if not re.search(rf"^(?:async )?def {name}\(", (root / "tests" / file).read_text(), re.M)
    ]
    assert missing == []


def test_logout_locale_and_mailbox_deletion_need_the_csrf_token_too(svc: Services) -> None:
    """The forms test_console.py checks, plus the three it did not: a page on another site must not
    sign an operator out, switch their language or delete a mailbox."""
    from mailbridge.domain.models import Mailbox, Operator

    with transaction(svc.sessions) as session:
        p = directory.get_practice(session, "acme")
        session.add(Mailbox(practice_id=p.id, name="inbox", host="imap.acme.test", username="u", last_uid=0))
    c = console(svc, "meta")
    for path, data in (
        ("/console/logout", {}),
        ("/console/locale", {"locale": "fr"}),
        ("/console/p/acme/mailboxes/delete", {"name": "inbox"}),
    ):
        for token in (None, "forged"):
            form = data | ({"csrf": token} if token else {})
            assert c.post(path, data=form).status_code == 403, (path, token)
    assert c.get("/console/p/acme/").status_code == 200  # still signed in
    with svc.sessions() as session:
        assert session.scalar(select(Operator.locale).where(Operator.name == "meta")) == "en"
        assert session.scalar(select(Mailbox.name)) == "inbox"
