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
