"""Authenticate the sender of an inbound message: DKIM (RFC 6376), SPF (RFC 7208) and DMARC (RFC 7489)."""

from __future__ import annotations

import functools
import importlib.resources
import ipaddress
import logging
import re
import urllib.parse
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from email.message import Message
from pathlib import Path
from typing import Any, Final, Literal

import authres  # type: ignore[import-untyped, unused-ignore]
import dkim
from dkim.canonicalization import CanonicalizationPolicy
from publicsuffix2 import PublicSuffixList  # type: ignore[import-untyped, unused-ignore]

from mailbridge.inbound.dkimstream import StreamedBodyDKIM
from mailbridge.inbound.dns import DnsTempError, Resolver, dkimpy_dnsfunc, normalise_name

__all__ = [
    "AuthResults",
    "DkimResult",
    "DmarcPolicy",
    "DmarcResult",
    "SpfResult",
    "authenticate",
    "check_spf",
    "organizational_domain",
]

log = logging.getLogger(__name__)

DkimResult = Literal["pass", "fail", "none", "temperror", "permerror"]
SpfResult = Literal["pass", "fail", "softfail", "neutral", "none", "temperror", "permerror"]
DmarcResult = Literal["pass", "fail", "none", "temperror"]
DmarcPolicy = Literal["none", "quarantine", "reject"]


@dataclass(frozen=True, slots=True)
class AuthResults:
    """What we know about the sender, computed here or taken from our own MTA's header.

    ``aligned`` is true when a DKIM or SPF pass is aligned with the From domain (relaxed, i.e. the same
    organisational domain, unless the DMARC record asks ``adkim=s``/``aspf=s``). Any ``temperror``
    means a DNS answer is missing: the pipeline answers ``451 4.7.0`` (HOSTILE A7), never accept or 5xx.
    """

    dkim: DkimResult
    dkim_domains: tuple[str, ...]
    spf: SpfResult
    dmarc: DmarcResult
    dmarc_policy: DmarcPolicy | None
    aligned: bool
    source: Literal["computed", "upstream"]
    from_domain: str = ""
    spf_domain: str = ""

    @property
    def temperror(self) -> bool:
        """A DNS lookup timed out somewhere; the verdict may change on retry."""
        return "temperror" in (self.dkim, self.spf, self.dmarc)

    def header_value(self, authserv_id: str) -> str:
        """An RFC 8601 Authentication-Results value for the inbound log (never sent on)."""
        upstream = self.source == "upstream"
        note = " (upstream)" if upstream else ""
        clauses = [_safe(authserv_id) or "mailbridge"]
        if self.dkim == "pass" and self.dkim_domains:
            clauses += [f"dkim=pass{note} header.d={_safe(d)}" for d in self.dkim_domains]
        else:
            clauses.append(f"dkim={self.dkim}{note}")
        spf = f"spf={self.spf}{note}"
        if self.spf_domain:
            spf += f" smtp.mailfrom={_safe(self.spf_domain)}"
        clauses.append(spf)
        comments = (["upstream"] if upstream else []) + (
            [f"p={self.dmarc_policy}"] if self.dmarc_policy else []
        )
        dmarc = f"dmarc={self.dmarc}" + (f" ({'; '.join(comments)})" if comments else "")
        if self.from_domain:
            dmarc += f" header.from={_safe(self.from_domain)}"
        clauses.append(dmarc)
        return "; ".join(clauses)


