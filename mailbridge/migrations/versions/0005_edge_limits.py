"""a practice's message_max_bytes never above the server-wide limit (EHLO SIZE)

Revision ID: 0005
Revises: 0014
Create Date: 2026-12-10

Data only: a stored limit above the server's own (security review, finding 10) is lowered to it, so
the settings validate as the API now requires (422 beyond). The value is written here, not imported,
because a migration must keep meaning what it meant when it was written.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0014"
branch_labels = None
depends_on = None

SERVER_MAX_MESSAGE_BYTES = int(100 * 1024 * 1024 * 1.37) + 2 * 1024 * 1024  # 145752064

_practices = sa.table("practices", sa.column("id", sa.Integer()), sa.column("settings", sa.JSON()))


def upgrade() -> None:
    bind = op.get_bind()
    for practice_id, settings in bind.execute(sa.select(_practices.c.id, _practices.c.settings)).all():
        value = (settings or {}).get("message_max_bytes")
        if isinstance(value, int) and value > SERVER_MAX_MESSAGE_BYTES:
            bind.execute(
                _practices.update()
                .where(_practices.c.id == practice_id)
                .values(settings={**settings, "message_max_bytes": SERVER_MAX_MESSAGE_BYTES})
            )


def downgrade() -> None:
    pass  # the old values were above what the server ever accepted: nothing to restore
