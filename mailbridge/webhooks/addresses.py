"""Where a webhook may go: public addresses only, checked when the URL is set and again at every delivery.

A practice configures the URL, so the URL is hostile input: ``http://169.254.169.254/`` (a cloud's
metadata service), ``http://127.0.0.1:5432/``, a name that resolves to ``10.0.0.5``, or one that
resolves to a public address when checked and to a private one a second later (DNS rebinding) would
otherwise make mailbridge a door into the network behind it. So every name is resolved through the
configured resolver (never the operating system's behind our back), *every* address it has must be
public, and the connection goes to the address that was checked (``Target.address``), with the
host name kept for ``Host`` and TLS (SNI and certificate checks). Redirects are never followed.

``MAILBRIDGE_WEBHOOK_ALLOW_PRIVATE=true`` lifts the address check (a receiver on the operator's own
network; the tests' loopback receiver).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from urllib.parse import urlsplit

from mailbridge.domain.errors import Invalid
from mailbridge.inbound.dns import DnsTempError, Resolver

Address = ipaddress.IPv4Address | ipaddress.IPv6Address

# NAT64 (RFC 6052) embeds an IPv4 address a gateway would connect to: judged by that address.
_NAT64 = ipaddress.ip_network("64:ff9b::/96")


class Refused(Exception):
    """The URL may not be used now (a private address, no address): a failed attempt, or 422 at PUT."""

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(detail)
        self.code = code
        self.detail = detail


@dataclass(frozen=True)
class Parsed:
    scheme: str  # http | https
    host: str  # lower-case name, or the address literal without brackets
    port: int
    path: str  # path and query, as given


@dataclass(frozen=True)
class Target:
    """A checked destination: connect to ``address``, say ``host`` in Host and TLS."""

    parsed: Parsed
    address: str

    def connect_url(self) -> str:
        ip = ipaddress.ip_address(self.address)
        host = f"[{ip}]" if ip.version == 6 else str(ip)
        return f"{self.parsed.scheme}://{host}:{self.parsed.port}{self.parsed.path}"

    @property
    def host_header(self) -> str:
        default = 443 if self.parsed.scheme == "https" else 80
        host = f"[{self.parsed.host}]" if ":" in self.parsed.host else self.parsed.host
        return host if self.parsed.port == default else f"{host}:{self.parsed.port}"


def not_public(address: Address) -> bool:
    """Private, loopback, link-local, unspecified, reserved, shared (CGNAT), multicast, documentation:
    anything but the public internet. IPv4-mapped and NAT64 IPv6 addresses are judged as their IPv4."""
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return not_public(address.ipv4_mapped)
        if address in _NAT64:
            return not_public(ipaddress.IPv4Address(int(address) & 0xFFFFFFFF))
    return not address.is_global or address.is_multicast


def parse(url: str, *, allow_http: bool) -> Parsed:
    """The URL's parts, or ``Invalid`` (422) naming what is wrong."""
    if len(url) > 2048 or any(ch.isspace() or ord(ch) < 32 for ch in url):
        raise Invalid("url_invalid", "url: at most 2048 characters, no spaces or control characters", "url")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise Invalid("url_invalid", "url: not a URL", "url") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise Invalid("url_invalid", "url: an http(s):// URL with a host is required", "url")
    if parts.username is not None or parts.password is not None:
        raise Invalid("url_invalid", "url: no user or password in the URL (deliveries are signed)", "url")
    if parts.fragment:
        raise Invalid("url_invalid", "url: no #fragment", "url")
    if parts.scheme == "http" and not allow_http:
        raise Invalid(
            "https_required",
            "url: https:// is required (payloads may carry messages); the operator setting "
            "MAILBRIDGE_WEBHOOK_ALLOW_HTTP allows plain http",
            "url",
        )
    host = parts.hostname.lower().rstrip(".")
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    return Parsed(parts.scheme, host, port or (443 if parts.scheme == "https" else 80), path)


def resolve(parsed: Parsed, resolver: Resolver, *, allow_private: bool) -> Target:
    """Every address of the host, each one checked; the first is the one to connect to.

    Raises ``Refused`` (``url_private_address``, ``url_unresolvable``, ``dns_error``)."""
    try:
        literal: Address | None = ipaddress.ip_address(parsed.host)
    except ValueError:
        literal = None
    if literal is not None:
        addresses: list[Address] = [literal]
    else:
        try:
            found = resolver.a(parsed.host) + resolver.aaaa(parsed.host)
        except DnsTempError as exc:
            raise Refused("dns_error", f"{parsed.host}: {exc}") from None
        addresses = []
        for text in found:
            try:
                addresses.append(ipaddress.ip_address(text))
            except ValueError:
                continue
        if not addresses:
            raise Refused("url_unresolvable", f"{parsed.host} has no address")
    if not allow_private:
        bad = [a for a in addresses if not_public(a)]
        if bad:
            raise Refused(
                "url_private_address",
                f"{parsed.host} resolves to {bad[0]}, which is not a public address (private, loopback, "
                "link-local or reserved); the operator setting MAILBRIDGE_WEBHOOK_ALLOW_PRIVATE allows it",
            )
    return Target(parsed, str(addresses[0]))


def check_url(url: str, resolver: Resolver, *, allow_private: bool, allow_http: bool) -> Parsed:
    """At PUT: the URL parses and every address of its host may be used now (422 otherwise)."""
    parsed = parse(url, allow_http=allow_http)
    try:
        resolve(parsed, resolver, allow_private=allow_private)
    except Refused as exc:
        raise Invalid(exc.code, f"url: {exc.detail}", "url") from None
    return parsed
