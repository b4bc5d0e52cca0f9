"""A practice's records and DKIM keys against DNS: what the CLI prints and a console can show.

Database work and DNS lookups are kept apart: the keys are read in one short transaction, looked
up with no transaction open (a lookup may take seconds), and the results written in another.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy.orm import Session, sessionmaker

from mailbridge.dnsrecords.check import Finding, check_record, check_records
from mailbridge.dnsrecords.records import DkimKeyInfo, Record, dkim_record, expected_records
from mailbridge.domain import directory
from mailbridge.domain.db import transaction
from mailbridge.domain.errors import Conflict
from mailbridge.domain.models import DkimAlgorithm, DkimKeyRow, DkimKeyState, Practice
from mailbridge.inbound.dns import Resolver
from mailbridge.outbound import keys
from mailbridge.settings import Settings


def key_info(row: DkimKeyRow) -> DkimKeyInfo:
    return DkimKeyInfo(row.selector, row.domain, row.algorithm.value, row.state.value, row.public_txt)


def records_for(session: Session, practice: Practice, settings: Settings) -> list[Record]:
    published = keys.keys_of(session, practice, keys.PUBLISHED_STATES)
    return expected_records(
        reply_domain=practice.reply_domain,
        notify_from=practice.notify_from,
        keys=[key_info(row) for row in published],
        spf_include=settings.spf_include,
        mx_host=settings.mx_host,
    )


def check_practice(
    sessions: sessionmaker[Session],
    slug: str,
    settings: Settings,
    resolver: Resolver,
    organizational_domain: Callable[[str], str] | None = None,
) -> list[Finding]:
    """Every record of ``mailbridge dns records``, looked up. Changes nothing."""
    with transaction(sessions) as session:
        records = records_for(session, directory.get_practice(session, slug), settings)
    return check_records(records, resolver, organizational_domain)


@dataclass(frozen=True)
class KeyCheck:
    findings: list[Finding]  # one per key whose record must be published
    changes: list[str]  # keys activated (and the ones they replaced)


def check_keys(sessions: sessionmaker[Session], slug: str, resolver: Resolver) -> KeyCheck:
    """Look up every pending, active and retiring key's record; record each key's DNS status; a
    pending key whose record is published becomes active (the newest per algorithm, RSA first, so
    that an ed25519 key finds its RSA companion active)."""
    with transaction(sessions) as session:
        practice = directory.get_practice(session, slug)
        wanted = [(row.id, key_info(row)) for row in keys.keys_of(session, practice, keys.PUBLISHED_STATES)]
    findings = [(row_id, check_record(dkim_record(info), resolver)) for row_id, info in wanted]
    changes: list[str] = []
    with transaction(sessions) as session:
        practice = directory.get_practice(session, slug)
        by_id = {row.id: row for row in keys.keys_of(session, practice)}
        for row_id, finding in findings:
            if row_id in by_id:
                keys.record_dns_status(by_id[row_id], finding.status)
        seen = [
            by_id[i] for i, f in findings if f.ok and i in by_id and by_id[i].state == DkimKeyState.pending
        ]
        for algorithm in (DkimAlgorithm.rsa, DkimAlgorithm.ed25519):
            newest = sorted((r for r in seen if r.algorithm == algorithm), key=lambda r: (r.created_at, r.id))
            if newest:
                try:
                    changes += keys.activate(session, practice, newest[-1].selector)
                except Conflict as exc:  # an ed25519 key whose RSA companion is not seen yet
                    changes.append(f"{newest[-1].selector} stays pending: {exc.detail}")
    return KeyCheck([f for _, f in findings], changes)
