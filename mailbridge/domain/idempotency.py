"""The store behind ``Idempotency-Key`` (api/idempotency.py): one row per key, the lock, then the answer.

Kept in the domain so that housekeeping purges it without importing the HTTP layer."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy import delete, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from mailbridge.domain.db import transaction
from mailbridge.domain.models import IdempotencyKey, utcnow

LEASE = timedelta(minutes=15)  # an in-flight row older than this was left by a node that died


@dataclass(frozen=True)
class Stored:
    """What a previous request with the key left: in flight (status None) or its answer."""

    fingerprint: str | None
    status: int | None
    headers: list[list[str]]
    body: bytes


def _where(practice: str, principal: str, key: str) -> Any:
    return (
        (IdempotencyKey.practice == practice)
        & (IdempotencyKey.principal == principal)
        & (IdempotencyKey.key == key)
    )


def claim(
    sessions: sessionmaker[Session], practice: str, principal: str, key: str, retention: timedelta
) -> int | Stored:
    """The row's id when this request holds the key now, or what holds it."""
    for _ in range(3):
        now = utcnow()
        try:
            with transaction(sessions) as session:
                row = IdempotencyKey(
                    practice=practice, principal=principal, key=key, created_at=now, locked_at=now
                )
                session.add(row)
                session.flush()
                return row.id
        except IntegrityError:
            pass
        with transaction(sessions) as session:
            found = session.scalars(select(IdempotencyKey).where(_where(practice, principal, key))).first()
            if found is None:
                continue  # purged in between: try the insert again
            expired = found.created_at < now - retention
            abandoned = found.response_status is None and found.locked_at < now - LEASE
            if expired or abandoned:
                # Conditional on what was read, so that of two nodes only one takes it over.
                taken = session.execute(
                    update(IdempotencyKey)
                    .where(IdempotencyKey.id == found.id, IdempotencyKey.locked_at == found.locked_at)
                    .values(
                        fingerprint=None,
                        response_status=None,
                        response_headers=None,
                        response_body=None,
                        created_at=now,
                        locked_at=now,
                    )
                )
                if taken.rowcount == 1:  # type: ignore[attr-defined]
                    return found.id
                continue
            return Stored(
                found.fingerprint,
                found.response_status,
                list(found.response_headers or []),
                found.response_body or b"",
            )
    return Stored(None, None, [], b"")  # contended three times over: as good as in flight


def complete(
    sessions: sessionmaker[Session],
    row_id: int,
    fingerprint: str,
    status: int,
    headers: list[list[str]],
    body: bytes,
) -> None:
    with transaction(sessions) as session:
        session.execute(
            update(IdempotencyKey)
            .where(IdempotencyKey.id == row_id)
            .values(
                fingerprint=fingerprint, response_status=status, response_headers=headers, response_body=body
            )
        )


def renew(sessions: sessionmaker[Session], row_id: int) -> None:
    """Still running (a long upload): push the lease back so no other node takes the key over."""
    with transaction(sessions) as session:
        session.execute(
            update(IdempotencyKey)
            .where(IdempotencyKey.id == row_id, IdempotencyKey.response_status.is_(None))
            .values(locked_at=utcnow())
        )


def release(sessions: sessionmaker[Session], row_id: int) -> None:
    with transaction(sessions) as session:
        session.execute(delete(IdempotencyKey).where(IdempotencyKey.id == row_id))


def purge(sessions: sessionmaker[Session], retention: timedelta) -> int:
    """Housekeeping: keys older than the retention are forgotten."""
    with transaction(sessions) as session:
        result = session.execute(
            delete(IdempotencyKey).where(IdempotencyKey.created_at < utcnow() - retention)
        )
        return int(result.rowcount)  # type: ignore[attr-defined]
