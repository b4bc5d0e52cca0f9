"""More SMTP processes on the same port: the inbound pipeline is CPU-bound Python, and one process
uses one core.

``smtp_processes = N`` makes ``mailbridge serve`` start N-1 ingress processes beside itself, each
listening on the same address with SO_REUSEPORT so the kernel spreads new connections over them
(Postfix runs many smtpd processes for the same reason). Each runs the same pipeline on the same
database: on PostgreSQL rows are locked, not the database; on SQLite writers queue on a file lock
(``domain.db.writer_gate``). Every process also runs a delivery worker (claims are leased, so the
processes share the outbox as several nodes do); only the first serves HTTP and polls IMAP.

A child stops when the parent says so, when the parent's end of the pipe closes (the parent died,
even by ``kill -9``), or on SIGTERM/SIGINT; a child that dies on its own is started again. Every
few seconds each child sends its counters and histograms so ``/metrics`` shows the whole node.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import logging
import multiprocessing
import signal
import threading
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any

from mailbridge import observability
from mailbridge.inbound.dns import NameserverResolver, Resolver
from mailbridge.settings import Settings
from mailbridge.wiring import Services, build_services

log = logging.getLogger(__name__)

METRICS_EVERY = 2.0  # seconds between a child's metric reports
START_TIMEOUT = 60.0
STOP_GRACE = 30.0  # a child finishing its messages in flight


@dataclass
class _Child:
    slot: int
    process: Any  # multiprocessing.Process (spawn context)
    conn: Connection


@dataclass
class Cluster:
    """The extra ingress processes of one node, and the supervisor that keeps them running."""

    settings: Settings
    resolver: Resolver | None
    port: int
    children: dict[int, _Child] = field(default_factory=dict)
    stopping: bool = False
    supervisor: asyncio.Task[None] | None = None

    async def start_child(self, slot: int) -> None:
        if not self.children:
            atexit.register(self.abandon)
        context = multiprocessing.get_context("spawn")  # no inherited sockets, threads or locks
        ours, theirs = context.Pipe()
        process = context.Process(
            target=child_main,
            args=(self.settings, self.resolver, self.port, theirs),
            name=f"mailbridge-smtp-{slot}",
            daemon=False,  # may run under a daemonic parent (a supervisor, the benchmarks)
        )
        process.start()
        theirs.close()
        ready = await asyncio.to_thread(_wait_ready, ours, START_TIMEOUT)
        if not ready:
            process.kill()
            raise RuntimeError(f"SMTP process {slot} did not start")
        child = _Child(slot, process, ours)
        self.children[slot] = child
        loop = asyncio.get_running_loop()
        # A thread per child reads its reports: a report cut in the middle (a stalled child) then
        # blocks that thread, never the event loop serving HTTP and SMTP.
        threading.Thread(
            target=_read_reports, args=(child, loop), name=f"smtp-{slot}-reports", daemon=True
        ).start()

    async def supervise(self) -> None:
        """A child that died is replaced (a crash must not halve the node's capacity silently)."""
        while not self.stopping:
            await asyncio.sleep(1.0)
            for slot, child in list(self.children.items()):
                if child.process.is_alive() or self.stopping:
                    continue
                log.error("smtp_process_died", extra={"slot": slot, "exitcode": child.process.exitcode})
                self._forget(child)
                try:
                    await self.start_child(slot)
                except Exception:
                    log.exception("smtp_process_restart_failed", extra={"slot": slot})

    def _forget(self, child: _Child) -> None:
        with contextlib.suppress(Exception):
            child.conn.close()
        self.children.pop(child.slot, None)
        observability.retire_child(child.slot)  # its counts stay in the totals; a new child starts at 0

    async def stop(self) -> None:
        """Ask every child to stop, give them time to finish the messages they hold, then insist."""
        self.stopping = True
        if self.supervisor is not None:
            self.supervisor.cancel()
        for child in self.children.values():
            with contextlib.suppress(Exception):
                child.conn.send(("stop", None))
        for child in list(self.children.values()):
            await asyncio.to_thread(child.process.join, STOP_GRACE)
            if child.process.is_alive():
                log.warning("smtp_process_killed", extra={"slot": child.slot})
                child.process.kill()
                await asyncio.to_thread(child.process.join, 5)
            self._forget(child)
        atexit.unregister(self.abandon)

    def abandon(self) -> None:
        """At interpreter exit without ``stop()`` (a crash): close the pipes, so the children see the
        end of file and stop by themselves, then make sure they are gone."""
        for child in list(self.children.values()):
            with contextlib.suppress(Exception):
                child.conn.close()
        for child in list(self.children.values()):
            child.process.join(STOP_GRACE)
            if child.process.is_alive():
                child.process.kill()
        self.children.clear()


async def start_cluster(services: Services, port: int, extra: int) -> Cluster:
    # A resolver built from the settings is built again by each child; a handed-in one (a test's
    # static table) travels with them.
    resolver = None if isinstance(services.resolver, NameserverResolver) else services.resolver
    cluster = Cluster(services.settings, resolver, port)
    try:
        for slot in range(1, extra + 1):
            await cluster.start_child(slot)
    except BaseException:
        await cluster.stop()
        raise
    cluster.supervisor = asyncio.create_task(cluster.supervise(), name="smtp-supervisor")
    log.info("smtp_processes_started", extra={"processes": extra + 1, "port": port})
    return cluster


def _read_reports(child: _Child, loop: asyncio.AbstractEventLoop) -> None:
    while True:
        try:
            kind, payload = child.conn.recv()
        except (EOFError, OSError, ValueError):  # the child is gone, or we closed the pipe
            return
        if kind == "metrics":
            with contextlib.suppress(RuntimeError):  # the loop has closed
                loop.call_soon_threadsafe(observability.CHILD_SAMPLES.__setitem__, child.slot, payload)


def _wait_ready(conn: Connection, timeout: float) -> bool:
    if not conn.poll(timeout):
        return False
    try:
        kind, _ = conn.recv()
    except (EOFError, OSError):
        return False
    return bool(kind == "ready")


# ---- in the child --------------------------------------------------------------------------------


def child_main(settings: Settings, resolver: Resolver | None, port: int, conn: Connection) -> None:
    from mailbridge.logs import configure_logging

    configure_logging(settings)
    services = build_services(settings, resolver)
    try:
        asyncio.run(_serve_child(services, port, conn))
    finally:
        services.close()


async def _serve_child(services: Services, port: int, conn: Connection) -> None:
    from mailbridge.runtime import drain_ingress, start_ingress

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    server = await start_ingress(services, port=port, reuse_port=True)
    tasks = [asyncio.create_task(_report_metrics(conn, stop), name="metrics")]
    if services.settings.worker_enabled:
        # Outbound work is CPU-bound too: every process drains the shared outbox (claims take a
        # lease, so no row goes out twice from two processes).
        from mailbridge.outbound.worker import start_worker

        tasks.append(start_worker(services, stop))
    # Readable means "stop" from the parent, or end of file: the parent is gone (even by kill -9).
    loop.add_reader(conn.fileno(), stop.set)
    conn.send(("ready", None))
    await stop.wait()
    server.close()
    loop.remove_reader(conn.fileno())
    await drain_ingress(services)  # messages already received get their answer
    await asyncio.gather(*tasks, return_exceptions=True)


async def _report_metrics(conn: Connection, stop: asyncio.Event) -> None:
    while True:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=METRICS_EVERY)
        with contextlib.suppress(OSError, ValueError):
            conn.send(("metrics", observability.export_samples()))
        if stop.is_set():
            return
