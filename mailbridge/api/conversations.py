"""Conversations and messages as the app sees them: create, post, list, read, delete, download files."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from typing import Any, BinaryIO, Literal, TypeVar, cast

from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile

from mailbridge.crypto.keyring import KeyringError
from mailbridge.domain import conversations as convs
from mailbridge.domain import directory
from mailbridge.domain.db import flush_journal, transaction
from mailbridge.domain.errors import (
    Damaged,
    Invalid,
    NotFound,
    Unavailable,
    Unreadable,
    UnsupportedMediaType,
)
from mailbridge.domain.models import Attachment, ConversationKind, Message, MessageSource
from mailbridge.storage.blobs import BlobNotFoundError
from mailbridge.storage.intake import Intake, Upload, intake_uploads
from mailbridge.storage.objects import StorageError

from .deps import ServicesDep, conversation_out, message_out
from .paging import PageQuery, page_out, page_query
from .problems import field_errors
from .schemas import (
    ConversationIn,
    ConversationOut,
    ConversationPage,
    MessageIn,
    MessageOut,
    MessagePage,
    Page,
    WithheldOut,
)

router = APIRouter(prefix="/api/v1/practices/{practice}", tags=["conversations"])
log = logging.getLogger(__name__)
M = TypeVar("M", bound=BaseModel)

MULTIPART_FIELDS = ("payload", "attachments")

MULTIPART_DOC: dict[str, Any] = {
    "requestBody": {
        "content": {
            "application/json": {"schema": {"$ref": "#/components/schemas/{name}"}},
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {
                        "payload": {"type": "string", "description": "the JSON body as a string"},
                        "attachments": {"type": "array", "items": {"type": "string", "format": "binary"}},
                    },
                    "required": ["payload"],
                }
            },
        },
        "required": True,
    }
}


def _doc(name: str) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(json.dumps(MULTIPART_DOC).replace("{name}", name))
    return doc


async def _read_body(request: Request, model: type[M]) -> tuple[M, list[Upload]]:
    """JSON, or multipart with a ``payload`` JSON field and ``attachments`` files (spooled, never in
    memory). Another Content-Type is 415, a body that is not JSON 400, invalid values 422 with every
    error (docs/api.md)."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    uploads: list[Upload] = []
    try:
        if content_type == "multipart/form-data":
            form = await request.form(max_files=1000, max_fields=50)
            for name in form:
                if name not in MULTIPART_FIELDS:
                    raise Invalid(
                        "invalid_request",
                        f"{name}: unknown multipart field (expected payload and attachments)",
                        name,
                    )
            raw = form.get("payload")
            if not isinstance(raw, str):
                raise Invalid("invalid_request", "payload: a JSON string field is required", "payload")
            data = json.loads(raw)
            for item in form.getlist("attachments"):
                if not isinstance(item, UploadFile):
                    raise Invalid("invalid_request", "attachments: each part must be a file", "attachments")
                uploads.append(
                    Upload(item.filename, item.content_type or "application/octet-stream", item.file)
                )
        elif content_type in ("", "application/json") or content_type.endswith("+json"):
            data = await request.json()
        else:
            raise UnsupportedMediaType(
                "unsupported_media_type", "send application/json or multipart/form-data"
            )
        return model.model_validate(data), uploads
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise Unreadable("invalid_json", "the body is not valid JSON") from None
    except ValidationError as exc:
        errors = field_errors(exc.errors(), ())
        raise Invalid(
            "invalid_request", errors[0]["detail"], errors[0]["field"], {"errors": errors}
        ) from None


@router.post(
    "/conversations", status_code=201, response_model=ConversationOut, openapi_extra=_doc("ConversationIn")
)
async def create_conversation(practice: str, request: Request, svc: ServicesDep) -> ConversationOut:
    body, uploads = await _read_body(request, ConversationIn)
    return await run_in_threadpool(_create_conversation, practice, body, uploads, svc)


