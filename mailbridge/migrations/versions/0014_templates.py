"""Practices' own templates (versioned), their logo, and notification mutes (one-click unsubscribe)

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-04

Also drops a stored ``brand_color`` that is not ``#rgb``/``#rrggbb``: older versions kept it as an
unchecked extra setting, and it is now a validated one that every notification reads.
"""

from __future__ import annotations

import json
import re

import sqlalchemy as sa
from alembic import op

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "practice_logos",
        sa.Column("practice_id", sa.Integer(), nullable=False),
        sa.Column("content_type", sa.String(length=32), nullable=False),
        sa.Column("data", sa.LargeBinary(), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("width", sa.Integer(), nullable=False),
        sa.Column("height", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["practice_id"],
            ["practices.id"],
            name=op.f("fk_practice_logos_practice_id_practices"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("practice_id", name=op.f("pk_practice_logos")),
    )
    op.create_table(
        "practice_templates",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("practice_id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("locale", sa.String(length=8), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("subject", sa.Text(), nullable=True),
        sa.Column("text", sa.Text(), nullable=True),
        sa.Column("mjml", sa.Text(), nullable=True),
        sa.Column("active", sa.Boolean(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("created_by", sa.String(length=200), nullable=True),
        sa.ForeignKeyConstraint(
            ["practice_id"],
            ["practices.id"],
            name=op.f("fk_practice_templates_practice_id_practices"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_practice_templates")),
        sa.UniqueConstraint(
            "practice_id", "name", "locale", "version", name=op.f("uq_practice_templates_practice_id")
        ),
    )
    with op.batch_alter_table("practice_templates", schema=None) as batch_op:
        batch_op.create_index("ix_practice_templates_lookup", ["practice_id", "active"], unique=False)

    op.create_table(
        "notification_mutes",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("practice_id", sa.Integer(), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("conversation_id", sa.String(length=32), nullable=False),
        sa.Column("source", sa.String(length=16), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["conversation_id"],
            ["conversations.id"],
            name=op.f("fk_notification_mutes_conversation_id_conversations"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["practice_id"],
            ["practices.id"],
            name=op.f("fk_notification_mutes_practice_id_practices"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["user_id"], ["users.id"], name=op.f("fk_notification_mutes_user_id_users"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_notification_mutes")),
        sa.UniqueConstraint("user_id", "conversation_id", name=op.f("uq_notification_mutes_user_id")),
    )
    with op.batch_alter_table("notification_mutes", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_notification_mutes_conversation_id"), ["conversation_id"], unique=False
        )
        batch_op.create_index(batch_op.f("ix_notification_mutes_practice_id"), ["practice_id"], unique=False)

    _drop_invalid_brand_colors()


def _drop_invalid_brand_colors() -> None:
    bind = op.get_bind()
    practices = sa.table("practices", sa.column("id", sa.Integer()), sa.column("settings", sa.JSON()))
    for row in bind.execute(sa.select(practices.c.id, practices.c.settings)).all():
        settings = row.settings if isinstance(row.settings, dict) else json.loads(row.settings or "{}")
        color = settings.get("brand_color")
        if color is None or (
            isinstance(color, str) and re.fullmatch(r"#(?:[0-9a-fA-F]{3}|[0-9a-fA-F]{6})", color)
        ):
            continue
        del settings["brand_color"]
        bind.execute(practices.update().where(practices.c.id == row.id).values(settings=settings))


def downgrade() -> None:
    with op.batch_alter_table("notification_mutes", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_notification_mutes_practice_id"))
        batch_op.drop_index(batch_op.f("ix_notification_mutes_conversation_id"))

    op.drop_table("notification_mutes")
    with op.batch_alter_table("practice_templates", schema=None) as batch_op:
        batch_op.drop_index("ix_practice_templates_lookup")

    op.drop_table("practice_templates")
    op.drop_table("practice_logos")
