"""Replies to the project's own notifications, quoted the way real mail clients quote them (issue 16).

Built, not collected: each case renders a real notification with the project's templates (full or
minimal, English or French as the recipient's locale chooses) and the fingerprint the worker keeps,
then answers it the way one client does in one interface language: its quote header (date format,
field names, verb, where it goes), '>' prefixes or none, re-wrapped lines, the text alternative a
client writes from the HTML it quoted, device footers and signatures, or an HTML-only reply in the
client's own markup (Gmail's gmail_quote, Outlook's divRplyFwdMsg or top-bordered block, Apple's
blockquote type=cite, Thunderbird's moz-cite-prefix, Yahoo's yahoo_quoted). The expected result is
what the client typed: the answer above the quote, or the answers typed inside it with the lines
they answer, or the answer typed under it.

The header and footer strings follow the formats these clients use in each language (Gmail web,
Android and iOS; Outlook desktop, web and mobile; Apple Mail on macOS and iOS; Thunderbird; Yahoo;
K-9 Mail; FairEmail); they are written here from those formats, not copied from any corpus.
"""

from __future__ import annotations

import html as htmllib
import textwrap
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from html.parser import HTMLParser
from typing import Final

from markupsafe import Markup

from mailbridge.domain.fingerprint import Fingerprint
from mailbridge.outbound.build import notification_fingerprint
from mailbridge.outbound.catalog import sample_context
from mailbridge.outbound.context import body_html, preheader
from mailbridge.outbound.render import Rendered, Renderer

KEY: Final = b"own-corpus-fingerprint-key-00000"
NAME: Final = "Dr Alex Smith via Acme Counselling"
ADDRESS: Final = "notify@acme.test"
TO: Final = "Alice Martin <alice@client.test>"
APP: Final = "https://app.example.test"

# The client's interface language → (answer typed, the notification's locale). French readers get
# the French templates; the others the English ones (the project ships those two).
LOCALES: Final = {
    "en": ("Tuesday at 10 works for me, thank you.", "en"),
    "fr": ("Mardi à 10 h me convient, merci beaucoup.", "fr"),
    "de": ("Dienstag um 10 Uhr passt mir gut, danke.", "en"),
    "es": ("El martes a las 10 me va bien, gracias.", "en"),
    "it": ("Martedì alle 10 va benissimo, grazie.", "en"),
    "nl": ("Dinsdag om 10 uur komt goed uit, dank je.", "en"),
    "pt": ("Terça às 10 está ótimo, obrigada.", "en"),
    "ja": ("火曜日の10時で大丈夫です。ありがとうございます。", "en"),
    "pl": ("Wtorek o 10 bardzo mi pasuje, dziękuję.", "en"),
    "sv": ("Tisdag klockan 10 passar bra, tack.", "en"),
    "ru": ("Вторник в 10 мне подходит, спасибо.", "en"),
    "zh": ("周二10点可以，谢谢。", "en"),
}
INLINE_ANSWER: Final = {
    "en": "Yes, Tuesday at 10 is fine.",
    "fr": "Oui, mardi à 10 h c'est parfait.",
    "de": "Ja, Dienstag um 10 ist gut.",
    "es": "Sí, el martes a las 10 está bien.",
}
CONTENT: Final = {
    "en": {
        "subject": "Your next appointment",
        "body": "Hello Alice,\n\nShall we meet on Tuesday at 10? Please bring the consent form and your insurance "
        "card, and come ten minutes early so that we can start on time.\n\nDr Smith",
        "question": "Shall we meet on Tuesday at 10?",
    },
    "fr": {
        "subject": "Votre prochain rendez-vous",
        "body": "Bonjour Alice,\n\nPouvons-nous nous voir mardi à 10 h ? Merci d'apporter le formulaire de "
        "consentement et votre carte d'assurance, et d'arriver dix minutes en avance.\n\nDr Smith",
        "question": "Pouvons-nous nous voir mardi à 10 h ?",
    },
}

# ---- quote headers, per client and language ---------------------------------------------------------

