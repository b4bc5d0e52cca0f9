"""DKIM signing: byte-identical to dkimpy, verified by dkimpy and by OpenDKIM.

No test touches the machine's DNS: dkimpy gets a static-table ``dnsfunc``; OpenDKIM's
``opendkim-testmsg`` gets a resolver shim (LD_PRELOAD) that sends its ``res_nquery`` to
a stub DNS server in this process, which only knows the test keys.
"""

from __future__ import annotations

import base64
import email.header
import os
import re
import shutil
import socket
import subprocess
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import dkim
import dkim.util
import dns.message
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa
from dkim.canonicalization import Relaxed
from dns.rdtypes.ANY.TXT import TXT
from hypothesis import given, settings
from hypothesis import strategies as st

from mailbridge.outbound.sign import (
    OVERSIGNED_HEADERS,
    SIGNED_HEADERS,
    DkimKey,
    DkimSigner,
    dns_txt_record,
    generate_ed25519_key,
    generate_rsa_key,
    public_txt_value,
    relaxed_body,
    relaxed_headers,
    split_message,
)

DOMAIN = "riverside-clinic.test"  # .test is reserved: never resolvable for real
RSA_SELECTOR = "mb2024r"
ED_SELECTOR = "mb2024e"
T0 = 1_709_630_100  # fixed t= for deterministic comparisons
CANON = (b"relaxed", b"relaxed")


def crlf(*lines: str | bytes) -> bytes:
    return b"\r\n".join(x.encode() if isinstance(x, str) else x for x in lines)


# --- test messages --------------------------------------------------------------------

ASCII_NOTIFICATION = crlf(
    'From: "Riverside Family Practice" <noreply@riverside-clinic.test>',
    "To: patient@example.net",
    'Reply-To: "Riverside Family Practice" <replies+t-8f3a@riverside-clinic.test>',
    "Subject: You have a new secure message",
    "Date: Tue, 05 Mar 2024 09:15:00 +0000",
    "Message-ID: <n-8f3a.1709630100@riverside-clinic.test>",
    "MIME-Version: 1.0",
    'Content-Type: text/plain; charset="utf-8"',
    "Content-Transfer-Encoding: 7bit",
    "Auto-Submitted: auto-generated",
    "",
    "Hello,",
    "",
    "You have a new secure message from Riverside Family Practice.",
    "Sign in to read it: https://portal.riverside-clinic.test/m/8f3a",
    "",
)

_SUBJECT_EW = email.header.Header(
    "Neue Nachricht von Dr. Müller – Ihr Befund vom 5. März ist jetzt verfügbar",
    "utf-8",
    header_name="Subject",
).encode()
_FROM_EW = email.header.Header("Praxis Dr. Müller & Kollegen", "utf-8").encode()
UTF8_SUBJECT = crlf(
    f"From: {_FROM_EW} <noreply@riverside-clinic.test>",
    "To: =?utf-8?q?J=C3=B6rg_Stra=C3=9Fer?= <joerg@example.net>",
    "Subject: " + _SUBJECT_EW.replace("\n", "\r\n"),
    "Date: Wed, 06 Mar 2024 10:00:00 +0100",
    "Message-ID: <n-2b91@riverside-clinic.test>",
    "MIME-Version: 1.0",
    "Content-Type: text/plain; charset=utf-8",
    "Content-Transfer-Encoding: quoted-printable",
    "",
    "Guten Tag Herr Stra=C3=9Fer,",
    "",
    "Ihr Befund ist verf=C3=BCgbar.",
    "",
)
assert b"\r\n =?utf-8?" in UTF8_SUBJECT  # the encoded-word subject really is folded

