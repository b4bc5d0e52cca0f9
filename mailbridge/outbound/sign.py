"""DKIM signing of outbound notifications: dkimpy's construction, OpenSSL's arithmetic.

Every outbound notification gets one ``rsa-sha256`` DKIM-Signature per RSA key of the
practice (RSA-2048 or larger, always present) and, optionally, an ``ed25519-sha256``
signature as well (RFC 8463 dual signing).  The RSA signatures are placed above the
ed25519 ones: a verifier that does not know ed25519 skips that signature and evaluates
the RSA one (RFC 6376 section 6.1), and one that only looks at the topmost signature
(e.g. ``dkim.verify``) still sees RSA.

Both signatures are relaxed/relaxed, carry ``i=@domain`` and ``t=``, never ``l=``, and
cover :data:`SIGNED_HEADERS` (always listed, so that adding a missing one breaks the
signature), :data:`OPTIONAL_SIGNED_HEADERS` when present, and :data:`OVERSIGNED_HEADERS`
one extra time, so that an added From/Subject/Reply-To breaks the signature.

How the work is split between dkimpy and ``cryptography``
---------------------------------------------------------
dkimpy's ``DKIM.sign`` does everything right but computes the RSA signature in pure
Python (``dkim.crypto.RSASSA_PKCS1_v1_5_sign``: about 6 ms per message) and re-parses the
PEM key on every call.  The seam is ``DomainSigner.gen_header`` in dkimpy 1.1.8, which
calls the *module-level* name ``dkim.RSASSA_PKCS1_v1_5_sign(h, pk)`` for RSA and
``pk.sign(h.digest()).signature`` (PyNaCl) for ed25519.

Options considered:

* Monkey-patching ``dkim.RSASSA_PKCS1_v1_5_sign`` (even under a lock) was rejected: the
  replacement is visible to every other thread and library using dkimpy in the process
  (``authheaders``, ARC sealing, a plain ``dkim.sign`` call elsewhere), so it is only safe
  if *every* user takes the same lock, which nothing enforces.
* Overriding ``gen_header`` in a ``dkim.DKIM`` subclass would still need the same copy of
  its body, and ``DKIM.sign`` reads the clock through ``time.time()``, so ``t=`` could not
  be injected without patching either.

So :func:`_dkim_signature_header` re-states dkimpy's ``DKIM.sign`` and ``gen_header``
(the non-``standardize`` DKIM path, ~20 lines of glue) step for step, and every step
that decides bytes is dkimpy's own helper: ``dkim.rfc822_parse`` (header/body split),
``dkim.CanonicalizationPolicy`` (relaxed canonicalisation of headers and body),
``dkim.HASH_ALGORITHMS`` (hash), ``dkim.hash_headers`` / ``dkim.select_headers`` (which
header instances are hashed, bottom-up, plus the signature header with an empty
``b=``), ``dkim.RE_BTAG`` (blanking ``b=``) and ``dkim.fold`` (folding, both for the
hashed and for the emitted header).  Only the signature primitive is swapped:
RSASSA-PKCS1-v1_5 over the SHA-256 digest (``Prehashed``), or Ed25519 over the SHA-256
digest as RFC 8463 and dkimpy do, both through OpenSSL with keys loaded once.
``tests/test_sign.py`` pins the result byte-for-byte to ``dkim.sign`` of the installed
dkimpy, so a dkimpy upgrade that changes any of this fails the tests instead of
silently diverging.

:class:`DkimSigner` holds no per-message state and ``cryptography`` key objects are safe
to share, so one signer can be used from several threads.
"""

from __future__ import annotations

import base64
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import dkim
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed
from dkim.canonicalization import correct_empty_body, strip_trailing_lines

__all__ = [
    "OPTIONAL_SIGNED_HEADERS",
    "OVERSIGNED_HEADERS",
    "SIGNED_HEADERS",
    "DkimKey",
    "DkimSigner",
    "dns_txt_record",
    "generate_ed25519_key",
    "generate_rsa_key",
    "public_txt_value",
    "signed_header_list",
]

Algorithm = Literal["rsa-sha256", "ed25519-sha256"]

#: Header fields listed in ``h=`` of every signature, present or not (listing an absent
#: field signs its absence: adding it later breaks the signature).
SIGNED_HEADERS: tuple[bytes, ...] = (
    b"from",
    b"to",
    b"subject",
    b"date",
    b"message-id",
    b"reply-to",
    b"in-reply-to",
    b"references",
    # RFC 8058 §4: the one-click fields must be covered by a valid DKIM signature (mailbox providers
    # ignore them otherwise); listed always, so one cannot be added to a notice or a forward either.
    b"list-unsubscribe",
    b"list-unsubscribe-post",
)
#: Header fields listed in ``h=`` only when the message has them.
OPTIONAL_SIGNED_HEADERS: tuple[bytes, ...] = (b"mime-version", b"content-type", b"auto-submitted")
#: Header fields listed one extra time ("over-signed"), so that an added instance breaks
#: the signature.
OVERSIGNED_HEADERS: tuple[bytes, ...] = (b"from", b"subject", b"reply-to")

