"""Structured logging: one line per event, JSON or key=value; callers never log tokens, bodies or full addresses.

Two lines an operator greps for: ``inbound_decision`` (every message received, through any door:
door, practice, inbound id, Message-ID, state, reason, SMTP answer, duration) and
``delivery_attempt`` (every send: outbox id, practice, result, the server's answer, attempt
number). Our own loggers (``mailbridge.*``) log at ``log_level``; every other library at
``log_libraries_level`` (WARNING by default: flufl.bounce's detectors alone wrote 136 lines of 145).
"""

from __future__ import annotations

import json
import logging
import re
import sys
from datetime import UTC, datetime
from typing import Any

from mailbridge.settings import Settings

_STANDARD = set(vars(logging.LogRecord("x", 0, "x", 0, "x", None, None))) | {"message", "asctime"}
# uvicorn's copy of its message with ANSI colours, and anything else a library adds for terminals
_DROPPED = frozenset({"color_message"})
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
# Libraries that print mail content at DEBUG/INFO: never below WARNING, whatever the settings say.
_PRIVATE = ("mail.log", "aioimaplib", "aiosmtplib")  # SMTP commands and DATA lines, whole IMAP messages

inbound_log = logging.getLogger("mailbridge.inbound.decisions")
delivery_log = logging.getLogger("mailbridge.outbound.deliveries")


def timestamp(record: logging.LogRecord) -> str:
    """ISO 8601 in UTC with milliseconds and the offset, e.g. ``2026-12-04T18:28:03.512+00:00``."""
    return datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds")


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    return {k: v for k, v in vars(record).items() if k not in _STANDARD and k not in _DROPPED}


def _plain(text: str) -> str:
    return _ANSI.sub("", text)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        data: dict[str, Any] = {
            "ts": timestamp(record),
            "level": record.levelname,
            "logger": record.name,
            "event": _plain(record.getMessage()),
        }
        data.update(_fields(record))
        if record.exc_info:
            data["exc"] = self.formatException(record.exc_info)
        return json.dumps(data, default=str)


_BARE = re.compile(r"^[A-Za-z0-9_.:/@<>+\-…*]+$")


def _kv(value: Any) -> str:
    """A value as it appears after ``key=``: bare when it is one safe word, else JSON-quoted (a
    Message-ID or an SMTP answer with spaces, quotes or control characters stays on its line)."""
    text = _plain(value if isinstance(value, str) else json.dumps(value, default=str))
    return text if _BARE.match(text) else json.dumps(text, ensure_ascii=False)


class KeyValueFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        extra = " ".join(f"{k}={_kv(v)}" for k, v in _fields(record).items())
        line = f"{timestamp(record)} {record.levelname:<7} {record.name}: {_plain(record.getMessage())}"
        line = f"{line} {extra}" if extra else line
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


_TOKEN = re.compile(rb"([+.-])[A-Za-z2-7]{32}(?=@)".decode())


class RedactTokens(logging.Filter):
    """Defence in depth: any reply token reaching a log line (from any library) is masked, in the
    message and in the structured fields (a Message-ID or a server's answer may quote an address)."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if _TOKEN.search(message):
            record.msg = _TOKEN.sub(r"\1<token>", message)
            record.args = ()
        for key, value in _fields(record).items():
            if isinstance(value, str) and _TOKEN.search(value):
                setattr(record, key, _TOKEN.sub(r"\1<token>", value))
        return True


def configure_logging(settings: Settings) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(RedactTokens())
    handler.setFormatter(JsonFormatter() if settings.log_json else KeyValueFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(settings.log_libraries_level)  # every library, unless named below
    logging.getLogger("mailbridge").setLevel(settings.log_level)
    for name in _PRIVATE:
        logging.getLogger(name).setLevel(
            max(logging.WARNING, logging.getLevelName(settings.log_libraries_level))
        )
    logging.getLogger("alembic").setLevel(logging.WARNING)  # `db upgrade` says what it did in one line
    logging.getLogger("uvicorn.access").disabled = True  # the API's requests are not mail events


def redact_address(address: str) -> str:
    """``alice@client.test`` → ``a***@client.test``: enough to debug routing, not to identify a client."""
    local, at, domain = address.rpartition("@")
    if not at:
        return "***"
    return f"{local[:1]}***@{domain}"


def inbound_decision(
    *,
    door: str,
    practice: str | None,
    inbound_id: str | None,
    message_id: str | None,
    state: str,
    reason: str,
    reply: str,
    duration_ms: float | None = None,
) -> None:
    """The one line per message received: what was decided and answered (README: SMTP answers)."""
    fields: dict[str, Any] = {
        "door": door,
        "practice": practice or "-",
        "inbound_id": inbound_id or "-",
        "message_id": (message_id or "-")[:200],
        "state": state,
        "reason": reason,
        "smtp": reply[:200],
    }
    if duration_ms is not None:
        fields["duration_ms"] = round(duration_ms, 1)
    inbound_log.info("inbound_decision", extra=fields)


def delivery_attempt(
    *, outbox_id: str, practice: str | None, kind: str, result: str, answer: str, attempt: int, state: str
) -> None:
    """The one line per send: a permanent failure or an expiry is a WARNING (someone got nothing)."""
    level = logging.INFO if state in ("sent", "pending") else logging.WARNING
    delivery_log.log(
        level,
        "delivery_attempt",
        extra={
            "outbox_id": outbox_id,
            "practice": practice or "-",
            "kind": kind,
            "result": result,
            "smtp": answer.replace("\r", " ").replace("\n", " ")[:200],
            "attempt": attempt,
            "state": state,
        },
    )
