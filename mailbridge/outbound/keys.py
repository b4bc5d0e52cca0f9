"""Per-practice DKIM keys on disk (0600), loaded once into signers; ``mailbridge dkim genkey`` makes them."""

from __future__ import annotations

import os
import sys
import threading
from datetime import date
from pathlib import Path
from typing import Any

from mailbridge.domain.models import Practice
from mailbridge.domain.practice_settings import PracticeSettings
from mailbridge.outbound.sign import (
    DkimKey,
    DkimSigner,
    dns_txt_record,
    generate_ed25519_key,
    generate_rsa_key,
)


class KeyStore:
    def __init__(self, root: Path) -> None:
        self.root = root
        self._signers: dict[tuple[str, str], DkimSigner | None] = {}
        self._lock = threading.Lock()

    def _paths(self, slug: str, selector: str) -> tuple[Path, Path]:
        folder = self.root / slug
        return folder / f"{selector}.rsa.pem", folder / f"{selector}.ed25519.pem"

    def signer_for(self, practice: Practice, settings: PracticeSettings) -> DkimSigner | None:
        """RSA-2048 always, ed25519 as a second signature when its key exists (RFC 8463)."""
        selector = settings.dkim_selector
        if not selector:
            return None
        key = (practice.slug, selector)
        with self._lock:
            if key not in self._signers:
                rsa, ed = self._paths(practice.slug, selector)
                domain = practice.notify_from.rpartition("@")[2].lower()
                keys = []
                if rsa.exists():
                    keys.append(DkimKey(domain=domain, selector=selector, private_pem=rsa.read_bytes()))
                if ed.exists():
                    keys.append(
                        DkimKey(
                            domain=domain,
                            selector=selector + "e",
                            private_pem=ed.read_bytes(),
                            algorithm="ed25519-sha256",
                        )
                    )
                self._signers[key] = DkimSigner(keys) if keys else None
            return self._signers[key]

    def write(self, slug: str, selector: str, pem: bytes, algorithm: str) -> Path:
        rsa, ed = self._paths(slug, selector)
        path = rsa if algorithm == "rsa" else ed
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(pem)
        with self._lock:
            self._signers.pop((slug, selector), None)
        return path


def genkey_command(services: Any, slug: str, selector: str | None, ed25519: bool) -> int:
    from mailbridge.domain import directory
    from mailbridge.domain.db import transaction
    from mailbridge.domain.errors import NotFound

    selector = selector or f"mb{date.today():%Y%m}"
    store = KeyStore(services.settings.data_dir / "dkim")
    try:
        with transaction(services.sessions) as session:
            practice = directory.get_practice(session, slug)
            domain = practice.notify_from.rpartition("@")[2].lower()
            rsa_pem = generate_rsa_key(2048)
            store.write(slug, selector, rsa_pem, "rsa")
            records = [dns_txt_record(rsa_pem, selector, domain)]
            if ed25519:
                ed_pem = generate_ed25519_key()
                store.write(slug, selector, ed_pem, "ed25519")
                records.append(dns_txt_record(ed_pem, selector + "e", domain))
            settings = dict(practice.settings or {})
            settings["dkim_selector"] = selector
            practice.settings = settings
    except NotFound as exc:
        print(f"mailbridge: {exc.detail}", file=sys.stderr)
        return 2
    print("Publish these DNS records, then notifications are DKIM-signed:")
    for record in records:
        print(record)
    return 0
