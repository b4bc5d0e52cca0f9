"""Rendering: template triplets (subject, text, MJML) in English and French, in a sandboxed Jinja2.

A template is three sources: ``<name>.subject.txt``, ``<name>.txt`` (the plain-text part) and
``<name>.mjml`` (the HTML part's layout, compiled by :mod:`mailbridge.outbound.mjml` once per
source, then rendered by Jinja per message). ``partials/`` (shared) and ``<locale>/partials/``
(localized) hold the pieces ``mj-include`` may name: the common head, header and footer.

The shipped templates live inside the package (``mailbridge/templates/``, package data in the
wheel); ``templates_dir`` points elsewhere to replace them. A practice may replace any template of
its own (see :mod:`mailbridge.domain.templates`): :meth:`Renderer.check` validates such a template
before it is saved, and :meth:`Renderer.render` takes it as an ``override``. Every template, shipped
or not, renders in the same sandboxed environments (:mod:`mailbridge.outbound.sandbox`): HTML with
autoescape, text without (text parts are bodies, never headers; the subject is cut to one line and
the header factory refuses CR/LF anyway).
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jinja2 import Template, TemplateError
from markupsafe import escape

from mailbridge.outbound.catalog import LOOP_FIELDS, SPECS, sample_context
from mailbridge.outbound.context import wrap_text
from mailbridge.outbound.mjml import MjmlError, compile_mjml
from mailbridge.outbound.sandbox import check_syntax, make_environment, remote_references

LOCALES = ("en", "fr")
DEFAULT_TEMPLATES = Path(__file__).resolve().parent.parent / "templates"
PARTS = (".subject.txt", ".txt", ".mjml")
REQUIRED = (  # what build.py renders
    "notification_full",
    "notification_minimal",
    "notice",
    "forward",
    "notification_external_full",
    "notification_external_minimal",
    "notice_external",
)
PARTIALS = "partials"
#: Gmail clips a message whose HTML passes 102 KB ("[Message clipped]"); a template must stay clear of it.
HTML_MAX_BYTES = 100 * 1024
#: Sizes a practice's template part may have (characters).
SOURCE_LIMITS = {"subject": 1_000, "text": 20_000, "mjml": 100_000}
#: The logo's ``src`` in samples: a ``cid:`` reference, the only kind of image a template may show.
SAMPLE_LOGO = "cid:logo.sample@mailbridge.invalid"
#: The per-recipient link :meth:`Renderer.render_shared` puts in afterwards: an http(s) URL of
#: printable ASCII, no space (what ``unsubscribe.UnsubscribeTokens`` links are).
SHARED_LINK = "unsubscribe_link"
_PLAIN_URL = re.compile(r"https?://[!-~]+")
#: Renderings kept by render_shared: a message's recipients are notified within a batch or two.
SHARED_KEPT = 64


@dataclass(frozen=True)
class Rendered:
    subject: str
    text: str
    html: str


@dataclass(frozen=True)
class Source:
    """A template's three parts; in an override, a part left ``None`` is the default's."""

    subject: str | None = None
    text: str | None = None
    mjml: str | None = None

    def over(self, default: Source) -> Source:
        return Source(
            subject=self.subject if self.subject is not None else default.subject,
            text=self.text if self.text is not None else default.text,
            mjml=self.mjml if self.mjml is not None else default.mjml,
        )


class TemplateProblems(ValueError):
    """A template that cannot be used, with every reason (one line each)."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


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


# An external agent has no portal and no application: advice that sends someone there says
# instead what they can do by email or with the practice.
EXTERNAL_ADVICE: dict[str, dict[str, str]] = {
    "en": {
        "group_conversation": "Please ask the practice to start a new conversation with you.",
        "inactive_client": "Please contact the practice.",
        "direct_channel_closed": "Please contact the practice.",
    },
    "fr": {
        "group_conversation": "Merci de demander au cabinet de démarrer une nouvelle conversation avec vous.",
        "inactive_client": "Merci de contacter le cabinet.",
        "direct_channel_closed": "Merci de contacter le cabinet.",
    },
}


