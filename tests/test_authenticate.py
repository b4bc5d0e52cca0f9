"""Sender authentication: DKIM, SPF and DMARC through a static resolver; the resolver adapters themselves."""

from __future__ import annotations

import base64
import email
import socket
import threading
from collections.abc import Collection, Iterator, Mapping, Sequence
from contextlib import contextmanager
from email import policy
from email.message import EmailMessage

import dkim
import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype
import dns.rrset
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from mailbridge.inbound.authenticate import AuthResults, authenticate, check_spf, organizational_domain
from mailbridge.inbound.dns import DnsTempError, NameserverResolver, StaticResolver, dkimpy_dnsfunc

PEER = "192.0.2.10"
OTHER_PEER = "198.51.100.7"
OURS = "mx.ours.example"


@pytest.fixture(scope="module")
def key() -> tuple[bytes, str]:
    """One RSA-2048 key per module: (PKCS#1 PEM private key for dkimpy, DNS key record)."""
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = private.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )
    spki = private.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return pem, "v=DKIM1; k=rsa; p=" + base64.b64encode(spki).decode()


def make_raw(
    from_addr: str = "alice@example.org",
    body: str = "Thanks, see you on Monday.\r\n",
    extra_headers: Sequence[str] = (),
) -> bytes:
    lines = [
        *extra_headers,
        f"From: Alice <{from_addr}>",
        "To: reply+abc@reply.mailbridge.example",
        "Subject: Re: New message",
        "Date: Mon, 01 Jan 2024 10:00:00 +0000",
        "Message-ID: <m1@example.org>",
        "MIME-Version: 1.0",
        "Content-Type: text/plain; charset=utf-8",
    ]
    return ("\r\n".join(lines) + "\r\n\r\n" + body).encode()


def sign(raw: bytes, pem: bytes, domain: str = "example.org", *, length: bool = False) -> bytes:
    signature = dkim.sign(
        raw,
        b"sel",
        domain.encode(),
        pem,
        include_headers=[b"from", b"to", b"subject", b"date", b"message-id"],
        length=length,
    )
    return bytes(signature) + raw


def parse(raw: bytes) -> EmailMessage:
    msg = email.message_from_bytes(raw, policy=policy.default)
    assert isinstance(msg, EmailMessage)
    return msg


def zone(key_record: str, **extra: Sequence[str]) -> dict[str, list[str]]:
    table = {
        "sel._domainkey.example.org": [key_record],
        "sel._domainkey.other.net": [key_record],
        "sel._domainkey.mail.example.org": [key_record],
        "example.org": ["v=spf1 ip4:192.0.2.0/24 -all"],
        "_dmarc.example.org": ["v=DMARC1; p=reject; rua=mailto:dmarc@example.org"],
    }
    table.update({k.replace("__", "."): list(v) for k, v in extra.items()})
    return table


def run(
    raw: bytes,
    resolver: StaticResolver,
    *,
    from_domain: str = "example.org",
    peer: str | None = None,
    mail_from: str = "alice@example.org",
    helo: str | None = "mail.example.org",
    trusted: Sequence[str] = (),
) -> AuthResults:
    return authenticate(
        raw,
        parse(raw),
        from_domain=from_domain,
        peer_ip=peer,
        mail_from=mail_from,
        helo=helo,
        resolver=resolver,
        trusted_authserv_ids=trusted,
    )


# --- DKIM -------------------------------------------------------------------------------------------


def test_dkim_pass_aligned_gives_dmarc_pass(key: tuple[bytes, str]) -> None:
    pem, record = key
    result = run(sign(make_raw(), pem), StaticResolver(zone(record)))
    assert (result.dkim, result.dkim_domains) == ("pass", ("example.org",))
    assert (result.dmarc, result.dmarc_policy, result.aligned) == ("pass", "reject", True)
    assert result.source == "computed" and not result.temperror


def test_dkim_subdomain_signature_is_aligned_in_relaxed_mode(key: tuple[bytes, str]) -> None:
    pem, record = key
    result = run(sign(make_raw(), pem, "mail.example.org"), StaticResolver(zone(record)))
    assert result.dkim_domains == ("mail.example.org",)
    assert result.aligned and result.dmarc == "pass"


