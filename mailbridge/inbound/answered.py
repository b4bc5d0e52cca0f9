"""Which notifications a reply answers: the ones its ``In-Reply-To``/``References`` name, else the latest.

A reply token names one participant in one conversation, so the notifications the reply can quote
are that participant's notifications in that conversation. Clients name the one they answer in
``In-Reply-To`` and ``References`` (RFC 5322 §3.6.4); some drop them, and then the few most recent
are tried (the cut keeps the one whose words it finds most).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Final

from sqlalchemy import Table, bindparam, select
from sqlalchemy.orm import Session

from mailbridge.domain.fingerprint import Fingerprint
from mailbridge.domain.models import Outbox, OutboxKind

RECENT: Final = 3  # notifications tried when the reply names none of them
SCANNED: Final = 50  # rows read at most, newest first
_MSGID = re.compile(r"<[^<>\s]{1,250}>")
_OUTBOX: Table = Outbox.__table__  # type: ignore[assignment]
# On the table, not the mapped class: a hot-path read, built once (see pipeline.py's INBOUND_TABLE).
_QUERY: Final = (
    select(_OUTBOX.c.message_id_header, _OUTBOX.c.sent_fingerprint)
    .where(
        _OUTBOX.c.conversation_id == bindparam("c"),
        _OUTBOX.c.recipient_id == bindparam("r"),
        _OUTBOX.c.practice_id == bindparam("p"),
        _OUTBOX.c.kind == OutboxKind.notification,
        _OUTBOX.c.sent_fingerprint.is_not(None),
    )
    .order_by(_OUTBOX.c.created_at.desc())
    .limit(SCANNED)
)


def message_ids(*headers: str) -> frozenset[str]:
    """The msg-ids named in ``In-Reply-To`` and ``References`` values (bounded, never raising)."""
    return frozenset(m.group(0) for value in headers for m in _MSGID.finditer(value[:20_000]))


def answered_fingerprints(
    session: Session,
    *,
    practice_id: int,
    recipient_id: int,
    conversation_id: str,
    references: frozenset[str],
) -> Sequence[Fingerprint]:
    """Fingerprints of the notifications the reply names, else of the participant's latest ones."""
    # On the session's connection: a Core statement gains nothing from the ORM's execute but its cost.
    rows = (
        session.connection()
        .execute(_QUERY, {"c": conversation_id, "r": recipient_id, "p": practice_id})
        .all()
    )
    named: list[Fingerprint] = []
    recent: list[Fingerprint] = []
    for message_id, data in rows:
        fingerprint = Fingerprint.from_json(data)
        if fingerprint is None:
            continue
        if message_id and message_id in references:
            named.append(fingerprint)
        elif len(recent) < RECENT:
            recent.append(fingerprint)
    return named or recent
