"""The data model: practices, their directory, conversations and everything mail leaves behind."""

from __future__ import annotations

import enum
import secrets
from datetime import UTC, datetime
from typing import Annotated, Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Enum,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    true,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship
from sqlalchemy.types import TypeDecorator

from mailbridge.domain.addresses import normalise


class UTCDateTime(TypeDecorator[datetime]):
    """Timestamps are UTC-aware everywhere: SQLite stores no zone, so it is put back on the way out.

    On the way in every value becomes UTC: SQLite's DateTime keeps the wall-clock digits and drops
    the offset, so ``18:39:43+01:00`` used to be stored (and compared, e.g. by the API's ``since``)
    as 18:39:43 UTC, an hour late (issue 20, item 8). A naive value is taken as UTC, as documented."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is not None and value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return value


def utcnow() -> datetime:
    return datetime.now(UTC)


def new_id() -> str:
    """Opaque, unguessable ids for what mailbridge creates (conversations, messages, log rows)."""
    return secrets.token_hex(12)


class UserKind(enum.StrEnum):
    staff = "staff"
    client = "client"
    external = "external"  # seed 003's external agents: outside the practice, by email only


class StaffRole(enum.StrEnum):
    provider = "provider"
    biller = "biller"
    front_office = "front_office"
    admin = "admin"


class ConversationKind(enum.StrEnum):
    company = "company"
    confidential = "confidential"
    private = "private"
    direct = "direct"


class FriendshipState(enum.StrEnum):
    requested = "requested"
    accepted = "accepted"
    closed = "closed"


class MessageSource(enum.StrEnum):
    app = "app"
    email = "email"
    imap = "imap"


class InboundState(enum.StrEnum):
    received = "received"
    posted = "posted"
    rejected = "rejected"
    quarantined = "quarantined"
    dropped_auto_reply = "dropped_auto_reply"
    bounce = "bounce"
    complaint = "complaint"
    ignored = "ignored"  # at a VERP address, but neither a bounce nor a complaint (a person, a challenge)
    duplicate = "duplicate"
    forwarded = "forwarded"
    deferred = "deferred"


class OutboxState(enum.StrEnum):
    pending = "pending"
    sent = "sent"
    failed = "failed"
    expired = "expired"
    suppressed = "suppressed"


class OutboxKind(enum.StrEnum):
    notification = "notification"
    notice = "notice"
    forward = "forward"


class DkimKeyState(enum.StrEnum):
    """pending (its TXT record not seen yet) → active (signs) → retiring (replaced, still published
    so mail in flight verifies) → retired (its record may be removed). A key never goes back."""

    pending = "pending"
    active = "active"
    retiring = "retiring"
    retired = "retired"


class DkimAlgorithm(enum.StrEnum):
    rsa = "rsa"  # rsa-sha256, RSA-2048: always the first signature
    ed25519 = "ed25519"  # ed25519-sha256, a second signature beside RSA (RFC 8463)


pk_int = Annotated[int, mapped_column(Integer, primary_key=True, autoincrement=True)]
pk_str = Annotated[str, mapped_column(String(32), primary_key=True, default=new_id)]
created_at = Annotated[datetime, mapped_column(UTCDateTime(), default=utcnow, nullable=False)]
external_id = Annotated[str, mapped_column(String(128), nullable=False)]

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def _enum(cls: type[enum.Enum]) -> Enum:
    # Stored as plain strings (no native PG enum): adding a value later needs no ALTER TYPE.
    return Enum(cls, native_enum=False, length=32, values_callable=lambda e: [m.value for m in e])


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)
    type_annotation_map = {dict[str, Any]: JSON}


class Practice(Base):
    __tablename__ = "practices"
    id: Mapped[pk_int]
    slug: Mapped[str] = mapped_column(String(64), unique=True)
    name: Mapped[str] = mapped_column(String(255))
    # Unique: the domain's mail (replies, routes, postmaster@) belongs to one practice (issue 11 #6).
    reply_domain: Mapped[str] = mapped_column(String(255), index=True, unique=True)
    notify_from: Mapped[str] = mapped_column(String(320))
    locale: Mapped[str] = mapped_column(String(8), default="en")
    settings: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    created_at: Mapped[created_at]
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, onupdate=utcnow)


class User(Base):
    __tablename__ = "users"
    __table_args__ = (UniqueConstraint("practice_id", "external_id"),)
    id: Mapped[pk_int]
    practice_id: Mapped[int] = mapped_column(ForeignKey("practices.id", ondelete="CASCADE"), index=True)
    external_id: Mapped[external_id]
    email: Mapped[str] = mapped_column(String(320))
    name: Mapped[str] = mapped_column(String(255))
    locale: Mapped[str] = mapped_column(String(8), default="en")
    kind: Mapped[UserKind] = mapped_column(_enum(UserKind))
    role: Mapped[StaffRole | None] = mapped_column(_enum(StaffRole), nullable=True)
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    # Seed 003: "recipients with a portal account created will be immediately notified". Staff and
    # clients without one get no notification; external agents never have one (they read by email).
    portal_account: Mapped[bool] = mapped_column(Boolean, default=True, server_default=true())
    created_at: Mapped[created_at]
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, onupdate=utcnow)
    # DELETE …/users/{id}: the row stays (messages name their author, audit rows their actor), out
    # of the directory (domain/directory.delete_user says what else ends). A PUT brings the id back.
    deleted_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)

    addresses: Mapped[list[UserAddress]] = relationship(back_populates="user", cascade="all, delete-orphan")

    @property
    def alt_emails(self) -> list[str]:
        return sorted(a.address for a in self.addresses if not a.primary)

    def owns_address(self, address: str) -> bool:
        wanted = normalise(address)
        return any(a.address == wanted for a in self.addresses)


class UserAddress(Base):
    """Every address a user may write from: the primary and verified alternates, normalised
    (``domain.addresses.normalise``). One holder per address in a practice: ``address_key`` is the
    address under a unique index; it is null only on duplicates made before addresses were unique
    (migration 0017 keeps and reports them, and sender recognition refuses to guess between them)."""

    __tablename__ = "user_addresses"
    id: Mapped[pk_int]
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    practice_id: Mapped[int] = mapped_column(ForeignKey("practices.id", ondelete="CASCADE"))
    address: Mapped[str] = mapped_column(String(320))
    address_key: Mapped[str | None] = mapped_column(String(320), nullable=True)
    primary: Mapped[bool] = mapped_column(Boolean, default=False)
    user: Mapped[User] = relationship(back_populates="addresses")

    __table_args__ = (
        UniqueConstraint("user_id", "address"),
        Index("ix_user_addresses_practice_address", "practice_id", "address"),
        Index("uq_user_addresses_practice_address_key", "practice_id", "address_key", unique=True),
    )


class Company(Base):
    __tablename__ = "companies"
    __table_args__ = (UniqueConstraint("practice_id", "external_id"),)
    id: Mapped[pk_int]
    practice_id: Mapped[int] = mapped_column(ForeignKey("practices.id", ondelete="CASCADE"), index=True)
    external_id: Mapped[external_id]
    name: Mapped[str] = mapped_column(String(255))
    # DELETE …/companies/{id}: the row stays (conversations name their company), its favourites go.
    deleted_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)


class Favorite(Base):
    __tablename__ = "favorites"
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), primary_key=True)
    company_id: Mapped[int] = mapped_column(
        ForeignKey("companies.id", ondelete="CASCADE"), primary_key=True, index=True
    )


class Friendship(Base):
    """Two staff users; stored with user_low < user_high so the pair is unique whatever the order."""

    __tablename__ = "friendships"
    __table_args__ = (UniqueConstraint("user_low_id", "user_high_id"),)
    id: Mapped[pk_int]
    practice_id: Mapped[int] = mapped_column(ForeignKey("practices.id", ondelete="CASCADE"))
    user_low_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    user_high_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    state: Mapped[FriendshipState] = mapped_column(_enum(FriendshipState))
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, onupdate=utcnow)


class Conversation(Base):
    __tablename__ = "conversations"
    # keyset pagination: a practice's conversations by latest activity or by creation
    __table_args__ = (
        Index("ix_conversations_practice_updated", "practice_id", "updated_at", "id"),
        Index("ix_conversations_practice_created", "practice_id", "created_at", "id"),
    )
    id: Mapped[pk_str]
    practice_id: Mapped[int] = mapped_column(ForeignKey("practices.id", ondelete="CASCADE"), index=True)
    kind: Mapped[ConversationKind] = mapped_column(_enum(ConversationKind))
    company_id: Mapped[int | None] = mapped_column(ForeignKey("companies.id"), nullable=True)
    subject: Mapped[str] = mapped_column(String(255))
    creator_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    created_at: Mapped[created_at]
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    deleted_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)

    participants: Mapped[list[Participant]] = relationship(
        back_populates="conversation", cascade="all, delete-orphan", lazy="selectin"
    )
    company: Mapped[Company | None] = relationship(lazy="joined")
    creator: Mapped[User] = relationship(lazy="joined")

    def active_participants(self) -> list[Participant]:
        return [p for p in self.participants if p.removed_at is None]


class Participant(Base):
    __tablename__ = "participants"
    __table_args__ = (UniqueConstraint("conversation_id", "user_id"),)
    id: Mapped[pk_int]
    conversation_id: Mapped[str] = mapped_column(ForeignKey("conversations.id", ondelete="CASCADE"))
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    added_at: Mapped[created_at]
    removed_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    conversation: Mapped[Conversation] = relationship(back_populates="participants")
    user: Mapped[User] = relationship(lazy="joined")


class Message(Base):
    __tablename__ = "messages"
    __table_args__ = (Index("ix_messages_thread", "conversation_id", "created_at", "id"),)  # a thread's pages
    id: Mapped[pk_str]
    conversation_id: Mapped[str] = mapped_column(
        ForeignKey("conversations.id", ondelete="CASCADE"), index=True
    )
    author_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    body: Mapped[str] = mapped_column(Text, default="")
    body_html: Mapped[str | None] = mapped_column(Text, nullable=True)
    hidden_text: Mapped[str | None] = mapped_column(Text, nullable=True)  # trimmed quote/signature
    source: Mapped[MessageSource] = mapped_column(_enum(MessageSource))
    internal: Mapped[bool] = mapped_column(Boolean, default=False)
    idempotency_key: Mapped[str | None] = mapped_column(String(64), unique=True, nullable=True)
    created_at: Mapped[created_at]
    deleted_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)

    author: Mapped[User] = relationship(lazy="joined")
    attachments: Mapped[list[Attachment]] = relationship(
        back_populates="message",
        cascade="all, delete-orphan",
        lazy="selectin",
        order_by="Attachment.position",
    )


class Attachment(Base):
    __tablename__ = "attachments"
    id: Mapped[pk_str]
    message_id: Mapped[str] = mapped_column(ForeignKey("messages.id", ondelete="CASCADE"), index=True)
    position: Mapped[int] = mapped_column(Integer, default=0)
    filename: Mapped[str] = mapped_column(String(255))
    content_type: Mapped[str] = mapped_column(String(255))  # sniffed
    declared_type: Mapped[str] = mapped_column(String(255))
    size: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64), index=True)
    content_id: Mapped[str | None] = mapped_column(String(255), nullable=True)
    # The object's reference (``att/<practice>/<name>[.mbe]``, storage.vault); None for files
    # stored before object storage, found by sha256 in DATA_DIR/attachments.
    storage_key: Mapped[str | None] = mapped_column(String(512), nullable=True, index=True)
    message: Mapped[Message] = relationship(back_populates="attachments")


class AuditEvent(Base):
    """What was done, by whom, to what: never the content (deletions must stay deleted).

    ``actor`` names who acted whatever they are: ``staff:<external id>`` for a directory user (also
    in ``actor_id``), ``operator:<name>`` for a console operator, ``api`` for the service key alone.
    ``details`` holds ids and outcomes (the message a release posted, a contact it created), never text.
    """

    __tablename__ = "audit_events"
    __table_args__ = (Index("ix_audit_events_practice_created", "practice_id", "created_at", "id"),)
    id: Mapped[pk_int]
    practice_id: Mapped[int] = mapped_column(ForeignKey("practices.id", ondelete="CASCADE"), index=True)
    action: Mapped[str] = mapped_column(String(64))
    actor_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"), nullable=True)
    actor: Mapped[str | None] = mapped_column(String(200), nullable=True)
    target_kind: Mapped[str] = mapped_column(String(32))
    target_id: Mapped[str] = mapped_column(String(64))
    details: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    created_at: Mapped[created_at]


class ReplyToken(Base):
    """One per (participant, conversation); only the SHA-256 of the token is stored."""

    __tablename__ = "reply_tokens"
    __table_args__ = (UniqueConstraint("user_id", "conversation_id"),)
    id: Mapped[pk_int]
    practice_id: Mapped[int] = mapped_column(ForeignKey("practices.id", ondelete="CASCADE"), index=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    conversation_id: Mapped[str] = mapped_column(ForeignKey("conversations.id", ondelete="CASCADE"))
    nonce: Mapped[str] = mapped_column(String(32))  # useless without the server secret
    lookup: Mapped[str] = mapped_column(String(64), unique=True)  # SHA-256 of the token
    created_at: Mapped[created_at]
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    last_used_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)


class InboundLog(Base):
    """Every inbound email, accepted or refused, with the rule that decided and why."""

    __tablename__ = "inbound_log"
    # The console's lists and searches: keyset pages by (received_at, id), an address, a Message-ID,
    # a conversation or a reply token, each within one practice (docs/benchmarks.md: 100,000 rows).
    __table_args__ = (
        Index("ix_inbound_log_practice_received", "practice_id", "received_at", "id"),
        Index("ix_inbound_log_practice_from", "practice_id", "from_header"),
        Index("ix_inbound_log_practice_mail_from", "practice_id", "mail_from"),
        Index("ix_inbound_log_practice_msgid", "practice_id", "message_id_header"),
        Index("ix_inbound_log_conversation", "conversation_id"),
        Index("ix_inbound_log_token", "token_id"),
    )
    id: Mapped[pk_str]
    practice_id: Mapped[int | None] = mapped_column(
        ForeignKey("practices.id", ondelete="CASCADE"), index=True
    )
    received_at: Mapped[created_at]
    door: Mapped[str] = mapped_column(String(8))  # smtp | lmtp | imap | api
    peer: Mapped[str | None] = mapped_column(String(64), nullable=True)
    helo: Mapped[str | None] = mapped_column(String(255), nullable=True)
    mail_from: Mapped[str] = mapped_column(String(320), default="")
    rcpt: Mapped[str] = mapped_column(String(320), default="")  # token part redacted
    from_header: Mapped[str | None] = mapped_column(String(320), nullable=True)
    message_id_header: Mapped[str | None] = mapped_column(String(998), nullable=True)
    token_id: Mapped[int | None] = mapped_column(
        ForeignKey("reply_tokens.id", ondelete="SET NULL"), nullable=True
    )
    auth_results: Mapped[str | None] = mapped_column(Text, nullable=True)
    rule: Mapped[str | None] = mapped_column(String(64), nullable=True)
    reason: Mapped[str | None] = mapped_column(String(64), nullable=True)
    state: Mapped[InboundState] = mapped_column(_enum(InboundState), default=InboundState.received)
    smtp_reply: Mapped[str | None] = mapped_column(String(255), nullable=True)
    size: Mapped[int] = mapped_column(BigInteger, default=0)
    raw_sha256: Mapped[str | None] = mapped_column(String(64), nullable=True)
    # Rows written before object storage: an absolute path under DATA_DIR/inbound (read, never written).
    raw_path: Mapped[str | None] = mapped_column(String(512), nullable=True)
    # The raw copy in the object store (``raw/<practice>/<day>/<id>[.mbe]``), while it is kept.
    raw_ref: Mapped[str | None] = mapped_column(String(512), nullable=True)
    posted_message_id: Mapped[str | None] = mapped_column(String(32), nullable=True)
    conversation_id: Mapped[str | None] = mapped_column(String(32), nullable=True)
    details: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)  # per-attachment verdicts etc.
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, onupdate=utcnow)


class Outbox(Base):
    """The transactional outbox: one row per email to send, written with the message that caused it."""

    __tablename__ = "outbox"
    __table_args__ = (
        Index("ix_outbox_due", "state", "next_attempt_at"),
        # A reply finds the notifications its author received in the conversation (own-copy cut).
        Index("ix_outbox_conversation_recipient", "conversation_id", "recipient_id"),
        Index("ix_outbox_practice_created", "practice_id", "created_at", "id"),
        Index("ix_outbox_practice_to", "practice_id", "to_address"),
        Index("ix_outbox_message", "message_id"),
    )
    id: Mapped[pk_str]
    practice_id: Mapped[int] = mapped_column(ForeignKey("practices.id", ondelete="CASCADE"), index=True)
    kind: Mapped[OutboxKind] = mapped_column(_enum(OutboxKind))
    message_id: Mapped[str | None] = mapped_column(
        ForeignKey("messages.id", ondelete="CASCADE"), nullable=True
    )
    conversation_id: Mapped[str | None] = mapped_column(String(32), nullable=True)
    recipient_id: Mapped[int | None] = mapped_column(
        ForeignKey("users.id", ondelete="CASCADE"), nullable=True
    )
    to_address: Mapped[str] = mapped_column(String(320))
    payload: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    state: Mapped[OutboxState] = mapped_column(_enum(OutboxState), default=OutboxState.pending)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    lease_until: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    last_answer: Mapped[str | None] = mapped_column(String(512), nullable=True)
    message_id_header: Mapped[str | None] = mapped_column(String(255), nullable=True)
    # Keyed word-run hashes of what a notification said (domain/fingerprint.py), never its text.
    sent_fingerprint: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    created_at: Mapped[created_at]
    sent_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)


class SuppressionReason(enum.StrEnum):
    hard_bounce = "hard_bounce"  # the address or mailbox does not exist: until removed
    soft_bounce = "soft_bounce"  # repeated temporary failures: expires
    complaint = "complaint"  # the recipient reported our mail as spam: until removed


class Suppression(Base):
    """An address of a practice that notifications are not sent to, and why (``domain/suppressions``).

    Only a report that arrived at the signed VERP address of a row we sent, or our smarthost's
    answer for that row, writes one (``policy/feedback``). ``active`` says the address is
    suppressed (a soft bounce counts first); ``expires_at`` ends a soft one.
    """

    __tablename__ = "suppressions"
    __table_args__ = (
        UniqueConstraint("practice_id", "address"),
        Index("ix_suppressions_practice_pages", "practice_id", "id"),  # keyset pages, newest first
    )
    id: Mapped[pk_int]
    practice_id: Mapped[int] = mapped_column(ForeignKey("practices.id", ondelete="CASCADE"))
    address: Mapped[str] = mapped_column(String(320))  # lower-cased
    reason: Mapped[SuppressionReason] = mapped_column(_enum(SuppressionReason))
    status: Mapped[str | None] = mapped_column(String(16), nullable=True)  # RFC 3463, e.g. 5.1.1
    diagnostic: Mapped[str | None] = mapped_column(String(512), nullable=True)
    outbox_id: Mapped[str | None] = mapped_column(String(32), nullable=True)  # the last row reported on
    count: Mapped[int] = mapped_column(Integer, default=0)
    active: Mapped[bool] = mapped_column(Boolean, default=False)
    first_seen: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    last_seen: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)


class NoticeSent(Base):
    """Rate limit for rejection notices: one per address per reason per day."""

    __tablename__ = "notices_sent"
    __table_args__ = (UniqueConstraint("practice_id", "address", "reason", "day"),)
    id: Mapped[pk_int]
    practice_id: Mapped[int] = mapped_column(ForeignKey("practices.id", ondelete="CASCADE"))
    address: Mapped[str] = mapped_column(String(320))
    reason: Mapped[str] = mapped_column(String(64))
    day: Mapped[str] = mapped_column(String(10))


class Route(Base):
    """A practice address (frontdesk@, billing@) that opens a conversation with a staff group."""

    __tablename__ = "routes"
    __table_args__ = (UniqueConstraint("address"),)
    id: Mapped[pk_int]
    practice_id: Mapped[int] = mapped_column(ForeignKey("practices.id", ondelete="CASCADE"), index=True)
    address: Mapped[str] = mapped_column(String(320))  # lower-cased full address
    staff: Mapped[list[str]] = mapped_column(JSON, default=list)  # external ids
    roles: Mapped[list[str]] = mapped_column(JSON, default=list)
    kind: Mapped[ConversationKind] = mapped_column(_enum(ConversationKind), default=ConversationKind.private)
    unknown_senders: Mapped[str] = mapped_column(String(16), default="reject")  # reject | triage


class QuarantineItem(Base):
    """Mail held for staff review: never visible to a client, never auto-replied."""

    __tablename__ = "quarantine"
    __table_args__ = (
        Index("ix_quarantine_practice_state_created", "practice_id", "state", "created_at", "id"),
        Index("ix_quarantine_inbound", "inbound_id"),
    )
    id: Mapped[pk_str]
    practice_id: Mapped[int] = mapped_column(ForeignKey("practices.id", ondelete="CASCADE"), index=True)
    inbound_id: Mapped[str] = mapped_column(ForeignKey("inbound_log.id", ondelete="CASCADE"))
    route_address: Mapped[str | None] = mapped_column(String(320), nullable=True)
    conversation_id: Mapped[str | None] = mapped_column(String(32), nullable=True)  # held reply's target
    reason: Mapped[str] = mapped_column(String(64))
    from_address: Mapped[str] = mapped_column(String(320), default="")
    subject: Mapped[str] = mapped_column(String(998), default="")
    state: Mapped[str] = mapped_column(String(16), default="held")  # held | released | discarded
    # What staff need to decide without opening the raw mail: the sender's display name, the start of
    # the reply as the pipeline extracted it, whether it is an internal note, the files (name, declared
    # type, size). Content: erased with the message (see domain.erasure).
    summary: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    created_at: Mapped[created_at]
    decided_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)


class Mailbox(Base):
    """An IMAP mailbox polled for a practice whose mail lives elsewhere (Microsoft 365, Google, hosting)."""

    __tablename__ = "mailboxes"
    __table_args__ = (UniqueConstraint("practice_id", "name"),)
    id: Mapped[pk_int]
    practice_id: Mapped[int] = mapped_column(ForeignKey("practices.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(64))
    host: Mapped[str] = mapped_column(String(255))
    port: Mapped[int] = mapped_column(Integer, default=993)
    security: Mapped[str] = mapped_column(String(16), default="tls")  # tls | starttls | none
    username: Mapped[str] = mapped_column(String(320))
    # An environment variable named by the operator's allow-list (``imap_password_envs``) only.
    password_env: Mapped[str | None] = mapped_column(String(128), nullable=True)
    # Legacy plaintext from before migration 0004: sealed into ``password_sealed`` by ``db upgrade``,
    # ``serve`` or the poller's first read, then emptied. Never written with a value any more.
    password: Mapped[str | None] = mapped_column(String(255), nullable=True)
    # The password given through the API, sealed with the practice's data key (purpose
    # ``mailbox:<practice id>:<name>:password``); write-only, opened by the poller when it connects.
    password_sealed: Mapped[str | None] = mapped_column(Text, nullable=True)
    # password (LOGIN) | oauth2 (SASL XOAUTH2 or OAUTHBEARER with a token from ``oauth``'s endpoint)
    auth: Mapped[str] = mapped_column(String(16), default="password", server_default="password")
    # provider, mechanism, token_url, client_id, tenant, scope: nothing secret (ingress.oauth)
    oauth: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    # client secret, refresh token or certificate key: sealed JSON, never returned by the API
    oauth_secret: Mapped[str | None] = mapped_column(Text, nullable=True)
    folder: Mapped[str] = mapped_column(String(255), default="INBOX")
    routing_address: Mapped[str | None] = mapped_column(String(320), nullable=True)
    on_done: Mapped[str] = mapped_column(String(16), default="move")  # move | flag
    # The provider's authserv-id (e.g. "mx.google.com"): its Authentication-Results are believed for
    # this mailbox only. Over IMAP there is no peer address, so SPF cannot be checked here.
    trusted_authserv_id: Mapped[str | None] = mapped_column(String(255), nullable=True)
    uidvalidity: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    last_uid: Mapped[int] = mapped_column(BigInteger, default=0)
    status: Mapped[str] = mapped_column(String(32), default="new")
    last_error: Mapped[str | None] = mapped_column(String(512), nullable=True)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, onupdate=utcnow)
    # The node polling this mailbox and until when (ingress/leases.py): one poller across all nodes.
    lease_holder: Mapped[str | None] = mapped_column(String(128), nullable=True)
    lease_until: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)


class DataKey(Base):
    """A practice's (or, with no practice, the platform's) data key, wrapped by the master key.

    Only ``crypto.keyring`` reads these; the master key that wrapped each one is named by its
    fingerprint, so a node holding another master key says so instead of reading garbage."""

    __tablename__ = "data_keys"
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    practice_id: Mapped[int | None] = mapped_column(
        ForeignKey("practices.id", ondelete="CASCADE"), nullable=True, index=True
    )
    master_id: Mapped[str] = mapped_column(String(32))
    wrapped: Mapped[str] = mapped_column(Text)
    created_at: Mapped[created_at]
    retired_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)


class PlatformState(Base):
    """Facts every node of a deployment must agree on (fingerprints of shared secrets), by name."""

    __tablename__ = "platform_state"
    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(String(255))
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, onupdate=utcnow)


class DkimKeyRow(Base):
    """A practice's DKIM key: the private half sealed with the keyring, so every node signs with it.

    The selector is never reused within a practice (a published record names exactly one key);
    ``domain`` is the d= the key was made for (the From domain at the time), where its record lives.
    """

    __tablename__ = "dkim_keys"
    __table_args__ = (UniqueConstraint("practice_id", "selector"),)
    id: Mapped[pk_int]
    practice_id: Mapped[int] = mapped_column(ForeignKey("practices.id", ondelete="CASCADE"), index=True)
    selector: Mapped[str] = mapped_column(String(63))
    domain: Mapped[str] = mapped_column(String(255))
    algorithm: Mapped[DkimAlgorithm] = mapped_column(_enum(DkimAlgorithm))
    private_key: Mapped[str] = mapped_column(Text)  # sealed: purpose "dkim:<practice>:<selector>:<algorithm>"
    public_txt: Mapped[str] = mapped_column(Text)  # "v=DKIM1; k=rsa; p=..."
    state: Mapped[DkimKeyState] = mapped_column(_enum(DkimKeyState), default=DkimKeyState.pending)
    created_at: Mapped[created_at]
    activated_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    retired_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    last_checked_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    dns_status: Mapped[str | None] = mapped_column(String(16), nullable=True)  # published | missing | …


class PracticeDomain(Base):
    """A domain the operator approved for a practice besides its reply domain (routes, postmaster@).

    A domain belongs to at most one practice: unique here, and never another practice's reply domain
    (checked where either is written: ``domain.domains``)."""

    __tablename__ = "practice_domains"
    id: Mapped[pk_int]
    practice_id: Mapped[int] = mapped_column(ForeignKey("practices.id", ondelete="CASCADE"), index=True)
    domain: Mapped[str] = mapped_column(String(255), unique=True)  # lower-cased, no trailing dot
    source: Mapped[str] = mapped_column(String(16), default="cli")  # cli | import | api | migration
    created_at: Mapped[created_at]


class ApiKey(Base):
    """A practice-scoped API key: only the SHA-256 of the key is stored (it is 256 random bits, so a
    fast hash is enough and the look-up on every request is one indexed read). The global key of
    the settings (``MAILBRIDGE_API_KEY``) is the only key that reaches every practice."""

    __tablename__ = "api_keys"
    id: Mapped[pk_str]
    practice_id: Mapped[int] = mapped_column(ForeignKey("practices.id", ondelete="CASCADE"), index=True)
    scope: Mapped[str] = mapped_column(String(8))  # app | read
    label: Mapped[str] = mapped_column(String(128), default="")
    prefix: Mapped[str] = mapped_column(String(16))  # the key's first characters, to recognise it
    hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[created_at]
    last_used_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)


class Operator(Base):
    """A person who runs the practice's mail through the console (not a directory user).

    Scope: the practices listed in ``operator_practices``, or every practice with ``all_practices``.
    ``content_rights``: may read what mail says (subjects, bodies, the raw message); without it the
    console shows how mail was handled, never what it says (docs/console.md)."""

    __tablename__ = "operators"
    id: Mapped[pk_int]
    name: Mapped[str] = mapped_column(String(64), unique=True)
    password_hash: Mapped[str] = mapped_column(String(255))  # argon2id, PHC string
    all_practices: Mapped[bool] = mapped_column(Boolean, default=False)
    content_rights: Mapped[bool] = mapped_column(Boolean, default=False)
    email: Mapped[str | None] = mapped_column(String(320), nullable=True)  # "send a test to me"
    locale: Mapped[str] = mapped_column(String(8), default="en")
    disabled: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[created_at]
    last_login_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)


class OperatorPractice(Base):
    __tablename__ = "operator_practices"
    operator_id: Mapped[int] = mapped_column(ForeignKey("operators.id", ondelete="CASCADE"), primary_key=True)
    practice_id: Mapped[int] = mapped_column(
        ForeignKey("practices.id", ondelete="CASCADE"), primary_key=True, index=True
    )


class OperatorSession(Base):
    """A console sign-in, server-side so that logout and idle expiry hold on every node.

    ``id`` is the SHA-256 of the cookie's random token: the database never holds a usable cookie."""

    __tablename__ = "operator_sessions"
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    operator_id: Mapped[int] = mapped_column(ForeignKey("operators.id", ondelete="CASCADE"), index=True)
    csrf_token: Mapped[str] = mapped_column(String(64))
    peer: Mapped[str | None] = mapped_column(String(64), nullable=True)
    created_at: Mapped[created_at]
    last_seen_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime())  # absolute limit, whatever the activity


