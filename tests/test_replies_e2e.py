"""Replies through the door (issue 16, finding 11.8): real notifications out, real replies in over SMTP.

The worker sends notifications to a recording SMTP sink; the client answers them the way their mail
client would (the notification quoted under a header, an HTML-only reply, a broken MIME structure,
a forward, history only) through the live SMTP ingress; the API shows what was posted.
"""

from __future__ import annotations

import asyncio
import email
import email.policy
from email.message import EmailMessage
from typing import Any

import pytest
from sqlalchemy import select

from mailbridge import replies
from mailbridge.domain.models import InboundLog, Message, Outbox
from mailbridge.outbound.worker import Worker
from tests.mailhelpers import live_server, open_conversation, reply_address, reply_message, send, send_raw
from tests.sink import Sink

BASE = "/api/v1/practices/acme"


@pytest.fixture
def live(seeded: Any) -> Any:
    with live_server(seeded) as server:
        yield server


def notifications_to(services: Any, address: str) -> list[EmailMessage]:
    """Run the delivery worker against a real SMTP sink; the notifications ``address`` received."""
    with Sink() as sink:
        services.settings = services.settings.model_copy(
            update={"smarthost": f"127.0.0.1:{sink.port}", "smarthost_starttls": "off"}
        )
        worker = Worker.from_services(services)

        async def drain() -> None:
            for _ in range(3):
                if await worker.run_once() == 0:
                    break
            await worker.transport.close()

        asyncio.run(drain())
        out = []
        for received in sink.received:
            if received.rcpts == [address]:
                msg = email.message_from_bytes(received.data, policy=email.policy.default)
                assert isinstance(msg, EmailMessage)
                out.append(msg)
        return out


def part(msg: EmailMessage, subtype: str) -> str:
    body = msg.get_body((subtype,))
    assert body is not None
    return str(body.get_content())


def quoted(text: str) -> str:
    return "\n".join(f"> {line}" if line else ">" for line in text.strip().split("\n"))


def posted(services: Any, conversation_id: str) -> list[Message]:
    with services.sessions() as session:
        return list(
            session.scalars(
                select(Message).where(Message.conversation_id == conversation_id).order_by(Message.created_at)
            ).all()
        )


def last_log(services: Any) -> InboundLog:
    with services.sessions() as session:
        row = session.scalars(select(InboundLog).order_by(InboundLog.received_at.desc())).first()
        assert row is not None
        return row


def test_reply_quoting_our_notification_is_cut_exactly(seeded: Any, live: Any) -> None:
    """A header no rule knows (Icelandic) above the quoted notification, an answer typed inside it."""
    conv = open_conversation(
        seeded,
        kind="company",
        company="bakery",
        body="Shall we meet on Tuesday at 10?\n\nPlease bring the consent form.",
    )  # a company conversation: notifications carry the message (full mode)
    [note] = notifications_to(seeded, "alice@client.test")
    with seeded.sessions() as session:
        row = session.scalars(select(Outbox).where(Outbox.recipient_id.is_not(None))).one()
        assert row.sent_fingerprint and row.message_id_header == note["Message-ID"]
    lines = quoted(part(note, "plain")).split("\n")
    at = next(i for i, line in enumerate(lines) if "Tuesday at 10" in line)
    body = "\n".join(
        [
            "Thanks for the reminder.",
            "",
            f"{note['From'].addresses[0].display_name} skrifaði:",
            *lines[: at + 1],
            "",
            "Yes, Tuesday at 10 is fine.",
            "",
            *lines[at + 1 :],
        ]
    )
    reply_to = str(note["Reply-To"])
    answer = reply_message("alice@client.test", reply_to, body, headers={"In-Reply-To": note["Message-ID"]})
    assert send(live, answer, "alice@client.test", reply_to)[0] == 250
    message = posted(seeded, conv)[-1]
    assert message.body == (
        "Thanks for the reminder.\n\n> Shall we meet on Tuesday at 10?\n\nYes, Tuesday at 10 is fine."
    )
    assert "reply to this email" in (message.hidden_text or "")  # our template's line, cut with the copy
    assert (last_log(seeded).details or {}).get("own_copy") is True