MIN_RSA_BITS = 2048
_CANONICALIZE = (b"relaxed", b"relaxed")
_SIG_HEADER_NAME = b"DKIM-Signature"
_RSA_PADDING = padding.PKCS1v15()
_PREHASHED_SHA256 = Prehashed(hashes.SHA256())


@dataclass(frozen=True)
class DkimKey:
    """One practice's signing key: ``selector._domainkey.domain`` holds its public half."""

    domain: str
    selector: str
    private_pem: bytes  # PKCS#1 or PKCS#8 PEM
    algorithm: Literal["rsa-sha256", "ed25519-sha256"] = "rsa-sha256"


@dataclass(frozen=True)
class _LoadedKey:
    domain: bytes
    selector: bytes
    algorithm: bytes
    # Signs a SHA-256 digest; returns the raw signature bytes.
    sign_digest: Callable[[bytes], bytes] = field(repr=False)


def _ascii_label(value: str, what: str) -> bytes:
    try:
        encoded = value.encode("ascii")
    except UnicodeEncodeError:
        raise ValueError(f"DKIM {what} must be ASCII (use the IDNA A-label form): {value!r}") from None
    if not encoded or any(c in encoded for c in b' \t\r\n;=\\"'):
        raise ValueError(f"invalid DKIM {what}: {value!r}")
    return encoded


def _load_private_key(private_pem: bytes) -> Any:
    try:
        return serialization.load_pem_private_key(private_pem, password=None)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"unreadable DKIM private key: {exc}") from None


def _load_key(key: DkimKey) -> _LoadedKey:
    domain = _ascii_label(key.domain, "domain")
    selector = _ascii_label(key.selector, "selector")
    private = _load_private_key(key.private_pem)
    sign_digest: Callable[[bytes], bytes]
    if key.algorithm == "rsa-sha256":
        if not isinstance(private, rsa.RSAPrivateKey):
            raise ValueError(f"{key.selector}._domainkey.{key.domain}: rsa-sha256 needs an RSA key")
        if private.key_size < MIN_RSA_BITS:
            raise ValueError(
                f"{key.selector}._domainkey.{key.domain}: RSA key has {private.key_size} bits, "
                f"at least {MIN_RSA_BITS} required"
            )
        rsa_key = private

        def sign_digest(digest: bytes) -> bytes:
            # RSASSA-PKCS1-v1_5 (RFC 8017 8.2) over DigestInfo(SHA-256, digest): the same
            # deterministic bytes as dkim.crypto.RSASSA_PKCS1_v1_5_sign.
            return rsa_key.sign(digest, _RSA_PADDING, _PREHASHED_SHA256)

    elif key.algorithm == "ed25519-sha256":
        if not isinstance(private, ed25519.Ed25519PrivateKey):
            raise ValueError(f"{key.selector}._domainkey.{key.domain}: ed25519-sha256 needs an Ed25519 key")
        ed_key = private

        def sign_digest(digest: bytes) -> bytes:
            # RFC 8463 section 3: PureEdDSA over the SHA-256 hash of the canonical headers.
            return ed_key.sign(digest)

    else:
        raise ValueError(f"unsupported DKIM algorithm: {key.algorithm!r}")
    return _LoadedKey(domain, selector, key.algorithm.encode("ascii"), sign_digest)


def signed_header_list(headers: Sequence[Sequence[bytes]]) -> tuple[bytes, ...]:
    """The ``h=`` list for a message with these ``(name, value)`` header fields.

    :data:`SIGNED_HEADERS` (once each), then the :data:`OPTIONAL_SIGNED_HEADERS` the message
    has, then each of :data:`OVERSIGNED_HEADERS` again, as many times as the message has it
    (at least once).  So h= names each over-signed field at least once more than the
    message holds it, and an instance added anywhere breaks the signature.
    """
    counts = Counter(bytes(h[0]).lower() for h in headers)
    names = list(SIGNED_HEADERS)
    names += [name for name in OPTIONAL_SIGNED_HEADERS if counts[name]]
    for name in OVERSIGNED_HEADERS:
        names += [name] * max(counts[name], 1)
    return tuple(names)


