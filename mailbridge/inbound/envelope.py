"""Who a message is for, decided at RCPT from the envelope only (never from headers the sender wrote)."""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from typing import Literal

from sqlalchemy import Table, Text, and_, bindparam, cast, literal, select, union_all
from sqlalchemy.orm import Session

from mailbridge.domain.domains import OPERATOR_LOCALS
from mailbridge.domain.models import Practice, PracticeDomain, ReplyToken, Route, User, UserKind
from mailbridge.domain.practice_settings import PracticeSettings, settings_from_json
from mailbridge.inbound.tokens import (
    TOKEN_CHARS,
    AddressTemplate,
    LiveToken,
    TokenIssuer,
    token_hash,
    well_formed,
)
from mailbridge.replies import (
    OK_RECIPIENT,
    RELAY_DENIED,
    UNKNOWN_RECIPIENT,
    SmtpReply,
)

TargetKind = Literal["reply", "route", "operator", "bounce"]
VERP_PREFIX = "bounce"


@dataclass(frozen=True, slots=True)
class Target:
    kind: TargetKind
    practice_id: int
    address: str  # as given, lower-cased
    token_id: int | None = None
    route_id: int | None = None
    outbox_id: str | None = None
    # A reply token's owner and conversation, read with the token at RCPT (DATA re-judges the policy).
    user_id: int | None = None
    conversation_id: str | None = None

    @property
    def redacted(self) -> str:
        """The address for logs: a token never appears in full."""
        if self.kind == "reply":
            local, _, domain = self.address.partition("@")
            return f"{local[:10]}…@{domain}"
        return self.address


@dataclass(frozen=True, slots=True)
class RecipientDecision:
    reply: SmtpReply
    target: Target | None
    reason: str  # log code: token_invalid, relay_denied, ...
    size_limit: int | None = None  # the practice's total message limit, for SIZE and DATA


def verp_mac(secret: bytes, outbox_id: str) -> str:
    return hmac.new(secret, f"verp:{outbox_id}".encode(), hashlib.sha256).hexdigest()[:16]


def verp_address(secret: bytes, outbox_id: str, domain: str) -> str:
    """The envelope sender of a notification: identifies its outbox row, signed so it cannot be forged."""
    return f"{VERP_PREFIX}+{outbox_id}-{verp_mac(secret, outbox_id)}@{domain}"


def split_address(address: str) -> tuple[str, str] | None:
    address = address.strip().strip("<>").lower()
    local, at, domain = address.rpartition("@")
    if not at or not local or not domain or any(c in address for c in "\r\n\x00 "):
        return None
    return local, domain


# The RCPT decision's one statement (issue 17 item 4; it used to take three, built anew each time):
# the domain's owner (its reply domain, else a domain the operator approved for it, as
# ``domains.owner_of`` decides), that practice's settings as stored text, its route at this exact
# address, and the live reply token whose hash the local part's last 32 characters give. Every
# index is unique, so the joins add at most one row each. The token is only believed once the
# practice's own address template, applied in Python, yields exactly that candidate; its practice is
# compared as before (tenant isolation). Built once, on the tables: no ORM work per RCPT.
_PRACTICES: Table = Practice.__table__  # type: ignore[assignment]
_DOMAINS: Table = PracticeDomain.__table__  # type: ignore[assignment]
_ROUTES: Table = Route.__table__  # type: ignore[assignment]
_TOKENS: Table = ReplyToken.__table__  # type: ignore[assignment]
_OWNER = union_all(
    select(_PRACTICES.c.id.label("pid"), literal(True).label("is_reply")).where(
        _PRACTICES.c.reply_domain == bindparam("domain")
    ),
    select(_DOMAINS.c.practice_id.label("pid"), literal(False).label("is_reply")).where(
        _DOMAINS.c.domain == bindparam("domain")
    ),
).subquery("owner")
_DECIDE = (
    select(
        _PRACTICES.c.id,
        _OWNER.c.is_reply,
        cast(_PRACTICES.c.settings, Text),
        _ROUTES.c.id,
        _TOKENS.c.id,
        _TOKENS.c.practice_id,
        _TOKENS.c.user_id,
        _TOKENS.c.conversation_id,
    )
    .select_from(
        _OWNER.join(_PRACTICES, _PRACTICES.c.id == _OWNER.c.pid)
        .outerjoin(
            _ROUTES, and_(_ROUTES.c.address == bindparam("full"), _ROUTES.c.practice_id == _PRACTICES.c.id)
        )
        .outerjoin(_TOKENS, and_(_TOKENS.c.lookup == bindparam("lookup"), _TOKENS.c.revoked_at.is_(None)))
    )
    .order_by(_OWNER.c.is_reply.desc())
    .limit(1)
)


