"""PostgreSQL connections are tested before use only after they rested: a dead one is replaced, a busy
one costs no round trip (docs/benchmarks.md, steps)."""

from __future__ import annotations

import time
from typing import Any

import pytest
from sqlalchemy import text

from mailbridge.domain.db import make_engine
from tests.conftest import PG_URL

pytestmark = pytest.mark.postgres


def _pings(engine: Any) -> list[int]:
    count = [0]
    original = engine.dialect.do_ping

    def counting(dbapi_conn: Any) -> bool:
        count[0] += 1
        return bool(original(dbapi_conn))

    engine.dialect.do_ping = counting
    return count


def test_a_connection_killed_while_it_rested_is_replaced() -> None:
    engine = make_engine(PG_URL, ping_after=0.2, pool_size=1, max_overflow=0)
    try:
        with engine.connect() as conn:
            pid = conn.execute(text("SELECT pg_backend_pid()")).scalar_one()
        with make_engine(PG_URL).connect() as other:  # an administrator, a restart, an idle timeout
            other.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
            other.commit()
        time.sleep(0.3)
        with engine.connect() as conn:
            assert conn.execute(text("SELECT pg_backend_pid()")).scalar_one() != pid
    finally:
        engine.dispose()


def test_a_connection_back_from_work_a_moment_ago_is_not_pinged() -> None:
    engine = make_engine(PG_URL, ping_after=60, pool_size=1, max_overflow=0)
    pings = _pings(engine)
    try:
        for _ in range(5):
            with engine.connect() as conn:
                conn.execute(text("SELECT 1"))
        assert pings[0] == 0
        for record in list(engine.pool._pool.queue):  # type: ignore[attr-defined]
            record.info["checked_in"] -= 120  # as if it had rested two minutes
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        assert pings[0] == 1
    finally:
        engine.dispose()