class LoginThrottle(Base):
    """Failed console sign-ins per account and per address, in the database so every node sees them."""

    __tablename__ = "console_login_throttle"
    key: Mapped[str] = mapped_column(String(400), primary_key=True)  # account:NAME | address:IP
    failures: Mapped[int] = mapped_column(Integer, default=0)
    window_started_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    blocked_until: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)


class OperatorAudit(Base):
    """What an operator did in the console, and when: sign-ins, releases, discards, edits.

    A table of its own: ``audit_events`` names a directory user and always a practice, while an
    operator is not a directory user and a sign-in belongs to no practice. The operator's name is
    kept with the row, so the history survives the account's removal. Never content."""

    __tablename__ = "operator_audit"
    __table_args__ = (
        Index("ix_operator_audit_practice_created", "practice_id", "created_at", "id"),
        Index("ix_operator_audit_created", "created_at", "id"),
        Index("ix_operator_audit_target", "target_kind", "target_id"),
    )
    id: Mapped[pk_int]
    created_at: Mapped[created_at]
    operator_id: Mapped[int | None] = mapped_column(
        ForeignKey("operators.id", ondelete="SET NULL"), nullable=True
    )
    operator_name: Mapped[str] = mapped_column(String(64))
    practice_id: Mapped[int | None] = mapped_column(
        ForeignKey("practices.id", ondelete="CASCADE"), nullable=True
    )
    action: Mapped[str] = mapped_column(String(64))
    target_kind: Mapped[str] = mapped_column(String(32), default="")
    target_id: Mapped[str] = mapped_column(String(320), default="")
    details: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    peer: Mapped[str | None] = mapped_column(String(64), nullable=True)


