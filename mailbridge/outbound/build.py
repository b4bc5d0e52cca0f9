"""From an outbox row to signed bytes: gather what the template may show, render, compose, sign.

Three steps, so that the worker's database transaction holds only database work:

* :meth:`Builder.plan` reads (the batch's :class:`BatchSnapshot`, the policy, asked again now) and
  renders: a :class:`Draft`, or ``NothingToSend``;
* :meth:`Builder.reply_token` issues the recipient's reply token when they may answer by email, the
  only write (with the row's Message-ID, committed by the worker before anything is sent);
* :meth:`Builder.finish` composes and signs: CPU only, after the commit, no database.
"""

from __future__ import annotations

import email
import email.policy
import logging
from dataclasses import dataclass, field, replace
from email.headerregistry import Address
from typing import Any

from markupsafe import Markup
from sqlalchemy.orm import Session

from mailbridge.domain import suppressions
from mailbridge.domain.fingerprint import fingerprint
from mailbridge.domain.links import DEFAULT_CONVERSATION_PATH, DEFAULT_PREFERENCES_PATH, conversation_link
from mailbridge.domain.models import (
    InboundLog,
    Outbox,
    OutboxKind,
    Practice,
    PracticeLogo,
    UserKind,
    utcnow,
)
from mailbridge.domain.practice_settings import PracticeSettings
from mailbridge.inbound.envelope import verp_address
from mailbridge.inbound.tokens import AddressTemplate, TokenIssuer, token_hash
from mailbridge.observability import TEMPLATE_OVERRIDE_FAILED
from mailbridge.outbound.compose import (
    Envelope,
    InlineImage,
    compose,
    compose_bytes,
    named,
    thread_index,
)
from mailbridge.outbound.context import (
    body_html,
    cut_body,
    practice_identity,
    preheader,
    size_text,
    split_withheld,
)
from mailbridge.outbound.fanout import notifiable
from mailbridge.outbound.keys import KeyStore
from mailbridge.outbound.render import LOCALES, Rendered, Renderer, Source
from mailbridge.outbound.sign import DkimSigner
from mailbridge.outbound.snapshot import BatchSnapshot
from mailbridge.outbound.unsubscribe import UnsubscribeTokens
from mailbridge.policy.rules import can_post, can_read
from mailbridge.storage.objects import ObjectNotFoundError
from mailbridge.storage.vault import Vault

log = logging.getLogger(__name__)

# The body the policy is asked about: long enough that a practice's minimum length never decides
# whether a recipient may answer a notification by email.
POLICY_BODY = "x" * 10_000
#: Reply tokens kept in memory by lookup hash (``Builder.reply_token``); past this, forgotten at once.
ISSUED_KEPT = 20_000


class NothingToSend(Exception):
    """The row's reason to exist is gone (message deleted, recipient removed): cancel, don't send."""


class Suppressed(NothingToSend):
    """The recipient's address was suppressed after the row was written: not sent, and the row says why."""

    def __init__(self, text: str, reason: str) -> None:
        super().__init__(text)
        self.reason = reason


@dataclass(frozen=True)
class Built:
    data: bytes
    mail_from: str  # VERP envelope sender
    rcpt: str
    message_id: str
    signed: bool = True  # False: the practice has no DKIM key (counted, see worker)
    practice: str = ""


@dataclass(frozen=True)
class ReplyAddress:
    """Whose reply token goes into Reply-To, and how the practice writes the address."""

    practice_id: int
    user_id: int
    conversation_id: str
    local_template: str
    domain: str
    lookup: str | None = None  # ReplyToken.lookup of the pair's live token when the batch was read

    def address(self, token: str) -> Address:
        return named(None, f"{AddressTemplate(self.local_template).local_part(token)}@{self.domain}")


@dataclass(frozen=True)
class Draft:
    """One row's email, decided from the database and rendered; no database is needed to finish it.

    The envelope has no Reply-To yet: when *reply* is set, the recipient may answer by email and
    the address carries their reply token, issued by :meth:`Builder.reply_token`.
    """

    envelope: Envelope
    rendered: Rendered
    mail_from: str  # VERP envelope sender
    rcpt: str
    signer: DkimSigner | None
    practice: str = ""  # its slug, for logs and metrics
    reply: ReplyAddress | None = None
    original: bytes | None = None  # a forward: the mail attached as message/rfc822
    # A notification: what it says, as word-run hashes, so that a reply's quoted copy is cut exactly.
    fingerprint: dict[str, Any] | None = None
    inline: tuple[InlineImage, ...] = ()  # the practice's logo, shown as cid: in the HTML

    @property
    def message_id(self) -> str:
        return self.envelope.message_id


