"""Bounces, complaints and suppressions (security issue 11 #1–4, issue 16): the attacks through the doors.

Every attack is performed as a stranger would: reports sent over SMTP with a real client to the live
ingress (postmaster@, a practice address, a reply address, a VERP address), smarthost refusals from
a real SMTP server on loopback, and the suppression API over HTTP. Each test passes because the
attack now fails: the client still gets notifications, ``email_bouncing`` stays false, nothing is
suppressed, nothing is posted.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import select, update

from mailbridge import replies
from mailbridge.domain import directory
from mailbridge.domain.db import transaction
from mailbridge.domain.models import (
    InboundLog,
    InboundState,
    Message,
    Outbox,
    OutboxKind,
    OutboxState,
    Suppression,
    utcnow,
)
from mailbridge.domain.suppressions import SuppressionPolicy
from mailbridge.housekeeping import purge_suppressions
from mailbridge.inbound.classify import BouncedRecipient, Classification
from mailbridge.inbound.envelope import Target
from mailbridge.observability import REGISTRY
from mailbridge.outbound.bounces import record_report
from mailbridge.policy.feedback import Arrival, Failure, judge_report, judge_smarthost, refine_status
from mailbridge.wiring import Services
from tests.mailhelpers import LiveServer, live_server, open_conversation, reply_address, send_raw
from tests.reports import (
    SES_COMPLAINT,
    arf,
    auto_reply,
    dsn,
    failed,
    jmrp,
    json_notice,
    person,
)
from tests.sink import Sink
from tests.test_outbound import drain, worker_for

BASE = "/api/v1/practices/acme"
ALICE = "alice@client.test"


@pytest.fixture
def mail(seeded: Services, api: Any) -> Iterator[LiveServer]:
    """The live ingress, with a practice address (route) as a third door besides replies and postmaster@."""
    assert api.put(f"{BASE}/routes/frontdesk@acme.test", json={"roles": ["front_office"]}).status_code == 201
    with transaction(seeded.sessions) as session:  # postmaster@ mail is forwarded here; reports never are
        practice = directory.get_practice(session, "acme")
        practice.settings = {**practice.settings, "operator_address": "it@acme.test"}
    with live_server(seeded) as server:
        yield server


def notify_alice(services: Services, subject: str = "Your next appointment") -> tuple[str, str, str]:
    """A notification really sent to Alice through a smarthost: (its VERP envelope sender, outbox id,
    conversation id)."""
    conversation = open_conversation(services, kind="company", company="bakery", subject=subject)
    with Sink() as sink:
        drain(worker_for(services, sink))
    with services.sessions() as session:
        row = session.scalars(
            select(Outbox).where(Outbox.conversation_id == conversation, Outbox.to_address == ALICE)
        ).one()
    verp = next(r.mail_from for r in sink.received if r.rcpts == [ALICE] and row.id in r.mail_from)
    return verp, row.id, conversation


def alice_notified(services: Services, api: Any, conversation: str) -> OutboxState:
    """Staff posts in the conversation: the state of the notification row written for Alice."""
    posted = api.post(
        f"{BASE}/conversations/{conversation}/messages",
        json={"author": "dr-smith", "body": "One more thing."},
    )
    assert posted.status_code == 201
    with services.sessions() as session:
        return session.scalars(
            select(Outbox.state).where(Outbox.message_id == posted.json()["id"], Outbox.to_address == ALICE)
        ).one()


def null_sender(server: LiveServer, rcpt: str, raw: bytes, mail_from: str = "") -> tuple[int, bytes]:
    return send_raw(server, raw, mail_from, rcpt)


def last_log(services: Services) -> InboundLog:
    with services.sessions() as session:
        return session.scalars(select(InboundLog).order_by(InboundLog.received_at.desc()).limit(1)).one()


def suppressions_of(api: Any) -> list[dict[str, Any]]:
    response = api.get(f"{BASE}/suppressions")
    assert response.status_code == 200
    items: list[dict[str, Any]] = response.json()["items"]
    return items


def metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def assert_untouched(services: Services, api: Any, conversation: str) -> None:
    """Alice is not suppressed, not bouncing, and still notified; nothing was posted by the report."""
    assert suppressions_of(api) == []
    assert api.get(f"{BASE}/users/alice").json()["email_bouncing"] is False
    assert alice_notified(services, api, conversation) == OutboxState.pending
    with services.sessions() as session:
        assert (
            session.scalars(
                select(InboundLog.posted_message_id).where(InboundLog.posted_message_id.is_not(None))
            ).all()
            == []
        )


# ---- issue 11 #1: forged reports at addresses anybody may write to ------------------------------------


FORGED = dsn("x", [failed(ALICE)])  # "To:" is not what routes mail: the envelope recipient is


def test_forged_dsn_at_open_doors_suppresses_nobody(seeded: Services, api: Any, mail: LiveServer) -> None:
    conversation = open_conversation(seeded, kind="company", company="bakery")
    doors = [
        "postmaster@reply.acme.test",
        "frontdesk@acme.test",
        reply_address(seeded, conversation, "alice"),
    ]
    for rcpt in doors:
        for mail_from in ("", "mallory@evil.test"):
            assert null_sender(mail, rcpt, FORGED, mail_from)[0] == 250
            row = last_log(seeded)
            assert (row.state, row.reason, row.rule) == (
                InboundState.bounce,
                "not_verp",
                "only_signed_verp_counts",
            ), (rcpt, mail_from)
            assert row.details["report"]["named"] == 1 and "alice" not in str(row.details)
    assert_untouched(seeded, api, conversation)
    with seeded.sessions() as session:  # never answered: no notice, no forward to the operator
        kinds = session.scalars(select(Outbox.kind)).all()
    assert OutboxKind.notice not in kinds and OutboxKind.forward not in kinds


def test_forged_or_invalid_verp_address_refused(seeded: Services, mail: LiveServer) -> None:
    verp, row_id, _ = notify_alice(seeded)
    forged_mac = verp.replace(verp.split("-")[-1].split("@")[0], "0" * 16)
    other_row = verp.replace(row_id, "f" * len(row_id))
    for rcpt in (forged_mac, other_row, "bounce+nothing@reply.acme.test"):
        with mail.client() as client:
            client.ehlo("mx.evil.test")
            client.mail("<>")
            assert client.rcpt(rcpt) == (550, replies.UNKNOWN_RECIPIENT.wire()[4:].encode())
    with seeded.sessions() as session:
        assert set(session.scalars(select(InboundLog.reason)).all()) == {"verp_invalid"}
        assert session.scalars(select(Suppression)).all() == []


# ---- genuine reports at the signed VERP address --------------------------------------------------------


def test_genuine_hard_bounce_suppresses_the_row_recipient_only_then_delete_resumes(
    seeded: Services, api: Any, mail: LiveServer, caplog: pytest.LogCaptureFixture
) -> None:
    verp, row_id, conversation = notify_alice(seeded)
    report = dsn(
        verp,
        [
            failed("dave@client.test"),  # a stranger named in the same report: never suppressed
            failed(ALICE, "5.1.1", "smtp; 550 5.1.1 <alice@client.test>: utilisateur inconnu é"),
        ],
    )
    caplog.set_level(logging.INFO, logger="mailbridge")
    assert null_sender(mail, verp, report)[0] == 250
    row = last_log(seeded)
    assert (row.state, row.reason, row.rule) == (
        InboundState.bounce,
        "recipient_unknown",
        "bad_address_is_hard",
    )
    assert row.details["report"]["effect"] == "hard"
    (entry,) = suppressions_of(api)
    assert entry["address"] == ALICE and entry["reason"] == "hard_bounce" and entry["active"] is True
    assert entry["status"] == "5.1.1" and "utilisateur inconnu é" in entry["diagnostic"]
    assert entry["count"] == 1 and entry["expires_at"] is None and entry["outbox"] == row_id
    assert entry["first_seen"] == entry["last_seen"]
    user = api.get(f"{BASE}/users/alice").json()
    assert user["email_bouncing"] is True and user["email_suppression"] == "hard_bounce"
    with seeded.sessions() as session:
        assert "bounced: 5.1.1" in (session.get_one(Outbox, row_id).last_answer or "")
    # the log lines name the address redacted, never in full
    logged = " ".join(str(vars(r)) for r in caplog.records if r.name.startswith("mailbridge"))
    assert ALICE not in logged and "'to': 'a***@client.test'" in logged

    # Alice's next notification is not sent, and the outbox says so, with the address and the reason
    assert alice_notified(seeded, api, conversation) == OutboxState.suppressed
    suppressed = [o for o in api.get(f"{BASE}/outbound", params={"state": "suppressed"}).json()["items"]]
    assert [o["to"] for o in suppressed] == [ALICE]
    assert suppressed[0]["last_answer"].startswith("suppressed: hard_bounce 5.1.1 (since ")

    # the practice fixes it: DELETE, and notifications go again
    assert api.delete(f"{BASE}/suppressions/Alice@Client.test").status_code == 204
    assert suppressions_of(api) == []
    assert api.get(f"{BASE}/users/alice").json()["email_bouncing"] is False
    assert alice_notified(seeded, api, conversation) == OutboxState.pending
    missing = api.delete(f"{BASE}/suppressions/{ALICE}")
    assert missing.status_code == 404 and missing.headers["content-type"].startswith(
        "application/problem+json"
    )
    assert missing.json()["code"] == "suppression_not_found"


def test_dsn_at_verp_naming_only_a_stranger_counts_for_nobody(
    seeded: Services, api: Any, mail: LiveServer
) -> None:
    verp, _, conversation = notify_alice(seeded)
    assert null_sender(mail, verp, dsn(verp, [failed("dave@client.test"), failed("ceo@bank.test")]))[0] == 250
    row = last_log(seeded)
    assert (row.state, row.reason) == (InboundState.bounce, "other_recipient")
    assert_untouched(seeded, api, conversation)


NEVER_SUPPRESS = [
    ({"Action": "delayed", "Status": "4.4.7"}, InboundState.bounce, "dsn_delayed"),
    ({"Action": "failed", "Status": "5.7.1"}, InboundState.bounce, "sender_policy_refusal"),
    ({"Action": "failed", "Status": "5.7.26"}, InboundState.bounce, "sender_policy_refusal"),  # DMARC
    ({"Action": "failed", "Status": "5.1.8"}, InboundState.bounce, "sender_address_refused"),
    ({"Action": "failed", "Status": "5.3.4"}, InboundState.bounce, "message_refused"),
    ({"Action": "delivered", "Status": "2.0.0"}, InboundState.dropped_auto_reply, "auto_reply_dropped"),
    ({"Action": "relayed", "Status": "2.0.0"}, InboundState.dropped_auto_reply, "auto_reply_dropped"),
]


def test_reports_at_verp_that_never_suppress(seeded: Services, api: Any, mail: LiveServer) -> None:
    verp, row_id, conversation = notify_alice(seeded)
    for block, state, reason in NEVER_SUPPRESS:
        refusals_before = metric("mailbridge_delivery_refusals_total", reason=reason)
        report = dsn(
            verp, [{"Final-Recipient": f"rfc822; {ALICE}", **block, "Diagnostic-Code": "smtp; 554 no"}]
        )
        assert null_sender(mail, verp, report)[0] == 250
        row = last_log(seeded)
        assert (row.state, row.reason) == (state, reason), block
        if reason.startswith("sender_") or reason == "message_refused":  # ours: loud, and on the row
            assert metric("mailbridge_delivery_refusals_total", reason=reason) == refusals_before + 1
            with seeded.sessions() as session:
                assert f"[ignore: {reason}]" in (session.get_one(Outbox, row_id).last_answer or "")
    assert_untouched(seeded, api, conversation)


def test_out_of_office_and_people_at_verp_are_not_bounces(
    seeded: Services, api: Any, mail: LiveServer
) -> None:
    """Issue 11 #4: RFC 3834 answers go to the Return-Path; so do challenge-responses and some people."""
    verp, _, conversation = notify_alice(seeded)
    assert null_sender(mail, verp, auto_reply(verp))[0] == 250
    row = last_log(seeded)
    assert (row.state, row.reason) == (InboundState.dropped_auto_reply, "auto_reply_dropped")
    challenge = person(verp, "Please confirm your message", "To get past my filter, reply to this message.")
    assert null_sender(mail, verp, challenge, ALICE)[0] == 250
    row = last_log(seeded)
    assert (row.state, row.reason, row.rule) == (InboundState.ignored, "not_a_report", "only_reports_count")
    # a bare null-sender message with no failed recipient is bounce processing, never a suppression
    assert null_sender(mail, verp, person(verp, "Re: Your next appointment", "Thanks!"))[0] == 250
    row = last_log(seeded)
    assert (row.state, row.reason) == (InboundState.bounce, "no_failed_recipient")
    assert_untouched(seeded, api, conversation)


