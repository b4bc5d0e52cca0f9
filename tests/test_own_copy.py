"""Our own notification, cut exactly out of replies: the fingerprint, the cut's rules, the corpus floor."""

from __future__ import annotations

import importlib
import sys
import time
from pathlib import Path
from types import ModuleType

import pytest
from markupsafe import Markup

from mailbridge.domain.fingerprint import Fingerprint, fingerprint, words
from mailbridge.inbound.body import reply_body, visible_part_html
from mailbridge.inbound.trim.own import cut_own_copy
from mailbridge.outbound.build import notification_fingerprint
from mailbridge.outbound.catalog import sample_context
from mailbridge.outbound.context import body_html, preheader
from mailbridge.outbound.render import Renderer

KEY = b"k" * 32
BODY = "Hello Alice,\n\nShall we meet on Tuesday at 10? Please bring the consent form.\n\nDr Smith"
CONTEXT = sample_context("notification_full", "en") | {
    "practice_name": "Acme Counselling",
    "author_name": "Dr Alex Smith",
    "subject": "Your next appointment",
    "body": BODY,
    "body_html": Markup(body_html(BODY)),
    "preheader": preheader(BODY),
    "attachments": [],
    "withheld": "",
    "link": "https://app.example.test/conversations/c1",
    "signin_link": "https://app.example.test/",
    "preferences_link": "https://app.example.test/settings/notifications",
    "is_first": True,
}
RENDERED = Renderer().render("notification_full", "en", CONTEXT)
SENT = Fingerprint.from_json(
    notification_fingerprint(
        KEY,
        RENDERED,
        body=BODY,
        from_name="Dr Alex Smith via Acme Counselling",
        notify_from="notify@acme.test",
    )
)
assert SENT is not None
TEXT = RENDERED.text.strip()
HEADER = "On Mon, Jan 6, 2025 at 9:14 AM Dr Alex Smith via Acme Counselling <notify@acme.test> wrote:"


def quote(text: str) -> str:
    return "\n".join(f"> {line}" if line else ">" for line in text.split("\n"))


def cut(text: str) -> str:
    reply = cut_own_copy(text, [SENT], KEY)
    assert reply is not None, "the copy of our notification was not found"
    return reply.visible


# ------------------------------------------------------------------ the fingerprint --------------


def test_fingerprint_keeps_no_text_and_round_trips() -> None:
    data = notification_fingerprint(KEY, RENDERED, body=BODY, from_name="Dr A", notify_from="n@acme.test")
    stored = repr(data)
    for word in ("Tuesday", "consent", "Alice", "appointment", "Acme"):
        assert word.lower() not in stored.lower()  # hashes only, never the words
    assert Fingerprint.from_json(data) == Fingerprint.from_json(dict(data))
    assert Fingerprint.from_json({"v": 99}) is None and Fingerprint.from_json("junk") is None


def test_fingerprint_is_keyed() -> None:
    """Without the deployment's key the hashes match nothing: another key finds no copy."""
    other = fingerprint(
        b"x" * 32, text=TEXT, html=RENDERED.html, body=BODY, sender="", address="", subject=""
    )
    assert cut_own_copy(f"Yes.\n\n{HEADER}\n{quote(TEXT)}", [other], KEY) is None


def test_words_fold_case_width_punctuation_and_urls() -> None:
    assert words("Ｈello, WORLD — see https://x.example/a?b=1 now!") == ["hello", "world", "see", "now"]


def test_body_and_frame_are_told_apart() -> None:
    assert SENT.body and SENT.frame and not (SENT.body & SENT.frame)


# ------------------------------------------------------------------ the cut ----------------------

# Quote headers no generic rule knows: the copy below them is ours, so they go with it.
UNKNOWN_HEADERS = [
    "Dr Alex Smith via Acme Counselling skrifaði:",  # Icelandic
    "2025. 1. 6. 오전 9:14에 Dr Alex Smith via Acme Counselling <notify@acme.test>님이 작성:",
    "Ngày 6 thg 1, 2025 vào lúc 09:14 Dr Alex Smith via Acme Counselling <notify@acme.test> đã viết:",
    "---- On Mon, 06 Jan 2025 09:14:00 +0100 Dr Alex Smith via Acme Counselling <notify@acme.test> wrote ----",
    "Dr Alex Smith via Acme Counselling",  # a header with no date, no verb, no colon
]


@pytest.mark.parametrize("header", UNKNOWN_HEADERS)
def test_any_quote_header_goes_with_our_copy(header: str) -> None:
    assert (
        cut(f"Tuesday works for me.\n\nAlice\n\n{header}\n\n{quote(TEXT)}\n")
        == "Tuesday works for me.\n\nAlice"
    )


def test_unquoted_copy_without_any_header() -> None:
    assert cut(f"Tuesday works for me.\n\n{TEXT}\n") == "Tuesday works for me."


def test_rewrapped_copy_is_still_ours() -> None:
    import textwrap

    wrapped = "\n".join(line for para in TEXT.split("\n") for line in (textwrap.wrap(para, 30) or [""]))
    assert cut(f"Yes.\n\n{HEADER}\n{quote(wrapped)}\n") == "Yes."


