"""The SMTP and LMTP door: aiosmtpd with decisions at RCPT, DATA read in chunks to disk, one pipeline behind it.

aiosmtpd's own DATA reader keeps the whole message in memory, goes line by line on the event loop
(about 1.3 s of loop time for a 35 MB message, during which the process's HTTP API and every other
session stall) and its default exception answer is a permanent ``500 Error: (KeyError) …``. We
override them: DATA is read in large chunks and judged by :class:`~mailbridge.ingress.dataread.
DataReader` (bare CR or LF, line length, dot-stuffing, size, end of data, exact across chunk edges),
written to a spool file (large writes in a thread), and anything unexpected answers ``451 4.3.0``.

The door's resource limits (security review, finding 10):

- connections: a total and one per address block (an IPv4 address, an IPv6 /64: one subscriber
  holds a whole /64), ``421 4.7.0`` before the greeting;
- the command timer restarts only on progress (a first greeting, MAIL, RCPT, DATA, STARTTLS that
  succeeded); NOOP, RSET, VRFY, HELP, EXPN and repeated greetings are junk, counted, and past the
  limit answered ``421 4.7.0`` (Postfix's ``smtpd_junk_command_limit``); a timeout answers ``421 4.4.2``;
- DATA: no byte for ``smtp_data_idle_seconds`` or a transfer longer than ``smtp_data_max_seconds``
  ends the connection (``421 4.4.2``); past ``smtp_large_transfer_bytes`` (4 MB) a transfer needs
  one of a few large-transfer slots, waits for one at most ``smtp_large_transfer_wait_seconds``
  (then ``451 4.3.2``: before 354 when SIZE= announced it, else after the data, which is drained
  and not kept), and a slot holder slower than ``smtp_large_transfer_min_rate`` over a data-idle
  window loses its connection and its slot.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import os
import ssl
import tempfile
from collections import Counter
from collections.abc import Awaitable, Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from aiosmtpd.lmtp import LMTP
from aiosmtpd.smtp import SMTP, Envelope, Session

from mailbridge import replies
from mailbridge.domain.db import transaction
from mailbridge.domain.models import InboundLog, InboundState, Practice
from mailbridge.inbound import pipeline
from mailbridge.inbound.envelope import RecipientDecision, Target, decide_recipient
from mailbridge.ingress import xforward
from mailbridge.ingress.dataread import DataOutcome, DataReader
from mailbridge.logs import inbound_decision
from mailbridge.observability import INBOUND, SMTP_LIMITS, SMTP_REPLIES, count_practice_inbound
from mailbridge.replies import SmtpReply

log = logging.getLogger(__name__)

PIPELINE_THREADS = 4  # messages processed at once per process: CPU-bound, more only fight for the GIL
# Pipeline runs get threads of their own, one pool per process: a run may wait on the SQLite writer
# gate, and RCPT decisions (the loop's default executor) must not queue behind.
_PIPELINES = ThreadPoolExecutor(max_workers=PIPELINE_THREADS, thread_name_prefix="pipeline")
# Sender authentication (DKIM/SPF/DMARC) waits on DNS: it runs on a pool of its own, so messages
# held by a slow DNS never take the threads a reply that needs no slow answer is waiting for
# (finding 9: four such messages used to delay every other one by 31 s). Waiting threads cost no
# CPU; each message's DNS time is bounded by dns_budget_seconds.
AUTHENTICATION_THREADS = 16
_AUTHENTICATION = ThreadPoolExecutor(max_workers=AUTHENTICATION_THREADS, thread_name_prefix="authenticate")
_POOLS = {"cpu": _PIPELINES, "dns": _AUTHENTICATION}
_SPOOL_WRITERS = ThreadPoolExecutor(max_workers=4, thread_name_prefix="spool")

READ_CHUNK = 256 * 1024  # at most what one read hands the DATA reader (asyncio receives ≤ 256 KiB a time)
SPOOL_FLUSH = 1024 * 1024  # spool writes this large go to a thread; smaller ones wait in memory


def address_block(ip: str) -> str:
    """What the per-IP cap counts: an IPv4 address, or the /64 an IPv6 address belongs to.

    One IPv6 subscriber (a home, a VM) is routed a whole /64 (RFC 6177) and can pick a fresh address
    for every connection; counting exact addresses let it walk around the cap (finding 10).
    """
    try:
        address = ipaddress.ip_address(ip.split("%", 1)[0])
    except ValueError:
        return ip  # not an IP address (a UNIX socket): counted as it is
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    if isinstance(address, ipaddress.IPv4Address):
        return str(address)
    return str(ipaddress.IPv6Network((int(address) >> 64 << 64, 64)))


class ConnectionLimits:
    """Global and per-address-block connection caps: a peer over them gets 421 4.7.0 before the greeting."""

    def __init__(self, total: int, per_ip: int) -> None:
        self.total = total
        self.per_ip = per_ip
        self.by_block: Counter[str] = Counter()
        self.count = 0

    def acquire(self, ip: str, per_ip: bool = True) -> bool:
        """*per_ip* False for an MTA in front (XFORWARD host): every client comes through it."""
        block = address_block(ip)
        if self.count >= self.total or (per_ip and self.by_block[block] >= self.per_ip):
            return False
        self.by_block[block] += 1
        self.count += 1
        return True

    def release(self, ip: str) -> None:
        block = address_block(ip)
        self.count -= 1
        self.by_block[block] -= 1
        if self.by_block[block] <= 0:
            del self.by_block[block]


@dataclass(frozen=True)
class SessionLimits:
    """Time and work one SMTP session may take (the settings of the same names, see the module docstring)."""

    command_timeout: float = 300.0
    max_junk_commands: int = 100
    data_idle: float = 60.0
    data_max: float = 1200.0
    large_transfer_bytes: int = 4 * 1024 * 1024  # past this a transfer takes a large-transfer slot
    large_transfer_wait: float = 30.0
    large_transfer_min_rate: int = 8192


_F = TypeVar("_F", bound=Callable[..., Awaitable[None]])


def _same_syntax(base: type[SMTP], name: str) -> Callable[[_F], _F]:
    """Keep aiosmtpd's HELP text for a command we override (it reads attributes of the method)."""

    def decorate(method: _F) -> _F:
        parent = getattr(base, name)
        for attribute in ("__smtp_syntax__", "__smtp_syntax_extended__", "__smtp_syntax_when__"):
            if hasattr(parent, attribute):
                setattr(method, attribute, getattr(parent, attribute))
        return method

    return decorate


