"""Reply extraction: split an inbound body into the author's new text and the trimmed history/signature."""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from html.parser import HTMLParser
from typing import Final

import nh3

__all__ = ["ExtractedReply", "extract_reply", "extract_reply_from_html", "html_to_text", "sanitize_html"]


@dataclass(frozen=True)
class ExtractedReply:
    """The author's new text, and what was trimmed from it (kept so a reader can expand it)."""

    visible: str  # the new text the author wrote, trimmed
    hidden: str  # what was trimmed (quoted history, signature), kept but hidden


# --------------------------------------------------------------------------------------------------
# Vocabulary. Everything is matched on one line (or a few joined lines) at a time, with bounded
# quantifiers only, so a pathological body (multi-megabyte lines of '>') stays linear.
# --------------------------------------------------------------------------------------------------

_MAX_HEADER_CHARS: Final = 400  # a reply header longer than this is prose, not a header
_MAX_HEADER_LINES: Final = 3  # clients wrap "On <date>, <name> <addr> wrote:" over at most 3 lines
_MAX_DATED_HEADER_LINES: Final = 6
_VERB_TAIL: Final = 80  # "…het volgende geschreven: ----" fits; a verb is never further from the end
_MAX_SIGNATURE_LINES: Final = 10
_MAX_SIGNATURE_LINE_CHARS: Final = 100

_DROP_ZERO_WIDTH: Final = dict.fromkeys(map(ord, "\u200b\u200c\u200d\u2060\ufeff"))
_QUOTE_LINE = re.compile(r"^[ \t]*>")
_BANNER = re.compile(r"<{2,}\s*$")  # ">> click here <<": '>' used as an arrow, not a quote
# A horizontal rule drawn with punctuation; absorbed into the cut when it sits right above a marker.
_RULE_LINE = re.compile(r"^[-_=*~—–#+.]{2,}$")
_UNDERSCORES = re.compile(r"_{2,}")
_WORD_CHAR = re.compile(r"\w")
_HANDLE = re.compile(r"\s@\S+")  # "@stekosteko" after a name
_LEADING_PUNCTUATION = re.compile(r"^\W+")
_SIG_DELIMITER = re.compile(r"^--[ \t]?$")  # RFC 3676 "-- " (many clients drop the trailing space)

# Verbs that end an attribution line: "..., Bob <bob@x> wrote:" in the languages seen in real mail.
_WROTE_VERBS: Final = (
    "wrote", "writes", "sent", "a écrit", "a ecrit", "écrit", "escribió", "escribio", "escreveu", "schrieb",
    "hat geschrieben", "geschrieben", "schreef", "het volgende geschreven", "napisał(a)", "napisała",
    "napisał", "napisal", "pisze", "skrev", "skriver", "ha scritto", "scrisse", "kirjoitti", "написал(а)",
    "написала", "написал", "написав", "пишет", "đã viết", "yazdı", "napsal", "napísal", "írta", "a scris",
    "έγραψε", "kirjutas", "rakstīja", "rašė", "napisao",
)  # fmt: skip
_CJK_VERBS: Final = ("写道", "寫道", "のメッセージ")
# Cheap test before the regex: the last word of the line must be the last word of a verb.
_VERB_ENDINGS: Final = tuple({v.split()[-1] for v in _WROTE_VERBS} | set(_CJK_VERBS))
_WROTE_END = re.compile(
    r"(?:(?<![\w-])(?:"
    + "|".join(re.escape(v).replace(r"\ ", r"\s+") for v in _WROTE_VERBS)
    + ")|"
    + "|".join(_CJK_VERBS)
    + r")\s*[:：]?\s*[-=*]*\s*$",
    re.IGNORECASE,
)
# German, Dutch and Scandinavian clients put the name after the verb: "Am 13.05.2026 schrieb Jan Jansen:".
_WROTE_BEFORE_NAME = re.compile(
    r"(?<![\w-])(?:schrieb|skrev|schreef|kirjoitti)\s+[^:.!?]{1,120}[:：]\s*$", re.IGNORECASE
)
_DIGIT = re.compile(r"\d")
_EMAIL = re.compile(r"[\w.+'-]{1,64}@[\w-]{1,63}(?:\.[\w-]{1,63})+")
_TIME_OR_YEAR = re.compile(r"\d{1,2}[:.h]\d{2}|(?<!\d)(?:19|20)\d{2}(?!\d)|\d{4}年")
# The first line of an attribution starts with a connective ("On", "Le", "Am", ...) or a date.
_HEADER_OPENER = re.compile(
    r"^[\s>*_-]*(?:(?:on|le|el|am|op|w\s+dniu|dnia|den|på|il|in\s+data|em|vào|pada|dne|dňa|"
    r"kl\.|в|у|在|於)\s|\S{0,12}\s*\d)",
    re.IGNORECASE,
)
_ON_DATE = re.compile(
    r"^[\s*_-]*on\s+(?:mon|tue|wed|thu|fri|sat|sun|jan|feb|mar|apr|may|jun|jul|aug|sep|oct|nov|dec|\d)",
    re.IGNORECASE,
)
# "reply On Wed, Apr 4, 2012 at 3:59 PM, bob@example.com wrote:" — the client glued the attribution to
# the author's last line; split it so the author's words survive.
_GLUED_ON = re.compile(
    r"^(?P<before>.*?\S)[ \t-]*(?P<header>\bOn\s+(?:mon|tue|wed|thu|fri|sat|sun|jan|feb|mar|apr|may|jun|jul"
    r"|aug|sep|oct|nov|dec|\d).{5,300})$",
    re.IGNORECASE,
)

# Outlook-style header blocks ("From: … Sent: … To: … Subject:") in the languages of the corpora.
_START_FIELDS: Final = (
    r"from|de|von|van|da|od|fra|från|frá|lähettäjä|от|від|发件人|寄件者|寄件人|差出人|kimden|feladó|"
    r"message\s+du|date|datum|fecha|data|dato|дата|日期|sent|envoyé(?:\s+le)?|gesendet|verzonden|"
    r"inviato|enviado(?:\s+el)?|enviada|wysłano|wysłane|sendt|skickat|lähetetty|отправлено|надіслано|"
    r"发送时间|傳送時間|送信日時|gönderildi|odesláno|elküldve"
)
_OTHER_FIELDS: Final = (
    r"to|cc|bcc|subject|reply-to|à|a|objet|sujet|copie\s+à|cc|an|betreff|kopie|aan|onderwerp|oggetto|"
    r"para|asunto|assunto|do|temat|dw|til|emne|kopi|till|ämne|kopia|vastaanottaja|aihe|кому|тема|"
    r"копия|收件人|主题|抄送|收件者|主旨|副本|宛先|件名|kime|konu|komu|předmět|címzett|tárgy"
)
_FIELD = re.compile(
    rf"^[ \t]*\*{{0,2}}[ \t]*(?:(?P<start>{_START_FIELDS})|(?P<other>{_OTHER_FIELDS}))[ \t]*\*{{0,2}}"
    r"[ \t]*[:：]",
    re.IGNORECASE,
)

