"""What the console's pages read: keyset pages, a trace's timeline, counts per hour and day.

Every query names the practice: a row of another practice is never read, whatever id the URL holds.
Lists page by keyset on ``(time, id)`` (never OFFSET), on the indexes of migration 0011, so the
100,000th row costs what the first does (``benchmarks/bench_console.py``).
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, Select, and_, func, literal_column, or_, select, tuple_
from sqlalchemy.orm import Session

from mailbridge.domain.models import (
    InboundLog,
    InboundState,
    Mailbox,
    OperatorAudit,
    Outbox,
    OutboxKind,
    OutboxState,
    QuarantineItem,
    ReplyToken,
    Suppression,
    utcnow,
)

PAGE = 50
TIMELINE_LIMIT = 200


# ---- keyset cursors -------------------------------------------------------------------------------


def encode_cursor(at: datetime, row_id: str | int) -> str:
    raw = f"{at.isoformat()}|{row_id}".encode()
    return base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=")


def decode_cursor(cursor: str | None) -> tuple[datetime, str] | None:
    """The (time, id) after which the next page starts; None for a missing or mangled cursor."""
    if not cursor or len(cursor) > 200:
        return None
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        at, _, row_id = raw.partition("|")
        return datetime.fromisoformat(at), row_id
    except (ValueError, binascii.Error, UnicodeDecodeError):
        return None


def _after(
    time_col: Any, id_col: Any, cursor: str | None, numeric_id: bool = False
) -> ColumnElement[bool] | None:
    point = decode_cursor(cursor)
    if point is None:
        return None
    at, row_id = point
    if numeric_id:
        if not row_id.isdigit():
            return None
        return tuple_(time_col, id_col) < tuple_(at, int(row_id))
    return tuple_(time_col, id_col) < tuple_(at, row_id)


@dataclass
class Page:
    rows: Sequence[Any]
    next_cursor: str | None


def _page(session: Session, query: Select[Any], limit: int, time_attr: str, id_attr: str = "id") -> Page:
    rows = list(session.scalars(query.limit(limit + 1)).all())
    more = len(rows) > limit
    rows = rows[:limit]
    cursor = encode_cursor(getattr(rows[-1], time_attr), getattr(rows[-1], id_attr)) if more else None
    return Page(rows, cursor)


# ---- inbound --------------------------------------------------------------------------------------


@dataclass
class InboundFilter:
    state: str | None = None
    reason: str | None = None
    address: str | None = None
    message_id: str | None = None
    conversation: str | None = None
    since: datetime | None = None
    until: datetime | None = None

    def active(self) -> bool:
        return any(
            (
                self.state,
                self.reason,
                self.address,
                self.message_id,
                self.conversation,
                self.since,
                self.until,
            )
        )


def _msgid_variants(value: str) -> list[str]:
    bare = value.strip().strip("<>")
    return [f"<{bare}>", bare]


def inbound_query(practice_id: int, f: InboundFilter) -> Select[Any]:
    query = select(InboundLog).where(InboundLog.practice_id == practice_id)
    if f.state:
        query = query.where(InboundLog.state == InboundState(f.state))
    if f.reason:
        query = query.where(InboundLog.reason == f.reason)
    if f.address:
        address = f.address.strip().lower()
        query = query.where(or_(InboundLog.from_header == address, InboundLog.mail_from == address))
    if f.message_id:
        query = query.where(InboundLog.message_id_header.in_(_msgid_variants(f.message_id)))
    if f.conversation:
        tokens = select(ReplyToken.id).where(
            ReplyToken.conversation_id == f.conversation, ReplyToken.practice_id == practice_id
        )
        query = query.where(
            or_(InboundLog.conversation_id == f.conversation, InboundLog.token_id.in_(tokens))
        )
    if f.since:
        query = query.where(InboundLog.received_at >= f.since)
    if f.until:
        query = query.where(InboundLog.received_at < f.until)
    return query


def newest_first(session: Session, time_col: Any, id_col: Any, selective: bool) -> tuple[Any, Any]:
    """ORDER BY time DESC, id DESC; with a selective filter on SQLite, by an expression instead.

    SQLite's planner, without statistics, walks the (practice, time) index to avoid a sort and
    tests every row against an address or a Message-ID: half a second at 100,000 rows. Ordering by
    ``time || ''`` (the same text, so the same order) lets it use the address or Message-ID index
    and sort the few matching rows. PostgreSQL's planner has statistics and needs no such help."""
    if selective and session.get_bind().dialect.name == "sqlite":
        return time_col.op("||")(literal_column("''")).desc(), id_col.desc()
    return time_col.desc(), id_col.desc()