GMAIL: Final = {
    "en": "On Mon, Jan 6, 2025 at 9:14 AM {name} <{addr}> wrote:",
    "fr": "Le lun. 6 janv. 2025 à 09:14, {name} <{addr}> a écrit :",
    "de": "Am Mo., 6. Jan. 2025 um 09:14 Uhr schrieb {name} <{addr}>:",
    "es": "El lun, 6 ene 2025 a las 9:14, {name} (<{addr}>) escribió:",
    "it": "Il giorno lun 6 gen 2025 alle ore 09:14 {name} <{addr}> ha scritto:",
    "nl": "Op ma 6 jan. 2025 om 09:14 schreef {name} <{addr}>:",
    "pt": "Em seg., 6 de jan. de 2025 às 09:14, {name} <{addr}> escreveu:",
    "ja": "2025年1月6日(月) 9:14 {name} <{addr}>:",
    "pl": "pon., 6 sty 2025 o 09:14 {name} <{addr}> napisał(a):",
    "sv": "Den mån 6 jan. 2025 kl 09:14 skrev {name} <{addr}>:",
    "ru": "пн, 6 янв. 2025 г. в 09:14, {name} <{addr}>:",
    "zh": "{name} <{addr}> 于2025年1月6日周一 09:14写道：",
}
GMAIL_MOBILE: Final = {
    "en": "On Mon, Jan 6, 2025, 9:14 AM {name} <{addr}> wrote:",
    "fr": "Le lun. 6 janv. 2025, 09:14, {name} <{addr}> a écrit :",
    "de": "{name} <{addr}> schrieb am Mo., 6. Jan. 2025, 09:14:",
    "es": "El lun., 6 de ene. de 2025 9:14, {name} <{addr}> escribió:",
    "it": "Il lun 6 gen 2025, 09:14 {name} <{addr}> ha scritto:",
    "nl": "Op ma 6 jan. 2025 09:14 schreef {name} <{addr}>:",
    "pt": "Em seg, 6 de jan de 2025 09:14, {name} <{addr}> escreveu:",
    "ja": "2025年1月6日(月) 9:14 {name} <{addr}>:",
    "pl": "pon., 6 sty 2025, 09:14 użytkownik {name} <{addr}> napisał:",
    "sv": "mån 6 jan. 2025 kl. 09:14 skrev {name} <{addr}>:",
    "ru": "пн, 6 янв. 2025 г., 09:14 {name} <{addr}>:",
    "zh": "{name} <{addr}>于2025年1月6日 周一09:14写道：",
}
GMAIL_IOS: Final = {
    "en": "On Mon, Jan 6, 2025 at 9:14 AM, {name} <{addr}> wrote:",
    "fr": "Le lun. 6 janv. 2025 à 09:14, {name} <{addr}> a écrit :",
    "de": "{name} <{addr}> schrieb am Mo. 6. Jan. 2025 um 09:14:",
    "es": "El El lun, 6 de ene de 2025 a la(s) 9:14, {name} <{addr}> escribió:",
    "it": "Il giorno lun 6 gen 2025 alle 09:14 {name} <{addr}> ha scritto:",
    "nl": "Op ma 6 jan 2025 om 09:14 schreef {name} <{addr}>:",
    "pt": "Em seg., 6 de jan. de 2025 às 09:14, {name} <{addr}> escreveu:",
    "ja": "2025年1月6日(月) 9:14 {name} <{addr}>:",
    "pl": "W dniu pon., 6.01.2025 o 09:14 {name} <{addr}> napisał(a):",
    "sv": "Den mån 6 jan. 2025 kl. 09:14 skrev {name} <{addr}>:",
    "ru": "пн, 6 янв. 2025 г. в 09:14, {name} <{addr}>:",
    "zh": "{name} <{addr}>于2025年1月6日 周一上午9:14写道：",
}
OUTLOOK_FIELDS: Final = {
    "en": ("From", "Sent", "To", "Subject", "Monday, January 6, 2025 9:14 AM"),
    "fr": ("De", "Envoyé", "À", "Objet", "lundi 6 janvier 2025 09:14"),
    "de": ("Von", "Gesendet", "An", "Betreff", "Montag, 6. Januar 2025 09:14"),
    "es": ("De", "Enviado el", "Para", "Asunto", "lunes, 6 de enero de 2025 9:14"),
    "it": ("Da", "Inviato", "A", "Oggetto", "lunedì 6 gennaio 2025 09:14"),
    "nl": ("Van", "Verzonden", "Aan", "Onderwerp", "maandag 6 januari 2025 09:14"),
    "pt": ("De", "Enviado", "Para", "Assunto", "segunda-feira, 6 de janeiro de 2025 09:14"),
    "ja": ("差出人", "送信日時", "宛先", "件名", "2025年1月6日 9:14"),
    "pl": ("Od", "Wysłane", "Do", "Temat", "poniedziałek, 6 stycznia 2025 09:14"),
    "sv": ("Från", "Skickat", "Till", "Ämne", "den 6 januari 2025 09:14"),
    "ru": ("От", "Отправлено", "Кому", "Тема", "6 января 2025 г. 9:14"),
    "zh": ("发件人", "发送时间", "收件人", "主题", "2025年1月6日 9:14"),
}
ORIGINAL_MESSAGE: Final = {
    "en": "-----Original Message-----",
    "fr": "-----Message d'origine-----",
    "de": "-----Ursprüngliche Nachricht-----",
    "es": "-----Mensaje original-----",
    "it": "-----Messaggio originale-----",
    "nl": "-----Oorspronkelijk bericht-----",
    "pt": "-----Mensagem original-----",
    "ja": "-----Original Message-----",
    "pl": "-----Wiadomość oryginalna-----",
    "sv": "-----Ursprungligt meddelande-----",
    "ru": "-----Исходное сообщение-----",
    "zh": "-----原始邮件-----",
}
APPLE: Final = {
    "en": "On Jan 6, 2025, at 9:14 AM, {name} <{addr}> wrote:",
    "fr": "Le 6 janv. 2025 à 09:14, {name} <{addr}> a écrit :",
    "de": "Am 06.01.2025 um 09:14 schrieb {name} <{addr}>:",
    "es": "El 6 ene 2025, a las 9:14, {name} <{addr}> escribió:",
    "it": "Il giorno 6 gen 2025, alle ore 09:14, {name} <{addr}> ha scritto:",
    "nl": "Op 6 jan. 2025 om 09:14 heeft {name} <{addr}> het volgende geschreven:",
    "pt": "Em 6 de jan. de 2025, à(s) 09:14, {name} <{addr}> escreveu:",
    "ja": "2025/01/06 9:14、{name} <{addr}>のメール:",
    "pl": "Wiadomość napisana przez {name} <{addr}> w dniu 6 sty 2025, o godz. 09:14:",
    "sv": "6 jan. 2025 kl. 09:14 skrev {name} <{addr}>:",
    "ru": "6 янв. 2025 г., в 9:14, {name} <{addr}> написал(а):",
    "zh": "2025年1月6日 09:14，{name} <{addr}> 写道：",
}
THUNDERBIRD: Final = {
    "en": "On 1/6/25 9:14 AM, {name} wrote:",
    "fr": "Le 06/01/2025 à 09:14, {name} a écrit :",
    "de": "Am 06.01.25 um 09:14 schrieb {name}:",
    "es": "El 6/1/25 a las 9:14, {name} escribió:",
    "it": "Il 06/01/25 09:14, {name} ha scritto:",
    "nl": "Op 06-01-2025 om 09:14 schreef {name}:",
    "pt": "Em 06/01/2025 09:14, {name} escreveu:",
    "ja": "On 2025/01/06 9:14, {name} wrote:",
    "pl": "W dniu 6.01.2025 o 09:14, {name} pisze:",
    "sv": "Den 2025-01-06 kl. 09:14, skrev {name}:",
    "ru": "06.01.2025 9:14, {name} пишет:",
    "zh": "在 2025/1/6 9:14, {name} 写道:",
}
YAHOO: Final = {
    "en": "On Monday, January 6, 2025 at 09:14:00 AM GMT+1, {name} <{addr}> wrote:",
    "fr": "Le lundi 6 janvier 2025 à 09:14:00 UTC+1, {name} <{addr}> a écrit :",
    "de": "Am Montag, 6. Januar 2025 um 09:14:00 MEZ hat {name} <{addr}> Folgendes geschrieben:",
    "es": "El lunes, 6 de enero de 2025, 09:14:00 CET, {name} <{addr}> escribió:",
    "it": "Il lunedì 6 gennaio 2025 alle ore 09:14:00 CET, {name} <{addr}> ha scritto:",
    "nl": "Op maandag 6 januari 2025 09:14:00 CET schreef {name} <{addr}>:",
    "pt": "Em segunda-feira, 6 de janeiro de 2025 09:14:00 BRT, {name} <{addr}> escreveu:",
    "ja": "2025年1月6日(月) 9:14:00 JST、{name} <{addr}> のメッセージ:",
    "pl": "W poniedziałek, 6 stycznia 2025 09:14:00 CET, {name} <{addr}> napisał(-a):",
    "sv": "Den måndag 6 januari 2025 09:14:00 CET, {name} <{addr}> skrev:",
    "ru": "понедельник, 6 января 2025 г., 09:14:00 GMT+3, {name} <{addr}> написал(-а):",
    "zh": "在 2025年1月6日星期一 09:14:00 [GMT+8]，{name} <{addr}> 写道：",
}
K9: Final = {
    "en": "On January 6, 2025 9:14:00 AM GMT+01:00, {name} <{addr}> wrote:",
    "fr": "Le 6 janvier 2025 09:14:00 GMT+01:00, {name} <{addr}> a écrit :",
    "de": "Am 6. Januar 2025 09:14:00 MEZ schrieb {name} <{addr}>:",
    "es": "El 6 de enero de 2025 9:14:00 CET, {name} <{addr}> escribió:",
    "it": "Il 6 gennaio 2025 09:14:00 CET, {name} <{addr}> ha scritto:",
    "nl": "Op 6 januari 2025 09:14:00 CET schreef {name} <{addr}>:",
    "pt": "Em 6 de janeiro de 2025 09:14:00 BRT, {name} <{addr}> escreveu:",
    "ja": "2025年1月6日 9:14:00 JST, {name} <{addr}> wrote:",
    "pl": "Dnia 6 stycznia 2025 09:14:00 CET, {name} <{addr}> napisał:",
    "sv": "Den 6 januari 2025 09:14:00 CET skrev {name} <{addr}>:",
    "ru": "6 января 2025 г. 9:14:00 GMT+03:00, {name} <{addr}> пишет:",
    "zh": "2025年1月6日 上午9:14:00 GMT+08:00, {name} <{addr}> 写到:",
}
FAIREMAIL: Final = {
    "en": "On 6 Jan 2025 at 09:14, {name} wrote:",
    "fr": "Le 6 janv. 2025 à 09:14, {name} a écrit :",
    "de": "Am 6. Jan. 2025 um 09:14 schrieb {name}:",
    "es": "El 6 ene 2025 a las 9:14, {name} escribió:",
    "it": "Il 6 gen 2025 alle 09:14, {name} ha scritto:",
    "nl": "Op 6 jan 2025 om 09:14 schreef {name}:",
    "pt": "Em 6 de jan de 2025 às 09:14, {name} escreveu:",
    "ja": "2025年1月6日 9:14, {name}:",
    "pl": "6 sty 2025 09:14, {name} napisał(a):",
    "sv": "6 jan. 2025 09:14, {name} skrev:",
    "ru": "6 янв. 2025 г. 09:14, {name} пишет:",
    "zh": "2025年1月6日 09:14, {name}:",
}

