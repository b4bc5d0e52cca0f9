"""Suppressed addresses: the one place that records a bounce or complaint and says who is not mailed.

Whether a report may write here is decided before, by ``policy/feedback`` (only reports at a signed
VERP address, only for that row's recipient). Here: how a row accumulates and ends.

* ``hard_bounce`` and ``complaint`` suppress at once, until the row is removed
  (``DELETE …/suppressions/{address}``).
* ``soft_bounce`` counts: the address is suppressed once ``soft_limit`` soft bounces were seen, each
  within ``soft_days`` of the previous one, one per notification (a row reported on again counts
  once, unless the new report is stronger); the row ends ``soft_days`` after the last one, whether it
  got to suppress or not (``expires_at``), and a later soft bounce starts counting afresh.
* A stronger report replaces a weaker one's reason (soft < hard, complaint); a weaker one only
  counts and moves ``last_seen``.

A user's ``email_bouncing`` is derived from here (an active bounce suppression of their primary
address), so it goes when the row goes, expires with it, and never follows them to a new address.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import NamedTuple

from sqlalchemy import ColumnElement, Select, and_, bindparam, delete, func, or_, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from mailbridge.domain import audit, events
from mailbridge.domain.addresses import normalise
from mailbridge.domain.models import Practice, Suppression, SuppressionReason, utcnow
from mailbridge.logs import redact_address

log = logging.getLogger(__name__)

_RANK = {SuppressionReason.soft_bounce: 1, SuppressionReason.hard_bounce: 2, SuppressionReason.complaint: 2}
BOUNCING = frozenset({SuppressionReason.hard_bounce, SuppressionReason.soft_bounce})


@dataclass(frozen=True, slots=True)
class SuppressionPolicy:
    """How soft bounces add up and end (settings ``soft_bounce_limit``, ``soft_bounce_days``)."""

    soft_limit: int = 3
    soft_days: int = 7


def normalize(address: str) -> str:
    """The one comparison form (``domain.addresses.normalise``): a suppression matches the directory's."""
    return normalise(address)


def live(now: datetime | ColumnElement[datetime]) -> ColumnElement[bool]:
    """Rows not yet expired (hard bounces and complaints never expire)."""
    return or_(Suppression.expires_at.is_(None), Suppression.expires_at > now)


def suppressing(now: datetime | ColumnElement[datetime]) -> ColumnElement[bool]:
    """Rows that stop notifications now."""
    return and_(Suppression.active.is_(True), live(now))


def _is_live(row: Suppression, now: datetime) -> bool:
    return row.expires_at is None or row.expires_at > now


def record(
    session: Session,
    practice_id: int,
    address: str,
    reason: SuppressionReason,
    *,
    status: str | None,
    diagnostic: str | None,
    outbox_id: str | None,
    policy: SuppressionPolicy,
    now: datetime | None = None,
) -> Suppression:
    """Count one report for *address*; the caller has already decided it may count (policy.feedback)."""
    now = now or utcnow()
    address = normalize(address)
    row = _get(session, practice_id, address)
    if row is None:
        row = Suppression(practice_id=practice_id, address=address, reason=reason, count=0, active=False)
        row.first_seen = now
        try:  # the same address reported twice at once: the other report's row is the one to count on
            with session.begin_nested():
                session.add(row)
                session.flush()
        except IntegrityError:
            found = _get(session, practice_id, address)
            assert found is not None
            row = found
    elif not _is_live(row, now):  # an expired soft suppression: this report starts afresh
        row.reason, row.count, row.active, row.first_seen = reason, 0, False, now
    elif outbox_id is not None and row.outbox_id == outbox_id and _RANK[reason] <= _RANK[row.reason]:
        # The same notification reported on again: an MTA reports a message's failure once, so a
        # second report adds nothing (one VERP address replayed must not add up to a suppression).
        row.last_seen = now
        session.flush()
        return row
    was_active = row.active
    if _RANK[reason] >= _RANK[row.reason]:
        row.reason = reason
        row.status = status[:16] if status else None
        row.diagnostic = diagnostic[:512] if diagnostic else None
    row.count += 1
    row.last_seen = now
    row.outbox_id = outbox_id
    if row.reason == SuppressionReason.soft_bounce:
        row.active = row.active or row.count >= policy.soft_limit
        row.expires_at = now + timedelta(days=policy.soft_days)
    else:
        row.active, row.expires_at = True, None
    session.flush()
    if row.active and not was_active:  # the app hears of it (webhooks), in this transaction
        events.address_suppressed(session, practice_id, address, row.reason.value)
    return row


def _get(session: Session, practice_id: int, address: str) -> Suppression | None:
    return session.scalar(
        select(Suppression).where(Suppression.practice_id == practice_id, Suppression.address == address)
    )


# ``active_among``'s statement, built once (issue 17: the fan-out runs it for every posted reply,
# and building it cost more than running it).
_ACTIVE_AMONG = select(Suppression).where(
    Suppression.practice_id == bindparam("practice_id"),
    Suppression.address.in_(bindparam("addresses", expanding=True)),
    suppressing(bindparam("now")),
)


