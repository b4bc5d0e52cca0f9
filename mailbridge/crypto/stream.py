"""Streaming authenticated encryption for stored objects (raw mail, attachments): bounded memory.

A 100 MB attachment cannot be sealed with one AES-GCM call without holding it whole, and a single
tag checked only at the end would hand out unauthenticated plaintext first. So an object is cut
into fixed-size segments, each AES-256-GCM with its own tag, in the construction Tink calls
AES-GCM-HKDF streaming (Hoang, Reyhanitabar, Rogaway and Vizár's "STREAM", ePrint 2015/189):

    header  = b"MBE1" | len(key id) | key id | salt (16) | nonce prefix (7)
    subkey  = HKDF-SHA256(data key, salt, info = "mailbridge-object" | key id | context)
    segment i: AES-256-GCM(subkey, nonce = prefix | i (4 bytes, big-endian) | last (1 byte))

* A fresh random salt per object gives each object its own key: nonces never repeat across objects.
* The segment counter in the nonce stops segments being reordered or dropped from the middle; the
  last-segment flag stops truncation at a segment boundary (a stream that ends without a segment
  flagged last is an error), and bytes after the last segment are an error too.
* ``context`` (the object's logical reference, e.g. ``raw/3/2026-01-02/<id>``) is bound through the
  HKDF info: an object copied over another one's key, or into another practice, fails to open.
* The data key's id is in the header, so a reader finds the key (and master-key rotation, which
  re-wraps data keys, never touches an object).

Why by hand: Tink's Python streaming AEAD exists, but it needs Tink's own keyset format (protobuf
keysets, its key manager) and cannot take the keyring's data keys; the construction above is the
same, in ~150 lines on ``cryptography``'s AESGCM and HKDF, and a tampered, truncated or
wrongly-keyed object is an exception on read, never garbage.
"""

from __future__ import annotations

import io
import secrets
import struct
from collections.abc import Callable
from typing import BinaryIO

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from mailbridge.crypto.keyring import KeyringError, OpenDataKey

MAGIC = b"MBE1"
SEGMENT = 64 * 1024  # plaintext bytes per segment (the last one may be shorter, or empty)
TAG = 16
SALT_BYTES = 16
PREFIX_BYTES = 7
MAX_SEGMENTS = 2**32  # the counter's width

__all__ = ["MAGIC", "DecryptingReader", "EncryptingReader", "StreamError", "ciphertext_size"]


class StreamError(KeyringError):
    """An encrypted object that does not open: changed, truncated, extended, or the wrong key."""


def _subkey(key: bytes, salt: bytes, key_id: str, context: bytes) -> AESGCM:
    info = b"mailbridge-object\x00" + key_id.encode("ascii") + b"\x00" + context
    derived = HKDF(algorithm=hashes.SHA256(), length=32, salt=salt, info=info).derive(key)
    return AESGCM(derived)


def _nonce(prefix: bytes, index: int, last: bool) -> bytes:
    if index >= MAX_SEGMENTS:
        raise StreamError("object too large for one stream")
    return prefix + struct.pack(">I", index) + (b"\x01" if last else b"\x00")


def ciphertext_size(plain_size: int, key_id: str) -> int:
    """The stored size of an object of *plain_size* bytes (header + one tag per segment)."""
    segments = plain_size // SEGMENT + 1
    return len(MAGIC) + 1 + len(key_id) + SALT_BYTES + PREFIX_BYTES + plain_size + segments * TAG


class _Reader(io.RawIOBase):
    """``read(n)`` over a generator of segments (≤ 64 KiB each): one copy of what is returned, and
    at most part of one segment held back for the next read."""

    def __init__(self) -> None:
        super().__init__()
        self._buffer = bytearray()  # what a subclass produced ahead (its first segment) or held back
        self._done = False

    def readable(self) -> bool:
        return True

    def _more(self) -> bytes | None:  # the next piece, or None at the end
        raise NotImplementedError

    def read(self, size: int | None = -1) -> bytes:
        want = -1 if size is None or size < 0 else size
        pieces: list[bytes] = []
        have = 0
        if self._buffer:
            pieces.append(bytes(self._buffer))
            have = len(self._buffer)
            self._buffer.clear()
        while not self._done and (want < 0 or have < want):
            piece = self._more()
            if piece is None:
                self._done = True
                break
            pieces.append(piece)
            have += len(piece)
        if want >= 0 and have > want:  # the overshoot is within the last piece
            last = pieces[-1]
            keep = len(last) - (have - want)
            self._buffer += last[keep:]
            pieces[-1] = last[:keep]
        return b"".join(pieces)

    def readinto(self, target: bytearray | memoryview) -> int:  # type: ignore[override]
        data = self.read(len(target))
        target[: len(data)] = data
        return len(data)


