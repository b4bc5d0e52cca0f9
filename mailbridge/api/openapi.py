"""The OpenAPI document is the contract: what FastAPI derives from the routes, completed in one place.

FastAPI describes what the decorators say: request models, the success status and its model. The
rest of the contract is app-wide and stated here, so that no route can forget it:

- ``operationId``: the route function's name in camelCase (``createConversation``, ``putUser``),
  with a few renames where the function name says too little; unique (checked at build time);
- every error status (docs/api.md) with the one ``Problem`` schema, whose ``code`` is an enum of
  every problem code (``mailbridge.reasons.API_CODES``; a test fails when the code raises one
  that is not there);
- 201 beside 200 on every ``PUT`` upsert (created, or replaced);
- the request models of the routes that read their body themselves (JSON or multipart);
- ``/healthz``, ``/readyz`` and ``/metrics`` (text/plain) as they answer.

``tests/test_openapi.py`` validates real responses of every route against the served document
(openapi-core) and generates a client from it (openapi-python-client).
"""

from __future__ import annotations

import enum
import re
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from fastapi.routing import APIRoute
from pydantic import BaseModel, ConfigDict, Field

from mailbridge.reasons import API_CODES

from .schemas import ConversationIn, MessageIn

PROBLEM_MEDIA_TYPE = "application/problem+json"

ProblemCode = enum.StrEnum("ProblemCode", {code: code for code in sorted(API_CODES)})  # type: ignore[misc]


class FieldError(BaseModel):
    field: str | None = Field(default=None, description="dotted path of the value (absent: the whole body)")
    detail: str = Field(description="what is wrong with it (English, for the developer)")
    type: str = Field(description="the validator's error type, e.g. missing, string_too_short")


class Problem(BaseModel):
    """RFC 9457 problem details. ``code`` is stable: switch on it. ``title`` and ``detail`` are in the
    user's language (the ``as`` user's locale, else Accept-Language), ready to show. Some codes add
    members (``users``, ``participants``, ``problems``, ``message``…): see docs/api.md."""

    model_config = ConfigDict(extra="allow")

    type: str = Field(default="about:blank")
    title: str = Field(description="short, in the user's language")
    status: int
    code: ProblemCode = Field(description="stable; the list and what each means: docs/reasons.md")
    detail: str = Field(description="what happened, in the user's language")
    field: str | None = Field(
        default=None, description="the input at fault (dotted path), for input errors: the first of errors"
    )
    errors: list[FieldError] | None = Field(
        default=None, description="every input error (422 invalid_request), field and detail for each"
    )
    hint: str | None = Field(default=None, description="what the user can do, in the user's language")


# Status → when it is used (docs/api.md says the same, at more length).
ERROR_STATUSES: dict[str, str] = {
    "400": "The request cannot be read (`invalid_json`).",
    "401": "Missing, wrong or revoked API key (`unauthorized`).",
    "403": "The key or the acting user (`as`) may not do this (`read_only_key`, `platform_key_required`, "
    "`staff_only`, the policy's reasons…).",
    "404": "The practice, or an object addressed by the path, does not exist or may not be read by `as`.",
    "409": "Conflicts with the current state (`kind_change`, `already_decided`, `reply_domain_taken`…).",
    "413": "The body is too large (`payload_too_large`).",
    "415": "The body's Content-Type is not accepted (`unsupported_media_type`).",
    "422": "Well-formed but invalid input: `field` and `errors` say which values.",
    "429": "Too many requests for this key: wait as `Retry-After` says.",
    "500": "A fault on our side (`internal_error`, `attachment_unreadable`).",
    "503": "A dependency cannot be reached now; retry later (`storage_unavailable`).",
}
REPLACE_ONLY = {"putLogo"}  # a PUT that answers 200 whether or not there was one before
RAW_BODIES = {"putLogo"}  # routes that read their body themselves
OPEN_ROUTES = {"/healthz", "/readyz", "/openapi.json", "/u/{token}"}

# Function names that say too little as an operationId.
RENAMES = {
    "inbound": "listInbound",
    "outbound": "listOutbound",
    "release": "releaseQuarantined",
    "discard": "discardQuarantined",
    "audit_trail": "listAudit",
    "quick_note": "createQuickNote",
    "healthz": "getHealth",
    "readyz": "getReadiness",
    "metrics": "getMetrics",
    "unsubscribe": "unsubscribeOneClick",
    "unsubscribe_page": "getUnsubscribePage",
    "approve_domain": "putPlatformDomain",
    "withdraw_domain": "deletePlatformDomain",
    "redeliver": "redeliverWebhookDelivery",
    "redeliver_platform": "redeliverPlatformWebhookDelivery",
    "rotate_secret": "rotateWebhookSecret",
    "rotate_platform_secret": "rotatePlatformWebhookSecret",
    "list_deliveries": "listWebhookDeliveries",
    "list_platform_deliveries": "listPlatformWebhookDeliveries",
}


