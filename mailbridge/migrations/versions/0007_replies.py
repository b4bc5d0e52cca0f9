"""outbox: the fingerprint of what a notification said, and the index a reply finds it by

Revision ID: 0007
Revises: 0003
Create Date: 2026-12-04
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("outbox", schema=None) as batch_op:
        batch_op.add_column(sa.Column("sent_fingerprint", sa.JSON(), nullable=True))
        batch_op.create_index(
            "ix_outbox_conversation_recipient", ["conversation_id", "recipient_id"], unique=False
        )


def downgrade() -> None:
    with op.batch_alter_table("outbox", schema=None) as batch_op:
        batch_op.drop_index("ix_outbox_conversation_recipient")
        batch_op.drop_column("sent_fingerprint")
