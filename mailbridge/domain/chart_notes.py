"""Quick notes (seed 003): a staff member saves a thread with one client to that client's chart notes.

"You can create a quick note for an entire message thread easily, adding to the client chart note
records! ... when only 1 client is included (+ unlimited staff). Group messages (2+ clients) do not
support this feature." The rule is ``policy.rules.can_quick_note``; this module writes the record and
announces it (``chart_note.created``) for the practice's records system.

When no text is given, the note is prefilled from the thread: each message's author, time (ISO 8601,
UTC: a chart is read across time zones and locales) and text, its attachments listed by name.
Internal notes are included, marked as such: chart notes are staff-only records, as internal notes
are. Deleted messages are not (deletion is permanent). A chart note is the client's record, kept by
the practice: deleting the conversation later does not remove it (its ``conversation`` becomes null
only if the row itself goes).
"""

from __future__ import annotations

from datetime import UTC

from sqlalchemy import select
from sqlalchemy.orm import Session

from mailbridge.domain import events, pagination
from mailbridge.domain.conversations import (
    conversation_not_found,
    messages_for,
    require_active_account,
    situation,
)
from mailbridge.domain.errors import Forbidden, Invalid
from mailbridge.domain.models import ChartNote, Conversation, Message, Practice, User, UserKind
from mailbridge.policy.rules import can_quick_note, can_read

MAX_TITLE = 255
MAX_TEXT = 200_000
NOTE_KEYS = (pagination.Key(ChartNote.created_at, "created_at"), pagination.Key(ChartNote.id, "id"))


def prefill(conversation: Conversation, messages: list[Message]) -> str:
    """The thread as plain text, oldest message first."""
    blocks = [conversation.subject]
    for message in messages:
        when = message.created_at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        head = f"{message.author.name} — {when}"
        if message.internal:
            head += " (internal note)"
        lines = [head]
        if message.body.strip():
            lines.append(message.body.strip())
        if message.attachments:
            lines.append("Attachments: " + ", ".join(a.filename for a in message.attachments))
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)


def create_quick_note(
    session: Session,
    practice: Practice,
    conversation: Conversation,
    author: User,
    *,
    title: str | None,
    text: str | None,
) -> ChartNote:
    """Judge (``can_quick_note``), write the chart note of the thread's one client, announce it."""
    require_active_account(author)
    snapshot = situation(session, author, conversation)
    if not can_read(snapshot).allowed:  # unreadable: answered as a conversation that does not exist
        raise conversation_not_found()
    verdict = can_quick_note(snapshot)
    if not verdict.allowed:
        raise Forbidden(verdict.reason, "not allowed by the quick note's rules")
    [client] = [p.user for p in conversation.active_participants() if p.user.kind == UserKind.client]
    if text is None:
        text = prefill(conversation, messages_for(session, conversation, author))
    elif not text.strip():
        raise Invalid("empty_note", "text: empty; leave it out to prefill it from the thread", "text")
    title = (title if title is not None else conversation.subject).strip() or "Quick note"
    if len(title) > MAX_TITLE:
        raise Invalid("title_too_long", f"title longer than {MAX_TITLE} characters", "title")
    if len(text) > MAX_TEXT:
        raise Invalid("text_too_long", f"text longer than {MAX_TEXT} characters", "text")
    note = ChartNote(
        practice_id=practice.id,
        client_id=client.id,
        conversation_id=conversation.id,
        author_id=author.id,
        title=title,
        text=text,
    )
    note.client, note.author = client, author
    session.add(note)
    session.flush()
    events.chart_note_created(session, note, client, author)
    return note


def notes_page(
    session: Session,
    practice: Practice,
    client: User,
    *,
    limit: int = pagination.DEFAULT_LIMIT,
    cursor: str | None = None,
) -> pagination.Page[ChartNote]:
    """A client's chart notes, newest first."""
    if client.kind != UserKind.client:
        raise Invalid("not_a_client", "chart notes belong to clients", "user")
    query = select(ChartNote).where(ChartNote.practice_id == practice.id, ChartNote.client_id == client.id)
    return pagination.page(session, query, NOTE_KEYS, limit=limit, cursor=cursor, descending=True)