# ---- what clients add under the answer --------------------------------------------------------------

SENT_FROM_IPHONE: Final = {
    "en": "Sent from my iPhone",
    "fr": "Envoyé de mon iPhone",
    "de": "Von meinem iPhone gesendet",
    "es": "Enviado desde mi iPhone",
    "it": "Inviato da iPhone",
    "nl": "Verstuurd vanaf mijn iPhone",
    "pt": "Enviado do meu iPhone",
    "ja": "iPhoneから送信",
    "pl": "Wysłane z iPhone'a",
    "sv": "Skickat från min iPhone",
    "ru": "Отправлено с iPhone",
    "zh": "发自我的iPhone",
}
GET_OUTLOOK: Final = {
    "en": "Get Outlook for iOS<https://aka.ms/o0ukef>",
    "fr": "Télécharger Outlook pour iOS<https://aka.ms/o0ukef>",
    "de": "Outlook für iOS<https://aka.ms/o0ukef> herunterladen",
    "es": "Obtener Outlook para iOS<https://aka.ms/o0ukef>",
    "it": "Scarica Outlook per iOS<https://aka.ms/o0ukef>",
    "nl": "Outlook voor iOS<https://aka.ms/o0ukef> downloaden",
    "pt": "Obter o Outlook para iOS<https://aka.ms/o0ukef>",
    "ja": "iOS 版 Outlook<https://aka.ms/o0ukef> を入手",
    "pl": "Pobierz aplikację Outlook dla systemu iOS<https://aka.ms/o0ukef>",
    "sv": "Hämta Outlook för iOS<https://aka.ms/o0ukef>",
    "ru": "Получить Outlook для iOS<https://aka.ms/o0ukef>",
    "zh": "获取适用于 iOS 的 Outlook<https://aka.ms/o0ukef>",
}
K9_FOOTER: Final = {
    "en": "Sent from my Android device with K-9 Mail. Please excuse my brevity.",
    "fr": "Envoyé de mon appareil Android avec K-9 Mail. Veuillez excuser ma brièveté.",
    "de": "Von meinem Android-Gerät mit K-9 Mail gesendet.",
    "es": "Enviado desde mi dispositivo Android con K-9 Mail. Por favor, disculpa mi brevedad.",
    "it": "Inviato dal mio dispositivo Android con K-9 Mail. Perdonate la brevità.",
    "nl": "Verzonden vanaf mijn Android apparaat met K-9 Mail.",
    "pt": "Enviado do meu dispositivo Android com K-9 Mail. Desculpe minha brevidade.",
    "ja": "Sent from my Android device with K-9 Mail. Please excuse my brevity.",
    "pl": "Wysłane z urządzenia Android za pomocą K-9 Mail. Przepraszam za zwięzłość.",
    "sv": "Skickat från min Android-enhet med K-9 Mail. Ursäkta min korthet.",
    "ru": "Отправлено с моего Android-устройства с помощью K-9 Mail.",
    "zh": "Sent from my Android device with K-9 Mail. Please excuse my brevity.",
}
SIGNATURE: Final = "-- \nAlice Martin\n+1 555 0100 1234"


