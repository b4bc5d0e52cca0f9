"""What one batch of outbox rows needs from the database, read with a few set-based queries.

The worker builds a whole claimed batch in one transaction. Reading each row's practice, message,
recipient and conversation with its own ``session.get`` cost a query (and an ORM round) per row and
per object; here each kind is read once for the batch with ``WHERE id IN (...)`` and kept in plain
dictionaries. Nothing is cached beyond the batch: every batch reads the current state again.

Which of the rows' addresses are suppressed now is read once for the batch too: a bounce or complaint
that arrived after a notification was written stops it here (``build.Suppressed``).

The policy question (may this recipient still read the conversation, may they answer it by email)
is still asked for every row, on state read during this batch: the conversation's snapshot comes
from ``conversations.situation`` itself, once per conversation, and each recipient is then judged
as its actor, exactly as ``fanout.enqueue_notifications`` does (see :meth:`BatchSnapshot.situation`).
Which participants hold each conversation's company among their favourites is read for the whole
batch in one query too (it was one query per conversation), and so are the recipients' live reply
tokens, as the SHA-256 the database keeps (``reply_lookups``): the builder re-uses a token it issued
before only while that hash is still the row's (see ``Builder.reply_token``).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from mailbridge.domain import conversations as convs
from mailbridge.domain import mutes, suppressions, templates
from mailbridge.domain.models import (
    Conversation,
    DkimKeyRow,
    DkimKeyState,
    Favorite,
    Message,
    Outbox,
    OutboxKind,
    Practice,
    PracticeLogo,
    PracticeTemplate,
    ReplyToken,
    Suppression,
    User,
)
from mailbridge.domain.practice_settings import PracticeSettings
from mailbridge.policy.rules import Situation


def first_message_ids(session: Session, conversation_ids: Iterable[str]) -> dict[str, str]:
    """Conversation id → id of its first message, as ``conversations.first_message`` chooses it.

    Same rule (earliest ``created_at``, deleted messages included), one query for all conversations
    instead of one per conversation. Conversations without any message are absent from the result.
    """
    ids = sorted(set(conversation_ids))
    if not ids:
        return {}
    ranked = (
        select(
            Message.conversation_id,
            Message.id,
            func.row_number()
            .over(partition_by=Message.conversation_id, order_by=Message.created_at)
            .label("rank"),
        )
        .where(Message.conversation_id.in_(ids))
        .subquery()
    )
    rows = session.execute(select(ranked.c.conversation_id, ranked.c.id).where(ranked.c.rank == 1))
    return {str(conversation_id): str(message_id) for conversation_id, message_id in rows}


@dataclass
class BatchSnapshot:
    """The rows' practices, messages (with author and attachments), recipients and conversations.

    Objects stay referenced here for the whole batch: the session's identity map only holds weak
    references, and a collected object would be read again by the next lazy load.
    """

    practices: dict[int, Practice]
    messages: dict[str, Message]
    users: dict[int, User]
    conversations: dict[str, Conversation]
    first_ids: dict[str, str]
    dkim_keys: dict[int, list[DkimKeyRow]] = field(default_factory=dict)  # practice id → its active keys
    # (practice id, lower-cased address) → the suppression that stops a notification to it now
    suppressed: dict[tuple[int, str], Suppression] = field(default_factory=dict)
    # (practice id, template name, locale) → the practice's own active template
    templates: dict[tuple[int, str, str], PracticeTemplate] = field(default_factory=dict)
    logos: dict[int, PracticeLogo] = field(default_factory=dict)  # practice id → its logo
    muted: set[tuple[int, str]] = field(default_factory=set)  # (recipient id, conversation id)
    holders: dict[str, convs.KnownHolders] = field(default_factory=dict)  # conversation id → favourites
    # (user id, conversation id) → ReplyToken.lookup of the pair's live (unrevoked) reply token
    reply_lookups: dict[tuple[int, str], str] = field(default_factory=dict)
    _settings: dict[int, PracticeSettings] = field(default_factory=dict)
    _situations: dict[tuple[str, str], Situation] = field(default_factory=dict)

    @classmethod
    def load(cls, session: Session, rows: Sequence[Outbox]) -> BatchSnapshot:
        notifications = [r for r in rows if r.kind == OutboxKind.notification]
        message_ids = {r.message_id for r in notifications if r.message_id}
        # Notices name their recipient too: an external agent's notice has no sign-in link.
        user_ids = {
            r.recipient_id
            for r in rows
            if r.recipient_id is not None and r.kind in (OutboxKind.notification, OutboxKind.notice)
        }
        # Message.author is joined and Message.attachments select-in loaded: two queries in all.
        messages = (
            {m.id: m for m in session.scalars(select(Message).where(Message.id.in_(message_ids)))}
            if message_ids
            else {}
        )
        conversation_ids = {m.conversation_id for m in messages.values()}
        # Conversation.participants (with their users), company and creator come along.
        conversations = (
            {
                c.id: c
                for c in session.scalars(select(Conversation).where(Conversation.id.in_(conversation_ids)))
            }
            if conversation_ids
            else {}
        )
        users = (
            {u.id: u for u in session.scalars(select(User).where(User.id.in_(user_ids)))} if user_ids else {}
        )
        practice_ids = {r.practice_id for r in rows} | {c.practice_id for c in conversations.values()}
        practices = {p.id: p for p in session.scalars(select(Practice).where(Practice.id.in_(practice_ids)))}
        # Read with every batch: a key activated on any node signs here from the next batch on.
        dkim_keys: dict[int, list[DkimKeyRow]] = {}
        for key in session.scalars(
            select(DkimKeyRow)
            .where(DkimKeyRow.practice_id.in_(practice_ids), DkimKeyRow.state == DkimKeyState.active)
            .order_by(DkimKeyRow.id)
        ):
            dkim_keys.setdefault(key.practice_id, []).append(key)
        logos = (
            {
                logo.practice_id: logo
                for logo in session.scalars(
                    select(PracticeLogo).where(PracticeLogo.practice_id.in_(practice_ids))
                )
            }
            if practice_ids
            else {}
        )
        return cls(
            practices=practices,
            messages=messages,
            users=users,
            conversations=conversations,
            first_ids=first_message_ids(session, conversations),
            dkim_keys=dkim_keys,
            suppressed=suppressions.active_in_batch(
                session, {(r.practice_id, r.to_address) for r in notifications}
            ),
            templates=templates.active(session, practice_ids),
            logos=logos,
            muted=mutes.muted_pairs(session, conversation_ids),
            holders=_holders(session, conversations.values()),
            reply_lookups=_reply_lookups(
                session,
                {
                    (r.recipient_id, messages[r.message_id].conversation_id)
                    for r in notifications
                    if r.recipient_id is not None and r.message_id in messages
                },
            ),
        )

    def settings(self, practice: Practice) -> PracticeSettings:
        """The practice's validated settings, validated once per batch (read-only for the builder)."""
        found = self._settings.get(practice.id)
        if found is None:
            found = self._settings[practice.id] = PracticeSettings.model_validate(practice.settings or {})
        return found

    def situation(
        self, session: Session, recipient: User, conversation: Conversation, body: str
    ) -> Situation:
        """``conversations.situation(session, recipient, conversation, body=body)``, computed once per conversation.

        Nothing in a ``Situation`` but the actor depends on who asks: the participants, the company's
        holders among them, the friendship and the practice's settings are the conversation's. So
        the first recipient's snapshot serves the others as well, with the actor replaced by the
        recipient's own entry among the participants (built by the same ``_person`` from the same
        user row and holder set). A recipient who is no longer an active participant gets a
        snapshot of their own, since whether they hold the company was not looked up.
        """
        key = (conversation.id, body)
        base = self._situations.get(key)
        if base is None:
            base = self._situations[key] = convs.situation(
                session, recipient, conversation, body=body, known=self.holders.get(conversation.id)
            )
            return base
        for person in base.participants:
            if person.id == recipient.id:
                return replace(base, actor=person)
        return convs.situation(session, recipient, conversation, body=body)


