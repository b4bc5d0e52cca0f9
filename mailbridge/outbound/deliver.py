"""Handing signed bytes to the world: a smarthost over SMTP (aiosmtplib) or .eml files in DATA_DIR/outbox."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import ssl
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal, Protocol

import aiosmtplib

Result = Literal["sent", "temporary", "permanent"]


Stage = Literal["connect", "mail", "rcpt", "data", ""]


@dataclass(frozen=True)
class Delivery:
    result: Result
    answer: str
    # The command the answer was to: a refusal at MAIL FROM is of our sender, never of the recipient.
    stage: Stage = ""


class Transport(Protocol):
    async def send(self, mail_from: str, rcpt: str, data: bytes) -> Delivery: ...
    async def close(self) -> None: ...


_MESSAGE_ID = re.compile(rb"^Message-ID:[ \t]*<?([^>\r\n]*)", re.IGNORECASE | re.MULTILINE)
_UNSAFE = re.compile(r"[^A-Za-z0-9._@+-]+")


def eml_name(data: bytes, now: datetime | None = None) -> str:
    """``20261204T182803.512044Z-n.abc.12@reply.acme.example.eml``: sorted by time, findable by
    Message-ID (RFC 5322 §3.6.4), only characters safe in any file name."""
    stamp = (now or datetime.now(UTC)).strftime("%Y%m%dT%H%M%S.%fZ")
    head = data[: data.find(b"\r\n\r\n") if b"\r\n\r\n" in data[:65536] else 65536]
    match = _MESSAGE_ID.search(head)
    ident = _UNSAFE.sub("_", match.group(1).decode("ascii", "replace")).strip("._")[:120] if match else ""
    return f"{stamp}-{ident or 'no-message-id'}.eml"


class FileTransport:
    """The embedded default: each email becomes an .eml file, written atomically (fsync, rename)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    async def send(self, mail_from: str, rcpt: str, data: bytes) -> Delivery:
        return await asyncio.to_thread(self._write, mail_from, rcpt, data)

    def _write(self, mail_from: str, rcpt: str, data: bytes) -> Delivery:
        self.folder.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.folder, prefix=".", suffix=".tmp")
        with os.fdopen(fd, "wb") as handle:
            handle.write(f"X-Envelope-From: <{mail_from}>\r\nX-Envelope-To: <{rcpt}>\r\n".encode())
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        final = self.folder / eml_name(data)
        os.replace(tmp, final)
        return Delivery("sent", f"250 written {final.name}")

    async def close(self) -> None:
        return None


class SmtpTransport:
    """One connection reused across a batch; 4xx and network/TLS trouble retry, 5xx fail for good."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        starttls: Literal["required", "opportunistic", "off"] = "required",
        username: str = "",
        password: str = "",
        ca_file: Path | None = None,
        timeout: float = 60.0,
        local_hostname: str | None = None,
    ) -> None:
        self.host, self.port = host, port
        self.starttls = starttls
        self.username, self.password = username, password
        self.timeout = timeout
        self.local_hostname = local_hostname
        self.tls_context = ssl.create_default_context(cafile=str(ca_file) if ca_file else None)
        self._client: aiosmtplib.SMTP | None = None

    async def _connect(self) -> aiosmtplib.SMTP:
        if self._client is not None and self._client.is_connected:
            return self._client
        client = aiosmtplib.SMTP(
            hostname=self.host,
            port=self.port,
            timeout=self.timeout,
            start_tls=False,
            local_hostname=self.local_hostname,
            tls_context=self.tls_context,
        )
        await client.connect()
        await client.ehlo()  # the server's extensions are known only after EHLO
        if self.starttls != "off":
            if client.supports_extension("starttls"):
                await client.starttls()
            elif self.starttls == "required":
                await client.quit()
                raise aiosmtplib.SMTPException("smarthost offers no STARTTLS; refusing to send in cleartext")
        if self.username:
            await client.login(self.username, self.password)
        self._client = client
        return client

    async def send(self, mail_from: str, rcpt: str, data: bytes) -> Delivery:
        try:
            client = await self._connect()
            _, answer = await client.sendmail(mail_from, [rcpt], data)
            return Delivery("sent", answer[:500] or "250")
        except aiosmtplib.SMTPRecipientsRefused as exc:
            refused = exc.recipients[0] if exc.recipients else None
            code = refused.code if refused else 550
            text = f"{code} {refused.message}" if refused else str(exc)
            await self._reset()
            return Delivery("permanent" if code >= 500 else "temporary", text[:500], "rcpt")
        except aiosmtplib.SMTPResponseException as exc:
            await self._reset()
            stage: Stage = (
                "mail"
                if isinstance(exc, aiosmtplib.SMTPSenderRefused)
                else "data"
                if isinstance(exc, aiosmtplib.SMTPDataError)
                else ""
            )
            return Delivery(
                "permanent" if exc.code >= 500 else "temporary", f"{exc.code} {exc.message}"[:500], stage
            )
        except (TimeoutError, aiosmtplib.SMTPException, OSError, ssl.SSLError) as exc:
            await self._drop()
            return Delivery("temporary", f"connection: {type(exc).__name__}: {exc}"[:500], "connect")

    async def _reset(self) -> None:
        if self._client is not None and self._client.is_connected:
            try:
                await self._client.rset()
            except Exception:
                await self._drop()

    async def _drop(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            with contextlib.suppress(Exception):
                client.close()

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is not None and client.is_connected:
            try:
                await client.quit()
            except Exception:
                client.close()
