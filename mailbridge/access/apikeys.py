"""API keys: the platform's key (``MAILBRIDGE_API_KEY``) reaches every practice; a practice key reaches
one practice, with scope ``app`` (read and write) or ``read`` (GET only).

A practice key is ``mbk_`` + 43 characters of base64url (256 random bits), shown once by ``mailbridge
keys create``. Only its SHA-256 is stored: a slow password hash (argon2) protects guessable secrets,
while a 256-bit random key cannot be guessed, and the look-up runs on every request (one indexed
read by hash, no per-key verify loop). ``prefix`` keeps the first characters so a key can be
recognised in ``keys list`` without being stored. ``last_used_at`` is written at most once a minute
per key (a conditional UPDATE), never once per request.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal

from sqlalchemy import or_, select, update
from sqlalchemy.orm import Session

from mailbridge.domain.errors import Invalid, NotFound
from mailbridge.domain.models import ApiKey, Practice, utcnow

KEY_PREFIX = "mbk_"
PREFIX_CHARS = len(KEY_PREFIX) + 8
Scope = Literal["app", "read"]
SCOPES: tuple[Scope, ...] = ("app", "read")
LAST_USED_EVERY = timedelta(minutes=1)
READ_METHODS = frozenset({"GET", "HEAD"})


@dataclass(frozen=True)
class Principal:
    """Who is calling: the platform (every practice, platform routes) or one practice's key."""

    scope: Literal["platform", "app", "read"]
    practice_id: int | None = None
    practice_slug: str | None = None
    key_id: str | None = None

    @property
    def is_platform(self) -> bool:
        return self.scope == "platform"


PLATFORM = Principal("platform")


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode("ascii")).hexdigest()


def new_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def is_platform_key(given: str, platform_key: str) -> bool:
    """Constant-time, on bytes (``compare_digest`` refuses non-ASCII str: that was a 500)."""
    return bool(platform_key) and hmac.compare_digest(given.encode("utf-8"), platform_key.encode("utf-8"))


def create(session: Session, practice: Practice, scope: str, label: str = "") -> tuple[ApiKey, str]:
    """A new key for *practice*; the key itself is returned once and never stored."""
    if scope not in SCOPES:
        raise Invalid("invalid_scope", f"scope is one of {', '.join(SCOPES)}", "scope")
    key = new_key()
    row = ApiKey(
        practice_id=practice.id, scope=scope, label=label[:128], prefix=key[:PREFIX_CHARS], hash=hash_key(key)
    )
    session.add(row)
    session.flush()
    return row, key


def list_keys(session: Session, practice: Practice | None = None) -> list[tuple[ApiKey, str]]:
    query = select(ApiKey, Practice.slug).join(Practice, Practice.id == ApiKey.practice_id)
    if practice is not None:
        query = query.where(ApiKey.practice_id == practice.id)
    return [(key, slug) for key, slug in session.execute(query.order_by(Practice.slug, ApiKey.created_at))]


def revoke(session: Session, key_id: str, now: datetime | None = None) -> ApiKey:
    row = session.get(ApiKey, key_id)
    if row is None:
        raise NotFound("key_not_found", f"key {key_id!r} not found")
    if row.revoked_at is None:
        row.revoked_at = now or utcnow()
    return row


def authenticate(session: Session, given: str, now: datetime | None = None) -> Principal | None:
    """The practice key *given* stands for, or None (unknown, revoked, or not a practice key).
    Writes ``last_used_at`` when it is more than a minute old: call inside a transaction."""
    if not given.startswith(KEY_PREFIX) or not given.isascii():
        return None
    found = session.execute(
        select(ApiKey.id, ApiKey.practice_id, ApiKey.scope, ApiKey.last_used_at, Practice.slug)
        .join(Practice, Practice.id == ApiKey.practice_id)
        .where(ApiKey.hash == hash_key(given), ApiKey.revoked_at.is_(None))
    ).first()
    if found is None or found.scope not in SCOPES:
        return None
    now = now or utcnow()
    if found.last_used_at is None or found.last_used_at < now - LAST_USED_EVERY:
        # Conditional: of several requests in the same minute, at most one writes.
        session.execute(
            update(ApiKey)
            .where(
                ApiKey.id == found.id,
                or_(ApiKey.last_used_at.is_(None), ApiKey.last_used_at < now - LAST_USED_EVERY),
            )
            .values(last_used_at=now)
        )
    return Principal(found.scope, found.practice_id, found.slug, found.id)
