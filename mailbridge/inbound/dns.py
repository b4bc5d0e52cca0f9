"""DNS lookups for sender authentication, behind a small injectable ``Resolver``."""

from __future__ import annotations

import ipaddress
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from typing import Protocol

import dns.exception
import dns.name
import dns.nameserver
import dns.rdatatype
import dns.resolver

__all__ = [
    "DeadlineResolver",
    "DnsTempError",
    "NameserverResolver",
    "Resolver",
    "StaticResolver",
    "dkimpy_dnsfunc",
    "normalise_name",
]


class DnsTempError(Exception):
    """A lookup that may succeed later (timeout, SERVFAIL): answer 4xx, never 5xx (RFC 7208 §2.6.6)."""


class Resolver(Protocol):
    """What authentication needs from DNS.

    Every method returns ``[]`` for NXDOMAIN and NODATA (RFC 7208 "void lookup") and raises
    :class:`DnsTempError` on a timeout or SERVFAIL, so a missing record and an unreachable server
    can never be confused.
    """

    def txt(self, name: str) -> list[bytes]:
        """TXT records of ``name``; the character-strings of each record are concatenated (RFC 7208 §3.3)."""
        ...

    def a(self, name: str) -> list[str]:
        """IPv4 addresses of ``name`` (for SPF ``a``/``mx``)."""
        ...

    def aaaa(self, name: str) -> list[str]:
        """IPv6 addresses of ``name`` (for SPF ``a``/``mx``)."""
        ...

    def mx(self, name: str) -> list[str]:
        """Exchange host names of ``name``, most preferred first."""
        ...


def normalise_name(name: str | bytes) -> str:
    """Lower-case, drop the root dot: the key under which names are compared and stored."""
    if isinstance(name, bytes):
        name = name.decode("ascii", "replace")
    return name.strip().rstrip(".").lower()


class StaticResolver:
    """A resolver answering from dictionaries, for tests and benchmarks.

    ``txt`` maps a name to its TXT records (``bytes`` or ``str``); ``a``/``aaaa``/``mx`` likewise.
    Names in ``timeouts`` raise :class:`DnsTempError` for every record type. Every query is appended
    to :attr:`queries` as ``(rtype, name)`` so tests can assert what was (not) looked up.
    """

    def __init__(
        self,
        txt: Mapping[str, Sequence[bytes | str]] | None = None,
        *,
        a: Mapping[str, Sequence[str]] | None = None,
        aaaa: Mapping[str, Sequence[str]] | None = None,
        mx: Mapping[str, Sequence[str]] | None = None,
        timeouts: Collection[str] = (),
    ) -> None:
        self._txt = {
            normalise_name(k): [v.encode() if isinstance(v, str) else bytes(v) for v in vs]
            for k, vs in (txt or {}).items()
        }
        self._a = {normalise_name(k): list(v) for k, v in (a or {}).items()}
        self._aaaa = {normalise_name(k): list(v) for k, v in (aaaa or {}).items()}
        self._mx = {normalise_name(k): [normalise_name(h) for h in v] for k, v in (mx or {}).items()}
        self._timeouts = frozenset(normalise_name(n) for n in timeouts)
        self.queries: list[tuple[str, str]] = []

    def _lookup(self, rtype: str, name: str) -> str:
        key = normalise_name(name)
        self.queries.append((rtype, key))
        if key in self._timeouts:
            raise DnsTempError(f"timeout resolving {key} {rtype}")
        return key

    def txt(self, name: str) -> list[bytes]:
        key = self._lookup("TXT", name)
        return list(self._txt.get(key, ()))

    def a(self, name: str) -> list[str]:
        key = self._lookup("A", name)
        return list(self._a.get(key, ()))

    def aaaa(self, name: str) -> list[str]:
        key = self._lookup("AAAA", name)
        return list(self._aaaa.get(key, ()))

    def mx(self, name: str) -> list[str]:
        key = self._lookup("MX", name)
        return list(self._mx.get(key, ()))


