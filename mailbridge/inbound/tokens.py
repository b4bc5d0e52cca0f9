"""Reply tokens: one per (participant, conversation), unguessable, case-insensitive, stored only as a hash.

The token is HMAC-SHA256(server secret, row nonce) truncated to 160 bits, written in lower-case
base32 (MTAs and mail clients change the case of addresses). The database keeps the SHA-256 of
the token for look-up and a random nonce: a copy of the database alone reveals no usable token,
while the server can write the same Reply-To address into every notification of a conversation.
Every use re-checks the policy against the current state; tokens do not expire by default.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import NamedTuple

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from mailbridge.domain.models import ReplyToken, utcnow

TOKEN_BYTES = 20  # 160 bits
TOKEN_CHARS = 32  # base32 of 20 bytes, no padding
_TOKEN_RE = re.compile(r"^[a-z2-7]{32}$")


def encode(raw: bytes) -> str:
    return base64.b32encode(raw).decode("ascii").rstrip("=").lower()


def token_hash(token: str) -> str:
    return hashlib.sha256(token.lower().encode("ascii")).hexdigest()


def derive(secret: bytes, nonce: str) -> str:
    return encode(hmac.new(secret, nonce.encode("ascii"), hashlib.sha256).digest()[:TOKEN_BYTES])


def well_formed(token: str) -> bool:
    return bool(_TOKEN_RE.match(token.lower()))


@dataclass(frozen=True, slots=True)
class AddressTemplate:
    """``reply+{token}`` and its variants: the form without ``+`` for providers that drop sub-addresses."""

    template: str = "reply+{token}"

    @property
    def prefix(self) -> str:
        return self.template.split("{token}")[0].rstrip("+.-")

    def local_part(self, token: str) -> str:
        return self.template.replace("{token}", token)

    def token_from_local(self, local: str) -> str | None:
        """The token, or None; case-insensitive and tolerant of ``reply+``, ``reply.`` and ``reply-``."""
        local = local.lower()
        prefix = self.prefix.lower()
        if prefix:
            if not local.startswith(prefix) or len(local) <= len(prefix):
                return None
            if local[len(prefix)] not in "+.-":
                return None
            candidate = local[len(prefix) + 1 :]
        else:
            candidate = local
        return candidate if well_formed(candidate) else None


class LiveToken(NamedTuple):
    id: int
    practice_id: int
    user_id: int
    conversation_id: str


class TokenIssuer:
    """Issues and resolves tokens for one deployment secret (shared by every node of a cluster)."""

    def __init__(self, secret: bytes) -> None:
        if len(secret) < 16:
            raise ValueError("token secret must be at least 16 bytes")
        self._secret = secret

    @property
    def fingerprint(self) -> str:
        """Names the secret without revealing it: nodes compare this to agree on one secret."""
        return hashlib.sha256(b"mailbridge-token-secret\x00" + self._secret).hexdigest()[:16]

    def issue(self, session: Session, practice_id: int, user_id: int, conversation_id: str) -> str:
        """The participant's token for this conversation: created on first notification, then re-derived.

        Two workers may notify the same person at once: the insert runs in a savepoint and, when the
        other one won, its row is read back, so both notifications carry the same address.
        """
        row = self._row(session, user_id, conversation_id)
        if row is not None and row.revoked_at is None:
            return derive(self._secret, row.nonce)
        nonce = secrets.token_hex(16)
        token = derive(self._secret, nonce)
        if row is not None:  # revoked earlier, re-added since: a fresh token, the old one stays dead
            row.nonce, row.lookup, row.revoked_at = nonce, token_hash(token), None
            session.flush()
            return token
        try:
            with session.begin_nested():
                session.add(
                    ReplyToken(
                        practice_id=practice_id,
                        user_id=user_id,
                        conversation_id=conversation_id,
                        nonce=nonce,
                        lookup=token_hash(token),
                    )
                )
        except IntegrityError:
            winner = self._row(session, user_id, conversation_id)
            if winner is None:
                raise
            return derive(self._secret, winner.nonce)
        return token

    @staticmethod
    def _row(session: Session, user_id: int, conversation_id: str) -> ReplyToken | None:
        return session.scalar(
            select(ReplyToken).where(
                ReplyToken.user_id == user_id, ReplyToken.conversation_id == conversation_id
            )
        )

    def resolve(self, session: Session, token: str) -> LiveToken | None:
        """The live token, or None for unknown, malformed or revoked (the caller answers the same).

        Read as plain columns: this runs at every RCPT, and an ORM object would cost three times more.
        """
        if not well_formed(token):
            return None
        row = session.execute(
            select(
                ReplyToken.id, ReplyToken.practice_id, ReplyToken.user_id, ReplyToken.conversation_id
            ).where(ReplyToken.lookup == token_hash(token), ReplyToken.revoked_at.is_(None))
        ).first()
        return LiveToken(row.id, row.practice_id, row.user_id, row.conversation_id) if row else None


def mark_used(session: Session, row: ReplyToken, when: datetime | None = None) -> None:
    row.last_used_at = when or utcnow()


def revoke_for_conversations(session: Session, conversation_ids: Iterable[str]) -> None:
    ids = list(conversation_ids)
    if ids:
        session.execute(
            update(ReplyToken)
            .where(ReplyToken.conversation_id.in_(ids), ReplyToken.revoked_at.is_(None))
            .values(revoked_at=utcnow())
        )


def revoke_for_participant(session: Session, conversation_id: str, user_id: int) -> None:
    session.execute(
        update(ReplyToken)
        .where(
            ReplyToken.conversation_id == conversation_id,
            ReplyToken.user_id == user_id,
            ReplyToken.revoked_at.is_(None),
        )
        .values(revoked_at=utcnow())
    )