def inbound_page(
    session: Session, practice_id: int, f: InboundFilter, cursor: str | None, limit: int = PAGE
) -> Page:
    query = inbound_query(practice_id, f)
    after = _after(InboundLog.received_at, InboundLog.id, cursor)
    if after is not None:
        query = query.where(after)
    selective = bool(f.address or f.message_id or f.conversation)
    query = query.order_by(*newest_first(session, InboundLog.received_at, InboundLog.id, selective))
    return _page(session, query, limit, "received_at")


def inbound_row(session: Session, practice_id: int, row_id: str) -> InboundLog | None:
    row = session.get(InboundLog, row_id)
    return row if row is not None and row.practice_id == practice_id else None


def quarantine_for(session: Session, inbound_id: str) -> QuarantineItem | None:
    return session.scalar(select(QuarantineItem).where(QuarantineItem.inbound_id == inbound_id))


def outbox_for_message(session: Session, practice_id: int, message_id: str) -> list[Outbox]:
    return list(
        session.scalars(
            select(Outbox)
            .where(Outbox.practice_id == practice_id, Outbox.message_id == message_id)
            .order_by(Outbox.created_at)
        ).all()
    )


# ---- the trace timeline ---------------------------------------------------------------------------


@dataclass
class Event:
    at: datetime
    kind: str  # inbound | notification | notice | forward | suppression | quarantine
    state: str
    reason: str | None
    who: str  # an address (From, or the recipient)
    link: str | None = None
    facts: dict[str, Any] = field(default_factory=dict)


def _inbound_events(rows: Sequence[InboundLog], base: str) -> list[Event]:
    return [
        Event(
            at=r.received_at,
            kind="inbound",
            state=r.state.value,
            reason=r.reason,
            who=r.from_header or r.mail_from,
            link=f"{base}/inbound/{r.id}",
            facts={"smtp": r.smtp_reply, "rcpt": r.rcpt, "conversation": r.conversation_id, "door": r.door},
        )
        for r in rows
    ]


def outbox_state(row: Outbox) -> str:
    """The state an operator reads: a pending row that has been tried is *deferred*."""
    if row.state == OutboxState.pending and row.attempts:
        return "deferred"
    return row.state.value


def _outbox_events(rows: Sequence[Outbox]) -> list[Event]:
    return [
        Event(
            at=r.created_at,
            kind=r.kind.value,
            state=outbox_state(r),
            reason=str((r.payload or {}).get("reason") or "") or None,
            who=r.to_address,
            facts={
                "attempts": r.attempts,
                "last_answer": r.last_answer,
                "sent_at": r.sent_at,
                "conversation": r.conversation_id,
            },
        )
        for r in rows
    ]