_INLINE_FIELD = re.compile(
    r"\s(?:from|date|sent|to|subject|cc|von|gesendet|betreff|datum|envoyé|objet|sujet|van|verzonden|"
    r"onderwerp|inviato|oggetto|enviado|asunto|para|fra|sendt|emne|från|skickat|ämne|temat|от|тема|кому)"
    r"[ \t]*[:：]",
    re.IGNORECASE,
)
_ORIGINAL_NAMES: Final = (
    r"original\s+message|reply\s+message|original\s+e-?mail|ursprüngliche\s+nachricht|"
    r"antwort\s+nachricht|originalnachricht|oprindelig\s+meddelelse|oprindelig\s+besked|"
    r"opprinnelig\s+melding|message\s+d'origine|message\s+original|messaggio\s+originale|"
    r"mensaje\s+original|mensagem\s+original|oorspronkelijk\s+bericht|origineel\s+bericht|"
    r"originalmeddelande|ursprungligt\s+meddelande|alkuperäinen\s+viesti|исходное\s+сообщение|"
    r"оригинальное\s+сообщение|wiadomość\s+oryginalna|oryginalna\s+wiadomość|původní\s+zpráva|"
    r"eredeti\s+üzenet|原始邮件|原始郵件|元のメッセージ"
)
_FORWARD_NAMES: Final = (
    r"forwarded\s+message|forwarded\s+e-?mail|message\s+transféré|message\s+transmis|"
    r"weitergeleitete\s+nachricht|doorgestuurd\s+bericht|mensaje\s+reenviado|messaggio\s+inoltrato|"
    r"mensagem\s+encaminhada|vidarebefordrat\s+meddelande|videresendt\s+meddelelse|"
    r"videresendt\s+melding|przekazana\s+wiadomość|пересылаемое\s+сообщение|转发的邮件|転送されたメッセージ"
)
_DASHES = r"[-=_*~—–]{2,}"
_ORIGINAL_MARKER = re.compile(
    rf"^\s*(?:{_DASHES}\s*(?:{_ORIGINAL_NAMES})\s*[:：]?\s*{_DASHES}|(?:{_ORIGINAL_NAMES})\s*[:：]?\s*{_DASHES})\s*$",
    re.IGNORECASE,
)
_FORWARD_MARKER = re.compile(
    rf"^\s*(?:{_DASHES}\s*(?:{_FORWARD_NAMES})\s*[:：]?\s*{_DASHES}|"
    r"(?:begin\s+forwarded\s+message|début\s+du\s+message\s+réexpédié|anfang\s+der\s+weitergeleiteten\s+"
    r"nachricht|inizio\s+messaggio\s+inoltrato|comienzo\s+del\s+mensaje\s+reenviado|"
    r"início\s+da\s+mensagem\s+reencaminhada)\s*[:：])\s*$",
    re.IGNORECASE,
)
# Help desks and forums write a marker into their notifications and read only what is above it.
_REPLY_ABOVE = re.compile(
    r"(?:reply|respond|write|type|answer)\w*\s+(?:\w+\s+){0,3}above\s+this\s+line|"
    r"(?:oberhalb|über)\s+dieser\s+zeile|au-dessus\s+de\s+(?:cette|la)\s+ligne|"
    r"por\s+encima\s+de\s+esta\s+l[ií]nea|sopra\s+questa\s+riga|boven\s+deze\s+regel|"
    r"ovanför\s+denna\s+rad|over\s+denne\s+linje|powyżej\s+tej\s+linii",
    re.IGNORECASE,
)
# Notification digests append the conversation under a heading ("---\n*Previous Replies*").
_HISTORY_HEADING = re.compile(
    r"^(?P<open>[*_#\s]*)(?:previous\s+(?:replies|messages|discussion|posts|conversation)|earlier\s+messages|"
    r"conversation\s+history|message\s+history|vorherige\s+antworten|frühere\s+nachrichten|"
    r"réponses\s+précédentes|messages\s+précédents|historique\s+de\s+la\s+conversation|"
    r"respuestas\s+anteriores|mensajes\s+anteriores|risposte\s+precedenti|eerdere\s+antwoorden|"
    r"vorige\s+berichten)[*_:\s]*$",
    re.IGNORECASE,
)
_MAILING_LIST_FOOTER = re.compile(r"mailing\s+list\s*$|^to\s+unsubscribe\b", re.IGNORECASE)

# "Sent from my iPhone" and friends: a whole line, a short device name without sentence punctuation.
_DEVICE_WORD = r"(?:[\w'’&+./@()-]{1,40}(?:<[^>\s]{1,300}>)?|<[^>\s]{1,300}>)"  # "TypeApp<http://…>"
_DEVICE = rf"{_DEVICE_WORD}(?:\s+{_DEVICE_WORD}){{0,7}}"
_SENT_FROM = (
    r"(?:sent|envoyé|enviado|gesendet|inviato|verzonden|verstuurd|skickat|sendt|lähetetty|wysłane|"
    r"odesláno|отправлено|надіслано)\s+"
    r"(?:from|via|with|using|de|depuis|à\s+partir\s+de|von|mit|über|da|dal|dal\s+mio|van|vanaf|met|"
    r"från|fra|med|z|ze|с|з|desde|do)\s+"
)
_MOBILE_FOOTER = re.compile(
    r"^[\s–-]*(?:" + _SENT_FROM + _DEVICE + r"|"
    r"(?:get|download|télécharge[zr]?|scarica|descarga|baixe|hol\s+dir)\s+outlook\s+" + _DEVICE + r"|"
    r"von\s+meinem\s+" + _DEVICE + r"\s+gesendet|"
    r"[\w ]{1,30}から送信|发自我的\s*[\w ]{1,30}|從我的\s*[\w ]{1,30}\s*傳送|"
    r"sent\s+with\s+" + _DEVICE + r"|via\s+(?:mobile|iphone|android)"
    r")\s*[.!]?\s*$",
    re.IGNORECASE,
)
# Longer carrier footers ("Sent via the Samsung Galaxy S® 5, an AT&T 4G LTE smartphone"): allowed
# when a device or mail app is named before any comma, so "Sent from my desk, is much easier than
# my mobile phone." stays a sentence.
_DEVICE_FOOTER = re.compile(
    r"^[\s–-]*" + _SENT_FROM + r"[^,\n]{0,40}?\b(?:iphone|ipad|ipod|android|blackberry|samsung|galaxy|"
    r"mobile|phone|smartphone|tablet|device|htc|nokia|huawei|xiaomi|pixel|motorola|outlook|mail|gmail|"
    r"yahoo|aol|airmail|mailbox|spark|proton\w*|bluemail|typeapp|handy|mobiltelefon|téléphone|"
    r"portable|móvil|celular|telefono|cellulare)\b.{0,80}$",
    re.IGNORECASE,
)

