"""How clients shape replies (issue 16), written from how they write, not copied from any corpus.

One table per kind of miss: bodies hidden by a broken MIME structure, forwarded content, reply
headers in many locales and forms, inline answers, invisible residue, and history with nothing new.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from mailbridge.inbound.body import ExtractedReply, extract_reply, extract_reply_from_html
from mailbridge.inbound.mimestream import parse_file
from mailbridge.inbound.parse import parse_mail

# ------------------------------------------------------------------ 1. the body MIME hides --------

HEAD = b"From: Alice <alice@client.test>\r\nTo: reply@x.test\r\nSubject: Re: Tuesday\r\nMIME-Version: 1.0\r\n"


def mime(content_type: bytes, body: bytes, cte: bytes = b"") -> bytes:
    return HEAD + b"Content-Type: " + content_type + b"\r\n" + cte + b"\r\n" + body


BROKEN: list[tuple[str, bytes, str | None, str | None]] = [
    (
        "boundary_never_used",
        mime(b'multipart/alternative; boundary="b1"', b"Tuesday works.\r\n\r\nAlice\r\n"),
        "Tuesday works.\n\nAlice\n",
        None,
    ),
    (
        "boundary_never_used_quoted_printable",
        mime(
            b'multipart/alternative; boundary="b1"; charset=utf-8',
            b"Mardi c'est parfait, =C3=A0 bient=C3=B4t.\r\n",
            b"Content-Transfer-Encoding: quoted-printable\r\n",
        ),
        "Mardi c'est parfait, à bientôt.\n",
        None,
    ),
    (
        "boundary_never_used_base64",
        mime(
            b'multipart/mixed; boundary="b1"',
            b"VHVlc2RheSB3b3Jrcy4=\r\n",
            b"Content-Transfer-Encoding: base64\r\n",
        ),
        "Tuesday works.",
        None,
    ),
    (
        "parts_under_another_delimiter",
        mime(
            b'multipart/alternative; boundary="declared"',
            b"--actual\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: quoted-printable"
            b"\r\n\r\nJe viendrai mardi, merci =C3=A0 vous.\r\n--actual\r\nContent-Type: text/html; charset=utf-8"
            b"\r\n\r\n<p>Je viendrai mardi</p>\r\n--actual--\r\n",
        ),
        "Je viendrai mardi, merci à vous.",
        "<p>Je viendrai mardi</p>",
    ),
    (
        "no_boundary_parameter",
        mime(b"multipart/alternative", b"Tuesday works.\r\n"),
        "Tuesday works.",
        None,
    ),
    (
        "html_body_under_a_broken_multipart",
        mime(b'multipart/alternative; boundary="b1"', b"<html><body><p>Tuesday works.</p></body></html>\r\n"),
        None,
        "<html><body><p>Tuesday works.</p></body></html>\r\n",
    ),
]


@pytest.mark.parametrize(
    ("raw", "text", "html"), [case[1:] for case in BROKEN], ids=[case[0] for case in BROKEN]
)
def test_broken_multipart_shows_its_text(raw: bytes, text: str | None, html: str | None) -> None:
    parsed = parse_mail(raw)
    assert (parsed.text.strip() if parsed.text else None) == (text.strip() if text else None)
    assert parsed.html == html
    assert parsed.attachments == []  # never a "multipart/alternative" file


STREAMED = [case for case in BROKEN if case[2] is not None and b"--actual" not in case[1]]


@pytest.mark.parametrize("raw", [case[1] for case in STREAMED], ids=[case[0] for case in STREAMED])
def test_broken_multipart_streamed_shows_its_text(raw: bytes, tmp_path: Path) -> None:
    """Past the streaming threshold the same message reads the same way."""
    (tmp_path / "m.eml").write_bytes(raw)
    streamed = parse_file(tmp_path / "m.eml", tmp_path / "spool")
    assert streamed.text is not None and streamed.text.strip() == (parse_mail(raw).text or "").strip()


def test_recovered_structure_is_prescanned() -> None:
    """Parts hidden under another delimiter go through the same bomb limits as a whole message."""
    nested = b"".join(
        b'--x%d\r\nContent-Type: multipart/mixed; boundary="x%d"\r\n\r\n' % (i, i + 1) for i in range(60)
    )
    parsed = parse_mail(mime(b'multipart/mixed; boundary="declared"', nested + b"--x0--\r\n"))
    assert parsed.attachments == [] and parsed.html is None
    assert parsed.text is not None  # shown as text, as a client would, never parsed 60 levels deep


# ------------------------------------------------------------------ 2. forwarded content ----------

GMAIL_FORWARD = """---------- Forwarded message ---------
From: Lab Results <lab@lab.example>
Date: Mon, Jan 6, 2025 at 9:14 AM
Subject: Your results
To: Bob <bob@client.test>

