"""The one way PHI objects (raw mail, attachments) are written and read: object store + encryption.

A *reference* is what the database stores, and any node resolves it:

* ``raw/<practice>/<yyyy-mm-dd>/<inbound id>[.mbe]`` and ``att/<practice>/<name>[.mbe]``: object
  keys in the configured store (``storage.objects``). The ``.mbe`` suffix says the object is
  encrypted (``crypto.stream``), so the decision is the database's, not the bucket's: a plaintext
  object slipped into the bucket under an encrypted reference fails to open instead of being served.
* a bare SHA-256: an attachment stored before object storage, in ``DATA_DIR/attachments/ab/cd/…``.
* an absolute path under ``DATA_DIR/inbound``: raw mail stored before object storage.

The two legacy forms are read from this node's disk only (as before the upgrade) and are never
written again; deploy.md tells how to carry them over.

Encryption (``encryption_at_rest``, on by default): each object is sealed with its practice's data
key (``crypto.keyring``), the key's id in the object's header, the reference bound in as context.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import os
import re
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any, BinaryIO, Protocol, cast

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from mailbridge.crypto.keyring import Keyring, OpenDataKey
from mailbridge.crypto.stream import DecryptingReader, EncryptingReader
from mailbridge.storage.objects import ObjectNotFoundError, ObjectStore, StorageError, check_key

ENCRYPTED_SUFFIX = ".mbe"
_SHA256_HEX = re.compile(r"[0-9a-f]{64}")
_CHUNK = 1024 * 1024


class KeySource(Protocol):
    # The practice's current data key (created on first use).
    def current(self, practice_id: int | None) -> OpenDataKey: ...
    # A data key by the id an object's header names.
    def by_id(self, key_id: str) -> OpenDataKey: ...


@dataclass
class KeyringSource:
    """Data keys through the keyring, each look-up in a short transaction of its own (cached after)."""

    keyring: Keyring
    sessions: Any  # sessionmaker[Session]

    def current(self, practice_id: int | None) -> OpenDataKey:
        cached = self.keyring.cached_data_key(practice_id)  # the hot path: no database, no gate
        if cached is not None:
            return cached
        from mailbridge.domain.db import transaction, writer_gate

        with writer_gate(self.sessions), transaction(self.sessions) as session:
            return self.keyring.data_key(session, practice_id)

    def by_id(self, key_id: str) -> OpenDataKey:
        cached = self.keyring.cached_by_id(key_id)
        if cached is not None:
            return cached
        with self.sessions() as session:
            return self.keyring.data_key_by_id(session, key_id)


def practice_part(practice_id: int | None) -> str:
    return str(practice_id) if practice_id is not None else "platform"


def raw_key(practice_id: int | None, inbound_id: str, day: date | None = None) -> str:
    """Where the raw copy of an inbound email goes: by practice and day, named by its log row's id."""
    return check_key(f"raw/{practice_part(practice_id)}/{(day or date.today()).isoformat()}/{inbound_id}")


def is_legacy_path(ref: str) -> bool:
    return ref.startswith("/")


