"""Where raw mail and attachment bytes live: a local directory (the default) or an S3-compatible bucket.

Every node of a deployment must reach every object, so the database stores *keys* (``raw/3/…``,
``att/3/…``), never paths; the store resolves a key under its root (a directory, or a bucket and
prefix). ``MAILBRIDGE_STORAGE_URL`` picks it: ``file:///srv/mailbridge/objects`` or
``s3://bucket/prefix`` (AWS S3, MinIO, Ceph RGW, Cloudflare R2, GCS interoperability), with
``MAILBRIDGE_S3_ENDPOINT_URL`` for a server other than AWS; credentials and region come from the
standard AWS chain (environment, profiles, instance roles) through boto3.

Objects are immutable and written whole or not at all (a local rename, an S3 PUT or completed
multipart upload), so a reader never sees half an object. Blocking: call from a worker thread.
Every failure is a ``StorageError`` (an ``OSError``), which the pipeline answers with 451 4.3.0.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import re
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO, Protocol, cast
from urllib.parse import unquote, urlsplit

log = logging.getLogger(__name__)

_KEY = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)*")
_CHUNK = 1024 * 1024
# Multipart: 8 MiB parts, two in flight: at most ~16 MiB of a large upload in memory at once.
PART_BYTES = 8 * 1024 * 1024
PART_CONCURRENCY = 2


def _count_error(action: str) -> None:
    from mailbridge.observability import STORAGE_ERRORS  # imported late: observability imports wiring

    STORAGE_ERRORS.labels(action).inc()


class StorageError(OSError):
    """The object store failed or is unreachable: the caller answers with a temporary failure."""


class ObjectNotFoundError(StorageError, LookupError):
    """No object under that key."""


@dataclass(frozen=True)
class ObjectInfo:
    key: str
    modified: datetime  # aware, UTC


def check_key(key: str) -> str:
    """A key is ``a/b/c`` of safe segments: nothing that could climb out of the store's root."""
    if not isinstance(key, str) or len(key) > 512 or not _KEY.fullmatch(key) or ".." in key.split("/"):
        raise ValueError(f"bad object key {key!r}")
    return key


class ObjectStore(Protocol):
    # Stores everything *source* yields (read until EOF), atomically; replaces an existing object.
    def put(self, key: str, source: BinaryIO) -> None: ...
    # Raises ObjectNotFoundError when absent. The caller closes the handle.
    def get(self, key: str) -> BinaryIO: ...
    def exists(self, key: str) -> bool: ...
    # Deleting an absent object is not an error. ``sync=False``: the caller does not need the
    # deletion to survive a power loss (an object no row names, which the sweep would remove).
    def delete(self, key: str, *, sync: bool = True) -> None: ...
    # Every object whose key starts with prefix, with its last modification time.
    def list(self, prefix: str) -> Iterator[ObjectInfo]: ...
    # Raises StorageError when the store cannot be reached (for /readyz).
    def check(self) -> None: ...
    def describe(self) -> str: ...


