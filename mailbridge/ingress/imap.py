"""The IMAP door: poll a practice's existing mailbox and feed each new message to the one inbound pipeline.

One poller per ``Mailbox`` row. A round is ``UID SEARCH UID <last_uid+1>:*`` (RFC 3501 §6.4.4; ``*``
always matches the last message, so the answer is filtered), then per message a header fetch to
find the envelope recipient, ``UID FETCH (BODY.PEEK[])`` (PEEK: unprocessed mail never becomes
``\\Seen``), the pipeline, and only once the pipeline has committed, ``UID MOVE`` (RFC 6851) to
``Processed`` or ``Rejected``, or a ``$MailbridgeDone`` keyword. The last UID and UIDVALIDITY are
written by the pipeline's own final transaction (its ``finalize`` hook), so a crash between fetch and
commit re-reads the message and the idempotency key posts it once. Between rounds the poller IDLEs
(RFC 2177, re-issued well before the 29-minute limit) or polls when the server has no IDLE.

The envelope recipient is the topmost ``Delivered-To``/``X-Original-To`` (added by the provider,
above anything the sender wrote) or the mailbox's ``routing_address``; never ``To``/``Cc``, which
the sender controls (HOSTILE T6).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import functools
import ipaddress
import json
import logging
import os
import random
import re
import ssl
import tempfile
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from email.parser import BytesHeaderParser
from email.policy import compat32
from email.utils import getaddresses, parseaddr
from pathlib import Path
from typing import Any, Protocol, TypeVar

import aioimaplib
from sqlalchemy import select
from sqlalchemy.orm import Session

from mailbridge import replies
from mailbridge.access.credentials import CredentialError, MailboxCredentials
from mailbridge.access.egress import EgressPolicy, EgressRefused
from mailbridge.domain import events
from mailbridge.domain.db import transaction, writer_gate
from mailbridge.domain.models import InboundLog, InboundState, Mailbox, Practice, new_id
from mailbridge.inbound import pipeline
from mailbridge.inbound.envelope import RecipientDecision, Target, decide_recipient, split_address
from mailbridge.ingress import leases
from mailbridge.ingress.oauth import (
    ERROR_ANSWER,
    OAuthConfig,
    OAuthError,
    OAuthSecrets,
    TokenSource,
    initial_response,
    oauth_secret_purpose,
)
from mailbridge.logs import inbound_decision
from mailbridge.observability import IMAP_STATUS, INBOUND, count_practice_inbound
from mailbridge.replies import SmtpReply
from mailbridge.wiring import Services, pipeline_deps

log = logging.getLogger(__name__)

T = TypeVar("T")

PROCESSED = "Processed"
REJECTED = "Rejected"
DONE_KEYWORD = "$MailbridgeDone"
REJECTED_KEYWORD = "$MailbridgeRejected"
# Outcomes that leave the folder for Processed; ``rejected`` goes to Rejected, ``deferred`` stays put.
TO_REJECTED = frozenset({InboundState.rejected})
FAILING = frozenset({"error", "auth_failed"})  # statuses that announce ``mailbox.error`` when entered
IMAP_IDLE_LIMIT = 29 * 60  # RFC 2177 §3: servers may log out a client idle for 30 minutes

Runner = Callable[[Any, pipeline.Envelope, Path, int], pipeline.Outcome]


# ---- settings -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class PollerConfig:
    """Timings and policy of the pollers; the defaults suit production, tests shrink them to seconds."""

    idle_seconds: float = 25 * 60  # an IDLE is ended and re-issued after this (must stay < 29 min)
    poll_seconds: float = 60.0  # between rounds when the server has no IDLE
    use_idle: bool = True
    reload_seconds: float = 60.0  # how often the mailbox table is re-read
    timeout_seconds: float = 30.0  # one IMAP command, the connection and the greeting
    backoff_initial: float = 2.0
    backoff_max: float = 300.0
    auth_retry_seconds: float = 900.0  # bad credentials: retried slowly, never hammered
    retry_seconds: float = 60.0  # a message the pipeline deferred (4xx) is tried again after this
    stop_grace_seconds: float = 10.0
    allow_plaintext: bool = False  # security "none" towards a non-loopback host
    ssl_context: ssl.SSLContext | None = None  # default: the system's CAs, hostname checked
    lease_seconds: float = 90.0  # a mailbox's lease (one node polls it); renewed every third of it

    def __post_init__(self) -> None:
        if not 0 < self.idle_seconds < IMAP_IDLE_LIMIT:
            raise ValueError("idle_seconds must be below 29 minutes (RFC 2177)")

    @classmethod
    def from_settings(cls, settings: Any) -> PollerConfig:
        """Optional ``imap_*`` settings, when the operator's settings object has them."""
        names = {
            "imap_idle_seconds": "idle_seconds",
            "imap_poll_seconds": "poll_seconds",
            "imap_reload_seconds": "reload_seconds",
            "imap_timeout_seconds": "timeout_seconds",
            "imap_allow_plaintext": "allow_plaintext",
            "imap_lease_seconds": "lease_seconds",
        }
        values: dict[str, Any] = {}
        for setting, attr in names.items():
            value = getattr(settings, setting, None)
            if value is not None:
                values[attr] = value
        return cls(**values)

    def tls_context(self) -> ssl.SSLContext:
        if self.ssl_context is not None:
            return self.ssl_context
        return _default_tls()


@functools.cache
def _default_tls() -> ssl.SSLContext:
    """Built once: loading the system CA bundle takes ~20 ms, on the event loop, per connection."""
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


@dataclass(frozen=True)
class MailboxConfig:
    """A snapshot of one Mailbox row; a poller restarts when anything but its progress changes."""

    id: int
    practice_id: int
    name: str
    host: str
    port: int
    security: str
    username: str
    # Only to notice a change (the poller restarts); the password is read when connecting.
    password_env: str | None
    password_sealed: str | None
    folder: str
    routing_address: str | None
    on_done: str
    trusted_authserv_id: str | None = None
    auth: str = "password"  # password | oauth2
    oauth_json: str | None = None  # ingress.oauth.OAuthConfig as JSON (nothing secret)
    oauth_secret: str | None = None  # sealed OAuthSecrets
    uidvalidity: int | None = field(default=None, compare=False)
    last_uid: int = field(default=0, compare=False)
    practice_slug: str = field(default="", compare=False)  # metrics and logs name it

    @property
    def practice_label(self) -> str:
        return self.practice_slug or str(self.practice_id)

    @classmethod
    def from_row(cls, row: Mailbox, practice_slug: str = "") -> MailboxConfig:
        return cls(
            id=row.id,
            practice_id=row.practice_id,
            name=row.name,
            host=row.host,
            port=row.port,
            security=row.security,
            username=row.username,
            password_env=row.password_env,
            password_sealed=row.password_sealed,
            folder=row.folder or "INBOX",
            routing_address=row.routing_address,
            on_done=row.on_done or "move",
            trusted_authserv_id=row.trusted_authserv_id,
            auth=row.auth or "password",
            oauth_json=json.dumps(row.oauth, sort_keys=True) if row.oauth else None,
            oauth_secret=row.oauth_secret,
            uidvalidity=row.uidvalidity,
            last_uid=row.last_uid or 0,
            practice_slug=practice_slug,
        )

    def __repr__(self) -> str:  # never the password, even in a traceback
        return f"MailboxConfig(id={self.id}, name={self.name!r}, host={self.host!r}, port={self.port})"


