"""Nodes of one deployment must share the token secret and the master key: checked at start-up.

A node started with another ``MAILBRIDGE_TOKEN_SECRET`` issues reply addresses no other node
accepts; one with another master key cannot open what the others sealed. Both fail quietly and late
unless caught here: the first node to start records each secret's fingerprint in the database, and
a node whose fingerprints differ refuses to start with one line naming the problem.
"""

from __future__ import annotations

from sqlalchemy.orm import Session

from mailbridge.crypto.keyring import Keyring
from mailbridge.domain.models import PlatformState, utcnow

TOKEN_SECRET = "token_secret_fingerprint"
MASTER_KEY = "master_key_fingerprint"


class Disagreement(Exception):
    """This node's secrets are not the deployment's: the message says which and what to copy."""


def check_agreement(session: Session, token_fingerprint: str, keyring: Keyring) -> None:
    """Record the fingerprints on first start; afterwards, refuse a node whose secrets differ."""
    token = session.get(PlatformState, TOKEN_SECRET)
    if token is None:
        session.add(PlatformState(name=TOKEN_SECRET, value=token_fingerprint, updated_at=utcnow()))
    elif token.value != token_fingerprint:
        raise Disagreement(
            "token_secret: this node's token secret differs from the one the other nodes use "
            f"(fingerprint {token_fingerprint}, the database expects {token.value}); copy "
            "DATA_DIR/secrets/token.key from the first node or set the same MAILBRIDGE_TOKEN_SECRET"
        )
    known = {m.id for m in keyring.masters}
    master = session.get(PlatformState, MASTER_KEY)
    if master is None:
        session.add(PlatformState(name=MASTER_KEY, value=keyring.master.id, updated_at=utcnow()))
    elif master.value not in known:
        raise Disagreement(
            "master_key: this node's master key differs from the deployment's "
            f"(fingerprint {keyring.master.id}, the database expects {master.value}); copy "
            "DATA_DIR/secrets/master.key from the first node or set the same MAILBRIDGE_MASTER_KEY"
        )
    missing = keyring.unknown_master_ids(session)
    if missing:
        raise Disagreement(
            f"master_key: data keys are wrapped by master key {', '.join(missing)}, which this node "
            "lacks; give it that key (as a previous key after the current one)"
        )


def record_master(session: Session, keyring: Keyring, master_id: str) -> None:
    """After a master-key rotation: the deployment's fingerprint becomes the new key's."""
    row = session.get(PlatformState, MASTER_KEY)
    if row is None:
        session.add(PlatformState(name=MASTER_KEY, value=master_id, updated_at=utcnow()))
    else:
        row.value = master_id