# Closing formulas that open a signature block ("Regards,\nJane Doe\nCEO"). "Thanks" and "Cheers"
# are deliberately absent: they usually carry meaning ("Thanks, that fixed it") and stay visible.
_VALEDICTION = re.compile(
    r"^\s*(?:(?:(?:best|kind|warm|warmest|many|with\s+kind|with\s+best)\s+)?regards|"
    r"best|sincerely|yours\s+(?:truly|sincerely|faithfully)|respectfully|best\s+wishes|all\s+the\s+best|"
    r"cordialement|bien\s+cordialement|très\s+cordialement|bien\s+à\s+vous|salutations(?:\s+distinguées)?|"
    r"meilleures\s+salutations|sincères\s+salutations|mit\s+freundlichen\s+gr(?:ü|ue|u)(?:ß|ss)en|"
    r"freundliche\s+gr(?:ü|u)(?:ß|ss)e|viele\s+gr(?:ü|u)(?:ß|ss)e|beste\s+gr(?:ü|u)(?:ß|ss)e|"
    r"liebe\s+gr(?:ü|u)(?:ß|ss)e|herzliche\s+gr(?:ü|u)(?:ß|ss)e|mfg|lg|vg|"
    r"met\s+vriendelijke\s+groet(?:en)?|vriendelijke\s+groet(?:en)?|groeten|hartelijke\s+groet(?:en)?|"
    r"pozdrawiam(?:\s+serdecznie)?|z\s+poważaniem|z\s+powazaniem|serdecznie\s+pozdrawiam|"
    r"med\s+venlig(?:e)?\s+hilsen?|venlig\s+hilsen|hilsen|mvh|kh|med\s+vänlig(?:a)?\s+hälsning(?:ar)?|"
    r"vänliga\s+hälsningar|med\s+vennlig\s+hilsen|vennlig\s+hilsen|ystävällisin\s+terveisin|terveisin|"
    r"cordiali\s+saluti|distinti\s+saluti|saluti|un\s+saluto|atentamente|saludos(?:\s+cordiales)?|"
    r"un\s+saludo|cordialmente|atenciosamente|abraços|cumprimentos|с\s+уважением|"
    r"с\s+наилучшими\s+пожеланиями)"
    r"\s*[,.!]?\s*$",
    re.IGNORECASE,
)
# First words of a short closing ("Regards, Roman", "Thanks!") — used to tell a sign-off from an answer.
_SIGNOFF_START = re.compile(
    r"^\s*(?:regards|best|kind\s+regards|thanks|thank\s+you|cheers|sincerely|cordialement|merci|"
    r"bien\s+à\s+vous|grüße|gruß|mfg|groeten|pozdrawiam|hilsen|mvh|saluti|saludos|abraços|спасибо)\b",
    re.IGNORECASE,
)
_GREETING = re.compile(
    r"^\s*(?:hi|hello|hey|dear|good\s+(?:morning|afternoon|evening)|bonjour|bonsoir|salut|cher|chère|"
    r"hallo|liebe|lieber|sehr\s+geehrte|guten\s+(?:tag|morgen|abend)|moin|hej|hei|hola|estimad[oa]|"
    r"buongiorno|ciao|caro|cara|olá|oi|prezado|beste|geachte|dzień\s+dobry|cześć|witam|szanown[ya]|"
    r"привет|здравствуйте|добрый\s+день|уважаем)\b",
    re.IGNORECASE,
)
_PHONE = re.compile(r"(?<![\w/])\+?\(?\d[\d\s().-]{5,22}\d(?![\w/])")
_URL = re.compile(r"https?://|www\.", re.IGNORECASE)
_CONTACT_LABEL = re.compile(
    r"^\W{0,3}(?:skype|linkedin|twitter|github|tel|phone|mobile|mob|cell|fax|office|direct|tél|"
    r"téléphone|portable|mobil|handy|telefon)\b",
    re.IGNORECASE,
)
_ABBREVIATION = re.compile(r"(?:\w+\.){2,}|[A-Z][a-z]{0,2}\.")
_POSTSCRIPT = re.compile(r"^\s*p\.?\s?s\.?\b", re.IGNORECASE)


# --------------------------------------------------------------------------------------------------
# Plain text
# --------------------------------------------------------------------------------------------------


def _normalise(text: str) -> str:
    """CRLF/CR to LF; (narrow) no-break spaces to plain spaces so matching and output agree."""
    return text.replace("\r\n", "\n").replace("\r", "\n").replace("\xa0", " ").replace("\u202f", " ")


def _clean(line: str) -> str:
    return line.translate(_DROP_ZERO_WIDTH).strip()


def _is_quote(line: str) -> bool:
    return _QUOTE_LINE.match(line) is not None


def _is_rule(line: str) -> bool:
    return _RULE_LINE.match(line) is not None


def _split_glued_headers(lines: list[str]) -> list[str]:
    """Put an attribution that a client glued to the author's last line on a line of its own."""
    out: list[str] = []
    for i, line in enumerate(lines):
        if "on" in line.lower() and len(line) <= _MAX_HEADER_CHARS and _ends_attribution(lines, i):
            glued = _GLUED_ON.match(line) if not _is_quote(line) else None
            if glued and _WORD_CHAR.search(glued["before"]) and _TIME_OR_YEAR.search(glued["header"]):
                out.extend((glued["before"], glued["header"]))
                continue
        out.append(line)
    return out


def _ends_attribution(lines: Sequence[str], i: int) -> bool:
    # The "wrote:" may come a few wrapped lines later ("…, at 12:47 PM,\n Example <\naddr>wrote:").
    for j in range(i, min(i + _MAX_HEADER_LINES + 1, len(lines))):
        if (j > i and not lines[j].strip()) or len(lines[j]) > _MAX_HEADER_CHARS:
            return False
        if _ends_with_verb(lines[j]):
            return True
    return False


@dataclass(frozen=True)
class _Header:
    end: int  # exclusive line index
    strong: bool  # carries a date or an address: safe to cut even when no '>' quote follows


def _header_continuation(line: str) -> bool:
    # "> wrote:" / ">:" — a wrapped attribution whose tail a client prefixed with '>'.
    return bool(line) and (not _is_quote(line) or (len(line) <= 12 and line.endswith(":")))


def _ends_with_verb(text: str) -> bool:
    # The verb closes the line: searching only the tail keeps this linear on long lines.
    tail = text[-_VERB_TAIL:]
    if not tail.rstrip(" \t:：-=*").lower().endswith(_VERB_ENDINGS):
        return False
    return _WROTE_END.search(tail) is not None


def _is_attribution(joined: str) -> bool | None:
    """None when not an attribution; else whether it is strong (has a date/time or an address)."""
    if len(joined) > _MAX_HEADER_CHARS:
        return None
    ends_with_colon = joined.endswith((":", "："))
    if _ends_with_verb(joined):
        if not _WROTE_END.sub("", joined[-_VERB_TAIL:]).strip(" -=*>") and len(joined) <= _VERB_TAIL:
            return None  # a bare "wrote:" with no one who wrote
    elif not ends_with_colon:
        return None
    elif not (_WROTE_BEFORE_NAME.search(joined) and _HEADER_OPENER.match(joined)):
        # "2014-10-17 11:28 GMT+03:00 Postmaster <postmaster@x>:" — date + address + colon, no verb.
        dated = _TIME_OR_YEAR.search(joined) is not None and _DIGIT.search(joined[:30]) is not None
        return True if dated and _has_address(joined) else None
    return _has_address(joined) or _DIGIT.search(joined) is not None


def _has_address(text: str) -> bool:
    return "@" in text and _EMAIL.search(text) is not None


