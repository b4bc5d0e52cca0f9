"""Content-addressed blob store: atomic writes, dedupe, delete, refusal of anything but a SHA-256."""

from __future__ import annotations

import errno
import hashlib
import os
import stat
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from mailbridge.storage.blobs import BlobNotFoundError, BlobStore, LocalBlobStore, StoredBlob, blob_key


@pytest.fixture
def store(tmp_path: Path) -> LocalBlobStore:
    return LocalBlobStore(tmp_path / "attachments")


def stored_files(store: LocalBlobStore) -> list[Path]:
    """Every blob file, i.e. everything under the root except the temporary directory."""
    return sorted(
        p for p in store.root.rglob("*") if p.is_file() and ".tmp" not in p.relative_to(store.root).parts
    )


def temporary_files(store: LocalBlobStore) -> list[Path]:
    return list((store.root / ".tmp").iterdir())


def test_local_store_is_a_blob_store(store: LocalBlobStore) -> None:
    as_protocol: BlobStore = store  # checked by mypy when the tests are type-checked
    for name in ("put_stream", "put_file", "open", "exists", "delete", "path_hint"):
        assert callable(getattr(as_protocol, name))


def test_put_stream_hashes_and_fans_out(store: LocalBlobStore) -> None:
    data = b"%PDF-1.7\n" + bytes(range(256)) * 100
    blob = store.put_stream(data[i : i + 1000] for i in range(0, len(data), 1000))
    digest = hashlib.sha256(data).hexdigest()
    assert blob == StoredBlob(digest, len(data))
    assert store.path_hint(digest) == f"{digest[:2]}/{digest[2:4]}/{digest}"
    assert stored_files(store) == [store.root / digest[:2] / digest[2:4] / digest]
    assert store.exists(digest)
    with store.open(digest) as fh:
        assert fh.read() == data
    assert temporary_files(store) == []


def test_stored_files_are_private(store: LocalBlobStore) -> None:
    blob = store.put_stream([b"secret"])
    mode = (store.root / blob_key(blob.sha256)).stat().st_mode
    assert stat.S_IMODE(mode) & 0o077 == 0


def test_put_stream_accepts_empty_chunks_and_nothing(store: LocalBlobStore) -> None:
    blob = store.put_stream([b"ab", b"", b"cd"])
    assert blob == StoredBlob(hashlib.sha256(b"abcd").hexdigest(), 4)
    empty = store.put_stream(iter(()))
    assert empty == StoredBlob(hashlib.sha256(b"").hexdigest(), 0)
    assert store.exists(empty.sha256)


def test_large_stream_is_written_chunk_by_chunk(store: LocalBlobStore) -> None:
    chunk = b"x" * 65536
    expected = hashlib.sha256(chunk * 64).hexdigest()

    def chunks() -> Iterator[bytes]:
        for i in range(64):
            # Until the stream ends, nothing is visible under the final name.
            if i == 32:
                assert not store.exists(expected)
            yield chunk

    blob = store.put_stream(chunks())
    assert blob == StoredBlob(expected, 64 * 65536)


def test_same_content_twice_is_one_blob(store: LocalBlobStore) -> None:
    """F10: the same file attached twice is stored once; both references get the same hash."""
    first = store.put_stream([b"same bytes"])
    second = store.put_stream([b"same ", b"bytes"])
    assert first == second
    assert len(stored_files(store)) == 1
    assert temporary_files(store) == []


def test_failed_stream_leaves_nothing(store: LocalBlobStore) -> None:
    def broken() -> Iterator[bytes]:
        yield b"partial"
        raise ConnectionResetError("client went away")

    with pytest.raises(ConnectionResetError):
        store.put_stream(broken())
    assert stored_files(store) == []
    assert temporary_files(store) == []


def test_put_file_moves_the_file_in(store: LocalBlobStore, tmp_path: Path) -> None:
    upload = tmp_path / "upload.part"
    upload.write_bytes(b"uploaded content")
    blob = store.put_file(upload)
    assert blob == StoredBlob(hashlib.sha256(b"uploaded content").hexdigest(), 16)
    assert not upload.exists()  # consumed
    with store.open(blob.sha256) as fh:
        assert fh.read() == b"uploaded content"
    assert temporary_files(store) == []


def test_put_file_of_known_content_keeps_one_blob(store: LocalBlobStore, tmp_path: Path) -> None:
    existing = store.put_stream([b"twice"])
    upload = tmp_path / "again"
    upload.write_bytes(b"twice")
    assert store.put_file(upload) == existing
    assert not upload.exists()
    assert len(stored_files(store)) == 1
    assert temporary_files(store) == []


