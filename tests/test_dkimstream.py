"""Streamed DKIM body hashes equal dkimpy's, so a 100 MB signed message is verified without loading it."""

from __future__ import annotations

import hashlib
import io
import os
import re
from pathlib import Path

import dkim
from dkim.canonicalization import Relaxed, Simple
from hypothesis import given, settings
from hypothesis import strategies as st

from mailbridge.inbound.authenticate import authenticate
from mailbridge.inbound.dkimstream import BodyDigests, canonical_body_digest
from mailbridge.inbound.dns import StaticResolver
from mailbridge.inbound.parse import parse_bytes
from mailbridge.outbound.sign import generate_rsa_key, public_txt_value

PIECES = st.sampled_from([b"a", b" ", b"\t", b"\r\n", b"\n", b"word  x", b" \t ", b"\r", b"."])


@settings(max_examples=500, deadline=None)
@given(st.lists(PIECES, max_size=20).map(b"".join))
def test_streamed_canonical_body_equals_dkimpy(body: bytes) -> None:
    as_dkimpy_sees_it = b"\r\n".join(re.split(b"\r?\n", body))  # dkimpy's rfc822_parse
    lines = io.BytesIO(body).readlines()
    for relaxed, algorithm in ((False, Simple), (True, Relaxed)):
        expected = algorithm.canonicalize_body(as_dkimpy_sees_it)
        digest, length = canonical_body_digest(lines, relaxed, hashlib.sha256)
        assert (digest, length) == (hashlib.sha256(expected).digest(), len(expected))


def _signed_large(tmp_path: Path, key: bytes, canon: bytes) -> Path:
    body = b"".join(os.urandom(57).hex().encode() + b"  \t\r\n" for _ in range(50_000)) + b"\r\n\r\n"
    message = (
        b"From: Alice <alice@client.test>\r\nTo: reply@reply.acme.test\r\nSubject: big scan\r\n"
        b"Message-ID: <big@client.test>\r\n\r\n" + body
    )
    signature = dkim.sign(
        message,
        b"s1",
        b"client.test",
        key,
        canonicalize=(canon, canon),
        include_headers=[b"from", b"to", b"subject"],
    )
    path = tmp_path / f"big-{canon.decode()}.eml"
    path.write_bytes(signature + message)
    return path


def test_large_signed_message_verified_from_disk(tmp_path: Path) -> None:
    key = generate_rsa_key(2048)
    resolver = StaticResolver({"s1._domainkey.client.test": [public_txt_value(key)]})
    for canon in (b"relaxed", b"simple"):
        path = _signed_large(tmp_path, key, canon)
        header_block = path.read_bytes().split(b"\r\n\r\n", 1)[0] + b"\r\n\r\n"
        kwargs = {
            "from_domain": "client.test",
            "peer_ip": None,
            "mail_from": "alice@client.test",
            "helo": None,
            "resolver": resolver,
        }
        streamed = authenticate(header_block, parse_bytes(header_block), body_path=path, **kwargs)  # type: ignore[arg-type]
        assert streamed.dkim == "pass" and streamed.aligned
        # the digests the prescan's read takes: the verifier then never opens the file (it is absent)
        taken = BodyDigests()
        with open(path, "rb") as handle:
            while block := handle.read(65536):
                taken.feed(block)
        ridden = authenticate(
            header_block,
            parse_bytes(header_block),
            body_path=tmp_path / "absent.eml",
            body_digests=taken.digests(),
            **kwargs,  # type: ignore[arg-type]
        )
        assert ridden.dkim == "pass" and ridden.aligned
        whole = authenticate(path.read_bytes(), parse_bytes(path.read_bytes()), **kwargs)  # type: ignore[arg-type]
        assert whole.dkim == "pass"
        with open(path, "r+b") as handle:  # one byte of the body changes
            handle.seek(-40, os.SEEK_END)
            handle.write(b"X")
        tampered = authenticate(header_block, parse_bytes(header_block), body_path=path, **kwargs)  # type: ignore[arg-type]
        assert tampered.dkim == "fail"


@settings(max_examples=500, deadline=None, derandomize=True, database=None)
@given(st.lists(PIECES, max_size=30).map(b"".join), st.lists(st.integers(0, 80), max_size=5))
def test_body_digests_in_pieces_equal_the_line_by_line_ones(body: bytes, cuts: list[int]) -> None:
    """The digests taken while the prescan's read passes (runs of lines, cut anywhere) equal the
    line-by-line ones, for both canonicalisations."""
    head = (
        b"From: a@client.test\r\nDKIM-Signature: v=1; a=rsa-sha256; c=relaxed/relaxed; d=c.test;\r\n"
        b" s=s1; bh=x; b=y\r\nDKIM-Signature: v=1; a=rsa-sha1; d=c.test; s=s1; bh=x; b=y\r\n\r\n"
    )
    raw = head + body
    digests = BodyDigests()
    start = 0
    for cut in sorted(cuts):
        digests.feed(raw[start:cut])
        start = max(start, cut)
    digests.feed(raw[start:])
    lines = io.BytesIO(body).readlines()
    assert digests.digests() == {
        (True, b"rsa-sha256"): canonical_body_digest(lines, True, hashlib.sha256),
        (False, b"rsa-sha1"): canonical_body_digest(lines, False, hashlib.sha1),
    }
