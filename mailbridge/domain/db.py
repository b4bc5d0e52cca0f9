"""Database engine, sessions and migrations: SQLite by default, PostgreSQL when a practice outgrows one machine."""

from __future__ import annotations

import contextlib
import fcntl
import os
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, Engine, create_engine, event, make_url
from sqlalchemy.exc import DisconnectionError
from sqlalchemy.orm import Session, sessionmaker

MIGRATIONS_DIR = Path(__file__).resolve().parent.parent / "migrations"


class MigrationRefused(Exception):
    """A migration found data it must not guess about; the message says what to fix (nothing changed)."""


def make_engine(url: str, busy_timeout: float = 30.0, **kwargs: Any) -> Engine:
    """One engine per process; SQLite gets WAL and FULL sync so a commit survives power loss (250 means stored)."""
    if url.startswith("sqlite"):
        path = make_url(url).database or ""
        if path and path != ":memory:" and not path.startswith("file:"):
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            private_database_file(Path(path))
            # A connection per thread that may want one (the SMTP pipeline pool, the loop's executor,
            # plus the API's): SQLite connections are cheap, and nobody should queue for the pool.
            kwargs.setdefault("pool_size", 32)
            kwargs.setdefault("max_overflow", 32)
        engine = create_engine(
            url, connect_args={"timeout": busy_timeout, "check_same_thread": False}, **kwargs
        )

        @event.listens_for(engine, "checkin")
        def _full_sync_again(dbapi_conn: Any, record: Any) -> None:
            # ``relax_sync`` lasts one transaction: no other user of the connection inherits it.
            if record.info.pop(_RELAXED, False):
                dbapi_conn.execute("PRAGMA synchronous=FULL")

        @event.listens_for(engine, "connect")
        def _pragmas(dbapi_conn: Any, _record: Any) -> None:
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=FULL")
            cur.execute("PRAGMA foreign_keys=ON")
            # Deleted or overwritten content is zeroed in the file, not left in free space: a permanent
            # deletion (seed 003) must not survive in the database file itself.
            cur.execute("PRAGMA secure_delete=ON")
            cur.execute(f"PRAGMA busy_timeout={int(busy_timeout * 1000)}")
            cur.close()

        return engine
    ping_after = kwargs.pop("ping_after", PING_AFTER_IDLE)
    kwargs.setdefault("pool_size", 10)
    kwargs.setdefault("max_overflow", 20)
    engine = create_engine(url, **kwargs)
    if not kwargs.get("pool_pre_ping"):
        ping_when_idle(engine, ping_after)
    return engine


PING_AFTER_IDLE = 2.0  # seconds a pooled connection may rest before it is tested again


def ping_when_idle(engine: Engine, after: float) -> None:
    """Test a pooled connection before use only when it rested more than ``after`` seconds.

    ``pool_pre_ping`` tests it at every checkout: five round trips per reply on PostgreSQL
    (docs/benchmarks.md, steps), for connections returned milliseconds earlier. A server restart or
    an idle timeout leaves connections that sat in the pool; one checked in a moment ago was just
    working. A connection that fails the test is discarded and the pool hands out a fresh one
    (raising ``DisconnectionError`` from ``checkout`` is SQLAlchemy's documented way); one that
    breaks inside that window fails its statement, the run answers 451 and the sender retries.
    """

    @event.listens_for(engine, "checkin")
    def _rested_from(_dbapi_conn: Any, record: Any) -> None:
        record.info["checked_in"] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def _test_if_rested(dbapi_conn: Any, record: Any, _proxy: Any) -> None:
        since = record.info.get("checked_in")
        if since is None or time.monotonic() - since <= after:
            return  # new, or back from work a moment ago
        try:
            alive = engine.dialect.do_ping(dbapi_conn)
        except Exception as exc:  # the driver's own error: the connection is gone
            raise DisconnectionError(str(exc)) from exc
        if not alive:
            raise DisconnectionError("the pooled connection did not answer")


_RELAXED = "mailbridge_relaxed_sync"


