"""``mailbridge serve``: HTTP API, SMTP/LMTP ingress, delivery worker and IMAP pollers in one event loop."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import resource
import signal
import socket
import sys
import time
from collections import Counter
from typing import Any

import uvicorn

from mailbridge.api.app import create_app
from mailbridge.settings import split_listen
from mailbridge.wiring import Services, pipeline_deps

log = logging.getLogger(__name__)

DRAIN_SECONDS = 20.0  # at shutdown, for messages already received to get their answer
DESCRIPTOR_RESERVE = 200  # beyond the connection caps: database, spool and raw files, DNS, IMAP, pipes


class LoopErrorLog:
    """The event loop's exception handler, rate-limited: one line per kind of error per interval.

    When the process runs out of descriptors, asyncio cannot accept: it reports every failed
    ``accept()`` here and tries again a second later (it never busy-loops). Each report used to be
    a full ERROR traceback, and with every listener failing a log grew by hundreds of MB a minute
    (finding 10). Now: a metric per failed accept, one WARNING per kind per ``interval`` saying how
    many were suppressed; other errors keep asyncio's own report (with its traceback), at most one per
    kind per interval.
    """

    def __init__(self, interval: float = 60.0, clock: Any = time.monotonic) -> None:
        self.interval = interval
        self.clock = clock
        self.last: dict[str, float] = {}
        self.suppressed: Counter[str] = Counter()

    def __call__(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        from mailbridge.observability import ACCEPT_ERRORS

        message = str(context.get("message", "event loop error"))
        exception = context.get("exception")
        accept = "accept" in message
        if accept:
            ACCEPT_ERRORS.inc()
        key = f"{message} {type(exception).__name__}"
        now = self.clock()
        previous = self.last.get(key)
        if previous is not None and now - previous < self.interval:
            self.suppressed[key] += 1
            return
        self.last[key] = now
        suppressed = self.suppressed.pop(key, 0)
        if accept:
            log.warning(
                "accept_failed",
                extra={"error": repr(exception), "suppressed": suppressed, "every_seconds": self.interval},
            )
        else:
            if suppressed:
                log.error("event_loop_error", extra={"loop_message": message, "suppressed": suppressed})
            loop.default_exception_handler(context)


def install_loop_guards(loop: asyncio.AbstractEventLoop) -> None:
    if not isinstance(loop.get_exception_handler(), LoopErrorLog):
        loop.set_exception_handler(LoopErrorLog())


# How long a thread may hold the GIL while another waits for it (CPython's default: 5 ms).
GIL_SWITCH_SECONDS = 0.0005


def share_the_gil() -> None:
    """Hand the GIL over every 0.5 ms instead of every 5 ms while threads compete for it.

    A reply's pipeline thread gives the GIL up at each statement, fsync and read, and must then
    wait up to the switch interval to get it back from a thread that is busy in Python — a large
    message being parsed, say. With ≈ 15 such waits per reply, 5 ms each turned a 10 ms reply into
    80 ms while a 137 MB message was processed (docs/benchmarks.md, isolation). Threads that only
    ever wait on I/O are unaffected; two busy threads switch more often, which costs little.
    """
    if sys.getswitchinterval() > GIL_SWITCH_SECONDS:
        sys.setswitchinterval(GIL_SWITCH_SECONDS)


def raise_descriptor_limit(needed: int) -> int:
    """Raise the soft descriptor limit to the hard one, and say so when the caps do not fit in it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 65536)
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
    if needed > soft:
        log.warning("descriptor_limit_low", extra={"limit": soft, "needed": needed})
    return soft


class ListenError(Exception):
    """A listener could not be opened (port in use, not allowed): one line for the operator, exit 2."""


def listen_error(setting: str, listen: str, exc: OSError) -> ListenError:
    if exc.errno == errno.EADDRINUSE:
        why = "the address is already in use (another mailbridge or another server on that port?)"
    elif exc.errno == errno.EACCES:
        why = "permission denied (ports below 1024 need privileges)"
    elif exc.errno == errno.EADDRNOTAVAIL:
        why = "no such address on this machine"
    else:
        why = exc.strerror or str(exc)
    return ListenError(f"{setting}: cannot listen on {listen}: {why}")


def bind_http(listen: str) -> socket.socket:
    """The HTTP socket, bound here rather than by uvicorn, which would log a traceback and exit."""
    host, port = split_listen(listen)
    try:
        infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        family, kind, proto, _, address = infos[0]
        sock = socket.socket(family, kind, proto)
    except OSError as exc:
        raise listen_error("http_listen", listen, exc) from None
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(2048)
        sock.setblocking(False)
    except OSError as exc:
        sock.close()
        raise listen_error("http_listen", listen, exc) from None
    return sock