def _unread(reader: asyncio.StreamReader, data: bytes) -> None:
    """Give bytes read past the end of the data (the next commands) back to the command reader.

    asyncio's StreamReader has no public way to do this; aiosmtpd itself clears the same buffer at
    STARTTLS. Bytes that arrived meanwhile are behind them in the buffer, as on the wire.
    """
    reader._buffer[0:0] = data  # type: ignore[attr-defined]


def _forget_buffered(reader: asyncio.StreamReader) -> None:
    """Nothing already received from a peer we are hanging up on may run as a command."""
    reader._buffer.clear()  # type: ignore[attr-defined]


class _Spool:
    """One transfer's spool file.

    Writes of ``SPOOL_FLUSH`` or more go to a thread, so a slow or full disk never holds the event
    loop; a message's last, smaller write stays on the loop: it lands in the page cache in
    microseconds, less than a thread hop costs (the pipeline's ``store_raw`` puts the durable copy
    into the object store in its own thread). A write still running when the peer goes away removes the file when it is done.
    """

    def __init__(self, path: Path, fd: int) -> None:
        self.path = path
        self.file = os.fdopen(fd, "wb", buffering=SPOOL_FLUSH)
        self.pending: list[bytes] = []
        self.pending_bytes = 0
        self.keeping = True  # false once the message is refused: nothing more is written
        self.failed = False  # a write failed (full disk): the answer will be 451, after the data
        self.writing: Future[None] | None = None

    def add(self, data: bytes) -> None:
        if self.keeping and not self.failed:
            self.pending.append(data)
            self.pending_bytes += len(data)

    def stop(self) -> None:
        self.keeping = False
        self.pending.clear()
        self.pending_bytes = 0

    async def flush(self, final: bool = False) -> None:
        if not self.pending or (self.pending_bytes < SPOOL_FLUSH and not final):
            return
        data = self.pending[0] if len(self.pending) == 1 else b"".join(self.pending)
        self.pending.clear()
        self.pending_bytes = 0
        if len(data) < SPOOL_FLUSH:
            self._write(data)
            return
        self.writing = _SPOOL_WRITERS.submit(self._write, data)
        await asyncio.wrap_future(self.writing)

    def _write(self, data: bytes) -> None:
        if self.failed:
            return
        try:
            self.file.write(data)
        except (OSError, ValueError):  # ValueError: closed under a write of a connection already gone
            self.failed = True

    def close(self) -> bool:
        """Close after the last flush; false when anything could not be written."""
        try:
            self.file.close()
        except OSError:
            self.failed = True
        return not self.failed

    def discard(self) -> None:
        def remove(_: object = None) -> None:
            with contextlib.suppress(OSError):
                self.file.close()
            self.path.unlink(missing_ok=True)

        if self.writing is not None and not self.writing.done():
            self.writing.add_done_callback(remove)
        else:
            remove()


