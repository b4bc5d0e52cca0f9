"""Every real-world message in ../shared/corpora through the whole inbound pipeline: a defined answer and
a log row for each, never an unhandled error.

Each message runs twice: as it is (a stranger writing to a valid reply address: most stop at the
sender proof), and with its From rewritten to the token owner, so the parse, classification, body
extraction, policy, attachments and the final store all see real mail. One test per corpus folder;
failures are collected and reported together.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from mailbridge import replies
from mailbridge.domain.models import InboundLog
from mailbridge.inbound import pipeline
from mailbridge.inbound.envelope import decide_recipient
from mailbridge.replies import SmtpReply
from mailbridge.wiring import Services, pipeline_deps
from tests.conftest import SHARED, make_services, seed, shared_corpora
from tests.mailhelpers import open_conversation, reply_address

CORPORA = SHARED / "corpora"
# Folders whose inputs are not RFC 822 messages (plain-text bodies for reply-extraction libraries).
NOT_MESSAGES = {"email_reply_parser_family": "plain-text bodies only, not whole RFC 822 messages"}

# The answers the pipeline may give, with the enhanced-status class each code requires (RFC 3463).
ALLOWED_CODES = {250: "2", 451: "4", 550: "5", 552: "5", 554: "5"}
# Reasons that mean an exception was swallowed into a 4xx: with a healthy database and a static DNS
# table none of them may happen, whatever the input.
CRASH_REASONS = frozenset({"internal_error", "tempfail_db", "tempfail_disk", "auth_temperror"})
OWNER = "alice@client.test"

NAMED_REPLIES = frozenset(v for v in vars(replies).values() if isinstance(v, SmtpReply))
_TOO_BIG = re.compile(r"Message too big; the limit is \d+ MB")


def is_named_reply(reply: SmtpReply) -> bool:
    """One of mailbridge.replies' constants (or its size answer): fixed text, nothing from the input."""
    if reply in NAMED_REPLIES:
        return True
    return (reply.code, reply.enhanced) == (552, "5.3.4") and bool(_TOO_BIG.fullmatch(reply.text))


_FROM = re.compile(rb"(?im)^From:[^\n]*\n(?:[ \t][^\n]*\n)*")


def crlf(raw: bytes) -> bytes:
    """Line endings as an MTA hands them over (RFC 5321 §2.3.8); lone CRs stay and are refused."""
    return raw.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


def from_owner(raw: bytes) -> bytes:
    """The message as if the token owner had sent it: the first From header replaced (or added)."""
    raw = crlf(raw).replace(b"\r\n", b"\n")
    line = f"From: Alice Martin <{OWNER}>\n".encode()
    replaced, count = _FROM.subn(line, raw, count=1)
    return crlf(replaced if count else line + raw)


def corpus_folders() -> list[str]:
    """Every folder with a manifest.json, relative to the corpora root ("discourse/v2019", "talon")."""
    if not CORPORA.is_dir():
        return ["(absent)"]
    return sorted(str(m.parent.relative_to(CORPORA)) for m in CORPORA.rglob("manifest.json"))


def corpus_inputs(folder: str) -> list[Path]:
    """The manifest's inputs that are messages (talon also ships HTML fragments and signature bodies)."""
    base = CORPORA / folder
    manifest = json.loads((base / "manifest.json").read_text(encoding="utf-8"))
    paths: dict[Path, None] = {}
    for case in manifest["cases"]:
        path = base / case["input"]
        if folder == "talon" and path.suffix != ".eml":
            continue
        paths[path] = None
    return list(paths)


def corpus_messages() -> list[Path]:
    """All message inputs of all corpora, for the property tests and the fuzz target ([] when absent)."""
    if not CORPORA.is_dir():
        return []
    return [
        path
        for folder in corpus_folders()
        if folder.split("/")[0] not in NOT_MESSAGES
        for path in corpus_inputs(folder)
    ]