def active_among(
    session: Session, practice_id: int, addresses: Iterable[str], now: datetime | None = None
) -> dict[str, Suppression]:
    """The suppressions that stop notifications to any of *addresses* now, by lower-cased address
    (``suppressing``'s rule)."""
    wanted = sorted({normalize(a) for a in addresses})
    if not wanted:
        return {}
    rows = session.scalars(
        _ACTIVE_AMONG, {"practice_id": practice_id, "addresses": wanted, "now": now or utcnow()}
    )
    return {row.address: row for row in rows}


def sql_comparable(address: str) -> bool:
    """True when SQL's ``lower(address)`` is exactly ``normalize(address)``, so a join on it finds
    the same suppression ``active_among`` would (``conversation_for_policy(fanout=True)``): ASCII
    (SQLite's ``lower`` folds nothing else) with nothing around it for ``normalize`` to strip, and
    already in lower case, so that ``lower`` has nothing to fold whatever the database's collation
    (a Turkish one folds ``I`` to a dotless ``ı``: a review finding). Any other address is looked up
    apart, exactly."""
    return address.isascii() and normalize(address) == address


def active_for(session: Session, practice_id: int, address: str) -> Suppression | None:
    return active_among(session, practice_id, [address]).get(normalize(address))


def active_in_batch(session: Session, pairs: Iterable[tuple[int, str]]) -> dict[tuple[int, str], Suppression]:
    """Suppressions stopping any of (practice id, address) now, in one query (the worker's batch)."""
    wanted = {(practice_id, normalize(address)) for practice_id, address in pairs}
    if not wanted:
        return {}
    rows = session.scalars(
        select(Suppression).where(
            Suppression.address.in_(sorted({a for _p, a in wanted})),
            suppressing(utcnow()),
        )
    )
    return {(r.practice_id, r.address): r for r in rows if (r.practice_id, r.address) in wanted}


def listing_query(
    practice_id: int, *, reason: SuppressionReason | None = None, address: str | None = None
) -> Select[Suppression]:
    """Rows not expired (soft ones still counting included, ``active`` false), to order and page."""
    query = select(Suppression).where(Suppression.practice_id == practice_id, live(utcnow()))
    if reason is not None:
        query = query.where(Suppression.reason == reason)
    if address:
        query = query.where(Suppression.address == normalize(address))
    return query


def listing(
    session: Session,
    practice_id: int,
    *,
    reason: SuppressionReason | None = None,
    address: str | None = None,
    limit: int = 100,
) -> Sequence[Suppression]:
    """Newest report first (the console's list)."""
    query = listing_query(practice_id, reason=reason, address=address)
    return session.scalars(query.order_by(Suppression.last_seen.desc(), Suppression.id).limit(limit)).all()


def remove(session: Session, practice: Practice, address: str, actor: audit.Actor) -> bool:
    """Forget an address (the practice fixed it, or asks to try again); True when there was a row.

    Notifications go to the address again at once, so who did it is kept: an audit row
    (``suppression_removed``: the address, what it was suppressed for) and an INFO line (redacted),
    whichever door asked (the API, the console)."""
    row = _get(session, practice.id, normalize(address))
    if row is None:
        return False
    audit.record(
        session,
        practice,
        "suppression_removed",
        actor,
        "suppression",
        str(row.id),
        {"address": row.address, "reason": row.reason.value, "status": row.status, "count": row.count},
    )
    log.info(
        "suppression_removed",
        extra={
            "practice": practice.slug,
            "to": redact_address(row.address),
            "reason": row.reason.value,
            "actor": actor.label,
        },
    )
    if row.active and _is_live(row, utcnow()):
        events.address_unsuppressed(session, practice.id, row.address, row.reason.value)
    session.execute(delete(Suppression).where(Suppression.id == row.id))
    return True


def purge_expired(session: Session, now: datetime | None = None) -> int:
    result = session.execute(
        delete(Suppression).where(
            Suppression.expires_at.is_not(None), Suppression.expires_at <= (now or utcnow())
        )
    )
    return int(getattr(result, "rowcount", 0) or 0)


def counts_by_reason(session: Session) -> dict[str, int]:
    """Active suppressions by reason, every reason present (the metrics gauge)."""
    counts = {reason.value: 0 for reason in SuppressionReason}
    rows = session.execute(
        select(Suppression.reason, func.count()).where(suppressing(utcnow())).group_by(Suppression.reason)
    )
    for reason, count in rows:
        counts[SuppressionReason(reason).value] = int(count)
    return counts


class Block(NamedTuple):
    """What the fan-out needs of a suppression stopping an address: its reason, status and start."""

    reason: SuppressionReason
    status: str | None
    first_seen: datetime


def block_of(row: Suppression) -> Block:
    return Block(row.reason, row.status, row.first_seen)


def describe(row: Suppression | Block) -> str:
    """For an outbox row's ``last_answer``: ``suppressed: hard_bounce 5.1.1 (since 2026-12-01)``."""
    status = f" {row.status}" if row.status else ""
    return f"suppressed: {row.reason.value}{status} (since {row.first_seen.date().isoformat()})"
