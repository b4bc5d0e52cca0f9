"""A small demo practice in English and one in French: every staff role, clients, companies, one conversation of each kind."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from mailbridge.directory_import import load_directory
from mailbridge.domain import conversations as convs
from mailbridge.domain import directory, logos
from mailbridge.domain.models import ConversationKind, Practice

DEMO_LOGO = Path(__file__).resolve().parent / "assets" / "demo-logo.png"


def _practice(slug: str, lang: str) -> dict[str, Any]:
    fr = lang == "fr"
    domain = f"reply.{slug}.test"
    return {
        "slug": slug,
        "name": "Cabinet Lumière" if fr else "Acme Counselling",
        "reply_domain": domain,
        "notify_from": f"notify@{slug}.test",
        "locale": lang,
        "settings": {
            "min_body_chars": 10 if fr else 1,
            "attachment_max_bytes": 10 * 1024 * 1024 if fr else 25 * 1024 * 1024,
            # the practice's identity in its notifications (docs/notifications.md)
            "brand_color": "#8a3ffc" if fr else "#0a7766",
            "footer": "Cabinet Lumière · 4 rue des Lilas, 69003 Lyon\n04 72 00 00 00"
            if fr
            else "Acme Counselling · 12 Harbour Street, Bristol BS1 4QA\n+44 117 496 0000",
        },
        "users": {
            "dr-smith": {
                "email": f"dr.smith@{slug}.test",
                "name": "Dr Alex Smith",
                "kind": "staff",
                "role": "provider",
                "locale": lang,
            },
            "dr-jones": {
                "email": f"dr.jones@{slug}.test",
                "name": "Dr Sam Jones",
                "kind": "staff",
                "role": "provider",
                "locale": lang,
            },
            "billing": {
                "email": f"billing@{slug}.test",
                "name": "Bea Biller",
                "kind": "staff",
                "role": "biller",
                "locale": lang,
            },
            "frontdesk": {
                "email": f"frontdesk@{slug}.test",
                "name": "Fran Desk",
                "kind": "staff",
                "role": "front_office",
                "locale": lang,
            },
            "admin": {
                "email": f"admin@{slug}.test",
                "name": "Ada Admin",
                "kind": "staff",
                "role": "admin",
                "locale": lang,
            },
            "alice": {
                "email": "alice@client.test",
                "alt_emails": ["alice.work@client.test"],
                "name": "Alice Martin",
                "kind": "client",
                "locale": lang,
            },
            "bob": {"email": "bob@client.test", "name": "Bob Durand", "kind": "client", "locale": lang},
            "carol": {
                "email": "carol@client.test",
                "name": "Carol Petit",
                "kind": "client",
                "active": False,
                "locale": lang,
            },
        },
        "companies": {"acme-bakery": {"name": "Boulangerie Acme" if fr else "Acme Bakery"}},
        "favorites": [
            ["dr-smith", "acme-bakery"],
            ["billing", "acme-bakery"],
            ["alice", "acme-bakery"],
            ["bob", "acme-bakery"],
        ],
        "friendships": [["dr-smith", "dr-jones", "accepted"]],
        "domains": [f"{slug}.test"],  # frontdesk@ and billing@ live on the practice's own domain
        "routes": {
            f"frontdesk@{slug}.test": {
                "roles": ["front_office"],
                "kind": "private",
                "unknown_senders": "triage",
            },
            f"billing@{slug}.test": {"roles": ["biller"], "kind": "private", "unknown_senders": "reject"},
        },
    }


CONVERSATIONS = (
    (
        ConversationKind.company,
        "acme-bakery",
        "Quarterly VAT return",
        "dr-smith",
        ["alice"],
        "Hello Alice, your VAT return is ready for review.",
    ),
    (
        ConversationKind.confidential,
        "acme-bakery",
        "Payroll question",
        "billing",
        ["alice"],
        "Hello Alice, one question about payroll.",
    ),
    (
        ConversationKind.private,
        None,
        "Your next appointment",
        "dr-smith",
        ["bob"],
        "Hello Bob, shall we meet on Tuesday at 10?",
    ),
    (
        ConversationKind.direct,
        None,
        "Case conference",
        "dr-smith",
        ["dr-jones"],
        "Sam, can we talk about the Durand file?",
    ),
)


def is_empty(session: Session) -> bool:
    return (session.scalar(select(func.count()).select_from(Practice)) or 0) == 0


def load_demo(session: Session) -> list[str]:
    load_directory(session, {"practices": [_practice("demo", "en"), _practice("demo-fr", "fr")]})
    for slug in ("demo", "demo-fr"):
        practice = directory.get_practice(session, slug)
        logos.put_logo(session, practice.id, DEMO_LOGO.read_bytes())
        for kind, company, subject, author, participants, body in CONVERSATIONS:
            convs.create_conversation(
                session,
                practice,
                kind=kind,
                company=directory.get_company(session, practice, company) if company else None,
                subject=subject,
                author=directory.get_user(session, practice, author),
                participants=[directory.get_user(session, practice, p) for p in participants],
                body=body,
            )
    return ["demo", "demo-fr"]


def how_to_try(http_listen: str, smtp_listen: str, api_key: str) -> str:
    base = f"http://{http_listen}/api/v1/practices/demo"
    return "\n".join(
        [
            "Demo practices loaded: 'demo' (English) and 'demo-fr' (French).",
            "Try:",
            f'  curl -H "Authorization: Bearer {api_key or "$MAILBRIDGE_API_KEY"}" "{base}/conversations?as=alice"',
            f'  curl -H "Authorization: Bearer {api_key or "$MAILBRIDGE_API_KEY"}" "{base}/conversations?as=dr-smith"',
            f"  Notifications land as .eml files in the outbox folder; reply to their Reply-To over SMTP at {smtp_listen}",
            f"  (e.g. swaks --server {smtp_listen} --from bob@client.test --to <Reply-To address> --body 'Tuesday works')",
        ]
    )


# ---- demo mail: something on every console page ---------------------------------------------------

DEMO_DNS = {
    # Clients' provider: SPF passes for loopback only, and soft-fails elsewhere (``~all``): a reply
    # "from elsewhere" is not aligned, so it is held for staff rather than refused as an SPF fail.
    "client.test": ["v=spf1 ip4:127.0.0.1 ~all"],
}


def _mail(
    sender: str, to: str, subject: str, body: str, attachment: tuple[str, bytes] | None = None
) -> bytes:
    from email.message import EmailMessage
    from email.policy import SMTP
    from email.utils import make_msgid

    msg = EmailMessage()
    msg["From"] = sender
    msg["To"] = to
    msg["Subject"] = subject
    msg["Message-ID"] = make_msgid(domain="client.test")
    msg["Date"] = "Mon, 30 Nov 2026 09:30:00 +0000"
    msg.set_content(body)
    if attachment is not None:
        msg.add_attachment(
            attachment[1], maintype="application", subtype="octet-stream", filename=attachment[0]
        )
    return msg.as_bytes(policy=SMTP)


def _dsn(to: str, verp: str, original_to: str) -> bytes:
    text = (
        "From: Mail Delivery System <MAILER-DAEMON@mx.demo.test>\r\n"
        f"To: {verp}\r\n"
        "Subject: Undelivered Mail Returned to Sender\r\n"
        "Message-ID: <dsn.1@mx.demo.test>\r\n"
        "MIME-Version: 1.0\r\n"
        'Content-Type: multipart/report; report-type=delivery-status; boundary="b"\r\n\r\n'
        "--b\r\nContent-Type: text/plain\r\n\r\nYour message could not be delivered.\r\n"
        "--b\r\nContent-Type: message/delivery-status\r\n\r\n"
        "Reporting-MTA: dns; mx.demo.test\r\n\r\n"
        f"Final-Recipient: rfc822; {original_to}\r\nAction: failed\r\nStatus: 5.1.1\r\n"
        "Diagnostic-Code: smtp; 550 5.1.1 mailbox unknown\r\n"
        "--b--\r\n"
    )
    return text.encode()


def load_demo_mail(services: Any) -> list[str]:
    """Real pipeline runs on a few made-up emails to the 'demo' practice: a held reply, a refused one
    to reprocess, a stranger's enquiry, a withheld attachment, and a bounce that suppresses an address."""
    import dataclasses

    from mailbridge.domain.db import transaction
    from mailbridge.domain.models import Conversation, Outbox, OutboxKind, OutboxState, utcnow
    from mailbridge.inbound import pipeline
    from mailbridge.inbound.dns import StaticResolver
    from mailbridge.inbound.envelope import decide_recipient, verp_address
    from mailbridge.wiring import pipeline_deps

    deps = dataclasses.replace(pipeline_deps(services), resolver=StaticResolver(DEMO_DNS))
    spool = services.settings.data_dir / "spool"
    spool.mkdir(parents=True, exist_ok=True)
    with transaction(services.sessions) as session:
        practice = directory.get_practice(session, "demo")
        by_subject = {
            c.subject: c
            for c in session.scalars(select(Conversation).where(Conversation.practice_id == practice.id))
        }

        def reply_to(user: str, subject: str) -> str:
            u = directory.get_user(session, practice, user)
            token = services.tokens.issue(session, practice.id, u.id, by_subject[subject].id)
            return f"reply+{token}@{practice.reply_domain}"

        to_bob = reply_to("bob", "Your next appointment")
        to_alice = reply_to("alice", "Payroll question")
        jones = directory.get_user(session, practice, "dr-jones")
        bounced = session.scalar(
            select(Outbox).where(Outbox.recipient_id == jones.id, Outbox.kind == OutboxKind.notification)
        )
        verp = ""
        if bounced is not None:
            bounced.state, bounced.sent_at, bounced.attempts = OutboxState.sent, utcnow(), 1
            bounced.last_answer = "250 2.0.0 queued"
            verp = verp_address(services.verp_secret, bounced.id, practice.reply_domain)
    messages = [
        # a reply to a confidential conversation from a server its domain does not list: held
        (
            "192.0.2.10",
            "alice@client.test",
            to_alice,
            _mail(
                "Alice Martin <alice@client.test>",
                to_alice,
                "Re: Payroll question",
                "Here are the payroll figures you asked for.\n\nAlice",
            ),
        ),
        # a reply with a program attached: posted, the file withheld, a notice to Bob
        (
            "127.0.0.1",
            "bob@client.test",
            to_bob,
            _mail(
                "Bob Durand <bob@client.test>",
                to_bob,
                "Re: Your next appointment",
                "Tuesday at 10 works for me. The installer is attached.",
                ("setup.exe", b"MZ\x90\x00" + b"\x00" * 200),
            ),
        ),
        # a reply from Bob's other address, unknown to the directory: refused, to reprocess once fixed
        (
            "127.0.0.1",
            "bob.durand@client.test",
            to_bob,
            _mail(
                "Bob Durand <bob.durand@client.test>",
                to_bob,
                "Re: Your next appointment",
                "Sorry, could we make it Wednesday instead?",
            ),
        ),
        # a stranger's enquiry to the front desk: held for triage
        (
            "127.0.0.1",
            "newcomer@client.test",
            "frontdesk@demo.test",
            _mail(
                "Nora Newcomer <newcomer@client.test>",
                "frontdesk@demo.test",
                "Appointment request",
                "Hello, I would like to book a first appointment.",
            ),
        ),
    ]
    if verp:
        messages.append(("127.0.0.1", "", verp, _dsn("", verp, "dr.jones@demo.test")))
    outcomes: list[str] = []
    for peer, mail_from, rcpt, raw in messages:
        with services.sessions() as session:
            decision = decide_recipient(session, services.tokens, services.verp_secret, rcpt)
        if decision.target is None:
            continue
        path = spool / f"demo-{len(outcomes)}.eml"
        path.write_bytes(raw)
        envelope = pipeline.Envelope(
            door="smtp", peer=peer, helo="client.test", mail_from=mail_from, target=decision.target
        )
        outcomes.append(pipeline.run(deps, envelope, path, len(raw)).reason)
    return outcomes
