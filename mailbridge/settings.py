"""The one typed settings object: defaults < TOML file < environment, validated once at start-up."""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError, field_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)


def _check_listen(value: str) -> str:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"expected host:port, got {value!r}")
    return value


def split_listen(value: str) -> tuple[str, int]:
    host, _, port = value.rpartition(":")
    return host.strip("[]"), int(port)


class Settings(BaseSettings):
    """Every knob an operator can turn. ``config/mailbridge.example.toml`` documents each one."""

    model_config = SettingsConfigDict(env_prefix="MAILBRIDGE_", extra="forbid", validate_default=True)

    # Paths and storage
    data_dir: Path = Path("./var")
    database_url: str = ""  # empty: SQLite file DATA_DIR/mailbridge.db
    database_busy_timeout_seconds: float = Field(default=30.0, gt=0)  # SQLite: wait this long for a lock
    # The master key that wraps every practice's data key (MAILBRIDGE_MASTER_KEY, when set, wins):
    # default DATA_DIR/secrets/master.key, created on first start. Every node needs the same one.
    master_key_file: Path | None = None

    # Listeners
    smtp_listen: str = "127.0.0.1:2525"
    http_listen: str = "127.0.0.1:8080"
    lmtp: bool = False  # speak LMTP instead of SMTP on smtp_listen (Postfix in front)
    smtp_enabled: bool = True
    smtp_hostname: str = "mailbridge.localhost"
    tls_cert: Path | None = None  # STARTTLS offered when both are set
    tls_key: Path | None = None
    smtp_max_connections: int = Field(default=200, ge=1)
    smtp_max_connections_per_ip: int = Field(default=20, ge=1)
    smtp_max_bad_recipients: int = Field(default=10, ge=1)  # per connection, then 421 4.7.0
    smtp_max_recipients: int = Field(default=100, ge=1)
    # Idle time allowed since the last command that made progress (a greeting, MAIL, RCPT, DATA):
    # NOOP, RSET, VRFY, HELP and repeated greetings never restart it (RFC 5321 §4.5.3.2.7).
    smtp_timeout_seconds: float = Field(default=300.0, gt=0)
    smtp_max_junk_commands: int = Field(default=100, ge=1)  # NOOP/RSET/VRFY/HELP… then 421 4.7.0
    smtp_data_idle_seconds: float = Field(default=60.0, gt=0)  # no byte during DATA for this long: 421 4.4.2
    smtp_data_max_seconds: float = Field(default=1200.0, gt=0)  # one whole DATA transfer, at most
    max_concurrent_large_transfers: int = Field(default=4, ge=1)
    smtp_large_transfer_bytes: int = Field(default=4 * 1024 * 1024, ge=1024)  # "large" starts here
    # A transfer past that size waits this long for a slot, then gets 451 4.3.2 (before 354 when SIZE= was
    # declared); a slot holder that sends less than the minimum rate over a data-idle window loses it.
    smtp_large_transfer_wait_seconds: float = Field(default=30.0, gt=0)
    smtp_large_transfer_min_rate: int = Field(default=8192, ge=0)  # bytes per second; 0 = no minimum
    # The HTTP door: connections over the cap get 503 and are closed at once; a request whose
    # headers are not complete this long after its first byte (or after the connection opened) is
    # closed (slow-loris). Keep smtp_max_connections + http_max_connections well under the
    # descriptor limit (`ulimit -n`; raised to the hard limit at start-up).
    http_max_connections: int = Field(default=200, ge=1)
    http_header_timeout_seconds: float = Field(default=20.0, gt=0)
    http_keepalive_seconds: int = Field(default=5, ge=1)  # an idle kept-alive connection closes after this
    # Processes accepting SMTP on smtp_listen (SO_REUSEPORT), each with a delivery worker: the work
    # is CPU-bound Python, one process uses one core. 0 = one per CPU. Connection limits apply per process.
    smtp_processes: int = Field(default=1, ge=0, le=64)

    # Outbound
    smarthost: str = ""  # host:port; empty writes .eml files to DATA_DIR/outbox/
    smarthost_starttls: Literal["required", "opportunistic", "off"] = "required"
    smarthost_username: str = ""
    smarthost_password: str = ""
    smarthost_ca_file: Path | None = None
    outbox_retry_schedule: list[int] = [60, 300, 1800, 7200, 21600, 43200]  # seconds; the last repeats
    outbox_lifetime_seconds: int = Field(default=2 * 24 * 3600, ge=60)
    outbox_lease_seconds: int = Field(default=300, ge=5)
    outbox_poll_seconds: float = Field(default=1.0, gt=0)
    outbox_batch: int = Field(default=50, ge=1, le=1000)  # rows per claim; IN-lists stay small
    worker_enabled: bool = True

    # IMAP mailboxes (configured per practice through the API)
    imap_idle_seconds: float = Field(default=25 * 60, gt=0, lt=29 * 60)  # re-IDLE before 29 min (RFC 2177)
    imap_poll_seconds: float = Field(default=60.0, gt=0)  # servers without IDLE
    imap_reload_seconds: float = Field(default=60.0, gt=0)  # mailboxes added through the API start by then
    imap_timeout_seconds: float = Field(default=60.0, gt=0)
    imap_allow_plaintext: bool = False  # plain IMAP to a non-loopback host

    # Authentication of inbound mail
    dns_nameservers: list[str] = []  # e.g. ["127.0.0.1:5353"]; empty uses the system resolver
    dns_timeout_seconds: float = Field(default=5.0, gt=0)
    # Per message: DNS look-ups stop (temperror, 451 4.7.0) once authentication has waited this long.
    dns_budget_seconds: float = Field(default=10.0, gt=0)
    # Per message: CPU time of the pipeline's steps; a message over it is refused 550 5.6.0 (its
    # content makes it costly; a retry would cost the same). Checked between steps.
    pipeline_cpu_budget_seconds: float = Field(default=20.0, gt=0)
    trusted_authserv_ids: list[str] = []  # trust only Authentication-Results from these (LMTP behind Postfix)
    authserv_id: str = "mailbridge"

    # The messaging app
    api_key: str = ""
    app_url: str = "http://127.0.0.1:8080"  # sign-in links in notifications

    templates_dir: Path | None = None  # default: the templates/ folder shipped beside the package

    # Housekeeping
    raw_retention_days: int = Field(default=30, ge=0)
    # Raw copies of refused (5xx) and deferred (4xx) mail: kept shorter, and only their first
    # raw_refused_keep_bytes (the headers and the start, enough to tell why): a stranger can send
    # any amount of refused mail. Quarantined mail is kept whole until staff decide.
    raw_refused_retention_days: float = Field(default=3.0, ge=0)
    raw_refused_keep_bytes: int = Field(default=64 * 1024, ge=0)
    log_json: bool = False
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"

    @field_validator("smtp_listen", "http_listen")
    @classmethod
    def _listen(cls, value: str) -> str:
        return _check_listen(value)

    @field_validator("smarthost")
    @classmethod
    def _smarthost(cls, value: str) -> str:
        return _check_listen(value) if value else value

    @field_validator("dns_nameservers")
    @classmethod
    def _nameservers(cls, value: list[str]) -> list[str]:
        for item in value:
            host, _, port = item.partition(":") if item.count(":") == 1 else (item, "", "")
            ipaddress.ip_address(host)
            if port and not port.isdigit():
                raise ValueError(f"bad nameserver port in {item!r}")
        return value

    @field_validator("outbox_retry_schedule")
    @classmethod
    def _schedule(cls, value: list[int]) -> list[int]:
        if not value or any(v <= 0 for v in value):
            raise ValueError("must be a non-empty list of positive seconds")
        return value

    @field_validator("database_url")
    @classmethod
    def _database_url(cls, value: str) -> str:
        if value and not value.startswith(("sqlite", "postgresql")):
            raise ValueError("only sqlite:// and postgresql:// URLs are supported")
        return value

    @property
    def effective_database_url(self) -> str:
        return self.database_url or f"sqlite:///{(self.data_dir / 'mailbridge.db').resolve()}"

    @property
    def effective_master_key_file(self) -> Path:
        return self.master_key_file or self.data_dir / "secrets" / "master.key"

    @property
    def effective_smtp_processes(self) -> int:
        return self.smtp_processes or os.cpu_count() or 1

    @property
    def starttls_enabled(self) -> bool:
        return self.tls_cert is not None and self.tls_key is not None

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        toml_path = _CONFIG_PATH.get("path")
        if toml_path is not None:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=toml_path))
        return tuple(sources)


_CONFIG_PATH: dict[str, Path | None] = {"path": None}


class SettingsError(Exception):
    """A bad setting: one line naming the key and the problem, for a clean exit 2."""


def load_settings(config_path: str | Path | None = None, **overrides: Any) -> Settings:
    """Build the settings once, in the composition root; TOML from --config or MAILBRIDGE_CONFIG."""
    import os

    path_text = str(config_path) if config_path else os.environ.get("MAILBRIDGE_CONFIG", "")
    path = Path(path_text) if path_text else None
    if path is not None and not path.is_file():
        raise SettingsError(f"config: file {path} does not exist")
    _CONFIG_PATH["path"] = path
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        first = exc.errors()[0]
        key = ".".join(str(p) for p in first["loc"]) or "settings"
        raise SettingsError(f"{key}: {first['msg']}") from None
    except ValueError as exc:  # e.g. TOML syntax error
        raise SettingsError(f"config: {exc}") from None
    finally:
        _CONFIG_PATH["path"] = None
