"""Notifications end to end: fan-out, rendering, confidentiality, threading, DKIM, the durable outbox, bounces."""

from __future__ import annotations

import asyncio
import email
import email.policy
import threading
from datetime import timedelta
from typing import Any

import dkim
import pytest
from sqlalchemy import select, update

from mailbridge import replies
from mailbridge.domain.db import transaction
from mailbridge.domain.models import InboundLog, Outbox, OutboxState, Suppression, utcnow
from mailbridge.outbound import keys
from mailbridge.outbound.worker import Worker
from tests.conftest import make_services, seed
from tests.mailhelpers import live_server, open_conversation, reply_message, send
from tests.sink import Sink

BASE = "/api/v1/practices/acme"


def worker_for(services: Any, sink: Sink | None, **settings: Any) -> Worker:
    overrides = {"smarthost": f"127.0.0.1:{sink.port}", "smarthost_starttls": "off"} if sink else {}
    overrides |= settings
    services.settings = services.settings.model_copy(update=overrides)
    return Worker.from_services(services)


def drain(worker: Worker, rounds: int = 3) -> None:
    async def go() -> None:
        for _ in range(rounds):
            if await worker.run_once() == 0:
                break
        await worker.transport.close()

    asyncio.run(go())


def parse(data: bytes) -> email.message.EmailMessage:
    msg = email.message_from_bytes(data, policy=email.policy.default)
    assert isinstance(msg, email.message.EmailMessage)
    return msg


def plain_text(msg: email.message.EmailMessage) -> str:
    body = msg.get_body(("plain",))
    assert body is not None, "no text/plain part"
    return str(body.get_content())


def enable_dkim(services: Any) -> dict[bytes, bytes]:
    """A practice key made and activated as `mailbridge dkim genkey` and `dkim activate` do; its
    public half in a static DNS table."""
    from mailbridge.domain import directory

    with transaction(services.sessions) as session:
        p = directory.get_practice(session, "acme")
        (row,) = keys.generate(session, services.keyring, p, selector="mb1")
        keys.activate(session, p, "mb1")
        return {b"mb1._domainkey.acme.test.": row.public_txt.encode()}


def test_staff_post_notifies_client_dkim_threads_and_reply_comes_back(seeded: Any, api: Any) -> None:
    dns = enable_dkim(seeded)
    conv = api.post(
        f"{BASE}/conversations",
        json={
            "kind": "company",
            "company": "bakery",
            "subject": "Quarterly VAT return",
            "author": "dr-smith",
            "participants": ["alice"],
            "body": "Your VAT return is ready for review.",
        },
    ).json()
    with Sink() as sink:
        worker = worker_for(seeded, sink)
        drain(worker)
        api.post(
            f"{BASE}/conversations/{conv['id']}/messages",
            json={"author": "dr-smith", "body": "Any questions so far?"},
        )
        drain(worker)
        to_alice = [r for r in sink.received if r.rcpts == ["alice@client.test"]]
        assert len(to_alice) == 2
        first, second = (parse(r.data) for r in to_alice)
        for r in to_alice:
            assert dkim.verify(r.data, dnsfunc=lambda name, timeout=5: dns.get(name, b""))
            assert r.mail_from.startswith("bounce+") and r.mail_from.endswith("@reply.acme.test")
        assert str(first["From"]) == "Dr Alex Smith via Acme Counselling <notify@acme.test>"
        assert first["Subject"] == "Quarterly VAT return" and second["Subject"] == "Re: Quarterly VAT return"
        assert second["In-Reply-To"] == first["Message-ID"] and second["References"] == first["Message-ID"]
        assert first["Auto-Submitted"] == "auto-generated" and first["X-Auto-Response-Suppress"] == "All"
        assert first["Thread-Index"] and first["Thread-Topic"] == "Quarterly VAT return"
        assert "Your VAT return is ready" in plain_text(first)  # company: full mode
        reply_to = str(second["Reply-To"])
        assert reply_to == str(first["Reply-To"]) and reply_to.startswith("reply+")
        # the client answers the notification over SMTP: it posts, and the staff member is notified
        with live_server(seeded) as ingress:
            answer = reply_message(
                "alice@client.test",
                reply_to,
                "No questions, thank you!",
                headers={"In-Reply-To": second["Message-ID"]},
            )
            assert send(ingress, answer, "alice@client.test", reply_to)[0] == 250
        drain(worker)
        to_staff = [parse(r.data) for r in sink.received if r.rcpts == ["dr.smith@acme.test"]]
        assert len(to_staff) == 1 and "No questions, thank you!" in plain_text(to_staff[0])
        assert str(to_staff[0]["From"]).startswith("Alice Martin via Acme Counselling")


