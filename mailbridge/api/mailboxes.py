"""IMAP mailboxes a practice's mail is fetched from: create or replace, list with their status, delete.

The password is write-only: accepted on PUT, sealed with the practice's data key, never returned
(``has_password`` says whether one is set); ``password_env`` only from the operator's allow-list; the
host must be public; ``auth: "oauth2"`` keeps its secrets sealed and write-only too. The rules live
in ``mailbridge.ingress.mailboxes``, shared with the console.
"""

from __future__ import annotations

from fastapi import APIRouter, Response
from sqlalchemy import select

from mailbridge.domain import directory
from mailbridge.domain.db import transaction
from mailbridge.domain.models import Mailbox
from mailbridge.ingress.mailboxes import (
    MailboxIn,
    MailboxList,
    MailboxOut,
    mailbox_out,
    upsert_mailbox,
)
from mailbridge.ingress.mailboxes import (
    delete_mailbox as delete_row,
)
from mailbridge.ingress.mailboxes import (
    get_mailbox as get_row,
)

from .deps import ServicesDep

router = APIRouter(prefix="/api/v1/practices/{practice}", tags=["mailboxes"])
__all__ = ["MailboxIn", "MailboxOut", "router"]


@router.put("/mailboxes/{name}", response_model=MailboxOut)
def put_mailbox(
    practice: str, name: str, body: MailboxIn, svc: ServicesDep, response: Response
) -> MailboxOut:
    with transaction(svc.sessions) as session:
        p = directory.get_practice(session, practice)
        row, created = upsert_mailbox(svc, session, p, name, body)
        response.status_code = 201 if created else 200
        return mailbox_out(row)


@router.get("/mailboxes", response_model=MailboxList)
def list_mailboxes(practice: str, svc: ServicesDep) -> MailboxList:
    with transaction(svc.sessions) as session:
        p = directory.get_practice(session, practice)
        rows = session.scalars(select(Mailbox).where(Mailbox.practice_id == p.id).order_by(Mailbox.name))
        return MailboxList(items=[mailbox_out(r) for r in rows])


@router.get("/mailboxes/{name}", response_model=MailboxOut)
def get_mailbox(practice: str, name: str, svc: ServicesDep) -> MailboxOut:
    with transaction(svc.sessions) as session:
        return mailbox_out(get_row(session, directory.get_practice(session, practice), name))


@router.delete("/mailboxes/{name}", status_code=204)
def delete_mailbox(practice: str, name: str, svc: ServicesDep) -> Response:
    with transaction(svc.sessions) as session:
        delete_row(session, directory.get_practice(session, practice), name)
    return Response(status_code=204)