def timeline(
    session: Session,
    practice_id: int,
    base: str,
    *,
    address: str | None = None,
    message_id: str | None = None,
    conversation: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    limit: int = TIMELINE_LIMIT,
) -> list[Event]:
    """Everything that came in and went out for one address, Message-ID or conversation, newest first."""
    f = InboundFilter(
        address=address, message_id=message_id, conversation=conversation, since=since, until=until
    )
    inbound = session.scalars(
        inbound_query(practice_id, f)
        .order_by(*newest_first(session, InboundLog.received_at, InboundLog.id, True))
        .limit(limit)
    ).all()
    events = _inbound_events(inbound, base)
    out = select(Outbox).where(Outbox.practice_id == practice_id)
    conditions: list[ColumnElement[bool]] = []
    if address:
        conditions.append(Outbox.to_address == address.strip().lower())
        conditions.append(Outbox.to_address == address.strip())
    if message_id:
        conditions.append(Outbox.message_id_header.in_(_msgid_variants(message_id)))
    if conversation:
        conditions.append(Outbox.conversation_id == conversation)
    if conditions:
        if since:
            out = out.where(Outbox.created_at >= since)
        if until:
            out = out.where(Outbox.created_at < until)
        rows = session.scalars(
            out.where(or_(*conditions))
            .order_by(*newest_first(session, Outbox.created_at, Outbox.id, True))
            .limit(limit)
        ).all()
        events += _outbox_events(rows)
    held = select(QuarantineItem).where(QuarantineItem.practice_id == practice_id)
    if address or conversation:
        match = []
        if address:
            match.append(QuarantineItem.from_address == address.strip().lower())
        if conversation:
            match.append(QuarantineItem.conversation_id == conversation)
        for item in session.scalars(
            held.where(or_(*match)).order_by(QuarantineItem.created_at.desc()).limit(limit)
        ):
            events.append(
                Event(
                    at=item.decided_at or item.created_at,
                    kind="quarantine",
                    state=item.state,
                    reason=item.reason,
                    who=item.from_address,
                    link=f"{base}/quarantine/{item.id}",
                )
            )
    if address:
        sup = session.scalar(
            select(Suppression).where(
                Suppression.practice_id == practice_id, Suppression.address == address.strip().lower()
            )
        )
        if sup is not None:
            events.append(
                Event(
                    at=sup.last_seen,
                    kind="suppression",
                    state="suppressed" if sup.active else f"{sup.reason.value}: {sup.count} so far",
                    reason=sup.reason.value,
                    who=sup.address,
                    link=f"{base}/deliveries#suppressions",
                    facts={"status": sup.status or "", "diagnostic": sup.diagnostic or ""},
                )
            )
    events.sort(key=lambda e: e.at, reverse=True)
    return events


# ---- quarantine, deliveries, audit ----------------------------------------------------------------


def quarantine_page(
    session: Session, practice_id: int, state: str, cursor: str | None, limit: int = PAGE
) -> Page:
    query = select(QuarantineItem).where(
        QuarantineItem.practice_id == practice_id, QuarantineItem.state == state
    )
    after = _after(QuarantineItem.created_at, QuarantineItem.id, cursor)
    if after is not None:
        query = query.where(after)
    query = query.order_by(QuarantineItem.created_at.desc(), QuarantineItem.id.desc())
    return _page(session, query, limit, "created_at")


def quarantine_item(session: Session, practice_id: int, item_id: str) -> QuarantineItem | None:
    item = session.get(QuarantineItem, item_id)
    return item if item is not None and item.practice_id == practice_id else None


def outbox_page(
    session: Session, practice_id: int, state: str | None, cursor: str | None, limit: int = PAGE
) -> Page:
    query = select(Outbox).where(Outbox.practice_id == practice_id)
    if state == "deferred":
        query = query.where(Outbox.state == OutboxState.pending, Outbox.attempts > 0)
    elif state == "pending":
        query = query.where(Outbox.state == OutboxState.pending, Outbox.attempts == 0)
    elif state:
        query = query.where(Outbox.state == OutboxState(state))
    after = _after(Outbox.created_at, Outbox.id, cursor)
    if after is not None:
        query = query.where(after)
    query = query.order_by(Outbox.created_at.desc(), Outbox.id.desc())
    return _page(session, query, limit, "created_at")


def bounces(session: Session, practice_id: int, limit: int = PAGE) -> list[tuple[InboundLog, Outbox | None]]:
    """Bounces received, newest first, each with the notification it reports on (VERP names it)."""
    rows = session.scalars(
        select(InboundLog)
        .where(InboundLog.practice_id == practice_id, InboundLog.state == InboundState.bounce)
        .order_by(InboundLog.received_at.desc(), InboundLog.id.desc())
        .limit(limit)
    ).all()
    out: list[tuple[InboundLog, Outbox | None]] = []
    for row in rows:
        outbox_id = _verp_outbox_id(row.rcpt)
        target = session.get(Outbox, outbox_id) if outbox_id else None
        out.append((row, target if target is not None and target.practice_id == practice_id else None))
    return out


