"""Housekeeping: raw copies of refused mail are kept only for the retention period; crash leftovers and
expired soft suppressions go."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from datetime import timedelta
from pathlib import Path

from sqlalchemy import select, update

from mailbridge.domain import suppressions
from mailbridge.domain.db import transaction
from mailbridge.domain.erasure import erase_item
from mailbridge.domain.models import InboundLog, QuarantineItem, utcnow
from mailbridge.wiring import Services

log = logging.getLogger(__name__)


def purge_raw(services: Services) -> int:
    """Delete raw mail older than ``raw_retention_days``, except what staff still have to review."""
    cutoff = utcnow() - timedelta(days=services.settings.raw_retention_days)
    removed = 0
    with transaction(services.sessions) as session:
        held = select(QuarantineItem.inbound_id).where(QuarantineItem.state == "held")
        rows = session.execute(
            select(InboundLog.id, InboundLog.raw_path).where(
                InboundLog.raw_path.is_not(None), InboundLog.received_at < cutoff, InboundLog.id.not_in(held)
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


def purge_discarded(services: Services) -> int:
    """Discarded mail is kept nowhere: its raw copy goes at once, and what its quarantine item held of
    it (subject, sender, preview, file names) once ``raw_retention_days`` have passed, the time staff
    have to look back at what was discarded. The item stays (who discarded it, when, why)."""
    cutoff = utcnow() - timedelta(days=services.settings.raw_retention_days)
    with transaction(services.sessions) as session:
        items = session.scalars(
            select(QuarantineItem).where(
                QuarantineItem.state == "discarded",
                QuarantineItem.decided_at < cutoff,
                (QuarantineItem.subject != "") | (QuarantineItem.from_address != ""),
            )
        ).all()
        for item in items:
            erase_item(item)
    if items:
        log.info("discarded_mail_erased", extra={"count": len(items)})
    return len(items)


def purge_suppressions(services: Services) -> int:
    """Soft suppressions (and soft counts) whose period ended: gone from the API and the tables."""
    with transaction(services.sessions) as session:
        removed = suppressions.purge_expired(session)
    if removed:
        log.info("suppressions_expired", extra={"count": removed})
    return removed


async def run_housekeeping(services: Services, stop: asyncio.Event, every: float = 3600.0) -> None:
    while not stop.is_set():
        try:
            await asyncio.to_thread(purge_raw, services)
            await asyncio.to_thread(purge_discarded, services)
            await asyncio.to_thread(purge_suppressions, services)
        except Exception:
            log.warning("housekeeping_failed", exc_info=True)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=every)
