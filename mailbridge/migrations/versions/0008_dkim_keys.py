"""DKIM keys in the database, sealed with the keyring, so every node signs

Revision ID: 0008
Revises: 0009
Create Date: 2026-12-10
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "dkim_keys",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("practice_id", sa.Integer(), nullable=False),
        sa.Column("selector", sa.String(length=63), nullable=False),
        sa.Column("domain", sa.String(length=255), nullable=False),
        sa.Column(
            "algorithm",
            sa.Enum("rsa", "ed25519", name="dkimalgorithm", native_enum=False, length=32),
            nullable=False,
        ),
        sa.Column("private_key", sa.Text(), nullable=False),
        sa.Column("public_txt", sa.Text(), nullable=False),
        sa.Column(
            "state",
            sa.Enum(
                "pending", "active", "retiring", "retired", name="dkimkeystate", native_enum=False, length=32
            ),
            nullable=False,
        ),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("activated_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("retired_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_checked_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("dns_status", sa.String(length=16), nullable=True),
        sa.ForeignKeyConstraint(
            ["practice_id"],
            ["practices.id"],
            name=op.f("fk_dkim_keys_practice_id_practices"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_dkim_keys")),
        sa.UniqueConstraint("practice_id", "selector", name=op.f("uq_dkim_keys_practice_id")),
    )
    with op.batch_alter_table("dkim_keys", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_dkim_keys_practice_id"), ["practice_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("dkim_keys", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_dkim_keys_practice_id"))
    op.drop_table("dkim_keys")