def _create_conversation(
    practice: str, body: ConversationIn, uploads: list[Upload], svc: Any
) -> ConversationOut:
    with transaction(svc.sessions) as session:
        p = directory.get_practice(session, practice)
        author = directory.get_user(session, p, body.author, "author")
        company = directory.get_company(session, p, body.company, "company") if body.company else None
        people = [directory.get_user(session, p, ext, "participants") for ext in body.participants]
        intake: Intake = _store_uploads(svc, p, uploads)
        text = intake.with_withheld_line(body.body)
        conversation, message = convs.create_conversation(
            session,
            p,
            kind=ConversationKind(body.kind),
            company=company,
            subject=body.subject,
            author=author,
            participants=people,
            body=text,
            source=MessageSource.app,
            attachments=intake.accepted,
        )
        out = conversation_out(conversation, [message])
        out.messages[0].withheld = [WithheldOut(**w) for w in intake.withheld_dicts()]
        return out


@router.post(
    "/conversations/{conversation}/messages",
    status_code=201,
    response_model=MessageOut,
    openapi_extra=_doc("MessageIn"),
)
async def post_message(practice: str, conversation: str, request: Request, svc: ServicesDep) -> MessageOut:
    body, uploads = await _read_body(request, MessageIn)
    return await run_in_threadpool(_post_message, practice, conversation, body, uploads, svc)


def _post_message(
    practice: str, conversation_id: str, body: MessageIn, uploads: list[Upload], svc: Any
) -> MessageOut:
    with transaction(svc.sessions) as session:
        p = directory.get_practice(session, practice)
        author = directory.get_user(session, p, body.author, "author")
        conversation = convs.conversation_for(session, p, conversation_id, author)
        intake = _store_uploads(svc, p, uploads)
        message = convs.post_message(
            session,
            p,
            conversation,
            author,
            body=intake.with_withheld_line(body.body),
            internal=body.internal,
            source=MessageSource.app,
            attachments=intake.accepted,
        )
        out = message_out(message)
        out.withheld = [WithheldOut(**w) for w in intake.withheld_dicts()]
        return out


@router.get("/conversations", response_model=ConversationPage)
def list_conversations(
    practice: str,
    svc: ServicesDep,
    as_: str = Query(alias="as"),
    order: Literal["activity", "created"] = Query(
        default="activity",
        description="activity: latest message first (a conversation that gets a message during a walk "
        "moves to the top; message.created says so); created: oldest first, stable for a full walk",
    ),
    paging: PageQuery = Depends(page_query()),
) -> Page:
    """What that user may read, a page at a time (the policy's read rules run in the query)."""
    with transaction(svc.sessions) as session:
        p = directory.get_practice(session, practice)
        actor = directory.get_user(session, p, as_, "as")
        page = convs.conversations_page(
            session, p, actor, order=order, limit=paging.limit, cursor=paging.cursor
        )
        summaries = convs.message_summaries(session, [c.id for c in page.items], actor)
        return page_out(page, lambda c: conversation_out(c, summary=summaries.get(c.id, (0, None))))


@router.get("/conversations/{conversation}", response_model=ConversationOut)
def get_conversation(
    practice: str, conversation: str, svc: ServicesDep, as_: str = Query(alias="as")
) -> ConversationOut:
    with transaction(svc.sessions) as session:
        p = directory.get_practice(session, practice)
        actor = directory.get_user(session, p, as_, "as")
        conv = convs.conversation_for(session, p, conversation, actor)
        return conversation_out(conv, convs.messages_for(session, conv, actor))


@router.get("/conversations/{conversation}/messages", response_model=MessagePage)
def list_messages(
    practice: str,
    conversation: str,
    svc: ServicesDep,
    as_: str = Query(alias="as"),
    paging: PageQuery = Depends(page_query()),
) -> Page:
    """The thread, oldest first, a page at a time (internal notes hidden from clients)."""
    with transaction(svc.sessions) as session:
        p = directory.get_practice(session, practice)
        actor = directory.get_user(session, p, as_, "as")
        conv = convs.conversation_for(session, p, conversation, actor)
        page = convs.messages_page(session, conv, actor, limit=paging.limit, cursor=paging.cursor)
        return page_out(page, message_out)