def test_inline_answers_keep_the_lines_they_answer() -> None:
    lines = quote(TEXT).split("\n")
    at = next(i for i, line in enumerate(lines) if "Tuesday at 10" in line)
    answered = [*lines[: at + 1], "", "Yes, Tuesday at 10 works.", "", *lines[at + 1 :]]
    reply = cut_own_copy(f"{HEADER}\n" + "\n".join(answered), [SENT], KEY)
    assert reply is not None
    assert reply.visible == f"{lines[at]}\n\nYes, Tuesday at 10 works."
    assert "wrote in" not in reply.visible and "reply to this email" not in reply.visible  # our frame
    assert "reply to this email" in reply.hidden  # our template's line, cut with the copy


def test_inline_answer_in_an_unquoted_copy_is_shown_as_a_quote() -> None:
    lines = TEXT.split("\n")
    at = next(i for i, line in enumerate(lines) if "Tuesday at 10" in line)
    copy = "\n".join([*lines[: at + 1], "", "YES - see you then.", "", *lines[at + 1 :]])
    text = f"My answer is below.\n\nFrom: Dr Alex Smith via Acme Counselling <notify@acme.test>\nSent: Monday\n\n{copy}"
    assert cut(text) == f"My answer is below.\n\n> {lines[at]}\n\nYES - see you then."


def test_bottom_posted_answer_without_the_copy() -> None:
    text = f"{HEADER}\n{quote(TEXT)}\n\nYes, see you then.\n\n-- \nAlice Martin\n+1 555 0100"
    assert cut(text) == "Yes, see you then."


def test_only_our_notification_posts_nothing() -> None:
    reply = cut_own_copy(f"{HEADER}\n{quote(TEXT)}\n", [SENT], KEY)
    assert reply is not None and reply.visible == "" and "Tuesday" in reply.hidden


def test_an_answer_repeating_the_question_stays() -> None:
    assert cut(f"Tuesday at 10, yes, and I will bring the consent form.\n\n{HEADER}\n{quote(TEXT)}") == (
        "Tuesday at 10, yes, and I will bring the consent form."
    )


def test_no_copy_no_cut() -> None:
    """A reply that quotes nothing of ours is left to the generic rules."""
    assert (
        cut_own_copy("Tuesday works.\n\nOn Mon, Bob <b@x.example> wrote:\n> unrelated", [SENT], KEY) is None
    )
    assert cut_own_copy("Tuesday works.", [], KEY) is None


def test_the_notification_quoted_is_found_among_several() -> None:
    minimal = Renderer().render(
        "notification_minimal",
        "en",
        sample_context("notification_minimal", "en") | {"signin_link": "https://app.example.test/"},
    )
    other = Fingerprint.from_json(
        notification_fingerprint(KEY, minimal, body="", from_name=None, notify_from="notify@acme.test")
    )
    assert other is not None
    text = f"Ok.\n\n{HEADER}\n{quote(minimal.text.strip())}"
    reply = cut_own_copy(text, [SENT, other], KEY)
    assert reply is not None and reply.visible == "Ok."


def test_html_reply_body_html_keeps_only_the_visible_part() -> None:
    html = (
        '<div dir="ltr">Tuesday <b>works</b> for me.</div><div class="gmail_signature">Alice Martin<br>+1 555 0100'
        "</div><p>Dr Alex Smith via Acme Counselling schrieb:</p><blockquote>"
        + RENDERED.html.split("<body", 1)[1].split(">", 1)[1]
        + "</blockquote>"
    )
    body = reply_body(None, html, sent=[SENT], key=KEY)
    assert body.visible == "Tuesday works for me." and body.own_copy
    assert body.html == '<div dir="ltr">Tuesday <b>works</b> for me.</div>'
    assert "Tuesday at 10" in body.hidden and "555" in body.hidden


def test_visible_part_html_never_shows_what_was_trimmed() -> None:
    html = "<p>Yes</p><blockquote><p>Yes</p><p>secret history</p></blockquote><p>signature</p>"
    assert visible_part_html(html, "Yes") == "<p>Yes</p>"
    assert visible_part_html(html, "") is None
    assert visible_part_html("<ul><li>one</li><li>two</li></ul><p>tail</p>", "- one\n- two") == (
        "<ul><li>one</li><li>two</li></ul>"
    )


def test_cut_is_linear_on_large_replies() -> None:
    text = "word " * 200_000 + f"\n\n{HEADER}\n{quote(TEXT)}"
    started = time.perf_counter()
    cut_own_copy(text, [SENT], KEY)
    assert time.perf_counter() - started < 5.0


# ------------------------------------------------------------------ the corpus ------------------


def _own_corpus() -> ModuleType:
    root = Path(__file__).resolve().parents[1]
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))  # benchmarks/ sits next to tests/ and is not an installed package
    return importlib.import_module("benchmarks.own_corpus")


def test_own_notification_corpus() -> None:
    """Every client × language × mode of the generated corpus: the cut at least as good as the
    generic extractor, and within a few cases of every one (see `make bench` for the figures)."""
    corpus = _own_corpus()
    own = generic = total = 0
    misses: list[str] = []
    for case in corpus.cases():
        total += 1
        got = reply_body(case.text, case.html, sent=[case.sent], key=corpus.KEY).visible
        own += got == case.expected
        generic += reply_body(case.text, case.html).visible == case.expected
        if got != case.expected:
            misses.append(f"{case.case_id}: {got!r}")
    assert total >= 600
    assert own >= generic
    assert own / total >= 0.98, "\n".join(misses[:20])
