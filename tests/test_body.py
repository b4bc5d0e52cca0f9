"""Reply extraction: hand-written English/French cases, HTML, sanitising, robustness, corpus floors."""

from __future__ import annotations

import importlib
import re
import sys
import time
from pathlib import Path
from types import ModuleType

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mailbridge.inbound.body import (
    ExtractedReply,
    extract_reply,
    extract_reply_from_html,
    html_to_text,
    sanitize_html,
)
from mailbridge.inbound.trim.vocabulary import DROP_INVISIBLE

# ------------------------------------------------------------------------------ plain text -------

GMAIL_EN = """Sounds good, see you Tuesday.

On Mon, Jan 6, 2025 at 9:14 AM Dr. Alice Martin <alice@clinic.example> wrote:

> Can you come in on Tuesday at 10?
>
> Alice
"""

GMAIL_FR_WRAPPED = """Parfait, à mardi.

Le lun. 6 janv. 2025 à 09:14, Dr Alice Martin <alice@cabinet.example>
a écrit :

> Pouvez-vous venir mardi à 10 h ?
"""

OUTLOOK_EN = """I'll bring the form.

________________________________
From: Reception <reception@clinic.example>
Sent: Monday, January 6, 2025 9:14 AM
To: Bob Smith <bob@example.com>
Subject: RE: Appointment

Please bring the consent form.
"""

OUTLOOK_FR_CRLF = (
    "Je l'apporterai.\r\n\r\nDe : Accueil <accueil@cabinet.example>\r\nEnvoyé : lundi 6 janvier 2025 09:14\r\n"
    "À : Bob Martin\r\nObjet : RE: Rendez-vous\r\n\r\nMerci d'apporter le formulaire.\r\n"
)

OUTLOOK_FR_ORIGINAL = """Bien reçu, merci.

-----Message d'origine-----
De : Accueil
Envoyé : lundi 6 janvier 2025 09:14
Objet : Rendez-vous

Votre rendez-vous est confirmé.
"""

APPLE_MAIL = """Thanks, that works.

> On 6 Jan 2025, at 09:14, Alice Martin <alice@clinic.example> wrote:
>
> Does Tuesday work?
"""

IPHONE = """Yes.

Sent from my iPhone

> On Jan 6, 2025, at 9:14 AM, Alice <alice@clinic.example> wrote:
>
> Confirmed?
"""

IPHONE_FR = """Oui, merci.

Envoyé de mon iPhone

> Le 6 janv. 2025 à 09:14, Alice <alice@cabinet.example> a écrit :
>
> Confirmé ?
"""

OUTLOOK_MOBILE_FR = """D'accord.

Téléchargez Outlook pour Android<https://aka.ms/ghei36>

De : Accueil <accueil@cabinet.example>
Envoyé : lundi 6 janvier 2025 09:14
À : Bob
Objet : RDV
"""

SIGNATURE_WITH_PHONE = """See you Tuesday.

Jane Doe
Practice Manager
Acme Clinic
Tel: +1 555 123 4567
jane@acme.example"""

SIGNATURE_FR = """Voici le document demandé.

Cordialement,
Marie Dupont
Secrétaire médicale
01 23 45 67 89"""

INTERLEAVED = """On Mon, Jan 6, 2025 at 9:14 AM Alice <alice@clinic.example> wrote:
> Can you come on Monday?

Yes, at 10.

> Will you bring the consent form?

I will.
"""

FORWARDED = """FYI

---------- Forwarded message ---------
From: Lab <lab@example.com>
Date: Mon, Jan 6, 2025
Subject: Results
To: Bob

Results attached."""