def new_event_id() -> str:
    """``evt_`` + 12 hex digits of milliseconds since 1970 + 16 random hex digits: sortable by time,
    unique without coordination (a restored database never reuses one, so a receiver that dedupes by
    ``webhook-id`` never drops a new event as a duplicate of an old one)."""
    import time

    return f"evt_{int(time.time() * 1000):012x}{secrets.token_hex(8)}"


class Event(Base):
    """What happened, written in the transaction that made it happen (a transactional outbox).

    ``data`` holds ids and codes only; content (a message's text, a chart note) is read when an
    event is delivered to an endpoint that asked for it, so a deletion reaches webhooks too.
    ``seq`` orders events (a database sequence: an event committed before another was written has
    the smaller one); ``id`` is the public, stable id (the ``webhook-id`` of every delivery).
    ``dispatched_at`` is set once the event has been fanned out to the webhook endpoints.
    """

    __tablename__ = "events"
    __table_args__ = (
        Index("ix_events_undispatched", "dispatched_at", "seq"),
        Index("ix_events_practice_seq", "practice_id", "seq"),
    )
    seq: Mapped[pk_int]
    id: Mapped[str] = mapped_column(String(32), unique=True, default=new_event_id)
    practice_id: Mapped[int | None] = mapped_column(
        ForeignKey("practices.id", ondelete="CASCADE"), nullable=True
    )
    type: Mapped[str] = mapped_column(String(64))
    conversation_id: Mapped[str | None] = mapped_column(String(32), nullable=True)
    data: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    created_at: Mapped[created_at]
    dispatched_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)