# ---- issue 16: complaints --------------------------------------------------------------------------------


def test_complaint_at_verp_suppresses_the_row_recipient(seeded: Services, api: Any, mail: LiveServer) -> None:
    verp, row_id, conversation = notify_alice(seeded)
    reports = {
        "arf": arf(verp, complainer="dave@client.test"),  # whoever it names, the row's recipient counts
        "arf_mixed": arf(verp, multipart_report=False),
        "jmrp": jmrp(verp),
        "ses_json": json_notice(verp, SES_COMPLAINT, sns=True),
    }
    for name, raw in reports.items():
        assert null_sender(mail, verp, raw, "fbl@isp.example")[0] == 250
        row = last_log(seeded)
        assert (row.state, row.reason) == (InboundState.complaint, "complaint"), name
        (entry,) = suppressions_of(api)
        assert (entry["address"], entry["reason"], entry["active"]) == (ALICE, "complaint", True), name
        user = api.get(f"{BASE}/users/alice").json()
        assert user["email_bouncing"] is False and user["email_suppression"] == "complaint"
        assert alice_notified(seeded, api, conversation) == OutboxState.suppressed
        with seeded.sessions() as session:
            assert (session.get_one(Outbox, row_id).last_answer or "").startswith("complaint: ")
        assert api.delete(f"{BASE}/suppressions/{ALICE}").status_code == 204
    with seeded.sessions() as session:
        assert session.scalars(select(Message).where(Message.body.contains("abuse"))).all() == []