def _match_attribution(lines: Sequence[str], i: int) -> _Header | None:
    first = lines[i]
    if len(first) > _MAX_HEADER_CHARS:
        return None
    # "On Tue, Apr 11, 2017 at 10:07 PM John Smith\n\n<\nmailto:…>\n> wrote:" (Polymail) spreads a
    # dated attribution over blank lines; only such a dated opener may reach that far.
    dated = _ON_DATE.match(first) is not None
    limit = _MAX_DATED_HEADER_LINES if dated else _MAX_HEADER_LINES
    # Only a line that opens like an attribution *and* carries its date may be joined with the next
    # ones: "Am heutigen Tage" above "Am So., 1. Jan. 2023 … schrieb …" is text, then a header.
    joinable = _HEADER_OPENER.match(first) is not None and _DIGIT.search(first) is not None
    parts: list[str] = []
    j = i
    while j < len(lines) and j - i < limit:
        if j > i:
            if dated and not lines[j]:
                j += 1
                continue
            if not joinable or not _header_continuation(lines[j]):
                break
        parts.append(lines[j].lstrip(">").strip() if j > i else lines[j])
        strong = _is_attribution(" ".join(parts))
        if strong is not None:
            return _Header(j + 1, strong)
        j += 1
    return None


def _match_date_email_line(lines: Sequence[str], i: int) -> _Header | None:
    # "2011/4/7 Nathan <support@example.com>" with no colon: only trusted when a quote follows it.
    line = lines[i]
    if len(line) <= _MAX_HEADER_CHARS and _DIGIT.match(line) and _has_address(line):
        return _Header(i + 1, False)
    return None


def _next_content(lines: Sequence[str], i: int) -> int:
    while i < len(lines) and not lines[i]:
        i += 1
    return i


def _followed_by_quote(lines: Sequence[str], end: int) -> bool:
    nxt = _next_content(lines, end)
    return nxt < len(lines) and _is_quote(lines[nxt])


def _field_block_end(lines: Sequence[str], i: int) -> int | None:
    """End of an Outlook header block starting at line i, or None."""
    first_line = lines[i]
    first = _FIELD.match(first_line)
    if first is None:
        return None
    # HTML flattened "<b>From: bob@x</b> <b>Date: …</b>" onto one line.
    fields = 1 + len(_INLINE_FIELD.findall(first_line, first.end()))
    has_start = first["start"] is not None
    continuation = 0
    j = i + 1
    while j < len(lines) and j - i <= 12:
        line = lines[j]
        if not line:
            break
        match = _FIELD.match(line)
        if match:
            fields += 1
            has_start = has_start or match["start"] is not None
            continuation = 0
        else:
            continuation += 1  # a wrapped "From: Name <\naddress>" or a long subject
            if continuation > 2:
                break
        j += 1
    if fields >= 2 and has_start and (first["start"] is not None or fields >= 3):
        return j
    return None


def _is_history_heading(lines: Sequence[str], i: int) -> bool:
    heading = _HISTORY_HEADING.match(lines[i])
    if heading is None:
        return False
    if heading["open"].strip():  # emphasised ("*Previous Replies*", "## Earlier messages")
        return True
    k = i - 1
    while k >= 0 and not lines[k]:
        k -= 1
    return k >= 0 and _is_rule(lines[k])


def _is_mailing_list_footer(lines: Sequence[str], i: int) -> bool:
    # Mailman: a row of underscores, then "<list> mailing list", address, listinfo URL.
    if not _UNDERSCORES.fullmatch(lines[i]):
        return False
    nxt = _next_content(lines, i + 1)
    return nxt < len(lines) and nxt - i <= 2 and _MAILING_LIST_FOOTER.search(lines[nxt]) is not None


def _cut_marker_end(lines: Sequence[str], i: int) -> int | None:
    """If a marker after which everything is history starts at line i, the end of the marker."""
    line = lines[i]
    short = len(line) <= 200
    if short and (_ORIGINAL_MARKER.match(line) or _SIG_DELIMITER.match(line)):
        return i + 1
    if short and (_MOBILE_FOOTER.match(line) or _DEVICE_FOOTER.match(line) or _REPLY_ABOVE.search(line)):
        return i + 1
    if short and (_is_history_heading(lines, i) or _is_mailing_list_footer(lines, i)):
        return i + 1
    return _field_block_end(lines, i)


def _footer_start(lines: Sequence[str], i: int) -> int:
    # "Jane Doe\nSent from my iPhone" set apart by a blank line is one mobile signature block.
    is_footer = _MOBILE_FOOTER.match(lines[i]) or _DEVICE_FOOTER.match(lines[i])
    if is_footer and i >= 3 and not lines[i - 2] and _looks_like_name(lines[i - 1]) and any(lines[: i - 2]):
        return i - 1
    return i


def _extend_cut_upwards(lines: Sequence[str], cut: int) -> int:
    # Blank lines and rules ("-----", "_____") right above a marker belong to the quoted part.
    while cut > 0 and (not lines[cut - 1] or _is_rule(lines[cut - 1])) and not _is_quote(lines[cut - 1]):
        cut -= 1
    return cut


@dataclass
class _Scan:
    end: int  # the author's region is lines[:end]; what follows is history
    keep_from: int | None = None  # a forwarded message starts here and stays visible verbatim
    headers: set[int] = field(default_factory=set)  # attribution lines that introduce a '>' block


def _scan(lines: Sequence[str]) -> _Scan:
    """Find where the author's text ends, and which attribution lines belong to '>' blocks.

    A marker with no author text above it is ignored: a body that starts with a header block is a
    forward without comment, and its content is the message.
    """
    headers: set[int] = set()
    has_content = False
    i = 0
    while i < len(lines):
        line = lines[i]
        if not line or _is_quote(line):
            i += 1
            continue
        if _FORWARD_MARKER.match(line):
            # A forwarded message is what the author is sending: keep it, as talon does.
            return _Scan(i, i, headers)
        header = _match_attribution(lines, i)
        if header is None and _followed_by_quote(lines, i + 1):
            header = _match_date_email_line(lines, i)
        if header is not None:
            if _followed_by_quote(lines, header.end):
                headers.update(range(i, header.end))
                i = header.end
                continue
            if header.strong:
                if has_content:
                    return _Scan(_extend_cut_upwards(lines, i), None, headers)
                i = header.end
                continue
        marker_end = _cut_marker_end(lines, i)
        if marker_end is not None:
            if has_content:
                return _Scan(_extend_cut_upwards(lines, _footer_start(lines, i)), None, headers)
            i = marker_end
            continue
        has_content = True
        i += 1
    return _Scan(len(lines), None, headers)


def _classify(lines: Sequence[str], end: int, headers: set[int]) -> list[str]:
    """One letter per line: T(ext), Q(uote), H(eader of a quote), B(lank)."""
    kinds: list[str] = []
    for i in range(end):
        if i in headers:
            kinds.append("H")
        elif not lines[i]:
            kinds.append("B")
        else:
            kinds.append("Q" if _is_quote(lines[i]) else "T")
    _absorb_lazy_continuations(lines, kinds)
    _release_decorations(lines, kinds)
    return kinds


def _continues_quote(previous: str, line: str) -> bool:
    """Whether ``line`` is the wrapped tail of the quoted ``previous`` line rather than an answer."""
    first = line[:1]
    if (first.isalpha() and first.islower()) or not first.isalnum():
        return True  # "ignissim odio?", "_nonce=3dd518)": a word or URL cut in two
    quoted = previous.lstrip(" \t>")
    return len(quoted) >= 60 and not quoted.endswith((".", "!", "?", ":", ";"))


