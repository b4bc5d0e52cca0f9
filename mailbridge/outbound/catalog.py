"""What each template may show: its variables, the links it must carry, and realistic sample data.

One table for the templates, read by the renderer (to check a practice's template before it is
saved), by the preview endpoint, by the tests (SpamAssassin, HTML validation, packaging) and by the
pictures in ``docs/notifications/``. A minimal notification may use only :data:`MINIMAL`: nothing
from the conversation (no subject, author, body, attachment names, company), checked on the
template's syntax tree before it is saved.

An external agent (seed 003: outside the practice, by email only) has no portal: the templates made
for them (``*_external*``) may not name the sign-in link, the conversation's page or the app's
notification settings at all, so no practice's own version can offer them a portal either. They
say how to answer instead: by replying to the email.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from markupsafe import Markup

from mailbridge.domain.practice_settings import PracticeSettings

#: The practice's identity, in every template (empty strings/lists where the practice hides itself).
IDENTITY = frozenset(
    {"lang", "practice_name", "brand_color", "brand_text_color", "logo_src", "footer_lines", "signin_link"}
)
#: Every notification: the one-click unsubscribe page of this conversation and the app's settings.
NOTIFICATION = IDENTITY | {"unsubscribe_link", "preferences_link"}
#: What a minimal notification may show: nothing about the conversation.
MINIMAL = NOTIFICATION
#: An external agent's templates: the practice's identity without the sign-in link (no portal).
EXTERNAL_IDENTITY = IDENTITY - {"signin_link"}
#: Every notification to an external agent: the one-click unsubscribe page (mailbridge's own, no
#: account needed) and whether they may answer by email; never the app's settings page.
EXTERNAL_NOTIFICATION = EXTERNAL_IDENTITY | {"unsubscribe_link", "reply_allowed"}
#: The conversation's content, for full notifications only.
CONTENT = frozenset(
    {
        "author_name",
        "subject",
        "body",
        "body_html",
        "body_truncated",
        "preheader",
        "attachments",
        "withheld",
        "link",
        "reply_allowed",
        "is_first",
        "coalesced",
    }
)
#: The conversation's content for an external agent: everything but its page in the app.
EXTERNAL_CONTENT = CONTENT - {"link", "reply_allowed"}
#: What an external agent's templates may never name, whatever a practice writes in its own.
PORTAL_LINKS = frozenset({"signin_link", "link", "preferences_link"})


@dataclass(frozen=True)
class Spec:
    """One template: the variables it may use, the lists among them (with their items' fields),
    and the links its text and HTML must both carry (a notification nobody can act on is a bug)."""

    variables: frozenset[str]
    lists: dict[str, frozenset[str]]
    links: tuple[str, ...]
    minimal: bool = False


_FOOTER = {"footer_lines": frozenset[str]()}

SPECS: dict[str, Spec] = {
    "notification_full": Spec(
        NOTIFICATION | CONTENT,
        {**_FOOTER, "attachments": frozenset({"name", "size", "size_text"})},
        ("link", "unsubscribe_link"),
    ),
    "notification_minimal": Spec(MINIMAL, dict(_FOOTER), ("signin_link", "unsubscribe_link"), minimal=True),
    "notice": Spec(
        IDENTITY | {"explanation", "advice", "files"},
        {**_FOOTER, "files": frozenset[str]()},
        ("signin_link",),
    ),
    "forward": Spec(IDENTITY | {"rcpt"}, dict(_FOOTER), ()),
    "notification_external_full": Spec(
        EXTERNAL_NOTIFICATION | EXTERNAL_CONTENT,
        {**_FOOTER, "attachments": frozenset({"name", "size", "size_text"})},
        ("unsubscribe_link",),
    ),
    "notification_external_minimal": Spec(
        EXTERNAL_NOTIFICATION, dict(_FOOTER), ("unsubscribe_link",), minimal=True
    ),
    "notice_external": Spec(
        EXTERNAL_IDENTITY | {"explanation", "advice", "files"}, {**_FOOTER, "files": frozenset[str]()}, ()
    ),
}

#: What a loop may read besides its item: ``loop.index``, ``loop.first``…
LOOP_FIELDS = frozenset({"index", "index0", "first", "last", "length", "revindex"})

_SAMPLE_BODY = {
    "en": (
        "Hello Alice,\n\nYour VAT return for the second quarter is ready. I have attached the draft and "
        "the list of receipts we still need; could you check the figures and send the two missing "
        "invoices by Friday?\n\nBest regards,\nAlex"
    ),
    "fr": (
        "Bonjour Alice,\n\nVotre déclaration de TVA du deuxième trimestre est prête. Vous trouverez le "
        "brouillon et la liste des justificatifs manquants ; pourriez-vous vérifier les montants et "
        "m'envoyer les deux factures d'ici vendredi ?\n\nBien cordialement,\nAlex"
    ),
}
_SAMPLE_SUBJECT = {"en": "Quarterly VAT return", "fr": "Déclaration de TVA trimestrielle"}
_SAMPLE_WITHHELD = {
    "en": "1 attachment withheld: setup.exe (program or script)",
    "fr": "1 pièce jointe retenue : setup.exe (programme ou script)",
}
_SAMPLE_NOTICE = {
    "en": (
        "your message was too short to be posted.",
        "Please write a few more words and send it again.",
    ),
    "fr": (
        "votre message était trop court pour être publié.",
        "Merci d'écrire quelques mots de plus et de le renvoyer.",
    ),
}
SAMPLE_LINKS = {
    "link": "https://app.example.org/conversations/5f2c9a7e41b03d86c2e1a9f0",
    "signin_link": "https://app.example.org/",
    "preferences_link": "https://app.example.org/settings/notifications",
    "unsubscribe_link": "https://mailbridge.example.org/u/gAAAAABsample-unsubscribe-token",
}


def sample_context(name: str, lang: str, identity: dict[str, Any] | None = None) -> dict[str, Any]:
    """Realistic data for *name* in *lang*: what the preview shows and what a template is checked with.

    *identity* (the practice's own name, colour, logo, footer) replaces the sample practice's.
    """
    from mailbridge.outbound.context import body_html, size_text

    lang = lang if lang in _SAMPLE_BODY else "en"
    body = _SAMPLE_BODY[lang]
    context: dict[str, Any] = {
        "lang": lang,
        "practice_name": "Acme Counselling",
        "brand_color": "#3b6ea5",
        "brand_text_color": "#ffffff",
        "logo_src": "",
        "footer_lines": [
            "12 Harbour Street, Bristol BS1 4QA",
            "+44 117 496 0000 · hello@acme-counselling.example",
        ],
        "signin_link": SAMPLE_LINKS["signin_link"],
        **(identity or {}),
    }
    external = is_external(name)
    if external:
        context.pop("signin_link", None)
    if name.startswith("notification"):
        context |= {"unsubscribe_link": SAMPLE_LINKS["unsubscribe_link"]}
        if not external:
            context |= {"preferences_link": SAMPLE_LINKS["preferences_link"]}
    if name == "notification_external_minimal":
        context |= {"reply_allowed": True}
    if name in ("notification_full", "notification_external_full"):
        context |= {
            "author_name": "Dr Alex Smith",
            "subject": _SAMPLE_SUBJECT[lang],
            "body": body,
            "body_html": Markup(body_html(body)),
            "body_truncated": False,
            "preheader": " ".join(body.split())[:110],
            "attachments": [
                {"name": "vat-return-q2-draft.pdf", "size": 182_311, "size_text": size_text(182_311, lang)},
                {"name": "receipts.xlsx", "size": 24_406, "size_text": size_text(24_406, lang)},
            ],
            "withheld": _SAMPLE_WITHHELD[lang],
            "link": SAMPLE_LINKS["link"],
            "reply_allowed": True,
            "is_first": False,
            "coalesced": 1,
        }
        if external:
            del context["link"]
    elif name in ("notice", "notice_external"):
        explanation, advice = _SAMPLE_NOTICE[lang]
        context |= {"explanation": explanation, "advice": advice, "files": []}
    elif name == "forward":
        context |= {"rcpt": "postmaster@acme-counselling.example"}
    return context


def is_external(name: str) -> bool:
    """A template for an external agent (no portal: no sign-in link, no app link)."""
    return name.endswith("_external") or "_external_" in name


def preview_context(
    name: str,
    lang: str,
    practice_name: str,
    settings: PracticeSettings,
    app_url: str,
    logo_src: str = "",
) -> dict[str, Any]:
    """Sample data in a practice's own identity, shown as that template shows it: a minimal
    notification or a notice of a practice with ``minimal_shows_practice: false`` names nobody.
    For previews (the API's, a console's): *logo_src* may be a ``data:`` URI there."""
    from mailbridge.outbound.context import practice_identity

    shown = (
        not SPECS[name].minimal and name not in ("notice", "notice_external")
    ) or settings.minimal_shows_practice
    identity = practice_identity(practice_name, settings, lang, shown, app_url, logo_src)
    if is_external(name):
        identity.pop("signin_link", None)
    return sample_context(name, lang, identity)