CASES: list[tuple[str, str, str]] = [
    ("gmail_en", GMAIL_EN, "Sounds good, see you Tuesday."),
    ("gmail_fr_header_on_two_lines", GMAIL_FR_WRAPPED, "Parfait, à mardi."),
    ("outlook_en", OUTLOOK_EN, "I'll bring the form."),
    ("outlook_fr_crlf", OUTLOOK_FR_CRLF, "Je l'apporterai."),
    ("outlook_fr_message_d_origine", OUTLOOK_FR_ORIGINAL, "Bien reçu, merci."),
    ("apple_mail", APPLE_MAIL, "Thanks, that works."),
    ("iphone", IPHONE, "Yes."),
    ("envoye_de_mon_iphone", IPHONE_FR, "Oui, merci."),
    ("telechargez_outlook", OUTLOOK_MOBILE_FR, "D'accord."),
    ("signature_with_phone", SIGNATURE_WITH_PHONE, "See you Tuesday."),
    ("signature_cordialement", SIGNATURE_FR, "Voici le document demandé."),
    ("dash_dash_signature", "Fine by me.\n\n-- \nJane Doe\nAcme Clinic", "Fine by me."),
    ("interleaved_keeps_context", INTERLEAVED, INTERLEAVED.split("\n", 1)[1].strip()),
    (
        "bottom_post",
        "On Mon, Jan 6, 2025 at 9:14 AM Alice <alice@clinic.example> wrote:\n> Monday?\n\nYes, at 10.",
        "Yes, at 10.",
    ),
    (
        "answer_below_greeted_quote",
        "Hi Alice,\n\nOn Mon, Jan 6, 2025 at 9:14 AM Alice <alice@clinic.example> wrote:\n> Monday?\n\nYes.",
        "Hi Alice,\n\n> Monday?\n\nYes.",
    ),
    (
        "text_after_quote_is_kept",
        "Test reply\n\nOn 04/19/2011 07:10 AM, Roman wrote:\n\n> Test\n\nRegards, Roman",
        "Test reply\n\nRegards, Roman",
    ),
    (
        "bare_sign_off_is_content",
        "Got it, thanks.\n\nBest regards,\nJane",
        "Got it, thanks.\n\nBest regards,\nJane",
    ),
    ("forward_under_a_bare_cover_note_is_the_message", FORWARDED, FORWARDED),
    ("forward_alone_is_content", FORWARDED.split("\n", 2)[2], FORWARDED.split("\n", 2)[2]),
    (
        "german",
        "Ja, passt.\n\nAm Mo., 6. Jan. 2025 um 09:14 Uhr schrieb Alice <alice@praxis.example>:\n\n> Dienstag?",
        "Ja, passt.",
    ),
    (
        "spanish",
        "Vale.\n\nEl lun, 6 ene 2025 a las 9:14, Juan (<juan@example.es>) escribió:\n\n> ¿Martes?",
        "Vale.",
    ),
    (
        "polish_two_lines",
        "Tak.\n\nW dniu 6 stycznia 2025 09:14 użytkownik Jan <jan@example.pl>\nnapisał:\n\n> Wtorek?",
        "Tak.",
    ),
    (
        "japanese",
        "了解です。\n\n2025年1月6日(月) 9:14 田中 <tanaka@example.jp>:\n\n> 火曜日は？",
        "了解です。",
    ),
    (
        "chinese_outlook",
        "好的\n\n发件人: 张三 <z@example.cn>\n发送时间: 2025年1月6日 9:14\n收件人: 李四\n主题: 预约",
        "好的",
    ),
    (
        "nbsp_and_trailing_spaces",
        "Hello\u00a0there   \r\n\r\nOn Mon, Jan 6, 2025 at 9:14 AM Bob <bob@example.com> wrote:\r\n> hi\r\n",
        "Hello there",
    ),
    (
        "old_mac_cr_line_endings",
        "Yes\r\rOn Mon, Jan 6, 2025 at 9:14 AM Bob <bob@example.com> wrote:\r> hi",
        "Yes",
    ),
]


@pytest.mark.parametrize(("text", "visible"), [case[1:] for case in CASES], ids=[case[0] for case in CASES])
def test_extract_reply(text: str, visible: str) -> None:
    assert extract_reply(text).visible == visible


