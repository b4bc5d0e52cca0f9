"""Who may read and post in a conversation, right now: an ordered table of small named rules.

The rules come from the product documents (../shared/seeds): company, confidential and private
conversations (seeds 000-002), group privacy and inactive clients (seed 003), direct channels between
two friends (seed 004), deactivated staff accounts (seed 003's inactive users, applied to staff), and
external agents (seed 003's "external agents": someone outside the practice, such as a referring
physician, who takes part by email only).
Each rule looks at a ``Situation`` (a snapshot of the current state, built fresh for every decision)
and returns a refusal, an explicit allow, or ``None`` to let the next rule speak. The first rule that
speaks decides; the name of that rule is recorded with every inbound email.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

Kind = Literal["company", "confidential", "private", "direct"]
UserKind = Literal["staff", "client", "external"]
Role = Literal["provider", "biller", "front_office", "admin"]
FriendState = Literal["requested", "accepted", "closed"]


@dataclass(frozen=True, slots=True)
class Person:
    id: int
    kind: UserKind
    role: Role | None = None
    active: bool = True
    holds_company: bool = False  # has the conversation's company among their favourites


@dataclass(frozen=True, slots=True)
class Situation:
    actor: Person
    kind: Kind
    participants: tuple[Person, ...]
    deleted: bool = False
    friendship: FriendState | None = None  # direct conversations only
    # what is being posted (ignored by can_read)
    internal: bool = False
    body_chars: int = 1
    min_body_chars: int = 1
    group_privacy: bool = True
    is_reply: bool = True  # False when the message opens the conversation
    by_email: bool = False  # the post arrives by email (a reply, a released reply), not from the app

    @property
    def actor_is_participant(self) -> bool:
        return any(p.id == self.actor.id for p in self.participants)

    @property
    def client_participants(self) -> tuple[Person, ...]:
        return tuple(p for p in self.participants if p.kind == "client")

    @property
    def staff_participants(self) -> tuple[Person, ...]:
        return tuple(p for p in self.participants if p.kind == "staff")


@dataclass(frozen=True, slots=True)
class Verdict:
    allowed: bool
    rule: str
    reason: str  # stable code: API problem codes and the inbound log use it


Rule = Callable[[Situation], Verdict | None]


def _allow(rule: str, reason: str = "allowed") -> Verdict:
    return Verdict(True, rule, reason)


def _deny(rule: str, reason: str) -> Verdict:
    return Verdict(False, rule, reason)


# ---- reading ---------------------------------------------------------------------------------------


def conversation_deleted(s: Situation) -> Verdict | None:
    return _deny("conversation_deleted", "conversation_deleted") if s.deleted else None


def account_verdict(actor: Person) -> Verdict | None:
    """A deactivated staff account or external agent neither reads, posts nor is notified (seed 003
    marks users inactive to cut them off; for staff and people outside the practice the product
    documents imply no exception). Inactive clients keep reading and reach billing and front office
    (see ``inactive_client_to_provider``)."""
    return _inactive_staff(actor) or _inactive_external(actor)


def _inactive_staff(actor: Person) -> Verdict | None:
    if actor.kind == "staff" and not actor.active:
        return _deny("account_inactive_staff", "account_inactive")
    return None


def _inactive_external(actor: Person) -> Verdict | None:
    if actor.kind == "external" and not actor.active:
        return _deny("account_inactive_external", "account_inactive")
    return None


def account_inactive_staff(s: Situation) -> Verdict | None:
    """A deactivated staff account reads nothing, anywhere (seed 003's inactive users)."""
    return _inactive_staff(s.actor)


def account_inactive_external(s: Situation) -> Verdict | None:
    """Issue 19 on seed 003: an inactive external agent gets nothing and cannot post."""
    return _inactive_external(s.actor)


def direct_between_friends(s: Situation) -> Verdict | None:
    """Seed 004: only the two friends see a direct channel; closing it keeps history readable."""
    if s.kind != "direct":
        return None
    if s.actor.kind == "staff" and s.actor_is_participant:
        return _allow("direct_between_friends")
    return _deny("direct_between_friends", "not_participant")


def external_agent_participants_only(s: Situation) -> Verdict | None:
    """Seed 003 ("optionally include ... external agents"): someone outside the practice reads a
    company, confidential or private conversation only while a participant, where staff added them.
    Favourites never open anything to them: they are nobody's client and follow no company. Direct
    channels are between two staff (``direct_between_friends``, before this rule, refuses them)."""
    if s.actor.kind != "external":
        return None
    if s.actor_is_participant:
        return _allow("external_agent_participants_only")
    return _deny("external_agent_participants_only", "not_participant")


def private_participants_only(s: Situation) -> Verdict | None:
    if s.kind != "private":
        return None
    if s.actor_is_participant:
        return _allow("private_participants_only")
    return _deny("private_participants_only", "not_participant")


def staff_with_favourite(s: Situation) -> Verdict | None:
    """Company and confidential: practitioners who follow the company (or take part) may."""
    if s.kind not in ("company", "confidential") or s.actor.kind != "staff":
        return None
    if s.actor.holds_company or s.actor_is_participant:
        return _allow("staff_with_favourite")
    return _deny("staff_with_favourite", "not_following_company")


def company_clients(s: Situation) -> Verdict | None:
    """Company: a client participant may; a client following the company may if one such client takes part."""
    if s.kind != "company" or s.actor.kind != "client":
        return None
    if s.actor_is_participant:
        return _allow("company_clients")
    if s.actor.holds_company and any(p.holds_company for p in s.client_participants):
        return _allow("company_clients", "allowed_via_favourite")
    return _deny("company_clients", "not_participant")


def confidential_designated_clients(s: Situation) -> Verdict | None:
    """Confidential: among clients, only designated participants who are clients of the company."""
    if s.kind != "confidential" or s.actor.kind != "client":
        return None
    if s.actor_is_participant and s.actor.holds_company:
        return _allow("confidential_designated_clients")
    if s.actor_is_participant:
        return _deny("confidential_designated_clients", "not_company_client")
    return _deny("confidential_designated_clients", "not_participant")


READ_RULES: tuple[Rule, ...] = (
    conversation_deleted,
    account_inactive_staff,
    account_inactive_external,
    direct_between_friends,
    external_agent_participants_only,
    private_participants_only,
    staff_with_favourite,
    company_clients,
    confidential_designated_clients,
)

# ---- posting (applied after the reading rules allowed) ---------------------------------------------


def external_agent_by_email_only(s: Situation) -> Verdict | None:
    """Seed 003's external agents have no portal account: they read their notifications and answer
    them by email. The app never posts as them; only a post that arrives by email may be theirs."""
    if s.actor.kind == "external" and not s.by_email:
        return _deny("external_agent_by_email_only", "external_by_email_only")
    return None


def direct_channel_open(s: Situation) -> Verdict | None:
    """Seed 004: a direct channel opens once the friend request is accepted; we can also close it."""
    if s.kind != "direct":
        return None
    if s.friendship == "accepted":
        return None
    reason = "direct_channel_closed" if s.friendship == "closed" else "friendship_not_accepted"
    return _deny("direct_channel_open", reason)


def group_privacy(s: Situation) -> Verdict | None:
    """Seed 003: a private message sent to more than one client cannot be replied to; start a new one.
    Only clients count: staff and external agents never make a conversation a group."""
    if s.kind == "private" and s.group_privacy and s.is_reply and len(s.client_participants) > 1:
        return _deny("group_privacy", "group_conversation")
    return None


def inactive_client_to_provider(s: Situation) -> Verdict | None:
    """Seed 003: inactive clients cannot write to their provider, but still reach billing and front office."""
    if s.actor.kind != "client" or s.actor.active:
        return None
    if any(p.role == "provider" for p in s.staff_participants):
        return _deny("inactive_client_to_provider", "inactive_client")
    return None


def internal_notes_staff_only(s: Situation) -> Verdict | None:
    if s.internal and s.actor.kind != "staff":
        return _deny("internal_notes_staff_only", "internal_requires_staff")
    return None


def minimum_body(s: Situation) -> Verdict | None:
    """Seed 003 asks for at least 10 characters; the practice sets its own minimum."""
    if s.body_chars < s.min_body_chars:
        return _deny("minimum_body", "body_too_short")
    return None


POST_RULES: tuple[Rule, ...] = (
    external_agent_by_email_only,
    direct_channel_open,
    group_privacy,
    inactive_client_to_provider,
    internal_notes_staff_only,
    minimum_body,
)


def _evaluate(rules: tuple[Rule, ...], s: Situation) -> Verdict | None:
    for rule in rules:
        verdict = rule(s)
        if verdict is not None:
            return verdict
    return None


def can_read(s: Situation) -> Verdict:
    return _evaluate(READ_RULES, s) or _deny("default_deny", "not_allowed")


def can_post(s: Situation) -> Verdict:
    read = can_read(s)
    if not read.allowed:
        return read
    return _evaluate(POST_RULES, s) or read


def can_read_message(actor: Person, internal: bool) -> bool:
    """Internal notes are for staff only, whatever the conversation."""
    return actor.kind == "staff" or not internal


# ---- quick notes (seed 003 "Write a Quick Note for a Message") ------------------------------------


def quick_note_staff_only(s: Situation) -> Verdict | None:
    """Seed 003: a quick note adds to the client's chart note records, which staff keep."""
    if s.actor.kind != "staff":
        return _deny("quick_note_staff_only", "staff_only")
    return None


def quick_note_one_client(s: Situation) -> Verdict | None:
    """Seed 003: "You can create a quick note entry when only 1 client is included (+ unlimited staff).
    Group messages (2+ clients) do not support this feature." Only clients count; staff and
    external agents never do."""
    clients = len(s.client_participants)
    if clients > 1:
        return _deny("quick_note_one_client", "group_conversation")
    if clients == 0:
        return _deny("quick_note_one_client", "no_client")
    return None


def can_quick_note(s: Situation) -> Verdict:
    """Staff who may read the thread, on a thread with exactly one client."""
    staff = quick_note_staff_only(s)
    if staff is not None:
        return staff
    read = can_read(s)
    if not read.allowed:
        return read
    return quick_note_one_client(s) or _allow("quick_note_one_client")


# ---- taking part (who may be made a participant) --------------------------------------------------


@dataclass(frozen=True, slots=True)
class Joining:
    """Someone made a participant: by the author when a conversation is created, or by staff through
    the app's participant route (``added_by``: who adds them). ``added_by`` None: the author of a new
    conversation taking part in it. ``person.holds_company``: they follow the conversation's company."""

    kind: Kind
    person: Person
    added_by: Person | None = None


JoinRule = Callable[[Joining], Verdict | None]


def direct_between_staff(j: Joining) -> Verdict | None:
    """Seed 004: a direct channel is between two staff friends; clients and external agents never join."""
    if j.kind == "direct" and j.person.kind != "staff":
        return _deny("direct_between_staff", "direct_staff_only")
    return None


def external_agent_added_by_staff(j: Joining) -> Verdict | None:
    """Seed 003: staff may include external agents in a message; a client may not bring one in."""
    if j.person.kind == "external" and j.added_by is not None and j.added_by.kind != "staff":
        return _deny("external_agent_added_by_staff", "external_added_by_staff")
    return None


def confidential_company_clients(j: Joining) -> Verdict | None:
    """Seed 001: only clients of the company (it is among their favourites) read a confidential
    conversation; a client designated without it would never see it, so they are not made one."""
    if j.kind == "confidential" and j.person.kind == "client" and not j.person.holds_company:
        return _deny("confidential_company_clients", "client_not_following_company")
    return None


JOIN_RULES: tuple[JoinRule, ...] = (
    direct_between_staff,
    external_agent_added_by_staff,
    confidential_company_clients,
)


def can_join(j: Joining) -> Verdict:
    for rule in JOIN_RULES:
        verdict = rule(j)
        if verdict is not None:
            return verdict
    return _allow("may_join")


# ---- changing who takes part in an existing conversation ------------------------------------------


@dataclass(frozen=True, slots=True)
class Membership:
    """``situation.actor`` adds (``adding``) or removes ``person`` in the conversation ``situation``
    describes as it is now. ``creator_id``: who started it."""

    situation: Situation
    person: Person
    adding: bool
    creator_id: int | None = None

    @property
    def person_is_participant(self) -> bool:
        return any(p.id == self.person.id for p in self.situation.participants)


MembershipRule = Callable[[Membership], Verdict | None]


def members_changed_by_staff(m: Membership) -> Verdict | None:
    """The participants a conversation was created with are the author's choice (seeds 000-003); later
    changes are the practice's, made by staff who may read it. A client adding another client would
    show them a thread written for someone else; an external agent acts by email only."""
    if m.situation.actor.kind != "staff":
        return _deny("members_changed_by_staff", "staff_only")
    return None


def joining_rules(m: Membership) -> Verdict | None:
    """Whoever is added meets the joining rules creation applies (``can_join``), the actor adding."""
    if not m.adding:
        return None
    verdict = can_join(Joining(kind=m.situation.kind, person=m.person, added_by=m.situation.actor))
    return None if verdict.allowed else verdict


def direct_members_fixed(m: Membership) -> Verdict | None:
    """Seed 004: a direct channel is exactly the two friends, for its whole life (closing the
    friendship closes it); nobody joins or leaves. Adding one of the two again changes nothing."""
    if m.situation.kind != "direct":
        return None
    if m.adding and m.person_is_participant:
        return None
    return _deny("direct_members_fixed", "direct_two_people")


def creator_stays(m: Membership) -> Verdict | None:
    """Seed 003 ties a thread to the staff member who started it (only they delete it): they stay."""
    if not m.adding and m.creator_id is not None and m.person.id == m.creator_id:
        return _deny("creator_stays", "creator_stays")
    return None


def someone_else_stays(m: Membership) -> Verdict | None:
    """As at creation, a conversation has at least one other participant than its author."""
    if m.adding or not m.person_is_participant:
        return None
    if len([p for p in m.situation.participants if p.id != m.person.id]) < 2:
        return _deny("someone_else_stays", "no_recipient")
    return None


def private_one_client_joins(m: Membership) -> Verdict | None:
    """Seed 003: "messages sent to more than 1 client cannot be replied to for privacy reasons ...
    you would need to compose a new message". A second client added to a private conversation would
    read everything the first wrote: with group privacy on, start a new conversation instead."""
    s = m.situation
    if not m.adding or s.kind != "private" or not s.group_privacy or m.person.kind != "client":
        return None
    if m.person_is_participant or not s.client_participants:
        return None
    return _deny("private_one_client_joins", "private_has_client")


MEMBERSHIP_RULES: tuple[MembershipRule, ...] = (
    members_changed_by_staff,
    joining_rules,
    direct_members_fixed,
    creator_stays,
    someone_else_stays,
    private_one_client_joins,
)


def can_change_members(m: Membership) -> Verdict:
    """The actor must read the conversation (the read rules), then the membership rules (an addition
    meets the joining rules creation applies, with the actor as ``added_by``)."""
    read = can_read(m.situation)
    if not read.allowed:
        return read
    for rule in MEMBERSHIP_RULES:
        verdict = rule(m)
        if verdict is not None:
            return verdict
    return _allow("may_join" if m.adding else "may_leave")


def is_read_refusal(verdict: Verdict) -> bool:
    """A refusal by the read rules: the actor may not know the conversation exists (answered as 404)."""
    return not verdict.allowed and verdict.rule in READ_RULE_NAMES


# The rules about the conversation, not about the actor's own account (a deactivated account is told
# so, 403 ``account_inactive``, whatever it asks for: that reveals nothing about the object).
READ_RULE_NAMES = frozenset(
    rule.__name__ for rule in READ_RULES if rule not in (account_inactive_staff, account_inactive_external)
) | {"default_deny"}