class _GuardedSession:
    """What an SMTP or LMTP session of ours adds to aiosmtpd's: limits, the progress timer, chunked
    DATA, and XFORWARD from the MTAs in front (Postfix's before-queue proxy)."""

    limits: ConnectionLimits
    session_limits: SessionLimits
    spool_dir: Path
    large_transfers: asyncio.Semaphore
    event_handler: IngressHandler
    xforward_hosts: tuple[Any, ...] = ()
    xforward_trusted = False  # this connection comes from an MTA allowed to send XFORWARD

    _timer_armed = False
    _last_code = ""  # first digit of the last reply sent
    _junk = 0
    _in_data = False

    async def _handle_client(self) -> None:
        me: Any = self
        ip = _peer_ip(me.session) or ""
        self.xforward_trusted = xforward.trusted(ip, self.xforward_hosts)
        if not self.limits.acquire(ip, per_ip=not self.xforward_trusted):
            SMTP_LIMITS.labels("connections").inc()
            SMTP_REPLIES.labels("421").inc()
            await self.push(replies.TOO_MANY_CONNECTIONS.wire())
            me.transport.close()
            return
        try:
            await super()._handle_client()  # type: ignore[misc]
        finally:
            self.limits.release(ip)

    async def smtp_XFORWARD(self, arg: str) -> None:
        """Postfix's XFORWARD (see mailbridge/ingress/xforward.py): trusted MTAs only, outside a transaction."""
        me: Any = self
        if await me.check_helo_needed():
            return
        if not self.xforward_trusted:
            if not getattr(me.session, "xforward_warned", False):  # once per connection: no log flood
                me.session.xforward_warned = True
                log.warning("xforward_refused", extra={"peer": _peer_ip(me.session)})
            await me.push(replies.XFORWARD_DENIED.wire())
            return
        envelope: Envelope = me.envelope
        if envelope.mail_from is not None:
            await me.push(replies.XFORWARD_IN_TRANSACTION.wire())
            return
        try:
            envelope.xforward = xforward.apply(getattr(envelope, "xforward", None), arg or "")  # type: ignore[attr-defined]
        except xforward.XforwardSyntaxError:
            await me.push(replies.XFORWARD_SYNTAX.wire())
            return
        await me.push(replies.XFORWARD_OK.wire())

    # ---- the command timer: only progress restarts it -----------------------------------------------

    def _reset_timeout(self, duration: float | None = None) -> None:
        # aiosmtpd restarts the timer before every command it recognises, NOOP included (finding 10):
        # after the first arming, only an explicit duration (progress, DATA) restarts it.
        if duration is None and self._timer_armed:
            return
        self._timer_armed = True
        super()._reset_timeout(duration)  # type: ignore[misc]

    def _progress(self) -> None:
        self._reset_timeout(self.session_limits.command_timeout)

    def _timeout_cb(self) -> None:
        me: Any = self
        phase = "data_idle" if self._in_data else "command_timeout"
        log.info("smtp_timeout", extra={"peer": _peer_ip(me.session), "phase": phase})
        SMTP_LIMITS.labels(phase).inc()
        if me.transport is not None and not me.transport.is_closing():
            SMTP_REPLIES.labels("421").inc()
            me.transport.write(replies.TIMEOUT.wire().encode() + b"\r\n")
            _forget_buffered(me._reader)
        super()._timeout_cb()  # type: ignore[misc]

    async def push(self, status: str | bytes) -> None:
        self._last_code = (status[:1].decode() if isinstance(status, bytes) else status[:1]) if status else ""
        await super().push(status)  # type: ignore[misc]

    def _hang_up(self) -> None:
        """Close now; nothing already buffered runs as a command, and the session task ends."""
        me: Any = self
        _forget_buffered(me._reader)
        if me.transport is not None:
            me.transport.close()
        if me._handler_coroutine is not None:
            me._handler_coroutine.cancel()

    async def _junk_command(self) -> bool:
        """Count a command that makes no progress; true when the session was closed for too many."""
        me: Any = self
        self._junk += 1
        if self._junk <= self.session_limits.max_junk_commands:
            return False
        log.warning("smtp_junk_commands", extra={"peer": _peer_ip(me.session), "count": self._junk})
        SMTP_LIMITS.labels("junk_commands").inc()
        SMTP_REPLIES.labels("421").inc()
        await self.push(replies.TOO_MANY_JUNK_COMMANDS.wire())
        self._hang_up()
        return True

    async def _greeting(self, command: Callable[[str], Awaitable[None]], hostname: str) -> None:
        me: Any = self
        if getattr(me.session, "greeted", False) and await self._junk_command():
            return
        first = not getattr(me.session, "greeted", False)
        await command(hostname)
        if first and self._last_code == "2":
            me.session.greeted = True  # a new session after STARTTLS greets again: progress again
            self._progress()

    @_same_syntax(SMTP, "smtp_HELO")
    async def smtp_HELO(self, hostname: str) -> None:
        await self._greeting(super().smtp_HELO, hostname)  # type: ignore[misc]

    @_same_syntax(SMTP, "smtp_EHLO")
    async def smtp_EHLO(self, hostname: str) -> None:
        await self._greeting(super().smtp_EHLO, hostname)  # type: ignore[misc]

    @_same_syntax(SMTP, "smtp_MAIL")
    async def smtp_MAIL(self, arg: str | None) -> None:
        await super().smtp_MAIL(arg)  # type: ignore[misc]
        if self._last_code == "2":
            self._progress()

    @_same_syntax(SMTP, "smtp_RCPT")
    async def smtp_RCPT(self, arg: str | None) -> None:
        await super().smtp_RCPT(arg)  # type: ignore[misc]
        if self._last_code == "2":
            self._progress()

    @_same_syntax(SMTP, "smtp_STARTTLS")
    async def smtp_STARTTLS(self, arg: str) -> None:
        await super().smtp_STARTTLS(arg)  # type: ignore[misc]
        if self._last_code == "2":
            self._progress()

    @_same_syntax(SMTP, "smtp_NOOP")
    async def smtp_NOOP(self, arg: str) -> None:
        if not await self._junk_command():
            await super().smtp_NOOP(arg)  # type: ignore[misc]

    @_same_syntax(SMTP, "smtp_RSET")
    async def smtp_RSET(self, arg: str) -> None:
        if not await self._junk_command():
            await super().smtp_RSET(arg)  # type: ignore[misc]

    @_same_syntax(SMTP, "smtp_VRFY")
    async def smtp_VRFY(self, arg: str) -> None:
        if not await self._junk_command():
            await super().smtp_VRFY(arg)  # type: ignore[misc]

    @_same_syntax(SMTP, "smtp_HELP")
    async def smtp_HELP(self, arg: str) -> None:
        if not await self._junk_command():
            await super().smtp_HELP(arg)  # type: ignore[misc]

    async def smtp_EXPN(self, arg: str) -> None:
        if not await self._junk_command():
            await super().smtp_EXPN(arg)  # type: ignore[misc]

    # ---- DATA ------------------------------------------------------------------------------------

    async def _take_slot(self) -> bool:
        """Wait, bounded, for a large-transfer slot; the data timer waits as long (we are not reading)."""
        wait = self.session_limits.large_transfer_wait
        self._reset_timeout(wait + self.session_limits.data_idle)
        try:
            await asyncio.wait_for(self.large_transfers.acquire(), wait)
        except TimeoutError:
            log.warning("large_transfer_busy", extra={"waited": wait})
            SMTP_LIMITS.labels("large_transfer_busy").inc()
            return False
        return True

    async def _cut_off(self, why: str, received: int) -> None:
        me: Any = self
        log.warning(why, extra={"peer": _peer_ip(me.session), "bytes": received})
        SMTP_LIMITS.labels(why).inc()
        SMTP_REPLIES.labels("421").inc()
        await self.push(replies.TIMEOUT.wire())
        self._hang_up()

    @_same_syntax(SMTP, "smtp_DATA")
    async def smtp_DATA(self, arg: str) -> None:
        me: Any = self
        if await me.check_helo_needed() or await me.check_auth_needed("DATA"):
            return
        envelope: Envelope = me.envelope
        if not envelope.rcpt_tos:
            await me.push("503 5.5.1 Error: need RCPT command")
            return
        if arg:
            await me.push("501 5.5.4 Syntax: DATA")
            return
        limit: int = min(getattr(envelope, "size_limit", None) or me.data_size_limit, me.data_size_limit)
        holding = False
        declared = _declared_size(envelope.mail_options)
        if declared is not None and declared > self.session_limits.large_transfer_bytes:
            # RFC 1870: the size is known before any byte is sent; the slot is taken (or refused) now.
            if not await self._take_slot():
                await self._refuse(envelope, replies.LARGE_TRANSFERS_BUSY, "large_transfer_busy")
                return
            holding = True
        try:
            reply = await self._receive(envelope, limit, holding)
        finally:
            if self._holding:
                self.large_transfers.release()
            self._holding = False
        if reply is not None:
            me._set_post_data_state()
            await me.push(reply)
            self._progress()
            self._junk = 0  # a transaction completed (Postfix resets its count once mail is delivered)

    _holding = False

    async def _refuse(self, envelope: Envelope, reply: SmtpReply, reason: str) -> None:
        me: Any = self
        await self.event_handler.log_refusal(me.session, envelope, reply, reason)
        me._set_post_data_state()
        await me.push(reply.wire())

    async def _receive(self, envelope: Envelope, limit: int, holding: bool) -> str | None:
        """354, the data, then the answer (None when the connection ended).

        A slot held when the data is complete is kept until the pipeline has answered: the pipeline
        reads a large file too, and the slots bound how many do at once.
        """
        me: Any = self
        self._holding = holding
        try:  # the spool file exists before 354: after it, every line is message data, never a command
            self.spool_dir.mkdir(parents=True, exist_ok=True)
            fd, name = tempfile.mkstemp(dir=self.spool_dir, suffix=".eml")
        except OSError:
            log.warning("tempfail_disk", extra={"stage": "spool"})
            SMTP_REPLIES.labels(str(replies.TEMPFAIL.code)).inc()
            return replies.TEMPFAIL.wire()
        spool = _Spool(Path(name), fd)
        limits = self.session_limits
        loop = asyncio.get_running_loop()
        reader = DataReader(limit)
        busy = False
        keep = False
        received = 0
        await me.push("354 End data with <CR><LF>.<CR><LF>")
        self._in_data = True
        started = window = loop.time()
        window_bytes = 0
        self._reset_timeout(limits.data_idle)
        try:
            while not reader.done:
                try:
                    chunk: bytes = await me._reader.read(READ_CHUNK)
                except asyncio.CancelledError:  # the client went away mid-DATA (P11): nothing is kept
                    log.info("conn_lost_in_data", extra={"peer": _peer_ip(me.session), "bytes": received})
                    raise
                if not chunk:  # end of stream (aiosmtpd normally cancels us first)
                    log.info("conn_lost_in_data", extra={"peer": _peer_ip(me.session), "bytes": received})
                    return None
                received += len(chunk)
                now = loop.time()
                self._reset_timeout(limits.data_idle)
                if now - started > limits.data_max:
                    await self._cut_off("data_too_long", received)
                    return None
                if self._holding:
                    window_bytes += len(chunk)
                    if now - window >= limits.data_idle:
                        if window_bytes < limits.large_transfer_min_rate * (now - window):
                            await self._cut_off("data_too_slow", received)  # the slot goes to another
                            return None
                        window, window_bytes = now, 0
                piece = reader.feed(chunk)
                if piece:
                    spool.add(piece)
                if reader.refused and spool.keeping:
                    spool.stop()  # drain to the end of DATA, keep nothing (RFC 5321 §4.2.5)
                if spool.keeping and not self._holding and reader.size > limits.large_transfer_bytes:
                    if await self._take_slot():
                        self._holding = True
                        window, window_bytes = loop.time(), 0
                        self._reset_timeout(limits.data_idle)
                    else:
                        busy = True
                        spool.stop()
                await spool.flush()
            if reader.rest:
                _unread(me._reader, reader.rest)
            await spool.flush(final=True)
            disk_ok = spool.close()
            outcome = reader.outcome
            if not disk_ok:
                log.warning("tempfail_disk", extra={"stage": "spool_write"})
                reply, reason = replies.TEMPFAIL, "tempfail_disk"
            elif outcome is DataOutcome.too_long:
                reply, reason = replies.LINE_TOO_LONG, outcome.value
            elif outcome is DataOutcome.bare_line_ending:
                reply, reason = replies.BARE_LINE_ENDING, outcome.value
                log.warning("smtp_smuggling_suspect", extra={"peer": _peer_ip(me.session)})
            elif outcome is DataOutcome.too_big:
                reply, reason = replies.message_too_big(limit), outcome.value
            elif busy:
                reply, reason = replies.LARGE_TRANSFERS_BUSY, "large_transfer_busy"
            else:
                keep = True
                envelope.spool_path = spool.path  # type: ignore[attr-defined]
                envelope.spool_size = reader.size  # type: ignore[attr-defined]
                self._in_data = False
                self._reset_timeout(limits.command_timeout)  # the pipeline's time is bounded by its budgets
                status: str = await me._call_handler_hook("DATA")
                return status
            await self.event_handler.log_refusal(me.session, envelope, reply, reason)
            return reply.wire()
        finally:
            self._in_data = False
            if not keep:
                spool.discard()