LONG_FOLDED = crlf(
    "Received: from app1.internal (app1.internal [10.0.0.5]) by mx.riverside-clinic.test",
    "\twith ESMTP id 4Tq9; Thu, 07 Mar 2024 08:00:00 +0000",
    "from: Riverside Family Practice <noreply@riverside-clinic.test>",
    "To: alice@example.net, bob@example.net, carol@example.org,",
    "  dave@example.org, erin@example.com,\t frank@example.com",
    "SUBJECT:   Re:  Re:   Your   appointment   reminder   for   next   week  \t",
    "Date: Thu, 07 Mar 2024 08:00:00 +0000",
    "Message-Id: <n-77c1@riverside-clinic.test>",
    "In-Reply-To: <t-1@riverside-clinic.test>",
    "References: <t-1@riverside-clinic.test> <t-2@riverside-clinic.test>",
    "\t<t-3@riverside-clinic.test> <t-4@riverside-clinic.test>",
    " <t-5@riverside-clinic.test>",
    "\t <t-6@riverside-clinic.test> <t-7@riverside-clinic.test> <t-8@riverside-clinic.test>",
    "X-Mailer: mailbridge",
    "Content-Type: text/plain;",
    '\tcharset="us-ascii"',
    "",
    "Reminder: " + "appointment details follow. " * 12,
    "",
)

TRAILING_BLANK_LINES = crlf(
    "From: noreply@riverside-clinic.test",
    "To: patient@example.net",
    "Subject: Trailing whitespace and blank lines",
    "Date: Fri, 08 Mar 2024 12:00:00 +0000",
    "Message-ID: <n-blank@riverside-clinic.test>",
    "",
    "Line one with trailing spaces   ",
    "Line\twith \t mixed   whitespace\t",
    "",
    "",
    "Last line",
    "",
    "",
    "",
    "",
)

EMPTY_BODY = crlf(
    "From: noreply@riverside-clinic.test",
    "To: patient@example.net",
    "Subject: (no body)",
    "Date: Sat, 09 Mar 2024 12:00:00 +0000",
    "Message-ID: <n-empty@riverside-clinic.test>",
    "",
    "",
)

MESSAGES = {
    "ascii": ASCII_NOTIFICATION,
    "utf8-subject": UTF8_SUBJECT,
    "long-folded": LONG_FOLDED,
    "trailing-blank-lines": TRAILING_BLANK_LINES,
    "empty-body": EMPTY_BODY,
}

CORE = list(SIGNED_HEADERS)
OVER = [b"from", b"subject", b"reply-to"]
EXPECTED_H = {
    "ascii": [*CORE, b"mime-version", b"content-type", b"auto-submitted", *OVER],
    "utf8-subject": [*CORE, b"mime-version", b"content-type", *OVER],
    "long-folded": [*CORE, b"content-type", *OVER],
    "trailing-blank-lines": [*CORE, *OVER],
    "empty-body": [*CORE, *OVER],
}


# --- keys -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Keys:
    rsa_pem: bytes
    ed_pem: bytes
    other_rsa_pem: bytes
    dns: dict[str, bytes] = field(default_factory=dict)

    @property
    def rsa(self) -> DkimKey:
        return DkimKey(DOMAIN, RSA_SELECTOR, self.rsa_pem)

    @property
    def ed(self) -> DkimKey:
        return DkimKey(DOMAIN, ED_SELECTOR, self.ed_pem, "ed25519-sha256")

    def dkimpy_ed_private(self) -> bytes:
        """dkimpy/PyNaCl want the raw 32-byte Ed25519 seed, base64."""
        key = serialization.load_pem_private_key(self.ed_pem, password=None)
        raw = key.private_bytes(
            serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
        )
        return base64.b64encode(raw)

    def dnsfunc(self, name: bytes | str, timeout: int = 5) -> bytes | None:
        """dkimpy's DNS hook, answered from a static table (never the machine's DNS)."""
        if isinstance(name, bytes):
            name = name.decode("ascii")
        return self.dns.get(name.lower().rstrip(".") + ".")