def _plain(value: Any) -> bool:
    """Data whose ``repr`` says all it holds (no object shown by its address)."""
    if value is None or isinstance(value, str | int | float):  # bool is an int, Markup a str
        return True
    if isinstance(value, list | tuple):
        return all(_plain(item) for item in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and _plain(v) for k, v in value.items())
    return False


def _one_line(value: str) -> str:
    return " ".join(value.split())


class Renderer:
    """The shipped templates, compiled once, and any practice's own, compiled at first use."""

    def __init__(self, templates_dir: Path | None = None) -> None:
        self.templates_dir = templates_dir or DEFAULT_TEMPLATES
        self.html_env = make_environment(html=True)
        self.text_env = make_environment(html=False)
        self._sources: dict[tuple[str, str], Source] = {}
        self._partials: dict[str, dict[str, str]] = {}
        self._compiled: dict[tuple[bool, str], Template] = {}
        self._shared: dict[tuple[str, str, int, str], Rendered] = {}
        # A host no link can have (.invalid, RFC 2606) and that no template text contains.
        self._stand_in = f"https://{secrets.token_hex(6)}.invalid/"

    # ---- sources ---------------------------------------------------------------------------------

    def default(self, name: str, locale: str) -> Source:
        """The shipped (or ``templates_dir``) template *name* in *locale* (English when unknown)."""
        lang = locale if locale in LOCALES else "en"
        key = (lang, name)
        found = self._sources.get(key)
        if found is None:
            folder = self.templates_dir / lang
            parts = [(folder / f"{name}{part}").read_text(encoding="utf-8") for part in PARTS]
            found = self._sources[key] = Source(*parts)
        return found

    def partials(self, locale: str) -> dict[str, str]:
        """What ``mj-include`` may name in *locale*: ``partials/*.mjml``, then the locale's own."""
        lang = locale if locale in LOCALES else "en"
        found = self._partials.get(lang)
        if found is None:
            found = {}
            for folder in (self.templates_dir / PARTIALS, self.templates_dir / lang / PARTIALS):
                if folder.is_dir():
                    found |= {p.name: p.read_text(encoding="utf-8") for p in sorted(folder.glob("*.mjml"))}
            self._partials[lang] = found
        return found

    # ---- rendering -------------------------------------------------------------------------------

    def render(
        self, name: str, locale: str, context: dict[str, Any], override: Source | None = None
    ) -> Rendered:
        lang = locale if locale in LOCALES else "en"
        source = self.default(name, lang)
        if override is not None:
            source = override.over(source)
        return self._render(source, lang, context)

    def render_shared(self, name: str, locale: str, context: dict[str, Any]) -> tuple[Rendered, Rendered]:
        """``render(name, locale, context)``, and the same rendering with a stand-in for the
        recipient's own link (``context["unsubscribe_link"]``), from which its fingerprint is made.

        Every recipient of a message gets the same notification but for that link: the rendering is
        made once with a stand-in of the link's length and kept (a small bounded cache, keyed on the
        template, the locale and everything else in the context), and each recipient's copy is that
        rendering with their link put in, escaped in the HTML as Jinja escapes it. The stand-in has
        the link's length and no space, so the text part wraps where it would have wrapped, and
        being a URL too, it leaves the fingerprint unchanged (URLs and tags carry no words there):
        the fingerprint of the kept rendering is computed once and found again for the next
        recipient. Only for the shipped templates, whose use of the link tests pin (it is printed,
        never filtered); a ``templates_dir`` of the operator's, or a link that is not a plain URL,
        is rendered for each recipient, and that rendering is also the second one returned.
        """
        link = str(context.get(SHARED_LINK, ""))
        base = self._stand_in
        if (
            self.templates_dir != DEFAULT_TEMPLATES
            or not _PLAIN_URL.fullmatch(link)
            or len(link) < len(base) + 1
            or not all(_plain(value) for value in context.values())  # the key is their repr
        ):
            rendered = self.render(name, locale, context)
            return rendered, rendered
        lang = locale if locale in LOCALES else "en"
        stand_in = base + "x" * (len(link) - len(base))
        rest = repr(sorted((k, v) for k, v in context.items() if k != SHARED_LINK))
        key = (name, lang, len(link), rest)
        shared = self._shared.get(key)
        if shared is None:
            if len(self._shared) >= SHARED_KEPT:
                self._shared.clear()
            shared = self._shared[key] = self.render(name, lang, context | {SHARED_LINK: stand_in})
        own = Rendered(
            subject=shared.subject.replace(stand_in, link),
            text=shared.text.replace(stand_in, link),
            html=shared.html.replace(stand_in, str(escape(link))),
        )
        return own, shared

    def notice_texts(self, reason: str, locale: str, external: bool = False) -> tuple[str, str]:
        """``(explanation, advice)`` of a notice for *reason*, in *locale*; *external*: for an
        external agent, whose advice never sends them to a portal or an application."""
        lang = locale if locale in LOCALES else "en"
        explanation, advice = NOTICE_TEXTS[lang].get(reason, NOTICE_TEXTS[lang]["empty_message"])
        if external:
            advice = EXTERNAL_ADVICE[lang].get(reason, advice)
        return explanation, advice

    def notice(
        self,
        reason: str,
        locale: str,
        context: dict[str, Any],
        override: Source | None = None,
        external: bool = False,
    ) -> Rendered:
        explanation, advice = self.notice_texts(reason, locale, external)
        return self.render(
            "notice_external" if external else "notice",
            locale,
            {**context, "explanation": explanation, "advice": advice},
            override,
        )

    def _render(self, source: Source, lang: str, context: dict[str, Any]) -> Rendered:
        assert source.subject is not None and source.text is not None and source.mjml is not None
        subject = self._template(False, source.subject).render(context)
        text = self._template(False, source.text).render(context)
        html_source = compile_mjml(source.mjml, self.partials(lang))
        html = self._template(True, html_source).render(context)
        return Rendered(subject=_one_line(subject)[:255], text=wrap_text(text), html=html)

    def _template(self, html: bool, source: str) -> Template:
        key = (html, source)
        found = self._compiled.get(key)
        if found is None:
            if len(self._compiled) > 512:  # practices' templates come and go: stay bounded
                self._compiled.clear()
            env = self.html_env if html else self.text_env
            found = self._compiled[key] = env.from_string(source)
        return found

    # ---- checks ----------------------------------------------------------------------------------

    def check(
        self, name: str, locale: str, source: Source, identity: dict[str, Any] | None = None
    ) -> Rendered:
        """Validate a practice's template before it is saved; returns its rendering of the sample.

        Raises :class:`TemplateProblems` naming everything wrong: a part too long, outside the
        sandbox's language (:func:`~mailbridge.outbound.sandbox.check_syntax`), a variable the
        template may not use (a minimal one may use nothing about the conversation), MJML that does
        not compile, a render error with realistic data, a required link missing from the text or
        the HTML, HTML that would load anything from elsewhere, or HTML past Gmail's clipping size.
        """
        spec = SPECS.get(name)
        if spec is None:
            raise TemplateProblems([f"no template is named {name!r}"])
        lang = locale if locale in LOCALES else "en"
        full = source.over(self.default(name, lang))
        problems: list[str] = []
        for part, limit in SOURCE_LIMITS.items():
            value = getattr(source, part)
            if value is not None and len(value) > limit:
                problems.append(f"{part}: longer than {limit} characters")
        if problems:
            raise TemplateProblems(problems)
        html_source = ""
        for part in ("subject", "text", "mjml"):
            value = getattr(full, part)
            env = self.html_env if part == "mjml" else self.text_env
            problems += [
                f"{part}: {p}" for p in check_syntax(env, value, spec.variables, spec.lists, LOOP_FIELDS)
            ]
            if part == "mjml" and not problems:
                try:
                    html_source = compile_mjml(value, self.partials(lang))
                except MjmlError as exc:
                    problems.append(f"mjml: does not compile: {exc}")
                else:
                    problems += [
                        f"mjml: {p}"
                        for p in check_syntax(env, html_source, spec.variables, spec.lists, LOOP_FIELDS)
                    ]
        if problems:
            raise TemplateProblems(problems)
        rendered = Rendered("", "", "")
        for logo in ("", SAMPLE_LOGO):
            context = sample_context(name, lang, identity) | {"logo_src": logo}
            try:
                rendered = self._render(full, lang, context)
            except (
                TemplateError,
                ValueError,
                TypeError,
                RecursionError,
            ) as exc:  # the sandbox raises SecurityError (a TemplateError)
                raise TemplateProblems(
                    [f"does not render with sample data: {type(exc).__name__}: {exc}"]
                ) from None
            problems += self.output_problems(name, rendered, frozenset({logo} - {""}), context)
        if problems:
            raise TemplateProblems(sorted(set(problems), key=problems.index))
        return rendered

    def output_problems(
        self, name: str, rendered: Rendered, images: frozenset[str], context: dict[str, Any]
    ) -> list[str]:
        """What is wrong with one rendering: missing links, remote references, size (checked on
        every rendering of a practice's template, at send time too)."""
        problems = [f"html: {p}" for p in remote_references(rendered.html, images)]
        for link in SPECS[name].links:
            url = str(context.get(link, ""))
            if f'href="{escape(url)}"' not in rendered.html:
                problems.append(f"html: the {link} link ({url}) is missing")
            if url not in rendered.text:
                problems.append(f"text: the {link} link ({url}) is missing")
        if not rendered.subject.strip() and name != "forward":
            problems.append("subject: empty")
        size = len(rendered.html.encode("utf-8"))
        if size > HTML_MAX_BYTES:
            problems.append(f"html: {size} bytes, past the {HTML_MAX_BYTES} Gmail shows unclipped")
        return problems

    def names(self) -> list[str]:
        """Every template triplet found, by name (from the English folder, the fallback locale)."""
        folder = self.templates_dir / "en"
        found = {p.name.removesuffix(".subject.txt") for p in folder.glob("*.subject.txt")}
        return sorted(found | set(REQUIRED))

    def problems(self) -> list[str]:
        """What cannot be loaded, compiled or rendered, one short line each (empty when every
        template of every locale renders its sample): ``/readyz`` and ``serve`` report it instead of
        failing on the first notification. Compiling here is the start-up compile."""
        if not self.templates_dir.is_dir():
            return [f"no templates folder at {self.templates_dir}"]
        found: list[str] = []
        for lang in LOCALES:
            for name in self.names():
                broken = False
                for part in PARTS:
                    path = f"{lang}/{name}{part}"
                    try:
                        source = (self.templates_dir / lang / f"{name}{part}").read_text(encoding="utf-8")
                        if part == ".mjml":
                            source = compile_mjml(source, self.partials(lang))
                        self._template(part == ".mjml", source)
                    except FileNotFoundError:
                        found.append(f"{path}: TemplateNotFound")
                        broken = True
                    except (TemplateError, MjmlError, UnicodeDecodeError) as exc:
                        found.append(f"{path}: {type(exc).__name__}: {exc}"[:200])
                        broken = True
                if broken:
                    continue
                try:  # every part compiles: the sample must render too
                    self._render(self.default(name, lang), lang, sample_context(name, lang))
                except (TemplateError, MjmlError, ValueError, TypeError) as exc:
                    found.append(f"{lang}/{name}: {type(exc).__name__}: {exc}"[:200])
        return found