def authenticate(
    raw: bytes,
    msg: Message,
    *,
    from_domain: str,
    peer_ip: str | None,
    mail_from: str,
    helo: str | None,
    resolver: Resolver,
    trusted_authserv_ids: Collection[str] = (),
    body_path: Path | None = None,
    body_digests: dict[tuple[bool, bytes], tuple[bytes, int]] | None = None,
) -> AuthResults:
    """DKIM, SPF and DMARC for one message; all DNS goes through ``resolver``.

    Never raises for anything a message or DNS can contain: DNS timeouts and resolver failures come
    back as ``temperror``, malformed signatures and records as ``permerror``/``fail``/``none``.

    With ``trusted_authserv_ids``, the topmost run of Authentication-Results fields whose authserv-id
    is in that set (added by our MTA) is believed, method by method, and anything below the first
    other A-R is ignored (HOSTILE A8: a sender can write any A-R it likes). A method our MTA did not
    report is computed here (DKIM, DMARC) or left ``none`` (SPF: the connecting peer is then our MTA,
    not the sender); a DMARC verdict whose ``header.from`` is not the From domain we read counts as
    not reported. The MTA must strip A-R fields carrying its own authserv-id from incoming mail
    (RFC 8601 §5); this function cannot tell its MTA's field from a forged copy right below it.
    """
    from_domain = normalise_name(from_domain)
    upstream = _trusted_results(msg, trusted_authserv_ids) if trusted_authserv_ids else None

    if upstream is not None and "dkim" in upstream.methods:
        dkim_result, dkim_domains = upstream.dkim()
    else:
        dkim_result, dkim_domains = _check_dkim(raw, resolver, body_path, from_domain, body_digests)

    if upstream is not None:
        spf_result, spf_domain = upstream.spf(mail_from, helo)
    else:
        spf_domain = _spf_identity(mail_from, helo)[1]
        spf_result = check_spf(peer_ip, mail_from, helo, resolver)

    if upstream is not None and upstream.dmarc_about(from_domain):
        dmarc_result, policy = upstream.dmarc()
        aligned = dmarc_result == "pass" or _aligned(dkim_domains, spf_result, spf_domain, from_domain)
    else:
        dmarc_result, policy, aligned = _check_dmarc(
            from_domain, dkim_result, dkim_domains, spf_result, spf_domain, resolver
        )

    return AuthResults(
        dkim=dkim_result,
        dkim_domains=dkim_domains,
        spf=spf_result,
        dmarc=dmarc_result,
        dmarc_policy=policy,
        aligned=aligned,
        source="upstream" if upstream is not None else "computed",
        from_domain=from_domain,
        spf_domain=spf_domain,
    )


# --- Organisational domain (RFC 7489 §3.2) -------------------------------------------------------


@functools.cache
def _public_suffixes() -> PublicSuffixList:
    """The Public Suffix List, loaded once (≈ 140 ms): authheaders ships a fresher copy than publicsuffix2."""
    try:
        ref = importlib.resources.files("authheaders") / "public_suffix_list.txt"
        with importlib.resources.as_file(ref) as location:
            return PublicSuffixList(str(location))
    except (ModuleNotFoundError, FileNotFoundError, OSError):
        return PublicSuffixList()


@functools.lru_cache(maxsize=4096)
def organizational_domain(domain: str) -> str:
    """``mail.example.co.uk`` → ``example.co.uk`` (PSL, private suffixes included, as authheaders does).

    A top-level domain the list does not know falls under the PSL's default rule ``*`` (RFC 7489
    §3.2): the TLD is the public suffix and the organisational domain is one label more. publicsuffix2
    answers the bare TLD there in its lenient mode, which made ``evil.test`` and ``client.test`` the
    same organisation (relaxed alignment between any two such domains); its strict mode says "unknown"
    and the rule is applied here.

    Remembered for the last few thousand names (a pure function of the name and the list loaded
    once): the PSL walk cost ≈ 0.15 ms per reply, asked twice for every alignment check.
    """
    name = normalise_name(domain)
    if not name:
        return ""
    try:
        found = _public_suffixes().get_sld(name, strict=True)
    except Exception:
        return name
    if found:
        return str(found)
    return ".".join(name.split(".")[-2:])


def _aligned_pair(identifier: str, from_domain: str, strict: bool) -> bool:
    a, b = normalise_name(identifier), normalise_name(from_domain)
    if not a or not b:
        return False
    return a == b if strict else organizational_domain(a) == organizational_domain(b)


def _aligned(
    dkim_domains: Iterable[str],
    spf: SpfResult,
    spf_domain: str,
    from_domain: str,
    *,
    strict_dkim: bool = False,
    strict_spf: bool = False,
) -> bool:
    if any(_aligned_pair(d, from_domain, strict_dkim) for d in dkim_domains):
        return True
    return spf == "pass" and _aligned_pair(spf_domain, from_domain, strict_spf)


