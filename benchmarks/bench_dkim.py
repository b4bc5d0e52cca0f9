"""DKIM signing throughput: plain dkimpy vs. DkimSigner (dkimpy construction + OpenSSL).

Run from the repository root::

    .venv/bin/python -m benchmarks.bench_dkim [-n 2000] [--rounds 1]

Signs the same realistic ~5 KB notification messages (multipart/alternative, text +
HTML, CRLF) with

* ``dkim.sign`` (dkimpy, pure-Python RSA, key parsed per call: the baseline),
* ``DkimSigner`` with the RSA-2048 key,
* ``DkimSigner`` with RSA-2048 + ed25519 (dual signature),

after checking on a sample that DkimSigner's output is byte-identical to dkimpy's.
Figures are single-process, one core; quote the ratio rather than the absolutes.
"""

from __future__ import annotations

import argparse
import random
import statistics
import time
from collections.abc import Callable
from email import policy
from email.message import EmailMessage
from unittest import mock

import dkim

from mailbridge.outbound.sign import (
    DkimKey,
    DkimSigner,
    generate_ed25519_key,
    generate_rsa_key,
    signed_header_list,
)

DOMAIN = "riverside-clinic.test"
CANON = (b"relaxed", b"relaxed")
T0 = 1_709_630_100
_WORDS = [
    "appointment",
    "results",
    "portal",
    "secure",
    "message",
    "practice",
    "reminder",
    "please",
    "sign",
    "in",
    "read",
    "reply",
    "doctor",
    "nurse",
    "clinic",
    "prescription",
    "ready",
    "collect",
    "review",
    "your",
    "account",
    "update",
    "schedule",
]


def make_messages(count: int, seed: int = 42) -> list[bytes]:
    """*count* distinct notification e-mails of about 5 KB each, CRLF line endings."""
    rng = random.Random(seed)
    messages = []
    for i in range(count):
        msg = EmailMessage()
        msg["From"] = "Riverside Family Practice <noreply@riverside-clinic.test>"
        msg["To"] = f"Patient {i} <patient{i}@example.net>"
        msg["Reply-To"] = f"Riverside Family Practice <replies+t-{i:06x}@riverside-clinic.test>"
        msg["Subject"] = f"You have a new secure message ({rng.choice(_WORDS)})"
        msg["Date"] = "Tue, 05 Mar 2024 09:15:00 +0000"
        msg["Message-ID"] = f"<n-{i:06x}.{T0}@riverside-clinic.test>"
        msg["Auto-Submitted"] = "auto-generated"
        msg["X-Mailbridge-Thread"] = f"t-{i:06x}"
        paragraphs = [" ".join(rng.choice(_WORDS) for _ in range(48)) for _ in range(6)]
        text = (
            "Hello,\n\n" + "\n\n".join(paragraphs) + f"\n\nhttps://portal.riverside-clinic.test/m/{i:06x}\n"
        )
        html = (
            "<html><body style='font-family: sans-serif'>"
            + "".join(f"<p style='margin: 0 0 12px 0'>{p}</p>\n" for p in paragraphs)
            + f"<p><a href='https://portal.riverside-clinic.test/m/{i:06x}'>Read it</a></p>"
            + "</body></html>\n"
        )
        msg.set_content(text)
        msg.add_alternative(html, subtype="html")
        messages.append(msg.as_bytes(policy=policy.SMTP))
    return messages


def timed(label: str, fn: Callable[[bytes], object], messages: list[bytes], rounds: int) -> float:
    """Median seconds per message over *rounds* passes."""
    per_message = []
    for _ in range(rounds):
        start = time.perf_counter()
        for m in messages:
            fn(m)
        per_message.append((time.perf_counter() - start) / len(messages))
    return statistics.median(per_message)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", "--count", type=int, default=2000, help="messages per pass")
    parser.add_argument("--rounds", type=int, default=1, help="passes per variant (median reported)")
    args = parser.parse_args()

    rsa_pem = generate_rsa_key()
    ed_pem = generate_ed25519_key()
    rsa_key = DkimKey(DOMAIN, "mbr", rsa_pem)
    ed_key = DkimKey(DOMAIN, "mbe", ed_pem, "ed25519-sha256")
    messages = make_messages(args.count)
    sizes = sorted(len(m) for m in messages)
    h_lists = {m: list(signed_header_list(dkim.rfc822_parse(m)[0])) for m in messages}

    def dkimpy_sign(m: bytes) -> bytes:
        return bytes(
            dkim.sign(m, b"mbr", DOMAIN.encode(), rsa_pem, canonicalize=CANON, include_headers=h_lists[m])
        )

    # Same bytes as dkimpy (t= pinned on both sides) before timing anything.
    fixed = DkimSigner([rsa_key], clock=lambda: T0)
    with mock.patch.object(dkim.time, "time", return_value=float(T0)):
        for m in messages[:25]:
            assert fixed.sign(m) == dkimpy_sign(m) + m, "DkimSigner output differs from dkimpy"

    rsa_signer = DkimSigner([rsa_key])
    dual_signer = DkimSigner([rsa_key, ed_key])
    base = timed("dkimpy", dkimpy_sign, messages, args.rounds)
    fast = timed("DkimSigner rsa", rsa_signer.sign, messages, args.rounds)
    dual = timed("DkimSigner rsa+ed25519", dual_signer.sign, messages, args.rounds)

    print(
        f"{len(messages)} messages, {sizes[0]}-{sizes[-1]} bytes (median {sizes[len(sizes) // 2]}), "
        f"RSA-2048, relaxed/relaxed, {args.rounds} round(s), median per message"
    )
    print(f"{'signer':<34}{'ms/msg':>9}{'msg/s':>10}{'vs dkimpy':>11}")
    for label, secs in (
        ("dkimpy dkim.sign (baseline)", base),
        ("DkimSigner RSA", fast),
        ("DkimSigner RSA + ed25519", dual),
    ):
        print(f"{label:<34}{secs * 1e3:>9.3f}{1 / secs:>10.0f}{base / secs:>10.1f}x")
    print(
        f"ed25519 extra cost: {(dual - fast) * 1e3:.3f} ms/msg "
        f"({(dual / fast - 1) * 100:.0f}% over RSA alone)"
    )


if __name__ == "__main__":
    main()