@dataclass(frozen=True)
class OwnCase:
    case_id: str
    text: str | None  # the reply's text/plain body (None: an HTML-only reply)
    html: str | None
    expected: str
    sent: Fingerprint


@dataclass(frozen=True)
class Notification:
    locale: str
    mode: str  # full | minimal
    rendered: Rendered
    body_html: str  # what is inside <body>, as a client quotes it
    sent: Fingerprint
    question: str  # a line of the message, for inline answers (full mode)


def notifications() -> dict[tuple[str, str], Notification]:
    """The notification each reader gets, rendered by the project's templates, and its fingerprint."""
    renderer = Renderer()
    out: dict[tuple[str, str], Notification] = {}
    for locale, content in CONTENT.items():
        for mode in ("full", "minimal"):
            if mode == "full":
                body = content["body"]
                context = sample_context("notification_full", locale) | {
                    "practice_name": "Acme Counselling",
                    "author_name": "Dr Alex Smith",
                    "subject": content["subject"],
                    "body": body,
                    "body_html": Markup(body_html(body)),
                    "preheader": preheader(body),
                    "attachments": [],
                    "withheld": "",
                    "link": f"{APP}/conversations/c0ffee",
                    "signin_link": f"{APP}/",
                    "preferences_link": f"{APP}/settings/notifications",
                    "is_first": True,
                }
            else:
                context = sample_context("notification_minimal", locale) | {"signin_link": f"{APP}/"}
            rendered = renderer.render(f"notification_{mode}", locale, context)
            sent = notification_fingerprint(
                KEY,
                rendered,
                body=content["body"] if mode == "full" else "",
                from_name=NAME if mode == "full" else None,
                notify_from=ADDRESS,
            )
            inner = rendered.html.split("<body", 1)[1].split(">", 1)[1].rsplit("</body>", 1)[0]
            fingerprint = Fingerprint.from_json(sent)
            assert fingerprint is not None
            out[(locale, mode)] = Notification(
                locale, mode, rendered, inner.strip(), fingerprint, content["question"]
            )
    return out