def test_dkim_subdomain_signature_fails_strict_adkim(key: tuple[bytes, str]) -> None:
    pem, record = key
    table = zone(record)
    table["_dmarc.example.org"] = ["v=DMARC1; p=quarantine; adkim=s"]
    result = run(sign(make_raw(), pem, "mail.example.org"), StaticResolver(table))
    assert result.dkim == "pass"
    assert (result.dmarc, result.dmarc_policy, result.aligned) == ("fail", "quarantine", False)


def test_dkim_pass_unaligned_other_domain(key: tuple[bytes, str]) -> None:
    pem, record = key
    result = run(sign(make_raw(), pem, "other.net"), StaticResolver(zone(record)))
    assert (result.dkim, result.dkim_domains) == ("pass", ("other.net",))
    assert not result.aligned
    assert (result.dmarc, result.dmarc_policy) == ("fail", "reject")


def test_dkim_body_altered_fails(key: tuple[bytes, str]) -> None:
    pem, record = key
    raw = sign(make_raw(), pem).replace(b"Monday", b"Friday")
    result = run(raw, StaticResolver(zone(record)))
    assert result.dkim == "fail" and result.dkim_domains == ()
    assert result.dmarc == "fail"


def test_dkim_l_tag_with_appended_text_is_not_a_pass(key: tuple[bytes, str]) -> None:
    """HOSTILE A6: dkimpy verifies the first l= bytes only; the appended part must not ride along."""
    pem, record = key
    signed = sign(make_raw(), pem, length=True)
    assert dkim.verify(
        signed + b"Click http://evil.example/\r\n", dnsfunc=dkimpy_dnsfunc(StaticResolver(zone(record)))
    )
    assert run(signed, StaticResolver(zone(record))).dkim == "pass"  # l= covering the whole body is fine
    result = run(signed + b"Click http://evil.example/\r\n", StaticResolver(zone(record)))
    assert result.dkim == "fail" and result.dmarc == "fail"


def test_dkim_missing_key_is_permerror(key: tuple[bytes, str]) -> None:
    pem, record = key
    table = zone(record)
    del table["sel._domainkey.example.org"]
    assert run(sign(make_raw(), pem), StaticResolver(table)).dkim == "permerror"


def test_no_signature_is_dkim_none(key: tuple[bytes, str]) -> None:
    result = run(make_raw(), StaticResolver(zone(key[1])))
    assert (result.dkim, result.dkim_domains) == ("none", ())


def test_dkim_key_lookup_timeout_is_temperror(key: tuple[bytes, str]) -> None:
    """HOSTILE A7: dkimpy says False on every error; the resolver's DnsTempError is what tells us."""
    pem, record = key
    resolver = StaticResolver(zone(record), timeouts={"sel._domainkey.example.org"})
    result = run(sign(make_raw(), pem), resolver)
    assert result.dkim == "temperror"
    assert result.dmarc == "temperror" and result.temperror


def test_a_good_signature_wins_over_a_timed_out_one(key: tuple[bytes, str]) -> None:
    pem, record = key
    raw = sign(sign(make_raw(), pem, "other.net"), pem, "example.org")
    resolver = StaticResolver(zone(record), timeouts={"sel._domainkey.other.net"})
    result = run(raw, resolver)
    assert (result.dkim, result.dkim_domains, result.dmarc) == ("pass", ("example.org",), "pass")


# --- SPF and DMARC --------------------------------------------------------------------------------


def test_no_signature_spf_pass_aligned_gives_dmarc_pass(key: tuple[bytes, str]) -> None:
    result = run(make_raw(), StaticResolver(zone(key[1])), peer=PEER, mail_from="bounces@example.org")
    assert (result.dkim, result.spf, result.spf_domain) == ("none", "pass", "example.org")
    assert (result.dmarc, result.aligned) == ("pass", True)


def test_spf_pass_for_another_domain_is_not_aligned(key: tuple[bytes, str]) -> None:
    table = zone(key[1], **{"mailer__test": ["v=spf1 ip4:192.0.2.10 -all"]})
    result = run(make_raw(), StaticResolver(table), peer=PEER, mail_from="bounce@mailer.test")
    assert (result.spf, result.aligned, result.dmarc) == ("pass", False, "fail")


def test_spf_fail_with_p_reject_is_dmarc_fail(key: tuple[bytes, str]) -> None:
    """HOSTILE A1: From a participant's domain, SPF fail, no DKIM, p=reject."""
    result = run(make_raw(), StaticResolver(zone(key[1])), peer=OTHER_PEER)
    assert (result.dkim, result.spf) == ("none", "fail")
    assert (result.dmarc, result.dmarc_policy, result.aligned) == ("fail", "reject", False)


