"""Attachment memory: peak RSS growth of the receiving process for one 100 MB attachment, as a multiple of the message.

Run from the repository root::

    .venv/bin/python -m benchmarks.bench_memory [--quick] [--mb 100]

One reply carrying a PDF-looking attachment (a real PDF header, random bytes, a trailer; declared
application/pdf; the practice's ``attachment_max_bytes`` raised to 100 MiB) goes over SMTP to

* a bare aiosmtpd server that only receives it and answers 250 (the baseline),
* mailbridge's ingress (``runtime.start_ingress``, SQLite, worker off), once per storage variant
  (``harness.STORAGE_VARIANTS``: raw mail and attachments on local disk or in S3 — moto's server on
  loopback, multipart uploads — encrypted or not), each with a fresh database and store,

each in its own process. The server is warmed up with one ordinary reply first; then VmRSS is
sampled every 10 ms from /proc/<pid>/status while the message travels and is processed, and VmHWM
(reset through /proc/<pid>/clear_refs when the kernel allows) is read at the end. Growth = peak −
RSS before; the figure is growth ÷ the raw message size as sent (base64, CRLF). Target ≤ 2.5×.
"""

from __future__ import annotations

import argparse
import base64
import random
import time
from typing import Any

from benchmarks.harness import (
    STORAGE_VARIANTS,
    Mail,
    RssSampler,
    backend,
    bare_server,
    mailbridge_server,
    proc_status_kb,
    replies,
    run_load,
    seed_practice,
    storage_settings,
    table,
)

MB = 1_000_000


def big_reply(thread: Any, attachment_bytes: int) -> Mail:
    head = b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<< /Type /Catalog /Pages 2 0 R >>\nendobj\n"
    tail = b"\ntrailer\n<< /Root 1 0 R >>\nstartxref\n0\n%%EOF\n"
    blob = head + random.Random(7).randbytes(attachment_bytes - len(head) - len(tail)) + tail
    encoded = base64.encodebytes(blob)
    del blob
    headers = (
        "MIME-Version: 1.0\r\n"
        "Date: Tue, 3 Mar 2026 10:02:17 +0000\r\n"
        "Message-ID: <CAbench-big.1@mail.client.test>\r\n"
        "Subject: Re: Quarterly VAT return\r\n"
        "From: Alice Martin <alice@client.test>\r\n"
        f"To: {thread.reply_to}\r\n"
        'Content-Type: multipart/mixed; boundary="big-boundary-0001"\r\n\r\n'
        "--big-boundary-0001\r\n"
        'Content-Type: text/plain; charset="UTF-8"\r\n\r\n'
        "Here is the signed statement for the quarter, as promised.\r\n\r\nAlice\r\n\r\n"
        "--big-boundary-0001\r\n"
        'Content-Type: application/pdf; name="statement-q1.pdf"\r\n'
        'Content-Disposition: attachment; filename="statement-q1.pdf"\r\n'
        "Content-Transfer-Encoding: base64\r\n\r\n"
    ).encode()
    data = headers + encoded.replace(b"\n", b"\r\n") + b"--big-boundary-0001--\r\n"
    return Mail("alice@client.test", thread.reply_to, data)  # base64 lines never start with "."


def _reset_hwm(pid: int) -> bool:
    """Writing 5 to clear_refs resets the peak RSS (Linux ≥ 4.0); not every kernel or container allows it."""
    try:
        with open(f"/proc/{pid}/clear_refs", "w") as handle:
            handle.write("5")
        return True
    except OSError:
        return False


def _measure(pid: int, port: int, mail: Mail) -> dict[str, Any]:
    rss_before = proc_status_kb(pid, "VmRSS") * 1024
    reset = _reset_hwm(pid)
    hwm_before = proc_status_kb(pid, "VmHWM") * 1024
    started = time.perf_counter()
    with RssSampler(pid, 0.01) as sampler:
        result = run_load(port, [mail], concurrency=1, reuse=False, time_limit=300, op_timeout=300)
    elapsed = time.perf_counter() - started
    hwm_after = proc_status_kb(pid, "VmHWM") * 1024
    peak = max(sampler.peak, hwm_after if (reset or hwm_after > hwm_before) else 0)
    return {
        "code": result.codes_text(),
        "rss_before": rss_before,
        "peak": peak,
        "growth": peak - rss_before,
        "ratio": (peak - rss_before) / len(mail.data),
        "seconds": elapsed,
        "data_to_250": result.latencies[0] if result.latencies else float("nan"),
        "samples": sampler.samples,
        "hwm_reset": reset,
    }