@pytest.fixture(scope="module")
def keys() -> Keys:
    rsa_pem, ed_pem = generate_rsa_key(), generate_ed25519_key()
    return Keys(
        rsa_pem,
        ed_pem,
        generate_rsa_key(),
        {
            f"{RSA_SELECTOR}._domainkey.{DOMAIN}.": public_txt_value(rsa_pem),
            f"{ED_SELECTOR}._domainkey.{DOMAIN}.": public_txt_value(ed_pem),
        },
    )


def fixed_clock() -> int:
    return T0


def split_signatures(signed: bytes, message: bytes) -> list[bytes]:
    """The DKIM-Signature fields our signer prepended to *message*, top first."""
    assert signed.endswith(message)
    block = signed[: len(signed) - len(message)]
    fields = re.split(rb"(?=^DKIM-Signature:)", block, flags=re.M)
    return [f for f in fields if f]


def tags(sig_field: bytes) -> dict[bytes, bytes]:
    value = sig_field.split(b":", 1)[1]
    return dict(dkim.util.parse_tag_value(re.sub(rb"\r?\n[ \t]", b" ", value).strip()))


def verifies(message: bytes, index: int, keys: Keys) -> bool:
    """dkimpy's verdict on the index-th DKIM-Signature (DKIM.verify raises on some failures)."""
    try:
        return bool(dkim.DKIM(message).verify(index, dnsfunc=keys.dnsfunc))
    except dkim.DKIMException:
        return False


def h_list(sig_field: bytes) -> list[bytes]:
    return [x.strip() for x in tags(sig_field)[b"h"].split(b":")]


def dkimpy_sign(message: bytes, selector: str, private: bytes, algorithm: bytes, h: list[bytes]) -> bytes:
    return bytes(
        dkim.sign(
            message,
            selector.encode(),
            DOMAIN.encode(),
            private,
            canonicalize=CANON,
            signature_algorithm=algorithm,
            include_headers=h,
        )
    )


# --- 1. byte-identical to dkimpy --------------------------------------------------------


@pytest.mark.parametrize("name", MESSAGES)
def test_signatures_byte_identical_to_dkimpy(name: str, keys: Keys, monkeypatch: pytest.MonkeyPatch) -> None:
    message = MESSAGES[name]
    signed = DkimSigner([keys.rsa, keys.ed], clock=fixed_clock).sign(message)
    rsa_field, ed_field = split_signatures(signed, message)
    assert h_list(rsa_field) == h_list(ed_field) == EXPECTED_H[name]

    # dkimpy reads the clock itself: pin it to the same t= for the reference run.
    monkeypatch.setattr(dkim.time, "time", lambda: float(T0))
    h = EXPECTED_H[name]
    ref_rsa = dkimpy_sign(message, RSA_SELECTOR, keys.rsa_pem, b"rsa-sha256", h)
    ref_ed = dkimpy_sign(message, ED_SELECTOR, keys.dkimpy_ed_private(), b"ed25519-sha256", h)
    assert rsa_field == ref_rsa
    assert ed_field == ref_ed
    assert signed == ref_rsa + ref_ed + message
    assert DkimSigner([keys.rsa], clock=fixed_clock).sign(message) == ref_rsa + message


def test_lf_message_gets_lf_fields_identical_to_dkimpy(keys: Keys, monkeypatch: pytest.MonkeyPatch) -> None:
    message = ASCII_NOTIFICATION.replace(b"\r\n", b"\n")
    signed = DkimSigner([keys.rsa], clock=fixed_clock).sign(message)
    monkeypatch.setattr(dkim.time, "time", lambda: float(T0))
    ref = dkim.sign(
        message,
        RSA_SELECTOR.encode(),
        DOMAIN.encode(),
        keys.rsa_pem,
        canonicalize=CANON,
        include_headers=EXPECTED_H["ascii"],
        linesep=b"\n",
    )
    assert signed == ref + message
    assert b"\r" not in signed