def test_complaints_elsewhere_are_logged_never_posted_never_suppress(
    seeded: Services, api: Any, mail: LiveServer
) -> None:
    conversation = open_conversation(seeded, kind="company", company="bakery")
    for rcpt in (
        "abuse@reply.acme.test",
        "frontdesk@acme.test",
        reply_address(seeded, conversation, "alice"),
    ):
        for raw in (arf(rcpt), json_notice(rcpt, SES_COMPLAINT, sender=ALICE)):
            assert null_sender(mail, rcpt, raw, ALICE)[0] == 250  # even "from" the named client
            row = last_log(seeded)
            assert (row.state, row.reason) == (InboundState.complaint, "not_verp"), rcpt
    assert_untouched(seeded, api, conversation)


# ---- issue 11 #2: smarthost answers ----------------------------------------------------------------------


SMARTHOST_OURS = [
    (
        "rcpt",
        "554 5.7.1 <bounce@reply.acme.test>: Sender address rejected: Access denied",
        "sender_policy_refusal",
    ),
    ("mail", "553 5.7.1 Sender address rejected: not owned by user", "sender_refused"),
    ("data", "554 5.7.1 Message rejected as spam", "sender_policy_refusal"),
    ("data", "552 5.3.4 Message size exceeds fixed limit", "message_refused"),
    ("rcpt", "550 5.0.0 relay configuration error", "unclassified_refusal"),
]