# --- DKIM ------------------------------------------------------------------------------------------

# Each signature costs a DNS look-up and an RSA verification: a verifier may stop (RFC 6376 §6.1),
# and checks those of the From's organisational domain first, the only ones DMARC can use, so junk
# signatures placed first cannot push a real one out (finding 9: up to 8 used to be checked).
_MAX_SIGNATURES: Final = 3
_SIGNING_DOMAIN: Final = re.compile(rb"(?:^|;)\s*d\s*=\s*([^;\s]+)")
# Folding several signatures: one pass is enough (RFC 6376 §6.1); a timeout could have hidden one.
_DKIM_PRECEDENCE: Final[tuple[DkimResult, ...]] = ("pass", "temperror", "fail", "permerror")


def _check_dkim(
    raw: bytes,
    resolver: Resolver,
    body_path: Path | None = None,
    from_domain: str = "",
    body_digests: dict[tuple[bool, bytes], tuple[bytes, int]] | None = None,
) -> tuple[DkimResult, tuple[str, ...]]:
    """Verify every DKIM-Signature (up to a cap) and fold the results: any pass wins, then temperror.

    With ``body_path``, ``raw`` is the header block only and body hashes are streamed from the file
    (a 100 MB message is never held whole, see dkimstream), or taken from ``body_digests`` when the
    prescan's read computed them (the file is then not read again).
    """
    try:
        verifier = StreamedBodyDKIM(raw, body_path, body_digests) if body_path is not None else dkim.DKIM(raw)
    except Exception:  # dkimpy's own header parse refused the message
        return ("permerror", ()) if re.search(rb"(?im)^dkim-signature\s*:", raw) else ("none", ())
    signatures = [value for name, value in verifier.headers if name.lower() == b"dkim-signature"]
    if not signatures:
        return "none", ()

    missing_keys: set[str] = set()
    base = dkimpy_dnsfunc(resolver)

    def dnsfunc(name: bytes | str, timeout: float = 5.0) -> bytes:
        record = base(name, timeout)
        if not record:
            missing_keys.add(normalise_name(name))
        return record

    results: list[DkimResult] = []
    domains: list[str] = []
    for idx in _signature_order(signatures, from_domain)[:_MAX_SIGNATURES]:
        missing_keys.clear()
        try:
            ok = verifier.verify(idx, dnsfunc=dnsfunc)
        except DnsTempError:
            results.append("temperror")
            continue
        except dkim.ValidationError:  # body hash mismatch, expired or future signature
            results.append("fail")
            continue
        except Exception:  # dkim.DKIMException and friends: a malformed signature or key
            results.append("permerror")
            continue
        fields = verifier.signature_fields or {}
        if ok and _covers_whole_body(verifier, fields):
            results.append("pass")
            domain = normalise_name(fields.get(b"d", b""))
            if domain and domain not in domains:
                domains.append(domain)
        elif ok:
            log.info("dkim_l_tag: signature by %s covers part of the body only", fields.get(b"d", b"?"))
            results.append("fail")  # HOSTILE A6: text appended after l= is unsigned
        else:
            results.append("permerror" if missing_keys else "fail")  # RFC 6376 §6.1.2: no key = permerror
    for verdict in _DKIM_PRECEDENCE:
        if verdict in results:
            return verdict, tuple(domains)
    return "none", ()


def _signature_order(signatures: list[bytes], from_domain: str) -> list[int]:
    """Indexes of the signatures: the From's own domain first, then its organisational domain (stable)."""
    wanted = normalise_name(from_domain)
    organisation = organizational_domain(wanted) if wanted else ""

    def rank(value: bytes) -> int:
        found = _SIGNING_DOMAIN.search(value)
        domain = normalise_name(found.group(1)) if found is not None else ""
        if domain and domain == wanted:
            return 0
        if domain and organizational_domain(domain) == organisation:
            return 1
        return 2

    return sorted(range(len(signatures)), key=lambda i: rank(signatures[i]))


