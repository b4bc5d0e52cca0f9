"""Delivery reports, complaints and notices as MTAs, ISPs and sending services write them.

Written for these tests from the specifications' behaviour (RFC 3464 DSN, RFC 6522 multipart/report,
RFC 5965 ARF, RFC 3834 auto-replies, Microsoft JMRP, the Amazon SES / SendGrid / Postmark event
documentation), never copied from a corpus. ``OWN_REPORTS`` is the project's own corpus: each
message with the kind the classifier must give it.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

CRLF = "\r\n"


def _join(lines: Sequence[str]) -> bytes:
    return CRLF.join(lines).encode("utf-8")


def original(to: str = "alice@client.test", verp: str = "bounce+x-0@reply.acme.test") -> list[str]:
    """The copy of our notification a report returns (RFC 3464 §2.1, RFC 5965 §2 third part)."""
    return [
        f"Return-Path: <{verp}>",
        "From: Dr Alex Smith via Acme Counselling <notify@acme.test>",
        f"To: {to}",
        "Subject: Your next appointment",
        "Message-ID: <n1@acme.test>",
        "Auto-Submitted: auto-generated",
        "",
        "Dr Alex Smith wrote a new message.",
    ]


def dsn(
    rcpt: str,
    blocks: Sequence[dict[str, str]],
    *,
    sender: str = "MAILER-DAEMON@mx.client.test",
    subject: str = "Undelivered Mail Returned to Sender",
    text: str = "I'm sorry to have to inform you that your message could not be delivered.",
) -> bytes:
    """An RFC 3464 report: one per-recipient block per dict (Final-Recipient, Action, Status, …)."""
    lines = [
        f"From: Mail Delivery System <{sender}>",
        f"To: {rcpt}",
        f"Subject: {subject}",
        "Auto-Submitted: auto-replied",
        "MIME-Version: 1.0",
        'Content-Type: multipart/report; report-type=delivery-status; boundary="DSN"',
        "",
        "--DSN",
        "Content-Type: text/plain; charset=utf-8",
        "",
        text,
        "--DSN",
        "Content-Type: message/delivery-status",
        "",
        "Reporting-MTA: dns; mx.client.test",
        "Arrival-Date: Sat, 21 Nov 2026 10:00:00 +0000",
    ]
    for block in blocks:
        lines.append("")
        lines += [f"{name}: {value}" for name, value in block.items()]
    lines += ["", "--DSN", "Content-Type: text/rfc822-headers", "", *original()[:6], "", "--DSN--", ""]
    return _join(lines)


def failed(
    address: str, status: str = "5.1.1", diagnostic: str | None = None, **extra: str
) -> dict[str, str]:
    block = {"Final-Recipient": f"rfc822; {address}", "Action": "failed", "Status": status}
    block["Diagnostic-Code"] = diagnostic or f"smtp; 550 {status} <{address}>: Recipient address rejected"
    return {**block, **extra}


def arf(rcpt: str, *, complainer: str = "alice@client.test", multipart_report: bool = True) -> bytes:
    """RFC 5965 §2: human part, message/feedback-report, the returned message. Without multipart/report
    (as some ISPs send it), the same parts come in a multipart/mixed."""
    ctype = (
        'multipart/report; report-type=feedback-report; boundary="ARF"'
        if multipart_report
        else 'multipart/mixed; boundary="ARF"'
    )
    return _join(
        [
            "From: Feedback Loop <fbl@isp.example>",
            f"To: {rcpt}",
            "Subject: Abuse report",
            "MIME-Version: 1.0",
            f"Content-Type: {ctype}",
            "",
            "--ARF",
            "Content-Type: text/plain; charset=us-ascii",
            "",
            "This is an email abuse report for an email message received from IP 192.0.2.1.",
            "--ARF",
            "Content-Type: message/feedback-report",
            "",
            "Feedback-Type: abuse",
            "User-Agent: ExampleFBL/1.0",
            "Version: 1",
            "Original-Mail-From: <bounce+x-0@reply.acme.test>",
            f"Original-Rcpt-To: <{complainer}>",
            "Arrival-Date: Sat, 21 Nov 2026 10:00:00 +0000",
            "Source-IP: 192.0.2.1",
            "",
            "--ARF",
            "Content-Type: message/rfc822",
            "",
            *original(complainer),
            "--ARF--",
            "",
        ]
    )


def arf_as_text(rcpt: str) -> bytes:
    """The ARF fields as a text/plain part of a multipart/mixed (no feedback-report type anywhere)."""
    return _join(
        [
            "From: staff@fbl.isp.example",
            f"To: {rcpt}",
            "Subject: complaint about message from 192.0.2.1",
            "MIME-Version: 1.0",
            'Content-Type: multipart/mixed; boundary="M"',
            "",
            "--M",
            "Content-Type: text/plain",
            "",
            "Feedback-Type: abuse",
            "User-Agent: ISP-FBL/2.1",
            "Version: 0.1",
            "Arrival-Date: 21 Nov 2026 10:00:00 -0000",
            "",
            "--M",
            "Content-Type: message/rfc822",
            "",
            *original(),
            "--M--",
            "",
        ]
    )


def jmrp(rcpt: str) -> bytes:
    """Microsoft's JMRP: the complained-of message returned, the complainer in X-HmXmrOriginalRecipient."""
    copy = original()
    copy.insert(0, "X-HmXmrOriginalRecipient: <alice@client.test>")
    return _join(
        [
            "From: staff@hotmail.com",
            f"To: {rcpt}",
            "Subject: complaint about message from 192.0.2.1",
            "MIME-Version: 1.0",
            'Content-Type: multipart/mixed; boundary="J"',
            "",
            "--J",
            "Content-Type: message/rfc822",
            "Content-Disposition: inline",
            "",
            *copy,
            "--J--",
            "",
        ]
    )