class LastTraceback(logging.Handler):
    """The last exception mailbridge logged, so a swallowed error shows its traceback in the failure."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.last = ""

    def emit(self, record: logging.LogRecord) -> None:
        if record.exc_info:
            self.last = f"{record.getMessage()}: {logging.Formatter().formatException(record.exc_info)}"


@dataclass
class PipelineWorld:
    """A seeded practice, a conversation with Alice, her reply token, and a place to spool raw mail."""

    services: Services
    envelope: pipeline.Envelope
    conversation_id: str
    spool: Path
    deps: Any = None
    durations: list[float] = field(default_factory=list)
    counter: int = 0
    tracebacks: LastTraceback = field(default_factory=LastTraceback)

    def __post_init__(self) -> None:
        logging.getLogger("mailbridge").addHandler(self.tracebacks)

    @classmethod
    def build(cls, tmp: Path, **settings: Any) -> PipelineWorld:
        services = make_services(tmp, f"sqlite:///{tmp / 'mailbridge.db'}", **settings)
        seed(services)
        conversation = open_conversation(services)
        address = reply_address(services, conversation, "alice")
        with services.sessions() as session:
            target = decide_recipient(session, services.tokens, services.verp_secret, address).target
        assert target is not None
        envelope = pipeline.Envelope(
            door="smtp", peer="127.0.0.1", helo="client.test", mail_from=OWNER, target=target
        )
        spool = tmp / "spool"
        spool.mkdir()
        return cls(services, envelope, conversation, spool, pipeline_deps(services))

    def run(self, raw: bytes) -> pipeline.Outcome:
        """One pass through ``pipeline.run``, as the SMTP door makes it: spool file first."""
        self.counter += 1
        self.tracebacks.last = ""
        path = self.spool / f"{self.counter}.eml"
        path.write_bytes(raw)
        started = time.perf_counter()
        outcome = pipeline.run(self.deps, self.envelope, path, len(raw))
        self.durations.append(time.perf_counter() - started)
        return outcome

    def problems(self, outcome: pipeline.Outcome) -> list[str]:
        """What is wrong with this answer: an unknown code, a class mismatch, a crash, no log row."""
        reply = outcome.reply
        found = []
        if ALLOWED_CODES.get(reply.code) != reply.enhanced.split(".")[0]:
            found.append(f"answer {reply.wire()!r} not in the allowed set")
        if reply.permanent and not is_named_reply(reply):
            found.append(f"5xx {reply.wire()!r} is not one of the named replies (HOSTILE Y4)")
        if outcome.reason in CRASH_REASONS:
            found.append(f"swallowed error: {outcome.reason} ({reply.wire()}) {self.tracebacks.last}")
        if outcome.inbound_id is None:
            found.append("no inbound_log row")
        else:
            with self.services.sessions() as session:
                row = session.get(InboundLog, outcome.inbound_id)
            if row is None:
                found.append("inbound_log row missing")
            elif (row.state, row.smtp_reply) != (outcome.state, reply.wire()[:255]):
                found.append(f"log row says {row.state}/{row.smtp_reply!r}, the answer was {reply.wire()!r}")
        return found

    def close(self) -> None:
        logging.getLogger("mailbridge").removeHandler(self.tracebacks)
        self.services.close()


@pytest.fixture
def world(tmp_path: Path) -> Iterator[PipelineWorld]:
    built = PipelineWorld.build(tmp_path)
    yield built
    built.close()


@pytest.mark.parametrize("folder", corpus_folders())
def test_corpus_through_the_pipeline(folder: str, request: pytest.FixtureRequest) -> None:
    shared_corpora()
    if folder.split("/")[0] in NOT_MESSAGES:
        pytest.skip(f"{folder}: {NOT_MESSAGES[folder.split('/')[0]]}")
    world: PipelineWorld = request.getfixturevalue("world")
    inputs = corpus_inputs(folder)
    assert inputs, f"{folder}: the manifest lists no messages"
    failures: list[str] = []
    outcomes: Counter[tuple[str, int, str]] = Counter()
    for path in inputs:
        original = path.read_bytes()
        for variant, raw in (("as-is", crlf(original)), ("from-owner", from_owner(original))):
            try:
                outcome = world.run(raw)
            except Exception as exc:  # pipeline.run must never raise; report every case at once
                failures.append(f"{path.relative_to(CORPORA)} [{variant}]: raised {exc!r}")
                continue
            outcomes[(variant, outcome.reply.code, outcome.reason)] += 1
            failures.extend(f"{path.relative_to(CORPORA)} [{variant}]: {p}" for p in world.problems(outcome))
    summary = ", ".join(f"{v} {c} {r}: {n}" for (v, c, r), n in sorted(outcomes.items()))
    print(f"{folder}: {len(inputs)} messages, max {max(world.durations) * 1000:.0f} ms per run; {summary}")
    assert not failures, "\n".join(failures)
    # The owner's variant must reach the end of the pipeline for real mail, not stop at the door.
    assert any(v == "from-owner" and r == "posted" for v, _, r in outcomes), summary