def test_pkcs8_rsa_key_signs_like_pkcs1(keys: Keys) -> None:
    private = serialization.load_pem_private_key(keys.rsa_pem, password=None)
    pkcs8 = private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    assert pkcs8.startswith(b"-----BEGIN PRIVATE KEY-----")
    a = DkimSigner([keys.rsa], clock=fixed_clock).sign(ASCII_NOTIFICATION)
    b = DkimSigner([DkimKey(DOMAIN, RSA_SELECTOR, pkcs8)], clock=fixed_clock).sign(ASCII_NOTIFICATION)
    assert a == b


def test_signature_primitive_is_not_dkimpys(keys: Keys, monkeypatch: pytest.MonkeyPatch) -> None:
    """The RSA arithmetic goes through OpenSSL: dkimpy's pure-Python one is never called."""

    def forbidden(*args: object) -> bytes:
        raise AssertionError("dkimpy's pure-Python RSA was used")

    monkeypatch.setattr(dkim, "RSASSA_PKCS1_v1_5_sign", forbidden)
    monkeypatch.setattr(dkim.crypto, "RSASSA_PKCS1_v1_5_sign", forbidden)
    signed = DkimSigner([keys.rsa, keys.ed]).sign(ASCII_NOTIFICATION)
    monkeypatch.undo()
    assert verifies(signed, 0, keys)
    assert verifies(signed, 1, keys)


def test_default_clock_is_now(keys: Keys) -> None:
    import time

    before = int(time.time())
    (field_,) = split_signatures(DkimSigner([keys.rsa]).sign(EMPTY_BODY), EMPTY_BODY)
    assert before <= int(tags(field_)[b"t"]) <= int(time.time())


def test_concurrent_signing_is_consistent(keys: Keys) -> None:
    signer = DkimSigner([keys.rsa, keys.ed], clock=fixed_clock)
    messages = list(MESSAGES.values()) * 8
    expected = [signer.sign(m) for m in messages]
    with ThreadPoolExecutor(max_workers=4) as pool:
        assert list(pool.map(signer.sign, messages)) == expected


# --- 2. dkimpy verifies; tampering breaks both signatures -------------------------------


@pytest.mark.parametrize("name", MESSAGES)
def test_dkimpy_verifies_both_signatures(name: str, keys: Keys) -> None:
    signed = DkimSigner([keys.rsa, keys.ed]).sign(MESSAGES[name])
    verifier = dkim.DKIM(signed)
    assert verifier.verify(0, dnsfunc=keys.dnsfunc)
    assert verifier.signature_fields[b"a"] == b"rsa-sha256"
    assert verifier.verify(1, dnsfunc=keys.dnsfunc)
    assert verifier.signature_fields[b"a"] == b"ed25519-sha256"
    assert dkim.verify(signed, dnsfunc=keys.dnsfunc)


def _insert_after_signatures(signed: bytes, header: bytes) -> bytes:
    head, sep, rest = signed.partition(b"\r\nFrom: ")
    if not sep:
        head, sep, rest = signed.partition(b"\r\nfrom: ")
    return head + b"\r\n" + header + b"\r\n" + sep[2:] + rest


def _append_header(signed: bytes, header: bytes) -> bytes:
    head, sep, body = signed.partition(b"\r\n\r\n")
    return head + b"\r\n" + header + sep + body


TAMPERS: dict[str, Callable[[bytes], bytes]] = {
    "subject-changed": lambda m: m.replace(b"Subject: You have", b"Subject: You had", 1),
    "second-from-on-top": lambda m: _insert_after_signatures(m, b"From: attacker@evil.example"),
    "second-from-at-bottom": lambda m: _append_header(m, b"From: attacker@evil.example"),
    "second-subject": lambda m: _append_header(m, b"Subject: Please wire money"),
    "second-reply-to": lambda m: _append_header(m, b"Reply-To: attacker@evil.example"),
    "body-altered": lambda m: m.replace(b"portal.riverside-clinic.test", b"portal.evil.example"),
    "body-appended": lambda m: m + b"Click here: https://evil.example\r\n",
}