def is_loopback(host: str) -> bool:
    if host.lower() in ("localhost", "localhost.localdomain"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def plaintext_allowed(host: str, allow_plaintext: bool) -> bool:
    """An unencrypted IMAP session sends the password in clear: loopback only, unless the operator says so."""
    return allow_plaintext or is_loopback(host)


# ---- errors -------------------------------------------------------------------------------------


class ImapError(Exception):
    """The server refused something or answered what we cannot use; the poller reconnects later."""


class AuthFailed(ImapError):
    """LOGIN was refused: wrong credentials (retried slowly, status ``auth_failed``)."""


class ConfigError(ImapError):
    """The mailbox cannot be used as configured (no password, plaintext refused, no STARTTLS)."""


class ConnectionLost(ImapError):
    """The server closed the connection."""


class Stopped(Exception):
    """``stop`` was set while waiting: the poller winds down."""


def short_error(exc: BaseException, secret: str | None = None) -> str:
    """A one-line, bounded error for ``Mailbox.last_error``: the class and the message, never a secret."""
    text = str(exc).replace("\r", " ").replace("\n", " ").strip()
    if secret:
        text = text.replace(secret, "***")
    name = type(exc).__name__
    if isinstance(exc, ImapError):
        return text[:200] or name
    if isinstance(exc, TimeoutError):
        return "timeout"
    return f"{name}: {text}"[:200] if text else name


# ---- protocol helpers (pure) ---------------------------------------------------------------------


def encode_mailbox_name(name: str) -> str:
    """Modified UTF-7 for mailbox names (RFC 3501 §5.1.3): ``Boîte`` → ``Bo&AO4-te``."""
    out: list[str] = []
    pending: list[str] = []

    def flush() -> None:
        if pending:
            data = "".join(pending).encode("utf-16-be")
            out.append("&" + base64.b64encode(data).decode("ascii").rstrip("=").replace("/", ",") + "-")
            pending.clear()

    for char in name:
        if 0x20 <= ord(char) <= 0x7E:
            flush()
            out.append("&-" if char == "&" else char)
        else:
            pending.append(char)
    flush()
    return "".join(out)


def quote_mailbox(name: str) -> str:
    """A mailbox name as an IMAP quoted string (aioimaplib sends arguments verbatim)."""
    encoded = encode_mailbox_name(name)
    return '"' + encoded.replace("\\", "\\\\").replace('"', '\\"') + '"'


@dataclass(frozen=True)
class SelectInfo:
    exists: int
    uidvalidity: int
    uidnext: int | None
    keywords_allowed: bool


_EXISTS = re.compile(rb"^(\d+) EXISTS")
_UIDVALIDITY = re.compile(rb"\[UIDVALIDITY (\d+)\]")
_UIDNEXT = re.compile(rb"\[UIDNEXT (\d+)\]")
_PERMANENTFLAGS = re.compile(rb"\[PERMANENTFLAGS \(([^)]*)\)\]")
_FETCH_START = re.compile(rb"^\d+ FETCH \(")
_FETCH_UID = re.compile(rb"\bUID (\d+)")
_FETCH_SIZE = re.compile(rb"\bRFC822\.SIZE (\d+)")
_NAMESPACE_PREFIX = re.compile(rb'^\(\("([^"]*)"')


def _byte_lines(lines: Iterable[Any]) -> list[bytes]:
    return [bytes(line) for line in lines if isinstance(line, bytes)]


def parse_select(lines: Sequence[Any]) -> SelectInfo:
    exists = 0
    uidvalidity: int | None = None
    uidnext: int | None = None
    keywords = False
    for line in _byte_lines(lines):
        if match := _EXISTS.match(line):
            exists = int(match.group(1))
        if match := _UIDVALIDITY.search(line):
            uidvalidity = int(match.group(1))
        if match := _UIDNEXT.search(line):
            uidnext = int(match.group(1))
        if match := _PERMANENTFLAGS.search(line):
            flags = match.group(1).split()
            keywords = b"\\*" in flags or DONE_KEYWORD.encode() in flags
    if uidvalidity is None:
        raise ImapError("SELECT answered without UIDVALIDITY")
    return SelectInfo(exists, uidvalidity, uidnext, keywords)


def parse_search(lines: Sequence[Any], after: int = 0) -> list[int]:
    """UIDs from a UID SEARCH answer, only those above ``after`` (``N:*`` always matches the last one)."""
    found: set[int] = set()
    for line in _byte_lines(lines[:-1]):  # the last line is the tagged completion text
        words = line.split()
        if words and words[0].upper() == b"SEARCH":
            words = words[1:]
        if all(word.isdigit() for word in words):
            found.update(int(word) for word in words)
    return sorted(uid for uid in found if uid > after)


@dataclass(frozen=True)
class Fetched:
    uid: int
    size: int | None
    data: bytes


def parse_fetch(lines: Sequence[Any], uid: int) -> Fetched | None:
    """The literal of the FETCH item for ``uid``; unsolicited FETCH items (flag updates) are ignored."""
    items: list[list[Any]] = []  # [meta bytes, literal or None]
    current: list[Any] | None = None
    for line in lines[:-1]:
        if isinstance(line, bytearray):
            if current is not None and current[1] is None:
                current[1] = bytes(line)
            continue
        if not isinstance(line, bytes):
            continue
        if _FETCH_START.match(line):
            current = [line, None]
            items.append(current)
        elif current is not None:
            current[0] += b" " + line
    for meta, literal in items:
        match = _FETCH_UID.search(meta)
        if match is None or int(match.group(1)) != uid or literal is None:
            continue
        size = _FETCH_SIZE.search(meta)
        return Fetched(uid, int(size.group(1)) if size else None, literal)
    return None


def _header_fields(header: bytes) -> list[tuple[str, str]]:
    message = BytesHeaderParser(policy=compat32).parsebytes(header)
    return [(name.lower(), str(value)) for name, value in message.items()]


def _single_address(value: str) -> str | None:
    addresses = [addr for _, addr in getaddresses([value]) if addr]
    if len(addresses) != 1 or split_address(addresses[0]) is None:
        return None
    return addresses[0].strip().lower()


def envelope_recipient(header: bytes) -> str | None:
    """The topmost ``Delivered-To`` or ``X-Original-To``: the provider prepends its own above the sender's.

    Never ``To``/``Cc``: a forwarded notification still names a reply address there (HOSTILE T6).
    """
    for name, value in _header_fields(header):
        if name in ("delivered-to", "x-original-to"):
            return _single_address(value)
    return None


def return_path(header: bytes) -> str | None:
    """The envelope sender the provider recorded (topmost ``Return-Path``); ``""`` for a bounce
    (``<>``, RFC 5321 §4.5.5); None when there is none: a message a person dragged into the
    mailbox, or copied there by a rule, has no envelope sender, and that is not a null sender."""
    for name, value in _header_fields(header):
        if name == "return-path":
            return parseaddr(value)[1].strip()
    return None


def _header_summary(header: bytes) -> tuple[str | None, str | None]:
    fields = _header_fields(header)
    sender = next((parseaddr(v)[1].lower() for n, v in fields if n == "from"), None)
    message_id = next((v.strip() for n, v in fields if n == "message-id"), None)
    return (sender or None), (message_id or None)


# ---- one IMAP connection -------------------------------------------------------------------------


class Credentials(Protocol):
    def password(self, mailbox_id: int) -> str:
        """The mailbox's password, read when connecting (blocking); raises ``CredentialError``."""
        ...


class Egress(Protocol):
    def addresses(self, host: str) -> list[str] | None:
        """The public addresses to connect to, or None to connect by name (blocking); raises
        ``EgressRefused``."""
        ...


@dataclass(frozen=True)
class Access:
    """What a connection needs from outside the IMAP protocol: the password, and where it may go."""

    credentials: Credentials
    egress: Egress

    @classmethod
    def from_services(cls, services: Services) -> Access:
        settings = services.settings
        return cls(
            MailboxCredentials(
                services.sessions, services.keyring, getattr(settings, "imap_password_envs", ())
            ),
            EgressPolicy(services.resolver, bool(getattr(settings, "imap_allow_private_hosts", False))),
        )


class _PinnedIMAP4(aioimaplib.IMAP4):  # type: ignore[misc]  # aioimaplib is untyped
    """Connects to the address the egress check passed, not to a fresh look-up of the name (DNS
    rebinding); TLS still checks the certificate against the configured host name. aioimaplib's
    ``create_client`` has no ``server_hostname``, hence this two-line override."""

    def __init__(
        self,
        address: str,
        port: int,
        *,
        server_hostname: str,
        timeout: float,
        ssl_context: ssl.SSLContext | None,
    ) -> None:
        self._server_hostname = server_hostname
        super().__init__(host=address, port=port, timeout=timeout, ssl_context=ssl_context)

    def create_client(
        self,
        host: str,
        port: int,
        loop: asyncio.AbstractEventLoop | None,
        conn_lost_cb: Callable[[Exception | None], None] | None = None,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        local_loop = loop if loop is not None else asyncio.get_running_loop()
        self.protocol = aioimaplib.IMAP4ClientProtocol(local_loop, conn_lost_cb)
        self._client_task = local_loop.create_task(
            local_loop.create_connection(
                lambda: self.protocol,
                host,
                port,
                ssl=ssl_context,
                server_hostname=self._server_hostname if ssl_context is not None else None,
            )
        )


class _SaslCommand(aioimaplib.Command):  # type: ignore[misc]
    """AUTHENTICATE as aioimaplib lacks it beyond XOAUTH2's happy path: each continuation request
    (``+ …``) from the server is answered through ``on_challenge`` instead of waiting for a timeout."""

    def __init__(self, *args: Any, on_challenge: Callable[[bytes], None], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._on_challenge = on_challenge

    def append_to_resp(self, line: bytes, result: str = "Pending") -> None:
        if isinstance(line, bytes | bytearray) and bytes(line).startswith(b"+"):
            self._on_challenge(bytes(line))
        super().append_to_resp(line, result)


class Connection:
    """An aioimaplib client with every wait bounded: by a timeout, a lost connection, and ``stop``."""

    def __init__(
        self,
        mailbox: MailboxConfig,
        config: PollerConfig,
        stop: asyncio.Event,
        access: Access,
        tokens: TokenSource | None = None,
    ) -> None:
        self.mailbox = mailbox
        self.config = config
        self.stop = stop
        self.access = access
        self.tokens = tokens  # an oauth2 mailbox's access tokens (kept by the poller across sessions)
        self.lost = asyncio.Event()
        self.client: Any = None
        self.greeted = False
        self.password: str | None = None
        self.capabilities: frozenset[str] = frozenset()
        self.selected: SelectInfo | None = None

    # -- plumbing

    def _on_lost(self, _exc: Exception | None) -> None:
        self.lost.set()

    async def call(
        self, awaitable: Awaitable[T], timeout: float | None = None, *, stoppable: bool = True
    ) -> T:
        """Await one IMAP step; ConnectionLost, TimeoutError or Stopped rather than hang on a dead socket."""
        task = asyncio.ensure_future(awaitable)
        watchers = [asyncio.ensure_future(self.lost.wait())]
        if stoppable:
            watchers.append(asyncio.ensure_future(self.stop.wait()))
        try:
            done, _ = await asyncio.wait(
                [task, *watchers],
                timeout=timeout or self.config.timeout_seconds,
                return_when=asyncio.FIRST_COMPLETED,
            )
            if task in done:
                return task.result()
            if self.lost.is_set():
                raise ConnectionLost("connection closed by the server")
            if stoppable and self.stop.is_set():
                raise Stopped
            raise TimeoutError
        finally:
            for pending in (task, *watchers):
                if not pending.done():
                    pending.cancel()

    async def command(
        self, awaitable: Awaitable[Any], what: str, *, stoppable: bool = True, timeout: float | None = None
    ) -> Any:
        response = await self.call(awaitable, timeout, stoppable=stoppable)
        if response.result != "OK":
            text = b" ".join(_byte_lines(response.lines[-1:])).decode("utf-8", "replace")[:120]
            raise ImapError(f"{what}: {response.result} {text}".strip())
        return response

    # -- session set-up

    async def _destination(self) -> str:
        """The checked address to connect to (or the name, when the operator allows any host)."""
        try:
            addresses = await asyncio.to_thread(self.access.egress.addresses, self.mailbox.host)
        except EgressRefused as exc:
            if exc.code == "host_not_public":
                raise ConfigError(str(exc)) from None
            raise ImapError(str(exc)) from None  # DNS trouble: retried with the usual backoff
        return addresses[0] if addresses else self.mailbox.host

    async def _password(self) -> str:
        try:
            return await asyncio.to_thread(self.access.credentials.password, self.mailbox.id)
        except CredentialError as exc:
            raise ConfigError(str(exc)) from None

    async def open(self) -> None:
        box = self.mailbox
        if box.security not in ("tls", "starttls", "none"):
            raise ConfigError(f"unknown security {box.security!r}")
        if box.security == "none" and not plaintext_allowed(box.host, self.config.allow_plaintext):
            raise ConfigError("plaintext IMAP is only allowed towards loopback hosts")
        if box.auth == "oauth2" and self.tokens is None:
            raise ConfigError("oauth2 is not configured for this mailbox")
        # Where first, the secret after: nothing is read for a host we will not connect to.
        destination = await self._destination()
        if box.auth != "oauth2":  # an oauth2 mailbox's token is fetched when it authenticates
            self.password = await self._password()
        self.client = _PinnedIMAP4(
            destination,
            box.port,
            server_hostname=box.host.strip("[]"),
            timeout=self.config.timeout_seconds,
            ssl_context=self.config.tls_context() if box.security == "tls" else None,
        )
        self.client.protocol.conn_lost_cb = self._on_lost
        await self.call(self.client.wait_hello_from_server())
        self.greeted = True
        if box.security == "starttls":
            await self._starttls()
        if box.auth == "oauth2":
            await self._authenticate_oauth()
        else:
            await self._login()
        # Capabilities may differ after LOGIN (RFC 3501 §6.2.3): ask again rather than trust the greeting.
        await self.call(self.client.protocol.capability())
        self.capabilities = frozenset(c.upper() for c in self.client.protocol.capabilities)

    async def _login(self) -> None:
        box = self.mailbox
        assert self.password is not None
        response = await self.call(self.client.login(aioimaplib.quoted(box.username), self.password))
        if response.result != "OK":
            text = b" ".join(_byte_lines(response.lines)).decode("utf-8", "replace")
            if response.result == "NO" and "[UNAVAILABLE]" not in text:
                raise AuthFailed("authentication failed")
            raise ImapError(f"LOGIN: {response.result} {text[:120]}")

    async def _authenticate_oauth(self) -> None:
        """SASL XOAUTH2 or OAUTHBEARER (RFC 7628) with the cached token; refused, once more with a
        fresh token (the cached one may have been revoked before its expiry), then ``AuthFailed``."""
        assert self.tokens is not None
        mechanism = self.tokens.config.mechanism
        protocol = self.client.protocol
        if f"AUTH={mechanism.upper()}" not in {c.upper() for c in protocol.capabilities}:
            raise ConfigError(f"server does not offer AUTHENTICATE {mechanism.upper()}")
        for attempt in range(2):
            try:
                token = await self.call(self.tokens.token(force=attempt > 0))
            except OAuthError as exc:
                raise AuthFailed(f"oauth2: {exc}") from None
            self.password = token  # scrubbed from any error text
            response = await self.call(self._sasl(mechanism, token))
            if response.result == "OK":
                return
            text = b" ".join(_byte_lines(response.lines[-1:])).decode("utf-8", "replace")
            if response.result != "NO" or "[UNAVAILABLE]" in text:
                raise ImapError(f"AUTHENTICATE: {response.result} {text[:120]}")
            self.tokens.invalidate()
        raise AuthFailed("authentication failed (oauth2 token refused)")

    async def _sasl(self, mechanism: str, token: str) -> Any:
        """AUTHENTICATE with the initial response inline (SASL-IR, RFC 4959) when offered, else after
        the server's first empty challenge; an error challenge is answered as the mechanism says."""
        box = self.mailbox
        protocol = self.client.protocol
        first = initial_response(mechanism, box.username, box.host, box.port, token)
        inline = "SASL-IR" in {c.upper() for c in protocol.capabilities}
        answers = ([] if inline else [first]) + [ERROR_ANSWER[mechanism]]

        def answer(_line: bytes) -> None:
            reply = answers.pop(0) if answers else "*"  # "*" cancels (RFC 3501 §6.2.2)
            protocol.transport.write(reply.encode("ascii") + b"\r\n")

        args = (mechanism.upper(), first) if inline else (mechanism.upper(),)
        command = _SaslCommand(
            "AUTHENTICATE", protocol.new_tag(), *args, on_challenge=answer, loop=protocol.loop
        )
        response = await protocol.execute(command, scrub=first)
        if response.result == "OK":
            protocol.state = aioimaplib.AUTH
        return response

    async def _starttls(self) -> None:
        """STARTTLS (RFC 3501 §6.2.1), absent from aioimaplib; no downgrade when the server lacks it."""
        protocol = self.client.protocol
        if "STARTTLS" not in {c.upper() for c in protocol.capabilities}:
            raise ConfigError("server does not offer STARTTLS")
        command = aioimaplib.Command("STARTTLS", protocol.new_tag(), loop=protocol.loop)
        response = await self.call(protocol.execute(command))
        if response.result != "OK":
            raise ImapError("STARTTLS refused")
        loop = asyncio.get_running_loop()
        transport = await self.call(
            loop.start_tls(
                protocol.transport, protocol, self.config.tls_context(), server_hostname=self.mailbox.host
            )
        )
        protocol.transport = transport
        # nothing read before the handshake may be trusted (response injection, cf. CVE-2021-33515)
        protocol.incomplete_line = b""
        # the pre-TLS capability list is discarded (RFC 3501 §6.2.1)
        await self.call(protocol.capability())

    async def select(self, folder: str) -> SelectInfo:
        response = await self.command(self.client.select(quote_mailbox(folder)), "SELECT")
        self.selected = parse_select(response.lines)
        return self.selected

    # -- reading

    async def search(self, criteria: str, after: int) -> list[int]:
        response = await self.command(self.client.uid_search(criteria, charset=None), "UID SEARCH")
        return parse_search(response.lines, after)

    async def fetch(self, uid: int, items: str, size: int | None = None) -> Fetched | None:
        # a big message on a slow link: allow for 50 kB/s on top of the command timeout
        timeout = self.config.timeout_seconds + (size or 0) / 50_000
        response = await self.command(self.client.uid("fetch", str(uid), items), "UID FETCH", timeout=timeout)
        return parse_fetch(response.lines, uid)

    # -- marking

    async def ensure_folder(self, name: str) -> str:
        """The folder's name on the server, created if missing (under the personal namespace if need be)."""
        candidates = [name]
        if "NAMESPACE" in self.capabilities:
            with contextlib.suppress(ImapError, TimeoutError):
                response = await self.command(self.client.namespace(), "NAMESPACE")
                for line in _byte_lines(response.lines[:1]):
                    match = _NAMESPACE_PREFIX.match(line)
                    if match and match.group(1):
                        candidates.append(match.group(1).decode("utf-8", "replace") + name)
        for candidate in candidates:
            listed = await self.command(self.client.list('""', quote_mailbox(candidate)), "LIST")
            if any(line.strip() for line in _byte_lines(listed.lines[:-1])):
                return candidate
        last: ImapError | None = None
        for candidate in candidates:
            try:
                await self.command(self.client.create(quote_mailbox(candidate)), "CREATE")
                return candidate
            except ImapError as exc:
                if "ALREADYEXISTS" in str(exc).upper():
                    return candidate
                last = exc
        raise last or ImapError(f"cannot create folder {name}")

    async def move(self, uid: int, folder: str) -> None:
        target = quote_mailbox(folder)
        if "MOVE" in self.capabilities:
            await self.command(self.client.uid("move", str(uid), target), "UID MOVE", stoppable=False)
            return
        # RFC 6851 §3.3: without MOVE, COPY + \Deleted + EXPUNGE (UID EXPUNGE with UIDPLUS, RFC 4315)
        await self.command(self.client.uid("copy", str(uid), target), "UID COPY", stoppable=False)
        deleted = self.client.uid("store", str(uid), "+FLAGS.SILENT", "(\\Deleted)")
        await self.command(deleted, "UID STORE", stoppable=False)
        if "UIDPLUS" in self.capabilities:
            await self.command(self.client.uid("expunge", str(uid)), "UID EXPUNGE", stoppable=False)
        else:
            await self.command(self.client.expunge(), "EXPUNGE", stoppable=False)

    async def add_flags(self, uid: int, flags: Sequence[str]) -> None:
        store = self.client.uid("store", str(uid), "+FLAGS.SILENT", "(" + " ".join(flags) + ")")
        await self.command(store, "UID STORE", stoppable=False)

    # -- waiting

    async def idle(self, seconds: float) -> bool:
        """IDLE until new mail (``EXISTS``), ``seconds``, or stop; True when mail arrived."""
        client = self.client
        queue: asyncio.Queue[Any] = client.protocol.idle_queue
        while not queue.empty():  # pushes left over from a previous IDLE
            queue.get_nowait()
        idle_task = await self.call(client.idle_start(timeout=seconds + 5))
        woke = False
        try:
            loop = asyncio.get_running_loop()
            deadline = loop.time() + seconds
            while not self.stop.is_set():
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                try:
                    push = await self.call(queue.get(), remaining)
                except (TimeoutError, Stopped):
                    break
                if push == aioimaplib.STOP_WAIT_SERVER_PUSH:
                    break
                if any(_EXISTS.match(bytes(line)) for line in push if isinstance(line, bytes | bytearray)):
                    woke = True
                    break
        finally:
            if not self.lost.is_set() and client.has_pending_idle():
                client.idle_done()
                with contextlib.suppress(Exception):
                    await self.call(asyncio.shield(idle_task), stoppable=False)
        return woke

    async def sleep(self, seconds: float) -> None:
        """Poll-mode pause; a connection closed meanwhile is noticed at once."""
        with contextlib.suppress(TimeoutError, Stopped):
            await self.call(asyncio.sleep(seconds + 1), seconds)
        if self.lost.is_set():
            raise ConnectionLost("connection closed by the server")

    async def close(self) -> None:
        client, self.client = self.client, None
        if client is None:
            return
        if not self.lost.is_set() and client.protocol.state in ("AUTH", "SELECTED", "NONAUTH"):
            with contextlib.suppress(Exception):
                await asyncio.wait_for(client.logout(), 2)
        transport = client.protocol.transport
        if transport is not None:
            transport.close()
            # a TLS close waits for the peer's close_notify: give it a moment, then cut the socket
            try:
                await asyncio.wait_for(self.lost.wait(), 1.0)
            except TimeoutError:
                transport.abort()
        waiter = getattr(client, "_idle_waiter", None)
        if waiter is not None:
            waiter.cancel()
        for task in list(client.tasks) + list(client.protocol.tasks):
            task.cancel()
        task = getattr(client, "_client_task", None)
        if task is not None and not task.done():
            task.cancel()


# ---- the poller --------------------------------------------------------------------------------


class MailboxPoller:
    """One mailbox: connect, catch up, IDLE or poll, reconnect with capped backoff; never raises out."""

    def __init__(
        self,
        services: Services,
        mailbox: MailboxConfig,
        config: PollerConfig,
        runner: Runner | None = None,
        lease_ok: Callable[[], bool] | None = None,
    ) -> None:
        self.services = services
        self.mailbox = mailbox
        self.lease_ok = lease_ok or (lambda: True)
        self.config = config
        self.runner: Runner = runner or pipeline.run
        self.deps = pipeline_deps(services)
        self.access = Access.from_services(services)
        self.stop = asyncio.Event()
        self.phase = "new"  # connecting | syncing | idle | polling | backoff | stopped: for tests and logs
        self.last_uid = mailbox.last_uid
        self.uidvalidity = mailbox.uidvalidity
        self.retry: dict[int, float] = {}  # deferred UIDs → when to try again
        self._status: tuple[str, str | None] | None = None
        self._folders: dict[bool, str] = {}  # rejected? → folder name on the server
        self._waited = False
        self._extra = {"mailbox": mailbox.name, "practice": mailbox.practice_label}
        self.tokens = token_source(services, mailbox) if mailbox.auth == "oauth2" else None

    # -- life cycle

    async def run(self) -> None:
        backoff = self.config.backoff_initial
        while not self.stop.is_set():
            connection = Connection(self.mailbox, self.config, self.stop, self.access, self.tokens)
            self._waited = False
            delay = backoff
            try:
                self.phase = "connecting"
                await connection.open()
                await self._session(connection)
            except Stopped:
                break
            except AuthFailed as exc:
                log.warning("imap_auth_failed", extra=self._extra)
                await self._set_status("auth_failed", short_error(exc))
                delay = self.config.auth_retry_seconds
            except ConfigError as exc:
                log.warning("imap_config_error", extra={**self._extra, "error": short_error(exc)})
                await self._set_status("error", short_error(exc))
                delay = self.config.auth_retry_seconds
            except (ImapError, OSError, TimeoutError, aioimaplib.AioImapException) as exc:
                error = short_error(exc, connection.password)
                log.warning("imap_error", extra={**self._extra, "error": error})
                await self._set_status("error", error)
            except Exception as exc:
                log.exception("imap_unexpected_error", extra=self._extra)
                await self._set_status("error", short_error(exc, connection.password))
            finally:
                await connection.close()
            if self.stop.is_set():
                break
            if self._waited:
                # the session caught up and waited for mail (a dropped IDLE): reconnect quickly. A
                # session that fails in its first round (a poison message, a bug) backs off instead.
                backoff = delay = self.config.backoff_initial
            else:
                backoff = min(backoff * 2, self.config.backoff_max)
            self.phase = "backoff"
            await self._sleep(delay * random.uniform(0.9, 1.1))
        self.phase = "stopped"

    async def _sleep(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.stop.wait(), seconds)

    async def _session(self, connection: Connection) -> None:
        await asyncio.to_thread(self._reload_progress)
        self.phase = "syncing"
        info = await connection.select(self.mailbox.folder)
        if self.uidvalidity is not None and self.uidvalidity != info.uidvalidity:
            # RFC 3501 §2.3.1.1: the old UIDs mean nothing now. Re-reading is safe: the pipeline's
            # idempotency key turns an already posted message into a duplicate.
            log.warning(
                "imap_uidvalidity_changed",
                extra={**self._extra, "old": self.uidvalidity, "new": info.uidvalidity},
            )
            self.last_uid = 0
            self.retry.clear()
        self.uidvalidity = info.uidvalidity
        await asyncio.to_thread(self._save_progress, info.uidvalidity, self.last_uid)
        folders: dict[bool, str] = {}
        if self.mailbox.on_done == "move":
            folders[False] = await connection.ensure_folder(PROCESSED)
            folders[True] = await connection.ensure_folder(REJECTED)
        self._folders = folders
        await self._set_status("ok", None)
        log.info("imap_connected", extra={**self._extra, "idle": "IDLE" in connection.capabilities})
        await self._sweep(connection)
        while not self.stop.is_set():
            self.phase = "syncing"
            while await self._round(connection) and not self.stop.is_set():
                pass  # mail may have arrived while we worked: search again before waiting
            if self.stop.is_set():
                break
            wait = self.config.idle_seconds if self._idle_ok(connection) else self.config.poll_seconds
            if self.retry:
                wait = min(wait, max(0.01, min(self.retry.values()) - _now()))
            self._waited = True
            if self._idle_ok(connection):
                self.phase = "idle"
                await connection.idle(wait)
            else:
                self.phase = "polling"
                await connection.sleep(wait)

    def _idle_ok(self, connection: Connection) -> bool:
        return self.config.use_idle and "IDLE" in connection.capabilities

    # -- rounds

    def _criteria(self, low: int, high: str, connection: Connection) -> str:
        criteria = f"UID {low}:{high}"
        if self.mailbox.on_done == "flag" and self._keywords(connection):
            criteria += f" NOT KEYWORD {DONE_KEYWORD}"
        return criteria

    @staticmethod
    def _keywords(connection: Connection) -> bool:
        return connection.selected is not None and connection.selected.keywords_allowed

    async def _sweep(self, connection: Connection) -> None:
        """Mail at or below last_uid still waiting (crash after commit, failed MOVE, deferred): try it again.

        In move mode everything left in the folder is unfinished; in flag mode, what lacks the keyword.
        The pipeline answers ``duplicate`` for what was already posted, and the mail is then marked.
        """
        if self.last_uid <= 0:
            return
        if self.mailbox.on_done == "flag" and not self._keywords(connection):
            return  # \Seen stands in for the keyword: a human may have toggled it, nothing to go by
        leftovers = await connection.search(self._criteria(1, str(self.last_uid), connection), 0)
        now = _now()
        for uid in leftovers:
            if uid <= self.last_uid:
                self.retry.setdefault(uid, now)

    async def _round(self, connection: Connection) -> bool:
        """One catch-up; True when new mail was handled (so the caller searches once more)."""
        found = await connection.search(self._criteria(self.last_uid + 1, "*", connection), self.last_uid)
        new = [uid for uid in found if uid not in self.retry]  # a deferred one waits for its turn
        now = _now()
        due = [uid for uid, when in self.retry.items() if when <= now]
        for uid in sorted(set(new) | set(due)):
            if self.stop.is_set() or not self.lease_ok():  # no new message once the lease may be gone
                break
            await self._process(connection, uid)
        return bool(new)

    async def _process(self, connection: Connection, uid: int) -> None:
        header = await connection.fetch(uid, "(UID RFC822.SIZE BODY.PEEK[HEADER])")
        if header is None:  # expunged by someone else meanwhile
            self._done(uid)
            return
        decision, tried = await asyncio.to_thread(self._decide, header.data)
        if decision is None or decision.target is None:
            await asyncio.to_thread(
                self._refuse,
                header,
                "no_envelope_recipient",
                replies.UNKNOWN_RECIPIENT,
                {"candidates": tried},
                None,
            )
            await self._mark(connection, uid, rejected=True)
            return
        if decision.size_limit and header.size and header.size > decision.size_limit:
            # refused before download: the practice would refuse it anyway (and it stays with the provider)
            await asyncio.to_thread(
                self._refuse,
                header,
                "message_too_big",
                replies.message_too_big(decision.size_limit),
                {},
                decision.target,
            )
            await self._mark(connection, uid, rejected=True)
            return
        body = await connection.fetch(uid, "(UID BODY.PEEK[])", header.size)
        if body is None:
            self._done(uid)
            return
        outcome = await self._feed(uid, header, body.data, decision.target)
        if outcome.state == InboundState.deferred or outcome.reply.transient:
            # 4xx: left where it is, tried again later (last_uid was not advanced by the pipeline)
            self.retry[uid] = _now() + self.config.retry_seconds
            log.info("imap_deferred", extra={**self._extra, "uid": uid, "reason": outcome.reason})
            return
        await self._mark(connection, uid, rejected=outcome.state in TO_REJECTED)

    async def _feed(self, uid: int, header: Fetched, raw: bytes, target: Target) -> pipeline.Outcome:
        path = await asyncio.to_thread(self._spool, raw)
        sender = return_path(header.data)
        envelope = pipeline.Envelope(
            door="imap",
            peer=None,
            helo=None,
            mail_from=sender or "",
            reverse_path_known=sender is not None,
            target=target,
            finalize=self._finalizer(uid),
            trusted_authserv_ids=(self.mailbox.trusted_authserv_id,)
            if self.mailbox.trusted_authserv_id
            else (),
        )
        try:
            return await asyncio.to_thread(self.runner, self.deps, envelope, path, len(raw))
        finally:
            if path.exists():  # the pipeline moves it into its store; anything left is ours to remove
                with contextlib.suppress(OSError):
                    path.unlink()

    async def _mark(self, connection: Connection, uid: int, *, rejected: bool) -> None:
        """Only after the pipeline committed: the mail leaves the folder, or is flagged done."""
        if self.mailbox.on_done == "move":
            await connection.move(uid, self._folders[rejected])
        elif self._keywords(connection):
            await connection.add_flags(uid, [DONE_KEYWORD, REJECTED_KEYWORD] if rejected else [DONE_KEYWORD])
        else:
            await connection.add_flags(uid, ["\\Seen"])
        self._done(uid)

    def _done(self, uid: int) -> None:
        self.retry.pop(uid, None)
        self.last_uid = max(self.last_uid, uid)

    # -- database (worker threads)

    def _spool(self, raw: bytes) -> Path:
        spool = self.services.settings.data_dir / "spool"
        spool.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(dir=spool, prefix="imap-", suffix=".eml")
        with os.fdopen(fd, "wb") as handle:
            handle.write(raw)
        return Path(name)

    def _finalizer(self, uid: int) -> Callable[[Session], None]:
        mailbox_id = self.mailbox.id
        uidvalidity = self.uidvalidity

        def finalize(session: Session) -> None:
            # Inside the pipeline's final transaction: the progress commits with the post, or not at all.
            row = session.get(Mailbox, mailbox_id)
            if row is not None and row.uidvalidity == uidvalidity:
                row.last_uid = max(row.last_uid or 0, uid)

        return finalize

    def _decide(self, header: bytes) -> tuple[RecipientDecision | None, list[dict[str, str]]]:
        """Delivered-To/X-Original-To first, then routing_address; only targets of this mailbox's practice."""
        candidates = [
            ("delivered_to", envelope_recipient(header)),
            ("routing_address", self.mailbox.routing_address),
        ]
        tried: list[dict[str, str]] = []
        with self.services.sessions() as session:
            for source, address in candidates:
                if not address:
                    continue
                decision = decide_recipient(session, self.services.tokens, self.services.verp_secret, address)
                if decision.target is not None and decision.target.practice_id == self.mailbox.practice_id:
                    return decision, tried
                tried.append(
                    {
                        "source": source,
                        "reason": decision.reason if decision.target is None else "other_practice",
                    }
                )
        return None, tried

    def _refuse(
        self, header: Fetched, reason: str, reply: SmtpReply, details: dict[str, Any], target: Target | None
    ) -> None:
        """Refused before the pipeline: an inbound row all the same (staff can see why), with the progress."""
        sender, message_id = _header_summary(header.data)
        row_id = new_id()
        with transaction(self.services.sessions) as session:
            session.add(
                InboundLog(
                    id=row_id,
                    practice_id=self.mailbox.practice_id,
                    door="imap",
                    mail_from=(return_path(header.data) or "")[:320],
                    rcpt=(target.redacted if target else "")[:320],
                    from_header=(sender or "")[:320] or None,
                    message_id_header=(message_id or "")[:998] or None,
                    state=InboundState.rejected,
                    reason=reason,
                    smtp_reply=reply.wire()[:255],
                    size=header.size or 0,
                    details={"mailbox": self.mailbox.name, **details},
                )
            )
            self._finalizer(header.uid)(session)
        INBOUND.labels(InboundState.rejected.value, reason).inc()
        count_practice_inbound(self.mailbox.practice_label, InboundState.rejected.value)
        log.info("imap_refused", extra={**self._extra, "uid": header.uid, "reason": reason})
        inbound_decision(
            door="imap",
            practice=self.mailbox.practice_label,
            inbound_id=row_id,
            message_id=message_id,
            state=InboundState.rejected.value,
            reason=reason,
            reply=reply.wire(),
        )

    def _reload_progress(self) -> None:
        with self.services.sessions() as session:
            row = session.get(Mailbox, self.mailbox.id)
            if row is not None:  # the database is the truth; memory may be ahead after a failed commit
                self.uidvalidity = row.uidvalidity
                self.last_uid = row.last_uid or 0

    def _save_progress(self, uidvalidity: int, last_uid: int) -> None:
        with transaction(self.services.sessions) as session:
            row = session.get(Mailbox, self.mailbox.id)
            if row is not None and (row.uidvalidity != uidvalidity or row.last_uid != last_uid):
                row.uidvalidity = uidvalidity
                row.last_uid = last_uid

    async def _set_status(self, status: str, error: str | None) -> None:
        IMAP_STATUS.labels(self.mailbox.practice_label, self.mailbox.name).set(1 if status == "ok" else 0)
        if self._status == (status, error):
            return
        try:
            await asyncio.to_thread(self._write_status, status, error)
            self._status = (status, error)
        except Exception:
            log.warning("imap_status_write_failed", extra=self._extra, exc_info=True)

    def _write_status(self, status: str, error: str | None) -> None:
        with transaction(self.services.sessions) as session:
            row = session.get(Mailbox, self.mailbox.id)
            if row is not None:
                if status in FAILING and row.status not in FAILING:  # working (or new) → failing
                    events.mailbox_error(session, row.practice_id, row.name, status)
                row.status = status
                row.last_error = error[:512] if error else None


def _now() -> float:
    return asyncio.get_running_loop().time()


def token_source(services: Services, mailbox: MailboxConfig) -> TokenSource | None:
    """The mailbox's OAuth2 tokens; its secrets are opened from the database when a token is fetched."""
    if not mailbox.oauth_json or not mailbox.oauth_secret:
        return None
    sealed = mailbox.oauth_secret
    purpose = oauth_secret_purpose(mailbox.practice_id, mailbox.name)

    def read() -> OAuthSecrets:
        with services.sessions() as session:
            return OAuthSecrets.from_json(services.keyring.open(session, sealed, purpose))

    async def load() -> OAuthSecrets:
        return await asyncio.to_thread(read)

    return TokenSource(
        OAuthConfig.from_json(json.loads(mailbox.oauth_json)),
        load,
        allow_private=services.settings.oauth_allow_private_endpoints,
    )


# ---- all pollers -------------------------------------------------------------------------------


def load_mailboxes(services: Services) -> list[MailboxConfig]:
    with services.sessions() as session:
        rows = session.execute(
            select(Mailbox, Practice.slug)
            .join(Practice, Practice.id == Mailbox.practice_id)
            .order_by(Mailbox.id)
        ).all()
        return [MailboxConfig.from_row(row, slug) for row, slug in rows]


@dataclass
class _Running:
    config: MailboxConfig
    poller: MailboxPoller
    task: asyncio.Task[None]


class Pollers:
    """This node's pollers: one task per Mailbox row whose lease it holds (ingress/leases.py).

    Every tick (``reload_seconds``, at most a third of the lease) it re-reads the table, so API
    changes (a new mailbox, a new password or ``password_env``) apply without a restart, takes or
    renews the leases, and starts or stops pollers to match: a mailbox is polled by one node only.
    """

    def __init__(
        self, services: Services, config: PollerConfig | None = None, runner: Runner | None = None
    ) -> None:
        self.services = services
        self.config = config or PollerConfig.from_settings(services.settings)
        self.runner = runner
        self.running: dict[int, _Running] = {}
        self.holder = leases.holder_id()
        self.held: set[int] = set()
        self.release_on_stop = True  # tests turn it off to play a node that died
        self._valid_until = 0.0  # loop time until which the leases taken last are surely ours

    def poller(self, mailbox_id: int) -> MailboxPoller | None:
        entry = self.running.get(mailbox_id)
        return entry.poller if entry else None

    def lease_ok(self) -> bool:
        """Checked before each message: a node that could not renew stops before its lease ends."""
        return _now() < self._valid_until

    async def run(self, stop: asyncio.Event) -> None:
        logging.getLogger("aioimaplib").setLevel(logging.WARNING)  # its DEBUG log prints whole messages
        tick = min(self.config.reload_seconds, self.config.lease_seconds / 3)
        try:
            while not stop.is_set():
                try:
                    await self.reconcile(await self._take_leases())
                except Exception:  # e.g. the database is down: what we hold runs until the lease ends
                    log.warning("imap_mailboxes_unreadable", exc_info=True)
                    if not self.lease_ok() and self.running:
                        log.warning("imap_leases_expired", extra={"mailboxes": len(self.running)})
                        await self.reconcile([])
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), tick)
        finally:
            await asyncio.gather(*(self._stop(entry) for entry in list(self.running.values())))
            self.running.clear()
            if self.release_on_stop and self.held:
                with contextlib.suppress(Exception):
                    await asyncio.to_thread(self._give_back)

    async def _take_leases(self) -> list[MailboxConfig]:
        started = _now()
        configs, held = await asyncio.to_thread(self._read_and_take)
        self._valid_until = started + self.config.lease_seconds * 2 / 3  # a third kept as margin
        for mailbox_id in held - self.held:
            log.info("imap_lease_taken", extra={"mailbox_id": mailbox_id, "holder": self.holder})
        for mailbox_id in self.held - held:
            log.info("imap_lease_lost", extra={"mailbox_id": mailbox_id, "holder": self.holder})
        self.held = held
        return [c for c in configs if c.id in held]

    def _read_and_take(self) -> tuple[list[MailboxConfig], set[int]]:
        configs = load_mailboxes(self.services)
        with writer_gate(self.services.sessions), transaction(self.services.sessions) as session:
            held = leases.take(session, self.holder, [c.id for c in configs], self.config.lease_seconds)
        return configs, held

    def _give_back(self) -> None:
        with writer_gate(self.services.sessions), transaction(self.services.sessions) as session:
            leases.give_back(session, self.holder)

    async def reconcile(self, configs: Sequence[MailboxConfig]) -> None:
        wanted = {c.id: c for c in configs}
        for mailbox_id, entry in list(self.running.items()):
            config = wanted.get(mailbox_id)
            if config is None or config != entry.config or entry.task.done():
                if entry.task.done() and not entry.task.cancelled() and entry.task.exception() is not None:
                    log.error("imap_poller_crashed", exc_info=entry.task.exception())
                await self._stop(entry)
                del self.running[mailbox_id]
                if config is None:  # deleted, or polled by another node now: that node reports it
                    with contextlib.suppress(KeyError):
                        IMAP_STATUS.remove(entry.config.practice_label, entry.config.name)
        for mailbox_id, config in wanted.items():
            if mailbox_id not in self.running:
                poller = MailboxPoller(self.services, config, self.config, self.runner, self.lease_ok)
                task = asyncio.create_task(poller.run(), name=f"imap:{config.name}")
                self.running[mailbox_id] = _Running(config, poller, task)

    async def _stop(self, entry: _Running) -> None:
        entry.poller.stop.set()
        if entry.task.done():
            return
        try:
            await asyncio.wait_for(asyncio.shield(entry.task), self.config.stop_grace_seconds)
        except TimeoutError:
            entry.task.cancel()
            with contextlib.suppress(BaseException):
                await entry.task
        except Exception:
            log.warning("imap_poller_stop_failed", exc_info=True)


async def run_pollers(
    services: Services, stop: asyncio.Event, config: PollerConfig | None = None, runner: Runner | None = None
) -> None:
    """Started by ``mailbridge serve``: one poller per mailbox until ``stop`` (quiet when there are none)."""
    await Pollers(services, config, runner).run(stop)


# ---- mailbridge imap check ---------------------------------------------------------------------


@dataclass
class CheckResult:
    name: str
    connected: bool = False
    logged_in: bool = False
    idle: bool = False
    move: bool = False
    messages: int | None = None
    uidvalidity: int | None = None
    new: int | None = None
    note: str = ""
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None and self.messages is not None


async def check_mailbox(
    mailbox: MailboxConfig, config: PollerConfig, access: Access, tokens: TokenSource | None = None
) -> CheckResult:
    """Connect, log in, SELECT, count what the poller would read next; changes nothing on the server."""
    result = CheckResult(mailbox.name)
    connection = Connection(mailbox, config, asyncio.Event(), access, tokens)
    try:
        await connection.open()
        result.connected = result.logged_in = True
        result.idle = "IDLE" in connection.capabilities
        result.move = "MOVE" in connection.capabilities
        info = await connection.select(mailbox.folder)
        result.messages = info.exists
        result.uidvalidity = info.uidvalidity
        after = mailbox.last_uid
        if mailbox.uidvalidity is not None and mailbox.uidvalidity != info.uidvalidity:
            result.note = "UIDVALIDITY changed: every message will be read again"
            after = 0
        criteria = f"UID {after + 1}:*"
        if mailbox.on_done == "flag" and info.keywords_allowed:
            criteria += f" NOT KEYWORD {DONE_KEYWORD}"
        result.new = len(await connection.search(criteria, after))
    except AuthFailed as exc:
        result.connected = True
        result.error = short_error(exc)
    except Exception as exc:
        result.connected = connection.greeted
        result.error = short_error(exc, connection.password)
    finally:
        await connection.close()
    return result


def _yes(flag: bool) -> str:
    return "yes" if flag else "no"


def check_command(services: Services, practice_slug: str, config: PollerConfig | None = None) -> int:
    """``mailbridge imap check --practice P``: 0 all mailboxes usable, 1 otherwise, 2 unknown practice."""
    config = config or PollerConfig.from_settings(services.settings)
    with services.sessions() as session:
        practice = session.scalar(select(Practice).where(Practice.slug == practice_slug))
        if practice is None:
            print(f"mailbridge: practice {practice_slug!r} not found")
            return 2
        rows = session.scalars(
            select(Mailbox).where(Mailbox.practice_id == practice.id).order_by(Mailbox.name)
        )
        mailboxes = [MailboxConfig.from_row(row) for row in rows]
    if not mailboxes:
        print(f"practice {practice_slug}: no IMAP mailboxes configured")
        return 1

    async def check_all() -> list[CheckResult]:
        logging.getLogger("aioimaplib").setLevel(logging.WARNING)
        access = Access.from_services(services)
        return list(
            await asyncio.gather(
                *(
                    check_mailbox(
                        m, config, access, token_source(services, m) if m.auth == "oauth2" else None
                    )
                    for m in mailboxes
                )
            )
        )

    results = asyncio.run(check_all())
    for mailbox, result in zip(mailboxes, results, strict=True):
        print(
            f"mailbox {mailbox.name}: {mailbox.username} at {mailbox.host}:{mailbox.port} "
            f"({mailbox.security}), folder {mailbox.folder}, on done: {mailbox.on_done}"
        )
        print(f"  connected: {_yes(result.connected)}   login: {_yes(result.logged_in)}")
        if result.logged_in:
            print(f"  capabilities: IDLE {_yes(result.idle)}, MOVE {_yes(result.move)}")
        if result.messages is not None:
            print(f"  folder: {result.messages} messages, UIDVALIDITY {result.uidvalidity}")
            print(f"  new since last UID {mailbox.last_uid}: {result.new}")
        if result.note:
            print(f"  note: {result.note}")
        print(f"  result: {'OK' if result.ok else 'FAILED: ' + (result.error or 'unknown error')}")
    return 0 if all(r.ok for r in results) else 1
