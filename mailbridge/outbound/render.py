"""Rendering: one strict Jinja2 environment, template triplets (subject, text, HTML), English and French.

The templates ship inside the package (``mailbridge/templates/<locale>/``, package data in the
wheel), so a non-editable install finds them; ``templates_dir`` points elsewhere to override them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jinja2 import Environment, FileSystemLoader, StrictUndefined, TemplateError, select_autoescape

LOCALES = ("en", "fr")
DEFAULT_TEMPLATES = Path(__file__).resolve().parent.parent / "templates"
PARTS = (".subject.txt", ".txt", ".html")
REQUIRED = ("notification_full", "notification_minimal", "notice", "forward")  # what build.py renders


@dataclass(frozen=True)
class Rendered:
    subject: str
    text: str
    html: str


# Notices say what happened and what to do; never the client, the company or the conversation's content.
NOTICE_TEXTS: dict[str, dict[str, tuple[str, str]]] = {
    "en": {
        "group_conversation": (
            "this conversation includes several clients, so it does not accept replies, to protect everyone's privacy.",
            "Please start a new conversation from the secure portal.",
        ),
        "inactive_client": (
            "your account is inactive, so messages to your provider cannot be delivered.",
            "You can still write to the front desk or billing. Please contact the practice to reactivate your account.",
        ),
        "direct_channel_closed": (
            "this direct channel has been closed.",
            "Please use the application to get in touch.",
        ),
        "body_too_short": (
            "your message was too short to be posted.",
            "Please write a few more words and send it again.",
        ),
        "empty_message": (
            "your message had no text and no attachment.",
            "Please write your message and send it again.",
        ),
        "attachment_withheld": (
            "some attachments could not be accepted; your message was posted without them.",
            "Please send these files in an allowed format (PDF, image, office document) within the size limit.",
        ),
        "too_many_attachments": (
            "your email carried too many attachments.",
            "Please send the files in several emails.",
        ),
        "message_too_big": ("your email was too large.", "Please send smaller files, or several emails."),
    },
    "fr": {
        "group_conversation": (
            "cette conversation réunit plusieurs clients : pour protéger la vie privée de chacun, elle n'accepte pas de réponse.",
            "Merci de démarrer une nouvelle conversation depuis le portail sécurisé.",
        ),
        "inactive_client": (
            "votre compte est inactif : les messages à votre praticien ne peuvent pas être transmis.",
            "Vous pouvez toujours écrire à l'accueil ou à la facturation. Contactez le cabinet pour réactiver votre compte.",
        ),
        "direct_channel_closed": ("ce canal direct a été fermé.", "Merci de passer par l'application."),
        "body_too_short": (
            "votre message était trop court pour être publié.",
            "Merci d'écrire quelques mots de plus et de le renvoyer.",
        ),
        "empty_message": (
            "votre message ne contenait ni texte ni pièce jointe.",
            "Merci d'écrire votre message et de le renvoyer.",
        ),
        "attachment_withheld": (
            "certaines pièces jointes n'ont pas pu être acceptées ; votre message a été publié sans elles.",
            "Merci d'envoyer ces fichiers dans un format autorisé (PDF, image, document bureautique) et sous la taille limite.",
        ),
        "too_many_attachments": (
            "votre e-mail contenait trop de pièces jointes.",
            "Merci d'envoyer les fichiers en plusieurs e-mails.",
        ),
        "message_too_big": (
            "votre e-mail était trop volumineux.",
            "Merci d'envoyer des fichiers plus petits, ou plusieurs e-mails.",
        ),
    },
}


def _one_line(value: str) -> str:
    return " ".join(value.split())


class Renderer:
    def __init__(self, templates_dir: Path | None = None) -> None:
        self.templates_dir = templates_dir or DEFAULT_TEMPLATES
        self.env = Environment(
            loader=FileSystemLoader(str(self.templates_dir)),
            autoescape=select_autoescape(
                enabled_extensions=("html",), default_for_string=False, default=False
            ),
            undefined=StrictUndefined,
            keep_trailing_newline=True,
            trim_blocks=False,
        )

    def render(self, name: str, locale: str, context: dict[str, Any]) -> Rendered:
        lang = locale if locale in LOCALES else "en"
        subject = self.env.get_template(f"{lang}/{name}.subject.txt").render(context)
        return Rendered(
            subject=_one_line(subject)[:255],
            text=self.env.get_template(f"{lang}/{name}.txt").render(context),
            html=self.env.get_template(f"{lang}/{name}.html").render(context),
        )

    def notice(self, reason: str, locale: str, context: dict[str, Any]) -> Rendered:
        lang = locale if locale in LOCALES else "en"
        explanation, advice = NOTICE_TEXTS[lang].get(reason, NOTICE_TEXTS[lang]["empty_message"])
        return self.render("notice", lang, {**context, "explanation": explanation, "advice": advice})

    def names(self) -> list[str]:
        """Every template triplet found, by name (from the English folder, the fallback locale)."""
        folder = self.templates_dir / "en"
        found = {p.name.removesuffix(".subject.txt") for p in folder.glob("*.subject.txt")}
        return sorted(found | set(REQUIRED))

    def problems(self) -> list[str]:
        """What cannot be loaded, one short line each (empty when every triplet of every locale
        compiles): ``/readyz`` and ``serve`` report it instead of failing on the first notification."""
        if not self.templates_dir.is_dir():
            return [f"no templates folder at {self.templates_dir}"]
        found: list[str] = []
        for lang in LOCALES:
            for name in self.names():
                for part in PARTS:
                    path = f"{lang}/{name}{part}"
                    try:
                        self.env.get_template(path)
                    except TemplateError as exc:
                        found.append(f"{path}: {type(exc).__name__}: {exc}"[:200])
        return found