def test_no_dmarc_record_is_dmarc_none(key: tuple[bytes, str]) -> None:
    """HOSTILE A2: no record, SPF none: DMARC says nothing (the pipeline flags auth_weak)."""
    result = run(
        make_raw("bob@nodmarc.test"),
        StaticResolver(zone(key[1])),
        from_domain="nodmarc.test",
        peer=PEER,
        mail_from="bob@nodmarc.test",
    )
    assert (result.spf, result.dmarc, result.dmarc_policy, result.aligned) == ("none", "none", None, False)


def test_subdomain_uses_the_organisational_record_and_sp(key: tuple[bytes, str]) -> None:
    table = zone(key[1])
    table["_dmarc.example.org"] = ["v=DMARC1; p=none; sp=reject"]
    resolver = StaticResolver(table)
    result = run(
        make_raw("a@news.example.org"),
        resolver,
        from_domain="news.example.org",
        peer=OTHER_PEER,
        mail_from="a@news.example.org",
    )
    assert (result.dmarc, result.dmarc_policy) == ("fail", "reject")
    assert ("TXT", "_dmarc.news.example.org") in resolver.queries
    assert ("TXT", "_dmarc.example.org") in resolver.queries


def test_two_dmarc_records_mean_no_dmarc(key: tuple[bytes, str]) -> None:
    table = zone(key[1])
    table["_dmarc.example.org"] = ["v=DMARC1; p=reject", "v=DMARC1; p=none"]
    assert run(make_raw(), StaticResolver(table), peer=OTHER_PEER).dmarc == "none"


def test_dmarc_record_without_valid_p_and_without_rua_is_ignored(key: tuple[bytes, str]) -> None:
    table = zone(key[1])
    table["_dmarc.example.org"] = ["v=DMARC1; p=bogus"]
    assert run(make_raw(), StaticResolver(table), peer=OTHER_PEER).dmarc == "none"
    table["_dmarc.example.org"] = ["v=DMARC1; p=bogus; rua=mailto:r@example.org"]
    assert run(make_raw(), StaticResolver(table), peer=OTHER_PEER).dmarc_policy == "none"


def test_dmarc_lookup_timeout_is_temperror(key: tuple[bytes, str]) -> None:
    resolver = StaticResolver(zone(key[1]), timeouts={"_dmarc.example.org"})
    result = run(make_raw(), resolver, peer=OTHER_PEER)
    assert result.dmarc == "temperror" and result.temperror


def test_spf_lookup_timeout_is_temperror(key: tuple[bytes, str]) -> None:
    resolver = StaticResolver(zone(key[1]), timeouts={"example.org"})
    result = run(make_raw(), resolver, peer=PEER)
    assert result.spf == "temperror"
    assert result.dmarc == "temperror" and result.temperror


# --- Authentication-Results from our MTA (HOSTILE A8) ---------------------------------------------

TRUSTED_AR = (
    f"Authentication-Results: {OURS}; dkim=pass header.d=example.org header.s=sel;"
    " spf=pass smtp.mailfrom=alice@example.org;"
    " dmarc=pass (p=REJECT sp=REJECT dis=NONE) header.from=example.org"
)
FORGED_AR = (
    f"Authentication-Results: {OURS}; dkim=pass header.d=example.org; dmarc=pass header.from=example.org"
)


def test_forged_authentication_results_are_ignored_without_trusted_ids(key: tuple[bytes, str]) -> None:
    raw = make_raw(extra_headers=[FORGED_AR])
    result = run(raw, StaticResolver(zone(key[1])), peer=OTHER_PEER)
    assert result.source == "computed"
    assert (result.dkim, result.dmarc) == ("none", "fail")


def test_forged_authentication_results_below_an_untrusted_one_are_ignored(key: tuple[bytes, str]) -> None:
    raw = make_raw(extra_headers=["Authentication-Results: relay.elsewhere.example; spf=pass", FORGED_AR])
    result = run(raw, StaticResolver(zone(key[1])), peer=OTHER_PEER, trusted=[OURS])
    assert result.source == "computed"
    assert (result.dkim, result.dmarc) == ("none", "fail")