@dataclass
class Builder:
    renderer: Renderer
    tokens: TokenIssuer
    keys: KeyStore
    verp_secret: bytes
    app_url: str
    loop_value: str
    fingerprint_key: bytes = b""
    vault: Vault | None = None  # where forwarded mail's raw copy is read from (any node's)
    unsubscribe: UnsubscribeTokens | None = None  # None: List-Unsubscribe names the app's settings page
    public_url: str = ""  # mailbridge's own base URL, for the one-click unsubscribe links
    conversation_link_path: str = DEFAULT_CONVERSATION_PATH  # the operator's; a practice may set its own
    preferences_link_path: str = DEFAULT_PREFERENCES_PATH
    # SHA-256 (ReplyToken.lookup) → the reply token it hashes, for tokens this process has issued.
    _issued: dict[str, str] = field(default_factory=dict, repr=False)

    def build(self, session: Session, row: Outbox, snapshot: BatchSnapshot | None = None) -> Built:
        """Signed bytes for one row: the three steps in a row (the worker spreads them over a batch)."""
        draft = self.plan(session, row, snapshot or BatchSnapshot.load(session, [row]))
        return self.finish(draft, self.reply_token(session, draft))

    def plan(self, session: Session, row: Outbox, batch: BatchSnapshot) -> Draft:
        """What the row's email says, read from *batch* (and the policy asked now); raises NothingToSend."""
        practice = batch.practices[row.practice_id]
        # First: a row this node cannot sign for (CannotSign) waits, whatever it would say.
        signer = self.keys.signer(session, practice, batch.dkim_keys.get(practice.id, []))
        settings = batch.settings(practice)
        reply: ReplyAddress | None = None
        original: bytes | None = None
        sent: dict[str, Any] | None = None
        inline: tuple[InlineImage, ...] = ()
        if row.kind == OutboxKind.notification:
            hit = batch.suppressed.get((row.practice_id, row.to_address.lower()))
            if hit is not None:
                raise Suppressed(suppressions.describe(hit), hit.reason.value)
            envelope, rendered, reply, inline, sent = self._notification(
                session, batch, practice, settings, row
            )
        elif row.kind == OutboxKind.notice:
            envelope, rendered, inline = self._notice(batch, practice, settings, row)
        else:
            envelope, rendered, original, inline = self._forward(session, batch, practice, settings, row)
        return Draft(
            envelope=envelope,
            rendered=rendered,
            mail_from=verp_address(self.verp_secret, row.id, practice.reply_domain),
            rcpt=row.to_address,
            signer=signer,
            practice=practice.slug,
            reply=reply,
            original=original,
            fingerprint=sent,
            inline=inline,
        )

    def reply_token(self, session: Session, draft: Draft) -> str | None:
        """The recipient's reply token when they may answer by email: created on first use (a write).

        ``TokenIssuer.issue`` reads the pair's row with one query per notification. The batch has
        read every pair's live row (``BatchSnapshot.reply_lookups``: the SHA-256 the database keeps)
        in one query, so a token this process issued before is taken from memory when its hash is
        still the row's lookup: same token, no query. A revoked or replaced token has another lookup
        (or none), and ``issue`` decides as always.
        """
        if draft.reply is None:
            return None
        reply = draft.reply
        if reply.lookup is not None:
            known = self._issued.get(reply.lookup)
            if known is not None:
                return known
        token = self.tokens.issue(session, reply.practice_id, reply.user_id, reply.conversation_id)
        if len(self._issued) >= ISSUED_KEPT:
            self._issued.clear()
        self._issued[token_hash(token)] = token
        return token

    def finish(self, draft: Draft, token: str | None) -> Built:
        """Compose and sign: CPU only, no database."""
        envelope = draft.envelope
        if draft.reply is not None:
            if token is None:
                raise ValueError("this recipient may answer by email: the draft needs its reply token")
            envelope = replace(envelope, reply_to=draft.reply.address(token))
        if draft.original is None:
            data = compose_bytes(envelope, draft.rendered, draft.inline)
        else:
            data = _with_original(envelope, draft.rendered, draft.original, draft.inline)
        if draft.signer is not None:
            data = draft.signer.sign(data)
        return Built(
            data,
            draft.mail_from,
            draft.rcpt,
            envelope.message_id,
            signed=draft.signer is not None,
            practice=draft.practice,
        )

    def _domain(self, practice: Practice) -> str:
        return practice.notify_from.rpartition("@")[2].lower()

    def _notification(
        self,
        session: Session,
        batch: BatchSnapshot,
        practice: Practice,
        settings: PracticeSettings,
        row: Outbox,
    ) -> tuple[Envelope, Rendered, ReplyAddress | None, tuple[InlineImage, ...], dict[str, Any]]:
        message = batch.messages.get(row.message_id) if row.message_id else None
        recipient = batch.users.get(row.recipient_id) if row.recipient_id is not None else None
        if message is None or message.deleted_at is not None or recipient is None:
            raise NothingToSend("message or recipient gone")
        conversation = batch.conversations[message.conversation_id]
        if conversation.deleted_at is not None:
            raise NothingToSend("conversation deleted")
        if (recipient.id, conversation.id) in batch.muted:  # unsubscribed since the row was written
            raise NothingToSend("recipient muted this conversation")
        if not notifiable(recipient):  # seed 003: a portal account taken away since the row was written
            raise NothingToSend("recipient has no portal account")
        # One snapshot answers both questions: may they still read it, and may they answer by email?
        snapshot = batch.situation(session, recipient, conversation, POLICY_BODY)
        if not can_read(snapshot).allowed:  # policy re-checked at send time too
            raise NothingToSend("recipient may no longer read")
        # An external agent (seed 003) reads only this email: the practice decides how much it shows
        # (external_content, minimal unless allowed), and it never offers a portal or the app.
        external = recipient.kind == UserKind.external
        if external:
            mode = settings.external_content.mode(conversation.kind.value)
        else:
            mode = getattr(settings.notify_content, conversation.kind.value)
        domain = self._domain(practice)
        first_id = batch.first_ids.get(conversation.id)
        root_id = f"<n.{first_id or message.id}.{recipient.id}@{domain}>"
        message_id = f"<n.{message.id}.{recipient.id}@{domain}>"
        is_first = first_id is None or first_id == message.id
        reply = None
        if settings.reply_by_email and can_post(replace(snapshot, by_email=True)).allowed:
            reply = ReplyAddress(
                practice.id,
                recipient.id,
                conversation.id,
                settings.reply_local_template,
                practice.reply_domain,
                batch.reply_lookups.get((recipient.id, conversation.id)),
            )
        app = (settings.app_url or self.app_url).rstrip("/")  # a practice's own portal first
        link = conversation_link(
            app, settings.conversation_link_path or self.conversation_link_path, conversation.id
        )
        preferences = app + (settings.preferences_link_path or self.preferences_link_path)
        unsubscribe = preferences
        if self.unsubscribe is not None:
            token = self.unsubscribe.issue(practice.id, recipient.id, conversation.id)
            unsubscribe = f"{self.public_url.rstrip('/')}/u/{token}"
        minimal = mode == "minimal"
        lang = _lang(recipient.locale)
        # A minimal notification shows the practice (From name, logo, footer) unless the practice
        # said not to (minimal_shows_practice: false, for a name that reveals a specialty); it never
        # shows anything of the conversation: not the author, the subject, the body or the files.
        shown = not minimal or settings.minimal_shows_practice
        identity, inline = self._identity(practice, settings, batch.logos.get(practice.id), lang, shown)
        context: dict[str, Any] = {**identity, "unsubscribe_link": unsubscribe}
        if external:  # no portal: neither the sign-in page nor the app's settings
            del context["signin_link"]
            context["reply_allowed"] = reply is not None
        else:
            context["preferences_link"] = preferences
        shown_body = ""  # what the notification shows of the message (its fingerprint's body)
        if not minimal:
            body, withheld = split_withheld(message.body)
            body, truncated = cut_body(body)
            shown_body = body
            context |= {
                "author_name": message.author.name,
                "subject": conversation.subject,
                "body": body,
                "body_html": Markup(body_html(body)),
                "body_truncated": truncated,
                "preheader": preheader(body),
                "attachments": [
                    {"name": a.filename, "size": a.size, "size_text": size_text(a.size, lang)}
                    for a in message.attachments
                ],
                "withheld": withheld,
                "reply_allowed": reply is not None,
                "is_first": is_first,
                "coalesced": int((row.payload or {}).get("coalesced", 1)),
            }
            if not external:
                context["link"] = link
        name = "notification_minimal" if minimal else "notification_full"
        if external:
            name = "notification_external_minimal" if minimal else "notification_external_full"
        rendered, shared = self._render(batch, practice, name, lang, context, inline, shared=True)
        from_name = (
            f"{message.author.name} via {practice.name}" if not minimal else practice.name if shown else None
        )
        env = Envelope(
            from_address=named(from_name, practice.notify_from),
            to_address=named(None if minimal else recipient.name, recipient.email),
            subject=rendered.subject,
            message_id=message_id,
            date=utcnow(),
            in_reply_to=None if is_first else root_id,
            references=() if is_first else (root_id,),
            thread_topic=("" if minimal else conversation.subject) or rendered.subject,
            thread_index=thread_index(
                conversation.id, conversation.created_at, message.created_at, 0 if is_first else 1
            ),
            list_unsubscribe=unsubscribe,
            loop_value=self.loop_value,
        )
        sent = notification_fingerprint(
            self.fingerprint_key,
            shared,  # what the recipients' copies share: the same fingerprint, computed once
            body=shown_body,
            from_name=from_name,
            notify_from=practice.notify_from,
        )
        return env, rendered, reply, inline, sent

    def _identity(
        self,
        practice: Practice,
        settings: PracticeSettings,
        logo: PracticeLogo | None,
        lang: str,
        shown: bool,
    ) -> tuple[dict[str, Any], tuple[InlineImage, ...]]:
        """The practice's identity for the templates, and its logo as an inline part when shown."""
        identity = practice_identity(practice.name, settings, lang, shown, self.app_url)
        if not shown or logo is None:
            return identity, ()
        content_id = f"logo.{logo.sha256[:16]}@{self._domain(practice)}"
        identity["logo_src"] = f"cid:{content_id}"
        extension = "png" if logo.content_type == "image/png" else "jpg"
        return identity, (InlineImage(content_id, logo.content_type, logo.data, f"logo.{extension}"),)

    def _render(
        self,
        batch: BatchSnapshot,
        practice: Practice,
        name: str,
        lang: str,
        context: dict[str, Any],
        inline: tuple[InlineImage, ...],
        shared: bool = False,
    ) -> tuple[Rendered, Rendered]:
        """The practice's own template when it has one that renders cleanly, else the default.

        Returns the rendering twice, or with *shared*, the default's rendering and the one its
        recipients share but for their own link (``Renderer.render_shared``: rendered once for all).

        A practice's template was checked when saved, but real data can still break it (a value the
        sample did not have) or make it put something forbidden in the HTML: then the default is
        used, with a WARNING line and ``mailbridge_template_override_failed_total``; a notification
        is never left unsent because of a practice's template.
        """
        own = batch.templates.get((practice.id, name, lang))
        if own is not None:
            images = frozenset(f"cid:{image.content_id}" for image in inline)
            try:
                rendered = self.renderer.render(name, lang, context, Source(own.subject, own.text, own.mjml))
                problems = self.renderer.output_problems(name, rendered, images, context)
            except Exception as exc:  # the sandbox and StrictUndefined raise TemplateError subclasses
                problems = [f"{type(exc).__name__}: {exc}"]
            if not problems:
                return rendered, rendered
            log.warning(
                "template_override_failed",
                extra={
                    "practice": practice.slug,
                    "template": name,
                    "locale": lang,
                    "version": own.version,
                    "reason": problems[0][:200],
                },
            )
            TEMPLATE_OVERRIDE_FAILED.labels(practice.slug).inc()
        if shared:
            return self.renderer.render_shared(name, lang, context)
        rendered = self.renderer.render(name, lang, context)
        return rendered, rendered

    def _notice(
        self, batch: BatchSnapshot, practice: Practice, settings: PracticeSettings, row: Outbox
    ) -> tuple[Envelope, Rendered, tuple[InlineImage, ...]]:
        payload = row.payload or {}
        domain = self._domain(practice)
        message_id = f"<x.{row.id}@{domain}>"
        lang = _lang(str(payload.get("locale", practice.locale)))
        shown = settings.minimal_shows_practice  # a notice is as discreet as a minimal notification
        identity, inline = self._identity(practice, settings, batch.logos.get(practice.id), lang, shown)
        # To an external agent (seed 003), who has no portal: no sign-in link, advice by email.
        recipient = batch.users.get(row.recipient_id) if row.recipient_id is not None else None
        external = recipient is not None and recipient.kind == UserKind.external
        explanation, advice = self.renderer.notice_texts(str(payload.get("reason", "")), lang, external)
        context = {
            **identity,
            "files": [str(f) for f in payload.get("files", [])],
            "explanation": explanation,
            "advice": advice,
        }
        if external:
            del context["signin_link"]
        name = "notice_external" if external else "notice"
        rendered, _ = self._render(batch, practice, name, lang, context, inline)
        in_reply_to = str(payload.get("in_reply_to") or "") or None
        env = Envelope(
            from_address=named(practice.name if shown else None, practice.notify_from),
            to_address=named(None, row.to_address),
            subject=rendered.subject,
            message_id=message_id,
            date=utcnow(),
            in_reply_to=in_reply_to if in_reply_to and _msgid_ok(in_reply_to) else None,
            loop_value=self.loop_value,
        )
        return env, rendered, inline

    def _forward(
        self,
        session: Session,
        batch: BatchSnapshot,
        practice: Practice,
        settings: PracticeSettings,
        row: Outbox,
    ) -> tuple[Envelope, Rendered, bytes, tuple[InlineImage, ...]]:
        payload = row.payload or {}
        inbound = session.get(InboundLog, str(payload.get("inbound_id", "")))
        ref = (inbound.raw_ref or inbound.raw_path) if inbound is not None else None
        if not ref or self.vault is None:
            raise NothingToSend("forwarded mail no longer kept")
        try:
            raw = self.vault.read_bytes(ref)
        except ObjectNotFoundError:
            raise NothingToSend("forwarded mail no longer kept") from None
        lang = _lang(practice.locale)
        identity, inline = self._identity(practice, settings, batch.logos.get(practice.id), lang, True)
        context = {**identity, "rcpt": str(payload.get("rcpt", ""))}
        rendered, _ = self._render(batch, practice, "forward", lang, context, inline)
        message_id = f"<f.{row.id}@{self._domain(practice)}>"
        env = Envelope(
            from_address=named("mailbridge", practice.notify_from),
            to_address=named(None, row.to_address),
            subject=rendered.subject,
            message_id=message_id,
            date=utcnow(),
            loop_value=self.loop_value,
        )
        return env, rendered, raw, inline


