"""Which delivery reports, complaints and smarthost refusals may suppress an address: named rules.

Anybody can mail a delivery-status report naming any address (security issue 11): a report may only
silence the recipient of mail *we* sent, so only a report that arrived at the signed VERP address
of an outbox row counts, only for that row's recipient, and only when it says the recipient's
address or mailbox is bad. A refusal of *our* sender, domain or message (RFC 3463 X.7.X policy,
X.1.7/X.1.8 sender address, X.2.3/X.3.4/X.6.X content, X.5.X protocol) is a delivery failure of
ours, never the client's. Delays (``Action: delayed``) and successes never count.

Two tables, each read in order, the first rule that speaks decides (like ``policy/rules.py``):

* ``ARRIVAL_RULES`` look at where the report arrived and what it is (``Arrival``);
* ``FAILURE_RULES`` look at one recipient's failure (``Failure``): the DSN's Action and Status
  (RFC 3464 §2.3), a heuristic bounce's status, a JSON notice's, or the smarthost's answer.

A verdict's ``effect`` is ``hard`` (suppressed until removed), ``soft`` (counts towards a
suppression that expires), ``complaint`` (suppressed until removed), or ``ignore``; its ``reason``
is a stable code written to the inbound log and the outbox row.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Final, Literal

Effect = Literal["hard", "soft", "complaint", "ignore"]
Source = Literal["dsn", "smarthost"]

_STATUS: Final = re.compile(r"\b([245])\.(\d{1,3})\.(\d{1,3})\b")
_REPLY: Final = re.compile(r"^\s*([2-5]\d\d)(?:[ -]+([245]\.\d{1,3}\.\d{1,3})\b)?")
# What a server says when the mailbox does not exist, for answers without a specific status
# (``550 User unknown``, ``Status: 5.0.0``). Deliberately narrow: "mailbox unavailable" and
# "address rejected" are also said of policy refusals (``Sender address rejected``).
_UNKNOWN_USER: Final = re.compile(
    r"\b(?:user unknown|unknown user|no such (?:user|mailbox|recipient|account)"
    r"|(?:mailbox|account|user|recipient|address) (?:does not|doesn't|did not) exist"
    r"|recipient (?:address )?(?:unknown|not found)|invalid recipient|unknown recipient"
    r"|mailbox not found|no mailbox here)\b",
    re.IGNORECASE,
)
_SENDER: Final = re.compile(r"\bsender\b", re.IGNORECASE)
_SUCCESS_ACTIONS: Final = frozenset({"delivered", "relayed", "expanded"})

# The effects, strongest last: of several failures naming the row's recipient, the strongest decides.
_STRENGTH: Final[dict[Effect, int]] = {"ignore": 0, "soft": 1, "hard": 2, "complaint": 3}


@dataclass(frozen=True, slots=True)
class Verdict:
    effect: Effect
    rule: str
    reason: str


@dataclass(frozen=True, slots=True)
class Arrival:
    """Where a report arrived and what the classifier called it.

    ``row_recipient`` is the recipient of the outbox row whose signed VERP address the report was
    sent to (``None`` when it came to any other address, or the row is gone or another practice's).
    """

    target_kind: str  # reply | route | operator | bounce
    kind: str  # the classification: bounce | complaint | auto_reply | human | loop
    row_recipient: str | None = None
    row_kind: str | None = None  # notification | notice | forward
    row_age_days: float | None = None  # since the row was handed to the smarthost (or created)


@dataclass(frozen=True, slots=True)
class Failure:
    """One recipient's failure, as a DSN block, a heuristic bounce, a JSON notice or a smarthost states it."""

    source: Source
    addresses: tuple[str, ...]  # every address it names for the recipient (Original- and Final-Recipient)
    action: str | None
    status: str | None
    diagnostic: str | None = None
    permanent: bool = True

    @property
    def effective_status(self) -> str | None:
        """The Status, made specific by the diagnostic when it says only X.0.0 (or nothing)."""
        return refine_status(self.status, self.diagnostic)


@dataclass(frozen=True, slots=True)
class Decision:
    """The verdict on a whole report, and the failure that decided it (for the suppression row)."""

    verdict: Verdict
    failure: Failure | None = None
    considered: tuple[tuple[str, str], ...] = ()  # (rule, reason) for each failure naming the recipient

    @property
    def effect(self) -> Effect:
        return self.verdict.effect


ArrivalRule = Callable[[Arrival], Verdict | None]
FailureRule = Callable[[Failure], Verdict | None]


def _ignore(rule: str, reason: str) -> Verdict:
    return Verdict("ignore", rule, reason)


def refine_status(status: str | None, diagnostic: str | None) -> str | None:
    """``5.0.0`` with ``smtp; 550 5.1.1 user unknown`` → ``5.1.1``; a specific Status stays as it is."""
    if status is not None and not status.endswith(".0.0"):
        return status
    for match in _STATUS.finditer(diagnostic or ""):
        found = ".".join(match.groups())
        if not found.endswith(".0.0") and (status is None or found[0] == status[0]):
            return found
    return status


def parse_reply(answer: str) -> tuple[int | None, str | None]:
    """``550 5.1.1 <a@b>: user unknown`` → (550, ``5.1.1``); (None, None) when it is no SMTP reply."""
    match = _REPLY.match(answer)
    if match is None:
        return None, None
    return int(match.group(1)), match.group(2)


def _subject(status: str) -> tuple[int, int]:
    _class, subject, detail = status.split(".")
    return int(subject), int(detail)


# ---- where it arrived ------------------------------------------------------------------------------


def only_signed_verp_counts(a: Arrival) -> Verdict | None:
    """postmaster@, a route, a reply address: anybody can write there, naming anybody (issue 11 #1)."""
    if a.target_kind != "bounce":
        return _ignore("only_signed_verp_counts", "not_verp")
    return None


def row_must_exist(a: Arrival) -> Verdict | None:
    if a.row_recipient is None:
        return _ignore("row_must_exist", "unknown_outbox_row")
    return None


def operator_mail_is_not_a_person(a: Arrival) -> Verdict | None:
    """A forward to the practice's operator bounced: the operator's problem, logged, nobody suppressed."""
    if a.row_kind == "forward":
        return _ignore("operator_mail_is_not_a_person", "operator_forward")
    return None


# How long after a notification left a report about it may still count. A remote MTA gives up and
# reports within its queue lifetime (Postfix's maximal_queue_lifetime and Sendmail's are 5 days,
# Exim's retry rules about 4): a week covers them. A complaint comes when the recipient clicks
# "spam", perhaps weeks later: a month. Outbox rows are kept for ever, so without a limit a VERP
# address seen once (a notification forwarded with its headers) could silence its recipient years
# later.
BOUNCE_REPORT_DAYS: Final = 7
COMPLAINT_REPORT_DAYS: Final = 30


def late_report_is_ignored(a: Arrival) -> Verdict | None:
    """A report long after the notification left is no MTA's: someone replaying its VERP address."""
    limit = COMPLAINT_REPORT_DAYS if a.kind == "complaint" else BOUNCE_REPORT_DAYS
    if a.row_age_days is not None and a.row_age_days > limit:
        return _ignore("late_report_is_ignored", "report_too_late")
    return None


def complaint_suppresses_row_recipient(a: Arrival) -> Verdict | None:
    """RFC 5965 feedback about our mail: the row's recipient asked not to get it (issue 16)."""
    if a.kind == "complaint":
        return Verdict("complaint", "complaint_suppresses_row_recipient", "complaint")
    return None


def only_reports_count(a: Arrival) -> Verdict | None:
    """An auto-reply, a challenge-response or a person answering the Return-Path is no bounce (#4)."""
    if a.kind != "bounce":
        return _ignore("only_reports_count", "not_a_report")
    return None


ARRIVAL_RULES: Final[tuple[ArrivalRule, ...]] = (
    only_signed_verp_counts,
    row_must_exist,
    operator_mail_is_not_a_person,
    late_report_is_ignored,
    complaint_suppresses_row_recipient,
    only_reports_count,
)


# ---- what one failure says -------------------------------------------------------------------------


def success_is_no_failure(f: Failure) -> Verdict | None:
    if (f.action or "") in _SUCCESS_ACTIONS or (f.status or "").startswith("2."):
        return _ignore("success_is_no_failure", "dsn_success")
    return None


def delay_is_no_failure(f: Failure) -> Verdict | None:
    """RFC 3464 ``Action: delayed``: the remote MTA is still trying (a warning, never a bounce)."""
    if f.action == "delayed" or (f.action is None and not f.permanent):
        return _ignore("delay_is_no_failure", "dsn_delayed")
    return None


def policy_refusal_is_ours(f: Failure) -> Verdict | None:
    """X.7.X: our sender, domain, reputation or authentication was refused, not the client's address."""
    status = f.effective_status
    if status is not None and _subject(status)[0] == 7:
        return _ignore("policy_refusal_is_ours", "sender_policy_refusal")
    return None


def sender_address_is_ours(f: Failure) -> Verdict | None:
    """X.1.7 bad sender mailbox syntax, X.1.8 bad sender system address: our envelope sender."""
    status = f.effective_status
    if status is not None and _subject(status) in ((1, 7), (1, 8)):
        return _ignore("sender_address_is_ours", "sender_address_refused")
    return None


def message_refusal_is_ours(f: Failure) -> Verdict | None:
    """X.2.3/X.3.4 too big, X.6.X content, X.5.X protocol: this message, not the mailbox."""
    status = f.effective_status
    if status is None:
        return None
    subject, detail = _subject(status)
    if (subject, detail) in ((2, 3), (3, 4)) or subject == 6:
        return _ignore("message_refusal_is_ours", "message_refused")
    if subject == 5 and detail != 0:  # X.5.0 is "other": some servers say it of an unknown user
        return _ignore("message_refusal_is_ours", "protocol_error")
    return None


def transient_failure_is_soft(f: Failure) -> Verdict | None:
    """A remote MTA that gave up on a 4.X.X condition (``Action: failed``) never reached the mailbox;
    a 4xx from our smarthost is a retry, never a suppression."""
    status = f.effective_status
    if status is not None and status.startswith("4."):
        if f.source == "smarthost":
            return _ignore("transient_failure_is_soft", "temporary_failure")
        return Verdict("soft", "transient_failure_is_soft", "transient_failure")
    return None


def bad_address_is_hard(f: Failure) -> Verdict | None:
    """5.1.1 bad mailbox, 5.1.2 bad domain, 5.1.3 bad syntax, 5.1.4 ambiguous, 5.1.6 moved, 5.1.10 null
    MX (RFC 7505). Not 5.1.0 ("other address status"): servers also say it of our sender."""
    status = f.effective_status
    if (
        status is not None
        and status[0] == "5"
        and _subject(status)
        in (
            (1, 1),
            (1, 2),
            (1, 3),
            (1, 4),
            (1, 6),
            (1, 10),
        )
    ):
        return Verdict("hard", "bad_address_is_hard", "recipient_unknown")
    return None


def disabled_mailbox_is_hard(f: Failure) -> Verdict | None:
    status = f.effective_status
    if status is not None and status[0] == "5" and _subject(status) == (2, 1):
        return Verdict("hard", "disabled_mailbox_is_hard", "mailbox_disabled")
    return None


def full_mailbox_is_soft(f: Failure) -> Verdict | None:
    """5.2.2 mailbox full, 5.2.0 other mailbox status, 5.3.1/5.3.2 destination system full or closed."""
    status = f.effective_status
    if status is not None and status[0] == "5" and _subject(status) in ((2, 0), (2, 2), (3, 1), (3, 2)):
        return Verdict("soft", "full_mailbox_is_soft", "mailbox_full")
    return None


def unknown_user_text_is_hard(f: Failure) -> Verdict | None:
    """No specific status (``550 User unknown``, 5.0.0, 5.1.0, 5.5.0), but the server says the mailbox
    is not there, and says nothing of the sender."""
    status = f.effective_status
    generic = status is None or (status[0] == "5" and status.endswith(".0"))
    text = f.diagnostic or ""
    if generic and f.permanent and _UNKNOWN_USER.search(text) and not _SENDER.search(text):
        return Verdict("hard", "unknown_user_text_is_hard", "recipient_unknown")
    return None


def other_remote_failure_is_soft(f: Failure) -> Verdict | None:
    """Any other permanent failure a remote MTA reports (5.0.0, 5.4.4 unroutable, no status): it may be
    the address, it may pass; it counts towards a suppression that expires."""
    if f.source == "dsn" and f.permanent:
        return Verdict("soft", "other_remote_failure_is_soft", "other_failure")
    return None


def other_smarthost_refusal_is_ours(f: Failure) -> Verdict | None:
    """Our own relay refusing without naming the mailbox (5.0.0, 5.3.5 config, 5.4.6 loop): ours."""
    if f.source == "smarthost":
        return _ignore("other_smarthost_refusal_is_ours", "unclassified_refusal")
    return None


FAILURE_RULES: Final[tuple[FailureRule, ...]] = (
    success_is_no_failure,
    delay_is_no_failure,
    policy_refusal_is_ours,
    sender_address_is_ours,
    message_refusal_is_ours,
    transient_failure_is_soft,
    bad_address_is_hard,
    disabled_mailbox_is_hard,
    full_mailbox_is_soft,
    unknown_user_text_is_hard,
    other_remote_failure_is_soft,
    other_smarthost_refusal_is_ours,
)

# Reasons that are a delivery failure of ours: an operator must hear of them (WARNING and a metric).
OURS: Final = frozenset(
    {
        "sender_policy_refusal",
        "sender_address_refused",
        "message_refused",
        "protocol_error",
        "unclassified_refusal",
        "sender_refused",
    }
)


def judge_failure(f: Failure) -> Verdict:
    for rule in FAILURE_RULES:
        verdict = rule(f)
        if verdict is not None:
            return verdict
    return _ignore("no_rule", "unclassified")


def judge_report(arrival: Arrival, failures: Sequence[Failure]) -> Decision:
    """The verdict on a report: its arrival first, then each failure that names the row's recipient.

    A failure counts only for the row's recipient: one naming anybody else (a stranger's address,
    a forwarding target without Original-Recipient) is ignored, never recorded for the name it gives.
    """
    for rule in ARRIVAL_RULES:
        verdict = rule(arrival)
        if verdict is not None:
            return Decision(verdict)
    if not failures:
        return Decision(_ignore("needs_a_failed_recipient", "no_failed_recipient"))
    recipient = (arrival.row_recipient or "").strip().lower()
    covering = [f for f in failures if recipient in {a.strip().lower() for a in f.addresses}]
    if not covering:
        return Decision(_ignore("counts_only_for_row_recipient", "other_recipient"))
    judged = [(judge_failure(f), f) for f in covering]
    verdict, failure = max(judged, key=lambda pair: _STRENGTH[pair[0].effect])
    return Decision(verdict, failure, tuple((v.rule, v.reason) for v, _f in judged))


def judge_smarthost(stage: str, answer: str, recipient: str) -> Decision:
    """A permanent refusal from our smarthost, at MAIL FROM, RCPT TO or DATA (issue 11 #2)."""
    code, enhanced = parse_reply(answer)
    if stage == "mail":
        return Decision(_ignore("mail_from_refusal_is_ours", "sender_refused"))
    if code is None or code < 500:
        return Decision(_ignore("temporary_never_suppresses", "temporary_failure"))
    failure = Failure("smarthost", (recipient,), "failed", enhanced, answer, permanent=True)
    return Decision(judge_failure(failure), failure)
