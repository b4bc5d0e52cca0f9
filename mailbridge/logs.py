"""Structured logging; a JSON option for log shippers. Callers never log tokens, bodies or full addresses."""

from __future__ import annotations

import json
import logging
import re
import sys
from typing import Any

from mailbridge.settings import Settings

_STANDARD = set(vars(logging.LogRecord("x", 0, "x", 0, "x", None, None))) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        data: dict[str, Any] = {
            "ts": self.formatTime(record, "%Y-%m-%dT%H:%M:%S"),
            "level": record.levelname,
            "logger": record.name,
            "event": record.getMessage(),
        }
        data.update({k: v for k, v in vars(record).items() if k not in _STANDARD})
        if record.exc_info:
            data["exc"] = self.formatException(record.exc_info)
        return json.dumps(data, default=str)


class KeyValueFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        extra = " ".join(f"{k}={v}" for k, v in vars(record).items() if k not in _STANDARD)
        line = f"{self.formatTime(record, '%H:%M:%S')} {record.levelname:<7} {record.name}: {record.getMessage()}"
        line = f"{line} {extra}" if extra else line
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


_TOKEN = re.compile(rb"([+.-])[A-Za-z2-7]{32}(?=@)".decode())


class RedactTokens(logging.Filter):
    """Defence in depth: any reply token reaching a log line (from any library) is masked."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if _TOKEN.search(message):
            record.msg = _TOKEN.sub(r"\1<token>", message)
            record.args = ()
        return True


def configure_logging(settings: Settings) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(RedactTokens())
    handler.setFormatter(JsonFormatter() if settings.log_json else KeyValueFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(settings.log_level)
    logging.getLogger("mail.log").setLevel(logging.WARNING)  # aiosmtpd echoes commands and DATA lines
    logging.getLogger("alembic").setLevel(logging.WARNING)
    logging.getLogger("aioimaplib").setLevel(logging.WARNING)  # its DEBUG log prints whole messages


def redact_address(address: str) -> str:
    """``alice@client.test`` → ``a***@client.test``: enough to debug routing, not to identify a client."""
    local, at, domain = address.rpartition("@")
    if not at:
        return "***"
    return f"{local[:1]}***@{domain}"