def _covers_whole_body(verifier: dkim.DKIM, fields: dict[bytes, bytes]) -> bool:
    """False when ``l=`` is shorter than the canonicalised body (RFC 6376 §8.2)."""
    length = fields.get(b"l")
    if length is None:
        return True
    try:
        policy = CanonicalizationPolicy.from_c_value(fields.get(b"c", b"simple/simple"))
        return int(length) >= len(policy.canonicalize_body(verifier.body))
    except Exception:
        return False


# --- SPF (RFC 7208), a small evaluator over Resolver ----------------------------------------------
#
# Written here because pyspf, the reference library, cannot take an injected resolver: it looks up
# through a module-global function bound to dnspython's default resolver (/etc/resolv.conf), and it
# is not installed. This covers what check_host() needs: ip4, ip6, a, mx, include, exists, all,
# redirect, macros, the 10-lookup and 2-void-lookup limits. ``ptr`` (which RFC 7208 §5.5 says not
# to use) never matches, and ``exp`` is ignored (explanations are for rejecting MTAs).


class _PermError(Exception):
    pass


class _TempError(Exception):
    pass


_QUALIFIERS: Final[dict[str, SpfResult]] = {"+": "pass", "-": "fail", "~": "softfail", "?": "neutral"}
_MODIFIER: Final = re.compile(r"([A-Za-z][A-Za-z0-9_.-]*)=(.*)\Z", re.DOTALL)
_MECHANISM: Final = re.compile(r"([+\-~?]?)([A-Za-z][A-Za-z0-9_.-]*)(.*)\Z", re.DOTALL)
_DUAL_CIDR: Final = re.compile(r"(?::([^/]*))?(?:/(\d{1,2}))?(?://(\d{1,3}))?\Z")
_MACRO: Final = re.compile(r"%(?:\{([A-Za-z])(\d*)(r?)([.\-+,/_=]*)\}|(.))", re.IGNORECASE)
_MAX_LOOKUPS: Final = 10
_MAX_VOID_LOOKUPS: Final = 2


def _valid_domain(name: str) -> bool:
    """RFC 7208 §4.3: a multi-label FQDN with labels of 1–63 octets."""
    labels = name.split(".")
    return len(name) <= 253 and len(labels) >= 2 and all(0 < len(label) <= 63 for label in labels)


def _spf_identity(mail_from: str, helo: str | None) -> tuple[str, str]:
    """(sender, domain) checked: MAIL FROM, or postmaster@HELO for the null reverse-path (§2.4)."""
    sender = mail_from.strip().strip("<>").strip()
    if not sender:
        host = normalise_name(helo or "")
        return (f"postmaster@{host}", host) if host else ("", "")
    local, at, domain = sender.rpartition("@")
    if not at:
        local, domain = "", sender
    domain = normalise_name(domain)
    return f"{local or 'postmaster'}@{domain}", domain


def check_spf(peer_ip: str | None, mail_from: str, helo: str | None, resolver: Resolver) -> SpfResult:
    """RFC 7208 check_host() for the connecting IP and the MAIL FROM (or HELO) identity."""
    sender, domain = _spf_identity(mail_from, helo)
    if not peer_ip or not domain:
        return "none"
    try:
        ip = ipaddress.ip_address(peer_ip.strip().strip("[]"))
    except ValueError:
        return "none"
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return _SpfCheck(resolver, ip, sender, normalise_name(helo or "")).run(domain)