def test_trimmed_parts_are_kept_hidden() -> None:
    reply = extract_reply(IPHONE)
    assert reply.hidden.startswith("Sent from my iPhone")
    assert "Confirmed?" in reply.hidden
    assert "Tel: +1 555 123 4567" in extract_reply(SIGNATURE_WITH_PHONE).hidden


@pytest.mark.parametrize(
    "text",
    [
        "On Monday I will bring the form.\nOn Tuesday too.",
        "Here is another email\n\nSent from my desk, which is easier than my phone.",
        "The forms come from: reception and from: the lab.\n\nIs that right?",
        "Here's what I received:\nFrom: the lab\nResult: negative\n\nWhat should I do?",
        "Fix -- this is not a signature.\n\nThanks",
        "Invitation:\n\nDate: Wednesday 3 October\nTime: 7:00\nAddress: 130 Fox St\n\nBring your ID.",
    ],
    ids=["on_sentence", "sent_from_sentence", "from_in_text", "from_line", "dashes_mid_line", "date_line"],
)
def test_real_content_is_not_trimmed(text: str) -> None:
    assert extract_reply(text) == ExtractedReply(text, "")


def test_only_history_posts_nothing() -> None:
    assert extract_reply("> only a quote\n> nothing else\n") == ExtractedReply(
        "", "> only a quote\n> nothing else"
    )


@pytest.mark.parametrize("text", ["", "   \n\n", "\r\n"])
def test_empty_bodies(text: str) -> None:
    assert extract_reply(text) == ExtractedReply("", "")


# ------------------------------------------------------------------------------ HTML -------------

GMAIL_HTML = """<div dir="ltr">Yes, Tuesday works.<div><br></div><div>Jane</div></div><br>
<div class="gmail_quote"><div dir="ltr" class="gmail_attr">On Mon, Jan 6, 2025 at 9:14 AM Alice
&lt;<a href="mailto:alice@clinic.example">alice@clinic.example</a>&gt; wrote:<br></div>
<blockquote class="gmail_quote" style="margin:0px 0px 0px 0.8ex">Can you come on Tuesday?</blockquote></div>"""

OUTLOOK_WEB_HTML = """<div>Merci, à mardi.</div><div id="appendonsend"></div>
<hr style="display:inline-block;width:98%"><div id="divRplyFwdMsg"><b>De :</b> Accueil<br>
<b>Envoyé :</b> lundi 6 janvier 2025 09:14<br><b>À :</b> Bob<br><b>Objet :</b> RDV</div>
<div>Pouvez-vous venir ?</div>"""

OUTLOOK_DESKTOP_HTML = """<div class="WordSection1"><p class="MsoNormal">D'accord.</p>
<p class="MsoNormal">&nbsp;</p><p class="MsoNormal">Bob</p>
<div style="border:none;border-top:solid #E1E1E1 1.0pt;padding:3.0pt 0cm 0cm 0cm">
<p class="MsoNormal"><b>De&nbsp;:</b> Accueil<br><b>Envoy&eacute;&nbsp;:</b> lundi 6 janvier 2025</p></div>
<p class="MsoNormal">Pouvez-vous venir ?</p></div>"""

APPLE_HTML = """<html><body><div>Sounds good.</div><div><br><blockquote type="cite">
<div>On Jan 6, 2025, at 9:14 AM, Alice &lt;alice@clinic.example&gt; wrote:</div><br>
<div>Can you come?</div></blockquote></div></body></html>"""

THUNDERBIRD_HTML = """<p>Fine.</p><div class="moz-cite-prefix">On 06/01/2025 09:14, Alice wrote:<br></div>
<blockquote type="cite">Can you come?</blockquote>"""

YAHOO_HTML = """<div>Ok</div><div id="yahoo_quoted_1234" class="yahoo_quoted">
<div>On Monday, January 6, 2025, 09:14:00 AM GMT+1, Alice wrote:</div><div>Can you come?</div></div>"""

HR_HTML = """<div>Hi<div>there</div><hr><b>From: </b>bob@example.com<br><b>To: </b>jane@example.com<br>
<b>Sent: </b>Friday, July 22, 2011 6:20:01 PM<br><b>Subject: </b>Hello<br><br><p>Hello</p></div>"""


