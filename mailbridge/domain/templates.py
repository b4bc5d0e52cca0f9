"""A practice's own templates: saved as versions, one active per (name, locale), or none (the default).

Only storage lives here. Whether a template may be saved is decided before, by the renderer's
checks (``outbound.render.Renderer.check``: the sandbox's language, the variables a template may
use, required links, HTML that loads nothing); what is stored is exactly what was checked.
"""

from __future__ import annotations

from collections.abc import Iterable

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from mailbridge.domain.models import PracticeTemplate


def save_version(
    session: Session,
    practice_id: int,
    name: str,
    locale: str,
    *,
    subject: str | None,
    text: str | None,
    mjml: str | None,
    created_by: str | None,
) -> PracticeTemplate:
    """A new version, made the active one; earlier versions are kept, inactive."""
    latest = session.scalar(
        select(func.max(PracticeTemplate.version)).where(
            PracticeTemplate.practice_id == practice_id,
            PracticeTemplate.name == name,
            PracticeTemplate.locale == locale,
        )
    )
    _deactivate(session, practice_id, name, locale)
    row = PracticeTemplate(
        practice_id=practice_id,
        name=name,
        locale=locale,
        version=(latest or 0) + 1,
        subject=subject,
        text=text,
        mjml=mjml,
        active=True,
        created_by=created_by,
    )
    session.add(row)
    session.flush()
    return row


def back_to_default(session: Session, practice_id: int, name: str, locale: str) -> bool:
    """No active version any more (the shipped template applies); True when one was active."""
    return _deactivate(session, practice_id, name, locale) > 0


def _deactivate(session: Session, practice_id: int, name: str, locale: str) -> int:
    result = session.execute(
        update(PracticeTemplate)
        .where(
            PracticeTemplate.practice_id == practice_id,
            PracticeTemplate.name == name,
            PracticeTemplate.locale == locale,
            PracticeTemplate.active.is_(True),
        )
        .values(active=False)
        .execution_options(synchronize_session=False)
    )
    return int(getattr(result, "rowcount", 0) or 0)


def versions(session: Session, practice_id: int, name: str, locale: str) -> list[PracticeTemplate]:
    """Every version, newest first."""
    return list(
        session.scalars(
            select(PracticeTemplate)
            .where(
                PracticeTemplate.practice_id == practice_id,
                PracticeTemplate.name == name,
                PracticeTemplate.locale == locale,
            )
            .order_by(PracticeTemplate.version.desc())
        ).all()
    )


def active(session: Session, practice_ids: Iterable[int]) -> dict[tuple[int, str, str], PracticeTemplate]:
    """``(practice id, name, locale)`` → the active version, for these practices, in one query."""
    ids = sorted(set(practice_ids))
    if not ids:
        return {}
    rows = session.scalars(
        select(PracticeTemplate).where(
            PracticeTemplate.practice_id.in_(ids), PracticeTemplate.active.is_(True)
        )
    )
    return {(r.practice_id, r.name, r.locale): r for r in rows}
