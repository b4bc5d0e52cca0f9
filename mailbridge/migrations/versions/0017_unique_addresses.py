"""One holder per address in a practice (issue 20 item 3)

Revision ID: 0017
Revises: 0016
Create Date: 2026-12-05

``user_addresses.address_key``: the normalised address (``domain.addresses.normalise``; stored
addresses already are) under a unique index on (practice, address_key), so two users of a practice
can never hold the same address, whatever door writes them.

Duplicates made before (a client given a staff member's address, two clients one address in
different case) are kept, not resolved: choosing a holder would silently give one person's mail to
another. Their ``address_key`` stays null (outside the index), each is reported here with its
holders, and sender recognition refuses to guess between them (``ambiguous_sender``). The directory
refuses to create new ones (409 ``email_taken``); once the app gives each holder its own address,
the next sync of the remaining holder sets its key.
"""

from __future__ import annotations

import logging

import sqlalchemy as sa
from alembic import op

revision = "0017"
down_revision = "0018"
branch_labels = None
depends_on = None

log = logging.getLogger("mailbridge.migrations")


def upgrade() -> None:
    with op.batch_alter_table("user_addresses") as batch:
        batch.add_column(sa.Column("address_key", sa.String(length=320), nullable=True))
    bind = op.get_bind()
    duplicates = bind.execute(
        sa.text(
            "SELECT p.slug, a.address, u.external_id FROM user_addresses a "
            "JOIN users u ON u.id = a.user_id JOIN practices p ON p.id = a.practice_id "
            "WHERE EXISTS (SELECT 1 FROM user_addresses o WHERE o.practice_id = a.practice_id "
            "AND o.address = a.address AND o.id <> a.id) ORDER BY p.slug, a.address, u.external_id"
        )
    ).all()
    held: dict[tuple[str, str], list[str]] = {}
    for slug, address, external_id in duplicates:
        held.setdefault((slug, address), []).append(external_id)
    for (slug, address), holders in held.items():
        log.warning(
            "duplicate_address: practice %s: %s is held by %s; kept, and mail from it is not "
            "attributed to anyone (ambiguous_sender) until the app gives each its own address",
            slug,
            address,
            ", ".join(holders),
        )
    bind.execute(
        sa.text(
            "UPDATE user_addresses SET address_key = address WHERE NOT EXISTS (SELECT 1 FROM "
            "user_addresses o WHERE o.practice_id = user_addresses.practice_id "
            "AND o.address = user_addresses.address AND o.id <> user_addresses.id)"
        )
    )
    with op.batch_alter_table("user_addresses") as batch:
        batch.create_index(
            "uq_user_addresses_practice_address_key", ["practice_id", "address_key"], unique=True
        )


def downgrade() -> None:
    with op.batch_alter_table("user_addresses") as batch:
        batch.drop_index("uq_user_addresses_practice_address_key")
        batch.drop_column("address_key")
