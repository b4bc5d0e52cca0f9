"""compose_bytes writes exactly what ``compose(...).as_bytes(policy=SMTP)`` writes, byte for byte.

Both draw the multipart boundary from ``random`` in the same way, so with the same seed the two
outputs must be identical. The bodies cover every transfer encoding the content manager picks.
"""

from __future__ import annotations

import binascii
import email
import email.policy
import random
import string
import sys
from datetime import UTC, datetime
from email import quoprimime
from email.headerregistry import Address

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mailbridge.outbound import compose as compose_module
from mailbridge.outbound.catalog import sample_context
from mailbridge.outbound.compose import (
    Envelope,
    InlineImage,
    UnsafeAddress,
    compose,
    compose_bytes,
    named,
    thread_index,
)
from mailbridge.outbound.render import Rendered, Renderer

ROOT = datetime(2024, 3, 5, 9, 15, tzinfo=UTC)

BODIES = {
    "empty": "",
    "ascii_short_lines": "Hello Alice,\n\nYour return is ready.\n",
    "utf8_short_lines": "Bonjour Bob,\n\nVotre déclaration est prête à être signée.\n",
    "ascii_long_lines": (
        "This paragraph is long enough to need quoted-printable soft line breaks. " * 4 + "\n"
    )
    * 12,
    "few_long_lines": "A single long line that goes on and on, " * 5,
    "utf8_long_lines": ("Très longue ligne française, éèêà ç ù — « guillemets » et œuvre. " * 3 + "\n") * 12,
    "mostly_non_latin": (
        "Привет, это очень длинная строка на русском языке для проверки кодировки. " * 2 + "\n"
    )
    * 3,
    "trailing_spaces": "line with trailing space \nand a tab\t\n" + "x" * 100 + " \n",
    "crlf_and_cr": "one\r\ntwo\rthree\n" + "y" * 90,
    "equals_at_fold": ("=" * 3 + "a" * 72 + "=" * 5 + "\n") * 11,
    "dash_lines": "--\n-- \n--===============0000000000000000000==\n" + "z" * 80,
    "control_chars": "form\x0cfeed and vertical\x0btab and nel\x85 here " * 4,
}


def envelope(**overrides: object) -> Envelope:
    fields: dict[str, object] = {
        "from_address": named("Dr Alex Smith via Acme Counselling", "notify@acme.test"),
        "to_address": named("Alice Martin", "alice@client.test"),
        "reply_to": named(None, "reply+abcdefghijklmnopqrstuvwxyz234567@reply.acme.test"),
        "subject": "Re: Quarterly VAT return",
        "message_id": "<n.abc.1@acme.test>",
        "date": ROOT,
        "in_reply_to": "<n.root.1@acme.test>",
        "references": ("<n.root.1@acme.test>",),
        "thread_topic": "Quarterly VAT return",
        "thread_index": thread_index("conv", ROOT, ROOT, 1),
        "list_unsubscribe": "https://app.example/settings/notifications",
        "loop_value": "mx.acme.test",
    }
    fields.update(overrides)
    return Envelope(**fields)  # type: ignore[arg-type]


def both(env: Envelope, rendered: Rendered, seed: int = 7) -> tuple[bytes, bytes]:
    random.seed(seed)
    reference = compose(env, rendered).as_bytes(policy=email.policy.SMTP)
    random.seed(seed)
    fast = compose_bytes(env, rendered)
    return reference, fast


@pytest.mark.parametrize("text_name", sorted(BODIES))
@pytest.mark.parametrize("html_name", ["ascii_short_lines", "utf8_long_lines", "ascii_long_lines"])
def test_same_bytes_for_every_transfer_encoding(text_name: str, html_name: str) -> None:
    rendered = Rendered("Subject", BODIES[text_name], "<p>" + BODIES[html_name] + "</p>\n")
    reference, fast = both(envelope(), rendered)
    assert fast == reference