def test_minimal_mode_leaks_nothing(seeded: Any, api: Any) -> None:
    import io

    secret_subject, secret_body = "Anxiety follow-up Zorblax", "Your panic attacks Quixotic plan"
    files = {
        "attachments": (
            "therapy-notes-Flibber.pdf",
            io.BytesIO(b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<<>>\nendobj\ntrailer\n<<>>\n%%EOF\n"),
            "application/pdf",
        )
    }
    payload = {
        "kind": "private",
        "company": None,
        "subject": secret_subject,
        "author": "dr-smith",
        "participants": ["alice"],
        "body": secret_body,
    }
    import json

    created = api.post(f"{BASE}/conversations", data={"payload": json.dumps(payload)}, files=files)
    assert created.status_code == 201, created.text
    assert created.json()["messages"][0]["attachments"][0]["filename"] == "therapy-notes-Flibber.pdf"
    with Sink() as sink:
        drain(worker_for(seeded, sink))
    (delivered,) = sink.received
    raw = delivered.data
    for leak in (b"Zorblax", b"Quixotic", b"Flibber", b"Anxiety", b"Dr Alex Smith", b"Alice"):
        assert leak not in raw, leak
    msg = parse(raw)
    assert msg["Subject"] == "You have a new secure message"
    # the practice's name is in From (issue 12 item 17; minimal_shows_practice: false hides it,
    # see tests/test_notifications.py), and the one-click unsubscribe link names nothing
    assert str(msg["From"]) == "Acme Counselling <notify@acme.test>"
    assert msg["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"


def test_french_minimal_subject(seeded: Any, api: Any) -> None:
    api.post(
        f"{BASE}/conversations",
        json={
            "kind": "private",
            "company": None,
            "subject": "RDV",
            "author": "dr-smith",
            "participants": ["bob"],
            "body": "Bonjour Bob, mardi 10 h ?",
        },
    )
    with Sink() as sink:
        drain(worker_for(seeded, sink))
    assert parse(sink.received[0].data)["Subject"] == "Vous avez un nouveau message sécurisé"


def test_display_name_injection_yields_one_recipient(seeded: Any, api: Any) -> None:
    api.put(
        f"{BASE}/users/dr-smith",
        json={
            "email": "dr.smith@acme.test",
            "name": 'Evil "Doc"\r\nBcc: x@evil.test',
            "kind": "staff",
            "role": "provider",
        },
    )
    api.post(
        f"{BASE}/conversations",
        json={
            "kind": "company",
            "company": "bakery",
            "subject": "Hi\r\nBcc: y@evil.test",
            "author": "dr-smith",
            "participants": ["alice"],
            "body": "Hello there Alice",
        },
    )
    with Sink() as sink:
        drain(worker_for(seeded, sink))
    (delivered,) = sink.received
    assert delivered.rcpts == ["alice@client.test"]
    msg = parse(delivered.data)
    assert msg["Bcc"] is None and len(msg.get_all("To") or []) == 1
    assert msg["From"].addresses[0].addr_spec == "notify@acme.test"


def test_smarthost_451_three_times_then_250(seeded: Any) -> None:
    open_conversation(seeded, kind="company", company="bakery", participants=("alice",))
    with Sink() as sink:
        sink.handler.answers = ["451 4.3.0 try later"] * 3
        worker = worker_for(seeded, sink, outbox_retry_schedule=[60, 300, 1800])
        ids, delays = [], []
        for _ in range(4):
            drain(worker, rounds=1)
            with transaction(seeded.sessions) as session:
                row = session.scalars(select(Outbox)).one()
                ids.append(row.message_id_header)
                if row.state == OutboxState.pending:
                    delays.append(
                        round(
                            (
                                row.next_attempt_at.replace(tzinfo=None) - utcnow().replace(tzinfo=None)
                            ).total_seconds()
                        )
                    )
                    row.next_attempt_at = utcnow() - timedelta(seconds=1)  # time passes
        assert len(sink.received) == 1
        with seeded.sessions() as session:
            row = session.scalars(select(Outbox)).one()
        assert row.state == OutboxState.sent and row.attempts == 4
        assert len(set(ids)) == 1  # same Message-ID on every attempt
        assert delays[0] < delays[1] < delays[2]  # backoff grows
        assert parse(sink.received[0].data)["Message-ID"] == ids[0]


def test_smarthost_550_fails_without_retry_and_suppresses(seeded: Any) -> None:
    open_conversation(seeded, kind="company", company="bakery", participants=("alice",))
    with Sink() as sink:
        sink.handler.rcpt_answer = "550 5.1.1 no such user"
        worker = worker_for(seeded, sink)
        drain(worker)
        drain(worker)
    with seeded.sessions() as session:
        row = session.scalars(select(Outbox)).one()
        assert row.state == OutboxState.failed and row.attempts == 1 and "5.1.1" in (row.last_answer or "")
        suppressed = session.scalars(select(Suppression).where(Suppression.active.is_(True))).one()
        assert (suppressed.address, suppressed.reason, suppressed.status) == (
            "alice@client.test",
            "hard_bounce",
            "5.1.1",
        )
    open_conversation(seeded, kind="company", company="bakery", participants=("alice",), subject="Second")
    with seeded.sessions() as session:  # a suppressed address gets a row that says so, never a send
        second = session.scalars(select(Outbox).where(Outbox.id != row.id)).one()
        assert second.state == OutboxState.suppressed and second.to_address == "alice@client.test"
        assert second.last_answer is not None and second.last_answer.startswith(
            "suppressed: hard_bounce 5.1.1"
        )


def test_no_starttls_means_nothing_sent_in_cleartext(seeded: Any) -> None:
    open_conversation(seeded, kind="company", company="bakery", participants=("alice",))
    with Sink() as sink:
        drain(worker_for(seeded, sink, smarthost_starttls="required"))
        assert sink.received == []
    with seeded.sessions() as session:
        row = session.scalars(select(Outbox)).one()
    assert row.state == OutboxState.pending and "STARTTLS" in (row.last_answer or "")


def test_starttls_to_smarthost_with_trusted_ca(seeded: Any, tmp_path: Any) -> None:
    import trustme

    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    server_ctx = __import__("ssl").create_default_context(__import__("ssl").Purpose.CLIENT_AUTH)
    cert.configure_cert(server_ctx)
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    open_conversation(seeded, kind="company", company="bakery", participants=("alice",))
    with Sink(tls=server_ctx) as sink:
        drain(worker_for(seeded, sink, smarthost_starttls="required", smarthost_ca_file=ca_file))
        assert len(sink.received) == 1


def test_worker_killed_mid_batch_loses_nothing(seeded: Any) -> None:
    for i in range(5):
        open_conversation(seeded, kind="company", company="bakery", participants=("alice",), subject=f"S{i}")
    with Sink() as sink:
        worker = worker_for(seeded, sink, outbox_lease_seconds=5)
        claimed = worker.claim()  # a worker claims, then dies before sending anything
        assert len(claimed) == 5
        assert worker.claim() == []  # leased: nobody else takes them meanwhile
        with transaction(seeded.sessions) as session:  # the lease runs out
            session.execute(update(Outbox).values(lease_until=utcnow() - timedelta(seconds=1)))
        drain(worker)
        assert sorted(parse(r.data)["Subject"] for r in sink.received) == [f"S{i}" for i in range(5)]


def test_bounce_to_verp_address_suppresses(seeded: Any) -> None:
    open_conversation(seeded, kind="company", company="bakery", participants=("alice",))
    with Sink() as sink:
        drain(worker_for(seeded, sink))
        verp = sink.received[0].mail_from
    dsn = (
        f"From: MAILER-DAEMON@mx.client.test\r\nTo: {verp}\r\nSubject: Undelivered Mail Returned to Sender\r\n"
        "MIME-Version: 1.0\r\nContent-Type: multipart/report; report-type=delivery-status; boundary=b\r\n\r\n"
        "--b\r\nContent-Type: text/plain\r\n\r\nMailbox does not exist.\r\n"
        "--b\r\nContent-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; mx.client.test\r\n\r\n"
        "Final-Recipient: rfc822; alice@client.test\r\nAction: failed\r\nStatus: 5.1.1\r\n"
        "Diagnostic-Code: smtp; 550 5.1.1 user unknown\r\n\r\n--b--\r\n"
    )
    with live_server(seeded) as ingress, ingress.client() as client:
        client.ehlo("mx.client.test")
        client.mail("<>")
        assert client.rcpt(verp)[0] == 250
        assert client.data(dsn.encode())[0] == 250
        assert client.noop()[0] == 250  # connection still fine
    with seeded.sessions() as session:
        suppressed = session.scalars(select(Suppression)).one()
        assert (suppressed.address, suppressed.reason, suppressed.active) == (
            "alice@client.test",
            "hard_bounce",
            True,
        )
        assert "bounced" in (session.scalars(select(Outbox.last_answer)).one() or "")


def test_forged_verp_address_refused(seeded: Any) -> None:
    with live_server(seeded) as ingress, ingress.client() as client:
        client.ehlo("mx.evil.test")
        client.mail("<>")
        answer = client.rcpt("bounce+abc-0000000000000000@reply.acme.test")
    assert answer == (replies.UNKNOWN_RECIPIENT.code, replies.UNKNOWN_RECIPIENT.wire()[4:].encode())
    with seeded.sessions() as session:
        reasons = session.scalars(select(InboundLog.reason)).all()
    assert reasons == ["verp_invalid"]


@pytest.mark.postgres
def test_two_workers_on_postgres_no_duplicates(tmp_path: Any, request: pytest.FixtureRequest) -> None:
    from tests.conftest import _truncate_pg, pg_url_for

    schema = request.getfixturevalue("pg_schema")
    _truncate_pg(schema)
    services = make_services(tmp_path, pg_url_for(schema))
    seed(services)
    conv = open_conversation(services, kind="company", company="bakery", participants=("alice",))
    from mailbridge.domain import conversations as convs
    from mailbridge.domain import directory

    with transaction(services.sessions) as session:  # 1,000 notifications waiting
        p = directory.get_practice(session, "acme")
        c = convs.get_conversation(session, p, conv)
        author = directory.get_user(session, p, "dr-smith")
        for i in range(999):
            convs.post_message(session, p, c, author, body=f"message number {i}")

    with Sink() as sink:  # a real SMTP peer: each worker keeps its own connection to it
        services.settings = services.settings.model_copy(
            update={"smarthost": f"127.0.0.1:{sink.port}", "smarthost_starttls": "off"}
        )

        def run() -> None:
            w = Worker.from_services(services)
            w.batch = 25

            async def loop() -> None:
                while await w.run_once():
                    pass
                await w.transport.close()

            asyncio.run(loop())

        threads = [threading.Thread(target=run) for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        sent = [parse(r.data)["Message-ID"] for r in sink.received]
    assert len(sent) == 1000 and len(set(sent)) == 1000
    with services.sessions() as session:
        states = session.scalars(select(Outbox.state)).all()
    assert set(states) == {OutboxState.sent}
    services.close()


def test_file_transport_default(sqlite_services: Any) -> None:
    seed(sqlite_services)
    open_conversation(sqlite_services, kind="company", company="bakery", participants=("alice",))
    drain(worker_for(sqlite_services, None))
    files = list((sqlite_services.settings.data_dir / "outbox").glob("*.eml"))
    assert len(files) == 1 and b"X-Envelope-To: <alice@client.test>" in files[0].read_bytes()


def test_rejection_notice_delivered_localized_and_discreet(seeded: Any, api: Any) -> None:
    conv = open_conversation(seeded, participants=("alice", "bob"), subject="Group session Zorblax")
    with live_server(seeded) as ingress:
        from tests.mailhelpers import reply_address as address_for

        address = address_for(seeded, conv, "bob")
        refused = reply_message("bob@client.test", address, "Merci pour la séance de groupe.")
        assert send(ingress, refused, "bob@client.test", address)[0] == 550
    with Sink() as sink:
        drain(worker_for(seeded, sink))
    to_bob = [parse(r.data) for r in sink.received if r.rcpts == ["bob@client.test"]]
    assert sorted(m["Subject"] for m in to_bob) == [
        "Votre e-mail n'a pas pu être ajouté à la conversation",  # the notice, once
        "Vous avez un nouveau message sécurisé",  # the conversation's own (minimal) notification
    ]
    msg = next(m for m in to_bob if m["Subject"].startswith("Votre"))
    text = plain_text(msg)
    assert "nouvelle conversation" in text
    assert all(b"Zorblax" not in r.data for r in sink.received if r.rcpts == ["bob@client.test"])
    assert msg["Auto-Submitted"] == "auto-generated"
    outbound = api.get(f"{BASE}/outbound?state=sent").json()["items"]
    assert {o["kind"] for o in outbound} >= {"notice"}
    inbound = api.get(f"{BASE}/inbound?state=rejected&reason=group_conversation").json()["items"]
    assert (
        len(inbound) == 1
        and inbound[0]["rule"] == "group_privacy"
        and inbound[0]["smtp_reply"].startswith("550 5.7.1")
    )
    assert api.get(f"{BASE}/inbound?state=posted").json()["items"] == []


def test_notifications_coalesce_when_the_practice_asks(seeded: Any, api: Any) -> None:
    api.put(
        BASE,
        json={
            "name": "Acme Counselling",
            "reply_domain": "reply.acme.test",
            "notify_from": "notify@acme.test",
            "settings": {"min_body_chars": 10, "notify_delay_seconds": 300},
        },
    )
    conv = api.post(
        f"{BASE}/conversations",
        json={
            "kind": "company",
            "company": "bakery",
            "subject": "Docs",
            "author": "dr-smith",
            "participants": ["alice"],
            "body": "First message of three.",
        },
    ).json()
    for body in ("Second message of three.", "Third message of three."):
        api.post(f"{BASE}/conversations/{conv['id']}/messages", json={"author": "dr-smith", "body": body})
    with seeded.sessions() as session:
        rows = session.scalars(select(Outbox)).all()
    assert len(rows) == 1 and rows[0].payload["coalesced"] == 3
    with transaction(seeded.sessions) as session:
        session.execute(update(Outbox).values(next_attempt_at=utcnow()))
    with Sink() as sink:
        drain(worker_for(seeded, sink))
    (delivered,) = sink.received
    body = plain_text(parse(delivered.data))
    assert "Third message of three." in body and "3 new messages" in body


def test_rows_past_their_lifetime_expire(seeded: Any, caplog: pytest.LogCaptureFixture) -> None:
    open_conversation(seeded, kind="company", company="bakery", participants=("alice",))
    with transaction(seeded.sessions) as session:  # created three days ago, never delivered
        session.execute(update(Outbox).values(created_at=utcnow() - timedelta(days=3)))
    with Sink() as sink:
        sink.handler.answers = ["451 4.3.0 try later"]
        drain(worker_for(seeded, sink), rounds=1)
    with seeded.sessions() as session:
        row = session.scalars(select(Outbox)).one()
    assert row.state == OutboxState.expired
    assert "outbox_expired" in caplog.text


def test_smarthost_auth(seeded: Any) -> None:
    """AUTH to the smarthost (over STARTTLS in production; plain here against a loopback test server)."""
    from aiosmtpd.smtp import AuthResult

    seen: list[tuple[str, str]] = []

    def authenticator(server: Any, session: Any, envelope: Any, mechanism: str, data: Any) -> AuthResult:
        seen.append((data.login.decode(), data.password.decode()))
        return AuthResult(success=data.password == b"s3cret")

    open_conversation(seeded, kind="company", company="bakery", participants=("alice",))
    with Sink(auth=authenticator) as sink:
        drain(worker_for(seeded, sink, smarthost_username="mailbridge", smarthost_password="s3cret"))
        assert len(sink.received) == 1
    assert seen == [("mailbridge", "s3cret")]
