"""XFORWARD: the original client's address and HELO name, told by a trusted MTA in front (Postfix).

Behind Postfix's before-queue proxy (``smtpd_proxy_filter``) every connection comes from Postfix, so
SPF (RFC 7208) would be checked against Postfix's own address. Postfix tells the proxy who the real
client was with its XFORWARD extension (Postfix's XFORWARD_README; no RFC): one or more
``XFORWARD NAME=… ADDR=… HELO=… PROTO=… SOURCE=…`` commands after EHLO and before MAIL, values
xtext-encoded (RFC 3461 §4). aiosmtpd has no XFORWARD, and the grammar is six attributes, so it is
parsed here by hand: a pure function over one command line, strict about what it accepts.

Only peers listed in ``smtp_xforward_hosts`` are offered XFORWARD; anyone else gets ``550 5.7.0``
(the command changes what SPF sees: it must never come from the Internet). The attributes hold
for one mail transaction and are forgotten at its end (RSET or the final dot).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import Final

ATTRIBUTES: Final = ("NAME", "ADDR", "PORT", "PROTO", "HELO", "SOURCE")
UNAVAILABLE: Final = "[UNAVAILABLE]"
TEMPUNAVAIL: Final = "[TEMPUNAVAIL]"  # Postfix: the client name's DNS lookup failed for now
MAX_VALUE: Final = 255  # XFORWARD_README, note 1
MAX_ATTRIBUTES: Final = 12  # one command; Postfix sends at most six
_XTEXT_HEX = re.compile(r"\+([0-9A-F]{2})")


class XforwardSyntaxError(ValueError):
    """The command is malformed: the answer is 501 and nothing changes."""


@dataclass(frozen=True, slots=True)
class Forwarded:
    """What the MTA in front says about its client; ``None`` stands for ``[UNAVAILABLE]``."""

    addr: str | None = None
    helo: str | None = None
    name: str | None = None
    port: int | None = None
    proto: str | None = None
    source: str | None = None


def trusted(peer_ip: str | None, networks: Iterable[ipaddress.IPv4Network | ipaddress.IPv6Network]) -> bool:
    """Is the connecting peer one of the MTAs allowed to send XFORWARD?"""
    if not peer_ip:
        return False
    try:
        address = ipaddress.ip_address(peer_ip)
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return any(address in network for network in networks)


def parse_networks(values: Iterable[str]) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    """``["127.0.0.1", "10.0.0.0/24"]`` → networks (a bare address is a /32 or /128)."""
    return tuple(ipaddress.ip_network(value.strip(), strict=False) for value in values)


def xtext_decode(value: str) -> str:
    """RFC 3461 §4 xtext: ``+XX`` is the byte XX (upper-case hex); every other character stands for itself."""
    if "+" not in value:
        return value
    if re.search(r"\+(?![0-9A-F]{2})", value):
        raise XforwardSyntaxError("bad xtext escape")
    return _XTEXT_HEX.sub(lambda m: chr(int(m.group(1), 16)), value)


def apply(current: Forwarded | None, arg: str) -> Forwarded:
    """The attributes after one ``XFORWARD`` command line (*arg* is what follows the verb).

    The first command of a transaction starts from all-unavailable (XFORWARD_README: "Upon receipt of
    an initial XFORWARD command, the SMTP server initializes all XFORWARD attributes to
    [UNAVAILABLE]"); later ones update only the attributes they name.
    """
    items = arg.split()
    if not items or len(items) > MAX_ATTRIBUTES:
        raise XforwardSyntaxError("expected 1 to 12 attribute=value pairs")
    result = current or Forwarded()
    for item in items:
        key, sep, raw = item.partition("=")
        key = key.upper()
        if not sep or key not in ATTRIBUTES:
            raise XforwardSyntaxError(f"unknown attribute {key[:20]!r}")
        result = _set(result, key, xtext_decode(raw))
    return result


def _usable(value: str) -> bool:
    """Printable ASCII without spaces, at most 255 characters (XFORWARD_README, note 1)."""
    return (
        bool(value)
        and len(value) <= MAX_VALUE
        and value.isascii()
        and value.isprintable()
        and " " not in value
    )


def _set(current: Forwarded, key: str, value: str) -> Forwarded:
    missing = value.upper() in (UNAVAILABLE, TEMPUNAVAIL) or not _usable(value)
    if key == "ADDR":
        return replace(current, addr=None if missing else _address(value))
    if key == "PORT":
        if not missing and not (value.isdigit() and 0 < int(value) < 65536):
            raise XforwardSyntaxError("bad PORT")
        return replace(current, port=None if missing else int(value))
    if key == "SOURCE":
        if not missing and value.upper() not in ("LOCAL", "REMOTE"):
            raise XforwardSyntaxError("bad SOURCE")
        return replace(current, source=None if missing else value.upper())
    # A name we cannot use (a UTF-8 or over-long HELO a client sent Postfix) counts as unavailable
    # rather than refused: a 501 here would make Postfix answer 451 to that client for ever.
    if key == "PROTO":
        return replace(current, proto=None if missing or len(value) > 64 else value)
    if key == "HELO":
        return replace(current, helo=None if missing else value)
    return replace(current, name=None if missing else value)


def _address(value: str) -> str:
    """``192.0.2.1`` or ``IPV6:2001:db8::1`` (no brackets) → the address in canonical text."""
    text = value[5:] if value[:5].upper() == "IPV6:" else value
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        raise XforwardSyntaxError("bad ADDR") from None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return str(address.ipv4_mapped)
    return str(address)