def test_trusted_authentication_results_are_honoured(key: tuple[bytes, str]) -> None:
    resolver = StaticResolver({})
    raw = make_raw(extra_headers=[TRUSTED_AR, "Authentication-Results: relay.elsewhere.example; dkim=fail"])
    result = run(raw, resolver, peer="127.0.0.1", trusted=[OURS.upper()])
    assert result.source == "upstream"
    assert (result.dkim, result.dkim_domains, result.spf, result.spf_domain) == (
        "pass",
        ("example.org",),
        "pass",
        "example.org",
    )
    assert (result.dmarc, result.dmarc_policy, result.aligned) == ("pass", "reject", True)
    assert resolver.queries == []  # nothing re-checked, no DNS at all


def test_trusted_dmarc_fail_with_policy_property(key: tuple[bytes, str]) -> None:
    header = (
        f"Authentication-Results: {OURS}; dkim=none; spf=fail smtp.mailfrom=example.org;"
        " dmarc=fail policy.dmarc=reject header.from=example.org"
    )
    result = run(make_raw(extra_headers=[header]), StaticResolver({}), trusted=[OURS])
    assert (result.spf, result.dmarc, result.dmarc_policy, result.aligned) == (
        "fail",
        "fail",
        "reject",
        False,
    )


def test_trusted_results_without_dmarc_are_completed_here(key: tuple[bytes, str]) -> None:
    """Our MTA checked DKIM only: DMARC is evaluated here on its verdict; SPF stays none (peer = our MTA)."""
    header = f"Authentication-Results: {OURS}; dkim=pass header.d=example.org"
    resolver = StaticResolver(zone(key[1]))
    result = run(make_raw(extra_headers=[header]), resolver, peer=PEER, trusted=[OURS])
    assert (result.source, result.dkim, result.spf) == ("upstream", "pass", "none")
    assert (result.dmarc, result.dmarc_policy) == ("pass", "reject")
    assert [q for q in resolver.queries if q[1] == "example.org"] == []  # no SPF against our own MTA


def test_unparsable_trusted_header_falls_back_to_computing(key: tuple[bytes, str]) -> None:
    pem, record = key
    raw = sign(make_raw(extra_headers=[f"Authentication-Results: {OURS}; ;;; ==="]), pem)
    result = run(raw, StaticResolver(zone(record)), trusted=[OURS])
    assert (result.source, result.dkim, result.dmarc) == ("computed", "pass", "pass")


def test_header_value_is_one_safe_line(key: tuple[bytes, str]) -> None:
    pem, record = key
    result = run(sign(make_raw(), pem), StaticResolver(zone(record)), peer=PEER)
    value = result.header_value("mx.ours.example\r\nBcc: x@evil")
    assert value == (
        "mx.ours.exampleBccx@evil; dkim=pass header.d=example.org; spf=pass smtp.mailfrom=example.org;"
        " dmarc=pass (p=reject) header.from=example.org"
    )
    assert "\n" not in value and "\r" not in value


# --- SPF evaluator ----------------------------------------------------------------------------------


def spf(
    table: Mapping[str, Sequence[str]],
    ip: str = PEER,
    mail_from: str = "a@example.org",
    helo: str | None = "mx.example.org",
    *,
    a: Mapping[str, Sequence[str]] | None = None,
    mx: Mapping[str, Sequence[str]] | None = None,
    timeouts: Collection[str] = (),
) -> str:
    return check_spf(ip, mail_from, helo, StaticResolver(table, a=a, mx=mx, timeouts=timeouts))


