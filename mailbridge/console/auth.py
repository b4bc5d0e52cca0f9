"""Console sessions, CSRF tokens and sign-in throttling: all server-side, so every node agrees.

* The session cookie carries a random token; the database stores only its SHA-256, so a copy of
  the database holds no usable cookie. A session ends at logout, after ``console_idle_minutes``
  without a request, and ``console_session_hours`` after sign-in, whatever the activity.
* Each session has its own CSRF token, put in every form and compared in constant time on every
  POST (OWASP's synchroniser token). The sign-in form, before any session, uses a double-submit
  cookie. The cookie is also SameSite=Strict: a request started by another site carries no session.
* Failed sign-ins are counted per account and per client address (an IPv6 client by its /64) in
  ``console_login_throttle``: past the limit within the window, sign-in answers 429 with
  Retry-After until the window ends, without even checking the password (argon2 costs memory and
  time: it must not be a free DoS). An attempt is counted before its password is checked (and taken
  back if it was right), and at most ``VERIFY_SLOTS`` passwords are checked at once per process.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import ipaddress
import math
import secrets
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta

from fastapi import Request
from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from mailbridge.domain.models import LoginThrottle, Operator, OperatorSession, utcnow
from mailbridge.settings import Settings

COOKIE = "mb_console"
LOGIN_COOKIE = "mb_console_login"  # the sign-in form's double-submit token
COOKIE_PATH = "/console"
TOUCH_EVERY = timedelta(seconds=60)  # last_seen_at is written at most this often per session


class LoginRequired(Exception):
    """No valid session: the browser goes to the sign-in page."""


class CsrfRefused(Exception):
    """A state-changing request without the right token: 403, nothing done."""


class Throttled(Exception):
    def __init__(self, retry_after: int) -> None:
        super().__init__(f"retry after {retry_after} s")
        self.retry_after = retry_after


@dataclass(frozen=True)
class SessionInfo:
    id: str
    operator_id: int
    csrf: str


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "surrogateescape")).hexdigest()


def _networks(settings: Settings) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    return [ipaddress.ip_network(n.strip(), strict=False) for n in settings.console_trusted_proxies]


def _trusted(settings: Settings, host: str | None) -> bool:
    if not host or not settings.console_trusted_proxies:
        return False
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    return any(address in network for network in _networks(settings))


def client_address(request: Request, settings: Settings) -> str:
    """The peer, or behind a trusted proxy the last address in X-Forwarded-For not a trusted proxy."""
    peer = request.client.host if request.client else ""
    if not _trusted(settings, peer):
        return peer
    hops = [h.strip() for h in request.headers.get("x-forwarded-for", "").split(",") if h.strip()]
    for hop in reversed(hops):
        if not _trusted(settings, hop):
            return hop[:64]
    return peer


def is_secure(request: Request, settings: Settings) -> bool:
    """Served over TLS, or a trusted proxy in front says the browser spoke https to it."""
    if request.url.scheme == "https":
        return True
    peer = request.client.host if request.client else None
    return _trusted(settings, peer) and request.headers.get("x-forwarded-proto", "").lower() == "https"


# ---- sessions -------------------------------------------------------------------------------------


def open_session(session: Session, operator: Operator, settings: Settings, peer: str) -> str:
    """A new session for *operator*; returns the cookie's token (only its hash is stored)."""
    token = secrets.token_urlsafe(32)
    now = utcnow()
    session.add(
        OperatorSession(
            id=token_hash(token),
            operator_id=operator.id,
            csrf_token=secrets.token_urlsafe(32),
            peer=peer[:64] or None,
            created_at=now,
            last_seen_at=now,
            expires_at=now + timedelta(hours=settings.console_session_hours),
        )
    )
    operator.last_login_at = now
    return token


def load_session(session: Session, token: str | None, settings: Settings) -> tuple[SessionInfo, Operator]:
    """The live session behind *token*, touched; LoginRequired when absent, idle, expired or disabled."""
    if not token or len(token) > 128:
        raise LoginRequired()
    row = session.get(OperatorSession, token_hash(token))
    now = utcnow()
    if row is None:
        raise LoginRequired()
    idle = timedelta(minutes=settings.console_idle_minutes)
    operator = session.get(Operator, row.operator_id)
    if row.expires_at <= now or row.last_seen_at + idle <= now or operator is None or operator.disabled:
        session.delete(row)
        raise LoginRequired()
    if now - row.last_seen_at >= TOUCH_EVERY:
        row.last_seen_at = now
    return SessionInfo(row.id, row.operator_id, row.csrf_token), operator


def close_session(session: Session, session_id: str) -> None:
    session.execute(delete(OperatorSession).where(OperatorSession.id == session_id))