def relax_sync(connection: Connection) -> None:
    """SQLite: the transaction about to begin on *connection* commits without its own fsync
    (``synchronous=NORMAL``; WAL stays consistent, only the durability of that one commit waits for
    the next flushed one). FULL is set again when the connection goes back to the pool, before anyone
    else can take it. Only for a write whose loss in a power cut no promise depends on
    (``pipeline.store_raw``). Must be called before the transaction's first write: SQLite refuses
    to change it inside a transaction."""
    if connection.dialect.name != "sqlite":
        return
    connection.exec_driver_sql("PRAGMA synchronous=NORMAL")
    connection.info[_RELAXED] = True  # the pooled connection's own record: seen at checkin


def private_database_file(path: Path) -> None:
    """The database holds every practice's mail: created 0600 whatever the umask, and an existing one
    (or its -wal/-shm, which SQLite creates with the database file's mode) made private again."""
    with contextlib.suppress(FileExistsError):
        os.close(os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600))  # 0 bytes: an empty database
    for candidate in (path, Path(f"{path}-wal"), Path(f"{path}-shm"), Path(f"{path}-journal")):
        with contextlib.suppress(FileNotFoundError):
            if candidate.stat().st_mode & 0o077:
                candidate.chmod(0o600)


def make_session_factory(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)


class SqliteWriterGate:
    """One writer at a time, queued without sleeping: a thread lock for this process and, for a
    database file, an exclusive ``flock`` for the other processes (``smtp_processes``) on it.

    SQLite takes one writer at a time. Without this, concurrent writers wait inside SQLite's busy
    handler, which sleeps 1 to 100 ms between tries: 20 concurrent SMTP senders became a queue of
    sleepers. A lock wakes the next writer as soon as the previous one commits.
    """

    def __init__(self, lock_path: Path | None) -> None:
        self._lock = threading.RLock()
        self._depth = 0  # changed only by the thread holding self._lock
        self._lock_path = lock_path
        self._fd: int | None = None

    def __enter__(self) -> None:
        self._lock.acquire()
        try:
            if self._depth == 0 and self._lock_path is not None:
                if self._fd is None:
                    self._fd = os.open(self._lock_path, os.O_RDWR | os.O_CREAT, 0o600)
                fcntl.flock(self._fd, fcntl.LOCK_EX)
        except BaseException:
            self._lock.release()
            raise
        self._depth += 1

    def __del__(self) -> None:
        if self._fd is not None:
            os.close(self._fd)

    def __exit__(self, *exc: object) -> None:
        self._depth -= 1
        try:
            if self._depth == 0 and self._fd is not None:
                fcntl.flock(self._fd, fcntl.LOCK_UN)
        finally:
            self._lock.release()


_SQLITE_WRITERS: weakref.WeakKeyDictionary[Engine, SqliteWriterGate] = weakref.WeakKeyDictionary()
_GATES_LOCK = threading.Lock()


def writer_gate(factory: sessionmaker[Session]) -> contextlib.AbstractContextManager[Any]:
    """Hold around a write transaction on the hot path (see ``SqliteWriterGate``). PostgreSQL locks
    rows, not the database: no gate there."""
    engine = factory.kw.get("bind")
    if not isinstance(engine, Engine) or engine.dialect.name != "sqlite":
        return contextlib.nullcontext()
    with _GATES_LOCK:
        gate = _SQLITE_WRITERS.get(engine)
        if gate is None:
            database = engine.url.database
            lock_path = Path(database + "-writer.lock") if database and database != ":memory:" else None
            gate = _SQLITE_WRITERS[engine] = SqliteWriterGate(lock_path)
    return gate


def flush_journal(engine: Engine) -> bool:
    """After a permanent deletion: fold the SQLite write-ahead log into the database and truncate it,
    so the old page images it still holds (the deleted text) leave the disk now, not at some later
    checkpoint. True when done (or nothing to do: PostgreSQL); False when readers kept it busy, in
    which case the next checkpoint finishes the job."""
    if engine.dialect.name != "sqlite":
        return True
    with engine.connect() as conn:
        busy = conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)").first()
    return busy is None or int(busy[0]) == 0