def _verp_outbox_id(rcpt: str) -> str | None:
    local = rcpt.partition("@")[0]
    if not local.startswith("bounce+"):
        return None
    outbox_id, _, _mac = local[len("bounce+") :].rpartition("-")
    return outbox_id or None


def suppressions(session: Session, practice_id: int) -> list[Suppression]:
    """The practice's suppressions as the API lists them (the domain's one query)."""
    from mailbridge.domain import suppressions as domain_suppressions

    return list(domain_suppressions.listing(session, practice_id, limit=500))


def audit_page(
    session: Session,
    practice_ids: Sequence[int] | None,
    operator_id: int,
    *,
    practice_id: int | None = None,
    operator: str | None = None,
    action: str | None = None,
    target: str | None = None,
    since: datetime | None = None,
    cursor: str | None = None,
    limit: int = PAGE,
) -> Page:
    """Operator actions; a scoped operator sees its practices' rows and its own sign-ins only."""
    query = select(OperatorAudit)
    if practice_ids is not None:
        query = query.where(
            or_(
                OperatorAudit.practice_id.in_(list(practice_ids) or [-1]),
                and_(OperatorAudit.practice_id.is_(None), OperatorAudit.operator_id == operator_id),
            )
        )
    if practice_id is not None:
        query = query.where(OperatorAudit.practice_id == practice_id)
    if operator:
        query = query.where(OperatorAudit.operator_name == operator)
    if action:
        query = query.where(OperatorAudit.action == action)
    if target:
        query = query.where(OperatorAudit.target_id == target)
    if since:
        query = query.where(OperatorAudit.created_at >= since)
    after = _after(OperatorAudit.created_at, OperatorAudit.id, cursor, numeric_id=True)
    if after is not None:
        query = query.where(after)
    query = query.order_by(OperatorAudit.created_at.desc(), OperatorAudit.id.desc())
    return _page(session, query, limit, "created_at")


def recent_actions(session: Session, operator_id: int, action: str, hours: int) -> int:
    """How many times this operator did *action* in the last *hours* (a rate limit's count)."""
    since = utcnow() - timedelta(hours=hours)
    return int(
        session.scalar(
            select(func.count()).where(
                OperatorAudit.operator_id == operator_id,
                OperatorAudit.action == action,
                OperatorAudit.created_at >= since,
            )
        )
        or 0
    )


def audit_for(session: Session, practice_id: int, kind: str, target_id: str) -> list[OperatorAudit]:
    return list(
        session.scalars(
            select(OperatorAudit)
            .where(
                OperatorAudit.practice_id == practice_id,
                OperatorAudit.target_kind == kind,
                OperatorAudit.target_id == target_id,
            )
            .order_by(OperatorAudit.created_at)
        ).all()
    )


def mailboxes(session: Session, practice_id: int) -> list[Mailbox]:
    return list(
        session.scalars(select(Mailbox).where(Mailbox.practice_id == practice_id).order_by(Mailbox.name))
    )


# ---- counts for the overview's charts -------------------------------------------------------------


def _bucket(session: Session, column: Any, unit: str) -> Any:
    """The hour or day of *column* as text, in UTC: SQLite's strftime, PostgreSQL's to_char."""
    if session.get_bind().dialect.name == "postgresql":
        fmt = "YYYY-MM-DD HH24" if unit == "hour" else "YYYY-MM-DD"
        return func.to_char(func.timezone("UTC", column), fmt)
    return func.strftime("%Y-%m-%d %H" if unit == "hour" else "%Y-%m-%d", column)