@pytest.mark.parametrize(
    "overrides",
    [
        {},
        {"reply_to": None, "in_reply_to": None, "references": (), "thread_topic": None, "thread_index": None},
        {"list_unsubscribe": None},
        {"from_address": named(None, "notify@acme.test"), "to_address": named(None, "bob@client.test")},
        {"from_address": named("Élodie Müller — Cabinet « Santé »", "notify@acme.test")},
        {"to_address": named('Evil "Doc"\r\nBcc: x@evil.test', "alice@client.test")},
        {"subject": "Vous avez un nouveau message sécurisé " * 6, "thread_topic": "Sujet très long " * 12},
        {"subject": "Hi\r\nBcc: y@evil.test"},
        {"references": ("<a@x.test>", "<b@x.test>", "<c@x.test>") * 8},
        {"date": datetime(2031, 12, 31, 23, 59, 59, tzinfo=UTC)},
        {"extra": {"X-Mailbridge-Kind": "notice", "X-Other": "line\r\nbreak"}},
    ],
)
def test_same_bytes_for_every_header_shape(overrides: dict[str, object]) -> None:
    rendered = Rendered("s", BODIES["utf8_long_lines"], "<p>" + BODIES["ascii_long_lines"] + "</p>")
    for seed in range(3):
        reference, fast = both(envelope(**overrides), rendered, seed)
        assert fast == reference


@pytest.mark.parametrize("locale", ["en", "fr"])
@pytest.mark.parametrize("template", ["notification_full", "notification_minimal"])
def test_same_bytes_for_the_real_templates(locale: str, template: str) -> None:
    context = sample_context(template, locale) | {"body": BODIES["utf8_long_lines"]}
    rendered = Renderer().render(template, locale, context)
    reference, fast = both(envelope(subject=rendered.subject), rendered)
    assert fast == reference


def test_a_long_one_click_unsubscribe_uri_stays_whole_on_one_line() -> None:
    """RFC 8058's URI must reach the client as a URI: not folded into RFC 2047 encoded words."""
    url = "https://mailbridge.example.org/u/" + "gAAAAABn" + "x" * 110
    rendered = Rendered("s", "t", "<p>h</p>")
    reference, fast = both(envelope(list_unsubscribe=url), rendered)
    assert fast == reference
    assert f"\r\nList-Unsubscribe: <{url}>\r\n".encode() in fast
    assert b"\r\nList-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n" in fast
    msg = email.message_from_bytes(fast, policy=email.policy.default)
    assert msg["List-Unsubscribe"] == f"<{url}>"


@pytest.mark.parametrize("html_name", ["ascii_short_lines", "utf8_long_lines"])
def test_same_bytes_with_inline_images(html_name: str) -> None:
    logo = InlineImage(
        "logo.0123456789abcdef@acme.test", "image/png", bytes(range(256)) * 9 + b"\x89", "logo.png"
    )
    other = InlineImage(
        "logo.fedcba9876543210@acme.test", "image/jpeg", b"\xff\xd8\xff" + b"j" * 100, "logo.jpg"
    )
    rendered = Rendered("s", BODIES["utf8_long_lines"], "<p>" + BODIES[html_name] + "</p>\n")
    for seed, inline in ((1, (logo,)), (2, (logo, other))):
        random.seed(seed)
        reference = compose(envelope(), rendered, inline=inline).as_bytes(policy=email.policy.SMTP)
        random.seed(seed)
        assert compose_bytes(envelope(), rendered, inline) == reference


def test_inline_images_go_with_the_html_in_multipart_related() -> None:
    logo = InlineImage(
        "logo.0123456789abcdef@acme.test", "image/png", b"\x89PNG\r\n\x1a\n" + b"\0" * 40, "logo.png"
    )
    data = compose_bytes(
        envelope(),
        Rendered("s", "text", '<img src="cid:logo.0123456789abcdef@acme.test" alt="Acme">'),
        (logo,),
    )
    msg = email.message_from_bytes(data, policy=email.policy.default)
    assert msg.get_content_type() == "multipart/alternative"
    plain, related = msg.get_payload()  # type: ignore[misc]
    assert plain.get_content_type() == "text/plain" and related.get_content_type() == "multipart/related"
    html, image = related.get_payload()
    assert html.get_content_type() == "text/html"
    assert image["Content-ID"] == "<logo.0123456789abcdef@acme.test>" and image.get_content() == logo.data


def test_a_body_line_that_looks_like_the_boundary_gets_the_generators_choice() -> None:
    random.seed(11)
    token = random.randrange(sys.maxsize)
    taken = "=" * 15 + f"{token:019d}" + "=="
    rendered = Rendered("s", f"--{taken}\n--{taken}.0--\nafter\n", f"--{taken}")
    reference, fast = both(envelope(), rendered, seed=11)
    assert fast == reference