@pytest.mark.parametrize(
    ("html", "visible"),
    [
        (GMAIL_HTML, "Yes, Tuesday works.\n\nJane"),
        (OUTLOOK_WEB_HTML, "Merci, à mardi."),
        (OUTLOOK_DESKTOP_HTML, "D'accord.\n\nBob"),
        (APPLE_HTML, "Sounds good."),
        (THUNDERBIRD_HTML, "Fine."),
        (YAHOO_HTML, "Ok"),
        (HR_HTML, "Hi\nthere"),
    ],
    ids=["gmail_quote", "outlook_web", "outlook_desktop_fr", "apple_mail", "thunderbird", "yahoo", "hr"],
)
def test_extract_reply_from_html(html: str, visible: str) -> None:
    reply = extract_reply_from_html(html)
    assert reply.visible == visible
    assert reply.hidden  # the quote is kept, hidden


def test_gmail_quote_goes_to_hidden() -> None:
    assert "Can you come on Tuesday?" in extract_reply_from_html(GMAIL_HTML).hidden


def test_html_signature_is_hidden() -> None:
    html = '<div>Done.</div><div class="gmail_signature"><div>Jane Doe<br>+1 555 123 4567</div></div>'
    assert extract_reply_from_html(html) == ExtractedReply("Done.", "Jane Doe\n+1 555 123 4567")


def test_quote_container_holding_everything_is_kept() -> None:
    html = '<div name="messageReplySection"><p>Only this.</p></div>'
    assert extract_reply_from_html(html).visible == "Only this."


def test_html_to_text() -> None:
    html = (
        "<html><head><title>T</title><style>.a{}</style></head><body><script>var x=1;</script>"
        "<p>Caf&eacute; &amp; th&eacute;&nbsp;!</p><div>one<br>two</div><ul><li>a</li><li>b</li></ul>"
        "<ol><li>first</li><li>second</li></ol><table><tr><td>x</td><td>y</td></tr><tr><td>z</td></tr></table>"
        "<blockquote><p>quoted</p><blockquote>nested</blockquote></blockquote><p>end</p></body></html>"
    )
    assert html_to_text(html) == (
        "Café & thé !\n\none\ntwo\n\n- a\n- b\n\n1. first\n2. second\n\nx y\nz\n\n> quoted\n>\n>> nested\n\nend"
    )


# ------------------------------------------------------------------------------ sanitising -------


def test_sanitize_html() -> None:
    dirty = (
        '<p style="color:red" onclick="steal()">Hi <b>there</b><script>alert(1)</script><style>p{}</style>'
        '<img src="https://tracker.example/p.gif" onerror="alert(1)"><img src="cid:logo">'
        '<a href="javascript:alert(1)">bad</a> <a href="https://example.com/x" target="_blank">good</a>'
        '<iframe src="https://evil.example"></iframe></p>'
    )
    clean = sanitize_html(dirty)
    for forbidden in (
        "script",
        "alert",
        "style",
        "onclick",
        "onerror",
        "javascript:",
        "<img",
        "iframe",
        "target",
    ):
        assert forbidden not in clean
    assert '<a href="https://example.com/x" rel="noopener noreferrer nofollow">good</a>' in clean
    assert "<b>there</b>" in clean


def test_sanitize_keeps_mail_formatting() -> None:
    html = '<blockquote><ul><li>one</li></ul><table><tbody><tr><td colspan="2">x</td></tr></tbody></table></blockquote>'
    assert sanitize_html(html) == html


# ------------------------------------------------------------------------------ robustness -------


@pytest.mark.parametrize(
    "text",
    [
        ">" * 1_000_000,
        "a\n" * 20_000,
        "On Mon, Jan 6, 2025 at 9:14 AM Bob\n" * 5_000,
        "From: x\n" * 10_000,
        "> a\nb\n" * 10_000,
    ],
    ids=["long_quote_line", "many_lines", "many_openers", "many_fields", "alternating"],
)
def test_pathological_text_is_fast(text: str) -> None:
    started = time.perf_counter()
    extract_reply(text)
    assert time.perf_counter() - started < 1.0