# ---- how clients turn things into text --------------------------------------------------------------


class _ClientText(HTMLParser):
    """The text alternative a client writes from the HTML it quoted: blocks on lines, links as
    "text <url>" (Gmail, Outlook), everything else dropped."""

    _BLOCKS = frozenset({"p", "div", "br", "li", "tr", "h1", "h2", "h3", "blockquote", "table"})

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.out: list[str] = []
        self.href: list[str] = []
        self.hidden = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in ("head", "style", "title", "script"):
            self.hidden += 1
        if tag in self._BLOCKS:
            self.out.append("\n")
        if tag == "a":
            self.href.append(dict(attrs).get("href") or "")

    def handle_endtag(self, tag: str) -> None:
        if tag in ("head", "style", "title", "script"):
            self.hidden = max(0, self.hidden - 1)
        if tag == "a" and self.href:
            href = self.href.pop()
            if href and not href.startswith("mailto:"):
                self.out.append(f" <{href}>")
        if tag in self._BLOCKS and tag != "br":
            self.out.append("\n")

    def handle_data(self, data: str) -> None:
        if not self.hidden:
            self.out.append(data)


def client_text(html: str) -> str:
    parser = _ClientText()
    parser.feed(html)
    parser.close()
    lines = [" ".join(line.split()) for line in "".join(parser.out).split("\n")]
    text = "\n".join(lines)
    while "\n\n\n" in text:
        text = text.replace("\n\n\n", "\n\n")
    return text.strip()


def quoted(text: str, width: int | None = None) -> str:
    """'>' before every line (re-wrapped to ``width`` first, as format=flowed clients do)."""
    lines: list[str] = []
    for line in text.split("\n"):
        if width and len(line) > width:
            lines.extend(textwrap.wrap(line, width))
        else:
            lines.append(line)
    return "\n".join(f"> {line}" if line else ">" for line in lines)


def _wrap_header(header: str, width: int = 78) -> str:
    """Gmail's text alternative breaks a long header line before the address."""
    if len(header) <= width or " <" not in header:
        return header
    head, _, tail = header.rpartition(" <")
    return f"{head} <\n{tail}"


def _outlook_block(locale: str, subject: str) -> str:
    sender, sent, to, subj, date = OUTLOOK_FIELDS[locale]
    sep = " :" if locale == "fr" else ":"
    return f"{sender}{sep} {NAME} <{ADDRESS}>\n{sent}{sep} {date}\n{to}{sep} {TO}\n{subj}{sep} {subject}"


