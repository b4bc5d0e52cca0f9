"""``mailbridge serve``: HTTP API, SMTP/LMTP ingress, delivery worker and IMAP pollers in one event loop."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal

import uvicorn

from mailbridge.api.app import create_app
from mailbridge.settings import split_listen
from mailbridge.wiring import Services, pipeline_deps

log = logging.getLogger(__name__)

DRAIN_SECONDS = 20.0  # at shutdown, for messages already received to get their answer


async def start_ingress(
    services: Services, port: int | None = None, reuse_port: bool = False
) -> asyncio.Server:
    """The SMTP/LMTP listener; *port* and *reuse_port* let extra processes share one port."""
    from mailbridge.domain.practice_settings import PracticeSettings
    from mailbridge.inbound.authenticate import organizational_domain
    from mailbridge.ingress.smtp import (
        ConnectionLimits,
        IngressHandler,
        make_decider,
        start_smtp,
        tls_context,
    )
    from mailbridge.ingress.xforward import parse_networks

    organizational_domain("example.org")  # load the public-suffix list now, not on the first message
    settings = services.settings
    host, configured_port = split_listen(settings.smtp_listen)
    port = configured_port if port is None else port
    handler = IngressHandler(
        pipeline_deps(services),
        make_decider(services),
        "lmtp" if settings.lmtp else "smtp",
        settings.smtp_max_bad_recipients,
    )
    tls = tls_context(settings.tls_cert, settings.tls_key) if settings.tls_cert and settings.tls_key else None
    biggest = PracticeSettings(attachment_max_bytes=100 * 1024 * 1024).effective_message_max_bytes
    server = await start_smtp(
        handler=handler,
        host=host,
        port=port,
        lmtp=settings.lmtp,
        hostname=settings.smtp_hostname,
        data_size_limit=biggest,
        limits=ConnectionLimits(settings.smtp_max_connections, settings.smtp_max_connections_per_ip),
        spool_dir=settings.data_dir / "spool",
        large_transfers=settings.max_concurrent_large_transfers,
        timeout=settings.smtp_timeout_seconds,
        tls=tls,
        reuse_port=reuse_port,
        xforward_hosts=parse_networks(settings.smtp_xforward_hosts),
    )
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


async def run_all(services: Services, stop: asyncio.Event | None = None) -> None:
    from mailbridge.inbound.authenticate import organizational_domain

    settings = services.settings
    stop = stop or asyncio.Event()
    organizational_domain("example.org")  # the IMAP pollers' pipeline too (cached: loaded once)
    tasks: list[asyncio.Task[None]] = []
    smtp_server = None
    cluster = None
    if settings.smtp_enabled:
        from mailbridge.ingress.cluster import start_cluster

        processes = settings.effective_smtp_processes
        smtp_server = await start_ingress(services, reuse_port=processes > 1)
        if processes > 1:
            port = smtp_server.sockets[0].getsockname()[1]
            cluster = await start_cluster(services, port, processes - 1)
    if settings.worker_enabled:
        from mailbridge.outbound.worker import start_worker

        tasks.append(start_worker(services, stop))
    from mailbridge.housekeeping import run_housekeeping
    from mailbridge.ingress.imap import run_pollers

    tasks.append(asyncio.create_task(run_housekeeping(services, stop), name="housekeeping"))

    tasks.append(asyncio.create_task(run_pollers(services, stop), name="imap"))
    host, port = split_listen(settings.http_listen)
    server = uvicorn.Server(
        uvicorn.Config(
            create_app(services), host=host, port=port, log_config=None, lifespan="off", access_log=False
        )
    )
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    # uvicorn captures SIGINT/SIGTERM while it serves and re-raises them once it has stopped, which
    # reaches the handlers above: either way every part stops together.
    http = asyncio.create_task(server.serve(), name="http")
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


def serve(services: Services) -> None:
    asyncio.run(run_all(services))