def _absorb_lazy_continuations(lines: Sequence[str], kinds: list[str]) -> None:
    # A quoted line re-wrapped by the client loses its '>' ("> … pharetra d\nignissim odio?\n>"):
    # one or two unprefixed lines squeezed between quote lines are still the quote — unless they
    # read as an answer typed between two quoted lines ("> Question?\nYes.\n> Next?").
    i = 0
    while i < len(kinds):
        if kinds[i] == "T" and i > 0 and kinds[i - 1] == "Q":
            j = i
            while j < len(kinds) and kinds[j] == "T" and j - i < 2:
                j += 1
            if j < len(kinds) and kinds[j] == "Q" and _continues_quote(lines[i - 1], lines[i]):
                for k in range(i, j):
                    kinds[k] = "Q"
            i = j
        else:
            i += 1


def _release_decorations(lines: Sequence[str], kinds: list[str]) -> None:
    # A lone banner line glued inside text (">>> >>> http://x <<<") uses '>' as an arrow, not a quote.
    for i in range(1, len(kinds) - 1):
        if kinds[i] == "Q" and kinds[i - 1] == "T" and kinds[i + 1] == "T" and _BANNER.search(lines[i]):
            kinds[i] = "T"


@dataclass
class _Segment:
    kind: str  # "T" (author text) or "Q" (quote, with its attribution)
    lines: list[int] = field(default_factory=list)


def _segments(kinds: Sequence[str]) -> list[_Segment]:
    """Group lines; blank lines stay with the segment above (as talon does when it cuts a quote)."""
    segments: list[_Segment] = []
    for i, kind in enumerate(kinds):
        if kind == "B":
            if not segments:
                segments.append(_Segment("T"))
            segments[-1].lines.append(i)
            continue
        seg_kind = "Q" if kind in ("Q", "H") else "T"
        # An attribution opens a new quote: what was quoted above it is not that history.
        opens_history = kind == "H" and (i == 0 or kinds[i - 1] != "H")
        if not segments or segments[-1].kind != seg_kind or opens_history:
            segments.append(_Segment(seg_kind))
        segments[-1].lines.append(i)
    return segments


def _content(lines: Sequence[str], segment: _Segment) -> list[str]:
    return [lines[i] for i in segment.lines if lines[i]]


def _is_signoff(content: Sequence[str]) -> bool:
    return 0 < len(content) <= 2 and _SIGNOFF_START.match(content[0]) is not None


def _is_name_block(content: Sequence[str]) -> bool:
    # "Stefano Costa @stekosteko / Editor, Journal of Open Archaeology Data" under a quote: a signature.
    if not content or len(content) > 4 or _is_signoff(content):
        return False
    return all(_looks_like_name(_HANDLE.sub("", line)) for line in content)


def _is_answer(lines: Sequence[str], segment: _Segment) -> bool:
    content = _content(lines, segment)
    return bool(content) and not _is_signoff(content) and not _is_name_block(content)


def _is_greeting(lines: Sequence[str], before: Sequence[_Segment]) -> bool:
    content = [line for seg in before if seg.kind == "T" for line in _content(lines, seg)]
    return len(content) == 1 and (_GREETING.match(content[0]) is not None or content[0].endswith(","))


def _select_visible(lines: Sequence[str], scan: _Scan) -> list[int]:
    """Indices of the author's lines in lines[:scan.end].

    Quotes are dropped, except where an answer is written below them: in an interleaved reply (two
    or more answers below quotes) and below a quote that the author introduced with a greeting only
    ("Hi Bob,\n> question\nanswer"). Kept quotes lose their attribution line. A name/title block
    left under the last quote is a signature.
    """
    kinds = _classify(lines, scan.end, scan.headers)
    segments = _segments(kinds)
    answered = {
        n
        for n, seg in enumerate(segments[:-1])
        if seg.kind == "Q" and segments[n + 1].kind == "T" and _is_answer(lines, segments[n + 1])
    }
    interleaved = len(answered) >= 2
    last_quote = max((n for n, seg in enumerate(segments) if seg.kind == "Q"), default=-1)
    text_above = any(seg.kind == "T" and _content(lines, seg) for seg in segments[: max(last_quote, 0)])
    visible: list[int] = []
    for n, seg in enumerate(segments):
        if seg.kind == "T":
            content = _content(lines, seg)
            if n > last_quote and text_above and content and _is_name_block(content):
                continue
            visible.extend(seg.lines)
        elif n in answered and (interleaved or _is_greeting(lines, segments[:n])):
            visible.extend(_without_attribution(seg.lines, kinds))
        elif _is_citation(segments, n, kinds) and _has_text(lines, segments[:n]):
            visible.extend(seg.lines)
    return visible


def _has_text(lines: Sequence[str], segments: Sequence[_Segment]) -> bool:
    return any(seg.kind == "T" and _content(lines, seg) for seg in segments)


def _is_citation(segments: Sequence[_Segment], n: int, kinds: Sequence[str]) -> bool:
    # "Reply\n> a line I quote\n\nOn <date>, Bob wrote:\n> history": the history starts at the
    # attribution; a quote the author placed above it is part of the reply.
    seg = segments[n]
    if seg.kind != "Q" or kinds[seg.lines[0]] == "H" or n + 1 >= len(segments):
        return False
    following = segments[n + 1]
    return following.kind == "Q" and kinds[following.lines[0]] == "H"


def _without_attribution(indices: Iterable[int], kinds: Sequence[str]) -> list[int]:
    kept: list[int] = []
    after_header = False
    for i in indices:
        if kinds[i] == "H" or (after_header and kinds[i] == "B"):
            after_header = True
            continue
        after_header = False
        kept.append(i)
    return kept


def _is_contact(line: str) -> bool:
    if _has_address(line) or _URL.search(line) or _CONTACT_LABEL.match(line):
        return True
    phone = _PHONE.search(line)
    return phone is not None and sum(c.isdigit() for c in phone.group()) >= 7


def _looks_like_name(line: str) -> bool:
    """A name or title line: short, and its longer words capitalised ("Jane Doe", "Head of Sales")."""
    words = line.split()
    if not 1 <= len(words) <= 6 or len(line) > 60 or line.endswith((":", ",", "?", "!")):
        return False
    # "Sure." / "Yes, at 10." are answers; "Ph.D." / "Jr." / "Inc." end names and titles.
    if line.endswith(".") and (len(words) == 1 or not _ABBREVIATION.fullmatch(words[-1])):
        return False
    letters = [w for w in (_LEADING_PUNCTUATION.sub("", w) for w in words) if w[:1].isalpha()]
    if not letters or not letters[0][0].isupper():
        return False
    return all(w[0].isupper() for w in letters if len(w) >= 4)


def _is_sentence(line: str) -> bool:
    words = len(line.split())
    return words >= 9 or (words >= 5 and line.endswith((".", "!", "?")))