@router.delete("/conversations/{conversation}", status_code=204)
def delete_conversation(
    practice: str, conversation: str, svc: ServicesDep, as_: str = Query(alias="as")
) -> Response:
    with transaction(svc.sessions) as session:
        p = directory.get_practice(session, practice)
        actor = directory.get_user(session, p, as_, "as")
        orphans = convs.delete_conversation(
            session, p, convs.conversation_for(session, p, conversation, actor), actor
        )
    _after_erasure(svc, orphans)
    return Response(status_code=204)


@router.get("/messages/{message}", response_model=MessageOut)
def get_message(practice: str, message: str, svc: ServicesDep, as_: str = Query(alias="as")) -> MessageOut:
    """One message as ``as`` may read it (the conversation's read rules; internal notes for staff
    only). A message they may not read answers 404 ``message_not_found``, exactly as an unknown id."""
    with transaction(svc.sessions) as session:
        p = directory.get_practice(session, practice)
        actor = directory.get_user(session, p, as_, "as")
        return message_out(convs.readable_message(session, p, message, actor))


@router.delete("/messages/{message}", status_code=204)
def delete_message(practice: str, message: str, svc: ServicesDep, as_: str = Query(alias="as")) -> Response:
    with transaction(svc.sessions) as session:
        p = directory.get_practice(session, practice)
        actor = directory.get_user(session, p, as_, "as")
        orphans = convs.delete_message(session, p, message, actor)
    _after_erasure(svc, orphans)
    return Response(status_code=204)


def _after_erasure(svc: Any, orphans: list[str]) -> None:
    """Once the deletion is committed: the files no row references, and the database's journal."""
    for ref in orphans:  # attachment objects and raw copies no row names any more
        try:
            svc.vault.delete(ref)
        except OSError:
            log.warning("erased_object_delete_failed", extra={"ref": ref}, exc_info=True)
    if not flush_journal(svc.engine):
        log.warning(
            "journal_checkpoint_busy: deleted content stays in the SQLite WAL until the next checkpoint"
        )


AS_ACTOR = Query(
    default=None,
    alias="as",
    description="required: the staff member making the change (external id); without it 422 "
    "`actor_required`. The change is judged as if they made it in the app: they must read the "
    "conversation (else 404, as a conversation that does not exist) and the result must keep the "
    "rules of its kind.",
)


@router.put("/conversations/{conversation}/participants/{user}", status_code=204)
def add_participant(
    practice: str, conversation: str, user: str, svc: ServicesDep, as_: str | None = AS_ACTOR
) -> Response:
    """Staff who may read the conversation add someone (403 ``staff_only`` for anyone else), with the
    rules creation applies: a direct channel is the two friends only (422 ``direct_two_people``),
    agents and clients never join one (422 ``direct_staff_only``), a confidential one takes only
    clients of its company (422 ``client_not_following_company``), a private one with a client takes
    no second client while group privacy is on (422 ``private_has_client``), an agent is added by
    staff only. Adding a current participant again changes nothing (204)."""
    with transaction(svc.sessions) as session:
        p = directory.get_practice(session, practice)
        actor = directory.get_actor(session, p, as_)
        conv = convs.conversation_for(session, p, conversation, actor)
        convs.add_participant(session, conv, actor, directory.get_user(session, p, user, "user"))
    return Response(status_code=204)