# ---- one reply, per client --------------------------------------------------------------------------


def _closing(client: str, locale: str) -> tuple[str, str]:
    """(what the client adds under the answer, what of it the reader should still see)."""
    if client == "iphone_mail":
        return f"\n\n{SENT_FROM_IPHONE[locale]}", ""
    if client == "outlook_mobile":
        return f"\n\n{GET_OUTLOOK[locale]}", ""
    if client in ("thunderbird", "fairemail"):
        return f"\n\n{SIGNATURE}", ""
    if client == "k9":
        return f"\n\n{K9_FOOTER[locale]}", ""
    return "\n\nAlice", "\n\nAlice"


def text_reply(client: str, locale: str, note: Notification) -> tuple[str, str]:
    """A text/plain reply typed above the quote: (body, expected visible text)."""
    answer = LOCALES[locale][0]
    closing, kept = _closing(client, locale)
    top = answer + closing
    expected = answer + kept
    plain = note.rendered.text.strip()
    from_html = client_text(note.body_html)
    if client in ("gmail_web", "gmail_android", "gmail_ios"):
        header = {"gmail_web": GMAIL, "gmail_android": GMAIL_MOBILE, "gmail_ios": GMAIL_IOS}[client][locale]
        header = header.format(name=NAME, addr=ADDRESS)
        if client == "gmail_web":
            header = _wrap_header(header)
        return f"{top}\n\n{header}\n\n{quoted(from_html)}\n", expected
    if client == "outlook_desktop":
        marker = ORIGINAL_MESSAGE[locale]
        return f"{top}\n\n{marker}\n{_outlook_block(locale, note.rendered.subject)}\n\n{plain}\n", expected
    if client in ("outlook_web", "outlook_mobile"):
        rule = "_" * 32
        block = _outlook_block(locale, note.rendered.subject)
        return f"{top}\n\n{rule}\n{block}\n\n{from_html}\n", expected
    if client in ("apple_mail", "iphone_mail"):
        header = APPLE[locale].format(name=NAME, addr=ADDRESS)
        return f"{top}\n\n> {header}\n>\n{quoted(from_html)}\n", expected
    if client == "thunderbird":
        header = THUNDERBIRD[locale].format(name=NAME)
        return f"{top}\n\n{header}\n{quoted(plain, 72)}\n", expected
    if client == "yahoo":
        header = YAHOO[locale].format(name=NAME, addr=ADDRESS)
        return f"{top}\n\n\n{header}\n\n\n{from_html}\n", expected
    if client == "k9":
        header = K9[locale].format(name=NAME, addr=ADDRESS)
        return f"{top}\n\n{header}\n{quoted(plain, 76)}\n", expected
    if client == "fairemail":
        header = FAIREMAIL[locale].format(name=NAME)
        return f"{top}\n\n{header}\n\n{quoted(plain)}\n", expected
    raise ValueError(client)


def _esc(text: str) -> str:
    return htmllib.escape(text, quote=False)


