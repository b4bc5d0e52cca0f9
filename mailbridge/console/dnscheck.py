"""The DNS page's report: the records ``mailbridge dns records`` prints, each checked live.

No rule of its own: the records come from ``dnsrecords.practice.records_for`` and the comparisons
from ``dnsrecords.check`` (the CLI's ``dns check``), the keys from ``outbound.keys``. Lookups go
through ``services.resolver`` only (tests: a static table or a DNS server on loopback), and no
transaction is open while they run.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy.orm import Session, sessionmaker

from mailbridge.dnsrecords.check import Finding, check_records
from mailbridge.dnsrecords.practice import records_for
from mailbridge.dnsrecords.records import Record
from mailbridge.domain import directory
from mailbridge.domain.db import transaction
from mailbridge.domain.models import utcnow
from mailbridge.inbound.authenticate import organizational_domain
from mailbridge.inbound.dns import Resolver
from mailbridge.outbound import keys
from mailbridge.settings import Settings


@dataclass(frozen=True)
class RecordView:
    purpose: str  # MX | SPF | DKIM | DMARC
    rtype: str  # MX | TXT
    name: str
    value: str  # what to publish
    title: str
    status: str = "unchecked"  # published | missing | different | error | unchecked
    detail: str = ""
    found: tuple[str, ...] = ()


@dataclass(frozen=True)
class KeyInfo:
    selector: str
    algorithm: str
    state: str  # pending | active | retiring | retired
    created: datetime | None
    age_days: int | None
    dns_status: str | None


@dataclass
class DnsReport:
    records: list[RecordView]
    keys: list[KeyInfo]
    checked_at: datetime | None = None
    problems: int = 0
    notes: list[str] = field(default_factory=list)

    @property
    def signing(self) -> bool:
        return any(k.state == "active" for k in self.keys)


def _view(finding: Finding | None, record: Record) -> RecordView:
    base = RecordView(record.purpose.upper(), record.rtype, record.name, record.value, record.title)
    if finding is None:
        return base
    return RecordView(
        base.purpose,
        base.rtype,
        base.name,
        base.value,
        base.title,
        status=finding.status,
        detail=finding.detail,
        found=tuple(finding.found),
    )


# The last live check per practice, for the overview (a check costs DNS round trips: not on every view).
_LAST: dict[int, DnsReport] = {}
_LOCK = threading.Lock()


def _read(session: Session, slug: str, settings: Settings) -> tuple[int, list[Record], list[KeyInfo]]:
    practice = directory.get_practice(session, slug)
    now = utcnow()
    infos = [
        KeyInfo(
            row.selector,
            row.algorithm.value,
            row.state.value,
            row.created_at,
            (now - row.created_at).days if row.created_at else None,
            row.dns_status,
        )
        for row in keys.keys_of(session, practice)
    ]
    return practice.id, list(records_for(session, practice, settings)), infos


def practice_records(
    sessions: sessionmaker[Session], slug: str, settings: Settings, resolver: Resolver, *, live: bool = True
) -> DnsReport:
    """Every record to publish for the practice and, with *live*, its status now (the last live
    report is kept for the overview, which never waits on DNS)."""
    with transaction(sessions) as session:
        practice_id, records, infos = _read(session, slug, settings)
    if not live:
        with _LOCK:
            last = _LAST.get(practice_id)
        return last if last is not None else DnsReport([_view(None, r) for r in records], infos)
    findings = check_records(records, resolver, organizational_domain)
    report = DnsReport(
        [_view(f, f.record) for f in findings],
        infos,
        checked_at=utcnow(),
        problems=sum(1 for f in findings if not f.ok),
    )
    with _LOCK:
        _LAST[practice_id] = report
    return report