# What an operation does, for those whose function has no docstring (README's table says the same).
DESCRIPTIONS = {
    "getPractice": "The practice, its effective settings and its DKIM state as this node sees it.",
    "putUser": "Create (201) or replace (200) a user of the directory. A kind never changes (409 "
    "`kind_change`); staff need a role; external agents have no role and no portal account.",
    "getUser": "A user, with `email_bouncing` and `email_suppression` for the primary address.",
    "putCompany": "Create (201) or rename (200) a company.",
    "putFavorite": "The user follows the company (company conversations, confidential ones where designated).",
    "deleteFavorite": "The user no longer follows the company; 204 whether or not they did (idempotent).",
    "putFriendship": "Create (201) or change (200) the friendship of two staff members: a direct channel "
    "needs it accepted; closing it closes their direct conversations.",
    "createConversation": "Open a conversation with its first message: JSON (`ConversationIn`), or "
    "multipart with a `payload` JSON field and `attachments` files. The policy decides (403 with its "
    "reason, 422 for invalid input); withheld files are listed in `withheld`.",
    "postMessage": "Post a message as `author`: JSON (`MessageIn`) or multipart with files. The policy "
    "decides now (403 with its reason; a too short body is 422 `body_too_short`).",
    "getConversation": "The conversation as `as` may see it, with its messages (internal notes hidden from clients).",
    "deleteConversation": "Delete the conversation as `as`, the staff member who started it (403 `not_creator` "
    "otherwise): every copy of its content is erased, an audit row is kept.",
    "deleteMessage": "Delete a message as `as`, the staff member who sent it (403 `not_author` otherwise): its "
    "content is erased, an audit row is kept.",
    "addParticipant": "Add a user to the conversation (the joining rules apply).",
    "removeParticipant": "Remove a user from the conversation and revoke their reply address; 204 also "
    "when they were not a participant (idempotent).",
    "downloadAttachment": "Download a file as `as` (who must be able to read its message), as an attachment.",
    "putRoute": "Create (201) or replace (200) a practice address that opens conversations.",
    "deleteRoute": "Remove a practice address.",
    "listRoutes": "The practice's addresses.",
    "releaseQuarantined": "Post held mail as the pipeline would have (judged by the policy now), as `as` "
    "(staff); audited.",
    "putMailbox": "Create (201) or replace (200) an IMAP mailbox to poll; secrets are write-only.",
    "getMailbox": "A mailbox and its polling status (secrets never returned).",
    "deleteMailbox": "Stop polling and forget the mailbox.",
    "listMailboxes": "The practice's mailboxes and their status.",
    "listAudit": "The audit trail, newest first: who did what to which object, never content.",
    "getWebhook": "A webhook endpoint (never its secret).",
    "deleteWebhook": "Delete a webhook endpoint: nothing more is sent to it.",
    "listWebhooks": "The practice's webhook endpoints.",
    "getPlatformWebhook": "A platform webhook endpoint (never its secret).",
    "deletePlatformWebhook": "Delete a platform webhook endpoint.",
    "listPlatformWebhooks": "The platform's webhook endpoints (every practice's events).",
    "rotatePlatformWebhookSecret": "A new secret, shown once; the old one keeps signing for `overlap_seconds`.",
    "listPlatformWebhookDeliveries": "A platform endpoint's delivery log, newest first.",
    "redeliverPlatformWebhookDelivery": "Send one delivery again (same `webhook-id`).",
    "listTemplates": "The notification templates, the practice's own versions and the shipped ones.",
    "getTemplate": "A template in a locale: the practice's own version, else the shipped one.",
    "getLogo": "The practice's logo (PNG or JPEG).",
    "deleteLogo": "Remove the practice's logo from its notifications.",
    "listMutes": "Who gets no notification emails for this conversation.",
}


def operation_id(route: APIRoute) -> str:
    """``create_conversation`` → ``createConversation`` (FastAPI's ``generate_unique_id_function``)."""
    name = RENAMES.get(route.name, route.name)
    head, *rest = name.split("_")
    return head + "".join(part[:1].upper() + part[1:] for part in rest)


def _schema_of(model: type[BaseModel], components: dict[str, Any]) -> dict[str, Any]:
    """Add *model* (and the models and enums it uses) to ``components.schemas``; return its ``$ref``."""
    schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
    for name, sub in schema.pop("$defs", {}).items():
        components.setdefault(name, sub)
    components.setdefault(model.__name__, schema)
    return {"$ref": f"#/components/schemas/{model.__name__}"}


def _named(operation: str, response: dict[str, Any], schemas: dict[str, Any]) -> None:
    """An inline JSON schema (a route answering a dict) becomes a named component, so that 200 and
    201 share one model in generated clients instead of two that clash."""
    media = response["content"].get("application/json")
    if media is None or "$ref" in media.get("schema", {}):
        return
    name = operation[:1].upper() + operation[1:] + "Result"
    schemas.setdefault(name, media["schema"])
    media["schema"] = {"$ref": f"#/components/schemas/{name}"}


