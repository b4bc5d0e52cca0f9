"""Housekeeping: raw copies of mail are kept only for their retention period (refused mail: days,
not weeks); crash leftovers and expired soft suppressions go.

Raw copies live in the object store, shared by every node, so any node may run this (they all do,
hourly; the work is idempotent). Order matters for the invariant *no row names a missing object*:
rows stop naming a copy in a committed transaction, then the object is deleted. A crash between
the two leaves an object no row names: ``sweep_raw_objects`` removes such objects once they are
older than a day (younger ones may belong to a run that has put its object and not yet committed
its row).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from datetime import timedelta

from sqlalchemy import and_, or_, select, update

from mailbridge.domain import suppressions
from mailbridge.domain.db import transaction
from mailbridge.domain.erasure import erase_item, raw_refs
from mailbridge.domain.idempotency import purge
from mailbridge.domain.models import InboundLog, InboundState, QuarantineItem, utcnow
from mailbridge.wiring import Services

log = logging.getLogger(__name__)

ORPHAN_AGE = timedelta(days=1)
_BATCH = 500


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
        rows = session.scalars(
            select(InboundLog).where(
                or_(InboundLog.raw_path.is_not(None), InboundLog.raw_ref.is_not(None)),
                expired,
                InboundLog.id.not_in(held),
            )
        ).all()
        refs = [ref for row in rows for ref in raw_refs(row)]
        if rows:
            session.execute(
                update(InboundLog)
                .where(InboundLog.id.in_([r.id for r in rows]))
                .values(raw_path=None, raw_ref=None)
            )
    for ref in refs:
        try:
            services.vault.delete(ref)
            removed += 1
        except OSError:
            log.warning("raw_delete_failed", extra={"ref": ref}, exc_info=True)
    # spool files of transfers cut by a crash: older than a day, nobody is writing them any more
    spool = services.settings.data_dir / "spool"
    if spool.is_dir():
        for path in spool.iterdir():
            if path.is_file() and path.stat().st_mtime < time.time() - 86400:
                path.unlink(missing_ok=True)
    # this node's working copies of runs a crash cut short (the object store has the kept ones)
    inbound = services.settings.data_dir / "inbound"
    if inbound.is_dir():
        for path in inbound.glob("*/*.eml"):
            with contextlib.suppress(FileNotFoundError):
                if path.stat().st_mtime < time.time() - 86400 and not _legacy_named(services, path):
                    path.unlink()
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


def purge_idempotency_keys(services: Services) -> int:
    """Idempotency-Key answers older than ``api_idempotency_retention_hours`` (api/idempotency.py)."""
    hours = services.settings.api_idempotency_retention_hours
    removed = purge(services.sessions, timedelta(hours=hours))
    if removed:
        log.info("idempotency_keys_purged", extra={"count": removed})
    return removed


def _legacy_named(services: Services, path: object) -> bool:
    """A pre-upgrade row may still name this local file as its raw copy."""
    with services.sessions() as session:
        return session.scalar(select(InboundLog.id).where(InboundLog.raw_path == str(path))) is not None


def sweep_raw_objects(services: Services, older_than: timedelta = ORPHAN_AGE) -> int:
    """Raw objects no inbound row names, older than *older_than*: left by a crash between a put and
    its row's commit, or between a row's release and the delete. Returns how many went."""
    cutoff = utcnow() - older_than
    removed = 0
    batch: list[str] = []

    def flush() -> int:
        with services.sessions() as session:
            named = set(session.scalars(select(InboundLog.raw_ref).where(InboundLog.raw_ref.in_(batch))))
        gone = 0
        for key in batch:
            if key not in named:
                services.vault.objects.delete(key)
                gone += 1
        batch.clear()
        return gone

    for info in services.vault.objects.list("raw/"):
        if info.modified >= cutoff:
            continue
        batch.append(info.key)
        if len(batch) >= _BATCH:
            removed += flush()
    if batch:
        removed += flush()
    if removed:
        log.info("raw_orphans_swept", extra={"count": removed})
    return removed


async def run_housekeeping(services: Services, stop: asyncio.Event, every: float = 3600.0) -> None:
    while not stop.is_set():
        try:
            await asyncio.to_thread(purge_raw, services)
            await asyncio.to_thread(purge_discarded, services)
            await asyncio.to_thread(purge_suppressions, services)
            await asyncio.to_thread(sweep_raw_objects, services)
            await asyncio.to_thread(purge_idempotency_keys, services)
        except Exception:
            log.warning("housekeeping_failed", exc_info=True)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=every)
