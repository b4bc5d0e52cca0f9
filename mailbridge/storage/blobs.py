"""Content-addressed blob store for attachment bytes: written atomically, named by SHA-256, deduplicated."""

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

__all__ = ["BlobNotFoundError", "BlobStore", "LocalBlobStore", "StoredBlob", "blob_key", "check_sha256"]

_SHA256_HEX = re.compile(r"[0-9a-f]{64}")
_CHUNK = 1024 * 1024


@dataclass(frozen=True)
class StoredBlob:
    sha256: str  # hex, lower-case
    size: int


class BlobNotFoundError(LookupError):
    """No blob with that hash is stored."""


class BlobStore(Protocol):
    """Where attachment bytes live. Blocking: call it from a worker thread, not the event loop.

    Nothing here is specific to a local disk, so an S3-compatible store can implement it too.
    Blobs are immutable and shared by every row that references the same content: `delete` is for
    the caller, once no row references the hash (and no upload of the same content is in flight).
    """

    # Hashes while writing; never holds the whole content in memory.
    def put_stream(self, chunks: Iterable[bytes]) -> StoredBlob: ...
    # Moves or copies a temporary file in (it may be consumed).
    def put_file(self, path: Path) -> StoredBlob: ...
    # Raises BlobNotFoundError when absent.
    def open(self, sha256: str) -> BinaryIO: ...
    def exists(self, sha256: str) -> bool: ...
    # The caller decides when no row references it; deleting an absent blob is not an error.
    def delete(self, sha256: str) -> None: ...
    # The storage key, "ab/cd/<sha256>" (a relative path here, an object key in S3).
    def path_hint(self, sha256: str) -> str: ...


def check_sha256(sha256: str) -> str:
    """The hash in canonical form (lower-case), or ValueError: anything else could name another path."""
    if not isinstance(sha256, str) or not _SHA256_HEX.fullmatch(sha256.lower()):
        raise ValueError("not a SHA-256 hex digest")
    return sha256.lower()


def blob_key(sha256: str) -> str:
    """The storage key of a blob: two levels of fan-out, then the full hash ("ab/cd/abcd…")."""
    digest = check_sha256(sha256)
    return f"{digest[:2]}/{digest[2:4]}/{digest}"


def _fsync_dir(path: Path) -> None:
    # A rename or unlink is durable only once the directory holding the entry is synced.
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


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

    def put_stream(self, chunks: Iterable[bytes]) -> StoredBlob:
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

    def put_file(self, path: Path) -> StoredBlob:
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
        _fsync_dir(path.parent)

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
        _fsync_dir(final.parent)
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
            _fsync_dir(path.parent)


def _read_chunks(path: Path) -> Iterator[bytes]:
    with os.fdopen(os.open(path, os.O_RDONLY | os.O_NOFOLLOW), "rb") as fh:
        yield from iter(lambda: fh.read(_CHUNK), b"")