Your blood test results are within normal ranges."""

OUTLOOK_ORIGINAL = """-----Original Message-----
From: Lab Results <lab@lab.example>
Sent: Monday, January 6, 2025 9:14 AM
To: Bob <bob@client.test>
Subject: Your results

Your blood test results are within normal ranges."""

OUTLOOK_BLOCK = """________________________________
From: Lab Results <lab@lab.example>
Sent: Monday, January 6, 2025 9:14 AM
To: Bob <bob@client.test>
Subject: Your results

Your blood test results are within normal ranges."""

APPLE_FORWARD = """Begin forwarded message:

From: Lab Results <lab@lab.example>
Subject: Your results
Date: 6 January 2025 at 09:14:00 CET
To: Bob <bob@client.test>

Your blood test results are within normal ranges."""

LOCALISED_FORWARDS = {
    "de": "---------- Weitergeleitete Nachricht ---------\nVon: Labor <lab@lab.example>\nDatum: Mo., 6. Jan. 2025\n\nBefund unauffällig.",
    "fr": "---------- Message transféré ---------\nDe : Labo <lab@lab.example>\nDate : lun. 6 janv. 2025\n\nRésultats normaux.",
    "es": "---------- Mensaje reenviado ---------\nDe: Laboratorio <lab@lab.example>\nDate: lun, 6 ene 2025\n\nResultados normales.",
    "pt": "---------- Mensagem encaminhada ---------\nDe: Laboratório <lab@lab.example>\nData: seg., 6 de jan.\n\nResultados normais.",
    "nl": "---------- Doorgestuurd bericht ---------\nVan: Lab <lab@lab.example>\nDate: ma 6 jan. 2025\n\nUitslag normaal.",
    "pl": "---------- Wiadomość przekazana dalej ---------\nOd: Lab <lab@lab.example>\nDate: pon., 6 sty 2025\n\nWyniki w normie.",
}


@pytest.mark.parametrize(
    "forward",
    [GMAIL_FORWARD, OUTLOOK_ORIGINAL, OUTLOOK_BLOCK, APPLE_FORWARD, *LOCALISED_FORWARDS.values()],
    ids=["gmail", "outlook_original", "outlook_block", "apple", *(f"gmail_{k}" for k in LOCALISED_FORWARDS)],
)
def test_forward_below_the_authors_words_is_hidden(forward: str) -> None:
    reply = extract_reply(f"Could you look at this before Tuesday?\n\nBob\n\n{forward}\n")
    assert reply.visible == "Could you look at this before Tuesday?\n\nBob"
    assert forward.splitlines()[-1] in reply.hidden  # kept, hidden, never lost


@pytest.mark.parametrize(
    "forward",
    [GMAIL_FORWARD, OUTLOOK_ORIGINAL, OUTLOOK_BLOCK, APPLE_FORWARD, *LOCALISED_FORWARDS.values()],
    ids=["gmail", "outlook_original", "outlook_block", "apple", *(f"gmail_{k}" for k in LOCALISED_FORWARDS)],
)
def test_forward_as_the_whole_message_is_kept(forward: str) -> None:
    assert extract_reply(forward + "\n").visible == forward


@pytest.mark.parametrize(
    ("cover", "forward"),
    [
        ("FYI", GMAIL_FORWARD),
        ("Please see below.", APPLE_FORWARD),
        ("Pour info", LOCALISED_FORWARDS["fr"]),
        ("Zur Info:", LOCALISED_FORWARDS["de"]),
    ],
)
def test_forward_under_a_bare_cover_note_is_the_message(cover: str, forward: str) -> None:
    """ "FYI" above a forward says only "here it is": the forward is what the author sends, so it stays
    visible with the note (a note that says something of its own hides it, as above)."""
    reply = extract_reply(f"{cover}\n\n{forward}\n")
    assert reply.visible == f"{cover}\n\n{forward}"
    assert extract_reply(f"{cover} Can you check the third line?\n\n{forward}\n").visible == (
        f"{cover} Can you check the third line?"
    )


def test_html_forward_below_text_is_hidden_and_alone_is_kept() -> None:
    block = (
        '<div class="gmail_quote"><div dir="ltr" class="gmail_attr">---------- Forwarded message ---------<br>'
        "From: <b>Lab</b> &lt;lab@lab.example&gt;<br>Date: Mon, Jan 6, 2025 at 9:14 AM<br>Subject: Results<br></div>"
        "<br><div>Your blood test results are within normal ranges.</div></div>"
    )
    with_text = extract_reply_from_html(f'<div dir="ltr">Could you look at this?</div><br>{block}')
    assert with_text.visible == "Could you look at this?"
    assert "within normal ranges" in with_text.hidden
    alone = extract_reply_from_html(block)
    assert (
        alone.visible.startswith("---------- Forwarded message") and "within normal ranges" in alone.visible
    )


# ------------------------------------------------------------------ 3. reply headers ---------------

ANSWER = "Tuesday works for me."
# (id, header as the client writes it). Each is tried above a '>' quote and above an unquoted copy.
HEADERS: list[tuple[str, str]] = [
    ("de_gmail_wrapped", "Alice Martin <alice@example.com> schrieb am Fr., 28.\nApr. 2017 um 11:53 Uhr:"),
    ("de_gmail", "Am Mo., 6. Jan. 2025 um 09:14 Uhr schrieb Alice Martin <alice@example.com>:"),
    ("iso_zone", "2016-03-03 17:21 GMT+01:00 Some One <someone@example.com>:"),
    ("iso_zone_no_address", "2016-03-03 17:21 GMT+01:00 Some One:"),
    ("iso_zone_wrapped", "2016-03-03 17:21 GMT+01:00 Some One <\nsomeone@example.com>:"),
    ("quoted_name", 'On Mon, Jan 6, 2025 at 9:14 AM, "Alice Martin" <alice@example.com> wrote:'),
    ("quoted_name_comma", 'On 6 Jan 2025, at 09:14, "Martin, Alice" <alice@example.com> wrote:'),
    ("yahoo", "On Monday, January 6, 2025 at 09:14:00 AM GMT+1, Alice Martin <alice@example.com> wrote:"),
    ("k9", "On January 6, 2025 9:14:00 AM GMT+01:00, Alice Martin <alice@example.com> wrote:"),
    ("fr", "Le lun. 6 janv. 2025 à 09:14, Alice Martin <alice@example.com> a écrit :"),
    ("es", "El lun, 6 ene 2025 a las 9:14, Alice Martin (<alice@example.com>) escribió:"),
    ("it", "Il giorno lun 6 gen 2025 alle ore 09:14 Alice Martin <alice@example.com> ha scritto:"),
    ("pt", "Em seg., 6 de jan. de 2025 às 09:14, Alice Martin <alice@example.com> escreveu:"),
    ("nl", "Op ma 6 jan. 2025 om 09:14 schreef Alice Martin <alice@example.com>:"),
    ("pl", "pon., 6 sty 2025 o 09:14 Alice Martin <alice@example.com> napisał(a):"),
    ("sv", "Den mån 6 jan. 2025 kl 09:14 skrev Alice Martin <alice@example.com>:"),
    ("da", "Den man. 6. jan. 2025 kl. 09.14 skrev Alice Martin <alice@example.com>:"),
    ("no", "man. 6. jan. 2025 kl. 09:14 skrev Alice Martin <alice@example.com>:"),
    ("fi", "ma 6. tammik. 2025 klo 9.14 Alice Martin (alice@example.com) kirjoitti:"),
    ("ru", "пн, 6 янв. 2025 г. в 09:14, Alice Martin <alice@example.com>:"),
    ("uk", "пн, 6 січ. 2025 о 09:14 Alice Martin <alice@example.com> пише:"),
    ("cs", "po 6. 1. 2025 v 9:14 odesílatel Alice Martin <alice@example.com> napsal:"),
    ("hu", "Alice Martin <alice@example.com> ezt írta (időpont: 2025. jan. 6., H, 9:14):"),
    ("ro", "În lun., 6 ian. 2025 la 09:14, Alice Martin <alice@example.com> a scris:"),
    ("el", "Στις Δευ 6 Ιαν 2025 στις 9:14 π.μ., ο/η Alice Martin <alice@example.com> έγραψε:"),
    ("tr", "Alice Martin <alice@example.com>, 6 Oca 2025 Pzt, 09:14 tarihinde şunu yazdı:"),
    ("ca", "Alice Martin <alice@example.com> va escriure el dia dl., 6 de gen. 2025 a les 9:14:"),
    ("id", "Pada tanggal Sen, 6 Jan 2025 pukul 09.14 Alice Martin <alice@example.com> menulis:"),
    ("vi", "Vào Th 2, 6 thg 1, 2025 vào lúc 09:14 Alice Martin <alice@example.com> đã viết:"),
    ("ja", "2025年1月6日(月) 9:14 Alice Martin <alice@example.com>:"),
    ("zh", "Alice Martin <alice@example.com> 于2025年1月6日周一 上午9:14写道："),
    ("ko", "2025년 1월 6일 (월) 오전 9:14, Alice Martin <alice@example.com>님이 작성:"),
    ("he", "\u202bבתאריך יום ב׳, 6 בינו׳ 2025 ב-9:14 מאת \u202aAlice Martin\u202c\u200f <\u202aalice@example.com\u202c\u200f>:\u202c"),
    ("ar", "في الاثنين، 6 يناير 2025 في 9:14 ص تمت كتابة ما يلي بواسطة Alice Martin <alice@example.com>:"),
    ("th", "เมื่อ จ. 6 ม.ค. 2025 เวลา 09:14 Alice Martin <alice@example.com> เขียนว่า:"),
    ("hi", "सोम, 6 जन॰ 2025 को 9:14 am पर Alice Martin <alice@example.com> ने लिखा:"),
]  # fmt: skip


@pytest.mark.parametrize("header", [h for _, h in HEADERS], ids=[i for i, _ in HEADERS])
def test_reply_header_above_a_quote(header: str) -> None:
    reply = extract_reply(f"{ANSWER}\n\n{header}\n\n> Can you come on Tuesday?\n>\n> Alice\n")
    assert reply.visible == ANSWER
    assert "Can you come on Tuesday?" in reply.hidden


@pytest.mark.parametrize("header", [h for _, h in HEADERS], ids=[i for i, _ in HEADERS])
def test_reply_header_above_an_unquoted_copy(header: str) -> None:
    reply = extract_reply(f"{ANSWER}\n\n{header}\nCan you come on Tuesday?\n\nAlice\n")
    assert reply.visible == ANSWER


# Outlook's header block, as each locale writes its field names (From / Sent / To / Subject).
OUTLOOK_FIELDS: list[tuple[str, str]] = [
    ("es", "De: Alice <alice@example.com>\nEnviado: lunes, 6 de enero de 2025 9:14\nPara: Bob\nAsunto: Cita"),
    ("it", "Da: Alice <alice@example.com>\nInviato: lunedì 6 gennaio 2025 09:14\nA: Bob\nOggetto: Visita"),
    ("pt", "De: Alice <alice@example.com>\nEnviada: segunda-feira, 6 de janeiro de 2025 09:14\nPara: Bob\nAssunto: Consulta"),
    ("nl", "Van: Alice <alice@example.com>\nVerzonden: maandag 6 januari 2025 09:14\nAan: Bob\nOnderwerp: Afspraak"),
    ("pl", "Od: Alice <alice@example.com>\nWysłano: poniedziałek, 6 stycznia 2025 09:14\nDo: Bob\nTemat: Wizyta"),
    ("sv", "Från: Alice <alice@example.com>\nSkickat: den 6 januari 2025 09:14\nTill: Bob\nÄmne: Besök"),
    ("da", "Fra: Alice <alice@example.com>\nSendt: 6. januar 2025 09:14\nTil: Bob\nEmne: Aftale"),
    ("fi", "Lähettäjä: Alice <alice@example.com>\nLähetetty: maanantai 6. tammikuuta 2025 9.14\nVastaanottaja: Bob\nAihe: Aika"),
    ("ru", "От: Alice <alice@example.com>\nОтправлено: 6 января 2025 г. 9:14\nКому: Bob\nТема: Запись"),
    ("uk", "Від: Alice <alice@example.com>\nНадіслано: 6 січня 2025 р. 9:14\nКому: Bob\nТема: Запис"),
    ("ja", "差出人: Alice <alice@example.com>\n送信日時: 2025年1月6日 9:14\n宛先: Bob\n件名: 予約"),
    ("zh", "发件人: Alice <alice@example.com>\n发送时间: 2025年1月6日 9:14\n收件人: Bob\n主题: 预约"),
    ("ko", "보낸 사람: Alice <alice@example.com>\n보낸 날짜: 2025년 1월 6일 월요일 오전 9:14\n받는 사람: Bob\n제목: 예약"),
    ("el", "Από: Alice <alice@example.com>\nΣτάλθηκε: Δευτέρα, 6 Ιανουαρίου 2025 9:14 πμ\nΠρος: Bob\nΘέμα: Ραντεβού"),
    ("he", "מאת: Alice <alice@example.com>\nנשלח: יום שני 6 ינואר 2025 9:14\nאל: Bob\nנושא: תור"),
    ("ar", "من: Alice <alice@example.com>\nتم الإرسال: الاثنين، 6 يناير 2025 9:14 ص\nإلى: Bob\nالموضوع: موعد"),
    ("ro", "De la: Alice <alice@example.com>\nTrimis: luni, 6 ianuarie 2025 09:14\nCătre: Bob\nSubiect: Programare"),
    ("tr", "Kimden: Alice <alice@example.com>\nGönderildi: 6 Ocak 2025 Pazartesi 09:14\nKime: Bob\nKonu: Randevu"),
    ("cs", "Od: Alice <alice@example.com>\nOdesláno: pondělí 6. ledna 2025 9:14\nKomu: Bob\nPředmět: Schůzka"),
    ("hu", "Feladó: Alice <alice@example.com>\nElküldve: 2025. január 6. 9:14\nCímzett: Bob\nTárgy: Időpont"),
]  # fmt: skip


@pytest.mark.parametrize("block", [b for _, b in OUTLOOK_FIELDS], ids=[i for i, _ in OUTLOOK_FIELDS])
def test_outlook_header_block_in_many_locales(block: str) -> None:
    reply = extract_reply(f"{ANSWER}\n\n{block}\n\nCan you come on Tuesday?\n")
    assert reply.visible == ANSWER
    assert "Can you come on Tuesday?" in reply.hidden


# ------------------------------------------------------------------ 4. inline answers -------------

INLINE: list[tuple[str, str, str]] = [
    (
        # Answers typed between quoted lines: the questions stay, the unanswered tail is history.
        "interleaved",
        "On Mon, Jan 6, 2025 at 9:14 AM Alice <alice@example.com> wrote:\n> Can you come Thursday?\n\nYes\n\n"
        "> Will you bring the form?\n\nSure.\n\n> Thanks,\n> Alice\n",
        "> Can you come Thursday?\n\nYes\n\n> Will you bring the form?\n\nSure.",
    ),
    (
        "interleaved_below_a_top_line",
        "Answers below.\n\nOn Mon, Jan 6, 2025 at 9:14 AM Alice <alice@example.com> wrote:\n"
        "> Can you come Thursday?\nYes\n> Will you bring the form?\nSure.\n>\n> Thanks,\n> Alice\n",
        "Answers below.\n\n> Can you come Thursday?\nYes\n> Will you bring the form?\nSure.",
    ),
    (
        # One short point answered inside the history: the same case, one answer.
        "one_point_then_history",
        "On Mon, Jan 6, 2025 at 9:14 AM Alice <alice@example.com> wrote:\n> Can you come Thursday?\n\n"
        "Yes, Thursday is fine.\n\n> Also, please bring the form.\n> Thanks,\n> Alice\n",
        "> Can you come Thursday?\n\nYes, Thursday is fine.",
    ),
    (
        "one_word_answers_are_answers",
        "> Thursday?\nYes\n> 10 am?\nNo\n> Alice\n",
        "> Thursday?\nYes\n> 10 am?\nNo",
    ),
    (
        # The whole previous message quoted, the answer typed under it: the conversation already
        # shows that message, so only the answer is new.
        "bottom_post",
        "On Mon, Jan 6, 2025 at 9:14 AM Alice <alice@example.com> wrote:\n> Can you come Thursday?\n\nYes.",
        "Yes.",
    ),
    (
        "top_post_keeps_nothing_quoted",
        "Yes, Thursday.\n\nOn Mon, Jan 6, 2025 at 9:14 AM Alice <alice@example.com> wrote:\n> Can you come Thursday?\n",
        "Yes, Thursday.",
    ),
]


@pytest.mark.parametrize(("text", "visible"), [c[1:] for c in INLINE], ids=[c[0] for c in INLINE])
def test_inline_answers(text: str, visible: str) -> None:
    reply = extract_reply(text)
    assert reply.visible == visible
    assert "wrote:" not in reply.visible  # a kept quote loses its attribution line


def test_inline_trailing_history_stays_hidden() -> None:
    reply = extract_reply(INLINE[0][1])
    assert "> Thanks," in reply.hidden and "wrote:" in reply.hidden


# ------------------------------------------------------------------ 5. invisible residue ----------

RESIDUE: list[tuple[str, str]] = [
    ("gmail_mark", "Thanks, see you Tuesday.\n\u1427\n"),
    ("gmail_mark_after_signature", "Thanks, see you Tuesday.\n\n\u1427\n\nOn Mon, Jan 6, 2025 at 9:14 AM A <a@x.example> wrote:\n> hi"),
    ("zero_width", "Thanks, see you Tuesday.\u200b\u200b\n\u200b\n\ufeff"),
    ("bidi_controls", "Thanks, see you Tuesday.\u200e\u202c\n\u2066\u2069\n"),
    ("nbsp_entities", "Thanks, see you Tuesday.&nbsp;&nbsp;\n&nbsp;\n&#160;&nbsp;\n"),
    ("nbsp_characters", "Thanks, see you Tuesday.\u00a0\u00a0\n\u00a0\n"),
    ("soft_hyphen_line", "Thanks, see you Tuesday.\n\u00ad\n"),
    ("leading_residue", "\ufeff\u200bThanks, see you Tuesday."),
]  # fmt: skip


@pytest.mark.parametrize("text", [t for _, t in RESIDUE], ids=[i for i, _ in RESIDUE])
def test_invisible_residue_never_posted(text: str) -> None:
    assert extract_reply(text).visible == "Thanks, see you Tuesday."


def test_residue_inside_words_is_left_alone() -> None:
    """A zero-width joiner builds emoji and some scripts: only residue at the edges goes."""
    family = "Our family says thanks \U0001f468\u200d\U0001f469\u200d\U0001f467"
    assert extract_reply(family).visible == family
    assert extract_reply("Merci &amp; à mardi").visible == "Merci &amp; à mardi"  # only &nbsp; is residue


def test_html_residue_never_posted() -> None:
    html = "<div>Thanks, see you Tuesday.</div><div>&nbsp;</div><div>\u1427</div><div>&#8203;</div>"
    assert extract_reply_from_html(html).visible == "Thanks, see you Tuesday."


# ------------------------------------------------------------------ 6. only history ---------------

HISTORY_ONLY: list[tuple[str, str]] = [
    (
        "nested_chain",
        "On Tue, Jan 7, 2025 at 8:00 AM Alice <alice@example.com> wrote:\n> Thanks!\n>\n"
        "> On Mon, Jan 6, 2025 at 9:14 AM Bob <bob@example.com> wrote:\n>> Can you come Thursday?\n",
    ),
    ("bare_quotes", "> > Can you come Thursday?\n> Yes\n"),
    (
        "outlook_header_and_quote",
        "From: Alice <alice@example.com>\nSent: Monday, January 6, 2025 9:14 AM\n\n> Can you come Thursday?\n",
    ),
    ("quote_and_residue", "\u1427\n> Can you come Thursday?\n\u200b\n"),
]


@pytest.mark.parametrize("text", [t for _, t in HISTORY_ONLY], ids=[i for i, _ in HISTORY_ONLY])
def test_only_history_posts_nothing(text: str) -> None:
    reply = extract_reply(text)
    assert reply.visible == ""
    assert "Can you come Thursday?" in reply.hidden  # the history is kept, hidden


def test_html_only_history_posts_nothing() -> None:
    html = (
        '<div class="gmail_quote"><div class="gmail_attr">On Mon, Jan 6, 2025 at 9:14 AM Alice '
        '&lt;alice@example.com&gt; wrote:</div><blockquote class="gmail_quote">Can you come Thursday?'
        "</blockquote></div>"
    )
    assert extract_reply_from_html(html) == ExtractedReply("", extract_reply_from_html(html).hidden)
    assert "Can you come Thursday?" in extract_reply_from_html(html).hidden


def test_header_glued_to_the_first_quoted_line() -> None:
    """HTML flattened to text puts the header and the quoted text on one line (Yahoo on Android)."""
    text = "Yes.\n\nOn Mon, Jan 6, 2025 at 9:14 AM Alice <alice@example.com> wrote: Can you come on Tuesday?"
    reply = extract_reply(text)
    assert reply.visible == "Yes." and "Can you come on Tuesday?" in reply.hidden
    prose = "On Monday, Jan 6 I wrote: please call me at 10:30 or write to bob@example.com"
    assert extract_reply(prose).visible == prose  # no address in a header: a sentence
