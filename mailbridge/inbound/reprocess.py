"""Run the pipeline again on a stored message: after a directory fix, a refused reply can still land.

The stored raw bytes go through ``pipeline.run`` as a new run through the same door type (SMTP,
LMTP or IMAP), with the original envelope: a new inbound row, every step and the policy judged now.
The recipient is decided again from what the log kept: the reply token's id for a reply (the
address itself is stored redacted), the full address for a practice address or a bounce.

Only refused or deferred rows whose raw copy is still kept can be reprocessed; a held message is
released or discarded instead. The two rows name each other (``reprocess_of``/``reprocessed_as``
in their details), and once the new run posted, the old raw copy goes (its content lives in the
message now).
"""

from __future__ import annotations

import os

from sqlalchemy import select
from sqlalchemy.orm import Session

from mailbridge.domain.db import transaction, writer_gate
from mailbridge.domain.errors import Conflict, NotFound
from mailbridge.domain.models import InboundLog, InboundState, Mailbox, ReplyToken, new_id
from mailbridge.inbound import pipeline
from mailbridge.inbound.envelope import Target, decide_recipient
from mailbridge.inbound.tokens import TokenIssuer
from mailbridge.storage.raw import raw_available, read_raw
from mailbridge.storage.vault import Vault

REPROCESSABLE = frozenset({InboundState.rejected, InboundState.deferred, InboundState.received})
KEEPS_RAW = frozenset({InboundState.rejected, InboundState.deferred, InboundState.quarantined})


def can_reprocess(vault: Vault, row: InboundLog) -> bool:
    return row.state in REPROCESSABLE and raw_available(vault, row)


def _target(session: Session, row: InboundLog, tokens: TokenIssuer, verp_secret: bytes) -> Target:
    assert row.practice_id is not None
    if row.token_id is not None:
        token = session.get(ReplyToken, row.token_id)
        if token is None or token.practice_id != row.practice_id:
            raise Conflict("not_reprocessable", "the reply address of this message no longer exists")
        return Target(
            "reply",
            row.practice_id,
            row.rcpt,
            token_id=token.id,
            user_id=token.user_id,
            conversation_id=token.conversation_id,
        )
    decision = decide_recipient(session, tokens, verp_secret, row.rcpt)
    if decision.target is None or decision.target.practice_id != row.practice_id:
        raise Conflict("not_reprocessable", f"the recipient cannot be decided again ({decision.reason})")
    return decision.target


def reprocess(
    deps: pipeline.Deps,
    tokens: TokenIssuer,
    verp_secret: bytes,
    vault: Vault,
    practice_id: int,
    inbound_id: str,
) -> pipeline.Outcome:
    """A new pipeline run on the stored raw message of *inbound_id*; the outcome as SMTP would answer."""
    with transaction(deps.sessions) as session:
        row = session.get(InboundLog, inbound_id)
        if row is None or row.practice_id != practice_id:
            raise NotFound("inbound_not_found", "inbound message not found")
        if row.state not in REPROCESSABLE:
            raise Conflict("not_reprocessable", f"a {row.state.value} message is not reprocessed")
        raw = read_raw(vault, row)
        target = _target(session, row, tokens, verp_secret)
        trusted: tuple[str, ...] = ()
        mailbox_name = (row.details or {}).get("mailbox")
        if row.door == "imap" and mailbox_name:
            mailbox = session.scalar(
                select(Mailbox).where(Mailbox.practice_id == practice_id, Mailbox.name == str(mailbox_name))
            )
            if mailbox is not None and mailbox.trusted_authserv_id:
                trusted = (mailbox.trusted_authserv_id,)
        envelope = pipeline.Envelope(
            door=row.door,
            peer=row.peer,
            helo=row.helo,
            mail_from=row.mail_from,
            target=target,
            trusted_authserv_ids=trusted,
        )
    spool = deps.raw_dir.parent / "spool"
    spool.mkdir(parents=True, exist_ok=True)
    path = spool / f"reprocess-{new_id()}.eml"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(raw)
    outcome = pipeline.run(deps, envelope, path, len(raw))
    with writer_gate(deps.sessions), transaction(deps.sessions) as session:
        old = session.get_one(InboundLog, inbound_id)
        old.details = {**(old.details or {}), "reprocessed_as": outcome.inbound_id}
        if outcome.inbound_id:
            new = session.get(InboundLog, outcome.inbound_id)
            if new is not None:
                new.details = {**(new.details or {}), "reprocess_of": inbound_id}
    if outcome.state not in KEEPS_RAW:  # the content now lives in the posted message (or was a duplicate)
        from mailbridge.inbound.quarantine import forget_raw

        forget_raw(deps.sessions, vault, [inbound_id])
    return outcome
