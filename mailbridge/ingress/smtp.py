"""The SMTP and LMTP door: aiosmtpd with decisions at RCPT, DATA spooled to disk, one pipeline behind it.

aiosmtpd's own DATA reader keeps the whole message in memory and its default exception answer is a
permanent ``500 Error: (KeyError) …``. We override both: DATA lines go straight to a spool file (bare
CR or LF flagged on the way, RFC 5321 §2.3.8), and anything unexpected answers ``451 4.3.0``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import ssl
import tempfile
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from aiosmtpd.lmtp import LMTP
from aiosmtpd.smtp import SMTP, Envelope, Session

from mailbridge import replies
from mailbridge.domain.db import transaction
from mailbridge.domain.models import InboundLog, InboundState, Practice
from mailbridge.inbound import pipeline
from mailbridge.inbound.envelope import RecipientDecision, Target, decide_recipient
from mailbridge.ingress import xforward
from mailbridge.logs import inbound_decision
from mailbridge.observability import INBOUND, SMTP_REPLIES, count_practice_inbound
from mailbridge.replies import SmtpReply

log = logging.getLogger(__name__)

PIPELINE_THREADS = 4  # messages processed at once per process: CPU-bound, more only fight for the GIL
# Pipeline runs get threads of their own, one pool per process: a run may wait seconds on DNS or
# on the SQLite writer gate, and RCPT decisions (the loop's default executor) must not queue behind.
_PIPELINES = ThreadPoolExecutor(max_workers=PIPELINE_THREADS, thread_name_prefix="pipeline")
LARGE_TRANSFER = 4 * 1024 * 1024  # past this a transfer takes a slot of the large-transfer semaphore


class ConnectionLimits:
    """Global and per-IP connection caps: a peer over them gets 421 4.7.0 before the greeting."""

    def __init__(self, total: int, per_ip: int) -> None:
        self.total = total
        self.per_ip = per_ip
        self.by_ip: Counter[str] = Counter()

    def acquire(self, ip: str, per_ip: bool = True) -> bool:
        """*per_ip* False for an MTA in front (XFORWARD host): every client comes through it."""
        if sum(self.by_ip.values()) >= self.total or (per_ip and self.by_ip[ip] >= self.per_ip):
            return False
        self.by_ip[ip] += 1
        return True

    def release(self, ip: str) -> None:
        self.by_ip[ip] -= 1
        if self.by_ip[ip] <= 0:
            del self.by_ip[ip]


class _SpoolingMixin:
    """Replaces aiosmtpd's in-memory DATA reader with one that writes to a spool file; adds XFORWARD."""

    limits: ConnectionLimits
    spool_dir: Path
    large_transfers: asyncio.Semaphore
    xforward_hosts: tuple[Any, ...] = ()
    xforward_trusted = False  # this connection comes from an MTA allowed to send XFORWARD

    async def _handle_client(self) -> None:
        me: Any = self
        peer = me.session.peer
        ip = peer[0] if isinstance(peer, tuple) else str(peer)
        self.xforward_trusted = xforward.trusted(ip, self.xforward_hosts)
        if not self.limits.acquire(ip, per_ip=not self.xforward_trusted):
            await self.push(replies.TOO_MANY_CONNECTIONS.wire())  # type: ignore[attr-defined]
            self.transport.close()  # type: ignore[attr-defined]
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
        limit: int = getattr(envelope, "size_limit", None) or me.data_size_limit
        try:  # the spool file exists before 354: after it, every line is message data, never a command
            self.spool_dir.mkdir(parents=True, exist_ok=True)
            fd, name = tempfile.mkstemp(dir=self.spool_dir, suffix=".eml")
        except OSError:
            log.warning("tempfail_disk", extra={"stage": "spool"})
            await me.push(replies.TEMPFAIL.wire())
            return
        path = Path(name)
        await me.push("354 End data with <CR><LF>.<CR><LF>")
        size = 0
        too_long = too_much = bare = disk_error = False
        holding_slot = False
        keep = False
        spool = os.fdopen(fd, "wb", buffering=1024 * 1024)
        try:
            while me.transport is not None:
                try:
                    line: bytes = await me._reader.readuntil(b"\r\n")
                except asyncio.CancelledError:  # the client went away mid-DATA (P11): nothing is kept
                    log.info("conn_lost_in_data", extra={"peer": _peer_ip(me.session), "bytes": size})
                    raise
                except asyncio.LimitOverrunError as exc:
                    too_long = True
                    await me._reader.read(exc.consumed)
                    continue
                if line == b".\r\n":
                    break
                size += len(line)
                if size > limit:
                    too_much = True
                if b"\n" in line[:-2] or b"\r" in line[:-2]:
                    bare = True  # smuggling needs a bare LF or CR (P1, P2)
                if len(line) > me.line_length_limit:
                    too_long = True
                if too_much or too_long or bare or disk_error:
                    continue  # drain to the end of DATA, keep nothing (RFC 5321 §4.2.5)
                if size > LARGE_TRANSFER and not holding_slot:
                    await self.large_transfers.acquire()
                    holding_slot = True
                try:
                    spool.write(line[1:] if line.startswith(b".") else line)
                except OSError:
                    disk_error = True  # a full or failing disk: read to the end, then 451 (never lose sync)
            try:
                spool.close()
            except OSError:
                disk_error = True
            if disk_error:
                log.warning("tempfail_disk", extra={"stage": "spool_write"})
                reply: SmtpReply | str = replies.TEMPFAIL
            elif too_long:
                reply = "500 5.5.2 Line too long (see RFC5321 4.5.3.1.6)"
            elif bare:
                reply = replies.BARE_LINE_ENDING
                log.warning("smtp_smuggling_suspect", extra={"peer": _peer_ip(me.session)})
            elif too_much:
                reply = replies.message_too_big(limit)
            else:
                keep = True
                envelope.spool_path = path  # type: ignore[attr-defined]
                envelope.spool_size = size  # type: ignore[attr-defined]
                status = await me._call_handler_hook("DATA")
                reply = status
            if not keep:
                await me.event_handler.log_refusal(me.session, envelope, reply)
        finally:
            if not spool.closed:
                with contextlib.suppress(OSError):
                    spool.close()
            if holding_slot:
                self.large_transfers.release()
            if not keep:
                path.unlink(missing_ok=True)
        me._set_post_data_state()
        await me.push(reply.wire() if isinstance(reply, SmtpReply) else reply)


