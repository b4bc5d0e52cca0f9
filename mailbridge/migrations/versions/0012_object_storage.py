"""raw mail and attachments referenced by object-store keys (any node resolves them); IMAP OAuth2

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-04

``inbound_log.raw_ref`` and ``attachments.storage_key`` name objects in the configured store
(``raw/<practice>/<day>/<id>[.mbe]``, ``att/<practice>/<name>[.mbe]``). Rows written before keep
``raw_path`` (an absolute path under DATA_DIR/inbound) and a NULL ``storage_key`` (the file named
by its SHA-256 under DATA_DIR/attachments): they are read from the node that has them, as before,
and never written again. Mailboxes gain ``auth`` (password | oauth2), ``oauth`` (provider,
endpoint, client id, tenant, scope) and ``oauth_secret`` (sealed).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("inbound_log", schema=None) as batch_op:
        batch_op.add_column(sa.Column("raw_ref", sa.String(length=512), nullable=True))
    with op.batch_alter_table("attachments", schema=None) as batch_op:
        batch_op.add_column(sa.Column("storage_key", sa.String(length=512), nullable=True))
        batch_op.create_index(batch_op.f("ix_attachments_storage_key"), ["storage_key"], unique=False)
    with op.batch_alter_table("mailboxes", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("auth", sa.String(length=16), nullable=False, server_default="password")
        )
        batch_op.add_column(sa.Column("oauth", sa.JSON(), nullable=True))
        batch_op.add_column(sa.Column("oauth_secret", sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("mailboxes", schema=None) as batch_op:
        batch_op.drop_column("oauth_secret")
        batch_op.drop_column("oauth")
        batch_op.drop_column("auth")
    with op.batch_alter_table("attachments", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_attachments_storage_key"))
        batch_op.drop_column("storage_key")
    with op.batch_alter_table("inbound_log", schema=None) as batch_op:
        batch_op.drop_column("raw_ref")