def fsync_dir(path: Path) -> None:
    """A rename or unlink is durable only once the directory holding the entry is synced."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class LocalObjectStore:
    """Objects as files under *root*: written to ``root/.tmp``, fsynced, renamed into place."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self._tmp = self.root / ".tmp"
        self._tmp.mkdir(parents=True, exist_ok=True)

    def _path(self, key: str) -> Path:
        return self.root / check_key(key)

    def put(self, key: str, source: BinaryIO) -> None:
        final = self._path(key)
        fd, tmp_name = tempfile.mkstemp(dir=self._tmp, prefix="put-")
        tmp = Path(tmp_name)
        try:
            with os.fdopen(fd, "wb") as out:
                while block := source.read(_CHUNK):
                    out.write(block)
                out.flush()
                os.fsync(out.fileno())
            missing = []
            probe = final.parent
            while not probe.is_dir():
                missing.append(probe)
                probe = probe.parent
            for directory in reversed(missing):
                with contextlib.suppress(FileExistsError):
                    directory.mkdir()
                fsync_dir(directory.parent)
            os.replace(tmp, final)
            fsync_dir(final.parent)
        except OSError as exc:
            if isinstance(exc, StorageError):
                raise
            _count_error("put")
            raise StorageError(f"storage: cannot write {key}: {exc.strerror or exc}") from exc
        finally:
            tmp.unlink(missing_ok=True)

    def get(self, key: str) -> BinaryIO:
        try:
            return self._path(key).open("rb")
        except FileNotFoundError:
            raise ObjectNotFoundError(f"storage: no object {key}") from None
        except OSError as exc:
            _count_error("get")
            raise StorageError(f"storage: cannot read {key}: {exc.strerror or exc}") from exc

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def delete(self, key: str, *, sync: bool = True) -> None:
        """Remove the file; with *sync* (the default) the removal is made durable (directory fsync).

        ``sync=False`` is for a copy no committed row names any more (the pipeline's raw copy once
        the post is committed): should the unlink be lost with a power cut, the object is an orphan
        like one left by a crash between the commit and this delete, and the housekeeping sweep
        (``sweep_raw_objects``) removes it. One fsync fewer per reply (issue 17 item 4)."""
        path = self._path(key)
        try:
            path.unlink()
        except FileNotFoundError:
            return
        except OSError as exc:
            _count_error("delete")
            raise StorageError(f"storage: cannot delete {key}: {exc.strerror or exc}") from exc
        if sync:
            fsync_dir(path.parent)

    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        base = self.root
        top = prefix.rsplit("/", 1)[0] if "/" in prefix else ""
        start = base / top if top and (base / top).is_dir() else base  # walk only under the prefix
        for dirpath, dirnames, filenames in os.walk(start):
            dirnames[:] = sorted(d for d in dirnames if d != ".tmp")
            for name in sorted(filenames):
                path = Path(dirpath) / name
                key = path.relative_to(base).as_posix()
                if not key.startswith(prefix):
                    continue
                with contextlib.suppress(FileNotFoundError):
                    yield ObjectInfo(key, datetime.fromtimestamp(path.lstat().st_mtime, UTC))

    def check(self) -> None:
        if not os.access(self.root, os.W_OK):
            raise StorageError(f"storage: {self.root} is not writable")

    def describe(self) -> str:
        return f"file://{self.root}"

    def sweep_temporary(self, older_than_seconds: float = 3600.0) -> int:
        cutoff = time.time() - older_than_seconds
        removed = 0
        for entry in self._tmp.iterdir():
            with contextlib.suppress(FileNotFoundError):
                if entry.lstat().st_mtime < cutoff:
                    entry.unlink()
                    removed += 1
        return removed


