"""Who did what to what, and when: one row per staff or operator action, never the content acted on."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from mailbridge.domain.models import AuditEvent, Practice, User


@dataclass(frozen=True)
class Actor:
    """Whoever acts: a directory user (staff), a console operator, or the service key alone.

    ``label`` is what the audit row keeps (``staff:<external id>``, ``operator:<name>``, ``api``), so
    the row still says who acted after the user is gone from the directory.
    """

    label: str
    user: User | None = None

    @classmethod
    def staff(cls, user: User) -> Actor:
        return cls(f"staff:{user.external_id}", user)

    @classmethod
    def operator(cls, name: str) -> Actor:
        return cls(f"operator:{name}")


SERVICE = Actor("api")


def record(
    session: Session,
    practice: Practice,
    action: str,
    actor: Actor,
    target_kind: str,
    target_id: str,
    details: dict[str, Any] | None = None,
) -> AuditEvent:
    """Add the row to the caller's transaction: the action and its record commit together or not at all."""
    event = AuditEvent(
        practice_id=practice.id,
        action=action,
        actor_id=actor.user.id if actor.user is not None else None,
        actor=actor.label[:200],
        target_kind=target_kind,
        target_id=target_id,
        details=details,
    )
    session.add(event)
    return event


def last_actions(session: Session, target_kind: str, target_ids: list[str]) -> dict[str, AuditEvent]:
    """The latest audit row for each target (one query for a whole list page)."""
    if not target_ids:
        return {}
    rows = session.scalars(
        select(AuditEvent)
        .where(AuditEvent.target_kind == target_kind, AuditEvent.target_id.in_(target_ids))
        .order_by(AuditEvent.created_at, AuditEvent.id)
    ).all()
    return {row.target_id: row for row in rows}
