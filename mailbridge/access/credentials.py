"""Mailbox passwords: sealed in the database when a practice gives one, or an environment variable the
operator listed; opened only when the poller connects, never returned by the API.

Before issue 11 #5 a practice could name *any* environment variable as ``password_env`` and the
poller sent its value to the practice's chosen host (the global API key arrived at a fake IMAP
server). A tenant must never reference a secret it did not provide: the password it gives is
sealed with its own data key, bound to the mailbox (the purpose names practice and mailbox, so a
sealed value moved to another row does not open), and a variable name is honoured only when the
operator put it in ``imap_password_envs`` — checked on the API and again on every connection, so a
row written into the database by other means never sends an unlisted variable either.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Collection

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from mailbridge.crypto.keyring import Keyring, KeyringError
from mailbridge.domain.db import transaction
from mailbridge.domain.errors import Invalid
from mailbridge.domain.models import Mailbox

log = logging.getLogger(__name__)


class CredentialError(Exception):
    """The mailbox's password cannot be had as configured: the poller says why and waits."""


def password_purpose(practice_id: int, name: str) -> str:
    return f"mailbox:{practice_id}:{name}:password"


def seal_password(session: Session, keyring: Keyring, practice_id: int, name: str, password: str) -> str:
    return keyring.seal(session, practice_id, password.encode("utf-8"), password_purpose(practice_id, name))


def check_env_allowed(name: str, allowed: Collection[str]) -> None:
    """422 ``password_env_not_allowed`` unless the operator listed the variable."""
    if name not in allowed:
        raise Invalid(
            "password_env_not_allowed",
            "password_env must be one of the variables the operator allows (imap_password_envs); "
            "give the password itself instead: it is stored encrypted and never returned",
            "password_env",
        )


def _reseal(session: Session, keyring: Keyring, row: Mailbox) -> str:
    """A plaintext password left from before migration 0004: sealed now, the plaintext column emptied."""
    plain = row.password or ""
    row.password_sealed = seal_password(session, keyring, row.practice_id, row.name, plain)
    row.password = None
    log.info("imap_password_sealed", extra={"mailbox": row.name, "practice_id": row.practice_id})
    return plain


def reseal_legacy_passwords(sessions: sessionmaker[Session], keyring: Keyring) -> int:
    """Run by ``db upgrade`` and ``serve``: every plaintext password sealed. Returns how many."""
    with transaction(sessions) as session:
        rows = list(session.scalars(select(Mailbox).where(Mailbox.password.is_not(None))))
        for row in rows:
            _reseal(session, keyring, row)
        return len(rows)


class MailboxCredentials:
    """What the poller asks when it connects: the row is read then, so a password changed through
    the API applies at the next connection without a restart."""

    def __init__(
        self, sessions: sessionmaker[Session], keyring: Keyring, allowed_envs: Collection[str]
    ) -> None:
        self.sessions = sessions
        self.keyring = keyring
        self.allowed_envs = frozenset(allowed_envs)

    def password(self, mailbox_id: int) -> str:
        """Blocking (database): call it from a thread. Raises ``CredentialError``."""
        with transaction(self.sessions) as session:
            row = session.get(Mailbox, mailbox_id)
            if row is None:
                raise CredentialError("the mailbox was deleted")
            if row.password_env:
                if row.password_env not in self.allowed_envs:
                    raise CredentialError(
                        f"password_env {row.password_env} is not one the operator allows (imap_password_envs)"
                    )
                value = os.environ.get(row.password_env)
                if not value:
                    raise CredentialError(f"environment variable {row.password_env} is not set")
                return value
            if row.password:
                return _reseal(session, self.keyring, row)
            if row.password_sealed:
                try:
                    opened = self.keyring.open(
                        session, row.password_sealed, password_purpose(row.practice_id, row.name)
                    )
                except KeyringError as exc:
                    raise CredentialError(f"the stored password cannot be opened: {exc}") from None
                return opened.decode("utf-8")
            raise CredentialError("no password configured")
