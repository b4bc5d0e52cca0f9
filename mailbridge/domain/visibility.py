"""The reading rules of ``policy/rules.py`` as one SQL condition, so a list page is one query.

``policy.rules.can_read`` decides for one conversation at a time, on a snapshot; a user with 3,000
conversations made the list load them all and ask it 3,000 times (2.3–2.6 s measured). This module
states the same rules over the conversations table, for one reader, so the database filters, sorts
and pages. It must stay *exactly* equal to ``can_read``: ``tests/test_visibility.py`` compares the
two over a table of situations (every kind, staff and clients, participants removed, companies
followed or not, deleted conversations). A rule added to ``READ_RULES`` needs its clause here.

A deactivated staff account or external agent reads nothing (``account_inactive_staff``,
``account_inactive_external``): callers refuse it first (403), as
``conversations.require_active_account`` does, so no clause is needed for them.
"""

from __future__ import annotations

from sqlalchemy import and_, exists, false, or_, select
from sqlalchemy.orm import aliased
from sqlalchemy.sql.elements import ColumnElement

from mailbridge.domain.models import (
    Conversation,
    ConversationKind,
    Favorite,
    Participant,
    User,
    UserKind,
)


def _takes_part(user_id: int) -> ColumnElement[bool]:
    """The reader is an active participant (``Situation.actor_is_participant``)."""
    return exists().where(
        Participant.conversation_id == Conversation.id,
        Participant.user_id == user_id,
        Participant.removed_at.is_(None),
    )


def _follows_company(user_id: int) -> ColumnElement[bool]:
    """The conversation's company is among the reader's favourites (``Person.holds_company``)."""
    return exists().where(
        Favorite.user_id == user_id,
        Favorite.company_id == Conversation.company_id,
    )


def _a_client_participant_follows_company() -> ColumnElement[bool]:
    """Some active client participant follows the company (``company_clients``'s second case)."""
    member = aliased(Participant)
    person = aliased(User)
    favourite = aliased(Favorite)
    return exists(
        select(member.id)
        .join(person, person.id == member.user_id)
        .join(favourite, favourite.user_id == member.user_id)
        .where(
            member.conversation_id == Conversation.id,
            member.removed_at.is_(None),
            person.kind == UserKind.client,
            favourite.company_id == Conversation.company_id,
        )
    )


def readable_by(reader: User) -> ColumnElement[bool]:
    """Conversations *reader* may read now: ``can_read(...).allowed`` as a WHERE clause."""
    takes_part = _takes_part(reader.id)
    kind = Conversation.kind
    not_deleted = Conversation.deleted_at.is_(None)  # conversation_deleted
    if reader.kind == UserKind.staff:
        rules = or_(
            # direct_between_friends: staff who take part
            and_(kind == ConversationKind.direct, takes_part),
            # private_participants_only
            and_(kind == ConversationKind.private, takes_part),
            # staff_with_favourite: company and confidential, followed or taken part in
            and_(
                kind.in_([ConversationKind.company, ConversationKind.confidential]),
                or_(_follows_company(reader.id), takes_part),
            ),
        )
    elif reader.kind == UserKind.client:
        follows = _follows_company(reader.id)
        rules = or_(
            # direct_between_friends refuses clients; private_participants_only
            and_(kind == ConversationKind.private, takes_part),
            # company_clients: a participant, or following the company with a following client inside
            and_(
                kind == ConversationKind.company,
                or_(takes_part, and_(follows, _a_client_participant_follows_company())),
            ),
            # confidential_designated_clients: a participant who follows the company
            and_(kind == ConversationKind.confidential, takes_part, follows),
        )
    elif reader.kind == UserKind.external:
        # external_agent_participants_only: company, confidential and private, as a participant;
        # direct_between_friends refuses them, favourites never count
        rules = and_(
            kind.in_([ConversationKind.company, ConversationKind.confidential, ConversationKind.private]),
            takes_part,
        )
    else:  # default_deny
        rules = false()
    return and_(not_deleted, rules)
