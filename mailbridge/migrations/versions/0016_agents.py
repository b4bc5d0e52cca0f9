"""Users' portal account (seed 003: only recipients with a portal account are notified)

Revision ID: 0016
Revises: 0005
Create Date: 2026-12-05

Every existing user has one (the default); external agents (``kind = 'external'``, a new value of a
column stored as a string, no type to alter) are created without.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0016"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("users") as batch:
        batch.add_column(sa.Column("portal_account", sa.Boolean(), nullable=False, server_default=sa.true()))


def downgrade() -> None:
    with op.batch_alter_table("users") as batch:
        batch.drop_column("portal_account")