def test_html_only_reply_to_an_internal_note_does_not_publish_it(seeded: Any, live: Any, api: Any) -> None:
    """Finding 11.8: a staff member answers an internal note's notification from an HTML-only client;
    the answer is public, the quoted note and the signature must not reach the client in body_html."""
    conv = open_conversation(
        seeded, kind="company", company="bakery", participants=("alice", "dr-jones"), body="Hello Alice!"
    )
    api.post(
        f"{BASE}/conversations/{conv}/messages",
        json={"author": "dr-smith", "body": "Internal: Zorblax diagnosis, do not share.", "internal": True},
    )
    notes = [n for n in notifications_to(seeded, "dr.jones@acme.test") if "Zorblax" in part(n, "plain")]
    assert notes, "dr-jones is notified of the internal note"
    note = notes[-1]
    quoted_html = part(note, "html").split("<body", 1)[1].split(">", 1)[1].rsplit("</body>", 1)[0]
    html = (
        '<div dir="ltr">I will call her tomorrow.</div>'
        '<div class="gmail_signature">Dr Sam Jones<br>Direct line 555 0199</div><br>'
        '<div class="gmail_quote"><div class="gmail_attr">On Mon, Jan 6, 2025 Dr Alex Smith via Acme '
        "&lt;notify@acme.test&gt; wrote:</div>"
        f'<blockquote class="gmail_quote">{quoted_html}</blockquote></div>'
    )
    reply_to = str(note["Reply-To"])
    msg = EmailMessage()
    msg["From"] = "dr.jones@acme.test"
    msg["To"] = reply_to
    msg["Subject"] = "Re: note"
    msg["In-Reply-To"] = note["Message-ID"]
    msg.set_content(html, subtype="html")
    assert send(live, msg, "dr.jones@acme.test", reply_to)[0] == 250
    seen = api.get(f"{BASE}/conversations/{conv}/messages", params={"as": "alice"}).json()["items"]
    answer = seen[-1]
    assert answer["author"] == "dr-jones" and not answer["internal"]
    assert answer["body"] == "I will call her tomorrow."
    assert answer["body_html"] == '<div dir="ltr">I will call her tomorrow.</div>'
    for leaked in ("Zorblax", "do not share", "555 0199", "wrote:"):
        assert leaked not in answer["body"] and leaked not in (answer["body_html"] or "")
    assert "Zorblax" in (posted(seeded, conv)[-1].hidden_text or "")  # kept, hidden


def test_broken_multipart_posts_its_text(seeded: Any, live: Any) -> None:
    conv = open_conversation(seeded)
    address = reply_address(seeded, conv, "alice")
    raw = (
        f"From: alice@client.test\r\nTo: {address}\r\nSubject: Re: Your next appointment\r\n"
        "Message-ID: <broken.1@client.test>\r\nDate: Sat, 21 Nov 2026 10:00:00 +0000\r\nMIME-Version: 1.0\r\n"
        'Content-Type: multipart/alternative; boundary="never-used"\r\nContent-Transfer-Encoding: quoted-printable'
        "\r\n\r\nTuesday at 10 is perfect, =C3=A0 mardi.\r\n"
    ).encode()
    assert send_raw(live, raw, "alice@client.test", address)[0] == 250
    assert posted(seeded, conv)[-1].body == "Tuesday at 10 is perfect, à mardi."