def json_notice(
    rcpt: str, notice: object, *, sns: bool = False, sender: str = "no-reply@sns.example"
) -> bytes:
    """A sending service's event mailed as text; ``sns`` wraps it as an SNS email-json notification."""
    body = json.dumps(notice)
    if sns:
        body = json.dumps({"Type": "Notification", "MessageId": "m-1", "Message": body})
    return _join(
        [
            f"From: AWS Notifications <{sender}>",
            f"To: {rcpt}",
            "Subject: AWS Notification Message",
            "Content-Type: text/plain; charset=UTF-8",
            "",
            body,
            "",
            "--",
            "If you wish to stop receiving notifications from this topic, follow the link.",
            "",
        ]
    )


SES_COMPLAINT = {
    "notificationType": "Complaint",
    "complaint": {
        "complainedRecipients": [{"emailAddress": "alice@client.test"}],
        "complaintFeedbackType": "abuse",
        "timestamp": "2026-11-21T10:00:00.000Z",
        "feedbackId": "f-1",
    },
    "mail": {"source": "bounce+x-0@reply.acme.test", "destination": ["alice@client.test"]},
}
SES_BOUNCE = {
    "notificationType": "Bounce",
    "bounce": {
        "bounceType": "Permanent",
        "bounceSubType": "General",
        "bouncedRecipients": [
            {
                "emailAddress": "alice@client.test",
                "action": "failed",
                "status": "5.1.1",
                "diagnosticCode": "smtp; 550 5.1.1 user unknown",
            }
        ],
    },
    "mail": {"source": "bounce+x-0@reply.acme.test"},
}
SES_DELIVERY = {"notificationType": "Delivery", "delivery": {"recipients": ["alice@client.test"]}}
SENDGRID_SPAMREPORT = [{"email": "alice@client.test", "event": "spamreport", "timestamp": 1795000000}]
POSTMARK_COMPLAINT = {"RecordType": "SpamComplaint", "Type": "SpamComplaint", "Email": "alice@client.test"}


def auto_reply(rcpt: str, sender: str = "alice@client.test") -> bytes:
    """RFC 3834 §5: an out-of-office answer, sent to the Return-Path."""
    return _join(
        [
            f"From: Alice Martin <{sender}>",
            f"To: {rcpt}",
            "Subject: Automatic reply: Your next appointment",
            "Auto-Submitted: auto-replied",
            "Content-Type: text/plain",
            "",
            "I am out of the office until Monday and will answer when I am back.",
            "",
        ]
    )


def person(rcpt: str, subject: str, body: str, sender: str = "alice@client.test") -> bytes:
    return _join(
        [
            f"From: Alice Martin <{sender}>",
            f"To: {rcpt}",
            f"Subject: {subject}",
            "Message-ID: <p1@client.test>",
            "Content-Type: text/plain; charset=utf-8",
            "",
            body,
            "",
        ]
    )


