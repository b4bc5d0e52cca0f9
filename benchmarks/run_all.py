"""Run every benchmark, print each table, and refresh the figures section of docs/benchmarks.md.

Run from the repository root (``make bench`` does this)::

    .venv/bin/python -m benchmarks.run_all [--quick] [--only ingress,memory] [--no-docs]

Each benchmark runs in its own Python process with a time limit, so one failure or one leftover
child cannot spoil the others; a failed benchmark is reported as such and the rest still run.
``--quick`` uses smaller counts (a few minutes in all); the documented figures come from a full run.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import os
import re
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs" / "benchmarks.md"
START = "<!-- figures:start (written by benchmarks/run_all.py; edit the text outside these markers) -->"
END = "<!-- figures:end -->"


@dataclass(frozen=True)
class Bench:
    name: str
    module: str
    args: tuple[str, ...]
    quick_args: tuple[str, ...]
    timeout: float  # seconds for the full run
    what: str


BENCHES = (
    Bench("ingress", "benchmarks.bench_ingress", (), ("--quick",), 720, "SMTP ingress throughput"),
    Bench("steps", "benchmarks.bench_steps", ("--postgres",), ("-n", "50"), 180, "pipeline cost per step"),
    Bench("outbound", "benchmarks.bench_outbound", (), ("--quick",), 420, "notification delivery throughput"),
    Bench("memory", "benchmarks.bench_memory", (), ("--quick",), 900, "peak memory for a 100 MB attachment"),
    Bench("latency", "benchmarks.bench_latency", (), ("--quick",), 240, "reply → notification latency"),
    Bench(
        "isolation",
        "benchmarks.bench_isolation",
        (),
        ("--quick",),
        420,
        "small replies and HTTP GETs while a 100 MB message streams in",
    ),
    Bench("dkim", "benchmarks.bench_dkim", (), ("-n", "300"), 180, "DKIM signing speed"),
    Bench(
        "console",
        "benchmarks.bench_console",
        ("--postgres",),
        ("-n", "20000", "--repeat", "5"),
        420,
        "console pages' server time at 100,000 inbound rows",
    ),
    Bench(
        "pagination",
        "benchmarks.bench_pagination",
        ("--postgres",),
        ("--quick",),
        600,
        "list pages with 10,000 conversations and 100,000 messages",
    ),
    Bench(
        "reply_extraction",
        "benchmarks.bench_reply_extraction",
        (),
        (),
        180,
        "reply extraction accuracy (not speed)",
    ),
)


@dataclass
class Outcome:
    bench: Bench
    status: str  # ok | failed | skipped | timeout
    output: str
    seconds: float


def _run(bench: Bench, quick: bool) -> Outcome:
    args = [sys.executable, "-m", bench.module, *(bench.quick_args if quick else bench.args)]
    print(f"\n=== {bench.name}: {' '.join(args[1:])}", flush=True)
    started = time.perf_counter()
    lines: list[str] = []
    # A session of its own: on a timeout the whole group (servers, generators, smtp-sink) goes.
    proc = subprocess.Popen(
        args,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    timeout = bench.timeout / (2 if quick else 1)

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            print(line.rstrip("\n"), flush=True)
            lines.append(line.rstrip("\n"))

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    timed_out = False
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        timed_out = True
    finally:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(5)
        reader.join(5)
    seconds = time.perf_counter() - started
    output = "\n".join(lines).strip()
    if timed_out:
        status = "timeout"
    elif proc.returncode == 0:
        status = "ok"
    elif bench.name == "reply_extraction" and re.search(r"(ModuleNotFoundError|ImportError)", output):
        status = "skipped"
    else:
        status = "failed"
    print(f"=== {bench.name}: {status} in {seconds:.0f} s", flush=True)
    return Outcome(bench, status, _figures_only(output) if status == "ok" else output[-3000:], seconds)


def _figures_only(output: str) -> str:
    """Drop warnings and log noise from what goes into the docs; the tables stay."""
    keep = [
        line
        for line in output.splitlines()
        if not re.match(r"^\s*(\S+Warning:|warnings\.warn|WARNING:|INFO:)", line)
        and not line.startswith("  session.execute")
    ]
    return "\n".join(keep).strip()


def _machine_lines() -> list[str]:
    from benchmarks.harness import machine

    info = machine()
    return [
        f"- CPU: {info.get('cpu', '?')}, {info['cores']} cores; RAM {info.get('ram', '?')}; {info['os']}",
        f"- Python {info['python']}, SQLite {info['sqlite']}, PostgreSQL {info['postgresql']}",
    ]


def _loadavg() -> str:
    with contextlib.suppress(OSError):
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    return "?"


def figures_section(outcomes: list[Outcome], quick: bool, started: datetime.datetime, load: str) -> str:
    lines = [
        START,
        "",
        f"Last run: {started:%Y-%m-%d %H:%M} UTC, "
        f"`{'.venv/bin/python -m benchmarks.run_all --quick' if quick else 'make bench'}`"
        f"{' (quick: smaller counts)' if quick else ''}, "
        f"{sum(o.seconds for o in outcomes) / 60:.1f} minutes.",
        "",
        *_machine_lines(),
        f"- load average when the run started: {load}",
        "",
    ]
    for o in outcomes:
        lines.append(f"### {o.bench.name}: {o.bench.what}")
        lines.append("")
        if o.status != "ok":
            lines.append(f"**{o.status}** after {o.seconds:.0f} s" + (" — last output:" if o.output else ""))
            lines.append("")
        if o.output:
            lines += ["```", o.output, "```", ""]
    lines.append(END)
    return "\n".join(lines)


def write_docs(section: str) -> None:
    text = DOCS.read_text() if DOCS.exists() else ""
    if START in text and END in text:
        before = text[: text.index(START)]
        after = text[text.index(END) + len(END) :]
        text = before + section + after
    else:
        text = (
            (text.rstrip() + "\n\n## Figures\n\n" if text else "# Benchmarks\n\n## Figures\n\n")
            + section
            + "\n"
        )
    DOCS.write_text(text)


def main() -> None:
    from benchmarks.harness import exit_cleanly_on_sigterm

    exit_cleanly_on_sigterm()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller counts, a few minutes in all")
    parser.add_argument("--only", help="comma-separated names: " + ",".join(b.name for b in BENCHES))
    parser.add_argument("--no-docs", action="store_true", help="do not rewrite docs/benchmarks.md")
    args = parser.parse_args()
    chosen = [b for b in BENCHES if not args.only or b.name in args.only.split(",")]
    if not chosen:
        parser.error(f"--only: none of {args.only!r} is a benchmark")
    started = datetime.datetime.now(datetime.UTC)
    load = _loadavg()
    outcomes = [_run(b, args.quick) for b in chosen]
    print("\n=== summary")
    for o in outcomes:
        print(f"{o.bench.name:<18}{o.status:<9}{o.seconds:6.0f} s")
    if not args.no_docs:
        if args.only:
            print("docs/benchmarks.md left alone: --only runs are partial")
        else:
            write_docs(figures_section(outcomes, args.quick, started, load))
            print(f"figures written to {DOCS.relative_to(ROOT)}")
    if any(o.status in ("failed", "timeout") for o in outcomes):
        sys.exit(1)


if __name__ == "__main__":
    main()