class _SpfCheck:
    def __init__(
        self,
        resolver: Resolver,
        ip: ipaddress.IPv4Address | ipaddress.IPv6Address,
        sender: str,
        helo: str,
    ) -> None:
        self.resolver = resolver
        self.ip = ip
        self.sender = sender
        self.helo = helo
        self.lookups = 0
        self.voids = 0

    def run(self, domain: str) -> SpfResult:
        try:
            return self.check_host(domain)
        except _TempError:
            return "temperror"
        except _PermError:
            return "permerror"
        except Exception:  # a resolver bug: retrying later is the safe answer
            log.exception("spf_check_failed")
            return "temperror"

    # DNS with the RFC's limits --------------------------------------------------------------------

    def _count_lookup(self) -> None:
        self.lookups += 1
        if self.lookups > _MAX_LOOKUPS:
            raise _PermError("more than 10 DNS-querying terms")

    def _void(self, answers: list[str] | list[bytes]) -> None:
        if not answers:
            self.voids += 1
            if self.voids > _MAX_VOID_LOOKUPS:
                raise _PermError("more than 2 void lookups")

    def _addresses(self, name: str) -> list[str]:
        try:
            return self.resolver.a(name) if self.ip.version == 4 else self.resolver.aaaa(name)
        except DnsTempError as exc:
            raise _TempError(str(exc)) from exc

    def _record(self, domain: str) -> str | None:
        try:
            records = self.resolver.txt(domain)
        except DnsTempError as exc:
            raise _TempError(str(exc)) from exc
        spf = [r for r in records if r.lower() == b"v=spf1" or r[:7].lower() == b"v=spf1 "]
        if len(spf) > 1:
            raise _PermError("several SPF records")
        if not spf:
            return None
        try:
            return spf[0].decode("ascii")
        except UnicodeDecodeError as exc:
            raise _PermError("non-ASCII SPF record") from exc

    # check_host() ---------------------------------------------------------------------------------

    def check_host(self, domain: str) -> SpfResult:
        if not _valid_domain(domain):
            return "none"
        record = self._record(domain)
        if record is None:
            return "none"
        redirect: str | None = None
        seen_modifiers: set[str] = set()
        directives: list[tuple[str, str, str]] = []
        for term in record.split()[1:]:
            modifier = _MODIFIER.match(term)
            if modifier is not None:
                name = modifier.group(1).lower()
                if name in ("redirect", "exp"):
                    if name in seen_modifiers:
                        raise _PermError(f"duplicate {name}=")
                    seen_modifiers.add(name)
                    if name == "redirect":
                        redirect = modifier.group(2)
                continue  # unknown modifiers are ignored (§6)
            mechanism = _MECHANISM.match(term)
            if mechanism is None:
                raise _PermError(f"bad term {term!r}")
            qualifier, name, rest = mechanism.groups()
            directives.append((qualifier or "+", name.lower(), rest))

        for qualifier, name, rest in directives:
            if self._matches(name, rest, domain):
                return _QUALIFIERS[qualifier]
        if redirect is not None:
            self._count_lookup()
            target = self._expand(redirect, domain)
            result = self.check_host(target)
            if result == "none":
                raise _PermError("redirect to a domain without SPF")
            return result
        return "neutral"

    def _matches(self, name: str, rest: str, domain: str) -> bool:
        if name == "all":
            if rest:
                raise _PermError("all takes no argument")
            return True
        if name in ("ip4", "ip6"):
            return self._match_ip(name, rest)
        if name == "include":
            self._count_lookup()
            if not rest.startswith(":") or len(rest) < 2:
                raise _PermError("include needs a domain")
            result = self.check_host(self._expand(rest[1:], domain))
            if result == "pass":
                return True
            if result in ("fail", "softfail", "neutral"):
                return False
            if result == "temperror":
                raise _TempError("include")
            raise _PermError(f"include gave {result}")  # permerror or none (§5.2)
        if name == "exists":
            self._count_lookup()
            if not rest.startswith(":") or len(rest) < 2:
                raise _PermError("exists needs a domain")
            try:
                found = self.resolver.a(self._expand(rest[1:], domain))
            except DnsTempError as exc:
                raise _TempError(str(exc)) from exc
            self._void(found)
            return bool(found)
        if name in ("a", "mx"):
            self._count_lookup()
            spec = _DUAL_CIDR.match(rest)
            if spec is None:
                raise _PermError(f"bad {name} term")
            target = self._expand(spec.group(1), domain) if spec.group(1) else domain
            prefix = spec.group(2) if self.ip.version == 4 else spec.group(3)
            if name == "a":
                hosts = [target]
            else:
                try:
                    hosts = self.resolver.mx(target)
                except DnsTempError as exc:
                    raise _TempError(str(exc)) from exc
                self._void(hosts)
                if len(hosts) > 10:
                    raise _PermError("more than 10 MX names")  # §4.6.4
            for host in hosts:
                addresses = self._addresses(host)
                if name == "a":
                    self._void(addresses)
                if any(self._in_network(a, prefix) for a in addresses):
                    return True
            return False
        if name == "ptr":
            self._count_lookup()
            return False  # deprecated (§5.5): never matched here
        raise _PermError(f"unknown mechanism {name}")

    def _match_ip(self, name: str, rest: str) -> bool:
        if not rest.startswith(":"):
            raise _PermError(f"{name} needs an address")
        try:
            network = ipaddress.ip_network(rest[1:], strict=False)
        except ValueError as exc:
            raise _PermError(f"bad {name} network") from exc
        if (name == "ip4") != (network.version == 4):
            raise _PermError(f"{name} with the wrong address family")
        return network.version == self.ip.version and self.ip in network

    def _in_network(self, address: str, prefix: str | None) -> bool:
        try:
            ip = ipaddress.ip_address(address)
            if ip.version != self.ip.version:
                return False
            bits = int(prefix) if prefix else ip.max_prefixlen
            if bits > ip.max_prefixlen:
                raise _PermError("CIDR length too long")
            return self.ip in ipaddress.ip_network(f"{ip}/{bits}", strict=False)
        except ValueError:
            return False

    def _expand(self, spec: str, domain: str) -> str:
        """Macro expansion (§7) of a domain-spec."""
        local, _, sender_domain = self.sender.rpartition("@")
        if self.ip.version == 4:
            ip_text, version = str(self.ip), "in-addr"
        else:
            ip_text, version = ".".join(self.ip.exploded.replace(":", "")), "ip6"
        values = {
            "s": self.sender,
            "l": local,
            "o": sender_domain,
            "d": domain,
            "i": ip_text,
            "p": "unknown",
            "v": version,
            "h": self.helo,
        }

        def substitute(match: re.Match[str]) -> str:
            letter, digits, reverse, delimiters, literal = match.groups()
            if literal is not None:
                if literal == "%":
                    return "%"
                if literal == "_":
                    return " "
                if literal == "-":
                    return "%20"
                raise _PermError("bad macro")
            key = letter.lower()
            if key not in values:
                raise _PermError(f"macro %{{{letter}}} not allowed here")
            parts = re.split("[" + re.escape(delimiters or ".") + "]", values[key])
            if reverse:
                parts.reverse()
            if digits:
                count = int(digits)
                if count == 0:
                    raise _PermError("zero macro digits")
                parts = parts[-count:]
            text = ".".join(parts)
            return urllib.parse.quote(text, safe="") if letter.isupper() else text

        expanded = _MACRO.sub(substitute, spec) if "%" in spec else spec
        expanded = normalise_name(expanded)
        while len(expanded) > 253 and "." in expanded:  # §7.3: drop labels from the left
            expanded = expanded.split(".", 1)[1]
        if not expanded or ".." in expanded:
            raise _PermError("empty domain after expansion")
        return expanded