def decide_recipient(
    session: Session, issuer: TokenIssuer, verp_secret: bytes, address: str
) -> RecipientDecision:
    """Decide early, per recipient (RFC 5321 §3.3): relay, unknown token, route, postmaster, bounce.

    One statement on the session's connection (``_DECIDE``); the rules are ``domains.owner_of``'s
    and ``TokenIssuer.resolve``'s, applied to its row."""
    parts = split_address(address)
    if parts is None:
        return RecipientDecision(UNKNOWN_RECIPIENT, None, "address_malformed")
    local, domain = parts
    full = f"{local}@{domain}"
    candidate = local[-TOKEN_CHARS:]
    lookup = token_hash(candidate) if well_formed(candidate) else None
    found = (
        session.connection()
        .execute(_DECIDE, {"domain": domain.rstrip("."), "full": full, "lookup": lookup})
        .first()
    )
    if found is None:
        return RecipientDecision(RELAY_DENIED, None, "relay_denied")
    practice_id, is_reply, settings_text, route_id = found[0], found[1], found[2], found[3]
    settings = settings_from_json(settings_text)
    decision = _decide(
        session,
        issuer,
        verp_secret,
        local,
        domain,
        practice_id,
        bool(is_reply),
        route_id,
        settings,
        LiveToken(*found[4:]) if found[4] is not None else None,
        candidate,
    )
    if decision.target is None:
        return decision
    return RecipientDecision(
        decision.reply, decision.target, decision.reason, settings.effective_message_max_bytes
    )


def _decide(
    session: Session,
    issuer: TokenIssuer,
    verp_secret: bytes,
    local: str,
    domain: str,
    practice_id: int,
    is_reply: bool,
    route_id: int | None,
    settings: PracticeSettings,
    token_row: LiveToken | None,
    candidate: str,
) -> RecipientDecision:
    # Only a domain a practice owns is ours, and only that practice's routes count there: a route
    # another practice put on it (before ownership was enforced) is never looked at (issue 11 #6).
    full = f"{local}@{domain}"
    if route_id is not None:
        return RecipientDecision(OK_RECIPIENT, Target("route", practice_id, full, route_id=route_id), "route")
    if local in OPERATOR_LOCALS:
        return RecipientDecision(OK_RECIPIENT, Target("operator", practice_id, full), "operator")
    if not is_reply:
        return RecipientDecision(UNKNOWN_RECIPIENT, None, "unknown_route")
    return _decide_on_reply_domain(
        session, issuer, verp_secret, practice_id, settings, local, domain, token_row, candidate
    )


def _decide_on_reply_domain(
    session: Session,
    issuer: TokenIssuer,
    verp_secret: bytes,
    practice_id: int,
    settings: PracticeSettings,
    local: str,
    domain: str,
    token_row: LiveToken | None,
    candidate: str,
) -> RecipientDecision:
    full = f"{local}@{domain}"
    if local.startswith(VERP_PREFIX + "+"):
        rest = local[len(VERP_PREFIX) + 1 :]
        outbox_id, _, mac = rest.rpartition("-")
        if outbox_id and hmac.compare_digest(mac, verp_mac(verp_secret, outbox_id)):
            return RecipientDecision(
                OK_RECIPIENT, Target("bounce", practice_id, full, outbox_id=outbox_id), "bounce"
            )
        return RecipientDecision(UNKNOWN_RECIPIENT, None, "verp_invalid")

    token = AddressTemplate(settings.reply_local_template).token_from_local(local)
    if token is None:
        row = None
    elif token == candidate:  # always, for a template the settings accept ({token} comes last)
        row = token_row
    else:
        row = issuer.resolve(session, token)
    if row is None or row.practice_id != practice_id:  # tenant isolation: same answer as unknown
        return RecipientDecision(UNKNOWN_RECIPIENT, None, "token_invalid")
    if not settings.reply_by_email:
        from mailbridge.replies import POLICY_DENIED, POLICY_DENIED_EXTERNAL

        owner = session.get(User, row.user_id)  # an external agent has no portal to be pointed to
        external = owner is not None and owner.kind == UserKind.external
        return RecipientDecision(
            POLICY_DENIED_EXTERNAL if external else POLICY_DENIED, None, "reply_by_email_disabled"
        )
    target = Target(
        "reply", practice_id, full, token_id=row.id, user_id=row.user_id, conversation_id=row.conversation_id
    )
    return RecipientDecision(OK_RECIPIENT, target, "token_ok")