class WebhookEndpoint(Base):
    """Where a practice's (or, with no practice, every practice's) events are POSTed, signed.

    ``secret`` is sealed with the keyring (purpose ``webhook:<id>:secret``); after a rotation the
    previous one (``webhook:<id>:previous_secret``) signs too until ``previous_expires_at``.
    ``active`` is the owner's switch; ``disabled_at`` is set by mailbridge after sustained failure
    (cleared by a PUT with ``active: true``). ``scope_key`` makes the name unique per practice and
    among platform endpoints alike (a unique index treats NULL practice ids as all different).
    """

    __tablename__ = "webhook_endpoints"
    id: Mapped[pk_int]
    scope_key: Mapped[str] = mapped_column(
        String(96), unique=True
    )  # "p<practice id>:<name>" | "platform:<name>"
    practice_id: Mapped[int | None] = mapped_column(
        ForeignKey("practices.id", ondelete="CASCADE"), nullable=True, index=True
    )
    name: Mapped[str] = mapped_column(String(64))
    url: Mapped[str] = mapped_column(String(2048))
    events: Mapped[list[str]] = mapped_column(JSON, default=list)
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    include_content: Mapped[bool] = mapped_column(Boolean, default=False)
    secret: Mapped[str] = mapped_column(Text, default="")
    previous_secret: Mapped[str | None] = mapped_column(Text, nullable=True)
    previous_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    secret_rotated_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    disabled_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    disabled_reason: Mapped[str | None] = mapped_column(String(512), nullable=True)
    last_success_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    created_at: Mapped[created_at]
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, onupdate=utcnow)


