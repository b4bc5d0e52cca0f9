"""Whether a practice's records are published: each one looked up through the configured resolver.

Every record gets one status: ``published`` (present and what we expect), ``missing`` (nothing
there), ``different`` (something there, not what we expect, with the reason), or ``error`` (the
lookup failed: timeout, SERVFAIL; try again). The comparison functions are pure; only
:func:`check_record` asks DNS, through the same ``Resolver`` the inbound authentication uses
(``dns_nameservers``), so what is checked is what this node sees.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal

from mailbridge.dnsrecords.records import Record
from mailbridge.inbound.dns import DnsTempError, Resolver

Status = Literal["published", "missing", "different", "error"]


@dataclass(frozen=True)
class Finding:
    record: Record
    status: Status
    detail: str = ""
    found: list[str] = field(default_factory=list)  # what DNS returned (TXT strings joined, MX hosts)

    @property
    def ok(self) -> bool:
        return self.status == "published"


def tags(value: str) -> dict[str, str]:
    """A tag=value list (RFC 6376 section 3.2, also DMARC's): names lower-cased, whitespace removed
    from values (a long p= split by the zone editor keeps its spaces inside the string)."""
    found: dict[str, str] = {}
    for part in value.split(";"):
        name, sep, val = part.partition("=")
        if sep:
            found.setdefault(name.strip().lower(), "".join(val.split()))
    return found


def compare_dkim(expected: str, found: Sequence[str]) -> tuple[Status, str]:
    """The key record must be the only TXT record at its name and carry our key (k= and p=)."""
    if not found:
        return "missing", ""
    want = tags(expected)
    matching = [v for v in found if _same_key(want, tags(v))]
    if not matching:
        return "different", "the published key is not this key (p= differs): publish the value shown"
    if len(found) > 1:
        return (
            "different",
            f"{len(found)} TXT records at this name: verifiers may read any one (RFC 6376 3.6.2.2)",
        )
    return "published", ""


def _same_key(want: dict[str, str], have: dict[str, str]) -> bool:
    return (
        have.get("v", "DKIM1") == "DKIM1"
        and have.get("k", "rsa").lower() == want.get("k", "rsa").lower()
        and have.get("p", "") == want.get("p")
    )


def compare_spf(include: str | None, found: Sequence[str]) -> tuple[Status, str]:
    """One SPF record at the name (two are a permerror, RFC 7208 section 4.5) that includes the smarthost."""
    spf = [v for v in found if v.lower() == "v=spf1" or v.lower().startswith("v=spf1 ")]
    if not spf:
        return "missing", ""
    if len(spf) > 1:
        return (
            "different",
            f"{len(spf)} SPF records: receivers treat that as a permanent error (RFC 7208 4.5)",
        )
    if include is None:
        return "published", "include not compared: spf_include is not set"
    terms = [t.lower().lstrip("+") for t in spf[0].split()[1:]]
    if f"include:{include.lower()}" not in terms:
        return "different", f"does not include:{include}: mail through the smarthost fails SPF"
    return "published", ""


def compare_mx(host: str | None, found: Sequence[str]) -> tuple[Status, str]:
    if not found:
        return "missing", ""
    if host is None:
        return "published", "exchange not compared: mx_host is not set"
    if host.lower() not in [h.lower() for h in found]:
        return "different", f"the MX points elsewhere, not at {host}"
    return "published", ""


def compare_dmarc(found: Sequence[str]) -> tuple[Status, str]:
    dmarc = [v for v in found if v.replace(" ", "").upper().startswith("V=DMARC1")]
    if not dmarc:
        return "missing", ""
    if len(dmarc) > 1:
        return "different", f"{len(dmarc)} DMARC records: receivers ignore them all (RFC 7489 6.6.3)"
    policy = tags(dmarc[0]).get("p", "").lower()
    if policy not in ("none", "quarantine", "reject"):
        return "different", "no valid p= tag: receivers ignore the record"
    if policy == "none":
        return "published", "p=none: receivers report but do not act on forged mail"
    return "published", ""


def check_record(
    record: Record,
    resolver: Resolver,
    organizational_domain: Callable[[str], str] | None = None,
) -> Finding:
    """Look *record* up and compare. DMARC falls back to the organizational domain as receivers do
    (RFC 7489 section 6.6.3) when *organizational_domain* is given."""
    try:
        if record.rtype == "MX":
            hosts = resolver.mx(record.name)
            status, detail = compare_mx(record.expected_host, hosts)
            return Finding(record, status, detail, hosts)
        values = [v.decode("utf-8", "replace") for v in resolver.txt(record.name)]
        if record.purpose == "dkim":
            status, detail = compare_dkim(record.value, values)
        elif record.purpose == "spf":
            status, detail = compare_spf(record.expected_include, values)
        else:
            status, detail = compare_dmarc(values)
            if status == "missing" and organizational_domain is not None:
                domain = record.name.removeprefix("_dmarc.")
                org = organizational_domain(domain)
                if org != domain:
                    values = [v.decode("utf-8", "replace") for v in resolver.txt(f"_dmarc.{org}")]
                    status, detail = compare_dmarc(values)
                    if status != "missing":
                        detail = f"found at the organizational domain _dmarc.{org}" + (
                            f"; {detail}" if detail else ""
                        )
        return Finding(record, status, detail, values)
    except DnsTempError as exc:
        return Finding(record, "error", str(exc))


def check_records(
    records: Sequence[Record],
    resolver: Resolver,
    organizational_domain: Callable[[str], str] | None = None,
) -> list[Finding]:
    return [check_record(r, resolver, organizational_domain) for r in records]
