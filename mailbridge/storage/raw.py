"""Where an inbound message's raw bytes are read back: one function, so that moving raw mail from
the data directory to object storage (behind ``BlobStore``) changes this module and nothing else."""

from __future__ import annotations

from pathlib import Path

from mailbridge.domain.errors import Conflict
from mailbridge.domain.models import InboundLog


def raw_available(row: InboundLog) -> bool:
    return bool(row.raw_path) and Path(str(row.raw_path)).exists()


def read_raw(row: InboundLog) -> bytes:
    """The message as it arrived; Conflict ``raw_expired`` once it is no longer kept."""
    if not row.raw_path or not Path(row.raw_path).exists():
        raise Conflict("raw_expired", "the raw message is no longer kept")
    return Path(row.raw_path).read_bytes()


def forget_raw(row: InboundLog) -> None:
    """Delete the raw copy (its content now lives in a posted message, or was discarded)."""
    if row.raw_path:
        Path(row.raw_path).unlink(missing_ok=True)
        row.raw_path = None