def buckets(unit: str, now: datetime | None = None) -> list[str]:
    """The 24 hours or 7 days ending now, oldest first, as the bucket expression writes them."""
    now = now or utcnow()
    if unit == "hour":
        start = now.replace(minute=0, second=0, microsecond=0)
        return [(start - timedelta(hours=h)).strftime("%Y-%m-%d %H") for h in range(23, -1, -1)]
    day = now.replace(hour=0, minute=0, second=0, microsecond=0)
    return [(day - timedelta(days=d)).strftime("%Y-%m-%d") for d in range(6, -1, -1)]


def window_start(unit: str, now: datetime | None = None) -> datetime:
    now = now or utcnow()
    if unit == "hour":
        return now.replace(minute=0, second=0, microsecond=0) - timedelta(hours=23)
    return now.replace(hour=0, minute=0, second=0, microsecond=0) - timedelta(days=6)


def inbound_counts(session: Session, practice_id: int, unit: str) -> dict[tuple[str, str], int]:
    """(bucket, state) → count over the window."""
    bucket = _bucket(session, InboundLog.received_at, unit).label("b")
    rows = session.execute(
        select(bucket, InboundLog.state, func.count())
        .where(InboundLog.practice_id == practice_id, InboundLog.received_at >= window_start(unit))
        .group_by(bucket, InboundLog.state)
    ).all()
    return {(b, s.value if hasattr(s, "value") else str(s)): int(n) for b, s, n in rows}


def refused_reasons(session: Session, practice_id: int, unit: str, top: int = 8) -> list[tuple[str, int]]:
    rows = session.execute(
        select(InboundLog.reason, func.count().label("n"))
        .where(
            InboundLog.practice_id == practice_id,
            InboundLog.received_at >= window_start(unit),
            InboundLog.state == InboundState.rejected,
        )
        .group_by(InboundLog.reason)
        .order_by(func.count().desc())
        .limit(top)
    ).all()
    return [(str(reason or "?"), int(n)) for reason, n in rows]


def outbound_counts(session: Session, practice_id: int, unit: str) -> dict[tuple[str, str], int]:
    bucket = _bucket(session, Outbox.created_at, unit).label("b")
    tried = (Outbox.attempts > 0).label("tried")
    rows = session.execute(
        select(bucket, Outbox.state, tried, func.count())
        .where(Outbox.practice_id == practice_id, Outbox.created_at >= window_start(unit))
        .group_by(bucket, Outbox.state, tried)
    ).all()
    out: dict[tuple[str, str], int] = {}
    for b, state, was_tried, n in rows:
        value = state.value if hasattr(state, "value") else str(state)
        name = {"pending": "deferred" if was_tried else "pending", "expired": "failed"}.get(value, value)
        out[(b, name)] = out.get((b, name), 0) + int(n)
    return out


LATENCY_SAMPLES = 20_000


def latencies(session: Session, practice_id: int, unit: str) -> list[tuple[datetime, float]]:
    """(received, seconds) from an email reply's arrival to its notification's hand-off, newest first.

    Measured from the inbound row's received_at (the reply reached us) to the notification's
    sent_at (the smarthost took it): what a client waiting for an answer experiences. At most
    LATENCY_SAMPLES pairs, the newest, so the overview stays fast on a busy practice."""
    rows = session.execute(
        select(InboundLog.received_at, Outbox.sent_at)
        .join(Outbox, Outbox.message_id == InboundLog.posted_message_id)
        .where(
            InboundLog.practice_id == practice_id,
            InboundLog.received_at >= window_start(unit),
            InboundLog.posted_message_id.is_not(None),
            Outbox.kind == OutboxKind.notification,
            Outbox.sent_at.is_not(None),
        )
        .order_by(InboundLog.received_at.desc())
        .limit(LATENCY_SAMPLES)
    ).all()
    return [
        (received, max(0.0, (sent - received).total_seconds())) for received, sent in rows if sent is not None
    ]


def waiting_quarantine(session: Session, practice_id: int) -> tuple[int, datetime | None]:
    count, oldest = session.execute(
        select(func.count(), func.min(QuarantineItem.created_at)).where(
            QuarantineItem.practice_id == practice_id, QuarantineItem.state == "held"
        )
    ).one()
    return int(count), oldest