def notification_fingerprint(
    key: bytes, rendered: Rendered, *, body: str, from_name: str | None, notify_from: str
) -> dict[str, Any]:
    """What a notification said, as the outbox row keeps it: word-run hashes of its text and HTML,
    the body's runs apart, and the words a client puts in its quote header (From and Subject)."""
    return fingerprint(
        key,
        text=rendered.text,
        html=rendered.html,
        body=body,
        sender=from_name or "",
        address=notify_from,
        subject=rendered.subject,
    ).to_json()


def _lang(locale: str) -> str:
    return locale if locale in LOCALES else "en"


def _with_original(
    envelope: Envelope, rendered: Rendered, raw: bytes, inline: tuple[InlineImage, ...] = ()
) -> bytes:
    """A forward: the notice, then the original mail attached whole (message/rfc822)."""
    msg = compose(envelope, rendered, inline=inline)
    inner = email.message_from_bytes(raw, policy=email.policy.default)
    msg.make_mixed()
    msg.attach(_rfc822_part(inner))
    return msg.as_bytes(policy=email.policy.SMTP)


def _rfc822_part(inner: email.message.Message) -> email.message.EmailMessage:
    part = email.message.EmailMessage(policy=email.policy.SMTP)
    part.set_content(inner)
    part.add_header("Content-Disposition", "attachment", filename="original.eml")
    return part


def _msgid_ok(value: str) -> bool:
    return (
        value.startswith("<")
        and value.endswith(">")
        and len(value) < 250
        and not any(c in value for c in "\r\n ")
    )
