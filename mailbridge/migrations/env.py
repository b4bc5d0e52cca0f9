"""Alembic environment: runs against the engine handed in by mailbridge (never a URL in an ini file)."""

from __future__ import annotations

from alembic import context
from sqlalchemy import text

from mailbridge.domain.models import Base

# Any constant: every mailbridge node of one PostgreSQL database takes this lock to migrate.
MIGRATION_LOCK = 0x6D61696C  # "mail"

config = context.config
engine = config.attributes["engine"]

with engine.begin() as connection:
    if connection.dialect.name == "postgresql":
        # Replicas started together with `serve --migrate`: one migrates, the others wait here and
        # then find the version table already at head. Released at commit.
        connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK})
    context.configure(
        connection=connection,
        target_metadata=Base.metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    context.run_migrations()
