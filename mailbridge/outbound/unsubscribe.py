"""One-click unsubscribe links (RFC 8058): signed, expiring, and opaque about the conversation.

Every notification carries ``List-Unsubscribe: <https://…/u/TOKEN>`` and ``List-Unsubscribe-Post:
List-Unsubscribe=One-Click``; a mail client's "unsubscribe" button POSTs to that URL, without
cookies or any key of ours, and mailbridge mutes that conversation's notifications for that
recipient (``domain.mutes``).

The token is a Fernet token (``cryptography``): AES-128-CBC for secrecy and HMAC-SHA256 for
integrity, with its issue time inside. What it carries (practice, recipient and conversation ids)
is encrypted, so the URL names nothing in clear; without the key nobody can make one, alter one or
read one. The key is derived from the deployment's token secret (as VERP's is), so every node
accepts the links every other node wrote. A token older than the link lifetime is *expired*
(410), anything else that does not open is *forged* (404); both mute nothing.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from collections.abc import Callable
from dataclasses import dataclass

from cryptography.fernet import Fernet, InvalidToken


class BadUnsubscribeToken(Exception):
    """The token is not one of ours, or was altered (404)."""


class ExpiredUnsubscribeToken(Exception):
    """The token is ours but older than the link lifetime (410)."""


@dataclass(frozen=True)
class Muting:
    """What an unsubscribe token stands for: this recipient, this conversation, in this practice."""

    practice_id: int
    user_id: int
    conversation_id: str


class UnsubscribeTokens:
    def __init__(self, secret: bytes, lifetime_seconds: int, clock: Callable[[], float] = time.time) -> None:
        key = hmac.new(secret, b"unsubscribe", hashlib.sha256).digest()
        self._fernet = Fernet(base64.urlsafe_b64encode(key))
        self.lifetime_seconds = lifetime_seconds
        self._clock = clock

    def issue(self, practice_id: int, user_id: int, conversation_id: str) -> str:
        payload = f"{practice_id}:{user_id}:{conversation_id}".encode()
        token = self._fernet.encrypt_at_time(payload, int(self._clock()))
        return token.decode("ascii").rstrip("=")  # base64url; the padding is put back on reading

    def open(self, token: str) -> Muting:
        """What *token* stands for; raises BadUnsubscribeToken or ExpiredUnsubscribeToken."""
        if not token or len(token) > 512 or not token.isascii():
            raise BadUnsubscribeToken
        raw = (token + "=" * (-len(token) % 4)).encode("ascii")
        try:
            issued = self._fernet.extract_timestamp(raw)  # checks the HMAC first
            payload = self._fernet.decrypt(raw)  # no ttl: the lifetime is checked below, as 410
        except (InvalidToken, ValueError, TypeError):
            raise BadUnsubscribeToken from None
        if self._clock() - issued > self.lifetime_seconds:
            raise ExpiredUnsubscribeToken
        try:
            practice, user, conversation = payload.decode("utf-8").split(":", 2)
            return Muting(int(practice), int(user), conversation)
        except ValueError:
            raise BadUnsubscribeToken from None
