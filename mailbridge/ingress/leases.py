"""Mailbox leases: one node polls a mailbox at a time, whatever the number of nodes.

Two pollers on one mailbox would fetch the same message and race to move it (one MOVE fails, the
inbound log gets two rows, a deferred message is retried twice). Each mailbox row carries a lease:
``lease_holder`` (this node's poller set) and ``lease_until``. A node takes every mailbox whose
lease is free, expired or already its own, in one conditional UPDATE, and renews it the same way
every third of the lease; the database serialises the UPDATEs, so exactly one node wins a lease.
A node that dies stops renewing: another takes the mailbox over once ``lease_until`` has passed.

The times are the nodes' clocks (as for outbox leases): keep them in sync (NTP); a skew smaller
than the third of the lease that is kept as margin is harmless. Written by hand because the rule
is one UPDATE statement; a lock service would be one more thing to run.
"""

from __future__ import annotations

import os
import secrets
import socket
from collections.abc import Collection
from datetime import datetime, timedelta

from sqlalchemy import and_, or_, update
from sqlalchemy.orm import Session

from mailbridge.domain.models import Mailbox, utcnow


def holder_id() -> str:
    """Names this node's poller set in ``lease_holder`` (and in the API): host, process, a nonce."""
    return f"{socket.gethostname()[:80]}:{os.getpid()}:{secrets.token_hex(3)}"


def take(
    session: Session, holder: str, mailbox_ids: Collection[int], seconds: float, now: datetime | None = None
) -> set[int]:
    """Take or renew the leases of *mailbox_ids* that are free, expired or ours; returns those held."""
    if not mailbox_ids:
        return set()
    now = now or utcnow()
    held = session.scalars(
        update(Mailbox)
        .where(
            Mailbox.id.in_(list(mailbox_ids)),
            or_(
                Mailbox.lease_holder.is_(None),
                Mailbox.lease_holder == holder,
                Mailbox.lease_until.is_(None),
                Mailbox.lease_until < now,
            ),
        )
        .values(
            lease_holder=holder,
            lease_until=now + timedelta(seconds=seconds),
            updated_at=Mailbox.updated_at,  # a renewal is not a change of the mailbox
        )
        .returning(Mailbox.id)
        .execution_options(synchronize_session=False)
    ).all()
    return set(held)


def give_back(session: Session, holder: str, mailbox_ids: Collection[int] | None = None) -> None:
    """At a clean stop: the next node need not wait for the lease to run out."""
    condition = Mailbox.lease_holder == holder
    if mailbox_ids is not None:
        condition = and_(condition, Mailbox.id.in_(list(mailbox_ids)))
    session.execute(
        update(Mailbox)
        .where(condition)
        .values(lease_holder=None, lease_until=None, updated_at=Mailbox.updated_at)
        .execution_options(synchronize_session=False)
    )
