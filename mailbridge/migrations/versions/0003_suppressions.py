"""suppressions with reason, DSN status and diagnostic, first/last seen, count and expiry; email_bouncing derived

Revision ID: 0003
Revises: 0008
Create Date: 2026-12-05

The old table was written by a rule that believed any delivery report from anybody (security issue
11 #1, #2): none of its rows can be told from a forged one, so they are not carried over. A real dead
address is learnt again from the next report at a signed VERP address. ``users.email_bouncing`` goes:
the API derives it from the active suppressions of the user's address, so it can neither go stale
(a soft suppression expiring, a DELETE) nor follow a user to a new address.

SQLite drops the column with its own ALTER TABLE DROP COLUMN (3.35+): a batch copy of ``users``
would drop and recreate a table that cascading foreign keys point at.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.drop_table("suppressions")
    op.create_table(
        "suppressions",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("practice_id", sa.Integer(), nullable=False),
        sa.Column("address", sa.String(length=320), nullable=False),
        sa.Column(
            "reason",
            sa.Enum(
                "hard_bounce",
                "soft_bounce",
                "complaint",
                name="suppressionreason",
                native_enum=False,
                length=32,
            ),
            nullable=False,
        ),
        sa.Column("status", sa.String(length=16), nullable=True),
        sa.Column("diagnostic", sa.String(length=512), nullable=True),
        sa.Column("outbox_id", sa.String(length=32), nullable=True),
        sa.Column("count", sa.Integer(), nullable=False),
        sa.Column("active", sa.Boolean(), nullable=False),
        sa.Column("first_seen", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_seen", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["practice_id"],
            ["practices.id"],
            name=op.f("fk_suppressions_practice_id_practices"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_suppressions")),
        sa.UniqueConstraint("practice_id", "address", name=op.f("uq_suppressions_practice_id")),
    )
    op.drop_column("users", "email_bouncing")


def downgrade() -> None:
    op.add_column(
        "users", sa.Column("email_bouncing", sa.Boolean(), nullable=False, server_default=sa.false())
    )
    op.drop_table("suppressions")
    op.create_table(
        "suppressions",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("practice_id", sa.Integer(), nullable=False),
        sa.Column("address", sa.String(length=320), nullable=False),
        sa.Column("reason", sa.String(length=255), nullable=False),
        sa.Column("soft_bounces", sa.Integer(), nullable=False),
        sa.Column("suppressed", sa.Boolean(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["practice_id"],
            ["practices.id"],
            name=op.f("fk_suppressions_practice_id_practices"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_suppressions")),
        sa.UniqueConstraint("practice_id", "address", name=op.f("uq_suppressions_practice_id")),
    )