def test_header_injection_is_still_refused() -> None:
    rendered = Rendered("s", "t", "<p>h</p>")
    with pytest.raises(ValueError):
        compose_bytes(envelope(message_id="<a@b>\r\nBcc: x@evil.test"), rendered)
    with pytest.raises(ValueError):
        compose_bytes(envelope(thread_index="abc\nBcc: x@evil.test"), rendered)
    with pytest.raises(UnsafeAddress):
        named(None, "alice@client.test\r\nBcc: x@evil.test")


@pytest.mark.parametrize("name", ["Content-Type", "MIME-Version", "From", "Subject"])
def test_extra_fields_that_compose_would_move_or_refuse_are_refused(name: str) -> None:
    with pytest.raises(ValueError):
        compose_bytes(envelope(extra={name: "x"}), Rendered("s", "t", "<p>h</p>"))


def test_parses_back_with_one_recipient_and_both_alternatives() -> None:
    data = compose_bytes(envelope(), Rendered("s", BODIES["utf8_long_lines"], "<p>é</p>"))
    msg = email.message_from_bytes(data, policy=email.policy.default)
    assert isinstance(msg, email.message.EmailMessage)
    assert msg.get_all("To") == ["Alice Martin <alice@client.test>"]
    text = msg.get_body(("plain",)).get_content()  # type: ignore[union-attr]
    html = msg.get_body(("html",)).get_content()  # type: ignore[union-attr]
    # parsed from wire format, the decoded parts keep their CRLF line ends
    assert text.replace("\r\n", "\n") == BODIES["utf8_long_lines"]
    assert html.replace("\r\n", "\n") == "<p>é</p>\n"


# ---- the fast paths inside compose_bytes, each against what it replaces ------------------------------

VERBATIM_CASES: list[tuple[str, str | Address]] = [
    ("Message-ID", "<n.0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0.12@acme.example>"),
    ("Message-ID", "<a@b>"),
    ("Message-ID", "<n." + "x" * 62 + "@acme.example>"),  # one past the line: folded
    ("Message-ID", "<n." + "x" * 60 + "@acme.example>"),  # exactly 78
    ("Message-ID", "<a=?utf-8?q?x?=@b>"),  # an encoded word's opening: never verbatim
    ("Message-ID", "<a b@c>"),
    ("Message-ID", "<(comment)a@b>"),
    ("Message-ID", "no brackets@all"),
    ("In-Reply-To", "<n.root.1@acme.test>"),
    ("References", "<n.root.1@acme.test>"),
    ("References", "<a@x.test> <b@x.test> <c@x.test>"),
    ("References", " ".join(["<a@x.test>", "<b@x.test>", "<c@x.test>"] * 8)),  # too long: folded
    ("References", "<a@x.test>  <b@x.test>"),
    ("Thread-Index", thread_index("conv", ROOT, ROOT, 1)),
    ("Thread-Index", thread_index("conv", ROOT, ROOT, 0)),
    ("Thread-Index", "AAAA=="),
    ("Date", "Tue, 05 Mar 2024 09:15:00 +0000"),
    ("Date", "Wed, 31 Dec 2031 23:59:59 -0000"),
    ("Date", "Tue, 5 Mar 2024 09:15:00 +0000"),
    ("Reply-To", named(None, "reply+abcdefghijklmnopqrstuvwxyz234567@reply.acme.test")),
    ("Reply-To", named(None, "reply." + "a" * 62 + "@reply.acme.test")),  # too long: folded
    ("Reply-To", named("Alice", "reply+abc@reply.acme.test")),
    ("Reply-To", Address(username="a..b", domain="x.test")),
    ("Reply-To", Address(username='we"ird', domain="x.test")),
    ("To", named(None, "alice@client.test")),
    ("To", named("Alice Martin", "alice@client.test")),
    ("Subject", "Hello"),  # not one of the verbatim fields
    ("List-Unsubscribe", "<https://mb.example/u/" + "t" * 120 + ">"),
    ("List-Unsubscribe", "<https://mb.example/u/abc>"),
    ("List-Unsubscribe", "<https://mb.example/u/a=?utf-8?q?b?=>"),
    ("List-Unsubscribe", "<https://mb.example/u/a b>"),
    ("List-Unsubscribe", "<https://mb.example/u/é>"),
]


@pytest.mark.parametrize(("name", "value"), VERBATIM_CASES)
def test_fields_written_verbatim_fold_as_their_header_objects(name: str, value: str | Address) -> None:
    assert compose_module._fold(name, value) == compose_module._fold_slow(name, value)