@pytest.mark.parametrize(
    ("record", "expected"),
    [
        ("v=spf1 ip4:192.0.2.10 -all", "pass"),
        ("v=spf1 ip4:192.0.2.0/25 -all", "pass"),
        ("v=spf1 ip4:203.0.113.0/24 -all", "fail"),
        ("v=spf1 ip4:203.0.113.0/24 ~all", "softfail"),
        ("v=spf1 ip4:203.0.113.0/24 ?all", "neutral"),
        ("v=spf1 ip4:203.0.113.0/24", "neutral"),
        ("v=spf1 -ip4:192.0.2.10 +all", "fail"),
        ("v=spf1 a -all", "pass"),
        ("v=spf1 a:host.example.org/24 -all", "pass"),
        ("v=spf1 mx -all", "pass"),
        ("v=spf1 include:_spf.provider.test -all", "pass"),
        ("v=spf1 include:nospf.test -all", "permerror"),
        ("v=spf1 redirect=_spf.provider.test", "pass"),
        ("v=spf1 exists:%{i}._ip.example.org -all", "pass"),
        ("v=spf1 ptr -all", "fail"),
        ("v=spf1 ip4:192.0.2.300 -all", "permerror"),
        ("v=spf1 bogus:x -all", "permerror"),
        ("v=spf1 redirect=a.test redirect=b.test", "permerror"),
        ("v=spf1 " + " ".join(f"include:n{i}.test" for i in range(11)) + " -all", "permerror"),
        ("v=spf1 a:v1.test a:v2.test a:v3.test -all", "permerror"),
    ],
)
def test_spf_mechanisms(record: str, expected: str) -> None:
    table = {
        "example.org": [record],
        "_spf.provider.test": ["v=spf1 ip4:192.0.2.0/24 -all"],
        "192.0.2.10._ip.example.org": [],
        **{f"n{i}.test": ["v=spf1 ?all"] for i in range(11)},
    }
    addresses = {
        "example.org": ["192.0.2.10"],
        "host.example.org": ["192.0.2.99"],
        "mx1.example.org": ["192.0.2.10"],
        "192.0.2.10._ip.example.org": ["127.0.0.2"],
    }
    assert spf(table, a=addresses, mx={"example.org": ["mx1.example.org"]}) == expected


def test_spf_edge_cases() -> None:
    assert spf({"example.org": ["v=spf1 -all", "v=spf1 +all"]}) == "permerror"  # two records
    assert spf({"example.org": ["some other TXT"]}) == "none"
    assert spf({}) == "none"
    assert spf({"example.org": ["v=spf1 ip6:2001:db8::/32 -all"]}, ip="2001:db8::1") == "pass"
    assert spf({"example.org": ["v=spf1 ip4:192.0.2.10 -all"]}, ip="::ffff:192.0.2.10") == "pass"
    assert spf({"example.org": ["v=spf1 ip4:192.0.2.10 -all"]}, ip="not-an-ip") == "none"
    # Null reverse-path: the HELO identity is checked (RFC 7208 §2.4).
    assert spf({"mx.example.org": ["v=spf1 ip4:192.0.2.10 -all"]}, mail_from="<>") == "pass"
    assert spf({"mx.example.org": ["v=spf1 ip4:192.0.2.10 -all"]}, mail_from="", helo=None) == "none"
    # Macros: %{l} local part, %{d} domain, %{ir} reversed IP.
    table = {"example.org": ["v=spf1 exists:%{l}.%{ir}.%{d}.check.test -all"]}
    assert (
        spf(table, mail_from="bob@example.org", a={"bob.10.2.0.192.example.org.check.test": ["127.0.0.2"]})
        == "pass"
    )
    assert (
        spf({"example.org": ["v=spf1 include:slow.test -all"]}, a={}, timeouts={"slow.test"}) == "temperror"
    )


def test_spf_include_loop_hits_the_lookup_limit() -> None:
    assert spf({"example.org": ["v=spf1 include:example.org -all"]}) == "permerror"
    assert spf({"example.org": ["v=spf1 redirect=example.org"]}) == "permerror"


def test_a_resolver_bug_is_a_temperror_not_a_crash() -> None:
    class Broken(StaticResolver):
        def txt(self, name: str) -> list[bytes]:
            raise RuntimeError("resolver bug")

    assert check_spf(PEER, "a@example.org", None, Broken({})) == "temperror"
    result = run(make_raw(), Broken({}), peer=PEER)
    assert (result.spf, result.dmarc, result.temperror) == ("temperror", "temperror", True)


def test_peer_ip_none_is_spf_none() -> None:
    assert check_spf(None, "a@example.org", "h", StaticResolver({"example.org": ["v=spf1 -all"]})) == "none"


def test_organizational_domain() -> None:
    assert organizational_domain("mail.example.co.uk") == "example.co.uk"
    assert organizational_domain("a.b.example.com.") == "example.com"
    assert organizational_domain("Example.ORG") == "example.org"
    assert organizational_domain("") == ""
    # An unknown TLD falls under the PSL's default rule "*": one label more than the TLD, so two
    # domains under it are two organisations (it used to be the bare TLD: everything aligned).
    assert organizational_domain("mail.evil.test") == "evil.test"
    assert organizational_domain("client.test") == "client.test"
    assert organizational_domain("x.internal") == "x.internal"


