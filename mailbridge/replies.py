"""One vocabulary of SMTP replies: every answer mailbridge gives on the wire is a named constant here."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class SmtpReply:
    """An SMTP reply with its RFC 3463 enhanced status; refuses a class mismatch such as ``550 4.7.0``."""

    code: int
    enhanced: str
    text: str

    def __post_init__(self) -> None:
        if not 200 <= self.code <= 599:
            raise ValueError(f"bad SMTP code {self.code}")
        klass = self.enhanced.split(".")[0]
        if klass != str(self.code)[0] and not (self.code < 400 and klass == "2"):
            raise ValueError(f"enhanced status {self.enhanced} does not match code {self.code}")
        if "\r" in self.text or "\n" in self.text:
            raise ValueError("reply text must be one line")

    @property
    def permanent(self) -> bool:
        return self.code >= 500

    @property
    def transient(self) -> bool:
        return 400 <= self.code < 500

    def wire(self) -> str:
        return f"{self.code} {self.enhanced} {self.text}"


class Rejected(Exception):
    """A permanent refusal decided by a pipeline step; only the ingress edge turns it into wire bytes."""

    def __init__(self, reply: SmtpReply, reason: str) -> None:
        super().__init__(reason)
        self.reply = reply
        self.reason = reason


class Deferred(Exception):
    """A transient refusal (database, disk, DNS): the sender must retry."""

    def __init__(self, reply: SmtpReply, reason: str) -> None:
        super().__init__(reason)
        self.reply = reply
        self.reason = reason


OK = SmtpReply(250, "2.0.0", "Message accepted")
OK_RECIPIENT = SmtpReply(250, "2.1.5", "Recipient OK")
OK_DISCARDED = SmtpReply(
    250, "2.0.0", "Message accepted"
)  # identical on the wire: no oracle for auto-replies

RELAY_DENIED = SmtpReply(550, "5.7.1", "Relay access denied")
UNKNOWN_RECIPIENT = SmtpReply(550, "5.1.1", "No such recipient")
TOO_MANY_TOKENS = SmtpReply(452, "4.5.3", "Too many recipients; send this one separately")
POLICY_DENIED = SmtpReply(550, "5.7.1", "This reply cannot be accepted; please use the secure portal")
# The same refusal to an external agent (seed 003), who has no portal to be sent to.
POLICY_DENIED_EXTERNAL = SmtpReply(550, "5.7.1", "This reply cannot be accepted; please contact the practice")
SENDER_MISMATCH = SmtpReply(550, "5.7.1", "Sender not authorised for this address")
AUTH_FAILED = SmtpReply(550, "5.7.1", "Message failed sender authentication (DMARC)")
SPF_FAILED = SmtpReply(550, "5.7.1", "Message failed sender authentication (SPF)")
AUTH_TEMPERROR = SmtpReply(451, "4.7.0", "Sender authentication temporarily unavailable; try again later")
STAFF_USE_APP = SmtpReply(550, "5.7.1", "Staff members post through the application")
MALFORMED = SmtpReply(550, "5.6.0", "Malformed message")
BARE_LINE_ENDING = SmtpReply(550, "5.6.0", "Bare CR or LF not allowed")
MIME_TOO_COMPLEX = SmtpReply(550, "5.6.0", "Message structure too complex")
TOO_MANY_ATTACHMENTS = SmtpReply(550, "5.6.0", "Too many attachments")
EMPTY_MESSAGE = SmtpReply(550, "5.6.0", "Empty message")
AMBIGUOUS_FROM = SmtpReply(550, "5.6.0", "Exactly one From address is required")
LOOP_DETECTED = SmtpReply(554, "5.4.6", "Mail loop detected")
TEMPFAIL = SmtpReply(451, "4.3.0", "Temporary failure, please try again later")
TOO_MANY_BAD_RECIPIENTS = SmtpReply(421, "4.7.0", "Too many invalid recipients, closing connection")
TOO_MANY_CONNECTIONS = SmtpReply(421, "4.7.0", "Too many connections, try again later")
# XFORWARD (Postfix's XFORWARD_README): codes and texts as Postfix's own smtpd gives them.
XFORWARD_OK = SmtpReply(250, "2.0.0", "Ok")
XFORWARD_DENIED = SmtpReply(550, "5.7.0", "Error: insufficient authorization")
XFORWARD_IN_TRANSACTION = SmtpReply(503, "5.5.1", "Error: MAIL transaction in progress")
XFORWARD_SYNTAX = SmtpReply(501, "5.5.4", "Syntax: XFORWARD attribute=value...")
LINE_TOO_LONG = SmtpReply(500, "5.5.2", "Line too long (see RFC5321 4.5.3.1.6)")
HEADER_FIELD_TOO_LONG = SmtpReply(550, "5.6.0", "A header field is too long")
OVER_BUDGET = SmtpReply(550, "5.6.0", "Message too complex to process")
LARGE_TRANSFERS_BUSY = SmtpReply(451, "4.3.2", "Too many large messages in transit; try again later")
TIMEOUT = SmtpReply(421, "4.4.2", "Timeout exceeded, closing connection")
TOO_MANY_JUNK_COMMANDS = SmtpReply(421, "4.7.0", "Too many commands without progress, closing connection")


def message_too_big(limit_bytes: int) -> SmtpReply:
    """552 5.3.4 naming the limit, so a person reading the bounce knows what to send instead."""
    mb = limit_bytes / (1024 * 1024)
    return SmtpReply(552, "5.3.4", f"Message too big; the limit is {mb:.0f} MB")