# --- DMARC -----------------------------------------------------------------------------------------

_POLICIES: Final[dict[str, DmarcPolicy]] = {"none": "none", "quarantine": "quarantine", "reject": "reject"}


def _dmarc_record(domain: str, resolver: Resolver) -> tuple[dict[str, str] | None, bool]:
    """(tags, found): the single DMARC record at ``_dmarc.domain``; ``found`` is false when there is none.

    RFC 7489 §6.6.3: records not starting with ``v=DMARC1`` are discarded; several left means no
    DMARC processing at all (returned as found with ``None`` tags).
    """
    records = []
    for raw in resolver.txt(f"_dmarc.{domain}"):
        text = raw.decode("ascii", "replace")
        tags: dict[str, str] = {}
        for i, item in enumerate(text.split(";")):
            key, eq, value = item.partition("=")
            key, value = key.strip().lower(), value.strip()
            if i == 0 and (key != "v" or value != "DMARC1" or not eq):
                tags = {}
                break
            if key and eq and key not in tags:
                tags[key] = value
        if tags:
            records.append(tags)
    if not records:
        return None, False
    if len(records) > 1:
        return None, True
    return records[0], True


def _check_dmarc(
    from_domain: str,
    dkim_result: DkimResult,
    dkim_domains: tuple[str, ...],
    spf_result: SpfResult,
    spf_domain: str,
    resolver: Resolver,
) -> tuple[DmarcResult, DmarcPolicy | None, bool]:
    """(result, policy, aligned) per RFC 7489 §6.6; ``pct`` is ignored (the published policy is reported)."""
    relaxed = _aligned(dkim_domains, spf_result, spf_domain, from_domain)
    if not _valid_domain(from_domain):
        return "none", None, relaxed
    organisational = organizational_domain(from_domain)
    try:
        tags, found = _dmarc_record(from_domain, resolver)
        at_org = False
        if not found and organisational and organisational != from_domain:
            tags, found = _dmarc_record(organisational, resolver)
            at_org = True
    except DnsTempError:
        return "temperror", None, relaxed
    except Exception:  # a resolver bug: retrying later is the safe answer
        log.exception("dmarc_lookup_failed")
        return "temperror", None, relaxed
    if tags is None:
        return "none", None, relaxed

    policy = _POLICIES.get(tags.get("p", "").lower())
    if at_org and "sp" in tags:
        policy = _POLICIES.get(tags["sp"].lower())
    if policy is None:
        if "mailto:" not in tags.get("rua", "").lower():
            return "none", None, relaxed  # §6.6.3 step 6: an unusable record
        policy = "none"

    aligned = _aligned(
        dkim_domains,
        spf_result,
        spf_domain,
        from_domain,
        strict_dkim=tags.get("adkim", "r").lower() == "s",
        strict_spf=tags.get("aspf", "r").lower() == "s",
    )
    if aligned:
        return "pass", policy, True
    if "temperror" in (dkim_result, spf_result):
        return "temperror", policy, False
    return "fail", policy, False