def _last_inbound(url: str) -> str:
    """The big message's inbound state/reason and what was stored of its attachment."""
    from sqlalchemy import select

    from mailbridge.domain.db import make_engine
    from mailbridge.domain.models import Attachment, InboundLog

    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            row = conn.execute(
                select(InboundLog.state, InboundLog.reason).order_by(InboundLog.received_at.desc()).limit(1)
            ).first()
            files = conn.execute(select(Attachment.content_type, Attachment.size)).all()
        stored = ", ".join(f"{t} {s / MB:,.0f} MB" for t, s in files) or "no attachment row"
        return f"{row[0]}/{row[1]}; {stored}" if row else "no inbound row"
    finally:
        engine.dispose()


def run(quick: bool = False, megabytes: int | None = None) -> str:
    size = (megabytes or (25 if quick else 100)) * MB
    rows = []
    notes = []
    measured: list[dict[str, Any]] = []
    base: dict[str, Any] = {}
    mine: dict[str, Any] = {}
    mail = Mail("", "", b"")
    for label, s3, encrypted in ((None, False, False), *STORAGE_VARIANTS):
        with backend("sqlite", "mbmemory") as b:
            threads = seed_practice(b, 2, participants=("alice",))
            _raise_limit(b, 100 * 1024 * 1024)
            mail = big_reply(threads[0], size)
            warm = replies(threads, 2, seed=3)
            if label is None:
                with bare_server(data_size_limit=200 * 1024 * 1024) as server:
                    run_load(server.port, warm, concurrency=1, reuse=False, time_limit=60)
                    base = _measure(server.pid, server.port, mail)
                rows.append(["bare aiosmtpd (receive, 250)", *_cells(base), "-"])
                measured.append(base)
                continue
            with (
                storage_settings(s3, encrypted) as overrides,
                mailbridge_server(b.root, b.url, **overrides) as server,
            ):
                run_load(server.port, warm, concurrency=1, reuse=False, time_limit=60)
                result = _measure(server.pid, server.port, mail)
                outcome = _last_inbound(b.url)
            mine = mine or result  # the default variant: the headline ratio
            rows.append([f"mailbridge, {label}", *_cells(result), outcome])
            measured.append(result)
    if not all(m["hwm_reset"] for m in measured):
        notes.append("VmHWM could not be reset: the peak is the 10 ms RSS samples only")
    head = (
        f"Attachment memory: one reply with a {size / MB:,.0f} MB application/pdf attachment; "
        f"raw message {len(mail.data) / MB:,.1f} MB (base64, CRLF); RSS sampled every 10 ms"
    )
    return "\n".join(
        [
            head,
            table(
                [
                    "receiver",
                    "answer",
                    "RSS before MB",
                    "peak MB",
                    "growth MB",
                    "growth ÷ message",
                    "end-of-DATA→reply s",
                    "outcome",
                ],
                rows,
            ),
            f"target for mailbridge: ≤ 2.5× the message; mailbridge (default) / bare aiosmtpd growth: "
            f"{mine['growth'] / base['growth']:.2f}"
            if base["growth"] > 0
            else "",
            *notes,
        ]
    )


def _cells(m: dict[str, Any]) -> list[Any]:
    return [
        m["code"],
        m["rss_before"] / MB,
        m["peak"] / MB,
        m["growth"] / MB,
        f"{m['ratio']:.2f}×",
        f"{m['data_to_250']:.1f}",
    ]


def _raise_limit(b: Any, limit: int) -> None:
    from mailbridge.domain import directory
    from mailbridge.domain.db import transaction
    from tests.conftest import make_services

    services = make_services(b.root, b.url)
    try:
        with transaction(services.sessions) as session:
            practice = directory.get_practice(session, "acme")
            practice.settings = {**(practice.settings or {}), "attachment_max_bytes": limit}
    finally:
        services.close()


def main() -> None:
    from benchmarks.harness import exit_cleanly_on_sigterm

    exit_cleanly_on_sigterm()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a 25 MB attachment instead of 100 MB")
    parser.add_argument("--mb", type=int, help="attachment size in MB (10^6 bytes)")
    args = parser.parse_args()
    print(run(args.quick, args.mb), flush=True)


if __name__ == "__main__":
    main()