@contextmanager
def transaction(factory: sessionmaker[Session]) -> Iterator[Session]:
    """One unit of work: commit on success, roll back on any error, so nothing is half-written."""
    with factory() as session, session.begin():
        yield session


def alembic_config(engine: Engine) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.attributes["engine"] = engine
    return cfg


def upgrade(engine: Engine) -> tuple[str | None, str | None]:
    """Apply every pending migration; returns the revision before and after (None: empty database).

    Several nodes may run this at once (``serve --migrate`` on every replica): on PostgreSQL the
    migrations run under a transaction-level advisory lock (see migrations/env.py), so the second
    waits for the first, then finds nothing left to do."""
    before = current_revision(engine)
    command.upgrade(alembic_config(engine), "head")
    return before, current_revision(engine)


def current_revision(engine: Engine) -> str | None:
    with engine.connect() as conn:
        heads = MigrationContext.configure(conn).get_current_heads()
    return ",".join(sorted(heads)) or None


def head_revision(engine: Engine) -> str:
    return ",".join(sorted(ScriptDirectory.from_config(alembic_config(engine)).get_heads()))


def migrations_current(engine: Engine) -> bool:
    return current_revision(engine) == head_revision(engine)


def pending_migrations(engine: Engine) -> str | None:
    """None when the database is at the code's revision, else one line saying what to do."""
    current, head = current_revision(engine), head_revision(engine)
    if current == head:
        return None
    known = {rev.revision for rev in ScriptDirectory.from_config(alembic_config(engine)).walk_revisions()}
    if current is not None and not set(current.split(",")) <= known:
        return (
            f"database is at revision {current}, which this version does not know (the code's newest is "
            f"{head}): a newer version migrated it; run that version"
        )
    return (
        f"database is at revision {current or 'none (empty)'}, the code needs {head}: "
        "run `mailbridge db upgrade` or `mailbridge serve --migrate`"
    )


# ``session.info`` key: the mapped classes whose rows Core statements wrote in this transaction
# (the hot path's INSERTs, issue 17). No flush sees those rows, so the commit nudges ask about them.
CORE_WRITTEN = "core_written"


def note_written(session: Session, *classes: type) -> None:
    """Say that rows of *classes* were written with Core statements (no flush saw them)."""
    session.info.setdefault(CORE_WRITTEN, set()).update(classes)


def written_by_core(session: Session) -> set[type]:
    """The classes ``note_written`` named since this session's last commit or rollback."""
    found: set[type] = session.info.get(CORE_WRITTEN, set())
    return found


def nudge_on_commit(
    sessions: sessionmaker[Session], wants: Callable[[Session], bool], nudge: Callable[[], None], key: str
) -> Callable[[], None]:
    """Call *nudge* after each commit of this process whose flushes *wants* (a worker's own rows
    written): the worker then works within milliseconds instead of at its next poll. Rows written by
    another process or node are found by the poll. *key* names the flag kept in ``session.info``
    between a flush and the commit. *wants* is asked again just before the commit, for the rows
    Core statements wrote (``note_written``): no flush saw them. Returns a function that removes
    the listeners."""

    def after_flush(session: Session, _context: Any) -> None:
        if wants(session):
            session.info[key] = True

    def before_commit(session: Session) -> None:
        if written_by_core(session) and wants(session):
            session.info[key] = True

    def after_commit(session: Session) -> None:
        session.info.pop(CORE_WRITTEN, None)  # every listener's before_commit has asked by now
        if session.info.pop(key, False):
            nudge()

    def after_rollback(session: Session) -> None:
        session.info.pop(CORE_WRITTEN, None)
        session.info.pop(key, None)

    listeners: tuple[tuple[str, Callable[..., None]], ...] = (
        ("after_flush", after_flush),
        ("before_commit", before_commit),
        ("after_commit", after_commit),
        ("after_rollback", after_rollback),
    )
    for name, listener in listeners:
        event.listen(sessions, name, listener)

    def remove() -> None:
        for name, listener in listeners:
            event.remove(sessions, name, listener)

    return remove