def _compress_wsp(value: bytes) -> bytes:
    """Every run of SP/HTAB as one SP: dkimpy's ``compress_whitespace`` (``re.sub(b"[\\t ]+", b" ")``)
    without a regex. A notification's body has a few dozen runs (the HTML's indentation) in 17 KB:
    ``bytes.find`` jumps from one to the next at memory speed and only the runs are looked at, where
    repeated ``replace`` passes copied the whole body several times."""
    if b"\t" in value:
        value = value.replace(b"\t", b" ")
    at = value.find(b"  ")
    if at < 0:
        return value
    pieces = []
    start, end = 0, len(value)
    while at >= 0:
        after = at + 2
        while after < end and value[after] == 0x20:
            after += 1
        pieces.append(value[start : at + 1])  # the run's first space stays
        start = after
        at = value.find(b"  ", after)
    pieces.append(value[start:])
    return b"".join(pieces)


def relaxed_headers(headers: Sequence[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """``dkim.canonicalization.Relaxed.canonicalize_headers``, the same bytes without a regex per
    field (``tests/test_sign.py`` compares the two on arbitrary input)."""
    out = []
    for name, value in headers:
        unfolded = value.replace(b"\r\n", b"").replace(b"\n", b"")  # re.sub(b"\r?\n", b"", value)
        out.append((name.lower().rstrip(), _compress_wsp(unfolded).strip() + b"\r\n"))
    return out


def relaxed_body(body: bytes) -> bytes:
    """``dkim.canonicalization.Relaxed.canonicalize_body``, the same bytes without a regex over the
    body: WSP runs become one SP, then the one SP left before a CRLF goes (dkimpy strips
    ``[\\t ]+\\r\\n`` first, then compresses: the same result), then dkimpy's own trailing-line
    rules. It was most of the signer's time besides RSA itself (docs/benchmarks.md, dkim)."""
    text = _compress_wsp(body).replace(b" \r\n", b"\r\n")
    canonical: bytes = correct_empty_body(strip_trailing_lines(text))
    return canonical


def split_message(message: bytes) -> tuple[Any, bytes]:  # dkimpy's [name, value] lists
    """``dkim.rfc822_parse(message)``: the header fields and the body (CRLF line ends).

    dkimpy splits the whole message into lines with a regex to find the header section's end,
    then joins the body's lines again. When every line end is CRLF (as the worker composes), the
    header section ends at the first empty line, the first CRLF CRLF, and the body is already what
    the join gives: only the header section is handed to dkimpy. Any other message goes whole.
    """
    end = message.find(b"\r\n\r\n")
    if end > 0 and not message.startswith(b"\r\n"):
        head, body = message[: end + 4], message[end + 4 :]
        if head.count(b"\n") == head.count(b"\r\n") and body.count(b"\n") == body.count(b"\r\n"):
            headers, _ = dkim.rfc822_parse(head)
            return headers, body
    headers, body = dkim.rfc822_parse(message)
    return headers, body


def _dkim_signature_header(
    canonical_headers: list[tuple[bytes, bytes]],
    canonical_body_hash: bytes,
    key: _LoadedKey,
    include_headers: tuple[bytes, ...],
    timestamp: int,
    linesep: bytes,
) -> bytes:
    """One ``DKIM-Signature: ...`` field (terminated by *linesep*), built as dkimpy builds it.

    Mirrors dkimpy 1.1.8 ``DKIM.sign`` (signature fields, in its order) followed by
    ``DomainSigner.gen_header`` with ``standardize=False``; see the module docstring.
    """
    canon_policy = dkim.CanonicalizationPolicy.from_c_value(b"/".join(_CANONICALIZE))
    sigfields: list[tuple[bytes, bytes]] = [
        (b"v", b"1"),
        (b"a", key.algorithm),
        (b"c", canon_policy.to_c_value()),
        (b"d", key.domain),
        (b"i", b"@" + key.domain),
        # no l=: a body-length limit lets anyone append content under our signature
        (b"q", b"dns/txt"),
        (b"s", key.selector),
        (b"t", str(timestamp).encode("ascii")),
        (b"h", b" : ".join(include_headers)),
        (b"bh", canonical_body_hash),
        # dkimpy's trick: a 60-character placeholder forces b= onto its own folded line,
        # so re-folding once the real value is in does not move the other tags.
        (b"b", b"0" * 60),
    ]
    # --- DomainSigner.gen_header ---
    header_value = b"; ".join(b"=".join(x) for x in sigfields)
    header_value = dkim.fold(header_value, namelen=len(_SIG_HEADER_NAME), linesep=b"\r\n")
    header_value = dkim.RE_BTAG.sub(b"\\1", header_value)
    header = (_SIG_HEADER_NAME, b" " + header_value)
    hasher = dkim.HASH_ALGORITHMS[key.algorithm]()
    # (gen_header canonicalises the message headers here; sign() does it once per message)
    dkim.hash_headers(hasher, canon_policy, canonical_headers, include_headers, header, dict(sigfields))
    signature = key.sign_digest(hasher.digest())
    sigfields[-1] = (b"b", base64.b64encode(signature))
    header_value = b"; ".join(b"=".join(x) for x in sigfields) + linesep
    header_value = dkim.fold(header_value, namelen=len(_SIG_HEADER_NAME), linesep=linesep)
    # --- end of gen_header; DKIM.sign prepends the field name ---
    return _SIG_HEADER_NAME + b": " + bytes(header_value)


class DkimSigner:
    """Signs messages for one practice with its RSA key(s) and optional ed25519 key(s).

    Keys are parsed once, here.  *clock* returns the ``t=`` value (Unix seconds); it
    defaults to the current time and exists so tests can sign deterministically.
    """

    def __init__(self, keys: Sequence[DkimKey], *, clock: Callable[[], int] | None = None) -> None:
        loaded = [_load_key(k) for k in keys]
        if not any(k.algorithm == b"rsa-sha256" for k in loaded):
            raise ValueError("a DkimSigner needs at least one rsa-sha256 key")
        # RSA first (topmost), then ed25519; the given order is kept within each.
        self._keys: tuple[_LoadedKey, ...] = tuple(sorted(loaded, key=lambda k: k.algorithm != b"rsa-sha256"))
        self._clock: Callable[[], int] = clock if clock is not None else (lambda: int(time.time()))

    def sign(self, message: bytes) -> bytes:
        """Return *message* with its DKIM-Signature field(s) prepended, RSA first.

        The message itself is not modified; the new fields use the line ending of the
        message's first line (CRLF for wire-format mail).
        """
        first_newline = message.find(b"\n")
        linesep = b"\r\n" if first_newline > 0 and message[first_newline - 1] == 0x0D else b"\n"
        try:
            headers, body = split_message(message)
        except dkim.MessageFormatError as exc:
            raise ValueError(f"cannot DKIM-sign a malformed message: {exc}") from None
        from_count = sum(1 for name, _ in headers if name.lower() == b"from")
        if from_count != 1:
            # RFC 5322 3.6 requires exactly one; with two, what a reader is shown and
            # what the signature (bottom-up) covers can differ.
            raise ValueError(f"message must have exactly one From field, found {from_count}")
        include_headers = signed_header_list(headers)
        # relaxed/relaxed (``_CANONICALIZE``), as dkimpy canonicalises, faster.
        canonical_headers = relaxed_headers(headers)
        # Every supported algorithm hashes the body with SHA-256: compute bh= once.
        body_hash = base64.b64encode(dkim.HASH_ALGORITHMS[b"rsa-sha256"](relaxed_body(body)).digest())
        timestamp = int(self._clock())
        fields = [
            _dkim_signature_header(canonical_headers, body_hash, key, include_headers, timestamp, linesep)
            for key in self._keys
        ]
        return b"".join(fields) + message


def generate_rsa_key(bits: int = 2048) -> bytes:
    """A new RSA private key (e=65537) as PKCS#1 PEM (``BEGIN RSA PRIVATE KEY``)."""
    if bits < MIN_RSA_BITS:
        raise ValueError(f"RSA DKIM keys must have at least {MIN_RSA_BITS} bits")
    key = rsa.generate_private_key(public_exponent=65537, key_size=bits)
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )


def generate_ed25519_key() -> bytes:
    """A new Ed25519 private key as PKCS#8 PEM (``BEGIN PRIVATE KEY``)."""
    return ed25519.Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def public_txt_value(private_pem: bytes) -> bytes:
    """The DKIM key record value, ``v=DKIM1; k=rsa|ed25519; p=...``, for *private_pem*.

    RSA: ``p=`` is the DER SubjectPublicKeyInfo; ed25519: the raw 32-byte public key
    (RFC 8463 section 4.2), both base64.
    """
    private = _load_private_key(private_pem)
    if isinstance(private, rsa.RSAPrivateKey):
        kind = b"rsa"
        public = private.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    elif isinstance(private, ed25519.Ed25519PrivateKey):
        kind = b"ed25519"
        public = private.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    else:
        raise ValueError(f"unsupported DKIM key type: {type(private).__name__}")
    return b"v=DKIM1; k=" + kind + b"; p=" + base64.b64encode(public)


def dns_txt_record(private_pem: bytes, selector: str, domain: str) -> str:
    """A zone-file line publishing the public key, e.g.
    ``sel._domainkey.example.org. IN TXT "v=DKIM1; k=rsa; p=MIIB..." "...rest"``.

    The value is split into quoted character-strings of at most 255 characters (the DNS
    limit per string; receivers concatenate them).
    """
    value = public_txt_value(private_pem).decode("ascii")
    name = f"{selector}._domainkey.{domain.rstrip('.')}."
    chunks = [value[i : i + 255] for i in range(0, len(value), 255)]
    return f"{name} IN TXT " + " ".join(f'"{chunk}"' for chunk in chunks)
