"""The composition root: builds every long-lived object once from the settings and hands them down."""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import threading
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from mailbridge.crypto.keyring import Keyring, KeyringError, load_master_keys
from mailbridge.domain.db import make_engine, make_session_factory
from mailbridge.domain.groupcommit import GroupCommitter
from mailbridge.domain.suppressions import SuppressionPolicy
from mailbridge.inbound.dns import NameserverResolver, Resolver
from mailbridge.inbound.tokens import TokenIssuer
from mailbridge.outbound.keys import KeyStore
from mailbridge.outbound.unsubscribe import UnsubscribeTokens
from mailbridge.settings import Settings, SettingsError
from mailbridge.storage.blobs import BlobStore, ObjectBlobStore
from mailbridge.storage.objects import open_store
from mailbridge.storage.vault import KeyringSource, Vault


def _load_secret(path: Path, env_value: str) -> bytes:
    """The token secret: from the environment, else a 0600 file created once in the data dir."""
    if env_value:
        return env_value.encode("utf-8")
    if path.exists():
        return path.read_bytes().strip()
    path.parent.mkdir(parents=True, exist_ok=True)
    value = secrets.token_hex(32).encode("ascii")
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # another process on the same data directory made it first
        return path.read_bytes().strip()
    with os.fdopen(fd, "wb") as handle:
        handle.write(value)
        handle.flush()
        os.fsync(handle.fileno())
    return value


@dataclass
class Services:
    settings: Settings
    engine: Engine
    sessions: sessionmaker[Session]
    blobs: BlobStore
    tokens: TokenIssuer
    resolver: Resolver
    keyring: Keyring
    dkim_keys: KeyStore  # the practices' DKIM signers, from the database (shared by every node)
    vault: Vault  # raw mail and attachments in the object store, encrypted when configured
    verp_secret: bytes
    unsubscribe: (
        UnsubscribeTokens  # one-click unsubscribe links (RFC 8058), key derived from the token secret
    )
    # Keys the word-run hashes of sent notifications (domain/fingerprint.py), derived like verp_secret.
    fingerprint_key: bytes = b""
    flags: dict[str, bool] = field(default_factory=dict)  # e.g. smtp_listening, for /readyz
    ingress_handlers: list[Any] = field(default_factory=list)  # for draining at shutdown

    def close(self) -> None:
        self.engine.dispose()


def build_services(settings: Settings, resolver: Resolver | None = None) -> Services:
    """Tests and benchmarks hand in a static DNS table; operators point ``dns_nameservers`` anywhere."""
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    engine = make_engine(settings.effective_database_url, busy_timeout=settings.database_busy_timeout_seconds)
    secret = _load_secret(
        settings.data_dir / "secrets" / "token.key", os.environ.get("MAILBRIDGE_TOKEN_SECRET", "")
    )
    try:
        masters = load_master_keys(
            os.environ.get("MAILBRIDGE_MASTER_KEY", ""), settings.effective_master_key_file
        )
    except (KeyringError, OSError) as exc:
        raise SettingsError(f"master_key: {exc}") from None
    sessions = make_session_factory(engine)
    keyring = Keyring(masters)
    try:
        objects = open_store(settings.storage_url, settings.data_dir, settings.s3_endpoint_url)
    except ValueError as exc:
        raise SettingsError(f"storage_url: {exc}") from None
    vault = Vault(
        objects,
        KeyringSource(keyring, sessions) if settings.encryption_at_rest else None,
        spool_dir=settings.data_dir / "spool",
        legacy_blobs=settings.data_dir / "attachments",
        legacy_raw=settings.data_dir / "inbound",
    )
    return Services(
        settings=settings,
        engine=engine,
        sessions=sessions,
        blobs=ObjectBlobStore(vault),
        tokens=TokenIssuer(secret),
        keyring=keyring,
        dkim_keys=KeyStore(keyring),
        vault=vault,
        resolver=resolver
        or NameserverResolver(settings.dns_nameservers, timeout=settings.dns_timeout_seconds),
        verp_secret=hmac.new(secret, b"verp", hashlib.sha256).digest(),
        fingerprint_key=hmac.new(secret, b"notification-fingerprint", hashlib.sha256).digest(),
        unsubscribe=UnsubscribeTokens(secret, settings.unsubscribe_link_days * 86400),
    )


def pipeline_deps(services: Services) -> Any:
    from mailbridge.inbound.pipeline import Deps

    settings = services.settings
    return Deps(
        sessions=services.sessions,
        blobs=services.blobs,
        vault=services.vault,
        resolver=services.resolver,
        raw_dir=settings.data_dir / "inbound",
        trusted_authserv_ids=tuple(settings.trusted_authserv_ids),
        authserv_id=settings.authserv_id,
        loop_value=settings.smtp_hostname,
        suppression=suppression_policy(settings),
        fingerprint_key=services.fingerprint_key,
        dns_budget=settings.dns_budget_seconds,
        cpu_budget=settings.pipeline_cpu_budget_seconds,
        refused_keep_bytes=settings.raw_refused_keep_bytes,
        committer=group_committer(services),
    )


_COMMITTERS: weakref.WeakKeyDictionary[Any, GroupCommitter] = weakref.WeakKeyDictionary()
_COMMITTERS_LOCK = threading.Lock()


def group_committer(services: Services) -> GroupCommitter | None:
    """One per session factory (every door of the process shares it), SQLite only: PostgreSQL already
    shares WAL flushes between concurrent commits and runs them in parallel (domain/groupcommit.py)."""
    if not services.settings.group_commit or services.engine.dialect.name != "sqlite":
        return None
    with _COMMITTERS_LOCK:
        found = _COMMITTERS.get(services.sessions)
        if found is None:
            found = _COMMITTERS[services.sessions] = GroupCommitter(services.sessions)
        return found


def suppression_policy(settings: Settings) -> SuppressionPolicy:
    """How soft bounces add up and end, from ``soft_bounce_limit`` and ``soft_bounce_days``."""
    return SuppressionPolicy(soft_limit=settings.soft_bounce_limit, soft_days=settings.soft_bounce_days)