@pytest.mark.parametrize("tamper", TAMPERS)
def test_tampering_breaks_both_signatures(tamper: str, keys: Keys) -> None:
    signed = DkimSigner([keys.rsa, keys.ed]).sign(ASCII_NOTIFICATION)
    tampered = TAMPERS[tamper](signed)
    assert tampered != signed
    assert not verifies(tampered, 0, keys)
    assert not verifies(tampered, 1, keys)


def test_adding_absent_reply_to_breaks_signature(keys: Keys) -> None:
    signed = DkimSigner([keys.rsa, keys.ed]).sign(TRAILING_BLANK_LINES)
    tampered = _append_header(signed, b"Reply-To: attacker@evil.example")
    assert not verifies(tampered, 0, keys)
    assert not verifies(tampered, 1, keys)


def test_unsigned_header_may_be_added(keys: Keys) -> None:
    """Control for the tamper tests: MTAs add Received etc. without breaking anything."""
    signed = DkimSigner([keys.rsa, keys.ed]).sign(ASCII_NOTIFICATION)
    relayed = b"Received: from mx.example.net by mx2.example.net; Tue, 5 Mar 2024\r\n" + signed
    assert verifies(relayed, 0, keys)
    assert verifies(relayed, 1, keys)


# --- 3. OpenDKIM verifies independently ------------------------------------------------

_RESOLVER_SHIM_C = r"""
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <dlfcn.h>
#include <netinet/in.h>
#include <resolv.h>
#include <stdlib.h>

/* libopendkim looks keys up with res_nquery(); point it at the test stub on
   127.0.0.1:$DKIM_TEST_DNS_PORT.  Without that variable, fail the lookup: never
   fall back to the machine's resolver. */
int res_nquery(res_state statp, const char *dname, int class, int type,
               unsigned char *answer, int anslen)
{
    static int (*real)(res_state, const char *, int, int, unsigned char *, int);
    const char *port = getenv("DKIM_TEST_DNS_PORT");
    if (real == NULL)
        real = (int (*)(res_state, const char *, int, int, unsigned char *, int))
            dlsym(RTLD_NEXT, "res_nquery");
    if (real == NULL || port == NULL)
        return -1;
    statp->nscount = 1;
    statp->nsaddr_list[0].sin_family = AF_INET;
    statp->nsaddr_list[0].sin_port = htons((unsigned short) atoi(port));
    statp->nsaddr_list[0].sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    statp->retrans = 2;
    statp->retry = 1;
    return real(statp, dname, class, type, answer, anslen);
}
"""


class StubDns:
    """A UDP DNS server on 127.0.0.1 answering TXT queries from a table, NXDOMAIN otherwise."""

    def __init__(self, table: dict[str, bytes]) -> None:
        self.table = {k.lower(): v for k, v in table.items()}
        self.queries: list[str] = []
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._sock.bind(("127.0.0.1", 0))
        self._sock.settimeout(0.1)
        self.port: int = self._sock.getsockname()[1]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="stub-dns", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                data, addr = self._sock.recvfrom(4096)
                query = dns.message.from_wire(data)
            except TimeoutError:
                continue
            except Exception:
                continue
            response = dns.message.make_response(query)
            question = query.question[0]
            qname = question.name.to_text().lower()
            self.queries.append(qname)
            value = self.table.get(qname)
            if value is None or question.rdtype != dns.rdatatype.TXT:
                response.set_rcode(dns.rcode.NXDOMAIN)
            else:
                chunks = [value[i : i + 255] for i in range(0, len(value), 255)]
                rdata = TXT(dns.rdataclass.IN, dns.rdatatype.TXT, chunks)
                response.answer.append(dns.rrset.from_rdata(question.name, 60, rdata))
            self._sock.sendto(response.to_wire(), addr)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._sock.close()


