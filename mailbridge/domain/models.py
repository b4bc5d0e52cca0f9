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
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship
from sqlalchemy.types import TypeDecorator


class UTCDateTime(TypeDecorator[datetime]):
    """Timestamps are UTC-aware everywhere: SQLite stores no zone, so it is put back on the way out."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is not None and value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return value

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
    reply_domain: Mapped[str] = mapped_column(String(255), index=True)
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
    email_bouncing: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[created_at]
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, onupdate=utcnow)

    addresses: Mapped[list[UserAddress]] = relationship(back_populates="user", cascade="all, delete-orphan")

    @property
    def alt_emails(self) -> list[str]:
        return sorted(a.address for a in self.addresses if not a.primary)

    def owns_address(self, address: str) -> bool:
        wanted = address.lower()
        return any(a.address == wanted for a in self.addresses)


class UserAddress(Base):
    """Every address a user may write from: the primary and verified alternates, lower-cased."""

    __tablename__ = "user_addresses"
    id: Mapped[pk_int]
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    practice_id: Mapped[int] = mapped_column(ForeignKey("practices.id", ondelete="CASCADE"))
    address: Mapped[str] = mapped_column(String(320))
    primary: Mapped[bool] = mapped_column(Boolean, default=False)
    user: Mapped[User] = relationship(back_populates="addresses")

    __table_args__ = (
        UniqueConstraint("user_id", "address"),
        Index("ix_user_addresses_practice_address", "practice_id", "address"),
    )


class Company(Base):
    __tablename__ = "companies"
    __table_args__ = (UniqueConstraint("practice_id", "external_id"),)
    id: Mapped[pk_int]
    practice_id: Mapped[int] = mapped_column(ForeignKey("practices.id", ondelete="CASCADE"), index=True)
    external_id: Mapped[external_id]
    name: Mapped[str] = mapped_column(String(255))


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
    message: Mapped[Message] = relationship(back_populates="attachments")


class AuditEvent(Base):
    """What was done, by whom, to what: never the content (deletions must stay deleted).

    ``actor`` names who acted whatever they are: ``staff:<external id>`` for a directory user (also
    in ``actor_id``), ``operator:<name>`` for a console operator, ``api`` for the service key alone.
    ``details`` holds ids and outcomes (the message a release posted, a contact it created), never text.
    """

    __tablename__ = "audit_events"
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
    raw_path: Mapped[str | None] = mapped_column(String(512), nullable=True)
    posted_message_id: Mapped[str | None] = mapped_column(String(32), nullable=True)
    conversation_id: Mapped[str | None] = mapped_column(String(32), nullable=True)
    details: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)  # per-attachment verdicts etc.
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, onupdate=utcnow)


class Outbox(Base):
    """The transactional outbox: one row per email to send, written with the message that caused it."""

    __tablename__ = "outbox"
    __table_args__ = (Index("ix_outbox_due", "state", "next_attempt_at"),)
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
    created_at: Mapped[created_at]
    sent_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)


class Suppression(Base):
    __tablename__ = "suppressions"
    __table_args__ = (UniqueConstraint("practice_id", "address"),)
    id: Mapped[pk_int]
    practice_id: Mapped[int] = mapped_column(ForeignKey("practices.id", ondelete="CASCADE"))
    address: Mapped[str] = mapped_column(String(320))
    reason: Mapped[str] = mapped_column(String(255))
    soft_bounces: Mapped[int] = mapped_column(Integer, default=0)
    suppressed: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[created_at]
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, onupdate=utcnow)


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
    password_env: Mapped[str | None] = mapped_column(String(128), nullable=True)
    password: Mapped[str | None] = mapped_column(String(255), nullable=True)
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
