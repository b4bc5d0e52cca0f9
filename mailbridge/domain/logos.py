"""A practice's logo: a small PNG or JPEG, checked by its bytes, kept in the database.

The logo travels inside each notification that shows the practice, as an inline part referenced by
``cid:`` (RFC 2392): no mail client fetches anything when the email opens, so the logo can never
serve as a tracking pixel, and it shows even where remote images are blocked. The cost is its size
in every email: hence the 100 KB limit.

The type is decided by the bytes (the PNG signature and IHDR chunk, RFC 2083; the JPEG SOI marker
and a start-of-frame segment), never by a declared type or name, and the image is not decoded:
reading the header is enough to know its kind and size, and leaves no decoder exposed to it.
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass

from sqlalchemy.orm import Session

from mailbridge.domain.errors import Invalid
from mailbridge.domain.models import PracticeLogo

MAX_BYTES = 100 * 1024
MIN_SIDE, MAX_SIDE = 16, 4000
_PNG = b"\x89PNG\r\n\x1a\n"
# JPEG start-of-frame markers (baseline, extended, progressive, lossless…), not DHT/JPG/DAC.
_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}


@dataclass(frozen=True)
class LogoImage:
    content_type: str
    width: int
    height: int


def inspect_image(data: bytes) -> LogoImage:
    """The image's type and size from its header; raises Invalid (422 ``logo_invalid``) otherwise."""
    if len(data) > MAX_BYTES:
        raise Invalid("logo_too_large", f"the logo must be at most {MAX_BYTES // 1024} KB", "logo")
    found = _png(data) or _jpeg(data)
    if found is None:
        raise Invalid("logo_invalid", "the logo must be a PNG or JPEG image", "logo")
    if not (MIN_SIDE <= found.width <= MAX_SIDE and MIN_SIDE <= found.height <= MAX_SIDE):
        raise Invalid(
            "logo_invalid", f"the logo's sides must be between {MIN_SIDE} and {MAX_SIDE} pixels", "logo"
        )
    return found


def _png(data: bytes) -> LogoImage | None:
    if len(data) < 33 or not data.startswith(_PNG) or data[12:16] != b"IHDR":
        return None
    width, height = struct.unpack(">II", data[16:24])
    return LogoImage("image/png", width, height)


def _jpeg(data: bytes) -> LogoImage | None:
    if not data.startswith(b"\xff\xd8\xff"):
        return None
    pos = 2
    while pos + 4 <= len(data):
        if data[pos] != 0xFF:
            return None
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:  # no length
            pos += 2
            continue
        (length,) = struct.unpack(">H", data[pos + 2 : pos + 4])
        if length < 2:
            return None
        if marker in _SOF:
            if pos + 9 > len(data):
                return None
            height, width = struct.unpack(">HH", data[pos + 5 : pos + 9])
            return LogoImage("image/jpeg", width, height)
        if marker == 0xDA:  # start of scan before any frame header: not an image we accept
            return None
        pos += 2 + length
    return None


def put_logo(session: Session, practice_id: int, data: bytes) -> PracticeLogo:
    image = inspect_image(data)
    row = session.get(PracticeLogo, practice_id)
    if row is None:
        row = PracticeLogo(practice_id=practice_id)
        session.add(row)
    row.content_type = image.content_type
    row.data = data
    row.sha256 = hashlib.sha256(data).hexdigest()
    row.width, row.height = image.width, image.height
    session.flush()
    return row


def delete_logo(session: Session, practice_id: int) -> bool:
    row = session.get(PracticeLogo, practice_id)
    if row is None:
        return False
    session.delete(row)
    session.flush()
    return True