def test_deeply_nested_html_does_not_recurse_forever() -> None:
    html = "<div>" * 5_000 + "deep" + "</div>" * 5_000 + "<blockquote>" * 2_000 + "q"
    assert extract_reply_from_html(html).visible == "deep"


_FRAGMENTS = [
    "Hello Bob,",
    "Thanks, see you then.",
    "",
    "> quoted line",
    ">> nested",
    "On Mon, Jan 6, 2025 at 9:14 AM Bob <bob@example.com> wrote:",
    "Le 6 janv. 2025 à 09:14, Bob <bob@example.com> a écrit :",
    "From: Bob <bob@example.com>",
    "Sent: Monday",
    "De : Bob",
    "-----Original Message-----",
    "-- ",
    "Sent from my iPhone",
    "Regards,",
    "Jane Doe",
    "+1 555 123 4567",
    "________________________________",
    "\u00a0",
    "  indented text  ",
]


# What a person writes, as opposed to quotes, quote headers, markers and footers: a message with
# one such line must keep visible text; a message with none (only history) may post nothing.
_NOT_PROSE = frozenset(_FRAGMENTS) - {"Hello Bob,", "Thanks, see you then.", "  indented text  "}


def _is_prose(line: str) -> bool:
    # Starting with a capital or a digit: a lower-case line between two quotes is a quoted line
    # that the client re-wrapped ("> … pharetra d\nignissim odio?\n>").
    line = DROP_INVISIBLE.sub("", line).strip()
    return (line[:1].isupper() or line[:1].isdigit()) and line not in _NOT_PROSE


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.sampled_from(_FRAGMENTS) | st.text(max_size=30), max_size=25), st.sampled_from(["\n", "\r\n"])
)
def test_never_loses_the_message(lines: list[str], newline: str) -> None:
    text = newline.join(lines)
    reply = extract_reply(text)
    rows = text.replace("\r", "\n").split("\n")
    if any(_is_prose(row) for row in rows) and not any(row.lstrip().startswith(">") for row in rows):
        # With quotes, a message may be history only (see test_reply_shapes); without, never.
        assert reply.visible.strip(), "a message with content must keep visible text"
    # Every word of the input survives, visible or hidden.
    words = set(re.findall(r"\w+", DROP_INVISIBLE.sub("", text)))
    assert words <= set(re.findall(r"\w+", DROP_INVISIBLE.sub("", reply.visible + "\n" + reply.hidden)))


# ------------------------------------------------------------------------------ corpora ---------


def _corpora() -> ModuleType:
    root = Path(__file__).resolve().parents[1]
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))  # benchmarks/ sits next to tests/ and is not an installed package
    return importlib.import_module("benchmarks.corpora")


# Floors sit a few points under the current figures so that a regression shows; see
# `python -m benchmarks.bench_reply_extraction --failures` for the cases and why some cannot pass.
FLOORS = {"talon": 0.85, "email_reply_parser_family": 0.85, "discourse": 0.85, "talon-signature": 0.6}


@pytest.mark.parametrize("name", list(FLOORS))
def test_corpus_floor(name: str) -> None:
    corpora = _corpora()
    root = corpora.corpora_root()
    if root is None:
        pytest.skip(
            "../shared/corpora not found (fresh clone without the shared corpora): floors not checked"
        )
    corpus = corpora.LOADERS[name](root)
    scored = [case for case in corpus.cases if case.expected is not None]
    exact = 0
    for case in scored:
        if case.text is not None:
            visible = extract_reply(case.text).visible
        else:
            visible = extract_reply_from_html(case.html or "").visible
        exact += corpora.exact_match(case, visible)
    assert scored
    assert exact / len(scored) >= FLOORS[name], f"{name}: {exact}/{len(scored)} exact"