def test_smarthost_refusal_of_ours_never_suppresses_the_client(
    seeded: Services, api: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="mailbridge")
    conversation = ""
    for where, answer, reason in SMARTHOST_OURS:
        conversation = open_conversation(seeded, kind="company", company="bakery", subject=answer[:20])
        before = metric("mailbridge_delivery_refusals_total", reason=reason)
        caplog.clear()
        with Sink() as sink:
            if where == "rcpt":
                sink.handler.rcpt_answer = answer
            elif where == "mail":
                sink.handler.mail_answer = answer
            else:
                sink.handler.answers = [answer]
            drain(worker_for(seeded, sink))
        with seeded.sessions() as session:
            row = session.scalars(select(Outbox).where(Outbox.conversation_id == conversation)).one()
        assert row.state == OutboxState.failed and answer[:30] in (row.last_answer or ""), answer
        assert metric("mailbridge_delivery_refusals_total", reason=reason) == before + 1, answer
        warnings = [r for r in caplog.records if r.getMessage() == "delivery_refused_not_the_recipient"]
        assert [(w.levelname, getattr(w, "to", ""), getattr(w, "reason", "")) for w in warnings] == [
            ("WARNING", "a***@client.test", reason)
        ], answer
    # the smarthost is fixed: the client's next notification goes out
    assert suppressions_of(api) == [] and api.get(f"{BASE}/users/alice").json()["email_bouncing"] is False
    assert alice_notified(seeded, api, conversation) == OutboxState.pending
    with Sink() as sink:
        drain(worker_for(seeded, sink))
        assert [r.rcpts for r in sink.received] == [[ALICE]]


