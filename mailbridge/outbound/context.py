"""Small pure functions that turn stored data into what a template shows: no database, no I/O.

Everything from mail (names, subjects, bodies, file names) is hostile: the HTML templates escape it
(Jinja autoescape); the one piece of HTML made here, :func:`body_html`, escapes the text itself
before adding ``<br>``/``<p>``, so it can be marked safe.
"""

from __future__ import annotations

import functools
import re
import textwrap
from typing import Any

from markupsafe import escape

from mailbridge.domain.practice_settings import PracticeSettings

#: A body longer than this is cut in the notification ("continued in the app"): Gmail clips a
#: message whose HTML passes 102 KB, and the text appears in both parts.
BODY_MAX_CHARS = 20_000
PREHEADER_CHARS = 110

# The line storage/intake.py appends to a message whose attachments were withheld
# (inbound.attachments.withheld_line): "1 attachment withheld: a.exe (…)", "2 pièces jointes retenues : …".
_WITHHELD = re.compile(
    r"(?:\n\n|\A)(?P<line>\d+ (?:attachments? withheld: |pièces? jointes? retenues? : )[^\n]*)\s*\Z"
)


def split_withheld(body: str) -> tuple[str, str]:
    """``(body, withheld line)``: the line the intake added when files were withheld, moved out of
    the text so the notification can show it beside the attachments ("" when there is none)."""
    match = _WITHHELD.search(body)
    if match is None:
        return body, ""
    return body[: match.start()].rstrip(), match.group("line")


def cut_body(body: str) -> tuple[str, bool]:
    if len(body) <= BODY_MAX_CHARS:
        return body, False
    return body[:BODY_MAX_CHARS].rstrip() + " …", True


def body_html(body: str) -> str:
    """The plain-text body as escaped HTML paragraphs: blank lines separate ``<p>``, single line
    breaks become ``<br>``. Nothing is linked (a bare URL in a notification is a phishing shape)."""
    paragraphs = [p.strip("\n") for p in re.split(r"\n\s*\n", body.replace("\r\n", "\n")) if p.strip()]
    return "".join(
        '<p style="margin:0 0 12px 0;">' + "<br>".join(str(escape(line)) for line in p.split("\n")) + "</p>"
        for p in paragraphs
    )


def preheader(body: str) -> str:
    """The line mail clients show after the subject: the body's start, on one line."""
    text = " ".join(body.split())
    return text if len(text) <= PREHEADER_CHARS else text[: PREHEADER_CHARS - 1].rstrip() + "…"


def size_text(size: int, lang: str) -> str:
    """``182 KB``, ``1.4 MB`` (``1,4 Mo`` in French): decimal units, as file managers show them."""
    units = ("o", "Ko", "Mo", "Go") if lang == "fr" else ("bytes", "KB", "MB", "GB")
    value, unit = float(size), 0
    while value >= 1000 and unit < len(units) - 1:
        value /= 1000
        unit += 1
    figure = f"{value:.0f}" if unit <= 1 or value >= 10 else f"{value:.1f}"
    if lang == "fr":
        figure = figure.replace(".", ",")
    return f"{figure} {units[unit]}"


def text_on(color: str) -> str:
    """Black or white, whichever reads better on *color* (``#rgb``/``#rrggbb``), by WCAG 2 contrast."""
    hex_digits = color.lstrip("#")
    if len(hex_digits) == 3:
        hex_digits = "".join(c * 2 for c in hex_digits)
    channels = [int(hex_digits[i : i + 2], 16) / 255 for i in (0, 2, 4)]
    linear = [c / 12.92 if c <= 0.03928 else ((c + 0.055) / 1.055) ** 2.4 for c in channels]
    luminance = 0.2126 * linear[0] + 0.7152 * linear[1] + 0.0722 * linear[2]
    on_white = 1.05 / (luminance + 0.05)
    on_black = (luminance + 0.05) / 0.05
    return "#ffffff" if on_white >= on_black else "#111111"


_WIDTH = 76


def wrap_text(text: str, width: int = _WIDTH) -> str:
    """Long lines of a text part wrapped at *width*, for reading in a plain-text client.

    Line breaks the text already has are kept; a line is wrapped at spaces only (a URL or any long
    word stays whole, so links keep working), and keeps its leading indentation or ``>`` quote
    marks on every piece. RFC 3676's format=flowed would let clients re-flow instead, but it
    changes how trailing spaces read and several clients get it wrong; plain wrapping is safer.
    """
    out: list[str] = []
    for line in text.split("\n"):
        if len(line) <= width:
            out.append(line)
        else:
            out.extend(_wrap_line(line, width))
    return "\n".join(out)


@functools.lru_cache(maxsize=1024)
def _wrap_line(line: str, width: int) -> tuple[str, ...]:
    """One long line wrapped (``textwrap`` is most of wrap_text's time); a message's lines come
    again in each of its recipients' notifications, the template's in every one."""
    lead = re.match(r"[ \t>]*", line)
    prefix = lead.group(0) if lead else ""
    wrapped = textwrap.wrap(
        line[len(prefix) :],
        width=width,
        initial_indent=prefix,
        subsequent_indent=prefix,
        break_long_words=False,
        break_on_hyphens=False,
    )
    return tuple(wrapped) or (line,)


def practice_identity(
    name: str, settings: PracticeSettings, lang: str, shown: bool, app_url: str, logo_src: str = ""
) -> dict[str, Any]:
    """What every template knows of the practice: its name, colours, logo and footer when *shown*
    (a minimal notification or a notice of a practice that hides itself shows none of them)."""
    color = settings.effective_brand_color
    return {
        "lang": lang,
        "practice_name": name if shown else "",
        "brand_color": color,
        "brand_text_color": text_on(color),
        "logo_src": logo_src if shown else "",
        "footer_lines": settings.footer_lines if shown else [],
        "signin_link": (settings.app_url or app_url).rstrip("/") + "/",  # the practice's portal first
    }
