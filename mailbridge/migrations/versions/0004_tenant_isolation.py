"""tenant isolation: unique reply domains, approved domains, sealed mailbox passwords, scoped API keys

Revision ID: 0004
Revises: 0002
Create Date: 2026-12-05

What it does with existing data (docs/security.md, "Upgrading"):

* Two practices with the same reply domain: the migration stops (``MigrationRefused``) and names
  them. Only the operator knows which practice the domain's mail belongs to; change the other's
  reply domain, then run the migration again. Nothing is changed before the check.
* Routes on a domain that is not the practice's reply domain: when every route on that domain
  belongs to one practice and the domain is no practice's reply domain, the domain is recorded as
  an approved domain of that practice (source ``migration``), so existing ``frontdesk@`` addresses
  keep working. Otherwise (a route on another practice's reply domain, or routes of several practices
  on one domain) nothing is approved: those routes stay in the table but receive nothing, and a
  WARNING line names each one; ``mailbridge domains list`` shows them.
* Practice settings whose ``brand_color`` is not ``#rgb``/``#rrggbb``, whose ``operator_address``
  is not a plain address or whose ``dkim_selector`` is not a DNS name lose that key (a WARNING line names the practice): the validation that
  now refuses them on input must not make every later read of the settings fail.
* Plaintext mailbox passwords are sealed by ``mailbridge db upgrade`` / ``serve`` after the
  migration (sealing needs the master key, which a migration does not have) or by the poller on
  its first read; the ``password`` column is then empty.
"""

from __future__ import annotations

import json
import logging
import re
from collections import defaultdict
from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op

from mailbridge.domain.db import MigrationRefused

revision = "0004"
down_revision = "0002"
branch_labels = None
depends_on = None

log = logging.getLogger("mailbridge.migrations")

# Frozen copies of the rules of this revision (a migration must not change when the code does).
_COLOUR = re.compile(r"^#(?:[0-9A-Fa-f]{3}|[0-9A-Fa-f]{6})$")
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_SELECTOR = re.compile(rf"^{_LABEL}(?:\.{_LABEL})*$")
_EMAIL = re.compile(
    r"^[A-Za-z0-9!#$%&'*+/=?^_`{|}~.-]{1,64}@[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
    r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)+$"
)


def _refuse_duplicate_reply_domains(conn: sa.Connection) -> None:
    rows = conn.execute(sa.text("SELECT slug, lower(reply_domain) FROM practices ORDER BY slug")).all()
    claims: dict[str, list[str]] = defaultdict(list)
    for slug, domain in rows:
        claims[domain].append(slug)
    shared = {domain: slugs for domain, slugs in claims.items() if len(slugs) > 1}
    if shared:
        named = "; ".join(f"{domain} by {', '.join(slugs)}" for domain, slugs in sorted(shared.items()))
        raise MigrationRefused(
            "migration 0004: a reply domain must belong to one practice, but these are shared: "
            f"{named}. Give each practice its own reply domain (PUT /api/v1/practices/<slug>), "
            "then run the migration again; nothing was changed."
        )


def _grandfather_route_domains(conn: sa.Connection) -> None:
    practices = {
        pid: (slug, domain)
        for pid, slug, domain in conn.execute(sa.text("SELECT id, slug, lower(reply_domain) FROM practices"))
    }
    reply_owner = {domain: pid for pid, (_, domain) in practices.items()}
    by_domain: dict[str, dict[int, list[str]]] = defaultdict(lambda: defaultdict(list))
    for pid, address in conn.execute(sa.text("SELECT practice_id, address FROM routes ORDER BY address")):
        domain = str(address).rpartition("@")[2].lower()
        by_domain[domain][pid].append(str(address))
    table = sa.table(
        "practice_domains",
        sa.column("practice_id", sa.Integer),
        sa.column("domain", sa.String),
        sa.column("source", sa.String),
        sa.column("created_at", sa.DateTime(timezone=True)),
    )
    now = datetime.now(UTC)
    for domain, owners in sorted(by_domain.items()):
        owner = reply_owner.get(domain)
        if owner is not None:
            for pid, addresses in owners.items():
                if pid != owner:
                    log.warning(
                        "migration 0004: routes %s of practice %s are on the reply domain of practice %s: "
                        "they receive nothing from now on",
                        ", ".join(addresses),
                        practices[pid][0],
                        practices[owner][0],
                    )
            continue
        if len(owners) == 1:
            (pid,) = owners
            conn.execute(
                table.insert().values(practice_id=pid, domain=domain, source="migration", created_at=now)
            )
            continue
        log.warning(
            "migration 0004: domain %s has routes of several practices (%s): none of them receives mail "
            "until the operator approves the domain for one (mailbridge domains add --practice P %s)",
            domain,
            ", ".join(practices[pid][0] for pid in sorted(owners)),
            domain,
        )