def test_smarthost_temporary_never_suppresses_and_full_mailbox_counts_soft(
    seeded: Services, api: Any
) -> None:
    first = open_conversation(seeded, kind="company", company="bakery")
    with Sink() as sink:
        sink.handler.rcpt_answer = "450 4.2.1 Mailbox temporarily unavailable"
        drain(worker_for(seeded, sink), rounds=1)
    with seeded.sessions() as session:
        assert session.scalars(select(Outbox.state)).all() == [OutboxState.pending]
    assert suppressions_of(api) == []
    with transaction(seeded.sessions) as session:  # give up on it: only the second one is tried
        session.execute(
            update(Outbox).where(Outbox.conversation_id == first).values(state=OutboxState.expired)
        )
    open_conversation(seeded, kind="company", company="bakery", subject="Second")
    with Sink() as sink:
        sink.handler.rcpt_answer = "552 5.2.2 Mailbox full"
        drain(worker_for(seeded, sink))
    (entry,) = suppressions_of(api)
    assert (entry["reason"], entry["active"], entry["count"], entry["status"]) == (
        "soft_bounce",
        False,
        1,
        "5.2.2",
    )
    assert entry["expires_at"] is not None


# ---- issue 11 #3: soft expiry, re-sync, metrics, filters, OpenAPI ----------------------------------------