@dataclass
class OpenDkim:
    env: dict[str, str]
    workdir: Path
    dns: StubDns

    def verify(self, message: bytes) -> subprocess.CompletedProcess[bytes]:
        """``opendkim-testmsg -C -t DIR`` with the message on stdin: exit 0 = verified."""
        return subprocess.run(
            ["opendkim-testmsg", "-C", "-t", str(self.workdir)],
            input=message,
            env=self.env,
            capture_output=True,
            timeout=60,
            check=False,
        )


@pytest.fixture(scope="module")
def opendkim(keys: Keys, tmp_path_factory: pytest.TempPathFactory) -> Iterator[OpenDkim]:
    if shutil.which("opendkim-testmsg") is None:
        pytest.skip("opendkim-testmsg not installed (Debian package opendkim-tools; .ci/run installs it)")
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        pytest.skip("no C compiler to build the resolver shim that keeps opendkim-testmsg off real DNS")
    workdir = tmp_path_factory.mktemp("opendkim")
    source = workdir / "resolver_shim.c"
    source.write_text(_RESOLVER_SHIM_C)
    shim = workdir / "resolver_shim.so"
    subprocess.run([cc, "-shared", "-fPIC", "-O2", "-o", str(shim), str(source), "-ldl"], check=True)
    stub = StubDns(keys.dns)
    env = dict(os.environ, LD_PRELOAD=str(shim), DKIM_TEST_DNS_PORT=str(stub.port))
    try:
        yield OpenDkim(env, workdir, stub)
    finally:
        stub.close()


def _only(signed: bytes, message: bytes, index: int) -> bytes:
    """*message* carrying only the index-th of our signatures."""
    return split_signatures(signed, message)[index] + message


@pytest.mark.parametrize("name", ["ascii", "utf8-subject", "long-folded", "trailing-blank-lines"])
def test_opendkim_verifies_rsa_signature(name: str, keys: Keys, opendkim: OpenDkim) -> None:
    message = MESSAGES[name]
    signed = DkimSigner([keys.rsa, keys.ed]).sign(message)
    before = len(opendkim.dns.queries)
    result = opendkim.verify(_only(signed, message, 0))
    assert result.returncode == 0, result.stderr.decode()
    # the key really came from the stub (so the verification used our key, hermetically)
    assert opendkim.dns.queries[before:] == [f"{RSA_SELECTOR}._domainkey.{DOMAIN}."]


def test_opendkim_verifies_ed25519_signature(keys: Keys, opendkim: OpenDkim) -> None:
    signed = DkimSigner([keys.rsa, keys.ed]).sign(ASCII_NOTIFICATION)
    before = len(opendkim.dns.queries)
    result = opendkim.verify(_only(signed, ASCII_NOTIFICATION, 1))
    assert result.returncode == 0, result.stderr.decode()
    assert opendkim.dns.queries[before:] == [f"{ED_SELECTOR}._domainkey.{DOMAIN}."]


def test_opendkim_rejects_tampered_and_wrong_key(keys: Keys, opendkim: OpenDkim) -> None:
    """Controls: the verifier does fail, so the passes above mean something."""
    signed = DkimSigner([keys.rsa]).sign(ASCII_NOTIFICATION)
    result = opendkim.verify(TAMPERS["subject-changed"](signed))
    assert result.returncode != 0 and b"Bad signature" in result.stderr

    ed_signed = DkimSigner([keys.rsa, keys.ed]).sign(ASCII_NOTIFICATION)
    result = opendkim.verify(TAMPERS["body-altered"](_only(ed_signed, ASCII_NOTIFICATION, 1)))
    assert result.returncode != 0 and b"Bad signature" in result.stderr

    # signed with another key under the same selector: DNS has the real one
    impostor = DkimSigner([DkimKey(DOMAIN, RSA_SELECTOR, keys.other_rsa_pem)]).sign(ASCII_NOTIFICATION)
    result = opendkim.verify(impostor)
    assert result.returncode != 0 and b"Bad signature" in result.stderr


# --- 4. tags ----------------------------------------------------------------------------


