"""Notification mutes: who asked for no more email about which conversation (one-click unsubscribe).

A mute stops notification emails for one (recipient, conversation) pair; it changes nothing else:
the recipient still reads, posts and replies by email. Fan-out writes a ``suppressed`` delivery row
``skipped: conversation_muted`` for a muted recipient, and a notification already waiting when the
mute arrives is cancelled at send time (``outbound.build``).
"""

from __future__ import annotations

from collections.abc import Iterable

from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from mailbridge.domain.models import NotificationMute

SOURCES = ("one_click", "page", "api")


def mute(session: Session, practice_id: int, user_id: int, conversation_id: str, source: str) -> bool:
    """Mute; True when this call created the mute, False when it was there already (idempotent)."""
    if is_muted(session, user_id, conversation_id):
        return False
    try:
        with session.begin_nested():  # two clicks at once: the unique constraint keeps one row
            session.add(
                NotificationMute(
                    practice_id=practice_id, user_id=user_id, conversation_id=conversation_id, source=source
                )
            )
    except IntegrityError:
        return False
    return True


def unmute(session: Session, user_id: int, conversation_id: str) -> bool:
    result = session.execute(
        delete(NotificationMute).where(
            NotificationMute.user_id == user_id, NotificationMute.conversation_id == conversation_id
        )
    )
    return bool(getattr(result, "rowcount", 0))


def is_muted(session: Session, user_id: int, conversation_id: str) -> bool:
    return (
        session.scalar(
            select(NotificationMute.id).where(
                NotificationMute.user_id == user_id, NotificationMute.conversation_id == conversation_id
            )
        )
        is not None
    )


def muted_pairs(session: Session, conversation_ids: Iterable[str]) -> set[tuple[int, str]]:
    """``(user id, conversation id)`` of every mute on these conversations, in one query."""
    ids = sorted(set(conversation_ids))
    if not ids:
        return set()
    rows = session.execute(
        select(NotificationMute.user_id, NotificationMute.conversation_id).where(
            NotificationMute.conversation_id.in_(ids)
        )
    )
    return {(int(user_id), str(conversation_id)) for user_id, conversation_id in rows}


def muted_users(session: Session, conversation_id: str) -> list[int]:
    return sorted(
        session.scalars(
            select(NotificationMute.user_id).where(NotificationMute.conversation_id == conversation_id)
        ).all()
    )
