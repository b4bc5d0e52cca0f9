"""Housekeeping: raw copies of mail are kept only for their retention period; crash leftovers go."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from datetime import timedelta
from pathlib import Path

from sqlalchemy import and_, or_, select, update

from mailbridge.domain.db import transaction
from mailbridge.domain.models import InboundLog, InboundState, QuarantineItem, utcnow
from mailbridge.wiring import Services

log = logging.getLogger(__name__)


def purge_raw(services: Services) -> int:
    """Delete raw mail older than ``raw_retention_days`` (refused or deferred mail: older than
    ``raw_refused_retention_days``), except what staff still have to review (held in quarantine)."""
    now = utcnow()
    cutoff = now - timedelta(days=services.settings.raw_retention_days)
    refused_cutoff = now - timedelta(days=services.settings.raw_refused_retention_days)
    removed = 0
    with transaction(services.sessions) as session:
        held = select(QuarantineItem.inbound_id).where(QuarantineItem.state == "held")
        expired = or_(
            InboundLog.received_at < cutoff,
            and_(
                InboundLog.state.in_([InboundState.rejected, InboundState.deferred]),
                InboundLog.received_at < refused_cutoff,
            ),
        )
        rows = session.execute(
            select(InboundLog.id, InboundLog.raw_path).where(
                InboundLog.raw_path.is_not(None), expired, InboundLog.id.not_in(held)
            )
        ).all()
        for _, raw_path in rows:
            Path(str(raw_path)).unlink(missing_ok=True)
            removed += 1
        if rows:
            session.execute(
                update(InboundLog).where(InboundLog.id.in_([r[0] for r in rows])).values(raw_path=None)
            )
    # spool files of transfers cut by a crash: older than a day, nobody is writing them any more
    spool = services.settings.data_dir / "spool"
    if spool.is_dir():
        for path in spool.iterdir():
            if path.is_file() and path.stat().st_mtime < time.time() - 86400:
                path.unlink(missing_ok=True)
    if removed:
        log.info("raw_mail_purged", extra={"count": removed})
    return removed


async def run_housekeeping(services: Services, stop: asyncio.Event, every: float = 3600.0) -> None:
    while not stop.is_set():
        try:
            await asyncio.to_thread(purge_raw, services)
        except Exception:
            log.warning("housekeeping_failed", exc_info=True)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=every)