def purge_expired(session: Session, settings: Settings) -> int:
    """Sessions past their end and throttle rows past their window (housekeeping at each sign-in)."""
    now = utcnow()
    idle = now - timedelta(minutes=settings.console_idle_minutes)
    gone = session.execute(
        delete(OperatorSession).where(
            (OperatorSession.expires_at <= now) | (OperatorSession.last_seen_at <= idle)
        )
    )
    window = now - timedelta(seconds=settings.console_login_window_seconds)
    session.execute(
        delete(LoginThrottle).where(
            LoginThrottle.window_started_at <= window,
            (LoginThrottle.blocked_until.is_(None)) | (LoginThrottle.blocked_until <= now),
        )
    )
    return int(getattr(gone, "rowcount", 0) or 0)


def check_csrf(expected: str, given: str | None) -> None:
    if not given or not hmac.compare_digest(expected.encode(), given.encode("utf-8", "surrogateescape")):
        raise CsrfRefused()


# ---- throttling -----------------------------------------------------------------------------------


def throttle_keys(name: str, address: str) -> tuple[str, str]:
    """The account's key and the client's: an IPv6 client counts by its /64 (RFC 6177: one site's
    prefix; a host given a /64 has 2^64 addresses to walk around a per-address count)."""
    return f"account:{name.strip().lower()[:320]}", f"address:{client_network(address)}"


def client_network(address: str) -> str:
    try:
        parsed = ipaddress.ip_address(address.strip())
    except ValueError:
        return address[:64]
    if isinstance(parsed, ipaddress.IPv6Address):
        if parsed.ipv4_mapped is not None:
            return str(parsed.ipv4_mapped)
        return str(ipaddress.IPv6Network((parsed, 64), strict=False))
    return str(parsed)


def blocked_for(session: Session, keys: tuple[str, ...], now: datetime | None = None) -> int:
    """Seconds until every key may try again; 0 when none is blocked."""
    now = now or utcnow()
    rows = session.scalars(select(LoginThrottle).where(LoginThrottle.key.in_(list(keys)))).all()
    waits = [
        (r.blocked_until - now).total_seconds() for r in rows if r.blocked_until and r.blocked_until > now
    ]
    return math.ceil(max(waits)) if waits else 0


def _locked_row(session: Session, key: str, now: datetime) -> LoginThrottle:
    """The key's row, locked until the commit (PostgreSQL: two sign-ins at once never both read the
    same count; SQLite: the writer gate already orders them); created when absent."""
    row = session.get(LoginThrottle, key, with_for_update=True)
    if row is not None:
        return row
    try:
        with session.begin_nested():
            row = LoginThrottle(key=key, failures=0, window_started_at=now)
            session.add(row)
            session.flush()
        return row
    except IntegrityError:  # the other sign-in created it first: count on that one
        found = session.get(LoginThrottle, key, with_for_update=True, populate_existing=True)
        assert found is not None
        return found


def note_failure(session: Session, key: str, limit: int, window_seconds: int) -> bool:
    """Count one attempt for *key*; True when the key is now blocked for the rest of the window.

    Sign-in counts the attempt *before* checking the password and takes it back on success
    (:func:`forgive`): attempts still being checked count too, so a burst of parallel requests gets
    no more guesses than the limit (counting after the check let every request in flight through)."""
    now = utcnow()
    window = timedelta(seconds=window_seconds)
    row = _locked_row(session, key, now)
    if row.window_started_at + window <= now:
        row.failures, row.window_started_at, row.blocked_until = 0, now, None
    row.failures += 1
    if row.failures >= limit:
        row.blocked_until = now + window
        return True
    return False


def forgive(session: Session, key: str) -> None:
    """A successful sign-in takes back the attempt counted for it (an office behind one address
    signs in many times a day); the block, if the attempt caused one, goes with it."""
    row = session.get(LoginThrottle, key, with_for_update=True)
    if row is not None and row.failures > 0:
        row.failures -= 1
        row.blocked_until = None


def clear_failures(session: Session, key: str) -> None:
    session.execute(delete(LoginThrottle).where(LoginThrottle.key == key))


# At most this many passwords are checked at once by this process: argon2id with the library's
# defaults takes 64 MiB and ~0.1-0.2 s of CPU each, so unbounded parallel sign-ins (from many
# addresses, or before any failure is counted) would take the node's memory and CPU from the mail.
VERIFY_SLOTS = 4
_verifying = threading.BoundedSemaphore(VERIFY_SLOTS)


@contextlib.contextmanager
def verify_slot(wait_seconds: float = 0.5) -> Iterator[bool]:
    """A slot to check one password in, or False when every slot stayed busy for *wait_seconds*."""
    got = _verifying.acquire(timeout=wait_seconds)
    try:
        yield got
    finally:
        if got:
            _verifying.release()
