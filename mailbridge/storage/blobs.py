"""Attachment bytes: written atomically, named by content, deduplicated per practice.

``ObjectBlobStore`` is the product's: attachments in the object store (a directory or an S3
bucket, ``storage.objects``), encrypted per practice (``storage.vault``), referenced from the
``attachments`` row by the reference ``put_*`` returns. ``LocalBlobStore`` is the store before
object storage (``DATA_DIR/attachments/ab/cd/<sha256>``), kept for its tests and as the layout
legacy rows are read from.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import re
import secrets
import stat
import tempfile
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Protocol

from mailbridge.storage.objects import ObjectNotFoundError, fsync_dir
from mailbridge.storage.vault import ENCRYPTED_SUFFIX, Vault, sha256_file

__all__ = [
    "BlobNotFoundError",
    "BlobStore",
    "LocalBlobStore",
    "ObjectBlobStore",
    "StoredBlob",
    "blob_key",
    "check_sha256",
]

_SHA256_HEX = re.compile(r"[0-9a-f]{64}")
_CHUNK = 1024 * 1024


@dataclass(frozen=True)
class StoredBlob:
    sha256: str  # hex, lower-case
    size: int
    ref: str = ""  # what the attachment row keeps to find it again (the hash itself for LocalBlobStore)

    @property
    def reference(self) -> str:
        return self.ref or self.sha256


class BlobNotFoundError(LookupError):
    """No blob with that hash is stored."""


class BlobStore(Protocol):
    """Where attachment bytes live. Blocking: call it from a worker thread, not the event loop.

    Blobs are immutable and shared by every row of the same practice that references the same
    content: `delete` is for the caller, once no row references it (and no upload of the same
    content is in flight). `put_*` return the reference to store; `open`, `exists` and `delete`
    take it (a bare SHA-256 for rows written before object storage).
    """

    # Hashes while writing; never holds the whole content in memory.
    def put_stream(self, chunks: Iterable[bytes], practice_id: int | None = None) -> StoredBlob: ...
    # Moves or copies a temporary file in (it is consumed).
    def put_file(self, path: Path, practice_id: int | None = None) -> StoredBlob: ...
    # Raises BlobNotFoundError (or the object store's not-found error) when absent.
    def open(self, ref: str) -> BinaryIO: ...
    def exists(self, ref: str) -> bool: ...
    # The caller decides when no row references it; deleting an absent blob is not an error.
    def delete(self, ref: str) -> None: ...
    # The storage key (a relative path, or an object key).
    def path_hint(self, ref: str) -> str: ...


def check_sha256(sha256: str) -> str:
    """The hash in canonical form (lower-case), or ValueError: anything else could name another path."""
    if not isinstance(sha256, str) or not _SHA256_HEX.fullmatch(sha256.lower()):
        raise ValueError("not a SHA-256 hex digest")
    return sha256.lower()


def blob_key(sha256: str) -> str:
    """The storage key of a blob: two levels of fan-out, then the full hash ("ab/cd/abcd…")."""
    digest = check_sha256(sha256)
    return f"{digest[:2]}/{digest[2:4]}/{digest}"


class LocalBlobStore:
    """Blobs as files under `root` (DATA_DIR/attachments): `root/ab/cd/<sha256>`.

    Every write goes to a temporary file in `root/.tmp` (same file system, so the final rename is
    atomic), is fsynced, renamed into place, and the directory fsynced: a reader sees either no
    blob or the whole blob. When the blob already exists the temporary file is dropped. Files are
    named by their hash only, never by anything the sender chose.
    """

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self._tmp = self.root / ".tmp"
        self._tmp.mkdir(parents=True, exist_ok=True)

    # ------------------------------------------------------------------ BlobStore

    def put_stream(self, chunks: Iterable[bytes], practice_id: int | None = None) -> StoredBlob:
        fd, tmp_name = tempfile.mkstemp(dir=self._tmp, prefix="put-")
        tmp = Path(tmp_name)
        try:
            digest = hashlib.sha256()
            size = 0
            with os.fdopen(fd, "wb") as out:
                for chunk in chunks:
                    digest.update(chunk)
                    out.write(chunk)
                    size += len(chunk)
                out.flush()
                os.fsync(out.fileno())
            return self._commit(tmp, StoredBlob(digest.hexdigest(), size))
        finally:
            tmp.unlink(missing_ok=True)

    def put_file(self, path: Path, practice_id: int | None = None) -> StoredBlob:
        """Store the file at `path`, which is consumed: moved in when on the same file system, else copied.

        `path` must be a regular file the caller owns (a symbolic link is refused rather than followed).
        """
        info = os.lstat(path)
        if not stat.S_ISREG(info.st_mode):
            raise ValueError("put_file needs a regular file")
        tmp = self._tmp / f"move-{secrets.token_hex(16)}"
        try:
            try:
                os.rename(path, tmp)
            except OSError as exc:
                if exc.errno != errno.EXDEV:
                    raise
                blob = self.put_stream(_read_chunks(path))
                Path(path).unlink(missing_ok=True)
                return blob
            with tmp.open("rb") as fh:
                digest = hashlib.sha256()
                size = 0
                for chunk in iter(lambda: fh.read(_CHUNK), b""):
                    digest.update(chunk)
                    size += len(chunk)
                os.fsync(fh.fileno())
            tmp.chmod(0o600)
            return self._commit(tmp, StoredBlob(digest.hexdigest(), size))
        finally:
            tmp.unlink(missing_ok=True)

    def open(self, sha256: str) -> BinaryIO:
        try:
            return self._path(sha256).open("rb")
        except FileNotFoundError:
            raise BlobNotFoundError(check_sha256(sha256)) from None

    def exists(self, sha256: str) -> bool:
        return self._path(sha256).is_file()

    def delete(self, sha256: str) -> None:
        path = self._path(sha256)
        try:
            path.unlink()
        except FileNotFoundError:
            return
        fsync_dir(path.parent)

    def path_hint(self, sha256: str) -> str:
        return blob_key(sha256)

    # ------------------------------------------------------------------ housekeeping

    def sweep_temporary(self, older_than_seconds: float = 3600.0) -> int:
        """Remove temporary files left by a crash mid-write; returns how many went."""
        cutoff = time.time() - older_than_seconds
        removed = 0
        for entry in self._tmp.iterdir():
            with contextlib.suppress(FileNotFoundError):
                if entry.lstat().st_mtime < cutoff:
                    entry.unlink()
                    removed += 1
        return removed

    # ------------------------------------------------------------------ internals

    def _path(self, sha256: str) -> Path:
        return self.root / blob_key(sha256)

    def _commit(self, tmp: Path, blob: StoredBlob) -> StoredBlob:
        final = self._path(blob.sha256)
        if final.exists():
            return blob  # same content already stored: the caller's finally drops the temporary file
        self._ensure_dir(final.parent)
        # Two writers of the same content may both get here; each rename is atomic and the bytes
        # are identical, so whichever lands last leaves the same single file.
        os.replace(tmp, final)
        fsync_dir(final.parent)
        return blob

    def _ensure_dir(self, directory: Path) -> None:
        missing: list[Path] = []
        probe = directory
        while not probe.is_dir() and probe != self.root:
            missing.append(probe)
            probe = probe.parent
        for path in reversed(missing):
            with contextlib.suppress(FileExistsError):
                path.mkdir()
            fsync_dir(path.parent)


def _read_chunks(path: Path) -> Iterator[bytes]:
    with os.fdopen(os.open(path, os.O_RDONLY | os.O_NOFOLLOW), "rb") as fh:
        yield from iter(lambda: fh.read(_CHUNK), b"")


class ObjectBlobStore:
    """Attachments in the object store through the vault: per practice, encrypted when configured.

    A file is read twice: once to hash it (its name depends on the hash, and an object store
    cannot rename), then, unless that practice already stores the same content, once to upload it
    (encrypted segment by segment, a multipart upload to S3): memory stays bounded whatever the size.
    """

    def __init__(self, vault: Vault) -> None:
        self.vault = vault

    def put_stream(self, chunks: Iterable[bytes], practice_id: int | None = None) -> StoredBlob:
        spool = self.vault.spool_dir
        spool.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(dir=spool, prefix="blob-")
        with os.fdopen(fd, "wb") as out:
            for chunk in chunks:
                out.write(chunk)
        return self.put_file(Path(name), practice_id)

    def put_file(self, path: Path, practice_id: int | None = None) -> StoredBlob:
        try:
            info = os.lstat(path)
            if not stat.S_ISREG(info.st_mode):
                raise ValueError("put_file needs a regular file")
            sha256, size = sha256_file(path)
            ref = self.vault.attachment_key(sha256, practice_id)
            if not self.vault.exists(ref):
                key = ref.removesuffix(ENCRYPTED_SUFFIX)
                stored = self.vault.put_path(key, path, practice_id)
                assert stored == ref
            return StoredBlob(sha256, size, ref)
        finally:
            Path(path).unlink(missing_ok=True)

    def open(self, ref: str) -> BinaryIO:
        try:
            return self.vault.open(ref)
        except ObjectNotFoundError:
            raise BlobNotFoundError(ref) from None

    def exists(self, ref: str) -> bool:
        return self.vault.exists(ref)

    def delete(self, ref: str) -> None:
        self.vault.delete(ref)

    def path_hint(self, ref: str) -> str:
        return ref
