"""A reply by email notifies exactly as a post from the app does (issue 17 item 4).

The pipeline's final transaction reads the mutes and the suppressions with the conversation, in one
statement, and writes the outbox rows as one INSERT; the app's post reads them in the fan-out. Both
must give every participant the same row: muted, suppressed (an address stored in capitals, and one
SQL's ``lower`` cannot fold, looked up apart), or notified.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from mailbridge.domain import conversations as convs
from mailbridge.domain import directory, mutes, suppressions
from mailbridge.domain.db import transaction
from mailbridge.domain.models import (
    InboundState,
    Message,
    MessageSource,
    Outbox,
    OutboxKind,
    StaffRole,
    SuppressionReason,
    User,
    UserKind,
)
from mailbridge.domain.suppressions import SuppressionPolicy
from tests.mailhelpers import open_conversation, reply_address, reply_message
from tests.test_pipeline_races import run_reply

STAFF = {"dr-lang": "Dr.Lang@ACME.test", "dr-ozil": "Dr.Özil@Acme.test"}


def staff(services: Any, external_id: str, email: str) -> None:
    with transaction(services.sessions) as session:
        p = directory.get_practice(session, "acme")
        directory.upsert_user(
            session,
            p,
            external_id,
            email=email,
            alt_emails=[],
            name=external_id,
            kind=UserKind.staff,
            role=StaffRole.provider,
            active=True,
            locale="en",
        )


def rows_for(services: Any, message_id: str) -> dict[str, tuple[str, str | None]]:
    """Per recipient's external id: the outbox row's state and answer."""
    with services.sessions() as session:
        found = session.execute(
            select(Outbox.recipient_id, Outbox.state, Outbox.last_answer).where(
                Outbox.kind == OutboxKind.notification, Outbox.message_id == message_id
            )
        ).all()
        names = dict(session.execute(select(User.id, User.external_id)).all())
    return {names[who]: (state.value, (answer or "").split(" (since")[0]) for who, state, answer in found}


def test_a_reply_by_email_is_fanned_out_as_an_app_post_is(
    seeded: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for external_id, email in STAFF.items():
        staff(seeded, external_id, email)
    conversation = open_conversation(
        seeded, participants=("alice", "dr-jones", "billing", "frontdesk", "dr-lang", "dr-ozil")
    )
    with transaction(seeded.sessions) as session:
        p = directory.get_practice(session, "acme")
        mutes.mute(session, p.id, directory.get_user(session, p, "dr-jones").id, conversation, "api")
        for address, reason in (
            ("billing@acme.test", SuppressionReason.hard_bounce),
            ("dr.lang@acme.test", SuppressionReason.complaint),
            ("dr.özil@acme.test", SuppressionReason.hard_bounce),
        ):
            suppressions.record(
                session,
                p.id,
                address,
                reason,
                status="5.1.1" if reason == SuppressionReason.hard_bounce else None,
                diagnostic=None,
                outbox_id=None,
                policy=SuppressionPolicy(),
            )
    address = reply_address(seeded, conversation, "alice")
    outcome = run_reply(
        seeded,
        tmp_path,
        address,
        reply_message("alice@client.test", address, "Tuesday is fine."),
        monkeypatch,
    )
    assert outcome.state == InboundState.posted, outcome
    assert outcome.message_id is not None
    expected = {
        "dr-smith": ("pending", ""),
        "dr-jones": ("suppressed", "skipped: conversation_muted"),
        "billing": ("suppressed", "suppressed: hard_bounce 5.1.1"),
        "frontdesk": ("pending", ""),
        "dr-lang": ("suppressed", "suppressed: complaint"),
        "dr-ozil": ("suppressed", "suppressed: hard_bounce 5.1.1"),
    }
    assert rows_for(seeded, outcome.message_id) == expected
    with transaction(seeded.sessions) as session:  # the same post from the app: the same rows
        p = directory.get_practice(session, "acme")
        alice = directory.get_user(session, p, "alice")
        posted = convs.post_message(
            session, p, convs.get_conversation(session, p, conversation), alice, body="And Wednesday?"
        )
        assert posted.source == MessageSource.app and posted.author.external_id == "alice"
        app_id = posted.id
    assert rows_for(seeded, app_id) == expected
    with seeded.sessions() as session:
        assert (
            session.scalar(select(Message.body).where(Message.id == outcome.message_id)) == "Tuesday is fine."
        )


def test_an_internal_note_by_email_goes_to_staff_only_as_from_the_app(
    seeded: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    conversation = open_conversation(seeded, participants=("alice", "dr-jones", "billing"))
    with transaction(seeded.sessions) as session:
        p = directory.get_practice(session, "acme")
        mutes.mute(session, p.id, directory.get_user(session, p, "billing").id, conversation, "api")
    address = reply_address(seeded, conversation, "dr-smith")
    note = reply_message("dr.smith@acme.test", address, "#note\nShe sounded stressed, follow up.")
    outcome = run_reply(seeded, tmp_path, address, note, monkeypatch)
    assert outcome.state == InboundState.posted and outcome.message_id is not None
    expected = {"dr-jones": ("pending", ""), "billing": ("suppressed", "skipped: conversation_muted")}
    assert rows_for(seeded, outcome.message_id) == expected  # never the client
    with transaction(seeded.sessions) as session:
        p = directory.get_practice(session, "acme")
        posted = convs.post_message(
            session,
            p,
            convs.get_conversation(session, p, conversation),
            directory.get_user(session, p, "dr-smith"),
            body="And from the app.",
            internal=True,
        )
        app_id = posted.id
    assert rows_for(seeded, app_id) == expected