def test_forward_alone_is_posted_and_below_text_is_hidden(seeded: Any, live: Any) -> None:
    conv = open_conversation(seeded)
    address = reply_address(seeded, conv, "alice")
    forward = (
        "---------- Forwarded message ---------\nFrom: Lab <lab@lab.example>\nDate: Mon, Jan 6, 2025 at 9:14 AM\n"
        "Subject: Results\nTo: Alice <alice@client.test>\n\nYour blood test results are normal."
    )
    assert (
        send(live, reply_message("alice@client.test", address, forward), "alice@client.test", address)[0]
        == 250
    )
    assert posted(seeded, conv)[-1].body == forward
    with_text = reply_message("alice@client.test", address, f"For our appointment.\n\n{forward}")
    assert send(live, with_text, "alice@client.test", address)[0] == 250
    last = posted(seeded, conv)[-1]
    assert last.body == "For our appointment." and "results are normal" in (last.hidden_text or "")


def test_history_only_is_refused_as_empty(seeded: Any, live: Any) -> None:
    conv = open_conversation(seeded)
    address = reply_address(seeded, conv, "alice")
    history = (
        "On Mon, Jan 6, 2025 at 9:14 AM Dr Alex Smith <notify@acme.test> wrote:\n"
        "> Shall we meet on Tuesday?\n>\n> On Sun, Jan 5, 2025 Alice <alice@client.test> wrote:\n>> Hello\n"
    )
    code, text = send(
        live, reply_message("alice@client.test", address, history), "alice@client.test", address
    )
    assert (code, text.decode()) == (
        replies.EMPTY_MESSAGE.code,
        f"{replies.EMPTY_MESSAGE.enhanced} Empty message",
    )
    assert len(posted(seeded, conv)) == 1  # only the opening message
    assert last_log(seeded).reason == "empty_message"


def test_deleting_a_message_forgets_what_was_sent(seeded: Any, api: Any) -> None:
    """The fingerprint of a notification goes with the message it carried (seed 003: deletion erases)."""
    conv = open_conversation(seeded, kind="company", company="bakery", body="Zorblax results are in.")
    notifications_to(seeded, "alice@client.test")
    with seeded.sessions() as session:
        row = session.scalars(select(Outbox).where(Outbox.conversation_id == conv)).one()
        assert row.sent_fingerprint is not None
        message_id = row.message_id
    assert api.delete(f"{BASE}/messages/{message_id}", params={"as": "dr-smith"}).status_code == 204
    with seeded.sessions() as session:
        assert session.scalars(
            select(Outbox.sent_fingerprint).where(Outbox.conversation_id == conv)
        ).all() == [None]


def test_released_html_reply_shows_only_its_visible_part(seeded: Any, live: Any, api: Any) -> None:
    """Finding 11.8 through the other door that posts mail: quarantine release builds the same body."""
    from tests.mailhelpers import add_client

    add_client(seeded, "finn", "finn@nodns.test")  # no SPF, no DKIM: a private reply waits for staff
    conv = open_conversation(seeded, participants=("finn",), body="Zorblax plan attached, please confirm.")
    address = reply_address(seeded, conv, "finn")
    msg = EmailMessage()
    msg["From"] = "finn@nodns.test"
    msg["To"] = address
    msg["Subject"] = "Re: plan"
    msg.set_content(
        '<p>Confirmed, thank you.</p><div class="gmail_signature">Finn<br>555 0142</div>'
        '<div class="gmail_quote">On Mon, Dr Alex Smith wrote:<blockquote class="gmail_quote">'
        "Zorblax plan attached, please confirm.</blockquote></div>",
        subtype="html",
    )
    assert send(live, msg, "finn@nodns.test", address)[0] == 250
    [held] = api.get(f"{BASE}/quarantine", params={"state": "held"}).json()["items"]
    released = api.post(f"{BASE}/quarantine/{held['id']}/release", params={"as": "dr-smith"}, json={})
    assert released.status_code == 201, released.text
    assert released.json()["body"] == "Confirmed, thank you."
    assert released.json()["body_html"] == "<p>Confirmed, thank you.</p>"