class IngressSMTP(_GuardedSession, SMTP):
    pass


class IngressLMTP(_GuardedSession, LMTP):
    @_same_syntax(LMTP, "smtp_LHLO")
    async def smtp_LHLO(self, arg: str) -> None:
        await self._greeting(super().smtp_LHLO, arg)


def _declared_size(mail_options: list[str]) -> int | None:
    for option in mail_options:
        key, _, value = option.partition("=")
        if key.upper() == "SIZE" and value.isdigit():
            return int(value)
    return None


def _peer_ip(session: Session) -> str | None:
    peer = session.peer
    if isinstance(peer, tuple):
        return str(peer[0])
    return str(peer) if peer else None


def _client(session: Session, envelope: Envelope) -> tuple[str | None, str | None]:
    """The sending client's address and HELO name: XFORWARD's when a trusted MTA sent it, never mixed
    with the connection's own (XFORWARD_README: "must not mix XFORWARD attributes with attributes
    from the current SMTP session")."""
    forwarded: xforward.Forwarded | None = getattr(envelope, "xforward", None)
    if forwarded is not None:
        return forwarded.addr, forwarded.helo
    return _peer_ip(session), session.host_name


class IngressHandler:
    """aiosmtpd hooks: quick decisions at MAIL/RCPT, the pipeline at DATA, blocking work in threads."""

    def __init__(self, deps: pipeline.Deps, decide: Any, door: str, max_bad_recipients: int) -> None:
        self.deps = deps
        self.decide = decide  # (address) -> RecipientDecision, runs in a worker thread
        self.door = door
        self.max_bad = max_bad_recipients
        self.in_pipeline = 0  # DATA transactions between the final "." and their answer
        self._runs: set[asyncio.Task[pipeline.Outcome]] = set()

    async def handle_EHLO(
        self, server: SMTP, session: Session, envelope: Envelope, hostname: str, responses: list[str]
    ) -> list[str]:
        """aiosmtpd's EHLO answer, plus XFORWARD for the MTAs listed in smtp_xforward_hosts."""
        session.host_name = hostname
        if getattr(server, "xforward_trusted", False):
            responses.insert(len(responses) - 1, "250-XFORWARD " + " ".join(xforward.ATTRIBUTES))
        return responses

    async def drained(self, timeout: float) -> bool:
        """Wait (at most *timeout*) until every message received has had its answer sent back."""
        deadline = asyncio.get_running_loop().time() + timeout
        while self.in_pipeline and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.05)
        return self.in_pipeline == 0

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, rcpt_options: list[str]
    ) -> str:
        if envelope.rcpt_tos:
            # DATA has one answer for all recipients: one conversation per transaction (T8).
            return self._count(replies.TOO_MANY_TOKENS)
        try:
            decision: RecipientDecision = await asyncio.to_thread(self.decide, address)
        except Exception:
            log.warning("rcpt_tempfail", exc_info=True)
            return self._count(replies.TEMPFAIL)
        if decision.target is None:
            bad = getattr(session, "bad_recipients", 0) + 1
            session.bad_recipients = bad  # type: ignore[attr-defined]
            await asyncio.to_thread(self._log_rcpt_refusal, session, envelope, address, decision)
            if bad >= self.max_bad:
                log.warning("token_bruteforce", extra={"peer": _client(session, envelope)[0]})
                asyncio.get_running_loop().call_soon(server.transport.close)  # type: ignore[union-attr]
                return self._count(replies.TOO_MANY_BAD_RECIPIENTS)
            return self._count(decision.reply)
        declared = _declared_size(envelope.mail_options)
        if decision.size_limit and declared and declared > decision.size_limit:
            return self._count(
                replies.message_too_big(decision.size_limit)
            )  # P5: refuse before the bytes come
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        envelope.target = decision.target  # type: ignore[attr-defined]
        envelope.size_limit = decision.size_limit  # type: ignore[attr-defined]
        return self._count(decision.reply)

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        target: Target = envelope.target  # type: ignore[attr-defined]
        peer, helo = _client(session, envelope)
        env = pipeline.Envelope(
            door=self.door,
            peer=peer,
            helo=helo,
            mail_from=str(envelope.mail_from or ""),
            target=target,
        )
        spooled: Any = envelope  # carries spool_path/spool_size set by the DATA reader
        # The run goes on if the client disconnects meanwhile: the message is stored (or refused)
        # all the same, and the sender's retry is recognised as a duplicate.
        self.in_pipeline += 1
        run = asyncio.ensure_future(self._run(env, spooled.spool_path, spooled.spool_size))
        self._runs.add(run)
        run.add_done_callback(self._runs.discard)
        try:
            outcome = await asyncio.shield(run)
        except asyncio.CancelledError:
            run.add_done_callback(self._left_pipeline)  # counted until the run itself is over
            raise
        except BaseException:
            self.in_pipeline -= 1
            raise
        # The answer is pushed right after this hook returns, before the loop runs anything else.
        self.in_pipeline -= 1
        return self._count(outcome.reply)

    def _left_pipeline(self, _: object) -> None:
        self.in_pipeline -= 1

    async def _run(self, env: pipeline.Envelope, path: Path, size: int) -> pipeline.Outcome:
        """The pipeline phase by phase, each on its pool: DNS waits never hold a CPU-bound thread.

        Cancelled (the loop shutting down past the drain time), the run still ends in a thread, as it
        did when it was one call: its row gets a final state and its files are cleaned up.
        """
        current = pipeline.Run(self.deps, env, path, size)
        while True:
            phase = _POOLS[current.pool].submit(current.advance)
            try:
                outcome = await asyncio.wrap_future(phase)
            except asyncio.CancelledError:
                phase.add_done_callback(lambda _: _finish_in_a_thread(current))
                raise
            if outcome is not None:
                return outcome

    async def handle_exception(self, error: Exception) -> str:
        log.error("smtp_unexpected_error", exc_info=error)
        return self._count(replies.TEMPFAIL)

    async def log_refusal(self, session: Session, envelope: Envelope, reply: SmtpReply, reason: str) -> None:
        """DATA refused before the pipeline (bare LF, too big, line too long, busy) still leaves a log row."""
        target: Target | None = getattr(envelope, "target", None)
        await asyncio.to_thread(self._write_row, session, envelope, target, reason, reply.wire())
        self._count(reply)

    def _log_rcpt_refusal(
        self, session: Session, envelope: Envelope, address: str, decision: RecipientDecision
    ) -> None:
        from mailbridge.inbound.envelope import split_address

        parts = split_address(address)
        shown = f"{parts[0][:10]}…@{parts[1]}" if parts else "(malformed)"
        self._write_row(session, envelope, None, decision.reason, decision.reply.wire(), rcpt=shown)

    def _write_row(
        self,
        session: Session,
        envelope: Envelope,
        target: Target | None,
        reason: str,
        wire: str,
        rcpt: str = "",
    ) -> None:
        peer, helo = _client(session, envelope)
        row_id: str | None = None
        practice: str | None = None
        state = InboundState.deferred if wire.startswith("4") else InboundState.rejected
        try:
            with transaction(self.deps.sessions) as db:
                row = InboundLog(
                    practice_id=target.practice_id if target else None,
                    door=self.door,
                    peer=peer,
                    helo=(helo or "")[:255] or None,
                    mail_from=str(envelope.mail_from or "")[:320],
                    rcpt=(target.redacted if target else rcpt)[:320],
                    state=state,
                    reason=reason,
                    smtp_reply=wire[:255],
                )
                db.add(row)
                db.flush()
                row_id = row.id
                known = db.get(Practice, target.practice_id) if target else None
                practice = known.slug if known is not None else None
            INBOUND.labels(state.value, reason).inc()
        except Exception:
            log.warning("inbound_log_write_failed", extra={"reason": reason})
        count_practice_inbound(practice, state.value)
        # the line is written even when the row could not be: it is then the only trace
        inbound_decision(
            door=self.door,
            practice=practice,
            inbound_id=row_id,
            message_id=None,
            state=state.value,
            reason=reason,
            reply=wire,
        )

    @staticmethod
    def _count(reply: SmtpReply) -> str:
        SMTP_REPLIES.labels(str(reply.code)).inc()
        return reply.wire()