def test_soft_bounces_suppress_after_the_limit_then_expire(
    seeded: Services, api: Any, mail: LiveServer
) -> None:
    conversation = ""
    for n in range(3):
        verp, _, conversation = notify_alice(seeded, subject=f"Note {n}")
        assert (
            null_sender(mail, verp, dsn(verp, [failed(ALICE, "5.2.2", "smtp; 552 5.2.2 mailbox full")]))[0]
            == 250
        )
        assert last_log(seeded).reason == "mailbox_full"
        (entry,) = suppressions_of(api)
        assert (entry["reason"], entry["count"], entry["active"]) == ("soft_bounce", n + 1, n == 2)
    assert api.get(f"{BASE}/users/alice").json()["email_bouncing"] is True
    assert alice_notified(seeded, api, conversation) == OutboxState.suppressed
    assert 'mailbridge_suppressions{reason="soft_bounce"} 1.0' in api.get("/metrics").text
    with transaction(seeded.sessions) as session:  # seven days pass
        session.execute(update(Suppression).values(expires_at=utcnow() - timedelta(seconds=1)))
    assert suppressions_of(api) == []  # expired: not listed, not suppressing, not bouncing
    assert api.get(f"{BASE}/users/alice").json()["email_bouncing"] is False
    assert alice_notified(seeded, api, conversation) == OutboxState.pending
    assert purge_suppressions(seeded) == 1
    with seeded.sessions() as session:
        assert session.scalars(select(Suppression)).all() == []


def test_suppressed_after_enqueue_is_not_sent_and_says_so(
    seeded: Services, api: Any, mail: LiveServer
) -> None:
    """A notification waiting in the outbox when the bounce arrives is held back by the worker too."""
    verp, _, conversation = notify_alice(seeded)
    assert alice_notified(seeded, api, conversation) == OutboxState.pending
    assert null_sender(mail, verp, dsn(verp, [failed(ALICE)]))[0] == 250
    with Sink() as sink:
        drain(worker_for(seeded, sink))
        assert sink.received == []
    with seeded.sessions() as session:
        states = session.scalars(select(Outbox.state).where(Outbox.to_address == ALICE)).all()
    assert sorted(states) == [OutboxState.sent, OutboxState.suppressed]


def test_new_primary_address_starts_clean(seeded: Services, api: Any, mail: LiveServer) -> None:
    verp, _, conversation = notify_alice(seeded)
    assert null_sender(mail, verp, dsn(verp, [failed(ALICE)]))[0] == 250
    assert api.get(f"{BASE}/users/alice").json()["email_bouncing"] is True
    user = {"email": "alice.new@client.test", "name": "Alice Martin", "kind": "client"}
    assert api.put(f"{BASE}/users/alice", json=user).json()["email_bouncing"] is False
    assert [s["address"] for s in suppressions_of(api)] == [ALICE]  # the old address's stays with it
    posted = api.post(
        f"{BASE}/conversations/{conversation}/messages",
        json={"author": "dr-smith", "body": "A new address, then?"},
    )
    with seeded.sessions() as session:
        row = session.scalars(select(Outbox).where(Outbox.message_id == posted.json()["id"])).one()
    assert (row.to_address, row.state) == ("alice.new@client.test", OutboxState.pending)


def test_suppressions_api_filters_and_tenancy(seeded: Services, api: Any, mail: LiveServer) -> None:
    verp, _, _ = notify_alice(seeded)
    assert null_sender(mail, verp, dsn(verp, [failed(ALICE)]))[0] == 250
    assert [
        s["address"]
        for s in api.get(f"{BASE}/suppressions", params={"reason": "hard_bounce"}).json()["items"]
    ] == [ALICE]
    assert api.get(f"{BASE}/suppressions", params={"reason": "complaint"}).json()["items"] == []
    assert len(api.get(f"{BASE}/suppressions", params={"address": "ALICE@client.test"}).json()["items"]) == 1
    assert api.get(f"{BASE}/suppressions", params={"address": "bob@client.test"}).json()["items"] == []
    bad = api.get(f"{BASE}/suppressions", params={"reason": "whatever"})
    assert bad.status_code == 422 and bad.json()["code"] == "invalid_request"
    assert api.get(f"{BASE}/suppressions", params={"limit": 0}).status_code == 422
    other = api.get("/api/v1/practices/nobody/suppressions")
    assert other.status_code == 404 and other.json()["code"] == "practice_not_found"
    assert api.delete(f"/api/v1/practices/nobody/suppressions/{ALICE}").status_code == 404
    assert len(suppressions_of(api)) == 1