async def start_ingress(
    services: Services, port: int | None = None, reuse_port: bool = False
) -> asyncio.Server:
    """The SMTP/LMTP listener; *port* and *reuse_port* let extra processes share one port."""
    from mailbridge.domain.practice_settings import SERVER_MAX_MESSAGE_BYTES
    from mailbridge.inbound.authenticate import organizational_domain
    from mailbridge.ingress.smtp import (
        ConnectionLimits,
        IngressHandler,
        SessionLimits,
        make_decider,
        start_smtp,
        tls_context,
    )
    from mailbridge.ingress.xforward import parse_networks

    organizational_domain("example.org")  # load the public-suffix list now, not on the first message
    share_the_gil()  # pipelines run in threads beside the event loop and the API's
    settings = services.settings
    install_loop_guards(asyncio.get_running_loop())
    host, configured_port = split_listen(settings.smtp_listen)
    port = configured_port if port is None else port
    handler = IngressHandler(
        pipeline_deps(services),
        make_decider(services),
        "lmtp" if settings.lmtp else "smtp",
        settings.smtp_max_bad_recipients,
    )
    tls = tls_context(settings.tls_cert, settings.tls_key) if settings.tls_cert and settings.tls_key else None
    try:
        server = await start_smtp(
            handler=handler,
            host=host,
            port=port,
            lmtp=settings.lmtp,
            hostname=settings.smtp_hostname,
            data_size_limit=SERVER_MAX_MESSAGE_BYTES,
            limits=ConnectionLimits(settings.smtp_max_connections, settings.smtp_max_connections_per_ip),
            spool_dir=settings.data_dir / "spool",
            large_transfers=settings.max_concurrent_large_transfers,
            session_limits=SessionLimits(
                command_timeout=settings.smtp_timeout_seconds,
                max_junk_commands=settings.smtp_max_junk_commands,
                data_idle=settings.smtp_data_idle_seconds,
                data_max=settings.smtp_data_max_seconds,
                large_transfer_bytes=settings.smtp_large_transfer_bytes,
                large_transfer_wait=settings.smtp_large_transfer_wait_seconds,
                large_transfer_min_rate=settings.smtp_large_transfer_min_rate,
            ),
            tls=tls,
            reuse_port=reuse_port,
            xforward_hosts=parse_networks(settings.smtp_xforward_hosts),
        )
    except OSError as exc:
        raise listen_error("smtp_listen", f"{host}:{port}", exc) from None
    services.ingress_handlers.append(handler)
    services.flags["smtp_listening"] = True
    log.info("smtp_listening", extra={"listen": settings.smtp_listen, "lmtp": settings.lmtp})
    return server


async def drain_ingress(services: Services, timeout: float = DRAIN_SECONDS) -> None:
    """After the listener closed: let messages already received get their answer. The pipeline
    would finish anyway (250 only after the commit), but a sender that misses the answer retries,
    and the retry is only recognised as a duplicate."""
    for handler in services.ingress_handlers:
        if not await handler.drained(timeout):
            log.warning("smtp_drain_timeout", extra={"in_flight": handler.in_pipeline})


async def run_all(services: Services, stop: asyncio.Event | None = None, announce: str = "") -> None:
    """Every part of ``serve``; *announce* is printed once both listeners are open."""
    from mailbridge.inbound.authenticate import organizational_domain

    settings = services.settings
    stop = stop or asyncio.Event()
    install_loop_guards(asyncio.get_running_loop())
    raise_descriptor_limit(settings.smtp_max_connections + settings.http_max_connections + DESCRIPTOR_RESERVE)
    organizational_domain("example.org")  # the IMAP pollers' pipeline too (cached: loaded once)
    tasks: list[asyncio.Task[None]] = []
    smtp_server = None
    cluster = None
    http_socket = bind_http(settings.http_listen)  # both listeners before anything starts
    if settings.smtp_enabled:
        from mailbridge.ingress.cluster import start_cluster

        processes = settings.effective_smtp_processes
        try:
            smtp_server = await start_ingress(services, reuse_port=processes > 1)
        except ListenError:
            http_socket.close()
            raise
        if processes > 1:
            port = smtp_server.sockets[0].getsockname()[1]
            cluster = await start_cluster(services, port, processes - 1)
    if announce:
        http_host, http_port = http_socket.getsockname()[:2]
        print(f"mailbridge: HTTP on {http_host}:{http_port}, {announce}", file=sys.stderr, flush=True)
    if settings.worker_enabled:
        from mailbridge.outbound.worker import start_worker

        if not settings.effective_public_url.startswith("https://"):
            # RFC 8058 one-click needs an https URI: mail clients hide the unsubscribe button otherwise
            log.warning(
                "public_url_not_https",
                extra={
                    "public_url": settings.effective_public_url,
                    "hint": "set public_url (MAILBRIDGE_PUBLIC_URL)",
                },
            )
        tasks.append(start_worker(services, stop))
        from mailbridge.webhooks.worker import start_webhook_worker

        tasks.append(start_webhook_worker(services, stop))
    from mailbridge.housekeeping import run_housekeeping
    from mailbridge.ingress.imap import run_pollers

    tasks.append(asyncio.create_task(run_housekeeping(services, stop), name="housekeeping"))

    tasks.append(asyncio.create_task(run_pollers(services, stop), name="imap"))
    server = uvicorn.Server(http_config(services))
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    # uvicorn captures SIGINT/SIGTERM while it serves and re-raises them once it has stopped, which
    # reaches the handlers above: either way every part stops together.
    http = asyncio.create_task(server.serve(sockets=[http_socket]), name="http")
    stopping = asyncio.create_task(stop.wait(), name="stop")
    await asyncio.wait({http, stopping}, return_when=asyncio.FIRST_COMPLETED)
    stop.set()
    server.should_exit = True
    if smtp_server is not None:
        smtp_server.close()
        services.flags["smtp_listening"] = False
    if cluster is not None:
        await cluster.stop()  # each child answers the messages it holds, as below
    await drain_ingress(services)
    await asyncio.gather(http, *tasks, return_exceptions=True)


def http_config(services: Services) -> uvicorn.Config:
    """uvicorn for the API, with the door's limits (see mailbridge/api/httpguard.py); the socket is
    bound by ``bind_http`` (a port in use is one line, not a traceback)."""
    from mailbridge.api.httpguard import guarded_protocol

    settings = services.settings
    return uvicorn.Config(
        create_app(services),
        log_config=None,
        lifespan="off",
        access_log=False,
        use_colors=False,
        http=guarded_protocol(settings.http_max_connections, settings.http_header_timeout_seconds),
        timeout_keep_alive=settings.http_keepalive_seconds,
    )


def serve(services: Services, announce: str = "") -> None:
    asyncio.run(run_all(services, announce=announce))