def html_reply(client: str, locale: str, note: Notification) -> tuple[str, str]:
    """An HTML-only reply in the client's own markup: (html, expected visible text)."""
    answer = LOCALES[locale][0]
    closing, kept = _closing(client, locale)
    expected = answer + kept
    closing_html = "".join(f"<div>{_esc(line) or '<br>'}</div>" for line in closing.strip("\n").split("\n"))
    ours = note.body_html
    mail_to = f'&lt;<a href="mailto:{ADDRESS}">{ADDRESS}</a>&gt;'
    if client in ("gmail_web", "gmail_android", "gmail_ios"):
        table = {"gmail_web": GMAIL, "gmail_android": GMAIL_MOBILE, "gmail_ios": GMAIL_IOS}[client]
        header = _esc(table[locale].format(name=NAME, addr="ADDR")).replace("&lt;ADDR&gt;", mail_to)
        header = header.replace("(ADDR)", f"({mail_to})")
        return (
            f'<div dir="ltr">{_esc(answer)}<div><br></div>{closing_html}</div><br>'
            f'<div class="gmail_quote"><div dir="ltr" class="gmail_attr">{header}<br></div>'
            f'<blockquote class="gmail_quote" style="margin:0px 0px 0px 0.8ex;border-left:1px solid '
            f'rgb(204,204,204);padding-left:1ex">{ours}</blockquote></div>',
            expected,
        )
    if client in ("outlook_desktop", "outlook_web", "outlook_mobile"):
        sender, sent, to, subj, date = OUTLOOK_FIELDS[locale]
        fields = (
            f"<b>{sender}:</b> {_esc(NAME)} &lt;{ADDRESS}&gt;<br><b>{sent}:</b> {date}<br>"
            f"<b>{to}:</b> {_esc(TO)}<br><b>{subj}:</b> {_esc(note.rendered.subject)}"
        )
        if client == "outlook_desktop":
            return (
                f'<div class="WordSection1"><p class="MsoNormal">{_esc(answer)}</p>'
                f'<p class="MsoNormal">&nbsp;</p><p class="MsoNormal">Alice</p><p class="MsoNormal">&nbsp;</p>'
                f'<div style="border:none;border-top:solid #E1E1E1 1.0pt;padding:3.0pt 0cm 0cm 0cm">'
                f'<p class="MsoNormal">{fields}</p></div><p class="MsoNormal">&nbsp;</p>{ours}</div>',
                expected,
            )
        signature = (
            f'<div id="ms-outlook-mobile-signature">{closing_html}</div>'
            if client == "outlook_mobile"
            else closing_html
        )
        return (
            f'<div dir="ltr">{_esc(answer)}</div><div><br></div>{signature}<div id="appendonsend"></div>'
            f'<hr style="display:inline-block;width:98%" tabindex="-1"><div id="divRplyFwdMsg" dir="ltr">'
            f'<font face="Calibri, sans-serif" style="font-size:11pt">{fields}</font><div>&nbsp;</div></div>'
            f"<div>{ours}</div>",
            expected,
        )
    if client in ("apple_mail", "iphone_mail"):
        header = _esc(APPLE[locale].format(name=NAME, addr=ADDRESS))
        return (
            f'<html><body dir="auto"><div>{_esc(answer)}</div><div><br></div>{closing_html}<div><br>'
            f'<blockquote type="cite">{header}<br><br></blockquote></div>'
            f'<blockquote type="cite"><div>{ours}</div></blockquote></body></html>',
            expected,
        )
    if client == "thunderbird":
        header = _esc(THUNDERBIRD[locale].format(name=NAME))
        signature = '<pre class="moz-signature" cols="72">' + _esc(SIGNATURE) + "</pre>"
        return (
            f"<p>{_esc(answer)}</p>{signature}"
            f'<div class="moz-cite-prefix">{header}<br></div>'
            f'<blockquote type="cite" cite="mid:n.1.2@acme.test">{ours}</blockquote>',
            expected,
        )
    if client == "yahoo":
        header = _esc(YAHOO[locale].format(name=NAME, addr=ADDRESS))
        return (
            f'<div class="ydp1"><div>{_esc(answer)}</div><div><br></div>{closing_html}</div>'
            f'<div id="yahoo_quoted_0123" class="yahoo_quoted"><div style="font-size:13px">'
            f"<div>{header}</div><div><br></div><div><br></div><div>{ours}</div></div></div>",
            expected,
        )
    if client == "k9":
        header = _esc(K9[locale].format(name=NAME, addr=ADDRESS))
        return (
            f"{_esc(answer)}<br><br>{_esc(K9_FOOTER[locale])}<br><br>"
            f'<div class="gmail_quote">{header}<blockquote class="gmail_quote" style="margin: 0pt 0pt 0pt '
            f'0.8ex; border-left: 1px solid rgb(204, 204, 204); padding-left: 1ex;">{ours}</blockquote></div>',
            expected,
        )
    if client == "fairemail":
        header = _esc(FAIREMAIL[locale].format(name=NAME))
        signature = '<div class="fairemail_signature">' + _esc(SIGNATURE).replace("\n", "<br>") + "</div>"
        return (
            f"<p>{_esc(answer)}</p>{signature}<p>{header}</p>"
            f'<blockquote style="margin:0 0 0 3px;border-left:3px solid #536dfe;padding-left:6px">'
            f"{ours}</blockquote>",
            expected,
        )
    raise ValueError(client)


def inline_reply(client: str, locale: str, note: Notification) -> tuple[str, str]:
    """The answer typed inside the quote, under the line it answers (clients that quote with '>')."""
    answer = INLINE_ANSWER[locale]
    plain = note.rendered.text.strip()
    header = {"thunderbird": THUNDERBIRD, "k9": K9, "apple_mail": APPLE, "gmail_web": GMAIL}[client][locale]
    header = header.format(name=NAME, addr=ADDRESS)
    source = client_text(note.body_html) if client in ("apple_mail", "gmail_web") else plain
    lines = quoted(source).split("\n")
    at = next(i for i, line in enumerate(lines) if note.question in line)
    question = lines[at]
    body = "\n".join([*lines[: at + 1], "", answer, "", *lines[at + 1 :]])
    if client == "apple_mail":
        return f"> {header}\n>\n{body}\n", f"{question}\n\n{answer}"
    return f"{header}\n{body}\n", f"{question}\n\n{answer}"


