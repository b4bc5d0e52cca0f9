"""The DNS records a practice must publish, computed from its addresses, its DKIM keys and two settings.

Pure functions over plain values: ``mailbridge dns records`` prints them, ``dns check`` compares
them with DNS, and a console can show them the same way.

For a practice whose notifications come From ``notify@acme.example`` and whose replies go to
``reply.acme.example``:

* **MX** of the reply domain: replies and bounces (the envelope sender is
  ``bounce+…@reply.acme.example``) reach mailbridge.
* **SPF** of the *envelope* domain, the reply domain: that is where receivers evaluate SPF
  (RFC 7208 section 2.4, the MAIL FROM identity), and with DMARC's relaxed alignment it aligns with
  the From domain when both share an organizational domain (RFC 7489 section 3.1.2). Also SPF of
  the From domain, which the practice's other mail uses; both authorise the smarthost
  (``include:<spf_include>``).
* **DKIM** of every key whose record must be there: the pending key (so that it can be seen and
  activated), the active ones, and those retiring (mail they signed is still being verified).
* **DMARC** of the From domain (RFC 7489 section 6.1), at ``_dmarc.<From domain>``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

DMARC_VALUE = "v=DMARC1; p=quarantine; adkim=r; aspf=r"
SPF_PLACEHOLDER = "<spf_include: the domain of your smarthost's SPF record>"
MX_PLACEHOLDER = "<mx_host: the host that receives mail for mailbridge>"

Purpose = Literal["mx", "spf", "dkim", "dmarc"]


@dataclass(frozen=True)
class DkimKeyInfo:
    """What the records need to know of a key (``outbound.keys`` rows, or anything alike)."""

    selector: str
    domain: str
    algorithm: str  # rsa | ed25519
    state: str  # pending | active | retiring
    public_txt: str  # "v=DKIM1; k=rsa; p=..."


@dataclass(frozen=True)
class Record:
    """One record to publish. ``value`` is what a resolver returns (TXT strings joined)."""

    purpose: Purpose
    name: str  # without the root dot
    rtype: Literal["MX", "TXT"]
    value: str
    title: str  # short: "SPF of the envelope domain"
    note: str  # why, for the zone file's comment
    placeholder: bool = False  # the value holds a <placeholder> for a setting that is not set
    selector: str | None = None  # DKIM records: the key's selector

    @property
    def expected_host(self) -> str | None:
        """MX: the exchange host the record must point at (None while it is a placeholder)."""
        if self.rtype != "MX" or self.placeholder:
            return None
        return self.value.split()[-1].rstrip(".").lower()

    @property
    def expected_include(self) -> str | None:
        """SPF: the domain that must be included (None while it is a placeholder)."""
        if self.purpose != "spf" or self.placeholder:
            return None
        return self.value.split("include:", 1)[1].split()[0]

    def zone_line(self) -> str:
        """The record as a zone-file line; TXT values split into strings of at most 255 characters."""
        if self.rtype == "MX":
            return f"{self.name}. IN MX {self.value}"
        chunks = [self.value[i : i + 255] for i in range(0, len(self.value), 255)] or [""]
        return f"{self.name}. IN TXT " + " ".join(f'"{chunk}"' for chunk in chunks)


def domain_of(address: str) -> str:
    return address.rpartition("@")[2].lower().rstrip(".")


def spf_value(spf_include: str) -> str:
    return f"v=spf1 include:{spf_include or SPF_PLACEHOLDER} -all"


def dkim_record(key: DkimKeyInfo) -> Record:
    return Record(
        "dkim",
        f"{key.selector}._domainkey.{key.domain}",
        "TXT",
        key.public_txt,
        f"DKIM key {key.selector} ({key.algorithm}, {key.state})",
        f"DKIM key {key.selector} ({key.algorithm}, {key.state}): its public half",
        selector=key.selector,
    )


def expected_records(
    *,
    reply_domain: str,
    notify_from: str,
    keys: Sequence[DkimKeyInfo],
    spf_include: str = "",
    mx_host: str = "",
) -> list[Record]:
    """Every record the practice must publish, in the order an operator would add them."""
    reply = reply_domain.lower().rstrip(".")
    from_domain = domain_of(notify_from)
    records = [
        Record(
            "mx",
            reply,
            "MX",
            f"10 {mx_host or MX_PLACEHOLDER}.",
            "MX of the reply domain",
            "MX of the reply domain: replies and bounces (Return-Path bounce+…@"
            + reply
            + ") reach mailbridge",
            placeholder=not mx_host,
        )
    ]
    spf_note = "authorises the smarthost; merge into an existing SPF record (one v=spf1 record per name)"
    spf_names = (
        {reply: "SPF of the envelope and From domain"}
        if reply == from_domain
        else {
            reply: "SPF of the envelope domain",
            from_domain: "SPF of the From domain",
        }
    )
    for name, title in spf_names.items():
        records.append(
            Record("spf", name, "TXT", spf_value(spf_include), title, f"{title}: {spf_note}", not spf_include)
        )
    records += [dkim_record(key) for key in keys]
    records.append(
        Record(
            "dmarc",
            f"_dmarc.{from_domain}",
            "TXT",
            DMARC_VALUE,
            "DMARC of the From domain",
            "DMARC of the From domain (add rua=mailto:… to receive reports)",
        )
    )
    return records