def test_no_relaxed_alignment_between_two_domains_under_an_unknown_tld() -> None:
    resolver = StaticResolver({"evil.test": ["v=spf1 ip4:192.0.2.10 -all"]})
    raw = make_raw("alice@client.test")
    result = run(raw, resolver, from_domain="client.test", peer=PEER, mail_from="x@evil.test")
    assert (result.spf, result.aligned) == ("pass", False)


def test_trusted_dmarc_verdict_counts_only_for_the_from_it_names(key: tuple[bytes, str]) -> None:
    """Finding 15: our MTA's dmarc=pass about another From (or about none) is not a verdict on ours."""
    for clause in ("dmarc=pass header.from=other.example", "dmarc=pass"):
        header = f"Authentication-Results: {OURS}; dkim=pass header.d=other.example; {clause}"
        resolver = StaticResolver({"_dmarc.example.org": ["v=DMARC1; p=reject"]})
        result = run(make_raw(extra_headers=[header]), resolver, peer=PEER, trusted=[OURS])
        assert (result.source, result.dmarc, result.aligned) == ("upstream", "fail", False), clause


# --- Resolvers ----------------------------------------------------------------------------------------


def test_static_resolver_records_queries_and_times_out() -> None:
    resolver = StaticResolver(
        {"A.Example.": [b"x", "y"]}, mx={"example": ["MX.Example."]}, timeouts={"slow.example"}
    )
    assert resolver.txt("a.example") == [b"x", b"y"]
    assert resolver.mx("example.") == ["mx.example"]
    assert resolver.a("nothing.example") == []
    with pytest.raises(DnsTempError):
        resolver.txt("slow.example")
    assert resolver.queries == [
        ("TXT", "a.example"),
        ("MX", "example"),
        ("A", "nothing.example"),
        ("TXT", "slow.example"),
    ]


def test_dkimpy_dnsfunc_adapter() -> None:
    fn = dkimpy_dnsfunc(StaticResolver({"s._domainkey.example.org": ["v=DKIM1; p=abc", "second"]}))
    assert fn(b"s._domainkey.example.org.", timeout=5) == b"v=DKIM1; p=abc"
    assert fn(b"missing.example.org.") == b""


@contextmanager
def tiny_dns_server(records: Mapping[str, bytes], *, answer: bool = True) -> Iterator[int]:
    """A UDP DNS server on 127.0.0.1:<free port> serving TXT records; bounded and self-stopping."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(0.05)
    stop = threading.Event()

    def serve() -> None:
        for _ in range(400):  # at most ~20 s, then the server stops by itself
            if stop.is_set():
                break
            try:
                data, peer = sock.recvfrom(4096)
            except TimeoutError:
                continue
            if not answer:
                continue  # a server that never replies: the client must time out
            query = dns.message.from_wire(data)
            response = dns.message.make_response(query)
            question = query.question[0]
            name = question.name.to_text(omit_final_dot=True).lower()
            if name in records and question.rdtype == dns.rdatatype.TXT:
                response.answer.append(
                    dns.rrset.from_text(question.name, 60, "IN", "TXT", '"' + records[name].decode() + '"')
                )
            elif name not in records:
                response.set_rcode(dns.rcode.NXDOMAIN)
            response.flags |= dns.flags.AA
            sock.sendto(response.to_wire(), peer)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield sock.getsockname()[1]
    finally:
        stop.set()
        thread.join(2)
        sock.close()


def test_nameserver_resolver_against_a_loopback_server() -> None:
    with tiny_dns_server({"_dmarc.example.org": b"v=DMARC1; p=reject"}) as port:
        resolver = NameserverResolver([f"127.0.0.1:{port}"], timeout=2.0)
        assert resolver.txt("_dmarc.example.org") == [b"v=DMARC1; p=reject"]
        assert resolver.txt("nothing.example.org") == []  # NXDOMAIN
        assert resolver.a("_dmarc.example.org") == []  # NODATA


def test_nameserver_resolver_timeout_is_temperror() -> None:
    with tiny_dns_server({}, answer=False) as port:
        resolver = NameserverResolver([f"127.0.0.1:{port}"], timeout=0.3)
        with pytest.raises(DnsTempError):
            resolver.txt("example.org")


def test_nameserver_resolver_rejects_host_names() -> None:
    with pytest.raises(ValueError):
        NameserverResolver(["dns.example.org:53"])
