"""Composing a notification: headers built only from ``email.headerregistry`` objects, threading for every client."""

from __future__ import annotations

import base64
import hashlib
import re
import struct
import unicodedata
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.headerregistry import Address
from email.message import EmailMessage
from email.policy import SMTP
from email.utils import format_datetime

from mailbridge.outbound.render import Rendered

LOOP_HEADER = "X-Mailbridge-Loop"
_BIDI_AND_CONTROL = re.compile(r"[\x00-\x1f\x7f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")
_ADDR_OK = re.compile(r"^[^\s@<>()\[\],;:\"\\]+@[A-Za-z0-9.-]+$")


class UnsafeAddress(ValueError):
    """An address with CR, LF, NUL or other structure we will never hand to an SMTP client (O3)."""


def safe_display_name(name: str | None, limit: int = 78) -> str:
    """No CR/LF, controls or bidi overrides; ``Bob\\r\\nBcc: x`` becomes a harmless name (O1, O2)."""
    if not name:
        return ""
    cleaned = _BIDI_AND_CONTROL.sub(" ", unicodedata.normalize("NFC", name))
    return " ".join(cleaned.split())[:limit]


def checked_address(addr: str) -> Address:
    if not _ADDR_OK.match(addr):
        raise UnsafeAddress("unsafe address")
    local, _, domain = addr.rpartition("@")
    return Address(username=local, domain=domain)


def named(display: str | None, addr: str) -> Address:
    base = checked_address(addr)
    return Address(display_name=safe_display_name(display), username=base.username, domain=base.domain)


def thread_index(conversation_key: str, root_time: datetime, now: datetime, depth: int) -> str:
    """Outlook's Thread-Index: 22-byte header (FILETIME + GUID), plus a 5-byte block per reply."""
    filetime = int((root_time - datetime(1601, 1, 1, tzinfo=UTC)).total_seconds() * 10_000_000)
    header = struct.pack(">Q", filetime)[:6] + hashlib.sha256(conversation_key.encode()).digest()[:16]
    blocks = b""
    if depth > 0:
        delta = max(0, int((now - root_time).total_seconds() * 10_000_000)) >> 18
        blocks = struct.pack(">I", delta & 0x7FFFFFFF) + bytes([depth % 256])
    return base64.b64encode(header + blocks).decode("ascii")


@dataclass(frozen=True)
class Envelope:
    """Everything a notification's headers say, decided before composing."""

    from_address: Address
    to_address: Address
    subject: str
    message_id: str
    date: datetime
    reply_to: Address | None = None
    in_reply_to: str | None = None
    references: tuple[str, ...] = ()
    thread_topic: str | None = None
    thread_index: str | None = None
    list_unsubscribe: str | None = None
    loop_value: str = "mailbridge"
    extra: dict[str, str] = field(default_factory=dict)


def compose(env: Envelope, rendered: Rendered, attached: bytes | None = None) -> EmailMessage:
    msg = EmailMessage(policy=SMTP)
    msg["From"] = env.from_address
    msg["To"] = env.to_address
    if env.reply_to is not None:
        msg["Reply-To"] = env.reply_to
    msg["Subject"] = safe_display_name(env.subject, 255)
    msg["Date"] = format_datetime(env.date)
    msg["Message-ID"] = env.message_id
    if env.in_reply_to:
        msg["In-Reply-To"] = env.in_reply_to
    if env.references:
        msg["References"] = " ".join(env.references)
    if env.thread_topic:
        msg["Thread-Topic"] = safe_display_name(env.thread_topic, 255)
    if env.thread_index:
        msg["Thread-Index"] = env.thread_index
    msg["Auto-Submitted"] = "auto-generated"  # RFC 3834: nobody should auto-reply to us
    msg["X-Auto-Response-Suppress"] = "All"  # Exchange/Outlook out-of-office suppression
    msg[LOOP_HEADER] = env.loop_value
    if env.list_unsubscribe:
        msg["List-Unsubscribe"] = f"<{env.list_unsubscribe}>"
    for name, value in env.extra.items():
        msg[name] = safe_display_name(value, 998)
    msg.set_content(rendered.text)
    msg.add_alternative(rendered.html, subtype="html")
    if attached is not None:
        msg.make_mixed()
        msg.add_attachment(attached, maintype="message", subtype="rfc822", filename="original.eml")
    return msg