class IngressSMTP(_SpoolingMixin, SMTP):
    pass


class IngressLMTP(_SpoolingMixin, LMTP):
    pass


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
        self.in_pipeline += 1
        try:
            outcome = await asyncio.get_running_loop().run_in_executor(
                _PIPELINES, pipeline.run, self.deps, env, spooled.spool_path, spooled.spool_size
            )
        finally:
            # The answer is pushed right after this hook returns, before the loop runs anything else.
            self.in_pipeline -= 1
        return self._count(outcome.reply)

    async def handle_exception(self, error: Exception) -> str:
        log.error("smtp_unexpected_error", exc_info=error)
        return self._count(replies.TEMPFAIL)

    async def log_refusal(self, session: Session, envelope: Envelope, reply: SmtpReply | str) -> None:
        """DATA refused before the pipeline (bare LF, too big, line too long) still leaves a log row."""
        if not isinstance(reply, SmtpReply):
            reason = "line_too_long"
            wire = reply
        else:
            reason = {replies.BARE_LINE_ENDING: "bare_line_ending", replies.TEMPFAIL: "tempfail_disk"}.get(
                reply, "size_exceeded"
            )
            wire = reply.wire()
        target: Target | None = getattr(envelope, "target", None)
        await asyncio.to_thread(self._write_row, session, envelope, target, reason, wire)
        if isinstance(reply, SmtpReply):
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
        try:
            with transaction(self.deps.sessions) as db:
                row = InboundLog(
                    practice_id=target.practice_id if target else None,
                    door=self.door,
                    peer=peer,
                    helo=(helo or "")[:255] or None,
                    mail_from=str(envelope.mail_from or "")[:320],
                    rcpt=(target.redacted if target else rcpt)[:320],
                    state=InboundState.rejected,
                    reason=reason,
                    smtp_reply=wire[:255],
                )
                db.add(row)
                db.flush()
                row_id = row.id
                known = db.get(Practice, target.practice_id) if target else None
                practice = known.slug if known is not None else None
            INBOUND.labels("rejected", reason).inc()
        except Exception:
            log.warning("inbound_log_write_failed", extra={"reason": reason})
        count_practice_inbound(practice, InboundState.rejected.value)
        # the line is written even when the row could not be: it is then the only trace
        inbound_decision(
            door=self.door,
            practice=practice,
            inbound_id=row_id,
            message_id=None,
            state=InboundState.rejected.value,
            reason=reason,
            reply=wire,
        )

    @staticmethod
    def _count(reply: SmtpReply) -> str:
        SMTP_REPLIES.labels(str(reply.code)).inc()
        return reply.wire()


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
    timeout: float,
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
            timeout=timeout,
            ident="mailbridge ESMTP",
        )
        server.limits = limits
        server.spool_dir = spool_dir
        server.large_transfers = semaphore
        server.xforward_hosts = xforward_hosts
        return server

    loop = asyncio.get_running_loop()
    return await loop.create_server(factory, host=host, port=port, reuse_port=reuse_port or None)


def make_decider(services: Any) -> Any:
    """The RCPT decision with a short transaction of its own (runs in a worker thread)."""

    def decide(address: str) -> RecipientDecision:
        with services.sessions() as session:
            return decide_recipient(session, services.tokens, services.verp_secret, address)

    return decide