class DeadlineResolver:
    """A resolver that stops at a deadline: past it every look-up fails as a timeout would.

    One message's authentication makes up to ~15 look-ups (3 DKIM keys, SPF's 10, DMARC's 2), each
    bounded by the resolver's own timeout: a slow DNS could hold it for over a minute. This bounds
    the whole (finding 9); the result is temperror, answered 451 4.7.0, never a refusal.
    """

    def __init__(
        self, resolver: Resolver, deadline: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._resolver = resolver
        self._deadline = deadline
        self._clock = clock

    def _check(self, rtype: str, name: str) -> None:
        if self._clock() >= self._deadline:
            raise DnsTempError(f"DNS budget spent before {rtype} {name}")

    def txt(self, name: str) -> list[bytes]:
        self._check("TXT", name)
        return self._resolver.txt(name)

    def a(self, name: str) -> list[str]:
        self._check("A", name)
        return self._resolver.a(name)

    def aaaa(self, name: str) -> list[str]:
        self._check("AAAA", name)
        return self._resolver.aaaa(name)

    def mx(self, name: str) -> list[str]:
        self._check("MX", name)
        return self._resolver.mx(name)


def _parse_nameserver(spec: str) -> dns.nameserver.Do53Nameserver:
    """``"127.0.0.1"``, ``"127.0.0.1:5353"``, ``"::1"`` or ``"[::1]:5353"`` → a Do53 nameserver."""
    spec = spec.strip()
    host, port = spec, 53
    if spec.startswith("["):
        host, _, rest = spec[1:].partition("]")
        if rest.startswith(":"):
            port = int(rest[1:])
    elif spec.count(":") == 1:
        host, _, port_text = spec.partition(":")
        port = int(port_text)
    ipaddress.ip_address(host)  # raises ValueError on a host name: nameservers must be addresses
    if not 0 < port < 65536:
        raise ValueError(f"bad nameserver port in {spec!r}")
    return dns.nameserver.Do53Nameserver(host, port)


class NameserverResolver:
    """dnspython behind :class:`Resolver`.

    With ``nameservers`` (the ``dns_nameservers`` setting, e.g. ``["127.0.0.1:5353"]``) it asks only
    those servers and never reads ``/etc/resolv.conf``; with none it uses the system configuration
    (and raises ``dns.resolver.NoResolverConfiguration`` at construction if there is none).
    ``timeout`` bounds each whole lookup (dnspython's *lifetime*), retries included. No cache: the
    local recursive resolver (unbound, systemd-resolved) is where caching belongs.
    """

    def __init__(self, nameservers: Sequence[str] = (), *, timeout: float = 5.0) -> None:
        if nameservers:
            resolver = dns.resolver.Resolver(configure=False)
            resolver.nameservers = [_parse_nameserver(s) for s in nameservers]
        else:
            resolver = dns.resolver.Resolver(configure=True)
        resolver.lifetime = timeout
        resolver.timeout = min(timeout, 2.0)
        # EDNS0 with the DNS-flag-day payload: a 2048-bit DKIM key no longer forces a TCP retry.
        resolver.use_edns(0, 0, 1232)
        self._resolver = resolver

    def _resolve(self, name: str, rdtype: dns.rdatatype.RdataType) -> dns.resolver.Answer | None:
        try:
            qname = dns.name.from_text(normalise_name(name) or ".")
            return self._resolver.resolve(qname, rdtype, search=False, raise_on_no_answer=False)
        except (dns.resolver.NXDOMAIN, dns.resolver.YXDOMAIN, dns.resolver.NoAnswer):
            return None
        except dns.name.EmptyLabel:
            return None  # "a..b": not a name anyone can publish
        except dns.exception.DNSException as exc:  # Timeout, NoNameservers (SERVFAIL/REFUSED), bad replies
            raise DnsTempError(f"{type(exc).__name__} resolving {name} {rdtype.name}") from exc

    def txt(self, name: str) -> list[bytes]:
        answer = self._resolve(name, dns.rdatatype.TXT)
        if answer is None or answer.rrset is None:
            return []
        return [b"".join(rdata.strings) for rdata in answer.rrset]

    def a(self, name: str) -> list[str]:
        answer = self._resolve(name, dns.rdatatype.A)
        if answer is None or answer.rrset is None:
            return []
        return [str(rdata.address) for rdata in answer.rrset]

    def aaaa(self, name: str) -> list[str]:
        answer = self._resolve(name, dns.rdatatype.AAAA)
        if answer is None or answer.rrset is None:
            return []
        return [str(rdata.address) for rdata in answer.rrset]

    def mx(self, name: str) -> list[str]:
        answer = self._resolve(name, dns.rdatatype.MX)
        if answer is None or answer.rrset is None:
            return []
        records = sorted(answer.rrset, key=lambda r: int(r.preference))
        return [normalise_name(r.exchange.to_text(omit_final_dot=True)) for r in records]


def dkimpy_dnsfunc(resolver: Resolver) -> Callable[..., bytes]:
    """Adapt a :class:`Resolver` to dkimpy's ``dnsfunc(name, timeout=5)`` hook.

    dkimpy passes the key name as bytes with a trailing dot and wants the first TXT record (RFC 6376
    §3.6.2.2: several records give undefined results), or an empty value when there is none.
    :class:`DnsTempError` is deliberately *not* turned into ``dkim.DnsTimeoutError``: dkimpy would swallow
    that and return ``False``, indistinguishable from a bad signature (HOSTILE A7). It propagates out of
    ``DKIM.verify`` instead, and the caller reports ``temperror``.
    """

    def dnsfunc(name: bytes | str, timeout: float = 5.0) -> bytes:
        del timeout  # the resolver carries its own bound
        records = resolver.txt(normalise_name(name))
        return records[0] if records else b""

    return dnsfunc