def test_openapi_carries_the_suppression_routes(api: Any) -> None:
    paths = api.get("/openapi.json").json()["paths"]
    assert "get" in paths["/api/v1/practices/{practice}/suppressions"]
    assert "delete" in paths["/api/v1/practices/{practice}/suppressions/{address}"]


# ---- the rules, as tables -----------------------------------------------------------------------------


def _dsn_failure(
    address: str, action: str | None, status: str | None, diagnostic: str = "", permanent: bool = True
) -> Failure:
    return Failure("dsn", (address,), action, status, diagnostic or None, permanent)


VERP_ROW = Arrival("bounce", "bounce", ALICE, "notification")


@pytest.mark.parametrize(
    ("arrival", "failures", "effect", "reason"),
    [
        (Arrival("operator", "bounce"), [_dsn_failure(ALICE, "failed", "5.1.1")], "ignore", "not_verp"),
        (Arrival("route", "complaint"), [], "ignore", "not_verp"),
        (Arrival("reply", "bounce"), [_dsn_failure(ALICE, "failed", "5.1.1")], "ignore", "not_verp"),
        (
            Arrival("bounce", "bounce"),
            [_dsn_failure(ALICE, "failed", "5.1.1")],
            "ignore",
            "unknown_outbox_row",
        ),
        (
            Arrival("bounce", "bounce", "it@acme.test", "forward"),
            [_dsn_failure("it@acme.test", "failed", "5.1.1")],
            "ignore",
            "operator_forward",
        ),
        (Arrival("bounce", "complaint", ALICE, "notification"), [], "complaint", "complaint"),
        (Arrival("bounce", "auto_reply", ALICE, "notification"), [], "ignore", "not_a_report"),
        (VERP_ROW, [], "ignore", "no_failed_recipient"),
        (VERP_ROW, [_dsn_failure("x@y.test", "failed", "5.1.1")], "ignore", "other_recipient"),
        (VERP_ROW, [_dsn_failure("ALICE@client.test", "failed", "5.1.1")], "hard", "recipient_unknown"),
        (VERP_ROW, [_dsn_failure(ALICE, "failed", "5.1.10")], "hard", "recipient_unknown"),
        (VERP_ROW, [_dsn_failure(ALICE, "failed", "5.2.1")], "hard", "mailbox_disabled"),
        (VERP_ROW, [_dsn_failure(ALICE, "failed", "5.2.2")], "soft", "mailbox_full"),
        (VERP_ROW, [_dsn_failure(ALICE, "failed", "4.4.7")], "soft", "transient_failure"),
        (VERP_ROW, [_dsn_failure(ALICE, "delayed", "4.4.7")], "ignore", "dsn_delayed"),
        (VERP_ROW, [_dsn_failure(ALICE, "delivered", "2.0.0")], "ignore", "dsn_success"),
        (VERP_ROW, [_dsn_failure(ALICE, "failed", "5.7.1")], "ignore", "sender_policy_refusal"),
        (VERP_ROW, [_dsn_failure(ALICE, "failed", "4.7.0")], "ignore", "sender_policy_refusal"),
        (VERP_ROW, [_dsn_failure(ALICE, "failed", "5.1.7")], "ignore", "sender_address_refused"),
        (VERP_ROW, [_dsn_failure(ALICE, "failed", "5.6.0")], "ignore", "message_refused"),
        (VERP_ROW, [_dsn_failure(ALICE, "failed", "5.5.4")], "ignore", "protocol_error"),
        (
            VERP_ROW,
            [_dsn_failure(ALICE, "failed", "5.0.0", "smtp; 550 5.1.1 gone")],
            "hard",
            "recipient_unknown",
        ),
        (
            VERP_ROW,
            [_dsn_failure(ALICE, "failed", "5.0.0", "smtp; 550 User unknown")],
            "hard",
            "recipient_unknown",
        ),
        (
            VERP_ROW,
            [_dsn_failure(ALICE, "failed", "5.0.0", "Sender address rejected: user unknown")],
            "soft",
            "other_failure",
        ),
        (VERP_ROW, [_dsn_failure(ALICE, "failed", "5.4.4")], "soft", "other_failure"),
        (VERP_ROW, [_dsn_failure(ALICE, "failed", None)], "soft", "other_failure"),
        (VERP_ROW, [_dsn_failure(ALICE, None, None, permanent=False)], "ignore", "dsn_delayed"),
        (
            VERP_ROW,
            [_dsn_failure(ALICE, "delayed", "4.4.7"), _dsn_failure(ALICE, "failed", "5.1.1")],
            "hard",
            "recipient_unknown",
        ),
    ],
)
def test_report_rules(arrival: Arrival, failures: list[Failure], effect: str, reason: str) -> None:
    decision = judge_report(arrival, failures)
    assert (decision.effect, decision.verdict.reason) == (effect, reason)