class EncryptingReader(_Reader):
    """Reads the ciphertext of *plain* (a readable binary file), one segment at a time."""

    def __init__(self, plain: BinaryIO, key: OpenDataKey, context: bytes) -> None:
        super().__init__()
        key_id = key.id.encode("ascii")
        if len(key_id) > 255:
            raise StreamError("key id too long")
        salt = secrets.token_bytes(SALT_BYTES)
        self._prefix = secrets.token_bytes(PREFIX_BYTES)
        self._aead = _subkey(key.key, salt, key.id, context)
        self._plain = plain
        self._index = 0
        self._header: bytes | None = MAGIC + bytes([len(key_id)]) + key_id + salt + self._prefix
        self._pending = self._fill()
        self._finished = False

    def _fill(self) -> bytes:
        block = bytearray()
        while len(block) < SEGMENT:
            piece = self._plain.read(SEGMENT - len(block))
            if not piece:
                break
            block += piece
        return bytes(block)

    def _more(self) -> bytes | None:
        if self._header is not None:
            header, self._header = self._header, None
            return header
        if self._finished:
            return None
        current = self._pending
        # A full segment is the last one only when nothing follows it: read ahead one segment.
        self._pending = self._fill() if len(current) == SEGMENT else b""
        last = not self._pending
        sealed = self._aead.encrypt(_nonce(self._prefix, self._index, last), current, None)
        self._index += 1
        self._finished = last
        return sealed


class DecryptingReader(_Reader):
    """Reads the plaintext of an object written by ``EncryptingReader``; every segment is checked
    before any of its bytes are returned, and a stream that does not end properly is an error."""

    def __init__(self, cipher: BinaryIO, key_for: Callable[[str], OpenDataKey], context: bytes) -> None:
        super().__init__()
        self._cipher = cipher
        head = self._exact(len(MAGIC) + 1)
        if len(head) < len(MAGIC) + 1 or head[: len(MAGIC)] != MAGIC:
            raise StreamError("not an encrypted object (bad header)")
        key_id_bytes = self._exact(head[-1])
        salt = self._exact(SALT_BYTES)
        prefix = self._exact(PREFIX_BYTES)
        if len(key_id_bytes) != head[-1] or len(salt) != SALT_BYTES or len(prefix) != PREFIX_BYTES:
            raise StreamError("encrypted object truncated in its header")
        try:
            key_id = key_id_bytes.decode("ascii")
        except UnicodeDecodeError:
            raise StreamError("encrypted object has a malformed key id") from None
        key = key_for(key_id)
        self.key_id = key_id
        self._aead = _subkey(key.key, salt, key_id, context)
        self._prefix = prefix
        self._index = 0
        self._ahead = self._exact(SEGMENT + TAG)
        self._finished = False
        # The first segment is checked now: a swapped or damaged object fails at open, before any
        # byte of it is handed out (a download answers with an error instead of a cut stream).
        self._buffer += self._more() or b""

    def _exact(self, size: int) -> bytes:
        block = bytearray()
        while len(block) < size:
            piece = self._cipher.read(size - len(block))
            if not piece:
                break
            block += piece
        return bytes(block)

    def _more(self) -> bytes | None:
        if self._finished:
            return None
        current = self._ahead
        if len(current) < TAG:
            raise StreamError("encrypted object truncated")
        self._ahead = self._exact(SEGMENT + TAG) if len(current) == SEGMENT + TAG else b""
        last = not self._ahead
        try:
            plain = self._aead.decrypt(_nonce(self._prefix, self._index, last), current, None)
        except InvalidTag:
            raise StreamError(
                "encrypted object failed authentication (tampered, truncated or the wrong key)"
            ) from None
        self._index += 1
        self._finished = last
        return plain

    def close(self) -> None:
        try:
            self._cipher.close()
        finally:
            super().close()


def is_encrypted_head(head: bytes) -> bool:
    return head.startswith(MAGIC)
