"""Group commit: the final transactions of concurrent pipeline runs share one SQLite commit.

Every posted reply ends in one write transaction whose commit is a WAL fsync (``synchronous=FULL``):
the 250 means stored. SQLite takes one writer at a time (``db.writer_gate``), so concurrent runs
queue for the gate and each pays its own fsync. Here the first run to reach the commit becomes the
leader: it takes every final transaction queued so far, runs each inside a ``SAVEPOINT`` of one
transaction (a run whose work fails — a duplicate meeting the idempotency key, a policy refusal, a
revoked token, any error — is rolled back to its savepoint alone and gets its own exception back),
commits once, and only then wakes the runs: each answers 250 only after the commit that contains
its message, as before. Nothing of a batch is committed when the commit itself fails: every run of
it gets that error (451, the sender retries; the idempotency key keeps a retry from posting twice).

No thread of its own: the waiting runs' threads take turns as leader (``_commit_lock``), so there is
nothing to start or stop. PostgreSQL already shares WAL flushes between concurrent commits (its own
group commit) and runs the final transactions in parallel on separate connections, which one
leader would serialise: ``wiring`` uses this on SQLite only.

pysqlite opens its transaction lazily, before the first INSERT/UPDATE/DELETE; a ``SAVEPOINT`` sent
first would open one of its own, and releasing it would commit. So a batch starts with a no-op
UPDATE, which makes pysqlite send BEGIN: the savepoints then nest inside the one transaction.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from sqlalchemy import text
from sqlalchemy.orm import Session, sessionmaker

from mailbridge.domain.db import writer_gate

T = TypeVar("T")

MAX_BATCH = 64  # final transactions per commit at most (a batch is what queued meanwhile, never waited for)


@dataclass
class _Job(Generic[T]):
    work: Callable[[Session], T]
    done: threading.Event = field(default_factory=threading.Event)
    result: T | None = None
    error: BaseException | None = None


class GroupCommitter:
    """Runs final transactions, several per commit when runs arrive together (see the module)."""

    def __init__(self, sessions: sessionmaker[Session], max_batch: int = MAX_BATCH) -> None:
        self._sessions = sessions
        self._max_batch = max_batch
        self._pending: list[_Job[Any]] = []
        self._pending_lock = threading.Lock()
        self._commit_lock = threading.Lock()
        self.commits = 0  # how many commits so far (the benchmark reports transactions per commit)
        self.transactions = 0

    def run(self, work: Callable[[Session], T]) -> T:
        """*work* inside a savepoint of a shared transaction; returns once that transaction is
        committed (durable), or raises *work*'s own exception, or the commit's."""
        job: _Job[T] = _Job(work)
        with self._pending_lock:
            self._pending.append(job)
        while not job.done.is_set():
            with self._commit_lock:
                if job.done.is_set():  # a leader took it while this thread waited for the lock
                    break
                with self._pending_lock:
                    batch = self._pending[: self._max_batch]
                    del self._pending[: self._max_batch]
                self._commit(batch)
        if job.error is not None:
            raise job.error
        return job.result  # type: ignore[return-value]

    def _commit(self, batch: list[_Job[Any]]) -> None:
        try:
            with writer_gate(self._sessions), self._sessions() as session:
                if len(batch) == 1:  # alone: its own transaction, no savepoint to pay for
                    try:
                        batch[0].result = batch[0].work(session)
                    except Exception as exc:
                        session.rollback()
                        batch[0].error = exc
                else:
                    session.execute(text("UPDATE inbound_log SET id = id WHERE 0 = 1"))  # BEGIN (module doc)
                    for job in batch:
                        try:
                            with session.begin_nested():
                                job.result = job.work(session)
                        except Exception as exc:  # this run's alone: rolled back to its savepoint
                            job.error = exc
                session.commit()
            self.commits += 1
            self.transactions += len(batch)
        except BaseException as exc:  # nothing of the batch is committed
            for job in batch:
                if job.error is None:
                    job.result, job.error = None, exc
            if not isinstance(exc, Exception):
                raise
        finally:
            for job in batch:
                job.done.set()
