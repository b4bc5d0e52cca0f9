"""Encryption at rest: data keys wrapped by the master key, sealed secrets bound to their place,
nodes that must agree on their secrets, and a schema whose migrations match the models."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from mailbridge.crypto.agreement import Disagreement, check_agreement
from mailbridge.crypto.keyring import (
    Keyring,
    KeyringError,
    MasterKey,
    load_master_keys,
    new_master_key_text,
    parse_master_keys,
)
from mailbridge.domain.db import transaction
from mailbridge.domain.models import Base, DataKey, Practice
from mailbridge.inbound.tokens import TokenIssuer


def _practice(session: Any, slug: str) -> int:
    practice = Practice(slug=slug, name=slug, reply_domain=f"reply.{slug}.test", notify_from=f"n@{slug}.test")
    session.add(practice)
    session.flush()
    return practice.id


def test_sealed_secret_round_trip_and_bound_to_its_place(services: Any) -> None:
    with transaction(services.sessions) as session:
        a, b = _practice(session, "a"), _practice(session, "b")
        sealed = services.keyring.seal(session, a, b"imap password", f"mailbox:{a}:inbox:password")
        assert b"imap password" not in sealed.encode()
        assert services.keyring.open(session, sealed, f"mailbox:{a}:inbox:password") == b"imap password"
        # the same value copied into another practice's row, or another column, does not open
        for elsewhere in (f"mailbox:{b}:inbox:password", f"dkim:{a}:s1"):
            with pytest.raises(KeyringError):
                services.keyring.open(session, sealed, elsewhere)
        # one changed byte is an error, never garbage
        head, _, body = sealed.rpartition(".")
        flipped = body[:-3] + ("A" if body[-3] != "A" else "B") + body[-2:]
        with pytest.raises(KeyringError):
            services.keyring.open(session, f"{head}.{flipped}", f"mailbox:{a}:inbox:password")
        # one data key per practice
        assert services.keyring.data_key(session, a).id != services.keyring.data_key(session, b).id


def test_another_node_opens_with_the_same_master_and_not_with_another(services: Any) -> None:
    with transaction(services.sessions) as session:
        pid = _practice(session, "a")
        sealed = services.keyring.seal(session, pid, b"secret", "p")
    same = Keyring(services.keyring.masters)  # a second node: nothing cached
    other = Keyring([MasterKey(os.urandom(32))])
    with transaction(services.sessions) as session:
        assert same.open(session, sealed, "p") == b"secret"
        with pytest.raises(KeyringError, match="does not have"):
            other.open(session, sealed, "p")


def test_master_rotation_rewraps_data_keys_only(services: Any) -> None:
    with transaction(services.sessions) as session:
        pid = _practice(session, "a")
        sealed = services.keyring.seal(session, pid, b"secret", "p")
    new = MasterKey(os.urandom(32))
    with transaction(services.sessions) as session:
        assert services.keyring.rewrap_all(session, new) == 1
    with transaction(services.sessions) as session:
        assert {k.master_id for k in session.query(DataKey)} == {new.id}
        assert Keyring([new]).open(session, sealed, "p") == b"secret"  # the sealed value is unchanged
        with pytest.raises(KeyringError):
            Keyring(services.keyring.masters).open(session, sealed, "p")


def test_master_key_file_created_once_private_and_parsed(tmp_path: Path) -> None:
    path = tmp_path / "secrets" / "master.key"
    first = load_master_keys("", path)
    assert oct(path.stat().st_mode)[-3:] == "600"
    assert load_master_keys("", path) == first  # never overwritten
    current, previous = new_master_key_text(), os.urandom(32).hex()
    keys = parse_master_keys(f"{current}\n{previous}\n")
    assert len(keys) == 2 and keys[1].key == bytes.fromhex(previous)
    with pytest.raises(KeyringError):
        parse_master_keys("too-short")


def test_nodes_with_other_secrets_refuse_to_start(services: Any) -> None:
    keyring = services.keyring
    with transaction(services.sessions) as session:
        check_agreement(session, services.tokens.fingerprint, keyring)  # first node records
    with transaction(services.sessions) as session:
        check_agreement(session, services.tokens.fingerprint, keyring)  # same secrets: fine
    with transaction(services.sessions) as session, pytest.raises(Disagreement, match="token_secret"):
        check_agreement(session, TokenIssuer(b"another-secret-of-32-bytes-xxxxx").fingerprint, keyring)
    with transaction(services.sessions) as session, pytest.raises(Disagreement, match="master_key"):
        check_agreement(session, services.tokens.fingerprint, Keyring([MasterKey(os.urandom(32))]))


def test_serve_with_another_token_secret_exits_2_with_one_line(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAILBRIDGE_")}
    env |= {"MAILBRIDGE_DATA_DIR": str(tmp_path), "MAILBRIDGE_API_KEY": "k" * 32}
    cli = [sys.executable, "-m", "mailbridge.cli"]
    subprocess.run([*cli, "db", "upgrade"], env=env, check=True, capture_output=True, timeout=60)
    from mailbridge.domain.db import make_engine
    from mailbridge.domain.db import make_session_factory as factory
    from mailbridge.wiring import _load_secret

    engine = make_engine(f"sqlite:///{tmp_path / 'mailbridge.db'}")
    with transaction(factory(engine)) as session:  # the first node's fingerprints
        secret = _load_secret(tmp_path / "secrets" / "token.key", "")
        masters = load_master_keys("", tmp_path / "secrets" / "master.key")
        check_agreement(session, TokenIssuer(secret).fingerprint, Keyring(masters))
    engine.dispose()
    env["MAILBRIDGE_TOKEN_SECRET"] = "a-different-secret-for-this-node"
    result = subprocess.run([*cli, "serve", "--no-smtp"], env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "token_secret" in lines[0] and "token.key" in lines[0]


def test_migrations_match_the_models(services: Any) -> None:
    """Every model change comes with its migration: autogenerate finds nothing left to do."""
    with services.engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    assert diff == []
