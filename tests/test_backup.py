"""deploy.md's backup and restore, run as written: a held reply and an attachment read from the restore.

The two bash blocks of the *Backups* section are executed from the directory holding ``var/`` (a
node on SQLite with its objects on local disk, encrypted), then a fresh mailbridge on the restored
data directory shows the held reply (its raw copy decrypted with the restored master key),
releases it, and serves the attachment of a reply posted before the backup.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from mailbridge.api.app import create_app
from mailbridge.domain.models import Attachment
from mailbridge.settings import load_settings
from mailbridge.wiring import build_services
from tests import filemakers as fm
from tests.conftest import API_KEY, make_services, seed, static_resolver
from tests.mailhelpers import live_server, open_conversation, reply_address, reply_message, send
from tests.postfix import DEPLOY, block_after
from tests.test_attachments_e2e import with_files

BASE = "/api/v1/practices/acme"
UNALIGNED = "relay@elsewhere.test"


def run_block(marker: str, cwd: Path) -> None:
    block = block_after(DEPLOY.read_text(encoding="utf-8"), marker)
    assert block.lang == "bash"
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAILBRIDGE_")}
    env["PATH"] = f"{Path(sys.executable).parent}:{env.get('PATH', '')}"
    result = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", block.body], cwd=cwd, env=env, capture_output=True, timeout=120
    )
    assert result.returncode == 0, result.stderr.decode(errors="replace")


def test_backup_and_restore_as_deploy_md_says(tmp_path: Path) -> None:
    for tool in ("sqlite3", "rsync"):
        if shutil.which(tool) is None:
            pytest.fail(f"{tool} is missing (make test-system-deps installs it)")
    services = make_services(tmp_path, f"sqlite:///{tmp_path / 'var' / 'mailbridge.db'}")
    seed(services)
    conv = open_conversation(services)
    address = reply_address(services, conv, "alice")
    scan, pdf = fm.png(), fm.pdf()
    posted = with_files(
        reply_message("alice@client.test", address, "My receipt, attached."),
        [("receipt.pdf", "application/pdf", pdf)],
    )
    staff_address = reply_address(services, conv, "dr-smith")
    held = with_files(
        reply_message("dr.smith@acme.test", staff_address, "The scan, held for review please."),
        [("scan.png", "image/png", scan)],
    )
    with live_server(services) as server:
        assert send(server, posted, "alice@client.test", address)[0] == 250
        assert send(server, held, UNALIGNED, staff_address)[0] == 250
    with services.sessions() as session:
        receipt = session.scalars(select(Attachment)).one()

    run_block("Back up a node on SQLite", tmp_path)  # while the node still runs
    services.close()
    run_block("Restore into a fresh data directory", tmp_path)

    restored = build_services(
        load_settings(data_dir=tmp_path / "restored", api_key=API_KEY, smtp_listen="127.0.0.1:0"),
        resolver=static_resolver(),
    )
    try:
        with TestClient(create_app(restored), headers={"Authorization": f"Bearer {API_KEY}"}) as api:
            got = api.get(f"{BASE}/attachments/{receipt.id}?as=dr-smith")
            assert got.status_code == 200 and got.content == pdf
            (item,) = api.get(f"{BASE}/quarantine").json()["items"]
            detail: Any = api.get(f"{BASE}/quarantine/{item['id']}").json()
            assert detail["body"] == "The scan, held for review please."
            released = api.post(f"{BASE}/quarantine/{item['id']}/release?as=dr-smith", json={})
            assert released.status_code == 201, released.text
            file = released.json()["attachments"][0]
            assert api.get(f"{BASE}/attachments/{file['id']}?as=dr-smith").content == scan
    finally:
        restored.close()
