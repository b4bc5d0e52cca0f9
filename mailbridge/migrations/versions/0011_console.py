"""console: operators, their sessions, sign-in throttling and audit; indexes for the console's lists

Revision ID: 0011
Revises: 0007
Create Date: 2026-12-04
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "console_login_throttle",
        sa.Column("key", sa.String(length=400), nullable=False),
        sa.Column("failures", sa.Integer(), nullable=False),
        sa.Column("window_started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("blocked_until", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("key", name=op.f("pk_console_login_throttle")),
    )
    op.create_table(
        "operators",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("password_hash", sa.String(length=255), nullable=False),
        sa.Column("all_practices", sa.Boolean(), nullable=False),
        sa.Column("content_rights", sa.Boolean(), nullable=False),
        sa.Column("email", sa.String(length=320), nullable=True),
        sa.Column("locale", sa.String(length=8), nullable=False),
        sa.Column("disabled", sa.Boolean(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_login_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_operators")),
        sa.UniqueConstraint("name", name=op.f("uq_operators_name")),
    )
    op.create_table(
        "operator_audit",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("operator_id", sa.Integer(), nullable=True),
        sa.Column("operator_name", sa.String(length=64), nullable=False),
        sa.Column("practice_id", sa.Integer(), nullable=True),
        sa.Column("action", sa.String(length=64), nullable=False),
        sa.Column("target_kind", sa.String(length=32), nullable=False),
        sa.Column("target_id", sa.String(length=320), nullable=False),
        sa.Column("details", sa.JSON(), nullable=False),
        sa.Column("peer", sa.String(length=64), nullable=True),
        sa.ForeignKeyConstraint(
            ["operator_id"],
            ["operators.id"],
            name=op.f("fk_operator_audit_operator_id_operators"),
            ondelete="SET NULL",
        ),
        sa.ForeignKeyConstraint(
            ["practice_id"],
            ["practices.id"],
            name=op.f("fk_operator_audit_practice_id_practices"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_operator_audit")),
    )
    with op.batch_alter_table("operator_audit", schema=None) as batch_op:
        batch_op.create_index("ix_operator_audit_created", ["created_at", "id"], unique=False)
        batch_op.create_index(
            "ix_operator_audit_practice_created", ["practice_id", "created_at", "id"], unique=False
        )
        batch_op.create_index("ix_operator_audit_target", ["target_kind", "target_id"], unique=False)

    op.create_table(
        "operator_practices",
        sa.Column("operator_id", sa.Integer(), nullable=False),
        sa.Column("practice_id", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["operator_id"],
            ["operators.id"],
            name=op.f("fk_operator_practices_operator_id_operators"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["practice_id"],
            ["practices.id"],
            name=op.f("fk_operator_practices_practice_id_practices"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("operator_id", "practice_id", name=op.f("pk_operator_practices")),
    )
    with op.batch_alter_table("operator_practices", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_operator_practices_practice_id"), ["practice_id"], unique=False)

    op.create_table(
        "operator_sessions",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("operator_id", sa.Integer(), nullable=False),
        sa.Column("csrf_token", sa.String(length=64), nullable=False),
        sa.Column("peer", sa.String(length=64), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_seen_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["operator_id"],
            ["operators.id"],
            name=op.f("fk_operator_sessions_operator_id_operators"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_operator_sessions")),
    )
    with op.batch_alter_table("operator_sessions", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_operator_sessions_operator_id"), ["operator_id"], unique=False)

    with op.batch_alter_table("inbound_log", schema=None) as batch_op:
        batch_op.create_index("ix_inbound_log_conversation", ["conversation_id"], unique=False)
        batch_op.create_index("ix_inbound_log_practice_from", ["practice_id", "from_header"], unique=False)
        batch_op.create_index("ix_inbound_log_practice_mail_from", ["practice_id", "mail_from"], unique=False)
        batch_op.create_index(
            "ix_inbound_log_practice_msgid", ["practice_id", "message_id_header"], unique=False
        )
        batch_op.create_index(
            "ix_inbound_log_practice_received", ["practice_id", "received_at", "id"], unique=False
        )
        batch_op.create_index("ix_inbound_log_token", ["token_id"], unique=False)

    with op.batch_alter_table("outbox", schema=None) as batch_op:
        batch_op.create_index("ix_outbox_message", ["message_id"], unique=False)
        batch_op.create_index("ix_outbox_practice_created", ["practice_id", "created_at", "id"], unique=False)
        batch_op.create_index("ix_outbox_practice_to", ["practice_id", "to_address"], unique=False)

    with op.batch_alter_table("quarantine", schema=None) as batch_op:
        batch_op.create_index("ix_quarantine_inbound", ["inbound_id"], unique=False)
        batch_op.create_index(
            "ix_quarantine_practice_state_created", ["practice_id", "state", "created_at"], unique=False
        )


def downgrade() -> None:
    with op.batch_alter_table("quarantine", schema=None) as batch_op:
        batch_op.drop_index("ix_quarantine_practice_state_created")
        batch_op.drop_index("ix_quarantine_inbound")

    with op.batch_alter_table("outbox", schema=None) as batch_op:
        batch_op.drop_index("ix_outbox_practice_to")
        batch_op.drop_index("ix_outbox_practice_created")
        batch_op.drop_index("ix_outbox_message")

    with op.batch_alter_table("inbound_log", schema=None) as batch_op:
        batch_op.drop_index("ix_inbound_log_token")
        batch_op.drop_index("ix_inbound_log_practice_received")
        batch_op.drop_index("ix_inbound_log_practice_msgid")
        batch_op.drop_index("ix_inbound_log_practice_mail_from")
        batch_op.drop_index("ix_inbound_log_practice_from")
        batch_op.drop_index("ix_inbound_log_conversation")

    with op.batch_alter_table("operator_sessions", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_operator_sessions_operator_id"))

    op.drop_table("operator_sessions")
    with op.batch_alter_table("operator_practices", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_operator_practices_practice_id"))

    op.drop_table("operator_practices")
    with op.batch_alter_table("operator_audit", schema=None) as batch_op:
        batch_op.drop_index("ix_operator_audit_target")
        batch_op.drop_index("ix_operator_audit_practice_created")
        batch_op.drop_index("ix_operator_audit_created")

    op.drop_table("operator_audit")
    op.drop_table("operators")
    op.drop_table("console_login_throttle")