RCPT = "bounce+x-0@reply.acme.test"

# (name, message, the kind the classifier must say). Machine mail first, then people.
OWN_REPORTS: list[tuple[str, bytes, str]] = [
    ("dsn_5.1.1", dsn(RCPT, [failed("alice@client.test")]), "bounce"),
    ("dsn_5.2.2_full", dsn(RCPT, [failed("alice@client.test", "5.2.2")]), "bounce"),
    (
        "dsn_5.0.0_specific_diagnostic",
        dsn(RCPT, [failed("alice@client.test", "5.0.0", "smtp; 550 5.1.1 no such user")]),
        "bounce",
    ),
    ("dsn_5.7.1_policy", dsn(RCPT, [failed("alice@client.test", "5.7.1")]), "bounce"),
    (
        "dsn_delayed",
        dsn(
            RCPT,
            [{"Final-Recipient": "rfc822; alice@client.test", "Action": "delayed", "Status": "4.4.7"}],
            subject="Delivery Status Notification (Delay)",
        ),
        "bounce",
    ),
    (
        "dsn_mixed_delivered_and_failed",
        dsn(
            RCPT,
            [
                {"Final-Recipient": "rfc822; bob@client.test", "Action": "delivered", "Status": "2.0.0"},
                failed("alice@client.test"),
            ],
        ),
        "bounce",
    ),
    (
        "dsn_x_opensmtpd_error_action",
        dsn(RCPT, [{"Final-Recipient": "rfc822; alice@client.test", "Action": "error", "Status": "5.1.1"}]),
        "bounce",
    ),
    ("ses_bounce_json", json_notice(RCPT, SES_BOUNCE, sns=True), "bounce"),
    ("arf", arf(RCPT), "complaint"),
    ("arf_without_multipart_report", arf(RCPT, multipart_report=False), "complaint"),
    ("arf_fields_as_text", arf_as_text(RCPT), "complaint"),
    ("jmrp", jmrp(RCPT), "complaint"),
    ("ses_complaint_sns", json_notice(RCPT, SES_COMPLAINT, sns=True), "complaint"),
    ("ses_complaint_raw", json_notice(RCPT, SES_COMPLAINT), "complaint"),
    (
        "sendgrid_spamreport",
        json_notice(RCPT, SENDGRID_SPAMREPORT, sender="events@sendgrid.example"),
        "complaint",
    ),
    (
        "postmark_spam_complaint",
        json_notice(RCPT, POSTMARK_COMPLAINT, sender="hooks@postmark.example"),
        "complaint",
    ),
    (
        "dsn_delivered",
        dsn(
            RCPT,
            [{"Final-Recipient": "rfc822; alice@client.test", "Action": "delivered", "Status": "2.0.0"}],
            subject="Successful Mail Delivery Report",
        ),
        "auto_reply",
    ),
    (
        "dsn_relayed",
        dsn(
            RCPT,
            [{"Final-Recipient": "rfc822; alice@client.test", "Action": "relayed", "Status": "2.0.0"}],
            subject="Delivery Status Notification (Relay)",
        ),
        "auto_reply",
    ),
    (
        "dsn_expanded",
        dsn(
            RCPT,
            [{"Final-Recipient": "rfc822; team@client.test", "Action": "expanded", "Status": "2.0.0"}],
            subject="Delivery Status Notification",
        ),
        "auto_reply",
    ),
    ("ses_delivery_json", json_notice(RCPT, SES_DELIVERY, sns=True), "auto_reply"),
    ("out_of_office", auto_reply(RCPT), "auto_reply"),
    (
        "person_complaining_about_a_bill",
        person(RCPT, "Complaint", "I want to file a complaint about my bill."),
        "human",
    ),
    (
        "person_quoting_an_abuse_report",
        person(
            RCPT, "Re: odd mail", "What is this?\n\n> Feedback-Type: abuse\n> User-Agent: X\n> Version: 1"
        ),
        "human",
    ),
    (
        "person_pasting_json",
        person(RCPT, "Re: export", 'Here it is: {"event": "meeting", "when": "Tuesday"}'),
        "human",
    ),
]
