"""``mailbridge dkim …`` and ``mailbridge dns …``: the operator's commands; they only print.

Exit codes: 0 done (and, for the checks, everything published); 1 a check found a record missing,
different or unreadable; 2 a usage error (unknown practice, selector in use, …), one line on stderr.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Sequence
from typing import Any

from mailbridge.dnsrecords.check import Finding
from mailbridge.dnsrecords.practice import check_keys, check_practice, key_info, records_for
from mailbridge.dnsrecords.records import dkim_record
from mailbridge.domain import directory
from mailbridge.domain.db import transaction
from mailbridge.domain.errors import DomainError
from mailbridge.outbound import keys


def _fail(exc: DomainError) -> int:
    print(f"mailbridge: {exc.code}: {exc.detail}", file=sys.stderr)
    return 2


def _guarded(run: Callable[[], int]) -> int:
    try:
        return run()
    except DomainError as exc:
        return _fail(exc)


def dkim_genkey(services: Any, slug: str, selector: str | None, ed25519: bool, force: bool) -> int:
    def run() -> int:
        with transaction(services.sessions) as session:
            practice = directory.get_practice(session, slug)
            rows = keys.generate(
                session, services.keyring, practice, selector=selector, ed25519=ed25519, force=force
            )
            lines = [dkim_record(key_info(row)).zone_line() for row in rows]
            names = " ".join(row.selector for row in rows)
        print(
            f"Publish these DNS records. Signing with the new key{'s' if len(rows) > 1 else ''} ({names}) "
            f"starts once `mailbridge dkim check --practice {slug}` sees them published "
            f"(or after `mailbridge dkim activate --practice {slug} SELECTOR`):"
        )
        for line in lines:
            print(line)
        return 0

    return _guarded(run)


def dkim_list(services: Any, slug: str, as_json: bool) -> int:
    def run() -> int:
        with transaction(services.sessions) as session:
            practice = directory.get_practice(session, slug)
            rows = keys.keys_of(session, practice)
            status = services.dkim_keys.status(session, practice)
            items = [
                {
                    "selector": row.selector,
                    "algorithm": row.algorithm.value,
                    "state": row.state.value,
                    "domain": row.domain,
                    "dns_status": row.dns_status,
                    "created_at": _iso(row.created_at),
                    "activated_at": _iso(row.activated_at),
                    "retired_at": _iso(row.retired_at),
                    "last_checked_at": _iso(row.last_checked_at),
                }
                for row in rows
            ]
        if as_json:
            print(json.dumps({"signing": status.signing, "detail": status.detail, "keys": items}, indent=2))
            return 0
        print(f"{slug}: {status.signing}" + (f" ({status.detail})" if status.detail else ""))
        for item in items:
            print(
                f"  {item['selector']:<20} {item['algorithm']:<8} {item['state']:<9} "
                f"dns={item['dns_status'] or 'unchecked'} created {item['created_at']}"
            )
        return 0

    return _guarded(run)


def dkim_activate(services: Any, slug: str, selector: str) -> int:
    def run() -> int:
        with transaction(services.sessions) as session:
            changes = keys.activate(session, directory.get_practice(session, slug), selector)
        print("\n".join(changes) if changes else f"{selector} already signs {slug}'s mail")
        return 0

    return _guarded(run)


def dkim_retire(services: Any, slug: str, selector: str, force: bool) -> int:
    def run() -> int:
        with transaction(services.sessions) as session:
            changes = keys.retire(session, directory.get_practice(session, slug), selector, force=force)
        print("\n".join(changes) if changes else f"{selector} was already retired")
        return 0

    return _guarded(run)


def dkim_check(services: Any, slug: str) -> int:
    def run() -> int:
        result = check_keys(services.sessions, slug, services.resolver)
        _print_findings(result.findings)
        for change in result.changes:
            print(change)
        return 0 if all(f.ok for f in result.findings) else 1

    return _guarded(run)


def dns_records(services: Any, slug: str, as_json: bool) -> int:
    def run() -> int:
        with transaction(services.sessions) as session:
            practice = directory.get_practice(session, slug)
            records = records_for(session, practice, services.settings)
            header = (
                f"; DNS records for practice {slug}: notifications From {practice.notify_from}, "
                f"replies and bounces at {practice.reply_domain}"
            )
        if as_json:
            print(json.dumps([_record_json(r) for r in records], indent=2))
            return 0
        print(header)
        for record in records:
            print(f"; {record.note}")
            print(record.zone_line())
        for setting in sorted({_setting_of(r) for r in records if r.placeholder}):
            print(
                f"; {setting} is not set: replace <{setting}: …> above and set {setting} "
                f"(MAILBRIDGE_{setting.upper()}) so that `dns check` compares it"
            )
        return 0

    return _guarded(run)


def dns_check(services: Any, slug: str, as_json: bool) -> int:
    def run() -> int:
        from mailbridge.inbound.authenticate import organizational_domain

        findings = check_practice(
            services.sessions, slug, services.settings, services.resolver, organizational_domain
        )
        if as_json:
            print(
                json.dumps(
                    [
                        _record_json(f.record) | {"status": f.status, "detail": f.detail, "found": f.found}
                        for f in findings
                    ],
                    indent=2,
                )
            )
        else:
            _print_findings(findings)
        return 0 if all(f.ok for f in findings) else 1

    return _guarded(run)


def _print_findings(findings: Sequence[Finding]) -> None:
    for finding in findings:
        record = finding.record
        line = f"{finding.status:<10} {record.rtype:<3} {record.name}  {record.title}"
        if finding.detail:
            line += f": {finding.detail}"
        print(line)
        if not finding.ok and finding.status != "error":
            print(f"           expected: {record.zone_line()}")
            for value in finding.found:
                print(f"           found:    {value}")


def _record_json(record: Any) -> dict[str, Any]:
    return {
        "purpose": record.purpose,
        "name": record.name,
        "type": record.rtype,
        "value": record.value,
        "title": record.title,
        "note": record.note,
        "placeholder": record.placeholder,
        "selector": record.selector,
        "zone_line": record.zone_line(),
    }


def _setting_of(record: Any) -> str:
    return "mx_host" if record.rtype == "MX" else "spf_include"


def _iso(value: Any) -> str | None:
    return value.isoformat(timespec="seconds") if value is not None else None