@pytest.mark.parametrize("name", MESSAGES)
def test_tags(name: str, keys: Keys) -> None:
    message = MESSAGES[name]
    fields = split_signatures(DkimSigner([keys.rsa, keys.ed], clock=fixed_clock).sign(message), message)
    assert [tags(f)[b"a"] for f in fields] == [b"rsa-sha256", b"ed25519-sha256"]
    for f in fields:
        t = tags(f)
        assert b"l" not in t
        assert t[b"c"] == b"relaxed/relaxed"
        assert t[b"d"] == DOMAIN.encode()
        assert t[b"t"] == str(T0).encode()
        h = h_list(f)
        assert h.count(b"from") == 2
        assert h.count(b"subject") == 2
        assert h.count(b"reply-to") == 2
        assert set(OVERSIGNED_HEADERS) == {b"from", b"subject", b"reply-to"}
        assert all(len(line) <= 78 for line in f.split(b"\r\n"))


# --- 5. DNS records ---------------------------------------------------------------------

_ZONE_LINE = re.compile(r'^(?P<name>\S+) IN TXT (?P<strings>"[^"]{1,255}"(?: "[^"]{1,255}")*)$')


def _parse_zone_line(line: str) -> tuple[str, dict[bytes, bytes]]:
    m = _ZONE_LINE.match(line)
    assert m is not None, line
    value = "".join(re.findall(r'"([^"]*)"', m["strings"]))
    return m["name"], dict(dkim.util.parse_tag_value(value.encode()))


def test_dns_txt_record_rsa(keys: Keys) -> None:
    line = dns_txt_record(keys.rsa_pem, RSA_SELECTOR, DOMAIN)
    name, record = _parse_zone_line(line)
    assert name == f"{RSA_SELECTOR}._domainkey.{DOMAIN}."
    assert line.count('"') == 4  # 2048-bit key: two character-strings
    assert record[b"v"] == b"DKIM1" and record[b"k"] == b"rsa"
    public = serialization.load_der_public_key(base64.b64decode(record[b"p"]))
    private = serialization.load_pem_private_key(keys.rsa_pem, password=None)
    assert isinstance(public, rsa.RSAPublicKey) and isinstance(private, rsa.RSAPrivateKey)
    assert public.public_numbers() == private.public_key().public_numbers()
    assert public.key_size == 2048
    joined = "".join(re.findall(r'"([^"]*)"', line)).encode()
    assert joined == public_txt_value(keys.rsa_pem)
    # dkimpy accepts the value as a key record
    assert dkim.evaluate_pk(b"x", joined)


def test_dns_txt_record_ed25519(keys: Keys) -> None:
    name, record = _parse_zone_line(dns_txt_record(keys.ed_pem, ED_SELECTOR, DOMAIN + "."))
    assert name == f"{ED_SELECTOR}._domainkey.{DOMAIN}."
    assert record[b"k"] == b"ed25519"
    raw = base64.b64decode(record[b"p"])
    private = serialization.load_pem_private_key(keys.ed_pem, password=None)
    assert isinstance(private, ed25519.Ed25519PrivateKey)
    assert raw == private.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )
    assert len(raw) == 32


def test_generated_key_formats(keys: Keys) -> None:
    assert keys.rsa_pem.startswith(b"-----BEGIN RSA PRIVATE KEY-----")  # PKCS#1
    assert keys.ed_pem.startswith(b"-----BEGIN PRIVATE KEY-----")  # PKCS#8


# --- input validation -------------------------------------------------------------------


