"""The one typed settings object: defaults < TOML file < environment, validated once at start-up."""

from __future__ import annotations

import ipaddress
import os
import re
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError, field_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from mailbridge.domain.links import (
    DEFAULT_CONVERSATION_PATH,
    DEFAULT_PREFERENCES_PATH,
    check_app_url,
    check_link_path,
)


def _check_listen(value: str) -> str:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"expected host:port, got {value!r}")
    return value


# Letters, digits, '-' and '_' (SPF domains such as _spf.example.net), dot-separated labels.
_HOST_NAME = re.compile(
    r"^(?=.{1,253}$)[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9])?(?:\.[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9])?)+$"
)


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
    # Raw mail and attachments (every node must reach the same store): file:///path, or
    # s3://bucket/prefix with credentials and region from the AWS chain; empty: DATA_DIR/objects.
    storage_url: str = ""
    s3_endpoint_url: str = ""  # an S3-compatible server (MinIO, Ceph RGW, R2, GCS); empty: AWS
    # Raw mail and attachments sealed with the practice's data key (AES-256-GCM, streamed).
    encryption_at_rest: bool = True

    # Listeners
    smtp_listen: str = "127.0.0.1:2525"
    http_listen: str = "127.0.0.1:8080"
    lmtp: bool = False  # speak LMTP instead of SMTP on smtp_listen (an after-queue MTA transport)
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
    # SQLite: the final transactions of replies processed together share one commit (one fsync),
    # each in a savepoint of its own; every 250 still follows the commit containing its message.
    # PostgreSQL groups concurrent commits by itself: ignored there (domain/groupcommit.py).
    group_commit: bool = True
    # MTAs in front (Postfix's smtpd_proxy_filter) allowed to tell, with XFORWARD, the address and
    # HELO of the client they are relaying, so SPF judges that client and not the MTA. Addresses or
    # networks; empty: XFORWARD is offered to nobody. These peers are exempt from the per-IP cap.
    smtp_xforward_hosts: list[str] = []

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
    # What `mailbridge dns records` tells each practice to publish, and `dns check` compares with:
    # the domain under which the smarthost publishes its SPF (``include:<spf_include>``), and the
    # host the reply domains' MX points at (Postfix or mailbridge's SMTP). Empty: a placeholder.
    spf_include: str = ""
    mx_host: str = ""
    # Suppressions (domain/suppressions.py): a soft bounce (mailbox full, a remote MTA giving up on a
    # 4.X.X condition) suppresses the address once this many were seen, each within soft_bounce_days
    # of the previous; the suppression ends soft_bounce_days after the last one.
    soft_bounce_limit: int = Field(default=3, ge=1, le=100)
    soft_bounce_days: int = Field(default=7, ge=1, le=365)

    # Webhooks (endpoints configured per practice, or platform-wide, through the API)
    # Endpoint URLs that resolve to private, loopback, link-local or other non-public addresses are
    # refused (at PUT and at every delivery) unless this is true: a practice must not reach the
    # network behind us. Plain http:// is refused unless webhook_allow_http (payloads may carry content).
    webhook_allow_private: bool = False
    webhook_allow_http: bool = False
    webhook_timeout_seconds: float = Field(default=5.0, gt=0, le=60)  # the whole request, answer included
    # Seconds to wait after each failed attempt (±20% jitter); after the last one the delivery has
    # failed. The default waits 5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 10 h: 8 attempts over about 27.6 h.
    webhook_retry_schedule: list[float] = [5, 300, 1800, 7200, 18000, 36000, 36000]
    webhook_secret_overlap_seconds: int = Field(
        default=24 * 3600, ge=0
    )  # old secret signs this long after a rotation
    webhook_lease_seconds: float = Field(
        default=60.0, ge=1
    )  # a delivery claimed by a dead node is retried after this
    webhook_poll_seconds: float = Field(
        default=1.0, gt=0
    )  # events written by other nodes; this node's wake the worker
    webhook_batch: int = Field(default=50, ge=1, le=1000)
    webhook_concurrency: int = Field(default=10, ge=1, le=200)  # requests in flight per node
    webhook_retention_days: int = Field(default=30, ge=1)  # events and the delivery log, then purged

    # IMAP mailboxes (configured per practice through the API)
    imap_idle_seconds: float = Field(default=25 * 60, gt=0, lt=29 * 60)  # re-IDLE before 29 min (RFC 2177)
    imap_poll_seconds: float = Field(default=60.0, gt=0)  # servers without IDLE
    imap_reload_seconds: float = Field(default=60.0, gt=0)  # mailboxes added through the API start by then
    imap_timeout_seconds: float = Field(default=60.0, gt=0)
    imap_allow_plaintext: bool = False  # plain IMAP to a non-loopback host
    # One node polls a mailbox at a time: it holds a lease in the database, renewed every third of
    # this; a node that dies is replaced by another within about this long.
    imap_lease_seconds: float = Field(default=90.0, ge=3)
    # Environment variables a practice may name as a mailbox's password_env (empty: none; a practice
    # gives the password itself, stored sealed). Never list a variable holding a secret of ours.
    imap_password_envs: list[str] = []
    # Mailbox hosts on loopback, private, link-local or other non-public addresses (the cloud
    # metadata service, the network behind us) are refused unless this is true.
    imap_allow_private_hosts: bool = False
    # OAuth2 token endpoints on private, loopback or link-local addresses (and plain http to them):
    # refused unless the operator allows it (a practice chooses the URL: SSRF otherwise).
    oauth_allow_private_endpoints: bool = False

    # Authentication of inbound mail
    dns_nameservers: list[str] = []  # e.g. ["127.0.0.1:5353"]; empty uses the system resolver
    dns_timeout_seconds: float = Field(default=5.0, gt=0)
    # Per message: DNS look-ups stop (temperror, 451 4.7.0) once authentication has waited this long.
    dns_budget_seconds: float = Field(default=10.0, gt=0)
    # Per message: CPU time of the pipeline's steps; a message over it is refused 550 5.6.0 (its
    # content makes it costly; a retry would cost the same). Checked between steps.
    pipeline_cpu_budget_seconds: float = Field(default=20.0, gt=0)
    # Trust Authentication-Results only from these authserv-ids (an MTA that strips forged copies).
    trusted_authserv_ids: list[str] = []
    authserv_id: str = "mailbridge"

    # The messaging app
    api_key: str = ""
    api_docs: bool = False  # serve Swagger UI at /docs (no key; it loads its assets from a public CDN)
    # The messaging app's base URL: the sign-in, conversation and preferences links of notifications
    # (a practice with its own portal sets its own app_url and paths in its settings).
    app_url: str = "http://127.0.0.1:8080"
    conversation_link_path: str = DEFAULT_CONVERSATION_PATH  # appended to app_url; {conversation}: its id
    preferences_link_path: str = DEFAULT_PREFERENCES_PATH  # appended to app_url
    # Idempotency-Key answers (api/idempotency.py) are replayed to retries this long, then purged.
    api_idempotency_retention_hours: int = Field(default=24, ge=24, le=24 * 30)
    # Per API key and per node (api/ratelimit.py): a bucket of api_rate_limit_burst requests refilled
    # at api_rate_limit a second; an empty bucket answers 429 with Retry-After. 0: no limit.
    api_rate_limit: float = Field(default=100.0, ge=0)
    api_rate_limit_burst: int = Field(default=1000, ge=1)
    # Where mail clients reach mailbridge's own HTTP listener from outside: the one-click unsubscribe
    # links (List-Unsubscribe, RFC 8058) point at <public_url>/u/<token>. Empty: http://<http_listen>,
    # fine for a demo; RFC 8058 wants https, so mail clients offer one-click only with an https URL.
    public_url: str = ""
    unsubscribe_link_days: int = Field(default=90, ge=1, le=3650)  # an unsubscribe link works this long

    templates_dir: Path | None = None  # default: mailbridge/templates/, shipped inside the package

    # The operator console (/console/ on the HTTP listener; docs/console.md)
    console_enabled: bool = True
    console_idle_minutes: int = Field(default=30, ge=1, le=24 * 60)  # a session unused this long ends
    console_session_hours: int = Field(default=12, ge=1, le=24 * 30)  # and ends this long after sign-in
    console_login_max_failures: int = Field(default=5, ge=1)  # per account, within the window
    console_login_max_failures_per_address: int = Field(default=20, ge=1)  # per client address
    console_login_window_seconds: int = Field(default=900, ge=1)  # failures counted, and blocked, this long
    # Proxies in front whose X-Forwarded-For / X-Forwarded-Proto are believed (the client's address for
    # throttling, https for the Secure cookie flag). Addresses or networks; empty: no proxy is believed.
    console_trusted_proxies: list[str] = []

    # Housekeeping
    raw_retention_days: int = Field(default=30, ge=0)
    # Raw copies of refused (5xx) and deferred (4xx) mail: kept shorter, and only their first
    # raw_refused_keep_bytes (the headers and the start, enough to tell why): a stranger can send
    # any amount of refused mail. Quarantined mail is kept whole until staff decide.
    raw_refused_retention_days: float = Field(default=3.0, ge=0)
    raw_refused_keep_bytes: int = Field(default=64 * 1024, ge=0)
    log_json: bool = False
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"  # mailbridge's own lines
    log_libraries_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "WARNING"  # every library's
    # Per-practice series (inbound, deliveries, quarantine held) carry a `practice` label. Turn off
    # with thousands of practices: the API's inbound and outbound logs give the same figures.
    metrics_practice_label: bool = True

    @field_validator("smtp_listen", "http_listen")
    @classmethod
    def _listen(cls, value: str) -> str:
        return _check_listen(value)

    @field_validator("smtp_xforward_hosts", "console_trusted_proxies")
    @classmethod
    def _xforward_hosts(cls, value: list[str]) -> list[str]:
        for item in value:
            ipaddress.ip_network(item.strip(), strict=False)  # ValueError names the bad entry
        return value

    @field_validator("public_url")
    @classmethod
    def _public_url(cls, value: str) -> str:
        value = value.strip().rstrip("/")
        if value and not re.fullmatch(r"https?://[A-Za-z0-9.-]+(?::\d{1,5})?(?:/[A-Za-z0-9._~/-]*)?", value):
            raise ValueError(f"expected http(s)://host[:port][/path], got {value!r}")
        return value

    @field_validator("app_url")
    @classmethod
    def _app_url(cls, value: str) -> str:
        return check_app_url(value, allow_http=True)  # the operator's: plain http allowed (a test install)

    @field_validator("conversation_link_path")
    @classmethod
    def _conversation_path(cls, value: str) -> str:
        return check_link_path(value, placeholder=True)

    @field_validator("preferences_link_path")
    @classmethod
    def _preferences_path(cls, value: str) -> str:
        return check_link_path(value, placeholder=False)

    @field_validator("smarthost")
    @classmethod
    def _smarthost(cls, value: str) -> str:
        return _check_listen(value) if value else value

    @field_validator("spf_include", "mx_host")
    @classmethod
    def _host_name(cls, value: str) -> str:
        value = value.strip().rstrip(".").lower()
        if value and not _HOST_NAME.match(value):
            raise ValueError(f"expected a DNS name such as spf.example.net, got {value!r}")
        return value

    @field_validator("dns_nameservers")
    @classmethod
    def _nameservers(cls, value: list[str]) -> list[str]:
        for item in value:
            host, _, port = item.partition(":") if item.count(":") == 1 else (item, "", "")
            ipaddress.ip_address(host)
            if port and not port.isdigit():
                raise ValueError(f"bad nameserver port in {item!r}")
        return value

    @field_validator("api_key")
    @classmethod
    def _api_key(cls, value: str) -> str:
        # compared with what arrives in an HTTP header: printable ASCII only
        if value and not (value.isascii() and value.isprintable() and " " not in value):
            raise ValueError("must be printable ASCII without spaces")
        return value

    @field_validator("imap_password_envs")
    @classmethod
    def _password_envs(cls, value: list[str]) -> list[str]:
        for name in value:
            if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]{0,127}", name):
                raise ValueError(f"{name!r} is not an environment variable name")
            if name.startswith("MAILBRIDGE_"):
                raise ValueError(f"{name} is one of mailbridge's own settings, never a mailbox password")
        return value

    @field_validator("outbox_retry_schedule")
    @classmethod
    def _schedule(cls, value: list[int]) -> list[int]:
        if not value or any(v <= 0 for v in value):
            raise ValueError("must be a non-empty list of positive seconds")
        return value

    @field_validator("storage_url")
    @classmethod
    def _storage_url(cls, value: str) -> str:
        if value and not (value.startswith("file:///") or (value.startswith("s3://") and len(value) > 5)):
            raise ValueError("expected file:///path or s3://bucket/prefix")
        return value

    @field_validator("s3_endpoint_url")
    @classmethod
    def _endpoint(cls, value: str) -> str:
        if value and not value.startswith(("http://", "https://")):
            raise ValueError("expected an http:// or https:// URL")
        return value

    @field_validator("webhook_retry_schedule")
    @classmethod
    def _webhook_schedule(cls, value: list[float]) -> list[float]:
        if any(v <= 0 for v in value):
            raise ValueError("must be a list of positive seconds (empty: a single attempt)")
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
    def effective_public_url(self) -> str:
        """The base of the links that reach mailbridge itself (``/u/<token>``), without a trailing slash."""
        if self.public_url:
            return self.public_url
        host, port = split_listen(self.http_listen)
        return f"http://{'[' + host + ']' if ':' in host else host}:{port}"

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