@pytest.mark.parametrize(
    ("stage", "answer", "effect", "reason"),
    [
        ("rcpt", "550 5.1.1 <a@b>: Recipient address rejected: User unknown", "hard", "recipient_unknown"),
        ("rcpt", "550 User unknown", "hard", "recipient_unknown"),
        ("rcpt", "550 5.2.1 mailbox disabled", "hard", "mailbox_disabled"),
        ("rcpt", "552 5.2.2 mailbox full", "soft", "mailbox_full"),
        ("rcpt", "554 5.7.1 Sender address rejected", "ignore", "sender_policy_refusal"),
        ("mail", "550 5.1.1 unknown", "ignore", "sender_refused"),
        ("rcpt", "550 5.4.4 unable to route", "ignore", "unclassified_refusal"),
        ("rcpt", "550 relaying denied", "ignore", "unclassified_refusal"),
        ("rcpt", "451 4.3.0 later", "ignore", "temporary_failure"),
        ("connect", "connection: OSError", "ignore", "temporary_failure"),
    ],
)
def test_smarthost_rules(stage: str, answer: str, effect: str, reason: str) -> None:
    decision = judge_smarthost(stage, answer, ALICE)
    assert (decision.effect, decision.verdict.reason) == (effect, reason)


def test_refine_status() -> None:
    assert refine_status("5.0.0", "smtp; 550 5.1.1 gone") == "5.1.1"
    assert refine_status("5.0.0", "smtp; 450 4.2.1 busy") == "5.0.0"  # another class: not ours to mix
    assert refine_status(None, "550-5.1.1 The email account does not exist") == "5.1.1"
    assert refine_status("5.7.1", "550 5.1.1 x") == "5.7.1"


def test_report_for_another_practices_row_counts_for_nobody(seeded: Services) -> None:
    """The VERP signature covers the row id only: the row must also belong to the practice whose
    reply domain the report came to, or nothing is counted."""
    verp, row_id, _ = notify_alice(seeded)
    report = Classification("bounce", "dsn", (BouncedRecipient(ALICE, True, "5.1.1", None, "failed"),))
    with transaction(seeded.sessions) as session:
        practice_id = session.get_one(Outbox, row_id).practice_id
        elsewhere = Target("bounce", practice_id + 1, verp.replace("acme", "other"), outbox_id=row_id)
        outcome = record_report(session, elsewhere, report, SuppressionPolicy())
        assert (outcome.rule, outcome.reason) == ("row_must_exist", "unknown_outbox_row")
        same = Target("bounce", practice_id, verp, outbox_id=row_id)
        assert record_report(session, same, report, SuppressionPolicy()).reason == "recipient_unknown"
    with seeded.sessions() as session:
        assert [s.address for s in session.scalars(select(Suppression))] == [ALICE]
