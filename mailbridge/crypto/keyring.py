"""Keys for what mailbridge keeps secret at rest: a master key per deployment, a data key per practice.

Envelope encryption (as KMS products do it): the master key (a file in the data dir, or the
environment) never encrypts content; it only wraps small *data keys*, one per practice (and one for
the platform), stored wrapped in the database so every node can use them. Content and secrets are
sealed with a data key, and the data key's id travels with every sealed value, so rotating the master
key re-wraps a handful of rows and never re-encrypts an object.

Sealed secrets (a mailbox password, a DKIM private key, a webhook secret) are bound to the place they
belong to by the *purpose* string given as associated data: a sealed value copied into another row,
another practice or another column fails to open instead of being used there.

AES-256-GCM from ``cryptography``; a wrong key or a changed byte is an error on read, never garbage.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import secrets
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from sqlalchemy import select
from sqlalchemy.orm import Session

from mailbridge.domain.models import DataKey, utcnow

KEY_BYTES = 32
NONCE_BYTES = 12
SEALED_PREFIX = "mbs1"


class KeyringError(Exception):
    """A key is missing, wrong, or a sealed value was changed: reading stops here, loudly."""


@dataclass(frozen=True)
class MasterKey:
    key: bytes

    @property
    def id(self) -> str:
        """A fingerprint that names the key without revealing it (stored beside what it wrapped)."""
        return hashlib.sha256(b"mailbridge-master-key\x00" + self.key).hexdigest()[:16]


def parse_master_keys(text: str) -> list[MasterKey]:
    """One key per line or comma-separated, base64 or hex of 32 bytes; the first is current, the
    others are previous keys still accepted for unwrapping (during a master-key rotation)."""
    keys: list[MasterKey] = []
    for item in text.replace(",", "\n").splitlines():
        item = item.strip()
        if not item or item.startswith("#"):
            continue
        raw: bytes | None = None
        if len(item) == 2 * KEY_BYTES:
            try:
                raw = bytes.fromhex(item)
            except ValueError:
                raw = None
        if raw is None:
            try:
                raw = base64.b64decode(item + "=" * (-len(item) % 4), altchars=b"-_", validate=True)
            except (binascii.Error, ValueError):
                raw = None
        if raw is None or len(raw) != KEY_BYTES:
            raise KeyringError("master key: expected 32 bytes in base64 or hex")
        keys.append(MasterKey(raw))
    if not keys:
        raise KeyringError("master key: empty")
    return keys


def new_master_key_text() -> str:
    return base64.urlsafe_b64encode(secrets.token_bytes(KEY_BYTES)).decode("ascii").rstrip("=")


def load_master_keys(env_value: str, path: Path) -> list[MasterKey]:
    """From the environment when set, else from *path*, created once (0600, never overwritten)."""
    if env_value:
        return parse_master_keys(env_value)
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:  # another process of this node made it first
            return parse_master_keys(path.read_text(encoding="ascii"))
        with os.fdopen(fd, "w", encoding="ascii") as handle:
            handle.write(new_master_key_text() + "\n")
            handle.flush()
            os.fsync(handle.fileno())
    return parse_master_keys(path.read_text(encoding="ascii"))


@dataclass(frozen=True)
class OpenDataKey:
    """An unwrapped data key: encrypts and decrypts with AES-256-GCM."""

    id: str
    practice_id: int | None
    key: bytes

    def encrypt(self, plaintext: bytes, aad: bytes) -> bytes:
        nonce = secrets.token_bytes(NONCE_BYTES)
        return nonce + AESGCM(self.key).encrypt(nonce, plaintext, aad)

    def decrypt(self, blob: bytes, aad: bytes) -> bytes:
        try:
            return AESGCM(self.key).decrypt(blob[:NONCE_BYTES], blob[NONCE_BYTES:], aad)
        except InvalidTag:
            raise KeyringError(f"data key {self.id}: authentication failed (tampered or wrong key)") from None


def _wrap_aad(key_id: str, practice_id: int | None) -> bytes:
    return f"mailbridge-data-key\x00{key_id}\x00{practice_id if practice_id is not None else '-'}".encode()


class Keyring:
    """Data keys per practice, wrapped by the master key; unwrapped keys cached for the process."""

    def __init__(self, masters: Sequence[MasterKey]) -> None:
        if not masters:
            raise KeyringError("no master key")
        self.masters = list(masters)
        self._by_master_id = {m.id: m for m in self.masters}
        self._open: dict[str, OpenDataKey] = {}
        self._current: dict[int | None, str] = {}
        self._lock = threading.Lock()

    @property
    def master(self) -> MasterKey:
        return self.masters[0]

    # -- data keys ------------------------------------------------------------------------------

    def data_key(self, session: Session, practice_id: int | None) -> OpenDataKey:
        """The practice's current data key (the platform's for ``None``), created on first use in
        the caller's transaction. Two nodes racing both create one; both stay valid (the id
        travels with what each sealed), the newest becomes current."""
        with self._lock:
            cached = self._current.get(practice_id)
            if cached is not None:
                return self._open[cached]
        query = select(DataKey).where(DataKey.retired_at.is_(None))
        query = query.where(
            DataKey.practice_id.is_(None) if practice_id is None else DataKey.practice_id == practice_id
        )
        row = session.scalars(query.order_by(DataKey.created_at.desc(), DataKey.id.desc()).limit(1)).first()
        if row is None:
            row = self._create(session, practice_id)
        opened = self._unwrap(row)
        with self._lock:
            self._current[practice_id] = opened.id
        return opened

    def cached_data_key(self, practice_id: int | None) -> OpenDataKey | None:
        """The practice's current data key if this process has opened it already (no database)."""
        with self._lock:
            key_id = self._current.get(practice_id)
            return self._open.get(key_id) if key_id is not None else None

    def cached_by_id(self, key_id: str) -> OpenDataKey | None:
        with self._lock:
            return self._open.get(key_id)

    def data_key_by_id(self, session: Session, key_id: str) -> OpenDataKey:
        with self._lock:
            cached = self._open.get(key_id)
        if cached is not None:
            return cached
        row = session.get(DataKey, key_id)
        if row is None:
            raise KeyringError(f"data key {key_id} does not exist")
        return self._unwrap(row)

    def _create(self, session: Session, practice_id: int | None) -> DataKey:
        key_id = "dk" + secrets.token_hex(8)
        raw = secrets.token_bytes(KEY_BYTES)
        row = DataKey(
            id=key_id,
            practice_id=practice_id,
            master_id=self.master.id,
            wrapped=self._wrap(raw, key_id, practice_id, self.master),
            created_at=utcnow(),
        )
        session.add(row)
        session.flush()
        with self._lock:
            self._open[key_id] = OpenDataKey(key_id, practice_id, raw)
        return row

    @staticmethod
    def _wrap(raw: bytes, key_id: str, practice_id: int | None, master: MasterKey) -> str:
        nonce = secrets.token_bytes(NONCE_BYTES)
        sealed = nonce + AESGCM(master.key).encrypt(nonce, raw, _wrap_aad(key_id, practice_id))
        return base64.b64encode(sealed).decode("ascii")

    def _unwrap(self, row: DataKey) -> OpenDataKey:
        with self._lock:
            cached = self._open.get(row.id)
        if cached is not None:
            return cached
        master = self._by_master_id.get(row.master_id)
        if master is None:
            raise KeyringError(
                f"data key {row.id} is wrapped by master key {row.master_id}, which this node does not have"
            )
        blob = base64.b64decode(row.wrapped)
        try:
            raw = AESGCM(master.key).decrypt(
                blob[:NONCE_BYTES], blob[NONCE_BYTES:], _wrap_aad(row.id, row.practice_id)
            )
        except InvalidTag:
            raise KeyringError(f"data key {row.id}: the master key does not open it") from None
        opened = OpenDataKey(row.id, row.practice_id, raw)
        with self._lock:
            self._open[row.id] = opened
        return opened

    def rewrap_all(self, session: Session, new_master: MasterKey) -> int:
        """Master-key rotation: every data key re-wrapped under *new_master*; nothing else changes."""
        count = 0
        for row in session.scalars(select(DataKey)):
            opened = self._unwrap(row)
            row.wrapped = self._wrap(opened.key, row.id, row.practice_id, new_master)
            row.master_id = new_master.id
            count += 1
        session.flush()
        return count

    def unknown_master_ids(self, session: Session) -> list[str]:
        """Master ids that wrapped some data key and that this node lacks (a mis-copied key)."""
        used = set(session.scalars(select(DataKey.master_id).distinct()))
        return sorted(used - set(self._by_master_id))

    # -- sealed secrets -------------------------------------------------------------------------

    def seal(self, session: Session, practice_id: int | None, plaintext: bytes, purpose: str) -> str:
        """A secret to store in a column: ``mbs1.<data key id>.<base64url(nonce|ciphertext|tag)>``.
        *purpose* names the place (``mailbox:12:password``); opening elsewhere fails."""
        key = self.data_key(session, practice_id)
        blob = key.encrypt(plaintext, _seal_aad(key.id, purpose))
        return f"{SEALED_PREFIX}.{key.id}.{base64.urlsafe_b64encode(blob).decode('ascii')}"

    def open(self, session: Session, sealed: str, purpose: str) -> bytes:
        prefix, _, rest = sealed.partition(".")
        key_id, _, body = rest.partition(".")
        if prefix != SEALED_PREFIX or not key_id or not body:
            raise KeyringError("not a sealed value")
        key = self.data_key_by_id(session, key_id)
        try:
            blob = base64.urlsafe_b64decode(body)
        except (binascii.Error, ValueError):
            raise KeyringError("sealed value is corrupt") from None
        return key.decrypt(blob, _seal_aad(key_id, purpose))


def _seal_aad(key_id: str, purpose: str) -> bytes:
    return f"mailbridge-sealed\x00{key_id}\x00{purpose}".encode()


def is_sealed(value: str | None) -> bool:
    return bool(value) and str(value).startswith(SEALED_PREFIX + ".")