def test_random_verbatim_shapes_fold_as_their_header_objects() -> None:
    rng = random.Random(5)
    atext = string.ascii_letters + string.digits + ".!#$%&'*+/=^_`{|}~-"
    odd = '<>@ ?()"\t'

    def some(alphabet: str, most: int) -> str:
        return "".join(rng.choice(alphabet) for _ in range(rng.randrange(1, most)))

    verbatim = 0
    for _ in range(3000):
        value = f"<{some(atext, 40)}@{some(string.ascii_letters + '.-', 30)}>"
        if rng.random() < 0.3:
            value = " ".join([value, f"<{some(atext, 20)}@{some('ab.-', 10)}>"])
        if rng.random() < 0.2:
            at = rng.randrange(len(value))
            value = value[:at] + rng.choice(odd) + value[at:]
        for name in ("Message-ID", "References", "Thread-Index", "Date"):
            try:
                expected = compose_module._fold_slow(name, value)
            except Exception:  # the standard library's parser fails on some: so must compose
                assert compose_module._verbatim(name, value) is None, (name, value)
                continue
            assert compose_module._fold(name, value) == expected, (name, value)
            verbatim += compose_module._verbatim(name, value) is not None
    assert verbatim > 1000  # the shapes written directly were tried, not only the others


def test_multipart_content_type_with_any_boundary_folds_as_the_header_object() -> None:
    rng = random.Random(3)
    for _ in range(200):
        boundary = "=" * 15 + f"{rng.randrange(sys.maxsize):019d}" + "=="
        for subtype in ("alternative", "related", "mixed"):
            value = f'multipart/{subtype}; boundary="{boundary}"'
            assert compose_module._multipart_type(subtype, boundary) == compose_module._fold_slow(
                "Content-Type", value
            )
    retry = "=" * 15 + "1" * 19 + "==.0"
    assert compose_module._multipart_type("alternative", retry) == compose_module._fold_slow(
        "Content-Type", f'multipart/alternative; boundary="{retry}"'
    )


def _text_body_reference(text: str) -> tuple[str, bytes]:
    """The content manager's choice with quoprimime over the whole body (before line caching)."""
    lines = text.encode("utf-8").splitlines()
    if max((len(line) for line in lines), default=0) <= 78:
        body = b"\r\n".join(lines) + b"\r\n"
        return ("7bit" if body.isascii() else "8bit"), body
    sniff = b"\r\n".join(lines[:10]) + b"\r\n"
    sniff_qp = quoprimime.body_encode(sniff.decode("latin-1"), 78)
    if len(sniff_qp) > len(binascii.b2a_base64(sniff)):
        return "base64", b""  # unchanged code; compared on its choice only
    if len(lines) <= 10:
        return "quoted-printable", sniff_qp.replace("\n", "\r\n").encode("ascii")
    encoded = quoprimime.body_encode((b"\n".join(lines) + b"\n").decode("latin-1"), 78)
    return "quoted-printable", encoded.replace("\n", "\r\n").encode("ascii")


def test_quoted_printable_line_by_line_equals_quoprimime_on_the_whole_body() -> None:
    rng = random.Random(9)
    pieces = ["word", "=", " ", "\t", "é", "Привет", "--", ".", "\x0c", "\x85", "a" * 70, "=" * 3, "€"]
    texts = list(BODIES.values())
    for _ in range(400):
        lines = [
            "".join(rng.choice(pieces) for _ in range(rng.randrange(0, 40)))
            for _ in range(rng.randrange(1, 25))
        ]
        texts.append(rng.choice(["\n", "\r\n", "\r"]).join(lines) + rng.choice(["", "\n", " ", "\t\n"]))
    for text in texts:
        cte, body = compose_module._text_body(text)
        expected_cte, expected = _text_body_reference(text)
        assert cte == expected_cte, text
        if cte != "base64":
            assert body == expected, text


@settings(max_examples=1500, deadline=None)
@given(
    line=st.lists(
        st.sampled_from([b"=", b" ", b"\t", b"a", b"\xc3\xa9", b"\x85", b"\x0c", b"x" * 70, b"==", b"~"])
        | st.binary(max_size=4).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b"")),
        max_size=60,
    ).map(b"".join)
)
def test_one_quoted_printable_line_equals_quoprimime(line: bytes) -> None:
    expected = quoprimime.body_encode(line.decode("latin-1") + "\n", 78)[:-1]
    encoded, lf_length = compose_module._qp_line.__wrapped__(line)
    assert encoded == expected.replace("\n", "\r\n").encode("ascii")
    assert lf_length == len(expected)
