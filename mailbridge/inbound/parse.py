"""Parse once with the stdlib (policy.default), robust to missing boundaries and unknown charsets.

The corpora in ../shared/corpora contain dozens of messages on which a naive ``get_content()``
raises; every accessor here falls back to a lossy decode instead of failing the message.

A multipart whose boundary never appears in its body is shown by mail clients as what it is:
text. The stdlib leaves such a part with its body as one string; here its parts are recovered when
the body carries them under another delimiter, and otherwise the body becomes the text (its
transfer encoding and charset decoded), so a person's words are never refused as an empty message.
"""

from __future__ import annotations

import email
import email.policy
import io
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from email.headerregistry import Address, BaseHeader, HeaderRegistry
from email.message import EmailMessage, Message
from email.policy import EmailPolicy

from mailbridge.inbound import prescan
from mailbridge.storage.intake import Upload

_POLICY = email.policy.default


class _RememberingHeaders(HeaderRegistry):
    """policy.default parses a header again on every read, and the parser itself reads Content-Type
    many times per part: remembering each (name, value) for one message cuts parsing by 3x to 4x.

    Header objects are immutable ``str`` subclasses, so handing out the same one twice is safe; the
    memory lives and dies with the message (one registry per parse, nothing shared between mails).
    """

    def __init__(self) -> None:
        super().__init__()
        self._seen: dict[tuple[str, str], BaseHeader] = {}

    def __call__(self, name: str, value: str) -> BaseHeader:
        key = (name.lower(), value)
        header = self._seen.get(key)
        if header is None:
            header = self._seen[key] = super().__call__(name, value)
        return header


def message_policy() -> EmailPolicy[EmailMessage]:
    """policy.default with a header memory of its own: one per parsed message."""
    return email.policy.default.clone(header_factory=_RememberingHeaders())


@dataclass
class ParsedMail:
    message: EmailMessage
    text: str | None = None
    html: str | None = None
    attachments: list[Upload] = field(default_factory=list)
    defects: list[str] = field(default_factory=list)


def parse_bytes(raw: bytes) -> EmailMessage:
    msg = email.message_from_bytes(raw, policy=message_policy())
    assert isinstance(msg, EmailMessage)
    return msg


def header_text(msg: Message, name: str) -> str:
    """A header's decoded value, never raising on broken encoded-words."""
    try:
        value = msg.get(name)
    except Exception:
        return ""
    if value is None:
        return ""
    return str(value).replace("\r", " ").replace("\n", " ").strip()


def single_from(msg: EmailMessage) -> Address | None:
    """The one From address, or None when there are several, none, or the parse was ambiguous (A4, A5)."""
    try:
        headers = msg.get_all("From") or []
        if len(headers) != 1:
            return None
        header = headers[0]
        addresses: tuple[Address, ...] = tuple(getattr(header, "addresses", None) or ())
        if len(addresses) != 1 or getattr(header, "defects", None):
            return None
        address = addresses[0]
        if not address.username or not address.domain or "@" in address.username:
            return None
        return address
    except Exception:
        return None


def _decode_text(part: Message) -> str:
    try:
        content = part.get_content()  # type: ignore[attr-defined]
        if isinstance(content, str):
            return content
    except Exception:
        pass
    payload = part.get_payload(decode=True)
    if not isinstance(payload, bytes):
        return ""
    charset = part.get_content_charset() or "utf-8"
    try:
        return payload.decode(charset, errors="replace")
    except LookupError:  # unknown charset such as x-evil (M5)
        return payload.decode("utf-8", errors="replace")


def _filename(part: Message) -> str | None:
    try:
        name = part.get_filename()
    except Exception:
        return None
    return str(name) if name else None


def _is_attachment(content_type: str, disposition: str, filename: str | None) -> bool:
    """Each header is read once per part: policy.default builds a new header object on every access."""
    return (
        disposition == "attachment" or bool(filename) or not content_type.startswith(("text/", "multipart/"))
    )