# --- Authentication-Results from our own MTA (RFC 8601) -------------------------------------------

_AUTHSERV_ID: Final = re.compile(r"\s*(?:\([^()]*\)\s*)*([^\s;()]+)")
_DMARC_POLICY_COMMENT: Final = re.compile(r"\bdmarc\s*=\s*\w+\s*\(([^()]*)\)", re.IGNORECASE)
_P_TAG: Final = re.compile(r"\bp\s*=\s*(none|quarantine|reject)\b", re.IGNORECASE)
_FOLD: Final = re.compile(r"\r?\n[ \t]*")
_UNSAFE: Final = re.compile(r"[^A-Za-z0-9._@+\-]")

_DKIM_MAP: Final[dict[str, DkimResult]] = {
    "pass": "pass",
    "fail": "fail",
    "neutral": "fail",
    "policy": "fail",
    "none": "none",
    "temperror": "temperror",
    "permerror": "permerror",
}
_SPF_MAP: Final[dict[str, SpfResult]] = {
    "pass": "pass",
    "fail": "fail",
    "hardfail": "fail",
    "softfail": "softfail",
    "neutral": "neutral",
    "none": "none",
    "temperror": "temperror",
    "permerror": "permerror",
}
_DMARC_MAP: Final[dict[str, DmarcResult]] = {
    "pass": "pass",
    "fail": "fail",
    "none": "none",
    "temperror": "temperror",
    "permerror": "none",
}


@functools.cache
def _authres_context() -> Any:
    return authres.all_features()


