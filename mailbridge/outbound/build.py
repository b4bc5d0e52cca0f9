"""From an outbox row to signed bytes: gather what the template may show, render, compose, sign."""

from __future__ import annotations

import email
import email.policy
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy.orm import Session

from mailbridge.domain import conversations as convs
from mailbridge.domain.models import (
    Conversation,
    InboundLog,
    Message,
    Outbox,
    OutboxKind,
    Practice,
    User,
    utcnow,
)
from mailbridge.domain.practice_settings import PracticeSettings
from mailbridge.inbound.envelope import verp_address
from mailbridge.inbound.tokens import AddressTemplate, TokenIssuer
from mailbridge.outbound.compose import Envelope, compose, named, thread_index
from mailbridge.outbound.keys import KeyStore
from mailbridge.outbound.render import Renderer
from mailbridge.policy.rules import can_post, can_read


class NothingToSend(Exception):
    """The row's reason to exist is gone (message deleted, recipient removed): cancel, don't send."""


@dataclass(frozen=True)
class Built:
    data: bytes
    mail_from: str  # VERP envelope sender
    rcpt: str
    message_id: str


@dataclass
class Builder:
    renderer: Renderer
    tokens: TokenIssuer
    keys: KeyStore
    verp_secret: bytes
    app_url: str
    loop_value: str

    def build(self, session: Session, row: Outbox) -> Built:
        practice = session.get_one(Practice, row.practice_id)
        settings = PracticeSettings.model_validate(practice.settings or {})
        if row.kind == OutboxKind.notification:
            msg, message_id = self._notification(session, practice, settings, row)
        elif row.kind == OutboxKind.notice:
            msg, message_id = self._notice(practice, row)
        else:
            msg, message_id = self._forward(session, practice, row)
        data = msg.as_bytes(policy=email.policy.SMTP)
        signer = self.keys.signer_for(practice, settings)
        if signer is not None:
            data = signer.sign(data)
        return Built(
            data, verp_address(self.verp_secret, row.id, practice.reply_domain), row.to_address, message_id
        )

    def _domain(self, practice: Practice) -> str:
        return practice.notify_from.rpartition("@")[2].lower()

    def _notification(
        self, session: Session, practice: Practice, settings: PracticeSettings, row: Outbox
    ) -> tuple[email.message.EmailMessage, str]:
        message = session.get(Message, row.message_id) if row.message_id else None
        recipient = session.get(User, row.recipient_id) if row.recipient_id else None
        if message is None or message.deleted_at is not None or recipient is None:
            raise NothingToSend("message or recipient gone")
        conversation = session.get_one(Conversation, message.conversation_id)
        if conversation.deleted_at is not None:
            raise NothingToSend("conversation deleted")
        # One snapshot answers both questions: may they still read it, and may they answer by email?
        snapshot = convs.situation(session, recipient, conversation, body="x" * 10_000)
        if not can_read(snapshot).allowed:  # policy re-checked at send time too
            raise NothingToSend("recipient may no longer read")
        mode = getattr(settings.notify_content, conversation.kind.value)
        domain = self._domain(practice)
        first = convs.first_message(session, conversation.id)
        root_id = f"<n.{first.id if first else message.id}.{recipient.id}@{domain}>"
        message_id = f"<n.{message.id}.{recipient.id}@{domain}>"
        is_first = first is None or first.id == message.id
        reply_to = None
        if settings.reply_by_email and can_post(snapshot).allowed:
            token = self.tokens.issue(session, practice.id, recipient.id, conversation.id)
            local = AddressTemplate(settings.reply_local_template).local_part(token)
            reply_to = named(None, f"{local}@{practice.reply_domain}")
        link = f"{self.app_url.rstrip('/')}/conversations/{conversation.id}"
        preferences = f"{self.app_url.rstrip('/')}/settings/notifications"
        minimal = mode == "minimal"
        subject_for_thread = "" if minimal else conversation.subject
        context = {
            "practice_name": practice.name,
            "author_name": message.author.name,
            "subject": conversation.subject,
            "body": message.body,
            "attachments": [a.filename for a in message.attachments],
            "link": link,
            "signin_link": self.app_url.rstrip("/") + "/",
            "preferences_link": preferences,
            "reply_allowed": reply_to is not None,
            "is_first": is_first,
            "coalesced": int((row.payload or {}).get("coalesced", 1)),
            "brand_color": str(settings.model_extra.get("brand_color", "#3b6ea5"))
            if settings.model_extra
            else "#3b6ea5",
        }
        if minimal:
            context = {"signin_link": self.app_url.rstrip("/") + "/"}
        rendered = self.renderer.render(
            "notification_minimal" if minimal else "notification_full", recipient.locale, context
        )
        # Minimal mode names nobody: not the author, not the practice (its name may reveal a specialty).
        from_name = None if minimal else f"{message.author.name} via {practice.name}"
        root_time = (
            conversation.created_at
            if conversation.created_at.tzinfo
            else conversation.created_at.replace(tzinfo=UTC)
        )
        env = Envelope(
            from_address=named(from_name, practice.notify_from),
            to_address=named(None if minimal else recipient.name, recipient.email),
            reply_to=reply_to,
            subject=rendered.subject,
            message_id=message_id,
            date=utcnow(),
            in_reply_to=None if is_first else root_id,
            references=() if is_first else (root_id,),
            thread_topic=subject_for_thread or rendered.subject,
            thread_index=thread_index(
                conversation.id, root_time, _aware(message.created_at), 0 if is_first else 1
            ),
            list_unsubscribe=None if minimal else preferences,
            loop_value=self.loop_value,
        )
        return compose(env, rendered), message_id

    def _notice(self, practice: Practice, row: Outbox) -> tuple[email.message.EmailMessage, str]:
        payload = row.payload or {}
        domain = self._domain(practice)
        message_id = f"<x.{row.id}@{domain}>"
        rendered = self.renderer.notice(
            str(payload.get("reason", "")),
            str(payload.get("locale", practice.locale)),
            {"files": list(payload.get("files", [])), "signin_link": self.app_url.rstrip("/") + "/"},
        )
        in_reply_to = str(payload.get("in_reply_to") or "") or None
        env = Envelope(
            from_address=named(None, practice.notify_from),
            to_address=named(None, row.to_address),
            subject=rendered.subject,
            message_id=message_id,
            date=utcnow(),
            in_reply_to=in_reply_to if in_reply_to and _msgid_ok(in_reply_to) else None,
            loop_value=self.loop_value,
        )
        return compose(env, rendered), message_id

    def _forward(
        self, session: Session, practice: Practice, row: Outbox
    ) -> tuple[email.message.EmailMessage, str]:
        payload = row.payload or {}
        inbound = session.get(InboundLog, str(payload.get("inbound_id", "")))
        if inbound is None or not inbound.raw_path or not Path(inbound.raw_path).exists():
            raise NothingToSend("forwarded mail no longer kept")
        raw = Path(inbound.raw_path).read_bytes()
        rendered = self.renderer.render(
            "forward", practice.locale, {"rcpt": str(payload.get("rcpt", "")), "practice_name": practice.name}
        )
        message_id = f"<f.{row.id}@{self._domain(practice)}>"
        env = Envelope(
            from_address=named("mailbridge", practice.notify_from),
            to_address=named(None, row.to_address),
            subject=rendered.subject,
            message_id=message_id,
            date=utcnow(),
            loop_value=self.loop_value,
        )
        msg = compose(env, rendered)
        inner = email.message_from_bytes(raw, policy=email.policy.default)
        msg.make_mixed()
        msg.attach(_rfc822_part(inner))
        return msg, message_id


def _rfc822_part(inner: email.message.Message) -> email.message.EmailMessage:
    part = email.message.EmailMessage(policy=email.policy.SMTP)
    part.set_content(inner)
    part.add_header("Content-Disposition", "attachment", filename="original.eml")
    return part


def _aware(value: datetime) -> datetime:
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def _msgid_ok(value: str) -> bool:
    return (
        value.startswith("<")
        and value.endswith(">")
        and len(value) < 250
        and not any(c in value for c in "\r\n ")
    )
