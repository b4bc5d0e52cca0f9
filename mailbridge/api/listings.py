"""The items of the API's lists, typed for /openapi.json (issue 20 #5: no list of bare objects).

The routes build these items as dicts in their own modules; the models below only name and type
what those dicts carry, so a generated client gets real classes. ``extra="allow"``: a member added
later is passed through (and documented as allowed) rather than silently dropped.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from mailbridge.domain.models import ConversationKind, InboundState, OutboxKind, OutboxState, StaffRole

from .schemas import Items, Page


class Listed(BaseModel):
    model_config = ConfigDict(extra="allow", populate_by_name=True)


class InboundItem(Listed):
    id: str
    received_at: datetime
    door: str = Field(description="smtp | lmtp | imap | api")
    peer: str | None = None
    mail_from: str
    rcpt: str = Field(description="the recipient, reply token redacted")
    from_: str | None = Field(default=None, alias="from")
    message_id: str | None = None
    token_id: int | None = None
    auth_results: str | None = None
    rule: str | None = None
    reason: str | None = Field(default=None, description="docs/reasons.md")
    state: InboundState
    smtp_reply: str | None = None
    size: int
    conversation: str | None = None
    posted_message: str | None = None
    details: dict[str, Any] = {}


class OutboundItem(Listed):
    id: str
    kind: OutboxKind
    state: OutboxState
    to: str
    message: str | None = None
    conversation: str | None = None
    attempts: int
    next_attempt_at: datetime
    last_answer: str | None = None
    message_id_header: str | None = None
    created_at: datetime
    sent_at: datetime | None = None


class AuditItem(Listed):
    id: int
    action: str
    actor: str | None = None
    target_kind: str
    target_id: str
    details: dict[str, Any] | None = None
    created_at: datetime


class EventItem(Listed):
    id: str
    type: str
    timestamp: datetime
    data: dict[str, Any] = Field(description="as the webhook payload says it, without content")


class WebhookItem(Listed):
    name: str
    scope: Literal["practice", "platform"]
    url: str
    events: list[str]
    active: bool
    include_content: bool
    disabled_at: datetime | None = None
    disabled_reason: str | None = None
    last_success_at: datetime | None = None
    secret_rotated_at: datetime | None = None
    previous_secret_expires_at: datetime | None = None
    created_at: datetime
    updated_at: datetime


class DeliveryItem(Listed):
    id: str
    event_id: str
    event_type: str
    conversation: str | None = None
    state: str = Field(description="pending | delivered | failed | skipped")
    attempts: int
    next_attempt_at: datetime | None = None
    first_attempt_at: datetime | None = None
    last_attempt_at: datetime | None = None
    last_status: int | None = None
    last_error: str | None = None
    last_duration_ms: int | None = None
    created_at: datetime
    delivered_at: datetime | None = None


class RouteItem(Listed):
    address: str
    staff: list[str]
    roles: list[StaffRole]
    kind: ConversationKind
    unknown_senders: Literal["reject", "triage"]


class DomainItem(Listed):
    domain: str
    kind: Literal["reply", "approved"]
    source: str


class QuarantineListItem(Listed):
    id: str
    reason: str = Field(description="auth_not_aligned | unknown_sender (docs/reasons.md)")
    from_: str | None = Field(default=None, alias="from")
    subject: str | None = None
    route: str | None = None
    conversation: str | None = None
    state: Literal["held", "released", "discarded"]
    created_at: datetime
    decided_at: datetime | None = None
    reason_text: str
    from_name: str | None = None
    preview: str | None = None
    preview_truncated: bool = False
    internal: bool = False
    attachments: list[dict[str, Any]] = []
    decided_by: str | None = None
    message: Any = None
    contact: Any = None


class InboundPage(Page):
    items: list[InboundItem]


class OutboundPage(Page):
    items: list[OutboundItem]


class AuditPage(Page):
    items: list[AuditItem]


class EventPage(Page):
    items: list[EventItem]


class DeliveryPage(Page):
    items: list[DeliveryItem]


class QuarantinePage(Page):
    items: list[QuarantineListItem]


class WebhookList(Items):
    items: list[WebhookItem]


class RouteList(Items):
    items: list[RouteItem]


class DomainList(Items):
    items: list[DomainItem]
