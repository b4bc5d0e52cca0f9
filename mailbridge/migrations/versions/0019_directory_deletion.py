"""Users and companies deleted through the API (issue 20 item 11)

Revision ID: 0019
Revises: 0016
Create Date: 2026-12-04

A deleted user or company keeps its row, marked ``deleted_at``: messages name their author,
conversations their company and audit rows their actor, and none of those may lose its meaning.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0019"
down_revision = "0016"
branch_labels = None
depends_on = None


def upgrade() -> None:
    for table in ("users", "companies"):
        with op.batch_alter_table(table) as batch:
            batch.add_column(sa.Column("deleted_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    for table in ("users", "companies"):
        with op.batch_alter_table(table) as batch:
            batch.drop_column("deleted_at")