@router.delete("/conversations/{conversation}/participants/{user}", status_code=204)
def remove_participant(
    practice: str, conversation: str, user: str, svc: ServicesDep, as_: str | None = AS_ACTOR
) -> Response:
    """Staff who may read the conversation remove someone; the creator stays (422 ``creator_stays``),
    a direct channel keeps its two friends (422 ``direct_two_people``), and one other participant
    besides whoever remains must stay (422 ``no_recipient``). The removed participant's reply address
    is revoked."""
    with transaction(svc.sessions) as session:
        p = directory.get_practice(session, practice)
        actor = directory.get_actor(session, p, as_)
        conv = convs.conversation_for(session, p, conversation, actor)
        convs.remove_participant(session, conv, actor, directory.get_user(session, p, user, "user"))
    return Response(status_code=204)


@router.get("/attachments/{attachment}", response_class=StreamingResponse)
def download_attachment(
    practice: str, attachment: str, svc: ServicesDep, as_: str = Query(alias="as")
) -> StreamingResponse:
    with transaction(svc.sessions) as session:
        p = directory.get_practice(session, practice)
        actor = directory.get_user(session, p, as_, "as")
        convs.require_active_account(actor)
        row = session.get(Attachment, attachment)
        # One the actor may not read (its message's conversation, an internal note) answers exactly
        # as one that does not exist.
        if row is None or not convs.may_read_message(
            session, p, session.get_one(Message, row.message_id), actor
        ):
            raise NotFound("attachment_not_found", "attachment not found")
        ref, filename, size = row.storage_key or row.sha256, row.filename, row.size
        content_type = row.content_type

    handle = _open_stored(svc, ref, attachment)

    def chunks() -> Iterator[bytes]:
        with handle:
            while block := handle.read(256 * 1024):
                yield block

    return StreamingResponse(
        chunks(),
        media_type=content_type
        if content_type.startswith(("image/", "application/pdf"))
        else "application/octet-stream",
        headers={
            "Content-Disposition": content_disposition(filename),
            "X-Content-Type-Options": "nosniff",
            "Content-Length": str(size),
            "Content-Security-Policy": "default-src 'none'; sandbox",
            "Cache-Control": "private, no-store",
        },
    )


def _store_uploads(svc: Any, p: Any, uploads: list[Upload]) -> Intake:
    """The app's uploads, judged once: a withheld file refuses the whole post (422
    ``attachment_refused``); a file store that cannot be reached is 503 ``storage_unavailable`` with
    a WARNING line (the store's own metric and /readyz say it too), never a bare 500."""
    try:
        return intake_uploads(
            svc.blobs, convs.practice_settings(p), uploads, p.locale, p.id, refuse_withheld=True
        )
    except StorageError as exc:
        log.warning("upload_storage_unavailable", extra={"practice": p.slug, "error": str(exc)[:200]})
        raise Unavailable("storage_unavailable", "the file store cannot be reached; retry later") from exc


def _open_stored(svc: Any, ref: str, attachment: str) -> BinaryIO:
    """Open before answering, so a missing or tampered object is a clean error, not a cut download.
    (Each 64 KiB segment is authenticated before it is sent; a fault further in cuts the stream.)"""
    try:
        return cast(BinaryIO, svc.blobs.open(ref))
    except (BlobNotFoundError, KeyringError) as exc:
        log.warning("attachment_unreadable", extra={"attachment": attachment, "error": str(exc)[:200]})
        raise Damaged(
            "attachment_unreadable", "the stored file is missing or failed its integrity check"
        ) from exc
    except OSError as exc:
        log.warning(
            "attachment_storage_unavailable", extra={"attachment": attachment, "error": str(exc)[:200]}
        )
        raise Unavailable("storage_unavailable", "the file store cannot be reached; retry later") from exc


def content_disposition(filename: str) -> str:
    """RFC 6266: an ASCII fallback plus the UTF-8 name, always as a download."""
    from urllib.parse import quote

    ascii_name = filename.encode("ascii", "replace").decode("ascii").replace('"', "_").replace("\\", "_")
    return f"attachment; filename=\"{ascii_name}\"; filename*=UTF-8''{quote(filename)}"