def _leaves(part: Message, depth: int = 0) -> Iterator[Message]:
    """Leaf parts in order; a message/rfc822 part is one opaque leaf, never processed as a reply (M8)."""
    if depth > 50:
        return
    if not part.is_multipart() or part.get_content_type() == "message/rfc822":
        yield part
        return
    payload = part.get_payload()
    if isinstance(payload, list):
        for child in payload:
            if isinstance(child, Message):
                yield from _leaves(child, depth + 1)


def _attachment_bytes(part: Message) -> bytes:
    if part.get_content_type() == "message/rfc822":
        inner = part.get_payload()
        if isinstance(inner, list) and inner and isinstance(inner[0], Message):
            return inner[0].as_bytes(policy=_POLICY)
        return b""
    payload = part.get_payload(decode=True)
    return payload if isinstance(payload, bytes) else b""


# A delimiter line ("--" + RFC 2046 bchars) directly followed by a part's header block.
_DELIMITER_THEN_HEADERS = re.compile(
    rb"^--([0-9A-Za-z'()+_,./:=?-]{1,70})[ \t]*\r?\n(?:[!-9;-~]{1,76}:[^\n]*\r?\n){0,10}?"
    rb"content-(?:type|transfer-encoding|disposition):",
    re.IGNORECASE | re.MULTILINE,
)
_LOOKS_LIKE_HTML = re.compile(r"^\s*(?:<!doctype\s+html|<html|<head|<body|<div|<p[\s>]|<table|<meta)", re.I)


def _broken_multipart(part: Message, depth: int) -> Message | str | None:
    """A multipart whose boundary is missing: its parts under the delimiter actually used, or its text.

    Returns the re-parsed multipart when the body holds parts under another delimiter, else the body
    decoded as text, else None. The recovered structure passes the same pre-scan as a whole message
    (depth, parts, header sizes) before it is parsed, and recovery nests at most three times.
    """
    body = part.get_payload(decode=True)
    if not isinstance(body, bytes) or not body.strip():
        return None
    found = _DELIMITER_THEN_HEADERS.search(body)
    if found is not None and depth < 3 and body.count(b"--" + found.group(1)) >= 2:
        head = b'Content-Type: %s; boundary="%s"\r\n\r\n' % (
            part.get_content_type().encode("ascii", "replace"),
            found.group(1),
        )
        limits = prescan.PrescanLimits(require_crlf=False)
        if prescan.prescan(head + body, limits).ok:
            recovered = parse_bytes(head + body)
            if recovered.is_multipart():
                return recovered
    charset = part.get_content_charset() or "utf-8"
    try:
        return body.decode(charset, errors="replace")
    except LookupError:
        return body.decode("utf-8", errors="replace")


def parse_mail(raw: bytes) -> ParsedMail:
    msg = parse_bytes(raw)
    parsed = ParsedMail(message=msg, defects=[type(d).__name__ for d in msg.defects])
    _collect(parsed, msg, 0)
    return parsed


def _collect(parsed: ParsedMail, root: Message, depth: int) -> None:
    for part in _leaves(root):
        parsed.defects.extend(type(d).__name__ for d in getattr(part, "defects", ()))
        content_type = part.get_content_type()
        if part.get_content_maintype() == "multipart":  # a multipart left as one string: broken
            recovered = _broken_multipart(part, depth)
            if isinstance(recovered, Message):
                _collect(parsed, recovered, depth + 1)
            elif recovered is not None and _LOOKS_LIKE_HTML.match(recovered):
                parsed.html = parsed.html if parsed.html is not None else recovered
            elif recovered is not None:
                parsed.text = parsed.text if parsed.text is not None else recovered.replace("\r\n", "\n")
            continue
        filename = _filename(part)
        attachment = _is_attachment(content_type, (part.get_content_disposition() or "").lower(), filename)
        if not attachment and content_type == "text/plain" and parsed.text is None:
            parsed.text = _decode_text(part)
        elif not attachment and content_type == "text/html" and parsed.html is None:
            parsed.html = _decode_text(part)
        elif attachment or content_type not in ("text/plain", "text/html"):
            content_id = part.get("Content-ID")
            parsed.attachments.append(
                Upload(
                    filename=filename,
                    content_type=content_type,
                    file=io.BytesIO(_attachment_bytes(part)),
                    content_id=str(content_id).strip("<> ") if content_id else None,
                )
            )