class WebhookDeliveryState(enum.StrEnum):
    pending = "pending"  # waiting for its (next) attempt
    delivered = "delivered"  # a 2xx answer
    failed = "failed"  # every attempt of the retry schedule failed
    skipped = "skipped"  # the endpoint was inactive or disabled when the event happened (redeliverable)


class WebhookDelivery(Base):
    """One event for one endpoint: the delivery log, and the work queue of the webhook worker."""

    __tablename__ = "webhook_deliveries"
    __table_args__ = (
        UniqueConstraint("endpoint_id", "event_seq"),
        Index("ix_webhook_deliveries_due", "state", "next_attempt_at"),
        Index("ix_webhook_deliveries_order", "endpoint_id", "ordering_key", "state", "event_seq"),
        Index("ix_webhook_deliveries_log", "endpoint_id", "created_at", "id"),
    )
    id: Mapped[pk_str]
    endpoint_id: Mapped[int] = mapped_column(ForeignKey("webhook_endpoints.id", ondelete="CASCADE"))
    event_seq: Mapped[int] = mapped_column(ForeignKey("events.seq", ondelete="CASCADE"), index=True)
    event_id: Mapped[str] = mapped_column(String(32))
    event_type: Mapped[str] = mapped_column(String(64))
    ordering_key: Mapped[str | None] = mapped_column(String(32), nullable=True)  # the conversation
    state: Mapped[WebhookDeliveryState] = mapped_column(
        _enum(WebhookDeliveryState), default=WebhookDeliveryState.pending
    )
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    lease_until: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    first_attempt_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    last_attempt_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    last_status: Mapped[int | None] = mapped_column(Integer, nullable=True)  # the HTTP status, if any
    last_error: Mapped[str | None] = mapped_column(String(512), nullable=True)
    last_duration_ms: Mapped[int | None] = mapped_column(Integer, nullable=True)
    created_at: Mapped[created_at]
    delivered_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)