def _clean_settings(conn: sa.Connection) -> None:
    rows = conn.execute(sa.text("SELECT id, slug, settings FROM practices")).all()
    practices = sa.table("practices", sa.column("id", sa.Integer), sa.column("settings", sa.JSON))
    for pid, slug, raw in rows:
        settings = json.loads(raw) if isinstance(raw, str | bytes) else raw
        if not isinstance(settings, dict):
            continue
        dropped = []
        colour = settings.get("brand_color")
        if colour is not None and not (isinstance(colour, str) and _COLOUR.match(colour)):
            dropped.append("brand_color")
        operator = settings.get("operator_address")
        if operator is not None and not (
            isinstance(operator, str)
            and len(operator) <= 254
            and _EMAIL.match(operator)
            and ".." not in operator
        ):
            dropped.append("operator_address")
        selector = settings.get("dkim_selector")
        if selector is not None and not (
            isinstance(selector, str) and len(selector) <= 63 and _SELECTOR.match(selector)
        ):
            dropped.append("dkim_selector")
        if dropped:
            cleaned = {k: v for k, v in settings.items() if k not in dropped}
            conn.execute(practices.update().where(practices.c.id == pid).values(settings=cleaned))
            log.warning(
                "migration 0004: practice %s: invalid %s removed from its settings", slug, ", ".join(dropped)
            )


def upgrade() -> None:
    conn = op.get_bind()
    _refuse_duplicate_reply_domains(conn)
    with op.batch_alter_table("practices", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_practices_reply_domain"))
        batch_op.create_index(batch_op.f("ix_practices_reply_domain"), ["reply_domain"], unique=True)

    op.create_table(
        "practice_domains",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("practice_id", sa.Integer(), nullable=False),
        sa.Column("domain", sa.String(length=255), nullable=False),
        sa.Column("source", sa.String(length=16), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["practice_id"],
            ["practices.id"],
            name=op.f("fk_practice_domains_practice_id_practices"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_practice_domains")),
        sa.UniqueConstraint("domain", name=op.f("uq_practice_domains_domain")),
    )
    with op.batch_alter_table("practice_domains", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_practice_domains_practice_id"), ["practice_id"], unique=False)
    _grandfather_route_domains(conn)

    op.create_table(
        "api_keys",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("practice_id", sa.Integer(), nullable=False),
        sa.Column("scope", sa.String(length=8), nullable=False),
        sa.Column("label", sa.String(length=128), nullable=False),
        sa.Column("prefix", sa.String(length=16), nullable=False),
        sa.Column("hash", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_used_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["practice_id"],
            ["practices.id"],
            name=op.f("fk_api_keys_practice_id_practices"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_api_keys")),
        sa.UniqueConstraint("hash", name=op.f("uq_api_keys_hash")),
    )
    with op.batch_alter_table("api_keys", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_api_keys_practice_id"), ["practice_id"], unique=False)

    with op.batch_alter_table("mailboxes", schema=None) as batch_op:
        batch_op.add_column(sa.Column("password_sealed", sa.Text(), nullable=True))

    _clean_settings(conn)


def downgrade() -> None:
    with op.batch_alter_table("mailboxes", schema=None) as batch_op:
        batch_op.drop_column("password_sealed")
    with op.batch_alter_table("api_keys", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_api_keys_practice_id"))
    op.drop_table("api_keys")
    with op.batch_alter_table("practice_domains", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_practice_domains_practice_id"))
    op.drop_table("practice_domains")
    with op.batch_alter_table("practices", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_practices_reply_domain"))
        batch_op.create_index(batch_op.f("ix_practices_reply_domain"), ["reply_domain"], unique=False)
