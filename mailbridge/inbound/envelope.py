"""Who a message is for, decided at RCPT from the envelope only (never from headers the sender wrote)."""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from typing import Literal

from sqlalchemy import select
from sqlalchemy.orm import Session

from mailbridge.domain.domains import OPERATOR_LOCALS, owner_of
from mailbridge.domain.models import Practice, Route, User, UserKind
from mailbridge.domain.practice_settings import PracticeSettings
from mailbridge.inbound.tokens import AddressTemplate, TokenIssuer
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


def decide_recipient(
    session: Session, issuer: TokenIssuer, verp_secret: bytes, address: str
) -> RecipientDecision:
    """Decide early, per recipient (RFC 5321 §3.3): relay, unknown token, route, postmaster, bounce."""
    decision, practice = _decide(session, issuer, verp_secret, address)
    if decision.target is None:
        return decision
    if practice is None or practice.id != decision.target.practice_id:
        practice = session.get(Practice, decision.target.practice_id)
    limit = (
        PracticeSettings.model_validate(practice.settings or {}).effective_message_max_bytes
        if practice
        else None
    )
    return RecipientDecision(decision.reply, decision.target, decision.reason, limit)


def _decide(
    session: Session, issuer: TokenIssuer, verp_secret: bytes, address: str
) -> tuple[RecipientDecision, Practice | None]:
    parts = split_address(address)
    if parts is None:
        return RecipientDecision(UNKNOWN_RECIPIENT, None, "address_malformed"), None
    local, domain = parts
    # Only a domain a practice owns is ours, and only that practice's routes count there: a route
    # another practice put on it (before ownership was enforced) is never looked at (issue 11 #6).
    owner = owner_of(session, domain)
    if owner is None:
        return RecipientDecision(RELAY_DENIED, None, "relay_denied"), None
    full = f"{local}@{domain}"
    route_id = session.scalar(
        select(Route.id).where(Route.address == full, Route.practice_id == owner.practice_id)
    )
    if route_id is not None:
        target = Target("route", owner.practice_id, full, route_id=route_id)
        return RecipientDecision(OK_RECIPIENT, target, "route"), owner.practice
    if local in OPERATOR_LOCALS:
        target = Target("operator", owner.practice_id, full)
        return RecipientDecision(OK_RECIPIENT, target, "operator"), owner.practice
    if not owner.reply_domain:
        return RecipientDecision(UNKNOWN_RECIPIENT, None, "unknown_route"), owner.practice
    practice = owner.practice or session.get_one(Practice, owner.practice_id)
    return _decide_on_reply_domain(session, issuer, verp_secret, practice, local, domain), practice


def _decide_on_reply_domain(
    session: Session,
    issuer: TokenIssuer,
    verp_secret: bytes,
    practice: Practice,
    local: str,
    domain: str,
) -> RecipientDecision:
    full = f"{local}@{domain}"
    if local.startswith(VERP_PREFIX + "+"):
        rest = local[len(VERP_PREFIX) + 1 :]
        outbox_id, _, mac = rest.rpartition("-")
        if outbox_id and hmac.compare_digest(mac, verp_mac(verp_secret, outbox_id)):
            return RecipientDecision(
                OK_RECIPIENT, Target("bounce", practice.id, full, outbox_id=outbox_id), "bounce"
            )
        return RecipientDecision(UNKNOWN_RECIPIENT, None, "verp_invalid")

    settings = PracticeSettings.model_validate(practice.settings or {})
    token = AddressTemplate(settings.reply_local_template).token_from_local(local)
    row = issuer.resolve(session, token) if token else None
    if row is None or row.practice_id != practice.id:  # tenant isolation: same answer as unknown
        return RecipientDecision(UNKNOWN_RECIPIENT, None, "token_invalid")
    if not settings.reply_by_email:
        from mailbridge.replies import POLICY_DENIED, POLICY_DENIED_EXTERNAL

        owner = session.get(User, row.user_id)  # an external agent has no portal to be pointed to
        external = owner is not None and owner.kind == UserKind.external
        return RecipientDecision(
            POLICY_DENIED_EXTERNAL if external else POLICY_DENIED, None, "reply_by_email_disabled"
        )
    target = Target(
        "reply", practice.id, full, token_id=row.id, user_id=row.user_id, conversation_id=row.conversation_id
    )
    return RecipientDecision(OK_RECIPIENT, target, "token_ok")