def _signature_start(lines: Sequence[str], visible: Sequence[int]) -> int | None:
    """Position in ``visible`` where a trailing signature block starts, or None.

    Two shapes are recognised, walking up from the end while the tail stays short:
    a closing formula on its own line ("Regards," + name/title lines), and a contact block
    (a name or a rule, then lines with at least two of phone / e-mail / URL) — "John Doe, FCLS /
    Mailgun Inc / 555-941-0697" alone has one contact line and stays visible.
    """
    content_positions = [p for p, i in enumerate(visible) if lines[i]]
    if len(content_positions) < 2:
        return None
    first_content = content_positions[0]
    best: int | None = None
    tail_lines = contacts = 0
    prose = False
    for p in range(len(visible) - 1, first_content, -1):
        line = lines[visible[p]]
        if not line:
            continue
        if len(line) > _MAX_SIGNATURE_LINE_CHARS or _is_quote(lines[visible[p]]) or _POSTSCRIPT.match(line):
            break
        tail_lines += 1
        if tail_lines > _MAX_SIGNATURE_LINES:
            break
        contacts += _is_contact(line)
        prose = prose or _is_sentence(line)
        if _VALEDICTION.match(line):
            # "Regards,\nJane" is part of the message; "Regards,\nJane Doe\nOffice manager" is a signature.
            if tail_lines >= 3:
                best = p
            continue
        opens_block = not lines[visible[p - 1]] or _is_rule(lines[visible[p - 1]])
        if not prose and contacts >= 2 and opens_block and (_looks_like_name(line) or _is_rule(line)):
            best = p
    return best


def _strip_trailing_noise(lines: Sequence[str], visible: list[int]) -> list[int]:
    # Trailing blank lines and rules left by a cut carry nothing.
    end = len(visible)
    while end > 0 and (not lines[visible[end - 1]] or _is_rule(lines[visible[end - 1]])):
        end -= 1
    return visible[:end]


def _join(lines: Sequence[str], indices: Iterable[int]) -> str:
    # Trailing blanks are invisible noise (and format=flowed artefacts), never the author's words.
    return _trim("\n".join(lines[i].rstrip() for i in indices))


def _trim(text: str) -> str:
    return text.strip().lstrip("\ufeff").strip()


def extract_reply(text: str) -> ExtractedReply:
    """Split a plain-text body into what the author wrote and the quoted history/signature."""
    raw = _split_glued_headers(_normalise(text).split("\n"))
    lines = [_clean(line) for line in raw]  # analysis reads cleaned lines; the output keeps raw ones
    scan = _scan(lines)
    visible = _select_visible(lines, scan)
    if scan.keep_from is not None:
        visible = [*visible, *range(scan.keep_from, len(lines))]
    else:
        visible = _strip_trailing_noise(lines, visible)
    if not any(lines[i] for i in visible):
        # Everything looks quoted: better to show the whole message than to lose it.
        return ExtractedReply(_join(raw, range(len(raw))), "")
    if scan.keep_from is None:
        start = _signature_start(lines, visible)
        if start is not None:
            visible = _strip_trailing_noise(lines, visible[:start])
    kept = set(visible)
    return ExtractedReply(_join(raw, visible), _join(raw, (i for i in range(len(raw)) if i not in kept)))


# --------------------------------------------------------------------------------------------------
# HTML
# --------------------------------------------------------------------------------------------------


def _tags(names: str) -> frozenset[str]:
    return frozenset(names.split())


_VOID_TAGS: Final = _tags("area base br col embed hr img input link meta param source track wbr")
# Rendered as nothing at all (head, scripts, styles, embedded objects).
_SKIPPED_TAGS: Final = frozenset(
    {"head", "style", "script", "title", "template", "noscript", "iframe", "object", "svg", "canvas", "xml"}
)
_BLOCK_TAGS: Final = _tags(
    "div section article header footer main nav aside center address form fieldset figure "
    "figcaption dl dt dd table tbody thead tfoot caption tr ul ol li body html"
)
_PARAGRAPH_TAGS: Final = frozenset({"p", "h1", "h2", "h3", "h4", "h5", "h6", "pre"})
# A block tag opening while a <p> is open closes it (HTML's implied end tags, the useful subset).
_CLOSES_P: Final = _BLOCK_TAGS | _PARAGRAPH_TAGS | {"blockquote", "hr"}
_HTML_SPACE = re.compile(r"[ \t\n\r\f]+")
_MAX_DEPTH: Final = 120
# Private-use characters marking, in the rendered text, where the quoted part and signatures start.
_CUT: Final = "\ue000"
_SIG_OPEN: Final = "\ue001"
_SIG_CLOSE: Final = "\ue002"
_SENTINELS = re.compile("[\ue000-\ue002]")
_SIGNATURE_SENTINELS = re.compile("[\ue001\ue002]")
_BLANK_LINES = re.compile(r"\n{3,}")


class _Node:
    __slots__ = ("attrs", "children", "parent", "tag", "text")

    def __init__(self, tag: str, attrs: dict[str, str], parent: _Node | None, text: str = "") -> None:
        self.tag = tag
        self.attrs = attrs
        self.parent = parent
        self.text = text
        self.children: list[_Node] = []

    def classes(self) -> list[str]:
        return self.attrs.get("class", "").lower().split()

    def text_content(self, limit: int = 300) -> str:
        """The first ``limit`` characters of the text under this node, whitespace collapsed."""
        out: list[str] = []
        size = 0
        stack = [self]
        while stack and size < limit:
            node = stack.pop()
            if node.tag == "#text":
                out.append(node.text)
                size += len(node.text)
            elif node.tag not in _SKIPPED_TAGS:
                stack.extend(reversed(node.children))
        return _HTML_SPACE.sub(" ", "".join(out)).strip()


