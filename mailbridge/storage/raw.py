"""Where an inbound message's raw bytes are read back for the console and reprocessing: through the
object store (``storage.vault``), whichever node received the message."""

from __future__ import annotations

from mailbridge.domain.erasure import raw_refs
from mailbridge.domain.errors import Conflict
from mailbridge.domain.models import InboundLog
from mailbridge.storage.vault import Vault


def raw_ref(row: InboundLog) -> str | None:
    """The reference of the row's raw copy: its object, or a pre-upgrade path."""
    refs = raw_refs(row)
    return refs[0] if refs else None


def raw_available(vault: Vault, row: InboundLog) -> bool:
    ref = raw_ref(row)
    return ref is not None and vault.exists(ref)


def read_raw(vault: Vault, row: InboundLog) -> bytes:
    """The message as it arrived; Conflict ``raw_expired`` once it is no longer kept."""
    ref = raw_ref(row)
    if ref is None or not vault.exists(ref):
        raise Conflict("raw_expired", "the raw message is no longer kept")
    return vault.read_bytes(ref)


def read_raw_head(vault: Vault, row: InboundLog, limit: int) -> bytes | None:
    """At most *limit* bytes from the start of the raw copy (the console shows the header block and a
    bounded view: a 100 MB message is never read whole for that); None once it is no longer kept."""
    ref = raw_ref(row)
    if ref is None or not vault.exists(ref):
        return None
    with vault.open(ref) as handle:
        return handle.read(limit)