def test_put_file_across_file_systems_copies(
    store: LocalBlobStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_cross_device_rename(src: object, dst: object) -> None:
        raise OSError(errno.EXDEV, "Invalid cross-device link")

    monkeypatch.setattr(os, "rename", no_cross_device_rename)
    upload = tmp_path / "elsewhere"
    upload.write_bytes(b"from another disk")
    blob = store.put_file(upload)
    assert blob.sha256 == hashlib.sha256(b"from another disk").hexdigest()
    assert not upload.exists()
    assert store.exists(blob.sha256)
    assert temporary_files(store) == []


def test_put_file_refuses_links_and_directories(store: LocalBlobStore, tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_bytes(b"not yours")
    link = tmp_path / "link"
    link.symlink_to(secret)
    with pytest.raises(ValueError, match="regular file"):
        store.put_file(link)
    with pytest.raises(ValueError, match="regular file"):
        store.put_file(tmp_path)
    assert secret.read_bytes() == b"not yours"
    assert link.is_symlink()
    assert stored_files(store) == []


def test_delete(store: LocalBlobStore) -> None:
    blob = store.put_stream([b"to be deleted"])
    store.delete(blob.sha256)
    assert not store.exists(blob.sha256)
    with pytest.raises(BlobNotFoundError):
        store.open(blob.sha256)
    store.delete(blob.sha256)  # already gone: not an error
    assert stored_files(store) == []


def test_open_missing_is_not_found(store: LocalBlobStore) -> None:
    with pytest.raises(BlobNotFoundError):
        store.open("0" * 64)
    assert isinstance(BlobNotFoundError("x"), LookupError)


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "0" * 63,
        "0" * 65,
        "g" * 64,
        "0" * 64 + "\n",
        " " + "0" * 63,
        "../../../../etc/passwd",
        "/etc/passwd",
        "../" + "0" * 61,
        "00/00/" + "0" * 58,
        "0" * 62 + "/.",
        "\u0660" * 64,  # Arabic-Indic digits are digits to str.isdigit, not hex
    ],
)
def test_anything_but_a_sha256_is_refused(store: LocalBlobStore, bad: str) -> None:
    for call in (store.exists, store.open, store.delete, store.path_hint):
        with pytest.raises(ValueError, match="SHA-256"):
            call(bad)


def test_upper_case_hash_is_the_same_blob(store: LocalBlobStore) -> None:
    blob = store.put_stream([b"case"])
    assert store.exists(blob.sha256.upper())
    assert store.path_hint(blob.sha256.upper()) == blob_key(blob.sha256)


def test_stored_name_never_comes_from_the_sender(store: LocalBlobStore) -> None:
    blob = store.put_stream([b"../../etc/passwd"])
    (path,) = stored_files(store)
    assert path.name == blob.sha256
    assert path.parent.parent.parent == store.root


def test_concurrent_writers_of_the_same_content_leave_one_file(store: LocalBlobStore) -> None:
    data = os.urandom(256 * 1024)
    barrier = threading.Barrier(8)
    results: list[StoredBlob] = []
    errors: list[BaseException] = []

    def writer() -> None:
        try:
            barrier.wait()
            results.append(store.put_stream(data[i : i + 4096] for i in range(0, len(data), 4096)))
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=writer) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert len(set(results)) == 1
    assert len(stored_files(store)) == 1
    assert temporary_files(store) == []
    with store.open(results[0].sha256) as fh:
        assert fh.read() == data


def test_concurrent_writers_of_different_content(store: LocalBlobStore) -> None:
    payloads = [bytes([i]) * 10000 for i in range(16)]
    barrier = threading.Barrier(len(payloads))
    results: dict[int, StoredBlob] = {}

    def writer(i: int) -> None:
        barrier.wait()
        results[i] = store.put_stream([payloads[i]])

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(len(payloads))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(stored_files(store)) == len(payloads)
    for i, payload in enumerate(payloads):
        with store.open(results[i].sha256) as fh:
            assert fh.read() == payload


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc to name synced descriptors")
def test_data_and_directories_are_fsynced(store: LocalBlobStore, monkeypatch: pytest.MonkeyPatch) -> None:
    synced: list[str] = []
    real_fsync = os.fsync

    def recording_fsync(fd: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", recording_fsync)
    blob = store.put_stream([b"durable"])
    final = store.root / blob_key(blob.sha256)
    tmp_dir = str(store.root / ".tmp")
    assert any(path.startswith(tmp_dir + "/put-") for path in synced[:1])  # data before the rename
    assert str(final.parent) in synced  # the rename itself
    assert str(final.parent.parent) in synced and str(store.root) in synced  # new fan-out directories

    synced.clear()
    store.delete(blob.sha256)
    assert synced == [str(final.parent)]


def test_sweep_removes_only_stale_temporary_files(store: LocalBlobStore) -> None:
    stale = store.root / ".tmp" / "put-crashed"
    stale.write_bytes(b"half")
    old = time.time() - 7200
    os.utime(stale, (old, old))
    fresh = store.root / ".tmp" / "put-in-flight"
    fresh.write_bytes(b"busy")
    assert store.sweep_temporary(older_than_seconds=3600) == 1
    assert not stale.exists()
    assert fresh.exists()
