"""DKIM body hashes computed from a file, line by line, for messages too large to hold in memory.

dkimpy splits the whole message into a list of lines and canonicalises the body with regexes over
the full bytes: three or four copies of a 137 MB message. ``StreamedBodyDKIM`` keeps everything
else dkimpy does (header canonicalisation, signature and key checks) and replaces only the body
hash, through dkimpy's own seam ``verify_sig_process``: the body is checked here, then the
signature goes on without ``bh``. ``canonical_body_digest`` reproduces dkimpy's ``Simple`` and
``Relaxed`` ``canonicalize_body`` exactly (tests compare both on many bodies).
"""

from __future__ import annotations

import base64
import re
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import dkim
from dkim.canonicalization import CanonicalizationPolicy

_WSP_RUN = re.compile(rb"[\t ]+")


def canonical_body_digest(
    lines: Iterable[bytes], relaxed: bool, hasher: Callable[[], Any]
) -> tuple[bytes, int]:
    """Digest and length of the canonical body of ``lines`` (each as read from a file, with its newline)."""
    digest = hasher()
    length = 0
    pending_empty = 0  # empty lines are emitted only once a non-empty one follows (trailing ones drop)
    emitted = False
    partial = b""
    for raw_line in lines:
        if raw_line.endswith(b"\n"):
            content = raw_line[:-2] if raw_line.endswith(b"\r\n") else raw_line[:-1]
            if relaxed:
                content = _WSP_RUN.sub(b" ", content.rstrip(b" \t"))
            if not content:
                pending_empty += 1
                continue
            chunk = b"\r\n" * pending_empty + content + b"\r\n"
            pending_empty = 0
            digest.update(chunk)
            length += len(chunk)
            emitted = True
        else:
            partial = _WSP_RUN.sub(b" ", raw_line) if relaxed else raw_line  # the last line, without newline
    if partial:
        chunk = b"\r\n" * pending_empty + partial + b"\r\n"
        digest.update(chunk)
        length += len(chunk)
    elif not emitted and not relaxed:
        digest.update(b"\r\n")  # an empty body is one CRLF in simple canonicalisation (RFC 6376 §3.4.3)
        length += 2
    return digest.digest(), length


def body_lines(path: Path) -> Iterable[bytes]:
    """The lines after the header block of a message file."""
    with open(path, "rb") as handle:
        for line in handle:
            if line in (b"\r\n", b"\n"):
                break
        yield from handle


class StreamedBodyDKIM(dkim.DKIM):  # type: ignore[misc]
    """dkimpy's verifier over a header block, with the body hashed from the file on disk."""

    def __init__(self, header_block: bytes, body_path: Path, **kwargs: Any) -> None:
        super().__init__(header_block, **kwargs)
        self._body_path = body_path
        self._digests: dict[tuple[bool, bytes], tuple[bytes, int]] = {}

    def _digest(self, relaxed: bool, algorithm: bytes) -> tuple[bytes, int]:
        key = (relaxed, algorithm)
        if key not in self._digests:
            hasher = dkim.HASH_ALGORITHMS[algorithm]
            self._digests[key] = canonical_body_digest(body_lines(self._body_path), relaxed, hasher)
        return self._digests[key]

    def verify_sig_process(
        self, sig: dict[bytes, bytes], include_headers: Any, sig_header: Any, dnsfunc: Any
    ) -> Any:
        if b"bh" in sig:
            if b"l" in sig:  # a partial-body signature (HOSTILE A6) never counts as a pass
                raise dkim.ValidationError("l= not accepted on large messages")
            try:
                policy = CanonicalizationPolicy.from_c_value(sig.get(b"c", b"simple/simple"))
                expected = base64.b64decode(re.sub(rb"\s+", b"", sig[b"bh"]))
                digest, _ = self._digest(policy.body_algorithm.name == b"relaxed", sig[b"a"])
            except (KeyError, ValueError, dkim.InvalidCanonicalizationPolicyError) as exc:
                raise dkim.MessageFormatError(str(exc)) from exc
            if digest != expected:
                raise dkim.ValidationError("body hash mismatch")
            sig = {name: value for name, value in sig.items() if name != b"bh"}
        return super().verify_sig_process(sig, include_headers, sig_header, dnsfunc)
