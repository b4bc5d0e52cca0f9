"""Payload shapes of the HTTP API: a contract with the messaging app (see README and /openapi.json)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from mailbridge.domain.models import ConversationKind, FriendshipState, MessageSource, StaffRole, UserKind
from mailbridge.domain.validators import check_email

# The domain's enums are the API's: one named schema each in /openapi.json, shared by the input and
# the output models (a generated client gets one type for `kind` whether it sends or reads it).
__all__ = ["ConversationKind", "FriendshipState", "MessageSource", "StaffRole", "UserKind"]

Locale = Literal["en", "fr"]

EmailStr = Annotated[str, AfterValidator(check_email)]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


SETTINGS_DESCRIPTION = (
    "Merged into the stored settings (JSON Merge Patch, RFC 7396): a key left out keeps its value, "
    "null clears it (its default applies again), objects such as notify_content merge key by key. "
    "dkim_selector is read-only (the active RSA key's selector, managed with `mailbridge dkim`): "
    "a write may leave it out or repeat it unchanged; any other value is refused with 422 "
    "dkim_selector_read_only."
)


class PracticeIn(Strict):
    name: str = Field(min_length=1, max_length=255)
    reply_domain: str = Field(
        min_length=3, max_length=255, pattern=r"^[A-Za-z0-9.-]+\.[A-Za-z]{2,}$|^[A-Za-z0-9.-]+\.test$"
    )
    notify_from: EmailStr
    locale: Locale = "en"
    settings: dict[str, Any] = Field(default={}, description=SETTINGS_DESCRIPTION)


class DkimKeyOut(BaseModel):
    selector: str
    algorithm: Literal["rsa", "ed25519"]
    state: Literal["pending", "active", "retiring", "retired"]
    dns_status: str | None = Field(
        description="published | missing | different | error, at the last `dkim check`"
    )
    created_at: datetime
    activated_at: datetime | None
    last_checked_at: datetime | None


class DkimOut(BaseModel):
    signing: Literal["signed", "unsigned", "cannot_sign"] = Field(
        description="signed: every email gets a DKIM signature; unsigned: the practice has no active key "
        "(emails leave unsigned, counted in mailbridge_notifications_unsigned_total); cannot_sign: this "
        "node cannot open the practice's key, its emails wait (see detail and /readyz)"
    )
    detail: str | None = None
    keys: list[DkimKeyOut]


class PracticeOut(BaseModel):
    slug: str
    name: str
    reply_domain: str
    notify_from: str
    locale: str
    settings: dict[str, Any] = Field(description="The effective settings, defaults included")
    dkim: DkimOut


class UserIn(Strict):
    email: EmailStr
    alt_emails: list[EmailStr] = []
    name: str = Field(min_length=1, max_length=255)
    kind: UserKind = Field(
        description="external: seed 003's external agent (a referring physician, a school counsellor…), "
        "outside the practice, who reads and replies by email only; no role, no portal account"
    )
    role: StaffRole | None = None
    active: bool = True
    locale: Locale = "en"
    portal_account: bool | None = Field(
        default=None,
        description="seed 003: only participants with a portal account are notified. Left out: true for "
        "staff and clients; external agents never have one (true is refused) and are always notified",
    )

    def fields(self) -> dict[str, Any]:
        """Keyword arguments for ``directory.upsert_user``: the API and the importer load users alike."""
        from mailbridge.domain.models import StaffRole, UserKind

        if self.kind == "staff" and self.role is None:
            from mailbridge.domain.errors import Invalid

            raise Invalid("role_required", "staff members need a role", "role")
        return {
            "email": self.email,
            "alt_emails": list(self.alt_emails),
            "name": self.name,
            "kind": UserKind(self.kind),
            "role": StaffRole(self.role) if self.role else None,
            "active": self.active,
            "locale": self.locale,
            "portal_account": self.portal_account,
        }


class UserOut(BaseModel):
    id: str
    email: str
    alt_emails: list[str]
    name: str
    kind: UserKind
    role: StaffRole | None
    active: bool
    locale: str
    portal_account: bool
    email_bouncing: bool  # the primary address bounces (hard, or soft until it expires): ask for a new one
    email_suppression: str | None = (
        None  # hard_bounce | soft_bounce | complaint: why it gets no notifications
    )


class CompanyIn(Strict):
    name: str = Field(min_length=1, max_length=255)


class CompanyOut(BaseModel):
    id: str
    name: str


class FriendshipIn(Strict):
    state: FriendshipState


class FriendshipOut(BaseModel):
    user_a: str
    user_b: str
    state: FriendshipState


class ConversationIn(Strict):
    """A new conversation and its first message (JSON, or the ``payload`` field of a multipart body)."""

    kind: ConversationKind
    company: str | None = None
    subject: str = Field(min_length=1, max_length=255)
    author: str
    participants: list[str] = Field(min_length=1)
    body: str


class MessageIn(Strict):
    """A message posted by the app (JSON, or the ``payload`` field of a multipart body)."""

    author: str
    body: str
    internal: bool = False


class AttachmentOut(BaseModel):
    id: str
    filename: str
    content_type: str
    size: int
    sha256: str


class WithheldOut(BaseModel):
    filename: str
    reason: str = Field(description="the attachment reason code (docs/reasons.md)")
    explanation: str


class MessageOut(BaseModel):
    id: str
    conversation: str = Field(description="The id of the conversation the message belongs to")
    author: str
    body: str
    body_html: str | None
    source: MessageSource
    internal: bool
    created_at: datetime
    attachments: list[AttachmentOut]
    withheld: list[WithheldOut] = Field(
        default=[],
        description="Always empty for app posts: a file the rules withhold is refused with 422 "
        "attachment_refused. Kept for compatibility; an email's withheld files are named in its body.",
    )


class ConversationOut(BaseModel):
    id: str
    kind: ConversationKind
    company: str | None
    subject: str
    participants: list[str]
    created_at: datetime
    last_message_at: datetime | None = Field(
        default=None, description="When the latest message this reader may see was posted"
    )
    message_count: int = Field(default=0, description="How many messages this reader may see")
    messages: list[MessageOut] = Field(
        default=[],
        description="The thread (GET of one conversation, and the answer to its creation). Always empty "
        "in list items, kept there for compatibility and deprecated: use message_count and "
        "last_message_at, and GET …/conversations/{id}/messages for the thread.",
    )


class Items(BaseModel):
    """A whole list (short by nature: routes, mailboxes, webhooks, domains)."""

    items: list[Any]


class Page(BaseModel):
    """A page of a list (keyset pagination): ``next_cursor`` goes in ``?cursor=`` for the next page.
    The typed pages below (``ConversationPage``…) name their items for /openapi.json."""

    items: list[Any]
    next_cursor: str | None = Field(
        default=None,
        description="Opaque; pass it as ?cursor= to get the next page. null: this is the last page.",
    )


class ConversationPage(Page):
    items: list[ConversationOut]


class MessagePage(Page):
    items: list[MessageOut]


class UserPage(Page):
    items: list[UserOut]


class CompanyPage(Page):
    items: list[CompanyOut]


class FriendshipPage(Page):
    items: list[FriendshipOut]


class ItemError(BaseModel):
    status: int
    code: str
    detail: str
    field: str | None = None


class ItemResultOut(BaseModel):
    type: Literal["user", "company", "favorite", "friendship"]
    id: str = Field(description="The item's id; user/company for a favourite, user_a/user_b for a friendship")
    status: Literal["created", "updated", "failed"]
    error: ItemError | None = Field(
        default=None, description="Why a failed item failed (its problem, as the single route answers)"
    )


class BulkOut(BaseModel):
    results: list[ItemResultOut] = Field(
        description="One per item, users then companies, favourites, friendships, in the order given"
    )
    counts: dict[str, int] = Field(description="created, updated, failed")
