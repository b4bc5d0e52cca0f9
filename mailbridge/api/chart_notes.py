"""Quick notes (seed 003): a thread with one client saved to that client's chart notes, and the notes."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Depends, Query
from pydantic import BaseModel, Field

from mailbridge.domain import chart_notes, directory
from mailbridge.domain import conversations as convs
from mailbridge.domain.db import transaction
from mailbridge.domain.errors import Forbidden
from mailbridge.domain.models import ChartNote, UserKind

from .deps import ServicesDep
from .paging import PageQuery, page_out, page_query
from .schemas import Page, Strict

router = APIRouter(prefix="/api/v1/practices/{practice}", tags=["chart notes"])


class QuickNoteIn(Strict):
    author: str = Field(description="the staff member writing the note (external id)")
    title: str | None = Field(default=None, max_length=255, description="default: the conversation's subject")
    text: str | None = Field(
        default=None,
        description="default: prefilled from the thread (each message's author, time and text; "
        "attachments listed; internal notes included and marked)",
    )


class ChartNoteOut(BaseModel):
    id: str
    client: str
    conversation: str | None
    author: str
    title: str
    text: str
    created_at: datetime


class ChartNotePage(Page):
    items: list[ChartNoteOut]


def note_out(note: ChartNote) -> ChartNoteOut:
    return ChartNoteOut(
        id=note.id,
        client=note.client.external_id,
        conversation=note.conversation_id,
        author=note.author.external_id,
        title=note.title,
        text=note.text,
        created_at=note.created_at,
    )


@router.post("/conversations/{conversation}/quick-note", status_code=201, response_model=ChartNoteOut)
def quick_note(practice: str, conversation: str, body: QuickNoteIn, svc: ServicesDep) -> ChartNoteOut:
    """Staff only (403 ``staff_only``), on a thread they may read with exactly one client (403
    ``group_conversation`` with two or more, ``no_client`` with none). Announced by ``chart_note.created``."""
    with transaction(svc.sessions) as session:
        p = directory.get_practice(session, practice)
        author = directory.get_user(session, p, body.author, "author")
        conv = convs.get_conversation(session, p, conversation)
        note = chart_notes.create_quick_note(session, p, conv, author, title=body.title, text=body.text)
        return note_out(note)


@router.get("/clients/{user}/chart-notes", response_model=ChartNotePage)
def list_chart_notes(
    practice: str,
    user: str,
    svc: ServicesDep,
    paging: Annotated[PageQuery, Depends(page_query())],
    as_: str | None = Query(default=None, alias="as", description="optional: the staff member reading"),
) -> Page:
    """The client's chart notes, newest first. Chart notes are staff records: with ``as``, it must be
    an active staff member (403 ``staff_only`` / ``account_inactive``)."""
    with transaction(svc.sessions) as session:
        p = directory.get_practice(session, practice)
        if as_ is not None:
            reader = directory.get_user(session, p, as_, "as")
            if reader.kind != UserKind.staff:
                raise Forbidden("staff_only", "chart notes are read by staff")
            convs.require_active_account(reader)
        client = directory.get_user(session, p, user, "user")
        page = chart_notes.notes_page(session, p, client, limit=paging.limit, cursor=paging.cursor)
        return page_out(page, note_out)
