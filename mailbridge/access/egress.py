"""Where mailbridge may connect on a tenant's behalf: public internet addresses only.

A practice chooses the host of its IMAP mailbox (and, later, the URL of a webhook). Left alone, it
could point us at what only we can reach: loopback services, the private network, a cloud metadata
endpoint (169.254.169.254, fd00:ec2::254) — server-side request forgery. So a host a tenant names
must resolve to global unicast addresses only, checked when it is configured and again on every
connection, and the connection goes to the address that was checked (a name re-resolved between
check and connect could answer differently: DNS rebinding). The operator may allow private
destinations (``imap_allow_private_hosts``), e.g. for a mail server on the same network.

Names resolve through the injected ``Resolver`` (the ``dns_nameservers`` setting), never through
a second look-up the check did not see; IP literals and ``localhost`` (RFC 6761 §6.3) need none.
Written here rather than taken from a library: the few SSRF helpers on PyPI wrap ``requests`` or
``urllib3`` adapters, while this check must serve an IMAP socket and a resolver we inject.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from mailbridge.inbound.dns import DnsTempError, Resolver

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

LOCALHOST_NAMES = ("localhost", "localhost.localdomain")
# Not global, whatever the Python version's registry says about each: shared address space (CGN,
# Alibaba's metadata 100.100.100.200), IETF protocol assignments (Oracle's metadata 192.0.0.192),
# benchmarking, multicast, reserved; IPv6 Teredo, local-use NAT64, ULA (AWS's fd00:ec2::254),
# link-local, site-local, multicast.
_REFUSED_NETWORKS = tuple(
    ipaddress.ip_network(n)
    for n in (
        "0.0.0.0/8",
        "100.64.0.0/10",
        "192.0.0.0/24",
        "198.18.0.0/15",
        "224.0.0.0/4",
        "240.0.0.0/4",
        "2001::/32",
        "64:ff9b:1::/48",
        "fc00::/7",
        "fe80::/10",
        "fec0::/10",
        "ff00::/8",
    )
)
_NAT64 = ipaddress.ip_network("64:ff9b::/96")  # RFC 6052: the IPv4 address is the last 32 bits


class EgressRefused(Exception):
    """A destination a tenant named may not be reached; ``code`` is the API's reason code."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


def _embedded_ipv4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip.sixtofour is not None:
        return ip.sixtofour
    if ip in _NAT64:
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return None


def why_not_public(address: str | IPAddress) -> str | None:
    """None for a global unicast address; otherwise a word saying what it is."""
    ip = ipaddress.ip_address(address) if isinstance(address, str) else address
    if isinstance(ip, ipaddress.IPv6Address):
        embedded = _embedded_ipv4(ip)
        if embedded is not None:  # ::ffff:127.0.0.1, 2002:7f00:1::, 64:ff9b::7f00:1 reach the IPv4 one
            return why_not_public(embedded)
    if ip.is_loopback:
        return "loopback"
    if ip.is_link_local:
        return "link-local"  # 169.254.169.254, the cloud metadata service, is here
    if ip.is_multicast:
        return "multicast"
    if ip.is_private:
        return "private"
    if ip.is_unspecified or ip.is_reserved or not ip.is_global:
        return "reserved"
    if any(ip in network for network in _REFUSED_NETWORKS):
        return "reserved"
    return None


def resolve(host: str, resolver: Resolver) -> list[str]:
    """Every address *host* names: itself for an IP literal, loopback for ``localhost``, else A and AAAA."""
    name = host.strip().strip("[]").rstrip(".").lower()
    try:
        return [str(ipaddress.ip_address(name))]
    except ValueError:
        pass
    if name in LOCALHOST_NAMES or name.endswith(".localhost"):
        return ["127.0.0.1", "::1"]
    try:
        return [*resolver.a(name), *resolver.aaaa(name)]
    except DnsTempError as exc:
        raise EgressRefused("host_unresolvable", f"{name}: DNS lookup failed ({exc})") from None


@dataclass(frozen=True)
class EgressPolicy:
    """The operator's rule for one kind of destination (IMAP hosts; webhooks later)."""

    resolver: Resolver
    allow_private: bool = False
    setting: str = "imap_allow_private_hosts"  # named in refusals, so the operator knows the knob

    def addresses(self, host: str) -> list[str] | None:
        """The addresses to connect to, all public; None when the operator allows any destination
        (connect by name then). Raises ``EgressRefused`` with ``host_not_public`` or
        ``host_unresolvable``. Blocking (DNS): call it from a thread."""
        if self.allow_private:
            return None
        addresses = resolve(host, self.resolver)
        if not addresses:
            raise EgressRefused("host_unresolvable", f"{host} does not resolve")
        for address in addresses:
            why = why_not_public(address)
            if why is not None:
                raise EgressRefused(
                    "host_not_public",
                    f"{host} is or resolves to a {why} address ({address}); only public hosts are "
                    f"allowed unless the operator sets {self.setting}",
                )
        return addresses