def test_rejects_bad_key_sets(keys: Keys) -> None:
    with pytest.raises(ValueError, match="rsa-sha256 key"):
        DkimSigner([keys.ed])
    with pytest.raises(ValueError, match="rsa-sha256 key"):
        DkimSigner([])
    with pytest.raises(ValueError, match="needs an RSA key"):
        DkimSigner([DkimKey(DOMAIN, "x", keys.ed_pem)])
    with pytest.raises(ValueError, match="needs an Ed25519 key"):
        DkimSigner([keys.rsa, DkimKey(DOMAIN, "x", keys.rsa_pem, "ed25519-sha256")])
    with pytest.raises(ValueError, match="unreadable"):
        DkimSigner([DkimKey(DOMAIN, "x", b"not a key")])
    small = rsa.generate_private_key(public_exponent=65537, key_size=1024).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    with pytest.raises(ValueError, match="at least 2048"):
        DkimSigner([DkimKey(DOMAIN, "x", small)])
    with pytest.raises(ValueError, match="ASCII"):
        DkimSigner([DkimKey("müller.test", "x", keys.rsa_pem)])


def test_rsa_first_whatever_the_key_order(keys: Keys) -> None:
    a = DkimSigner([keys.ed, keys.rsa], clock=fixed_clock).sign(EMPTY_BODY)
    assert a == DkimSigner([keys.rsa, keys.ed], clock=fixed_clock).sign(EMPTY_BODY)


@pytest.mark.parametrize(
    "message",
    [
        EMPTY_BODY.replace(b"From: noreply@riverside-clinic.test\r\n", b""),
        b"From: a@riverside-clinic.test\r\n" + EMPTY_BODY,
    ],
    ids=["no-from", "two-from"],
)
def test_rejects_message_without_exactly_one_from(message: bytes, keys: Keys) -> None:
    with pytest.raises(ValueError, match="exactly one From"):
        DkimSigner([keys.rsa]).sign(message)


# Bytes where canonicalisation has choices to make: spaces, tabs, CR, LF, CRLF, other whitespace.
_WSP_HEAVY = st.lists(
    st.sampled_from([b" ", b"\t", b"\r\n", b"\r", b"\n", b"a", b"\xc3\xa9", b"\x0b", b"\x0c", b"  \t "]),
    max_size=60,
).map(b"".join)


@settings(max_examples=400, deadline=None)
@given(body=_WSP_HEAVY | st.binary(max_size=200))
def test_relaxed_body_equals_dkimpys(body: bytes) -> None:
    assert relaxed_body(body) == Relaxed.canonicalize_body(body)


@settings(max_examples=400, deadline=None)
@given(
    fields=st.lists(
        st.tuples(_WSP_HEAVY | st.binary(max_size=20), _WSP_HEAVY | st.binary(max_size=80)), max_size=6
    )
)
def test_relaxed_headers_equal_dkimpys(fields: list[tuple[bytes, bytes]]) -> None:
    assert relaxed_headers(fields) == Relaxed.canonicalize_headers(fields)


_MESSAGE_PIECES = st.lists(
    st.sampled_from(
        [
            b"From: a@x.test",
            b"Subject: s",
            b" folded",
            b"\tfolded",
            b"X:y",
            b"",
            b"body",
            b"  ",
            b"From x",
            b"::",
        ]
    )
    | st.binary(max_size=10),
    max_size=12,
)


@settings(max_examples=600, deadline=None)
@given(
    pieces=_MESSAGE_PIECES,
    ends=st.lists(st.sampled_from([b"\r\n", b"\r\n", b"\r\n", b"\n", b"\r"]), min_size=12, max_size=12),
)
def test_split_message_equals_dkimpys_parse(pieces: list[bytes], ends: list[bytes]) -> None:
    message = b"".join(piece + end for piece, end in zip(pieces, ends, strict=False))
    try:
        expected: object = dkim.rfc822_parse(message)
    except Exception as exc:  # MessageFormatError, or IndexError for a first line that is a continuation
        expected = type(exc)
    try:
        found: object = split_message(message)
    except Exception as exc:
        found = type(exc)
    assert found == expected


def test_split_message_of_a_composed_notification() -> None:
    message = b"From: a@x.test\r\nSubject: s\r\n folded\r\n\r\nline\r\n\r\n-- \r\nend\r\n"
    assert split_message(message) == dkim.rfc822_parse(message)