def bottom_reply(client: str, locale: str, note: Notification) -> tuple[str, str]:
    """The whole notification quoted, the answer typed under it (K-9's and Thunderbird's option)."""
    answer = LOCALES[locale][0]
    header = {"thunderbird": THUNDERBIRD, "k9": K9}[client][locale].format(name=NAME, addr=ADDRESS)
    return f"{header}\n{quoted(note.rendered.text.strip(), 72)}\n\n{answer}\n\n{SIGNATURE}\n", answer


SEE_BELOW: Final = {
    "en": "See my answer below.",
    "fr": "Voir ma réponse ci-dessous.",
    "de": "Meine Antwort steht unten.",
    "es": "Mi respuesta está abajo.",
}
BANNER: Final = (
    "CAUTION: This email originated from outside of the organization. Do not click links or open "
    "attachments unless you recognize the sender and know the content is safe."
)


def _safelink(url: str) -> str:
    from urllib.parse import quote

    return (
        "https://eur01.safelinks.protection.outlook.com/?url="
        + quote(url, safe="")
        + "&data=05%7C02%7Calice%40client.test%7C0c0ffee%7C0%7C0&reserved=0"
    )


def outlook_inline_reply(locale: str, note: Notification) -> tuple[str, str]:
    """Outlook: the copy is not quoted, the answer typed inside it ("see my answer below")."""
    answer = INLINE_ANSWER[locale]
    lines = note.rendered.text.strip().split("\n")
    at = next(i for i, line in enumerate(lines) if note.question in line)
    copy = "\n".join([*lines[: at + 1], "", answer, "", *lines[at + 1 :]])
    block = _outlook_block(locale, note.rendered.subject)
    top = SEE_BELOW[locale]
    return f"{top}\n\n{'_' * 32}\n{block}\n\n{copy}\n", f"{top}\n\n> {lines[at]}\n\n{answer}"


def outlook_banner_reply(locale: str, note: Notification) -> tuple[str, str]:
    """Outlook at a company: a warning banner on top of the quoted copy, every link rewritten."""
    answer = LOCALES[locale][0]
    copy = client_text(note.body_html)
    for url in (f"{APP}/conversations/c0ffee", f"{APP}/settings/notifications", f"{APP}/"):
        copy = copy.replace(f"<{url}>", f"<{_safelink(url)}>")
    block = _outlook_block(locale, note.rendered.subject)
    return f"{answer}\n\n{'_' * 32}\n{block}\n\n{BANNER}\n\n{copy}\n", answer


CLIENTS: Final = (
    "gmail_web",
    "gmail_android",
    "gmail_ios",
    "outlook_desktop",
    "outlook_web",
    "outlook_mobile",
    "apple_mail",
    "iphone_mail",
    "thunderbird",
    "yahoo",
    "k9",
    "fairemail",
)
Shape = Callable[[str, str, Notification], tuple[str, str]]


def cases() -> Iterator[OwnCase]:
    """Every client × interface language × template mode, as text and as HTML; plus, in English,
    French, German and Spanish, answers typed inside the quote (full mode) and under it, and Outlook
    at a company (a banner on the quoted copy, links rewritten by Safe Links)."""
    notes = notifications()
    for client in CLIENTS:
        for locale, (_, note_locale) in LOCALES.items():
            for mode in ("full", "minimal"):
                note = notes[(note_locale, mode)]
                text, expected = text_reply(client, locale, note)
                yield OwnCase(f"{client}/{locale}/{mode}/text", text, None, expected, note.sent)
                html, expected = html_reply(client, locale, note)
                yield OwnCase(f"{client}/{locale}/{mode}/html", None, html, expected, note.sent)
    for locale in INLINE_ANSWER:
        note = notes[(LOCALES[locale][1], "full")]
        for client in ("thunderbird", "k9", "apple_mail", "gmail_web"):
            text, expected = inline_reply(client, locale, note)
            yield OwnCase(f"{client}/{locale}/full/inline", text, None, expected, note.sent)
        text, expected = outlook_inline_reply(locale, note)
        yield OwnCase(f"outlook_desktop/{locale}/full/inline", text, None, expected, note.sent)
        for mode in ("full", "minimal"):
            banner_note = notes[(LOCALES[locale][1], mode)]
            text, expected = outlook_banner_reply(locale, banner_note)
            yield OwnCase(f"outlook_web/{locale}/{mode}/banner", text, None, expected, banner_note.sent)
        for client in ("thunderbird", "k9"):
            for mode in ("full", "minimal"):
                bottom_note = notes[(LOCALES[locale][1], mode)]
                text, expected = bottom_reply(client, locale, bottom_note)
                yield OwnCase(f"{client}/{locale}/{mode}/bottom", text, None, expected, bottom_note.sent)
