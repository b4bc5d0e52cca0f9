"""``mailbridge keys rotate-master``: a new master key re-wraps every data key; no object is re-encrypted.

The master key only wraps the per-practice data keys (``crypto.keyring``), and every sealed object
and secret names its data key, so rotation rewrites a handful of ``data_keys`` rows. The key file
is written *before* the database changes (new key first, the old one kept as a previous key): if
the command dies in between, the old key still opens everything; the other way round, data keys
would be wrapped by a key that exists nowhere.

Several nodes, without a moment where one of them cannot open a data key:

1. ``mailbridge keys rotate-master --prepare`` on one node adds a new key to the file as an
   *accepted* key (after the current one, marked ``# prepared``); copy the file to every node and
   restart them one by one: they still wrap with the old key and can already unwrap with the new.
2. ``mailbridge keys rotate-master`` on one node promotes the prepared key: data keys are re-wrapped
   under it, the deployment's fingerprint becomes its (``platform_state``), the file lists it first
   and keeps the old one as a previous key. Copy the file to every node and restart them.
3. Once every node runs with that file, the old key can be removed from it (a node that still
   needed it would refuse to start, naming it).

Without ``--prepare`` (one node, or a key believed leaked) step 2 makes a fresh key directly.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from mailbridge.crypto.agreement import record_master
from mailbridge.crypto.keyring import Keyring, new_master_key_text, parse_master_keys

PREPARED = "# prepared: promoted by `mailbridge keys rotate-master`"
PREVIOUS = "# previous: remove once every node has this file"


def _lines(path: Path) -> list[str]:
    return [line.strip() for line in path.read_text(encoding="ascii").splitlines() if line.strip()]


def prepared_key(path: Path) -> str | None:
    """The key line following a ``# prepared`` marker, if the file has one."""
    lines = _lines(path)
    for index, line in enumerate(lines[:-1]):
        if line == PREPARED:
            return lines[index + 1]
    return None


def _write(path: Path, lines: list[str]) -> None:
    """Atomically (temporary file, fsync, rename, directory fsync), 0600."""
    tmp = path.with_name(path.name + ".new")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="ascii") as handle:
        handle.write("\n".join(lines) + "\n")
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    directory = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


def rotate_master_command(services: Any, prepare: bool = False) -> int:
    """Self-contained for the ``keys`` command group: returns the process exit code."""
    from mailbridge.domain.db import transaction

    settings = services.settings
    if os.environ.get("MAILBRIDGE_MASTER_KEY"):
        print(
            "mailbridge: the master key comes from MAILBRIDGE_MASTER_KEY; rotate-master manages the key "
            "file only. Unset it and use DATA_DIR/secrets/master.key (or master_key_file), or follow "
            "deploy.md's steps for keys kept in the environment.",
            file=sys.stderr,
        )
        return 2
    path: Path = settings.effective_master_key_file
    current = _lines(path)
    keys = [line for line in current if not line.startswith("#")]
    if prepare:
        if prepared_key(path) is not None:
            print("mailbridge: a prepared key is already in the file; run rotate-master to promote it")
            return 0
        new_text = new_master_key_text()
        _write(path, [keys[0], PREPARED, new_text, *keys[1:]])
        print(
            f"mailbridge: prepared master key {parse_master_keys(new_text)[0].id} (accepted, not yet used); "
            f"copy {path} to every node, restart them, then run `mailbridge keys rotate-master` on one"
        )
        return 0
    new_text = prepared_key(path) or new_master_key_text()
    new = parse_master_keys(new_text)[0]
    old = [k for k in keys if k != new_text]
    _write(path, [new_text, PREVIOUS, *old])  # first: the old key still opens everything
    keyring = Keyring([new, *(m for m in services.keyring.masters if m.id != new.id)])
    with transaction(services.sessions) as session:
        count = keyring.rewrap_all(session, new)
        record_master(session, keyring, new.id)
    print(
        f"mailbridge: master key {new.id} now wraps {count} data keys (objects untouched); the previous "
        f"key stays in {path} as a previous key: copy the file to every node and restart them"
    )
    return 0
