"""An event as the JSON an endpoint receives: ``{"type", "timestamp", "data"}`` (Standard Webhooks).

The stored event holds ids and codes; here they become what the app knows (the practice's slug,
users' external ids), and content is added only for an endpoint with ``include_content``: a
message's subject, text and attachment metadata, a chart note's title and text. Content is read now,
at delivery, so a message deleted meanwhile is delivered as ``"deleted": true`` without its text.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from mailbridge.domain.models import ChartNote, Conversation, Event, Message, Practice, User


def _pairs(session: Session, query: Any, keys: set[Any]) -> dict[Any, Any]:
    """A two-column query as a dict; no query at all for no keys."""
    return {row[0]: row[1] for row in session.execute(query)} if keys else {}


class Renderer:
    """Renders a batch of events; what they refer to is loaded once per batch (a few queries)."""

    def __init__(self, session: Session, events: Sequence[Event], content_for: set[int]) -> None:
        self.session = session
        practice_ids = {e.practice_id for e in events if e.practice_id is not None}
        self.practices: dict[int, str] = _pairs(
            session, select(Practice.id, Practice.slug).where(Practice.id.in_(practice_ids)), practice_ids
        )
        user_ids = {int(e.data["recipient_id"]) for e in events if e.data.get("recipient_id") is not None}
        self.users: dict[int, str] = _pairs(
            session, select(User.id, User.external_id).where(User.id.in_(user_ids)), user_ids
        )
        wanted = [e for e in events if e.seq in content_for]
        message_ids = [str(e.data["message"]) for e in wanted if e.type == "message.created"]
        self.messages = (
            {m.id: m for m in session.scalars(select(Message).where(Message.id.in_(message_ids))).unique()}
            if message_ids
            else {}
        )
        conversation_ids = {m.conversation_id for m in self.messages.values()}
        self.subjects: dict[str, str] = _pairs(
            session,
            select(Conversation.id, Conversation.subject).where(Conversation.id.in_(conversation_ids)),
            conversation_ids,
        )
        note_ids = [str(e.data["chart_note"]) for e in wanted if e.type == "chart_note.created"]
        self.notes = (
            {n.id: n for n in session.scalars(select(ChartNote).where(ChartNote.id.in_(note_ids))).unique()}
            if note_ids
            else {}
        )

    def data(self, event: Event, include_content: bool) -> dict[str, Any]:
        data: dict[str, Any] = {
            "practice": self.practices.get(event.practice_id) if event.practice_id else None
        }
        for key, value in (event.data or {}).items():
            if key == "recipient_id":
                data["recipient"] = self.users.get(int(value)) if value is not None else None
            else:
                data[key] = value
        if include_content:
            data.update(self._content(event))
        return data

    def _content(self, event: Event) -> dict[str, Any]:
        if event.type == "message.created":
            message = self.messages.get(str(event.data.get("message")))
            if message is None or message.deleted_at is not None:
                return {"deleted": True, "subject": None, "body": None, "attachments": []}
            return {
                "deleted": False,
                "subject": self.subjects.get(message.conversation_id),
                "body": message.body,
                "attachments": [
                    {
                        "id": a.id,
                        "filename": a.filename,
                        "content_type": a.content_type,
                        "size": a.size,
                        "sha256": a.sha256,
                    }
                    for a in message.attachments
                ],
            }
        if event.type == "chart_note.created":
            note = self.notes.get(str(event.data.get("chart_note")))
            if note is None:
                return {"deleted": True, "title": None, "text": None}
            return {"deleted": False, "title": note.title, "text": note.text}
        return {}

    def body(self, event: Event, include_content: bool) -> bytes:
        """The exact bytes that are signed and sent (compact JSON, UTF-8)."""
        payload = {
            "type": event.type,
            "timestamp": event.created_at.isoformat(),
            "data": self.data(event, include_content),
        }
        return json.dumps(payload, separators=(",", ":"), ensure_ascii=False, default=str).encode("utf-8")


def event_out(renderer: Renderer, event: Event) -> dict[str, Any]:
    """An event as ``GET …/events`` lists it: the webhook payload without content, plus its id."""
    return {
        "id": event.id,
        "type": event.type,
        "timestamp": event.created_at,
        "data": renderer.data(event, include_content=False),
    }