def _problem_response(description: str, ref: dict[str, Any]) -> dict[str, Any]:
    return {"description": description, "content": {PROBLEM_MEDIA_TYPE: {"schema": ref}}}


def complete(spec: dict[str, Any]) -> dict[str, Any]:
    """The app-wide parts of the contract (see the module's docstring), on FastAPI's document."""
    schemas: dict[str, Any] = spec.setdefault("components", {}).setdefault("schemas", {})
    problem_ref = _schema_of(Problem, schemas)
    for model in (ConversationIn, MessageIn):
        _schema_of(model, schemas)
    for name in ("HTTPValidationError", "ValidationError"):
        schemas.pop(name, None)
    seen: set[str] = set()
    for path, operations in spec["paths"].items():
        for method, op in operations.items():
            if op["operationId"] in seen:
                raise RuntimeError(f"duplicate operationId {op['operationId']}")
            seen.add(op["operationId"])
            responses: dict[str, Any] = op["responses"]
            responses.pop("422", None)  # FastAPI's HTTPValidationError: ours is a Problem
            ok = responses.get("200")
            if (
                method == "put"
                and ok is not None
                and "content" in ok
                and op["operationId"] not in REPLACE_ONLY
            ):
                _named(op["operationId"], ok, schemas)
                responses.setdefault("201", {**ok, "description": "Created"})
                ok["description"] = "Replaced (updated)"
            for status, description in ERROR_STATUSES.items():
                if path not in OPEN_ROUTES or status in ("404", "422", "500"):
                    responses.setdefault(status, _problem_response(description, problem_ref))
            if path in OPEN_ROUTES:
                responses.pop("401", None)
            if method == "get":
                responses.pop("409", None)
            if "requestBody" not in op and op["operationId"] not in RAW_BODIES:
                responses.pop("415", None)
                responses.pop("413", None)
                responses.pop("400", None)
            if op["operationId"] in DESCRIPTIONS and not op.get("description"):
                op["description"] = DESCRIPTIONS[op["operationId"]]
            if not op.get("description"):
                op["description"] = op.get("summary", op["operationId"]) + "."
    _ops(spec)
    return spec


def _ops(spec: dict[str, Any]) -> None:
    """The three operational routes, as they really answer."""
    paths = spec["paths"]
    health = paths["/healthz"]["get"]
    health["responses"]["200"] = {
        "description": "The process answers (liveness).",
        "content": {
            "application/json": {
                "schema": {"type": "object", "properties": {"status": {"type": "string", "enum": ["ok"]}}}
            }
        },
    }
    ready = paths["/readyz"]["get"]
    readiness = {
        "type": "object",
        "required": ["ready", "checks"],
        "properties": {
            "ready": {"type": "boolean"},
            "checks": {
                "type": "object",
                "description": "one entry per check (database, migrations, templates, storage, smtp, "
                "outbox, dkim): `ok` and numbers; with the platform key also details",
                "additionalProperties": {
                    "type": "object",
                    "properties": {"ok": {"type": "boolean"}},
                    "required": ["ok"],
                },
            },
        },
    }
    content = {"application/json": {"schema": readiness}}
    ready["responses"]["200"] = {"description": "Ready.", "content": content}
    ready["responses"]["503"] = {
        "description": "Not ready: `checks` says which check fails.",
        "content": content,
    }
    ready["security"] = [{}, {"apiKey": []}]  # no key needed; the platform key shows more
    logo = paths["/api/v1/practices/{practice}/logo"]["put"]
    binary = {"schema": {"type": "string", "format": "binary"}}
    logo["requestBody"] = {
        "required": True,
        "description": "the image's bytes (PNG or JPEG, judged by the bytes whatever the Content-Type)",
        "content": {"application/octet-stream": binary},
    }
    html = {"text/html": {"schema": {"type": "string"}}}
    pages = {
        "200": "The page (GET: a button; POST: done, idempotently).",
        "404": "A forged or altered link (the page says so).",
        "410": "An expired link (the page says so).",
        "413": "POST: a body larger than a one-click form (the page says so).",
    }
    for method, op in paths["/u/{token}"].items():
        op["security"] = []
        op["responses"] = {
            status: {"description": text, "content": html}
            for status, text in pages.items()
            if method == "post" or status != "413"
        } | {"422": op["responses"]["422"], "500": op["responses"]["500"]}
    metrics = paths["/metrics"]["get"]
    metrics["responses"]["200"] = {
        "description": "Prometheus text exposition format 0.0.4.",
        "content": {"text/plain": {"schema": {"type": "string"}}},
    }


def install(app: FastAPI) -> None:
    """Serve the completed document (built once, on first request, as FastAPI does)."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            spec = get_openapi(
                title=app.title,
                version=app.version,
                description=app.description,
                routes=app.routes,
                tags=app.openapi_tags,
                servers=app.servers,
            )
            app.openapi_schema = complete(spec)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


CAMEL = re.compile(r"^[a-z][A-Za-z0-9]*$")