class _Upstream:
    """Results per method from the trusted Authentication-Results fields, topmost first."""

    def __init__(self) -> None:
        self.results: dict[str, list[object]] = {}
        self.dmarc_policy: DmarcPolicy | None = None

    @property
    def methods(self) -> set[str]:
        return set(self.results)

    def add(self, header: object, raw_value: str) -> None:
        taken: dict[str, list[object]] = {}
        for result in getattr(header, "results", []):
            method = str(getattr(result, "method", "")).lower()
            if method and method not in self.results:
                taken.setdefault(method, []).append(result)
        if "dmarc" in taken:
            self.dmarc_policy = _upstream_policy(taken["dmarc"][0], raw_value)
        self.results.update(taken)

    def dkim(self) -> tuple[DkimResult, tuple[str, ...]]:
        verdicts: list[DkimResult] = []
        domains: list[str] = []
        for result in self.results.get("dkim", []):
            verdict = _DKIM_MAP.get(str(getattr(result, "result", "")).lower(), "permerror")
            verdicts.append(verdict)
            if verdict == "pass":
                domain = (
                    _property(result, "header", "d") or _property(result, "header", "i").rpartition("@")[2]
                )
                domain = normalise_name(domain)
                if domain and domain not in domains:
                    domains.append(domain)
        for verdict in _DKIM_PRECEDENCE:
            if verdict in verdicts:
                return verdict, tuple(domains)
        return "none", ()

    def spf(self, mail_from: str, helo: str | None) -> tuple[SpfResult, str]:
        results = self.results.get("spf", [])
        if not results:
            return "none", _spf_identity(mail_from, helo)[1]
        result = results[0]
        verdict = _SPF_MAP.get(str(getattr(result, "result", "")).lower(), "permerror")
        identity = _property(result, "smtp", "mailfrom") or _property(result, "smtp", "helo")
        domain = (
            normalise_name(identity.rpartition("@")[2]) if identity else _spf_identity(mail_from, helo)[1]
        )
        return verdict, domain

    def dmarc_about(self, from_domain: str) -> bool:
        """Whether our MTA's DMARC verdict is about the From we read: its ``header.from`` must name the
        same domain. A verdict on another From (two From fields read differently, an obfuscated one,
        or none named at all) says nothing about this one, so DMARC is then evaluated here."""
        results = self.results.get("dmarc", [])
        if not results:
            return False
        named = normalise_name(_property(results[0], "header", "from").rpartition("@")[2])
        return bool(named) and named == normalise_name(from_domain)

    def dmarc(self) -> tuple[DmarcResult, DmarcPolicy | None]:
        result = self.results["dmarc"][0]
        return _DMARC_MAP.get(str(getattr(result, "result", "")).lower(), "none"), self.dmarc_policy


def _property(result: object, ptype: str, name: str) -> str:
    for prop in getattr(result, "properties", None) or []:
        if str(getattr(prop, "type", "")).lower() == ptype and str(getattr(prop, "name", "")).lower() == name:
            return str(getattr(prop, "value", "") or "")
    return ""


def _upstream_policy(result: object, raw_value: str) -> DmarcPolicy | None:
    """``policy.dmarc=reject``, or the ``(p=REJECT sp=… dis=…)`` comment Gmail and OpenDMARC write."""
    policy = _POLICIES.get(_property(result, "policy", "dmarc").lower())
    if policy is not None:
        return policy
    comment = _DMARC_POLICY_COMMENT.search(raw_value)
    tag = _P_TAG.search(comment.group(1)) if comment else None
    return _POLICIES.get(tag.group(1).lower()) if tag else None


def _trusted_results(msg: Message, trusted: Collection[str]) -> _Upstream | None:
    """Parse the topmost run of A-R fields carrying a trusted authserv-id; ``None`` if there is none."""
    trusted_ids = {t.strip().lower() for t in trusted}
    upstream: _Upstream | None = None
    try:
        fields = [str(v) for k, v in msg.raw_items() if k.strip().lower() == "authentication-results"]
    except Exception:
        return None
    for raw_value in fields:
        value = _FOLD.sub(" ", raw_value).strip()
        match = _AUTHSERV_ID.match(value)
        if match is None or match.group(1).lower() not in trusted_ids:
            break  # everything below an untrusted A-R is the sender's word
        try:
            header = _authres_context().parse_value(value)
        except Exception:
            log.warning("unparsable Authentication-Results from a trusted authserv-id ignored")
            continue
        if str(getattr(header, "authserv_id", "")).lower() not in trusted_ids:
            break
        if upstream is None:
            upstream = _Upstream()
        upstream.add(header, value)
    return upstream


def _safe(value: str) -> str:
    """Keep only characters that cannot break an A-R field (no CR/LF, ';', '(' or spaces)."""
    return _UNSAFE.sub("", value)[:255]