def _holders(session: Session, conversations: Iterable[Conversation]) -> dict[str, convs.KnownHolders]:
    """For each conversation with a company: which of its participants (removed ones too) hold that
    company among their favourites, from one query for the batch, in the batch's transaction."""
    found = [c for c in conversations if c.company_id is not None]
    companies = {c.company_id for c in found}
    members = {p.user_id for c in found for p in c.participants}
    if not companies or not members:
        return {}
    rows = session.execute(
        select(Favorite.company_id, Favorite.user_id).where(
            Favorite.company_id.in_(companies), Favorite.user_id.in_(members)
        )
    )
    pairs = {(company_id, user_id) for company_id, user_id in rows}
    out = {}
    for c in found:
        covered = frozenset(p.user_id for p in c.participants)
        out[c.id] = convs.KnownHolders(covered, frozenset(u for u in covered if (c.company_id, u) in pairs))
    return out


def _reply_lookups(session: Session, pairs: set[tuple[int, str]]) -> dict[tuple[int, str], str]:
    """The live reply tokens' lookup hashes of these (user, conversation) pairs, in one query."""
    if not pairs:
        return {}
    rows = session.execute(
        select(ReplyToken.user_id, ReplyToken.conversation_id, ReplyToken.lookup).where(
            ReplyToken.user_id.in_({user for user, _ in pairs}),
            ReplyToken.conversation_id.in_({conversation for _, conversation in pairs}),
            ReplyToken.revoked_at.is_(None),
        )
    )
    found = {(int(user), str(conversation)): str(lookup) for user, conversation, lookup in rows}
    return {pair: lookup for pair, lookup in found.items() if pair in pairs}
