"""The DNS records a practice must publish, each checked live through the configured resolver.

One seam, :func:`practice_records`: the DKIM keys and ``mailbridge dns records|check`` are being
reworked (keys in the database, pending/active/retired); when that lands, this function is the one
place to point at it. Lookups go through ``services.resolver`` only (tests: a static table).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path

from mailbridge.domain.models import Practice, utcnow
from mailbridge.domain.practice_settings import PracticeSettings
from mailbridge.inbound.dns import DnsTempError, Resolver
from mailbridge.outbound.sign import public_txt_value


@dataclass(frozen=True)
class Record:
    purpose: str  # MX | SPF | DKIM | DMARC
    rtype: str  # MX | TXT
    name: str
    value: str  # what to publish
    status: str = "unchecked"  # published | missing | different | present | error | unchecked
    found: tuple[str, ...] = ()
    exact: bool = True  # False: any value of this kind will do (SPF, DMARC: the practice chooses)


@dataclass(frozen=True)
class KeyInfo:
    selector: str
    algorithm: str
    created: datetime | None
    age_days: int | None


@dataclass
class DnsReport:
    records: list[Record]
    keys: list[KeyInfo]
    checked_at: datetime | None = None
    problems: int = 0
    notes: list[str] = field(default_factory=list)


def _domain(practice: Practice) -> str:
    return practice.notify_from.rpartition("@")[2].lower()


def _key_files(data_dir: Path, practice: Practice, selector: str) -> list[tuple[str, str, Path]]:
    folder = data_dir / "dkim" / practice.slug
    pairs = [
        (selector, "rsa", folder / f"{selector}.rsa.pem"),
        (selector + "e", "ed25519", folder / f"{selector}.ed25519.pem"),
    ]
    return [p for p in pairs if p[2].exists()]


def expected(practice: Practice, smtp_hostname: str, data_dir: Path) -> tuple[list[Record], list[KeyInfo]]:
    """What to publish for *practice*: MX of the reply domain, SPF, DKIM per key, DMARC."""
    domain = _domain(practice)
    settings = PracticeSettings.model_validate(practice.settings or {})
    records = [
        Record("MX", "MX", practice.reply_domain, f"10 {smtp_hostname.rstrip('.')}."),
        Record("SPF", "TXT", domain, "v=spf1 include:<your smarthost> -all", exact=False),
    ]
    keys: list[KeyInfo] = []
    if settings.dkim_selector:
        for selector, algorithm, path in _key_files(data_dir, practice, settings.dkim_selector):
            value = public_txt_value(path.read_bytes()).decode("ascii")
            records.append(Record("DKIM", "TXT", f"{selector}._domainkey.{domain}", value))
            created = datetime.fromtimestamp(path.stat().st_mtime, tz=UTC)
            keys.append(KeyInfo(selector, algorithm, created, (utcnow() - created).days))
    records.append(
        Record(
            "DMARC",
            "TXT",
            f"_dmarc.{domain}",
            f"v=DMARC1; p=quarantine; rua=mailto:dmarc@{domain}",
            exact=False,
        )
    )
    return records, keys


def _tags(value: str) -> dict[str, str]:
    tags = {}
    for part in value.split(";"):
        key, _, val = part.strip().partition("=")
        tags[key.strip().lower()] = "".join(val.split())
    return tags


def check(record: Record, resolver: Resolver) -> Record:
    """Published (as expected), missing, different, present (any valid value) or error (DNS trouble)."""
    try:
        if record.rtype == "MX":
            hosts = [h.rstrip(".").lower() for h in resolver.mx(record.name)]
            wanted = record.value.split()[-1].rstrip(".").lower()
            status = "missing" if not hosts else ("published" if wanted in hosts else "different")
            return replace(record, status=status, found=tuple(hosts))
        texts = [t.decode("utf-8", "replace") for t in resolver.txt(record.name)]
    except DnsTempError:
        return replace(record, status="error")
    if record.purpose == "DKIM":
        keys = [t for t in texts if "p=" in t]
        if not keys:
            return replace(record, status="missing", found=tuple(texts))
        key = _tags(record.value).get("p", "")
        same = any(_tags(t).get("p") == key for t in keys)
        return replace(record, status="published" if same else "different", found=tuple(keys))
    prefix = "v=spf1" if record.purpose == "SPF" else "v=dmarc1"
    matching = [t for t in texts if t.lower().startswith(prefix)]
    return replace(record, status="present" if matching else "missing", found=tuple(matching))


# The last live check per practice, for the overview (a check costs DNS round trips: not on every view).
_LAST: dict[int, DnsReport] = {}
_LOCK = threading.Lock()


def practice_records(
    practice: Practice, resolver: Resolver, smtp_hostname: str, data_dir: Path, *, live: bool = True
) -> DnsReport:
    """The seam: every record to publish for *practice* and, with *live*, its status now."""
    records, keys = expected(practice, smtp_hostname, data_dir)
    if not live:
        with _LOCK:
            last = _LAST.get(practice.id)
        return last if last is not None else DnsReport(records, keys)
    checked = [check(r, resolver) for r in records]
    report = DnsReport(
        checked,
        keys,
        checked_at=utcnow(),
        problems=sum(1 for r in checked if r.status in ("missing", "different", "error")),
    )
    with _LOCK:
        _LAST[practice.id] = report
    return report
