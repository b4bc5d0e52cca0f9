"""The one inbound pipeline, the same for SMTP, LMTP and IMAP: an ordered list of small steps.

    store_raw → prescan → parse → classify → resolve → route_gate → authenticate → body
              → policy → attachments → store

Cheap refusals come first (security review, finding 9): everything decided from the directory
(token owner, unknown sender to a route that rejects them) is decided before any DNS look-up.

Each step may end the run with ``Done`` (accepted but not posted: auto-reply, bounce, complaint,
duplicate, quarantine), ``Rejected`` (5xx) or ``Deferred`` (4xx). Only after the final commit is durable does
``run`` return 250. Any unexpected exception becomes 451 4.3.0 with the traceback in the log only.

A run uses one database session from start to end, its read transaction ended after every step (no
connection held while DNS or an attachment check runs). The final transaction reads again what the
policy looks at, so the post is judged on what is true when it is written.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import date
from email.message import EmailMessage
from pathlib import Path
from typing import Any

from sqlalchemy import Table, Text, bindparam, cast, exists, func, insert, select, update
from sqlalchemy.exc import IntegrityError, OperationalError, SQLAlchemyError
from sqlalchemy.orm import Session

from mailbridge import replies
from mailbridge.crypto.keyring import KeyringError
from mailbridge.domain import conversations as convs
from mailbridge.domain import events
from mailbridge.domain.addresses import normalise
from mailbridge.domain.conversations import NewAttachment
from mailbridge.domain.db import relax_sync, transaction, writer_gate
from mailbridge.domain.directory import users_at
from mailbridge.domain.fingerprint import Fingerprint
from mailbridge.domain.groupcommit import GroupCommitter
from mailbridge.domain.models import (
    Conversation,
    ConversationKind,
    InboundLog,
    InboundState,
    Message,
    MessageSource,
    NoticeSent,
    OutboxKind,
    Practice,
    QuarantineItem,
    ReplyToken,
    Route,
    User,
    UserAddress,
    UserKind,
    new_id,
    utcnow,
)
from mailbridge.domain.practice_settings import PracticeSettings, settings_from_json
from mailbridge.domain.suppressions import SuppressionPolicy
from mailbridge.inbound import prescan as prescan_mod
from mailbridge.inbound.answered import answered_fingerprints, message_ids
from mailbridge.inbound.attachments import sanitize_filename
from mailbridge.inbound.authenticate import AuthResults, authenticate
from mailbridge.inbound.body import reply_body, visible_part_html
from mailbridge.inbound.classify import Classification, classify
from mailbridge.inbound.dkimstream import BodyDigests
from mailbridge.inbound.dns import DeadlineResolver, Resolver
from mailbridge.inbound.envelope import Target
from mailbridge.inbound.mimestream import STREAM_THRESHOLD, parse_file
from mailbridge.inbound.parse import ParsedMail, header_text, parse_mail, single_from
from mailbridge.logs import inbound_decision
from mailbridge.observability import INBOUND, STEP_SECONDS, count_practice_inbound
from mailbridge.policy.rules import can_post
from mailbridge.replies import Deferred, Rejected, SmtpReply
from mailbridge.storage.blobs import BlobStore
from mailbridge.storage.intake import Intake, TooManyAttachments, intake_uploads
from mailbridge.storage.vault import ENCRYPTED_SUFFIX, Vault, raw_key

log = logging.getLogger(__name__)

# Hot-path writes go to the tables, not the mapped classes: an ORM-enabled INSERT or UPDATE would
# also search the session's identity map, which costs more than the statement itself.
INBOUND_TABLE: Table = InboundLog.__table__  # type: ignore[assignment]
TOKEN_TABLE: Table = ReplyToken.__table__  # type: ignore[assignment]
# store_raw's two statements, built once (issue 17 item 4: building a statement anew each time cost
# more than running it). The insert runs on the session's connection (Core: an ORM-enabled
# ``Session.execute`` costs about twice as much). The practice stays an ORM object, held in the
# run's identity map (``Context.practice``) for the steps that look it up again; its settings come
# with it as their stored text, the key of ``settings_from_json``'s cache, read in this same
# statement: a change made on any node is a new text, applied to the next run with nothing to
# invalidate.
_INSERT_RECEIVED = insert(INBOUND_TABLE)
# The received row's commit need not wait for the flush (store_raw's docstring says why).
_PRACTICE_FOR_RUN = select(Practice, cast(Practice.settings, Text).label("settings_text")).where(
    Practice.id == bindparam("practice_id")
)
# On PostgreSQL the insert rides along with that read, as a data-modifying CTE: one statement, one
# round trip fewer, the same transaction (the read does not see the new row, and needs not).
_RECEIVED_COLUMNS = (
    "id",
    "practice_id",
    "received_at",
    "door",
    "peer",
    "helo",
    "mail_from",
    "rcpt",
    "token_id",
    "state",
    "size",
    "raw_ref",
    "details",
    "updated_at",
)
# It also sets, for this transaction only (``set_config``'s third argument, as SET LOCAL), that its
# commit need not wait for the flush: in the same statement, no round trip of its own.
_INSERT_RECEIVED_WITH_PRACTICE = _PRACTICE_FOR_RUN.add_columns(
    func.set_config("synchronous_commit", "off", True).label("no_flush_wait")
).add_cte(insert(INBOUND_TABLE).values({name: bindparam(name) for name in _RECEIVED_COLUMNS}).cte("received"))
# resolve_sender's read of the token's owner and whether they hold the From address
# (``User.owns_address``'s comparison, on the normalised address), built once: it was a
# ``session.get`` with a ``joinedload`` of every address, the option and statement built anew and
# the joined rows de-duplicated at every reply.
_TOKEN_OWNER = select(
    User,
    exists().where(UserAddress.user_id == User.id, UserAddress.address == bindparam("address")).label("owns"),
).where(User.id == bindparam("id"))

# Reasons a known participant can fix: they get one polite notice per reason per day (never a stranger).
FIXABLE = frozenset(
    {
        "group_conversation",
        "inactive_client",
        "direct_channel_closed",
        "body_too_short",
        "attachment_withheld",
        "empty_message",
        "too_many_attachments",
    }
)


class Done(Exception):
    """The run ends accepted (250) without a post: auto-reply, bounce, duplicate, quarantine, forward."""

    def __init__(self, state: InboundState, reason: str, reply: SmtpReply = replies.OK) -> None:
        super().__init__(reason)
        self.state = state
        self.reason = reason
        self.reply = reply


@dataclass(frozen=True)
class Envelope:
    door: str  # smtp | lmtp | imap
    peer: str | None
    helo: str | None
    mail_from: str
    target: Target
    # Runs inside the final transaction, whatever the outcome (IMAP records its last UID there, so a
    # crash before the commit re-fetches the message and the idempotency key posts it once).
    finalize: Callable[[Session], None] | None = None
    # Extra authserv-ids believed for this message only (an IMAP mailbox's provider).
    trusted_authserv_ids: tuple[str, ...] = ()
    # False when the door does not know the envelope sender (IMAP mail without Return-Path, e.g.
    # dragged into the mailbox by a person): an empty mail_from then is not a null sender (a bounce).
    reverse_path_known: bool = True


@dataclass(frozen=True)
class Outcome:
    reply: SmtpReply
    state: InboundState
    reason: str
    inbound_id: str | None = None
    message_id: str | None = None
    conversation_id: str | None = None


@dataclass
class Deps:
    """Everything the pipeline touches, injected (tests hand in fakes for DNS only)."""

    sessions: Any  # sessionmaker[Session]
    blobs: BlobStore
    vault: Vault  # the raw copy goes to the object store, which every node reads
    resolver: Resolver
    raw_dir: Path  # this node's working copies while a run lasts
    own_addresses: frozenset[str] = frozenset()
    trusted_authserv_ids: tuple[str, ...] = ()
    authserv_id: str = "mailbridge"
    loop_value: str = "mailbridge"
    prescan_limits: prescan_mod.PrescanLimits = field(default_factory=prescan_mod.PrescanLimits)
    suppression: SuppressionPolicy = field(default_factory=SuppressionPolicy)
    fingerprint_key: bytes = b""  # the worker's key for the hashes of sent notifications
    dns_budget: float = 10.0  # seconds authentication may spend waiting on DNS, per message
    cpu_budget: float = 20.0  # seconds of CPU the steps may use, per message (checked between steps)
    refused_keep_bytes: int = 64 * 1024  # of a refused or deferred message's raw copy
    committer: GroupCommitter | None = None  # group commit of the final transactions (SQLite)


@dataclass
class Context:
    deps: Deps
    envelope: Envelope
    raw_path: Path  # the local working copy (parsers and DKIM read a file)
    size: int
    inbound_id: str = ""
    raw_ref: str | None = None  # the raw copy in the object store, as the inbound row names it
    raw_forgotten: bool = False  # a committed final state no longer names the raw copy: delete it
    raw: bytes = b""
    parsed: ParsedMail | None = None
    classification: Classification | None = None
    practice_id: int | None = None
    settings: PracticeSettings = field(default_factory=PracticeSettings)
    sender: User | None = None
    # The sender as plain values, for the refusal notice: written in a session of its own, after the
    # run's session (and the User object with it) is gone.
    notice_to: tuple[int, str] | None = None  # (user id, locale)
    from_address: str = ""
    conversation_id: str | None = None
    auth: AuthResults | None = None
    answered: list[Fingerprint] = field(default_factory=list)  # what the answered notifications said
    body: str = ""
    body_html: str | None = None
    hidden: str | None = None
    internal: bool = False
    intake: Intake | None = None
    large: bool = False  # streamed from disk: never the whole message in memory
    # The idempotency key's body hash, once per run: for a large message taken while prescan holds
    # its bytes, so the file is not read again for it (issue 17 item 2).
    body_digest: str | None = None
    # A large message's DKIM body hashes, (relaxed, algorithm) → (digest, length), taken on the same read.
    dkim_digests: dict[tuple[bool, bytes], tuple[bytes, int]] | None = None
    own_addresses: frozenset[str] = frozenset()  # the practice's notification address and reply domain
    cleanups: list[Callable[[], None]] = field(default_factory=list)
    rule: str | None = None
    notice_reason: str | None = None
    ambiguous: list[str] = field(default_factory=list)  # a route sender's address has several holders
    details: dict[str, Any] = field(default_factory=dict)
    session: Session | None = None  # the run's one session (see the module docstring)
    # Held here because the identity map only keeps objects somebody still references.
    practice: Practice | None = None
    conversation: Conversation | None = None
    practice_slug: str | None = None  # for the decision log line, read while the session is open

    @property
    def msg(self) -> EmailMessage:
        assert self.parsed is not None
        return self.parsed.message

    @property
    def db(self) -> Session:
        assert self.session is not None
        return self.session


Step = Callable[[Context], None]


# ---- steps ------------------------------------------------------------------------------------------


def store_raw(ctx: Context) -> None:
    """Raw bytes first (Mailman's switchboard), before any decision: the copy every node can read is
    put into the object store (encrypted; the store makes it durable before returning), then the
    inbound row naming it is committed. A crash in between leaves an object no row names (the
    housekeeping sweep removes it), never a row naming a missing object.

    The local file is this run's working copy only: nothing reads it after a crash (a restarted run
    reads the object the row names, and the sweep removes orphaned working copies), so it is not
    fsynced: that was one of four fsyncs per reply for no guarantee (docs/benchmarks.md, steps).
    The practice is read in the same transaction as the insert: one round trip fewer.

    That commit does not wait for its own flush to disk (SQLite ``synchronous=NORMAL`` for this one
    transaction, PostgreSQL ``synchronous_commit = off``): no promise rests on it. The 250 follows
    the run's final commit, which is flushed and, the log being sequential, makes this row durable
    with it; a power cut before that loses a row whose sender had no 250 and retries, and leaves an
    object no row names, which the sweep removes — what a crash before this commit left anyway. A
    process crash loses nothing: the write is in the operating system's hands. One fsync fewer per
    reply (docs/benchmarks.md, steps)."""
    day = ctx.deps.raw_dir / date.today().isoformat()
    day.mkdir(parents=True, exist_ok=True)
    row_id = new_id()
    final = day / f"{row_id}.eml"
    practice_id = ctx.envelope.target.practice_id
    try:
        os.replace(ctx.raw_path, final)
    except OSError as exc:
        raise Deferred(replies.TEMPFAIL, "tempfail_disk") from exc
    try:
        ref = ctx.deps.vault.put_path(raw_key(practice_id, row_id), final, practice_id)
    except (OSError, KeyringError, SQLAlchemyError) as exc:
        log.warning("raw_store_failed", extra={"error": type(exc).__name__, "detail": str(exc)[:300]})
        final.unlink(missing_ok=True)
        raise Deferred(replies.TEMPFAIL, "tempfail_storage") from exc
    try:
        now = utcnow()
        received = {
            "id": row_id,
            "practice_id": practice_id,
            "received_at": now,
            "door": ctx.envelope.door,
            "peer": ctx.envelope.peer,
            "helo": (ctx.envelope.helo or "")[:255] or None,
            "mail_from": ctx.envelope.mail_from[:320],
            "rcpt": ctx.envelope.target.redacted[:320],
            "token_id": ctx.envelope.target.token_id,
            "state": InboundState.received,
            "size": ctx.size,
            "raw_ref": ref,
            "details": {},
            "updated_at": now,
        }
        with writer_gate(ctx.deps.sessions):
            connection = ctx.db.connection()
            if connection.dialect.name == "postgresql":
                found = ctx.db.execute(_INSERT_RECEIVED_WITH_PRACTICE, received).first()
            else:
                relax_sync(connection)
                connection.execute(_INSERT_RECEIVED, received)
                found = ctx.db.execute(_PRACTICE_FOR_RUN, {"practice_id": practice_id}).first()
            ctx.db.commit()
    except BaseException:
        with contextlib.suppress(SQLAlchemyError):
            ctx.db.rollback()
        final.unlink(missing_ok=True)  # no row, no file: the sender's retry starts clean (P9)
        with contextlib.suppress(OSError):
            ctx.deps.vault.delete(ref)  # else the sweep takes it: no row names it
        raise
    ctx.raw_ref = ref
    ctx.inbound_id = row_id
    ctx.raw_path = final
    ctx.practice_id = practice_id
    if found is not None:
        practice, settings_text = found[0], found[1]
        ctx.practice = practice
        ctx.practice_slug = practice.slug
        ctx.settings = settings_from_json(settings_text)
        # Mail from our own notification address or reply domain is a loop (A12), never a reply.
        ctx.own_addresses = frozenset({practice.notify_from.lower(), "@" + practice.reply_domain.lower()})
    if ctx.size > ctx.settings.effective_message_max_bytes:
        ctx.notice_reason = None  # who sent it is not known yet; the SMTP answer names the limit
        raise Rejected(replies.message_too_big(ctx.settings.effective_message_max_bytes), "message_too_big")
    ctx.large = ctx.size > STREAM_THRESHOLD
    if not ctx.large:
        ctx.raw = ctx.raw_path.read_bytes()


def prescan(ctx: Context) -> None:
    """The bounded pre-scan. A large message is scanned as a stream (1 MiB slices, a bounded window:
    never the whole message in memory), never past the limit whatever size the door reported
    (finding 10); the idempotency key's body hash rides on the same read (issue 17 item 2).

    Why the MIME parse does not ride on it too: the scan must be over before any parse work starts,
    since refusing a bomb before parsing it is its whole point (M2's parse takes seconds), and holding
    the bytes for a second pass is what this avoids; the second read comes from the page cache
    (≈ 0.1 s for 137 MB). The DKIM body hashes ride on this read too (``BodyDigests``, only the
    canonicalisations the message's signatures name): authentication then reads the headers alone."""
    limit = ctx.settings.effective_message_max_bytes
    if ctx.large:
        hasher, dkim_bodies = BodyHasher(), BodyDigests()
        with open(ctx.raw_path, "rb") as handle:
            streamed = prescan_mod.prescan_stream(
                handle, ctx.deps.prescan_limits, [hasher.feed, dkim_bodies.feed], limit
            )
        if streamed is None:
            raise Rejected(replies.message_too_big(limit), "message_too_big")
        result = streamed
        if result.ok:
            ctx.body_digest = hasher.hexdigest()
            ctx.dkim_digests = dkim_bodies.digests()
    else:
        if len(ctx.raw) > limit:
            raise Rejected(replies.message_too_big(limit), "message_too_big")
        result = prescan_mod.prescan(ctx.raw, ctx.deps.prescan_limits)
    if result.ok:
        return
    if result.reason == "loop_received":
        raise Rejected(replies.LOOP_DETECTED, "loop_detected")
    if result.reason == "bare_line_ending":
        raise Rejected(replies.BARE_LINE_ENDING, "bare_line_ending")
    if result.reason == "header_field_size":
        raise Rejected(replies.HEADER_FIELD_TOO_LONG, "header_field_size")
    raise Rejected(replies.MIME_TOO_COMPLEX, result.reason or "mime_bomb")


def parse_stored(raw: bytes | None, path: Path, spool_dir: Path) -> tuple[ParsedMail, Callable[[], None]]:
    """Parse as the pipeline does: in memory, or streamed from disk past ``STREAM_THRESHOLD``.

    Returns the parse and what to call when done (a streamed parse leaves temporary files)."""
    if raw is None:
        streamed = parse_file(path, spool_dir)
        return streamed, streamed.cleanup
    return parse_mail(raw), lambda: None


def parse(ctx: Context) -> None:
    try:
        ctx.parsed, cleanup = parse_stored(
            None if ctx.large else ctx.raw, ctx.raw_path, ctx.deps.vault.spool_dir
        )
        ctx.cleanups.append(cleanup)
    except Exception as exc:  # the stdlib parser is lenient; anything left is a malformed message
        log.info("parse_failed", extra={"error": type(exc).__name__})
        raise Rejected(replies.MALFORMED, "parse_failed") from exc
    ctx.details["message_id"] = header_text(ctx.msg, "Message-ID")[:998]
    if ctx.parsed.defects:
        ctx.details["defects"] = sorted(set(ctx.parsed.defects))[:20]


def classify_mail(ctx: Context) -> None:
    """Bounces and complaints go to report processing; auto-replies and loops are accepted and never
    posted (RFC 3834); nothing else arriving at a VERP address is a report, nor a reply.

    Reports are never posted nor answered wherever they arrive; whether one may suppress an address
    is ``policy.feedback``'s question (only at the signed VERP address of a row we sent).
    """
    result = classify(
        ctx.msg,
        envelope_from=ctx.envelope.mail_from if ctx.envelope.reverse_path_known else None,
        own_addresses=ctx.deps.own_addresses | ctx.own_addresses,
        loop_value=ctx.deps.loop_value,
    )
    ctx.classification = result
    target = ctx.envelope.target
    if result.kind in ("bounce", "complaint"):
        from mailbridge.outbound.bounces import record_report

        with writer_gate(ctx.deps.sessions), transaction(ctx.deps.sessions) as session:
            outcome = record_report(session, target, result, ctx.deps.suppression)
        ctx.rule = outcome.rule
        ctx.details["report"] = {"classified": result.reason, **outcome.details}
        state = InboundState.bounce if result.kind == "bounce" else InboundState.complaint
        raise Done(state, outcome.reason)
    if target.kind == "bounce":
        # An out-of-office answer, a challenge-response or a person writing to the Return-Path:
        # no bounce (issue 11 #4), and no reply either (the VERP address carries no reply token).
        ctx.rule = "only_reports_count"
        if result.kind == "human":
            raise Done(InboundState.ignored, "not_a_report")
    if target.kind == "operator":
        _forward_to_operator(ctx)
        raise Done(InboundState.forwarded, "operator_mail")
    if result.kind == "auto_reply":
        raise Done(InboundState.dropped_auto_reply, "auto_reply_dropped")
    if result.kind == "loop":
        raise Done(InboundState.dropped_auto_reply, "loop_detected")


def _forward_to_operator(ctx: Context) -> None:
    """postmaster@ and abuse@ (RFC 5321 §4.5.1) go to the practice's operator, never into a conversation."""
    from mailbridge.outbound.fanout import enqueue_email

    with transaction(ctx.deps.sessions) as session:
        practice = session.get_one(Practice, ctx.practice_id)
        operator = ctx.settings.operator_address
        if operator:
            enqueue_email(
                session,
                practice,
                kind=OutboxKind.forward,
                to_address=operator,
                payload={"inbound_id": ctx.inbound_id, "rcpt": ctx.envelope.target.address},
            )


_AUTOCOMMIT: dict[str, Any] = {"isolation_level": "AUTOCOMMIT"}


def _reads_without_transaction(ctx: Context) -> None:
    """On PostgreSQL, a step that only reads takes its connection in autocommit: no BEGIN and COMMIT
    round trips around its statements (issue 17 item 4). Nothing is lost: at READ COMMITTED, the
    isolation the engine uses, each statement already reads its own snapshot inside a transaction
    too, and these steps take no locks. The write transactions (``store_raw``, ``store``, the
    policy re-read inside the latter) get a connection of their own, with the default isolation,
    since ``_release`` ends the step's. SQLite's driver starts no transaction for a read anyway."""
    session = ctx.db
    if not session.in_transaction() and session.get_bind().dialect.name == "postgresql":
        session.connection(execution_options=_AUTOCOMMIT)


def resolve_sender(ctx: Context) -> None:
    """The From addr-spec, exactly one (A4, A5); for replies it must be one of the token owner's addresses."""
    address = single_from(ctx.msg)
    if address is None:
        raise Rejected(replies.AMBIGUOUS_FROM, "from_ambiguous")
    ctx.from_address = normalise(address.addr_spec)
    ctx.details["from"] = ctx.from_address
    target = ctx.envelope.target
    _reads_without_transaction(ctx)
    session = ctx.db
    if target.kind == "reply":
        # The token was found live at RCPT; whatever changed since, the policy step judges afresh.
        found = (
            session.execute(_TOKEN_OWNER, {"id": target.user_id, "address": ctx.from_address}).first()
            if target.user_id is not None
            else None
        )
        if found is None or target.conversation_id is None:
            raise Rejected(replies.UNKNOWN_RECIPIENT, "token_revoked")
        owner, owns = found
        ctx.conversation_id = target.conversation_id
        if not owns:  # ctx.from_address is normalised, as every stored address is
            raise Rejected(replies.SENDER_MISMATCH, "reply_user_mismatch")
        ctx.sender = owner
        ctx.notice_to = (owner.id, owner.locale)
        # What the notifications this reply answers said, read in this step's transaction (one
        # round trip fewer than a step of its own); extract_body cuts their quoted copy.
        ctx.answered = _answered(ctx)
    elif target.kind == "route":
        users = users_at(session, target.practice_id, ctx.from_address)
        if len(users) > 1:
            # A duplicate from before addresses were unique (migration 0017): whoever we picked, the
            # mail might be someone else's. Nobody is the sender; the log names the holders.
            ctx.ambiguous = [u.external_id for u in users]
            ctx.details["holders"] = ctx.ambiguous
            log.warning("ambiguous_sender", extra={"holders": ctx.ambiguous})
        ctx.sender = users[0] if len(users) == 1 else None
        ctx.notice_to = (ctx.sender.id, ctx.sender.locale) if ctx.sender is not None else None
        if ctx.sender is not None and ctx.sender.kind == UserKind.staff:
            raise Rejected(replies.STAFF_USE_APP, "staff_to_route")


def route_gate(ctx: Context) -> None:
    """What a route refuses without asking DNS, before authentication (finding 9): an unknown sender
    when the route rejects them, a route nobody is behind. Neither reason earns a notice, so nothing
    is lost by not proving the sender first; ``sender_policy`` judges the rest after authentication.
    """
    target = ctx.envelope.target
    if target.kind != "route":
        return
    from mailbridge.domain.routes import group_members

    route = ctx.db.get_one(Route, target.route_id)
    if (ctx.sender is None or ctx.sender.kind != UserKind.client) and route.unknown_senders != "triage":
        raise Rejected(replies.POLICY_DENIED, _stranger(ctx))
    if not group_members(ctx.db, route):
        raise Rejected(replies.POLICY_DENIED, "route_empty")


def authenticate_sender(ctx: Context) -> None:
    """DKIM/SPF/DMARC through the injected resolver; a DMARC failure is refused, DNS trouble deferred."""
    domain = ctx.from_address.rpartition("@")[2]
    raw = _header_block(ctx.raw_path) if ctx.large else ctx.raw  # large: DKIM body hashes are streamed
    # Past the message's DNS budget every look-up fails as a timeout would: temperror, 451 4.7.0.
    resolver = DeadlineResolver(ctx.deps.resolver, time.monotonic() + ctx.deps.dns_budget)
    try:
        ctx.auth = authenticate(
            raw,
            ctx.msg,
            from_domain=domain,
            peer_ip=_ip(ctx.envelope.peer),
            mail_from=ctx.envelope.mail_from,
            helo=ctx.envelope.helo,
            resolver=resolver,
            trusted_authserv_ids=ctx.deps.trusted_authserv_ids + ctx.envelope.trusted_authserv_ids,
            body_path=ctx.raw_path if ctx.large else None,
            body_digests=ctx.dkim_digests,
        )
    except Exception as exc:
        log.warning("authentication_error", extra={"error": type(exc).__name__})
        raise Deferred(replies.AUTH_TEMPERROR, "auth_temperror") from exc
    auth = ctx.auth
    ctx.details["auth"] = auth.header_value(ctx.deps.authserv_id)
    if not auth.aligned and "temperror" in (auth.dkim, auth.spf, auth.dmarc):
        # An aligned pass already satisfies DMARC; otherwise a DNS hiccup must not become a refusal.
        raise Deferred(replies.AUTH_TEMPERROR, "auth_temperror")
    if auth.dmarc == "fail":
        raise Rejected(replies.AUTH_FAILED, "dmarc_fail")
    if auth.spf == "fail" and not auth.aligned:
        # RFC 7208 §8.4: "fail" is the domain's explicit statement that this host may not send its
        # mail, and the RFC allows refusing it in the session with 550 5.7.1. Without a DMARC record
        # nothing else speaks for the sender, and no aligned DKIM signature vouches for the From.
        # Refused, not quarantined: a forged sender must not reach staff as something to release.
        raise Rejected(replies.SPF_FAILED, "spf_fail")


def _header_block(path: Path) -> bytes:
    """SPF and DMARC need only the headers: a large unsigned message is not read whole."""
    block = bytearray()
    with open(path, "rb") as handle:
        for line in handle:
            block += line
            if line in (b"\r\n", b"\n"):
                break
    return bytes(block)


def _ip(peer: str | None) -> str | None:
    if not peer:
        return None
    return peer.rsplit(":", 1)[0].strip("[]") if peer.count(":") == 1 else peer


@dataclass(frozen=True)
class Post:
    """What an email's text becomes in a conversation: the one derivation the pipeline and a staff
    release share, so a held reply is posted exactly as it would have been (internal flag included)."""

    body: str
    body_html: str | None
    hidden: str | None
    internal: bool
    own_copy: bool | None = None  # whether our quoted notification was found (None: none to look for)


def derive_post(
    parsed: ParsedMail,
    sender: User | None,
    note_marker: str,
    sent: Sequence[Fingerprint] = (),
    key: bytes = b"",
) -> Post:
    """Prefer text/plain, else HTML converted to text; keep the trimmed quote and signature hidden.

    A reply's quoted copy of the notification it answers (*sent*: what we sent, as fingerprints) is
    cut first, exactly (inbound/trim/own.py); an HTML-only message keeps, as HTML, only its visible
    part: what was trimmed stays hidden. A staff member's reply whose first line is the practice's
    note marker (``#note``) becomes an internal note without that line: visible to staff only, never
    notified to clients.
    """
    extracted = reply_body(parsed.text, parsed.html, sent=sent, key=key)
    body = extracted.visible
    body_html = extracted.html
    internal = False
    if sender is not None and sender.kind == UserKind.staff and note_marker:
        first, _, rest = body.partition("\n")
        if first.strip().lower() == note_marker.lower():
            internal = True
            body = rest.strip()
            body_html = visible_part_html(parsed.html, body) if body_html and parsed.html else None
    return Post(
        body=body,
        body_html=body_html,
        hidden=extracted.hidden or None,
        internal=internal,
        own_copy=extracted.own_copy if sent else None,
    )


def extract_body(ctx: Context) -> None:
    """The reply's text (``derive_post``); no text and no file is refused."""
    parsed = ctx.parsed
    assert parsed is not None
    post = derive_post(parsed, ctx.sender, ctx.settings.note_marker, ctx.answered, ctx.deps.fingerprint_key)
    if post.own_copy is not None:
        ctx.details["own_copy"] = post.own_copy
    ctx.body, ctx.body_html, ctx.hidden, ctx.internal = post.body, post.body_html, post.hidden, post.internal
    if not post.body and not parsed.attachments:
        ctx.notice_reason = "empty_message"
        raise Rejected(replies.EMPTY_MESSAGE, "empty_message")


def _answered(ctx: Context) -> list[Fingerprint]:
    """What the notifications this reply answers said (fingerprints), for the exact cut of our copy."""
    target = ctx.envelope.target
    if target.kind != "reply" or target.user_id is None or target.conversation_id is None:
        return []
    if ctx.practice_id is None:
        return []
    references = message_ids(header_text(ctx.msg, "In-Reply-To"), header_text(ctx.msg, "References"))
    return list(
        answered_fingerprints(
            ctx.db,
            practice_id=ctx.practice_id,
            recipient_id=target.user_id,
            conversation_id=target.conversation_id,
            references=references,
        )
    )


def sender_policy(ctx: Context) -> None:
    """Who may post, evaluated now; confidential and private replies need an aligned pass or wait for staff."""
    target = ctx.envelope.target
    _reads_without_transaction(ctx)
    session = ctx.db
    if target.kind == "route":
        _route_policy(ctx, session)
        return
    assert ctx.sender is not None and ctx.conversation_id is not None
    has_files = bool(ctx.parsed and ctx.parsed.attachments)
    # The same one-statement read of plain rows that the final transaction judges again
    # (``convs.post_view``); a sender who is no participant at all is judged from entities, as
    # ``_post_in`` does.
    view = convs.post_view(session, ctx.conversation_id)
    if view is None:
        raise Rejected(replies.UNKNOWN_RECIPIENT, "conversation_missing")
    author = view.member(ctx.sender.id)
    if author is not None:
        snapshot = convs.view_situation(
            session, view, author, body=ctx.body, internal=ctx.internal, has_files=has_files
        )
        kind = view.kind
    else:
        conversation, known = convs.conversation_for_policy(session, ctx.conversation_id)
        ctx.conversation = conversation
        if conversation is None:
            raise Rejected(replies.UNKNOWN_RECIPIENT, "conversation_missing")
        snapshot = convs.post_situation(
            session,
            ctx.sender,
            conversation,
            body=ctx.body,
            internal=ctx.internal,
            has_files=has_files,
            by_email=True,
            known=known,
        )
        kind = conversation.kind
    verdict = can_post(snapshot)
    ctx.rule = verdict.rule
    if not verdict.allowed:
        ctx.notice_reason = verdict.reason
        raise Rejected(_policy_denied(ctx.sender), verdict.reason)
    strict = ctx.settings.sender_auth == "aligned_required" or kind in (
        ConversationKind.confidential,
        ConversationKind.private,
    )
    if strict and ctx.auth is not None and not ctx.auth.aligned:
        _quarantine(ctx, "auth_not_aligned")


def _stranger(ctx: Context) -> str:
    """Why a route's sender is nobody we know: not in the directory, or at an address two users
    hold (a duplicate from before 0017), which we do not guess between."""
    reason = "ambiguous_sender" if ctx.ambiguous else "unknown_sender"
    return reason


def _policy_denied(sender: User | None) -> SmtpReply:
    """A reply refused by the policy; an external agent has no portal to be pointed to."""
    if sender is not None and sender.kind == UserKind.external:
        return replies.POLICY_DENIED_EXTERNAL
    return replies.POLICY_DENIED


def _route_policy(ctx: Context, session: Session) -> None:
    route = session.get_one(Route, ctx.envelope.target.route_id)
    # Only a known client opens a conversation at a practice address. An external agent (seed 003)
    # takes part where staff add them: to a practice address they are a sender the practice has not
    # asked for, handled as a stranger (refused, or held for staff with ``unknown_senders: triage``).
    if ctx.sender is None or ctx.sender.kind != UserKind.client:
        if route.unknown_senders == "triage":
            _quarantine(ctx, _stranger(ctx))
        raise Rejected(replies.POLICY_DENIED, _stranger(ctx))
    from mailbridge.domain.routes import group_members

    members = group_members(session, route)
    if not members:
        raise Rejected(replies.POLICY_DENIED, "route_empty")
    if not ctx.sender.active and any(m.role is not None and m.role.value == "provider" for m in members):
        ctx.notice_reason = "inactive_client"
        raise Rejected(replies.POLICY_DENIED, "inactive_client")
    ctx.rule = "route_known_client"
    if ctx.auth is not None and not ctx.auth.aligned:
        _quarantine(ctx, "auth_not_aligned")


def _quarantine(ctx: Context, reason: str) -> None:
    """Held for staff review in its own transaction: never visible to a client, never auto-replied.

    The same email delivered again after staff released it is a duplicate of that post, not a new
    item to review (the release used this run's idempotency key)."""
    key = idempotency_key(ctx)
    if ctx.db.scalar(select(Message.id).where(Message.idempotency_key == key)) is not None:
        raise Done(InboundState.duplicate, "duplicate_suppressed")
    with transaction(ctx.deps.sessions) as session:
        item = QuarantineItem(
            id=new_id(),
            practice_id=ctx.practice_id,
            inbound_id=ctx.inbound_id,
            route_address=ctx.envelope.target.address if ctx.envelope.target.kind == "route" else None,
            conversation_id=ctx.conversation_id,
            reason=reason,
            from_address=ctx.from_address,
            subject=header_text(ctx.msg, "Subject")[:998],
            summary=quarantine_summary(ctx),
        )
        session.add(item)
        events.quarantine_held(session, item)
    raise Done(InboundState.quarantined, reason)


PREVIEW_CHARS = 500


def quarantine_summary(ctx: Context) -> dict[str, Any]:
    """What staff see in the list without opening the mail: nothing here is trusted or rendered unescaped."""
    assert ctx.parsed is not None
    sender = single_from(ctx.msg)
    files = []
    for upload in ctx.parsed.attachments[:50]:
        upload.file.seek(0, os.SEEK_END)
        size = upload.file.tell()
        upload.file.seek(0)
        files.append(
            {
                "filename": sanitize_filename(upload.filename),
                "content_type": upload.content_type[:255],
                "size": size,
            }
        )
    return {
        "from_name": (sender.display_name if sender is not None else "")[:255],
        "preview": ctx.body[:PREVIEW_CHARS],
        "truncated": len(ctx.body) > PREVIEW_CHARS,
        "internal": ctx.internal,
        "attachments": files,
    }


def take_attachments(ctx: Context) -> None:
    """Every file judged by its bytes; refused ones are withheld with a visible line, never dropped silently."""
    assert ctx.parsed is not None
    if not ctx.parsed.attachments:
        return
    locale = ctx.sender.locale if ctx.sender else "en"
    try:
        ctx.intake = intake_uploads(
            ctx.deps.blobs, ctx.settings, ctx.parsed.attachments, locale, ctx.practice_id
        )
    except TooManyAttachments as exc:
        ctx.notice_reason = "too_many_attachments"
        raise Rejected(replies.TOO_MANY_ATTACHMENTS, "too_many_attachments") from exc
    except OSError as exc:
        raise Deferred(replies.TEMPFAIL, "tempfail_disk") from exc
    ctx.details["attachments"] = ctx.intake.log_details()
    ctx.body = ctx.intake.with_withheld_line(ctx.body)
    if ctx.intake.withheld:
        ctx.notice_reason = "attachment_withheld"


def store(ctx: Context) -> None:
    """Message, attachment rows, notifications and the inbound row's final state in one transaction;
    with ``Deps.committer`` (group commit, SQLite) that transaction is a savepoint of one shared by
    the runs that reach this step together, committed once for all of them (domain/groupcommit.py).
    Either way the step returns only once the commit containing this message is durable."""
    assert ctx.sender is not None
    key = idempotency_key(ctx)
    accepted = ctx.intake.accepted if ctx.intake else []
    source = MessageSource.imap if ctx.envelope.door == "imap" else MessageSource.email

    def work(session: Session) -> tuple[str, str]:
        return _post_in(ctx, session, key, accepted, source)

    try:
        committer = ctx.deps.committer
        if committer is not None:
            posted, conversation_id = committer.run(work)
        else:
            session = ctx.db
            with writer_gate(ctx.deps.sessions):
                try:
                    posted, conversation_id = work(session)
                    session.commit()
                except BaseException:
                    session.rollback()
                    raise
    except IntegrityError as exc:
        ctx.details.pop("posted", None)  # rolled back: nothing was posted
        if "idempotency_key" in str(exc.orig).lower():  # uq_messages_idempotency_key, any dialect
            raise Done(InboundState.duplicate, "duplicate_suppressed") from exc
        raise
    except convs.PolicyDenied as exc:  # the state changed between the check and the commit
        ctx.details.pop("posted", None)
        ctx.notice_reason = exc.verdict.reason
        raise Rejected(_policy_denied(ctx.sender), exc.verdict.reason) from exc
    except BaseException:
        ctx.details.pop("posted", None)
        raise
    ctx.details["posted"] = posted
    ctx.conversation_id = conversation_id
    ctx.raw_forgotten = True


# The final transaction's two UPDATEs, built once (issue 17); the inbound row's SET clause is the
# parameters' other keys (``_final_values`` and the post's ids).
_TOKEN_USED = (
    update(TOKEN_TABLE)
    .where(TOKEN_TABLE.c.id == bindparam("b_id"), TOKEN_TABLE.c.revoked_at.is_(None))
    .values(last_used_at=bindparam("b_now"))
)
_INBOUND_POSTED = update(INBOUND_TABLE).where(INBOUND_TABLE.c.id == bindparam("b_id"))


def _post_in(
    ctx: Context, session: Session, key: str, accepted: list[NewAttachment], source: MessageSource
) -> tuple[str, str]:
    """The post's writes in *session*'s open transaction, neither committed nor rolled back here:
    the posted message's id and its conversation's."""
    assert ctx.sender is not None
    sender_id = ctx.sender.id
    # Everything read earlier in the run is read again: rights may have changed during DNS or the
    # attachment checks (a client deactivated, a participant removed), and the post is judged on
    # what is true now, in the transaction that writes it.
    session.expire_all()
    # A repeat (same token, Message-ID and body) meets the unique idempotency key at the insert.
    if ctx.envelope.target.kind == "route":
        practice = session.get_one(Practice, ctx.practice_id)
        sender = session.get_one(User, sender_id)  # the run's own session, or the group's
        message = _open_conversation(ctx, session, practice, sender, key, source)
        posted, conversation_id = message.id, message.conversation_id
    else:
        assert ctx.conversation_id is not None
        conversation_id = ctx.conversation_id
        # The policy's reads again, as one Core statement: the conversation, its practice's
        # settings, the participants, who holds its company, muted it, or is suppressed.
        view = convs.post_view(session, conversation_id)
        if view is None:
            raise Rejected(replies.UNKNOWN_RECIPIENT, "conversation_missing")
        author = view.member(sender_id)
        if author is not None:
            posted = convs.post_reply(
                session,
                view,
                author,
                body=ctx.body,
                body_html=ctx.body_html,
                hidden_text=ctx.hidden,
                internal=ctx.internal,
                source=source,
                attachments=accepted,
                idempotency_key=key,
            )
        else:  # not a participant at all: judged (and refused) as a post from the app would be
            posted = _post_as_entities(ctx, session, key, accepted, source, sender_id)
        # The token was live at RCPT; revoked since (participant removed, conversation deleted),
        # the reply is refused as an unknown address would have been.
        used = session.connection().execute(
            _TOKEN_USED, {"b_id": ctx.envelope.target.token_id, "b_now": utcnow()}
        )
        if getattr(used, "rowcount", 1) != 1:
            raise Rejected(replies.UNKNOWN_RECIPIENT, "token_revoked")
    ctx.details["posted"] = posted
    session.connection().execute(
        _INBOUND_POSTED,
        {
            **_final_values(ctx, InboundState.posted, "posted", replies.OK),
            "b_id": ctx.inbound_id,
            "posted_message_id": posted,
            "conversation_id": conversation_id,
            "raw_ref": None,  # the post lives in the database; the raw copy goes after the commit
        },
    )
    if ctx.envelope.finalize is not None:
        ctx.envelope.finalize(session)
    if ctx.notice_reason == "attachment_withheld":
        _notice(session, session.get_one(Practice, ctx.practice_id), ctx, "attachment_withheld")
    return posted, conversation_id


def _post_as_entities(
    ctx: Context,
    session: Session,
    key: str,
    accepted: list[NewAttachment],
    source: MessageSource,
    sender_id: int,
) -> str:
    """``convs.post_message`` with the entities read again (``conversation_for_policy``)."""
    assert ctx.conversation_id is not None
    conversation, known = convs.conversation_for_policy(session, ctx.conversation_id)
    if conversation is None:
        raise Rejected(replies.UNKNOWN_RECIPIENT, "conversation_missing")
    message = convs.post_message(
        session,
        session.get_one(Practice, ctx.practice_id),
        conversation,
        session.get_one(User, sender_id),
        body=ctx.body,
        body_html=ctx.body_html,
        hidden_text=ctx.hidden,
        internal=ctx.internal,
        source=source,
        attachments=accepted,
        idempotency_key=key,
        known=known,
    )
    return message.id


def _open_conversation(
    ctx: Context, session: Session, practice: Practice, sender: User, key: str, source: MessageSource
) -> Message:
    from mailbridge.domain.routes import group_members

    route = session.get_one(Route, ctx.envelope.target.route_id)
    return open_from_route(
        session,
        practice,
        route,
        sender,
        group_members(session, route),
        subject=header_text(ctx.msg, "Subject"),
        post=Post(ctx.body, ctx.body_html, ctx.hidden, internal=False),
        source=source,
        attachments=ctx.intake.accepted if ctx.intake else [],
        key=key,
    )


def open_from_route(
    session: Session,
    practice: Practice,
    route: Route | None,
    sender: User,
    members: list[User],
    *,
    subject: str,
    post: Post,
    source: MessageSource,
    attachments: list[NewAttachment],
    key: str | None,
) -> Message:
    """Mail to frontdesk@ from a client opens a conversation with the route's group; To/Cc never join.

    A company or confidential route needs the client's company: it is used when the client follows
    exactly one; otherwise the conversation is private (participants only), the safest kind.
    """
    from mailbridge.domain.directory import favourite_company_ids, get_company_by_id

    kind, company = ConversationKind.private, None
    if route is not None and route.kind != ConversationKind.private:
        followed = favourite_company_ids(session, sender)
        if len(followed) == 1:
            kind, company = route.kind, get_company_by_id(session, next(iter(followed)))
    _, message = convs.create_conversation(
        session,
        practice,
        kind=kind,
        company=company,
        subject=subject[:255] or "(no subject)",
        author=sender,
        participants=[m for m in members if m.id != sender.id],
        body=post.body,
        body_html=post.body_html,
        hidden_text=post.hidden,
        source=source,
        attachments=attachments,
        idempotency_key=key,
    )
    return message


def _body_start(raw: bytes) -> int:
    """Where the body begins: after the first empty line (CRLF or bare LF), or the end if none."""
    if raw.startswith((b"\r\n", b"\n")):
        return 2 if raw.startswith(b"\r\n") else 1
    # A bare-LF blank line counts only before the first CRLF one: a CRLF message has none, and
    # searching all of it (137 MB for the largest) cost more than hashing it.
    crlf = raw.find(b"\n\r\n")
    lf = raw.find(b"\n\n", 0, crlf + 1 if crlf >= 0 else len(raw))
    if lf >= 0:
        return lf + 2
    return crlf + 3 if crlf >= 0 else len(raw)


def body_hash(raw: bytes | None, path: Path) -> str:
    """SHA-256 of everything after the header block: relays add headers on a retry, the body stays."""
    if raw:  # already in memory: no second read of the file
        return hashlib.sha256(memoryview(raw)[_body_start(raw) :]).hexdigest()
    hasher = BodyHasher()
    with open(path, "rb") as handle:
        while block := handle.read(1024 * 1024):
            hasher.feed(block)
    return hasher.hexdigest()


class BodyHasher:
    """``body_hash`` fed a file's bytes in pieces of any size, so it can ride on another read.

    The body starts after the first empty line (CRLF or bare LF) at a line start: with a newline put
    before the file, the first ``\\n\\n`` or ``\\n\\r\\n``. Two bytes are carried between pieces."""

    def __init__(self) -> None:
        self._digest = hashlib.sha256()
        self._carry = b"\n"  # the file starts at a line start
        self._in_body = False

    def feed(self, block: bytes) -> None:
        if self._in_body:
            self._digest.update(block)
            return
        data = self._carry + block
        found = [(at, len(blank)) for blank in (b"\n\n", b"\n\r\n") if (at := data.find(blank)) >= 0]
        if not found:
            self._carry = data[-2:]
            return
        at, size = min(found)
        self._in_body = True
        self._digest.update(memoryview(data)[at + size :])

    def hexdigest(self) -> str:
        return self._digest.hexdigest()


def post_key(who: str, message_id: str, digest: str) -> str:
    """Token (or route and sender) + Message-ID + body hash: Message-ID alone is chosen by the sender (M10).

    ``who`` is ``t<token id>`` for a reply, ``r<route id>:<from address>`` for mail to a route."""
    material = f"{who}\x00{message_id}\x00{digest}"
    return hashlib.sha256(material.encode("utf-8", "surrogateescape")).hexdigest()


def idempotency_key(ctx: Context) -> str:
    target = ctx.envelope.target
    who = f"t{target.token_id}" if target.kind == "reply" else f"r{target.route_id}:{ctx.from_address}"
    if ctx.body_digest is None:
        ctx.body_digest = body_hash(None if ctx.large else ctx.raw, ctx.raw_path)
    return post_key(who, str(ctx.details.get("message_id", "")), ctx.body_digest)


STEPS: tuple[Step, ...] = (
    store_raw,
    prescan,
    parse,
    classify_mail,
    resolve_sender,
    route_gate,
    authenticate_sender,
    extract_body,
    sender_policy,
    take_attachments,
    store,
)


# ---- running ----------------------------------------------------------------------------------------


def _final_values(ctx: Context, state: InboundState, reason: str, reply: SmtpReply) -> dict[str, Any]:
    return {
        "state": state,
        "reason": reason,
        "rule": ctx.rule,
        "smtp_reply": reply.wire()[:255],
        "from_header": ctx.from_address[:320] or None,
        "message_id_header": str(ctx.details.get("message_id", ""))[:998] or None,
        "auth_results": ctx.details.get("auth"),
        "details": {k: v for k, v in ctx.details.items() if k not in ("auth", "message_id", "from")},
        "updated_at": utcnow(),
    }


def _finish_row(row: InboundLog, ctx: Context, state: InboundState, reason: str, reply: SmtpReply) -> None:
    for name, value in _final_values(ctx, state, reason, reply).items():
        setattr(row, name, value)


def _notice(session: Session, practice: Practice, ctx: Context, reason: str) -> None:
    """One short, localized notice per address per reason per day; only to a proven, known participant."""
    from mailbridge.outbound.fanout import enqueue_email

    if ctx.notice_to is None or reason not in FIXABLE or ctx.classification is None:
        return
    if ctx.classification.kind != "human" or ctx.auth is None:
        return
    today = date.today().isoformat()
    exists = session.scalar(
        select(NoticeSent.id).where(
            NoticeSent.practice_id == practice.id,
            NoticeSent.address == ctx.from_address,
            NoticeSent.reason == reason,
            NoticeSent.day == today,
        )
    )
    if exists:
        return
    try:  # two refusals at once for the same address: the other one sends today's notice
        with session.begin_nested():
            session.add(
                NoticeSent(practice_id=practice.id, address=ctx.from_address, reason=reason, day=today)
            )
    except IntegrityError:
        return
    withheld = (
        [v.filename + " (" + (v.explanation or v.reason or "") + ")" for v in ctx.intake.withheld]
        if ctx.intake
        else []
    )
    enqueue_email(
        session,
        practice,
        kind=OutboxKind.notice,
        to_address=ctx.from_address,
        recipient_id=ctx.notice_to[0],
        payload={
            "reason": reason,
            "locale": ctx.notice_to[1],
            "files": withheld,
            "in_reply_to": ctx.details.get("message_id", ""),
        },
    )


def _release(ctx: Context) -> None:
    """End the read transaction a step left open, so no step holds a connection while the next
    one works (DNS, a 100 MB attachment): the pool stays free, and a writer always takes the SQLite
    writer gate before a connection, never the other way round. The objects read stay loaded."""
    if ctx.session is not None and ctx.session.in_transaction():
        ctx.session.commit()


def _close(ctx: Context) -> None:
    """The run's session ends here, whatever happened (a broken connection must not leak)."""
    if ctx.session is not None:
        with contextlib.suppress(SQLAlchemyError):
            ctx.session.close()
        ctx.session = None


def _record(ctx: Context, state: InboundState, reason: str, reply: SmtpReply) -> None:
    """Final state of a run that did not post, in a session of its own (the run's may be broken);
    best effort when the database itself is the problem."""
    _close(ctx)
    if not ctx.inbound_id:
        return
    try:
        with transaction(ctx.deps.sessions) as session:
            row = session.get(InboundLog, ctx.inbound_id)
            if row is None:
                return
            _finish_row(row, ctx, state, reason, reply)
            forget = state in FORGET_RAW
            if forget:
                row.raw_ref = None
            if ctx.envelope.finalize is not None and state != InboundState.deferred:
                ctx.envelope.finalize(session)
            if state == InboundState.rejected and ctx.notice_reason and ctx.practice_id is not None:
                practice = session.get(Practice, ctx.practice_id)
                if practice is not None:
                    _notice(session, practice, ctx, ctx.notice_reason)
            if state == InboundState.rejected and row.practice_id is not None:
                _refused_event(session, row, ctx, reason)
        ctx.raw_forgotten = forget
    except SQLAlchemyError:
        log.warning("inbound_log_update_failed", extra={"reason": reason}, exc_info=True)


# Outcomes whose raw copy is not kept: the post lives in the database, the rest was never content.
FORGET_RAW = frozenset({InboundState.posted, InboundState.duplicate, InboundState.dropped_auto_reply})


def _cleanup_raw(ctx: Context) -> None:
    """The local working copy always goes (the object store keeps what is kept). The stored copy
    goes once a committed row stopped naming it, so a deletion erases every copy (seed 003); if
    this delete fails, no row names the object and the housekeeping sweep removes it. For the same
    reason the delete is not made durable (no directory fsync, issue 17 item 4): an unlink lost
    with a power cut leaves such an orphan too, and the sweep takes it the same way."""
    with contextlib.suppress(OSError):
        ctx.raw_path.unlink(missing_ok=True)
    if ctx.raw_forgotten and ctx.raw_ref:
        try:
            ctx.deps.vault.delete(ctx.raw_ref, sync=False)
        except OSError:
            log.warning("raw_delete_failed", extra={"ref": ctx.raw_ref}, exc_info=True)


def _refused_event(session: Session, row: InboundLog, ctx: Context, reason: str) -> None:
    """``message.refused`` for the practice's app: the reason code and ids, never the content."""
    sender = session.get(User, ctx.notice_to[0]) if ctx.notice_to is not None else None
    assert row.practice_id is not None
    events.message_refused(
        session,
        row.practice_id,
        inbound_id=row.id,
        door=row.door,
        reason=reason,
        rule=ctx.rule,
        conversation_id=ctx.conversation_id,
        sender=sender.external_id if sender is not None else None,
    )


def _trim_refused_raw(ctx: Context, state: InboundState) -> None:
    """A refused or deferred message keeps only its first bytes (finding 10: a stranger can send any
    amount of refused mail); housekeeping removes even those after ``raw_refused_retention_days``.

    The stored copy is replaced in place (same key, same reference: a put is atomic in both stores),
    so the row never names a missing object; a failure leaves the whole copy, with a WARNING."""
    keep = ctx.deps.refused_keep_bytes
    ref = ctx.raw_ref
    if state not in (InboundState.rejected, InboundState.deferred) or not ctx.inbound_id or not ref:
        return
    vault = ctx.deps.vault
    encrypted = ref.endswith(ENCRYPTED_SUFFIX)
    if encrypted != vault.encrypting:  # the setting changed since the put: the reference would too
        return
    try:
        if ctx.raw_path.stat().st_size <= keep:
            return
        os.truncate(ctx.raw_path, keep)
        key = ref[: -len(ENCRYPTED_SUFFIX)] if encrypted else ref
        vault.put_path(key, ctx.raw_path, ctx.practice_id)
        ctx.details["raw_kept_bytes"] = keep
    except OSError:
        log.warning("raw_trim_failed", extra={"inbound_id": ctx.inbound_id}, exc_info=True)


# Steps that wait on DNS run on a pool of their own at the SMTP door (ingress/smtp.py): a message
# held by a slow DNS never occupies a thread that CPU-bound steps of other messages need.
DNS_STEPS: frozenset[str] = frozenset({"authenticate_sender"})


class Run:
    """One message through the steps, in groups that want the same pool (``pool``: "cpu" or "dns").

    :func:`run` takes every group in one thread (the IMAP door, tests); the SMTP door hands each group
    to its pool. :meth:`advance` never raises: a step's ``Done``/``Rejected``/``Deferred`` or any fault
    ends the run with its outcome, recorded as :func:`run` always did.

    Work per message is bounded (finding 9): the CPU time of the steps (``Deps.cpu_budget``, checked
    between steps: a step is never interrupted; caps inside the steps bound each one) and the time
    authentication may wait on DNS (``Deps.dns_budget``: past it, look-ups fail as temperror).
    """

    def __init__(self, deps: Deps, envelope: Envelope, raw_path: Path, size: int) -> None:
        self.ctx = Context(
            deps=deps, envelope=envelope, raw_path=raw_path, size=size, session=deps.sessions()
        )
        self.began = time.perf_counter()
        self.position = 0  # index in STEPS of the next step
        self.cpu_used = 0.0
        self.outcome: Outcome | None = None

    @property
    def pool(self) -> str:
        steps = STEPS
        if self.position < len(steps) and steps[self.position].__name__ in DNS_STEPS:
            return "dns"
        return "cpu"

    def advance(self) -> Outcome | None:
        """Run the next steps that want this pool; the outcome once the run is over, else None."""
        if self.outcome is not None:
            return self.outcome
        ctx = self.ctx
        steps = STEPS
        pool = self.pool
        state, reason, reply = InboundState.posted, "posted", replies.OK
        try:
            while self.position < len(steps):
                step = steps[self.position]
                if ("dns" if step.__name__ in DNS_STEPS else "cpu") != pool:
                    return None  # the next group wants the other pool
                if self.position and self.cpu_used > ctx.deps.cpu_budget:
                    log.warning("pipeline_cpu_budget", extra={"seconds": round(self.cpu_used, 3)})
                    raise Rejected(replies.OVER_BUDGET, "cpu_budget")
                self.position += 1
                started, cpu = time.perf_counter(), time.thread_time()
                try:
                    step(ctx)
                    _release(ctx)
                finally:
                    self.cpu_used += time.thread_time() - cpu
                    STEP_SECONDS.labels(step.__name__).observe(time.perf_counter() - started)
        except Done as done:
            state, reason, reply = done.state, done.reason, done.reply
        except Rejected as rejected:
            state, reason, reply = InboundState.rejected, rejected.reason, rejected.reply
        except Deferred as deferred:
            state, reason, reply = InboundState.deferred, deferred.reason, deferred.reply
        except (OperationalError, SQLAlchemyError, OSError):
            log.warning("tempfail_db", exc_info=True)
            state, reason, reply = InboundState.deferred, "tempfail_db", replies.TEMPFAIL
        except Exception:
            log.exception("pipeline_unexpected_error")
            state, reason, reply = InboundState.deferred, "internal_error", replies.TEMPFAIL
        return self._finish(state, reason, reply)

    def _finish(self, state: InboundState, reason: str, reply: SmtpReply) -> Outcome:
        ctx = self.ctx
        try:
            if state != InboundState.posted:
                _trim_refused_raw(ctx, state)
                _record(ctx, state, reason, reply)
        finally:
            _close(ctx)
            for cleanup in ctx.cleanups:
                cleanup()
            if not ctx.inbound_id:
                with contextlib.suppress(OSError):
                    Path(ctx.raw_path).unlink(missing_ok=True)
        _cleanup_raw(ctx)
        INBOUND.labels(state.value, reason).inc()
        count_practice_inbound(ctx.practice_slug, state.value)
        inbound_decision(
            door=ctx.envelope.door,
            practice=ctx.practice_slug,
            inbound_id=ctx.inbound_id or None,
            message_id=str(ctx.details.get("message_id") or "") or None,
            state=state.value,
            reason=reason,
            reply=reply.wire(),
            duration_ms=(time.perf_counter() - self.began) * 1000,
        )
        self.position = len(STEPS)
        self.outcome = Outcome(
            reply, state, reason, ctx.inbound_id or None, ctx.details.get("posted"), ctx.conversation_id
        )
        return self.outcome


def run(deps: Deps, envelope: Envelope, raw_path: Path, size: int) -> Outcome:
    """Run every step; return the one SMTP answer. 250 only once the post is committed."""
    current = Run(deps, envelope, raw_path, size)
    while True:
        outcome = current.advance()
        if outcome is not None:
            return outcome