class _TreeBuilder(HTMLParser):
    """A forgiving DOM builder on the stdlib parser: unknown or unbalanced tags never raise."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.root = _Node("#root", {}, None)
        self.stack = [self.root]

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self._implied_end(tag)
        node = _Node(tag, {k.lower(): v or "" for k, v in attrs}, self.stack[-1])
        self.stack[-1].children.append(node)
        # Past _MAX_DEPTH, elements are kept flat so rendering can never exhaust the recursion limit.
        if tag not in _VOID_TAGS and len(self.stack) < _MAX_DEPTH:
            self.stack.append(node)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self._implied_end(tag)
        self.stack[-1].children.append(_Node(tag, {k.lower(): v or "" for k, v in attrs}, self.stack[-1]))

    def handle_endtag(self, tag: str) -> None:
        for depth in range(len(self.stack) - 1, 0, -1):
            if self.stack[depth].tag == tag:
                del self.stack[depth:]
                return

    def handle_data(self, data: str) -> None:
        self.stack[-1].children.append(_Node("#text", {}, self.stack[-1], _SENTINELS.sub("", data)))

    def _implied_end(self, tag: str) -> None:
        top = self.stack[-1].tag
        if (tag in _CLOSES_P and top == "p") or (tag == top and tag in {"li", "tr", "td", "th", "dt", "dd"}):
            self.stack.pop()


def _parse_html(html: str) -> _Node:
    builder = _TreeBuilder()
    builder.feed(html)
    builder.close()
    return builder.root


class _TextBuilder:
    """Accumulates rendered text; block boundaries ask for *at least* n line breaks."""

    def __init__(self) -> None:
        self.parts: list[str] = []
        self.newlines = 0  # trailing newlines already emitted
        self.empty = True
        self.space = False  # a collapsed space is pending

    def text(self, data: str, *, pre: bool = False) -> None:
        if not pre:
            data = _HTML_SPACE.sub(" ", data)
            if not data.strip(" "):  # &nbsp; is content: Word's "<p>&nbsp;</p>" is a blank line
                self.space = self.space or (bool(data) and not self.empty and self.newlines == 0)
                return
            if self.newlines or self.empty:
                data = data.lstrip(" ")
            elif data.startswith(" "):
                self.space, data = True, data[1:]
            if self.space and not self.newlines and not self.empty:
                self.parts.append(" ")
            self.space = data.endswith(" ")
            data = data.rstrip(" ")
        self.parts.append(data)
        self.empty = False
        stripped = data.rstrip("\n")
        self.newlines = len(data) - len(stripped) if stripped else self.newlines + len(data)

    def hard_break(self) -> None:
        self.parts.append("\n")
        self.newlines += 1
        self.empty = False
        self.space = False

    def block(self, count: int) -> None:
        if self.empty:
            return
        if self.newlines < count:
            self.parts.append("\n" * (count - self.newlines))
            self.newlines = count
        self.space = False

    def marker(self, char: str) -> None:
        self.parts.append(char)

    def value(self) -> str:
        return "".join(self.parts)


@dataclass
class _Renderer:
    """Walks the tree in document order; can plant sentinels where quotes and signatures start."""

    find_quotes: bool = False
    cut_done: bool = False
    list_stack: list[list[int]] = field(default_factory=list)  # per open list: [ordered?, counter]

    def render(self, node: _Node, out: _TextBuilder) -> None:
        for child in node.children:
            self._node(child, out)

    def _node(self, node: _Node, out: _TextBuilder) -> None:
        tag = node.tag
        if tag == "#text":
            out.text(node.text, pre=_inside(node, "pre"))
            return
        if tag in _SKIPPED_TAGS:
            return
        if self.find_quotes and not self.cut_done and _is_quote_container(node):
            self.cut_done = True
            out.block(1)
            out.marker(_CUT)
            out.block(1)
        signature = self.find_quotes and _is_signature_container(node)
        if signature:
            out.block(1)
            out.marker(_SIG_OPEN)
        self._element(node, out)
        if signature:
            out.block(1)
            out.marker(_SIG_CLOSE)

    def _element(self, node: _Node, out: _TextBuilder) -> None:
        tag = node.tag
        if tag == "br":
            out.hard_break()
        elif tag == "hr":
            # A visible rule; the text pass absorbs it when an Outlook header block follows.
            out.block(1)
            out.text("---")
            out.block(1)
        elif tag == "blockquote":
            self._blockquote(node, out)
        elif tag in ("ul", "ol"):
            out.block(2 if not self.list_stack else 1)
            self.list_stack.append([tag == "ol", _int(node.attrs.get("start"), 1)])
            self.render(node, out)
            self.list_stack.pop()
            out.block(2 if not self.list_stack else 1)
        elif tag == "li":
            out.block(1)
            out.text(self._bullet(), pre=True)
            self.render(node, out)
            out.block(1)
        elif tag in ("td", "th"):
            out.text(" ")
            self.render(node, out)
            out.text(" ")
        elif tag in _PARAGRAPH_TAGS:
            # Word writes one <p class=MsoNormal> per line with zero margins: a line, not a paragraph.
            gap = 1 if "msonormal" in node.classes() else 2
            out.block(gap)
            self.render(node, out)
            out.block(gap)
        elif tag in _BLOCK_TAGS:
            out.block(1)
            self.render(node, out)
            out.block(1)
        else:
            self.render(node, out)

    def _bullet(self) -> str:
        if not self.list_stack:
            return "- "
        ordered, counter = self.list_stack[-1]
        indent = "  " * (len(self.list_stack) - 1)
        if ordered:
            self.list_stack[-1][1] = counter + 1
            return f"{indent}{counter}. "
        return f"{indent}- "

    def _blockquote(self, node: _Node, out: _TextBuilder) -> None:
        inner = _TextBuilder()
        self.render(node, inner)
        body = _tidy(inner.value())
        out.block(2)
        if body:
            for line in body.split("\n"):
                rest = line.lstrip(_CUT + _SIG_OPEN + _SIG_CLOSE)
                for sentinel in line[: len(line) - len(rest)]:
                    out.marker(sentinel)  # keep the cut/signature positions through the quoting
                out.text(f">{rest}" if rest.startswith(">") or not rest else f"> {rest}", pre=True)
                out.hard_break()
        out.block(2)


def _int(value: str | None, default: int) -> int:
    try:
        return int(value) if value is not None else default
    except ValueError:
        return default


def _inside(node: _Node, tag: str) -> bool:
    parent = node.parent
    while parent is not None:
        if parent.tag == tag:
            return True
        parent = parent.parent
    return False


# Outlook (web, desktop, Mac, new Outlook), Yahoo, AOL, Zimbra, Proton, Gmail, Thunderbird.
_ID_CONTAINERS: Final = (
    "divrplyfwdmsg",
    "appendonsend",
    "olk_src_body_section",
    "mail-editor-reference-message-container",
    "aolmsgpart",
)
_CLASS_CONTAINER = re.compile(r"(?:^|_)(?:gmail_quote|moz-cite-prefix|protonmail_quote)|yahoo_quoted")
_FIELD_START = re.compile(rf"^\s*(?:{_START_FIELDS})\s*[:：]", re.IGNORECASE)
_FORWARD_START = re.compile(rf"^\W*(?:{_FORWARD_NAMES})", re.IGNORECASE)


def _is_quote_container(node: _Node) -> bool:
    """Elements that mail clients put around the quoted message when replying."""
    node_id = node.attrs.get("id", "").lower()
    if node_id.removeprefix("x_").startswith(_ID_CONTAINERS) or "yahoo_quoted" in node_id:
        return True
    if node.attrs.get("name") == "messageReplySection" or node.attrs.get("data-marker") == "__QUOTED_TEXT__":
        return True
    if node.tag != "blockquote" and any(_CLASS_CONTAINER.search(c) for c in node.classes()):
        # Gmail wraps forwarded messages in the same container: a forward is the content.
        return not _FORWARD_START.match(node.text_content(120))
    if node.tag == "div":
        style = node.attrs.get("style", "").lower().replace(" ", "")
        if "border-top:solid" in style or "border-top-style:solid" in style:
            # Outlook's separator: a top border, then "From: … Sent: …" (Word: padding 3pt).
            return "padding:3.0pt" in style or _FIELD_START.match(node.text_content(80)) is not None
    return False


def _is_signature_container(node: _Node) -> bool:
    classes = node.classes()
    return (
        any(c.removeprefix("x_") in ("gmail_signature", "moz-signature") for c in classes)
        or node.attrs.get("id", "").lower().removeprefix("x_")
        in ("signature", "applemailsignature", "ms-outlook-mobile-signature")
        or node.attrs.get("data-smartmail") == "gmail_signature"
    )


def _tidy(text: str) -> str:
    lines = [line.rstrip() for line in text.replace("\xa0", " ").split("\n")]
    return _BLANK_LINES.sub("\n\n", "\n".join(lines)).strip()


def _render(html: str, *, find_quotes: bool) -> str:
    out = _TextBuilder()
    _Renderer(find_quotes=find_quotes).render(_parse_html(html), out)
    return _tidy(out.value())


def html_to_text(html: str) -> str:
    """HTML body → plain text for extract_reply: blocks become lines, <blockquote> becomes '> ' lines."""
    return _render(html, find_quotes=False)


def _split_signatures(text: str) -> tuple[str, str]:
    kept: list[str] = []
    signatures: list[str] = []
    for n, chunk in enumerate(_SIGNATURE_SENTINELS.split(text)):
        (signatures if n % 2 else kept).append(chunk)
    return "".join(kept), "\n".join(s.strip() for s in signatures if s.strip())


def extract_reply_from_html(html: str) -> ExtractedReply:
    """Cut an HTML reply at the client's quote container, then extract the reply from the text."""
    marked = _render(html, find_quotes=True)
    head, _, quoted = marked.partition(_CUT)
    visible_html, signature = _split_signatures(head)
    if not _tidy(visible_html):
        # The container held everything (e.g. an Exchange reply section alone): keep it all.
        return extract_reply(_tidy(_SENTINELS.sub("", marked)))
    reply = extract_reply(_tidy(visible_html))
    hidden = [reply.hidden, signature, _tidy(_SENTINELS.sub("", quoted))]
    return ExtractedReply(reply.visible, "\n\n".join(h for h in hidden if h))