class Vault:
    """Objects, encrypted when a key source is given; legacy local references read from this node."""

    def __init__(
        self,
        objects: ObjectStore,
        keys: KeySource | None,
        *,
        spool_dir: Path,
        legacy_blobs: Path | None = None,
        legacy_raw: Path | None = None,
    ) -> None:
        self.objects = objects
        self.keys = keys
        self.spool_dir = Path(spool_dir)
        self.legacy_blobs = legacy_blobs
        self.legacy_raw = legacy_raw.resolve() if legacy_raw is not None else None

    @property
    def encrypting(self) -> bool:
        return self.keys is not None

    # ---- writing ---------------------------------------------------------------------------------

    def put(self, key: str, source: BinaryIO, practice_id: int | None) -> str:
        """Store what *source* yields under *key*; returns the reference to keep in the database."""
        check_key(key)
        if self.keys is None:
            self.objects.put(key, source)
            return key
        data_key = self.keys.current(practice_id)
        reader = EncryptingReader(source, data_key, key.encode("ascii"))
        self.objects.put(key + ENCRYPTED_SUFFIX, cast(BinaryIO, reader))
        return key + ENCRYPTED_SUFFIX

    def put_path(self, key: str, path: Path, practice_id: int | None) -> str:
        with open(path, "rb") as handle:
            return self.put(key, handle, practice_id)

    def attachment_key(self, sha256: str, practice_id: int | None) -> str:
        """An attachment's reference, per practice (dedup stays within a practice). Encrypted, the
        name is an HMAC of the content hash under a key derived from the practice's data key, so
        someone reading the bucket cannot test whether a known file is stored, nor link practices."""
        part = practice_part(practice_id)
        if self.keys is None:
            return check_key(f"att/{part}/{sha256}")
        data_key = self.keys.current(practice_id)
        naming = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=b"mailbridge-object-name").derive(
            data_key.key
        )
        name = hmac.new(naming, sha256.encode("ascii"), hashlib.sha256).hexdigest()
        return check_key(f"att/{part}/{name}") + ENCRYPTED_SUFFIX

    # ---- reading ---------------------------------------------------------------------------------

    def open(self, ref: str) -> BinaryIO:
        """The plaintext of a stored object, as a stream; ``ObjectNotFoundError`` when absent,
        ``StreamError`` (a ``KeyringError``) when it does not authenticate."""
        if _SHA256_HEX.fullmatch(ref):
            return self._legacy_blob(ref)
        if is_legacy_path(ref):
            return self._legacy_raw(ref).open("rb")
        if ref.endswith(ENCRYPTED_SUFFIX):
            if self.keys is None:
                raise StorageError("storage: an encrypted object, and encryption is not configured")
            keys = self.keys
            key = ref[: -len(ENCRYPTED_SUFFIX)]
            cipher = self.objects.get(ref)
            try:
                return cast(BinaryIO, DecryptingReader(cipher, keys.by_id, key.encode("ascii")))
            except BaseException:
                cipher.close()
                raise
        return self.objects.get(ref)

    def exists(self, ref: str) -> bool:
        if _SHA256_HEX.fullmatch(ref):
            return self.legacy_blobs is not None and self._legacy_blob_path(ref).is_file()
        if is_legacy_path(ref):
            try:
                return self._legacy_raw(ref).is_file()
            except StorageError:
                return False
        return self.objects.exists(ref)

    def delete(self, ref: str, *, sync: bool = True) -> None:
        """Remove a stored object; ``sync=False`` only where no row names it any more (see
        ``LocalObjectStore.delete``): the removal need not survive a power loss."""
        if _SHA256_HEX.fullmatch(ref):
            if self.legacy_blobs is not None:
                self._legacy_blob_path(ref).unlink(missing_ok=True)
            return
        if is_legacy_path(ref):
            with contextlib.suppress(StorageError):
                self._legacy_raw(ref).unlink(missing_ok=True)
            return
        self.objects.delete(ref, sync=sync)

    @contextlib.contextmanager
    def local_copy(self, ref: str) -> Iterator[Path]:
        """A plaintext copy on local disk for the time of the block (parsers and DKIM read files)."""
        self.spool_dir.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(dir=self.spool_dir, prefix="fetch-", suffix=".eml")
        path = Path(name)
        try:
            with os.fdopen(fd, "wb") as out, self.open(ref) as source:
                while block := source.read(_CHUNK):
                    out.write(block)
            yield path
        finally:
            path.unlink(missing_ok=True)

    def read_bytes(self, ref: str) -> bytes:
        with self.open(ref) as source:
            return source.read()

    def check(self) -> None:
        self.objects.check()

    # ---- legacy ----------------------------------------------------------------------------------

    def _legacy_blob_path(self, sha256: str) -> Path:
        assert self.legacy_blobs is not None
        return self.legacy_blobs / sha256[:2] / sha256[2:4] / sha256

    def _legacy_blob(self, sha256: str) -> BinaryIO:
        if self.legacy_blobs is None:
            raise ObjectNotFoundError(f"storage: no object {sha256}")
        try:
            return self._legacy_blob_path(sha256).open("rb")
        except FileNotFoundError:
            raise ObjectNotFoundError(f"storage: no object {sha256}") from None

    def _legacy_raw(self, ref: str) -> Path:
        """A pre-upgrade raw path, only inside DATA_DIR/inbound (a row is data, not a licence to read)."""
        path = Path(ref).resolve()
        if self.legacy_raw is None or not path.is_relative_to(self.legacy_raw):
            raise StorageError("storage: a raw path outside the inbound directory")
        return path


def sha256_file(path: Path) -> tuple[str, int]:
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb") as handle:
        while block := handle.read(_CHUNK):
            digest.update(block)
            size += len(block)
    return digest.hexdigest(), size