class ChartNote(Base):
    """A chart-note record of a client (seed 003's quick note): what staff kept from a thread."""

    __tablename__ = "chart_notes"
    __table_args__ = (Index("ix_chart_notes_client_created", "client_id", "created_at", "id"),)
    id: Mapped[pk_str]
    practice_id: Mapped[int] = mapped_column(ForeignKey("practices.id", ondelete="CASCADE"), index=True)
    client_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    conversation_id: Mapped[str | None] = mapped_column(
        ForeignKey("conversations.id", ondelete="SET NULL"), nullable=True
    )
    author_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    title: Mapped[str] = mapped_column(String(255))
    text: Mapped[str] = mapped_column(Text)
    created_at: Mapped[created_at]

    client: Mapped[User] = relationship(foreign_keys=[client_id], lazy="joined")
    author: Mapped[User] = relationship(foreign_keys=[author_id], lazy="joined")


class NotificationMute(Base):
    """A recipient who asked for no more email about one conversation: the one-click unsubscribe
    link of its notifications (List-Unsubscribe, RFC 8058), or the app. Fan-out skips them, with a
    ``skipped: conversation_muted`` row in the delivery log; reading and posting are unchanged."""

    __tablename__ = "notification_mutes"
    __table_args__ = (UniqueConstraint("user_id", "conversation_id"),)
    id: Mapped[pk_int]
    practice_id: Mapped[int] = mapped_column(ForeignKey("practices.id", ondelete="CASCADE"), index=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    conversation_id: Mapped[str] = mapped_column(
        ForeignKey("conversations.id", ondelete="CASCADE"), index=True
    )
    source: Mapped[str] = mapped_column(String(16))  # one_click | page | api
    created_at: Mapped[created_at]


class PracticeTemplate(Base):
    """One version of a practice's own template for one notification kind and locale.

    A version holds the three parts (subject, text, MJML); a part left empty uses the default's.
    Saving makes a new version, the active one; ``DELETE`` deactivates them all (the default applies
    again); versions are never rewritten, so what a practice sent on a given day can be told.
    """

    __tablename__ = "practice_templates"
    __table_args__ = (
        UniqueConstraint("practice_id", "name", "locale", "version"),
        Index("ix_practice_templates_lookup", "practice_id", "active"),
    )
    id: Mapped[pk_int]
    practice_id: Mapped[int] = mapped_column(ForeignKey("practices.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(64))
    locale: Mapped[str] = mapped_column(String(8))
    version: Mapped[int] = mapped_column(Integer)
    subject: Mapped[str | None] = mapped_column(Text, nullable=True)
    text: Mapped[str | None] = mapped_column(Text, nullable=True)
    mjml: Mapped[str | None] = mapped_column(Text, nullable=True)
    active: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[created_at]
    created_by: Mapped[str | None] = mapped_column(String(200), nullable=True)


class PracticeLogo(Base):
    """The practice's logo: a small PNG or JPEG checked by its bytes, sent inline (``cid:``) with
    each notification that shows the practice, never fetched from anywhere (no tracking pixel)."""

    __tablename__ = "practice_logos"
    practice_id: Mapped[int] = mapped_column(ForeignKey("practices.id", ondelete="CASCADE"), primary_key=True)
    content_type: Mapped[str] = mapped_column(String(32))
    data: Mapped[bytes] = mapped_column(LargeBinary)
    sha256: Mapped[str] = mapped_column(String(64))
    width: Mapped[int] = mapped_column(Integer)
    height: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[created_at]


class IdempotencyKey(Base):
    """One ``Idempotency-Key`` a caller sent with a write (issue 20, item 4; mailbridge/api/idempotency.py).

    The row is the lock: it is inserted before the request runs (``response_status`` NULL: in
    flight), so a second node seeing it answers 409; once the answer is known it is stored here and
    replayed to a retry with the same fingerprint (method, path, body). Scoped by practice (the
    slug in the path, empty for platform routes) and caller (the API key's id, or ``platform``).
    Purged by housekeeping after ``api_idempotency_retention_hours``."""

    __tablename__ = "idempotency_keys"
    __table_args__ = (UniqueConstraint("practice", "principal", "key"),)
    id: Mapped[pk_int]
    practice: Mapped[str] = mapped_column(String(128))
    principal: Mapped[str] = mapped_column(String(40))
    key: Mapped[str] = mapped_column(String(255))
    fingerprint: Mapped[str | None] = mapped_column(String(64), nullable=True)
    response_status: Mapped[int | None] = mapped_column(Integer, nullable=True)
    response_headers: Mapped[list[Any] | None] = mapped_column(JSON, nullable=True)
    response_body: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)
    created_at: Mapped[created_at] = mapped_column(UTCDateTime(), default=utcnow, index=True)
    locked_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