# --------------------------------------------------------------------------------------------------
# Sanitising
# --------------------------------------------------------------------------------------------------

_SAFE_TAGS: Final = _tags(
    "a abbr b blockquote br caption center cite code col colgroup dd del div dl dt em font h1 h2 "
    "h3 h4 h5 h6 hr i ins kbd li ol p pre q s samp small span strike strong sub "
    "sup table tbody td tfoot th thead tr tt u ul"
)
# No style/class/id (CSS can exfiltrate or overlay the UI); no img at all (remote images track the reader).
_SAFE_ATTRIBUTES: Final = {
    "a": {"href", "title"},
    "abbr": {"title"},
    "ol": {"start", "type"},
    "td": {"colspan", "rowspan", "align", "valign"},
    "th": {"colspan", "rowspan", "align", "valign", "scope"},
    "col": {"span"},
    "colgroup": {"span"},
    "table": {"summary"},
    "*": {"dir", "lang"},
}
_DROPPED_WITH_CONTENT: Final = frozenset(
    {"script", "style", "title", "template", "noscript", "iframe", "object", "embed", "svg", "math", "head"}
)


# html5ever (inside nh3) walks the stack of open elements for many start tags ("is there a <p> in
# button scope?"), so its cost grows with the number of tags times the nesting depth: 537 KB of
# nested <div> took ~4 s (security review, finding 9). Past a few thousand start tags the HTML is
# first re-nested to a bounded depth, in one linear pass, so nh3 never sees a deep tree.
_START_TAG: Final = re.compile(r"<[A-Za-z]")
_FAST_PATH_START_TAGS: Final = 2000  # below this even the worst nesting costs nh3 a few tens of ms
_MAX_SANITIZED_START_TAGS: Final = 50_000  # above this the re-nesting pass alone would take seconds
_MAX_SANITIZED_DEPTH: Final = 100
_NESTING_VOID: Final = _tags("area base br col embed hr img input link meta param source track wbr keygen")
_NESTING_IMPLIED_END: Final = _tags("p li dt dd option optgroup tr td th rb rt rp")
_ATTRIBUTE_NAME: Final = re.compile(r"[A-Za-z_:][-A-Za-z0-9_:.]*\Z")


class _BoundedNesting(HTMLParser):
    """Re-emit HTML well nested, with at most ``limit`` elements open: deeper start tags are dropped
    (their text stays, one level up), stray end tags too; comments and declarations go, and so do
    the elements nh3 drops with their content (scripts, styles…). Tags are rebuilt from their parsed
    name and attributes, text is re-escaped, so what nh3 reads is exactly the tree built here.
    Written by hand: nh3 has no depth limit to set, and the stdlib tokenizer this rests on is linear."""

    def __init__(self, limit: int) -> None:
        super().__init__(convert_charrefs=True)  # text arrives decoded, and is escaped again below
        self.limit = limit
        self.stack: list[str] = []
        self.out: list[str] = []
        self.skipping: str | None = None  # inside an element dropped with its content
        self.skip_depth = 0

    def _tag(self, tag: str, attrs: list[tuple[str, str | None]]) -> str:
        parts = [tag]
        for name, value in attrs:
            if _ATTRIBUTE_NAME.match(name):
                parts.append(name if value is None else f'{name}="{_escape_attribute(value)}"')
        return "<" + " ".join(parts) + ">"

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if self.skipping is not None:
            self.skip_depth += tag == self.skipping
            return
        if tag in _DROPPED_WITH_CONTENT:
            self.skipping, self.skip_depth = tag, 1
            return
        if tag in _NESTING_VOID:
            self.out.append(self._tag(tag, attrs))
            return
        if tag in _NESTING_IMPLIED_END and self.stack and self.stack[-1] == tag:
            self.out.append(f"</{self.stack.pop()}>")  # <p>a<p>b: siblings, as HTML parses them
        if len(self.stack) < self.limit:
            self.stack.append(tag)
            self.out.append(self._tag(tag, attrs))

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        # "<div/>" opens a div in HTML (the slash counts only on void elements): close it at once.
        if self.skipping is not None or tag in _DROPPED_WITH_CONTENT:
            return
        self.out.append(self._tag(tag, attrs) + ("" if tag in _NESTING_VOID else f"</{tag}>"))

    def handle_endtag(self, tag: str) -> None:
        if self.skipping is not None:
            if tag == self.skipping:
                self.skip_depth -= 1
                if self.skip_depth == 0:
                    self.skipping = None
            return
        if tag in self.stack:
            while self.stack:
                name = self.stack.pop()
                self.out.append(f"</{name}>")
                if name == tag:
                    break

    def handle_data(self, data: str) -> None:
        if self.skipping is None:
            self.out.append(data.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;"))

    def result(self) -> str:
        self.close()
        return "".join(self.out) + "".join(f"</{name}>" for name in reversed(self.stack))


def _escape_attribute(value: str) -> str:
    return value.replace("&", "&amp;").replace('"', "&quot;").replace("<", "&lt;").replace(">", "&gt;")


def bounded_nesting(html: str, limit: int = _MAX_SANITIZED_DEPTH) -> str:
    """``html`` re-emitted with at most ``limit`` elements open at any point (see _BoundedNesting)."""
    nester = _BoundedNesting(limit)
    nester.feed(html)
    return nester.result()


def sanitize_html(html: str) -> str | None:
    """Allow-list sanitising with nh3: no scripts, styles, handlers, javascript: URLs or images.

    None when the HTML cannot be sanitised within bounds (more than 50,000 start tags, or markup the
    re-nesting tokenizer refuses): the message then keeps its text version only.
    """
    start_tags = len(_START_TAG.findall(html))
    if start_tags > _MAX_SANITIZED_START_TAGS:
        return None
    if start_tags > _FAST_PATH_START_TAGS:
        try:
            html = bounded_nesting(html)
        except Exception:  # html.parser raises on some malformed declarations ("<![…")
            return None
    return nh3.clean(
        html,
        tags=set(_SAFE_TAGS),
        clean_content_tags=set(_DROPPED_WITH_CONTENT),
        attributes={tag: set(names) for tag, names in _SAFE_ATTRIBUTES.items()},
        url_schemes={"http", "https", "mailto"},
        link_rel="noopener noreferrer nofollow",
        strip_comments=True,
    )