def _finish_in_a_thread(current: pipeline.Run) -> None:
    def finish() -> None:
        while current.advance() is None:
            pass

    with contextlib.suppress(RuntimeError):  # the pool is already shut down: the process is exiting
        _PIPELINES.submit(finish)


def tls_context(cert: Path, key: Path) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(cert, key)
    return context


async def start_smtp(
    *,
    handler: IngressHandler,
    host: str,
    port: int,
    lmtp: bool,
    hostname: str,
    data_size_limit: int,
    limits: ConnectionLimits,
    spool_dir: Path,
    large_transfers: int,
    session_limits: SessionLimits,
    tls: ssl.SSLContext | None,
    reuse_port: bool = False,
    xforward_hosts: tuple[Any, ...] = (),
) -> asyncio.Server:
    cls = IngressLMTP if lmtp else IngressSMTP
    semaphore = asyncio.Semaphore(large_transfers)

    def factory() -> SMTP:
        server = cls(
            handler,
            hostname=hostname,
            data_size_limit=data_size_limit,
            enable_SMTPUTF8=True,
            decode_data=False,
            tls_context=tls,
            require_starttls=False,
            timeout=session_limits.command_timeout,
            ident="mailbridge ESMTP",
        )
        server.limits = limits
        server.session_limits = session_limits
        server.spool_dir = spool_dir
        server.large_transfers = semaphore
        server.xforward_hosts = xforward_hosts
        return server

    loop = asyncio.get_running_loop()
    return await loop.create_server(factory, host=host, port=port, reuse_port=reuse_port or None)


def make_decider(services: Any) -> Any:
    """The RCPT decision with a short read of its own (runs in a worker thread).

    The decision is one SELECT (``envelope._DECIDE``), consistent by itself: on PostgreSQL it runs
    in autocommit, without the BEGIN and ROLLBACK round trips a transaction around it would add
    (issue 17 item 4). SQLite's driver starts no transaction for a read anyway."""
    autocommit = {"isolation_level": "AUTOCOMMIT"} if services.engine.dialect.name == "postgresql" else None

    def decide(address: str) -> RecipientDecision:
        with services.sessions() as session:
            if autocommit is not None:
                session.connection(execution_options=autocommit)
            return decide_recipient(session, services.tokens, services.verp_secret, address)

    return decide