class S3ObjectStore:
    """Objects in an S3-compatible bucket under *prefix*, through boto3.

    Large objects go up as a multipart upload (``upload_fileobj`` with a bounded part size and
    concurrency: memory stays ~``PART_BYTES × (PART_CONCURRENCY + 1)`` whatever the size), and
    come down as a streaming body, never whole. An upload cut short leaves no object: S3 only
    shows a multipart object once ``CompleteMultipartUpload`` succeeds (set a bucket lifecycle
    rule to abort incomplete uploads; deploy.md says how).
    """

    def __init__(self, bucket: str, prefix: str = "", endpoint_url: str | None = None) -> None:
        import boto3
        from boto3.s3.transfer import TransferConfig
        from botocore.config import Config

        self.bucket = bucket
        self.prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
        self.endpoint_url = endpoint_url or None
        session = boto3.session.Session()  # the AWS chain: env, shared config/profiles, instance role
        self._client: Any = session.client(
            "s3",
            endpoint_url=self.endpoint_url,
            config=Config(
                retries={"max_attempts": 3, "mode": "standard"},
                connect_timeout=10,
                read_timeout=60,
                s3={"addressing_style": "path"} if self.endpoint_url else None,
            ),
        )
        self._transfer = TransferConfig(
            multipart_threshold=PART_BYTES,
            multipart_chunksize=PART_BYTES,
            max_concurrency=PART_CONCURRENCY,
            use_threads=True,
        )
        # An encrypting reader is not seekable: s3transfer reads its parts into memory, up to this
        # many at once (default 10 × 8 MiB); bounded to what is being sent (s3transfer's setting,
        # not among boto3's constructor arguments).
        self._transfer.max_in_memory_upload_chunks = PART_CONCURRENCY

    def _key(self, key: str) -> str:
        return self.prefix + check_key(key)

    def _fail(self, action: str, key: str, exc: Exception) -> StorageError:
        _count_error(action)
        log.warning("storage_error", extra={"action": action, "key": key, "error": type(exc).__name__})
        return StorageError(f"storage: {action} {key} failed: {type(exc).__name__}: {exc}")

    @staticmethod
    def _missing(exc: Exception) -> bool:
        response = getattr(exc, "response", None) or {}
        code = str(response.get("Error", {}).get("Code", ""))
        return code in ("404", "NoSuchKey", "NotFound")

    def put(self, key: str, source: BinaryIO) -> None:
        try:
            self._client.upload_fileobj(source, self.bucket, self._key(key), Config=self._transfer)
        except Exception as exc:
            raise self._fail("put", key, exc) from exc

    def get(self, key: str) -> BinaryIO:
        try:
            response = self._client.get_object(Bucket=self.bucket, Key=self._key(key))
        except Exception as exc:
            if self._missing(exc):
                raise ObjectNotFoundError(f"storage: no object {key}") from None
            raise self._fail("get", key, exc) from exc
        return cast(BinaryIO, _BodyReader(response["Body"], key, self))

    def exists(self, key: str) -> bool:
        try:
            self._client.head_object(Bucket=self.bucket, Key=self._key(key))
        except Exception as exc:
            if self._missing(exc):
                return False
            raise self._fail("head", key, exc) from exc
        return True

    def delete(self, key: str, *, sync: bool = True) -> None:
        # An S3 DELETE is durable once answered: *sync* changes nothing here.
        try:
            self._client.delete_object(Bucket=self.bucket, Key=self._key(key))
        except Exception as exc:
            if self._missing(exc):
                return
            raise self._fail("delete", key, exc) from exc

    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        paginator = self._client.get_paginator("list_objects_v2")
        try:
            for page in paginator.paginate(Bucket=self.bucket, Prefix=self.prefix + prefix):
                for item in page.get("Contents", []):
                    modified = item["LastModified"]
                    yield ObjectInfo(str(item["Key"])[len(self.prefix) :], modified.astimezone(UTC))
        except Exception as exc:
            raise self._fail("list", prefix, exc) from exc

    def check(self) -> None:
        try:
            self._client.head_bucket(Bucket=self.bucket)
        except Exception as exc:
            raise self._fail("head_bucket", self.bucket, exc) from exc

    def describe(self) -> str:
        where = f" at {self.endpoint_url}" if self.endpoint_url else ""
        return f"s3://{self.bucket}/{self.prefix}{where}"


class _BodyReader(io.RawIOBase):
    """An S3 streaming body as a binary file: read errors become StorageError, close releases it."""

    def __init__(self, body: Any, key: str, store: S3ObjectStore) -> None:
        self._body = body
        self._key = key
        self._store = store

    def read(self, size: int | None = -1) -> bytes:
        try:
            return bytes(self._body.read(None if size is None or size < 0 else size))
        except Exception as exc:
            raise self._store._fail("read", self._key, exc) from exc

    def readinto(self, target: bytearray | memoryview) -> int:  # type: ignore[override]
        data = self.read(len(target))
        target[: len(data)] = data
        return len(data)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._body.close()
        super().close()

    def readable(self) -> bool:
        return True


def open_store(storage_url: str, data_dir: Path, endpoint_url: str = "") -> ObjectStore:
    """The store a storage URL names: empty is ``file://DATA_DIR/objects``."""
    if not storage_url:
        return LocalObjectStore(data_dir / "objects")
    parts = urlsplit(storage_url)
    if parts.scheme == "file":
        if parts.netloc not in ("", "localhost"):
            raise ValueError("file:// URLs name a local path (file:///srv/objects)")
        return LocalObjectStore(Path(unquote(parts.path)))
    if parts.scheme == "s3":
        if not parts.netloc:
            raise ValueError("s3:// URLs need a bucket (s3://bucket/prefix)")
        return S3ObjectStore(parts.netloc, unquote(parts.path), endpoint_url or None)
    raise ValueError("expected file:///path or s3://bucket/prefix")
