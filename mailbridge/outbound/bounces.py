"""Bounces, complaints and smarthost refusals: judge them (``policy/feedback``), then record what counts.

Two doors bring news of a notification's fate:

* a report mailed back (a DSN, a heuristic bounce, an ARF complaint, a sending service's JSON
  notice): :func:`record_report`, from the inbound pipeline's classify step;
* our smarthost's permanent answer: :func:`record_refusal`, from the delivery worker.

Only what the rules count becomes a suppression, and only of the outbox row's recipient; a failure
of ours (our sender or message refused) is a WARNING, a metric and the row's ``last_answer``, never a
suppression. Every report leaves its verdict in the inbound log (rule, reason, details).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.orm import Session

from mailbridge.domain import events, suppressions
from mailbridge.domain.models import Outbox, SuppressionReason, utcnow
from mailbridge.domain.suppressions import SuppressionPolicy
from mailbridge.inbound.classify import BouncedRecipient, Classification
from mailbridge.inbound.envelope import Target
from mailbridge.logs import redact_address
from mailbridge.observability import BOUNCES, DELIVERY_REFUSALS
from mailbridge.policy.feedback import OURS, Arrival, Decision, Failure, judge_report, judge_smarthost

log = logging.getLogger(__name__)

_REASONS = {
    "hard": SuppressionReason.hard_bounce,
    "soft": SuppressionReason.soft_bounce,
    "complaint": SuppressionReason.complaint,
}


@dataclass(frozen=True)
class ReportOutcome:
    """What the inbound log records of a report: the deciding rule, its reason, and the details."""

    rule: str
    reason: str
    details: dict[str, Any] = field(default_factory=dict)


def _failure(item: BouncedRecipient) -> Failure:
    addresses = tuple(a for a in (item.address, item.final_recipient) if a)
    return Failure(
        source="dsn",
        addresses=addresses,
        action=item.action,
        status=item.status,
        diagnostic=item.diagnostic,
        permanent=item.permanent,
    )


def record_report(
    session: Session, target: Target, result: Classification, policy: SuppressionPolicy
) -> ReportOutcome:
    """A report mailed to us (a bounce or a complaint, or anything at all at a VERP address)."""
    row = session.get(Outbox, target.outbox_id) if target.kind == "bounce" and target.outbox_id else None
    if row is not None and row.practice_id != target.practice_id:  # signed, but never trust one check
        row = None
    arrival = Arrival(
        target_kind=target.kind,
        kind=result.kind,
        row_recipient=row.to_address if row is not None else None,
        row_kind=row.kind.value if row is not None else None,
        row_age_days=(utcnow() - (row.sent_at or row.created_at)).total_seconds() / 86400
        if row is not None
        else None,
    )
    decision = judge_report(arrival, [_failure(b) for b in result.bounced])
    details: dict[str, Any] = {
        "effect": decision.effect,
        "named": len(result.bounced),  # how many recipients the report names (never who)
    }
    if decision.failure is not None:
        details["status"] = decision.failure.effective_status
    if result.feedback_type:
        details["feedback_type"] = result.feedback_type
    if decision.considered:
        details["considered"] = [reason for _rule, reason in decision.considered]
    # One line per report, whatever the verdict; it names no address (the report's are a stranger's
    # words, the row's recipient is named, redacted, only when something is counted for them).
    log.info(
        "report_judged",
        extra={
            "practice": target.practice_id,
            "rcpt_kind": target.kind,
            "kind": result.kind,
            "outbox": row.id if row is not None else None,
            "effect": decision.effect,
            "reason": decision.verdict.reason,
        },
    )
    if row is not None and target.kind == "bounce":
        row.last_answer = _answer(result, decision)[:512]
        _count(session, row, decision, policy)
        if result.kind == "bounce" and (
            decision.effect in ("hard", "soft") or decision.verdict.reason in OURS
        ):
            # the notification did not arrive (for the address's fault or ours): the app hears of it
            events.delivery_bounced(session, row, decision.effect == "hard")
    if decision.effect == "ignore":
        BOUNCES.labels("ignored").inc()
    return ReportOutcome(decision.verdict.rule, decision.verdict.reason, details)


def record_refusal(
    session: Session, row: Outbox, stage: str, answer: str, policy: SuppressionPolicy
) -> Decision:
    """A permanent answer of our smarthost for *row* (issue 11 #2): a suppression only when it says
    the recipient's address or mailbox is bad; otherwise a delivery failure of ours, loudly."""
    decision = judge_smarthost(stage, answer, row.to_address)
    _count(session, row, decision, policy)
    return decision


def _count(session: Session, row: Outbox, decision: Decision, policy: SuppressionPolicy) -> None:
    reason = _REASONS.get(decision.effect)
    if reason is not None:
        failure = decision.failure
        entry = suppressions.record(
            session,
            row.practice_id,
            row.to_address,
            reason,
            status=failure.effective_status if failure else None,
            diagnostic=failure.diagnostic if failure else None,
            outbox_id=row.id,
            policy=policy,
        )
        BOUNCES.labels(decision.effect).inc()
        log.info(
            "address_suppression_counted",
            extra={
                "outbox": row.id,
                "to": redact_address(row.to_address),
                "reason": reason.value,
                "rule": decision.verdict.rule,
                "active": entry.active,
                "count": entry.count,
            },
        )
    elif decision.verdict.reason in OURS:
        DELIVERY_REFUSALS.labels(decision.verdict.reason).inc()
        log.warning(
            "delivery_refused_not_the_recipient",
            extra={
                "outbox": row.id,
                "to": redact_address(row.to_address),
                "reason": decision.verdict.reason,
                "rule": decision.verdict.rule,
                "status": decision.failure.effective_status if decision.failure else None,
            },
        )


def _answer(result: Classification, decision: Decision) -> str:
    """The outbox row's ``last_answer`` after a report about it: what it said and what we made of it."""
    failure = decision.failure
    if result.kind == "complaint":
        said = f"complaint: {result.feedback_type or 'abuse'}"
    elif failure is not None:
        said = "bounced: " + " ".join(p for p in (failure.effective_status, failure.diagnostic) if p)
    else:
        said = f"{result.kind} report"
    return f"{said} [{decision.effect}: {decision.verdict.reason}]"
