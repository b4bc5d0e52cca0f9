"""Load the shared real-world corpora (../shared/corpora) as scored reply-extraction cases."""

from __future__ import annotations

import email
import email.message
import email.policy
import json
import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

# The corpora live next to the repository, never inside it (several are GPL); CI and dev boxes have them.
DEFAULT_ROOT = Path(__file__).resolve().parents[2] / "shared" / "corpora"

Target = Literal["visible", "hidden"]
CheckKind = Literal["contains", "not_contains", "regex", "nonempty", "empty", "contains_markdown"]
Compare = Literal["strip", "no_whitespace", "markdown"]


def corpora_root() -> Path | None:
    """The corpora folder ($MAILBRIDGE_CORPORA or ../shared/corpora), or None when absent."""
    root = Path(os.environ.get("MAILBRIDGE_CORPORA", DEFAULT_ROOT))
    return root if root.is_dir() else None


@dataclass(frozen=True)
class Check:
    """A pass/fail assertion on the visible or hidden text (transcribed contains/regex assertions)."""

    target: Target
    kind: CheckKind
    value: str
    source: str

    def passes(self, visible: str, hidden: str) -> bool:
        text = visible if self.target == "visible" else hidden
        if self.kind == "contains":
            return self.value in text
        if self.kind == "not_contains":
            return self.value not in text
        if self.kind == "regex":
            return re.search(self.value, text) is not None
        if self.kind == "nonempty":
            return bool(text.strip())
        if self.kind == "empty":
            return not text.strip()
        return markdown_fold(self.value) in markdown_fold(text)


@dataclass(frozen=True)
class ReplyCase:
    corpus: str
    case_id: str
    text: str | None = None  # plain-text body (given to extract_reply)
    html: str | None = None  # HTML body, when the message has no text part
    expected: str | None = None  # expected visible reply; None when the case only has checks
    compare: Compare = "strip"
    checks: tuple[Check, ...] = ()
    max_seconds: float | None = None
    note: str = ""


@dataclass
class Corpus:
    name: str
    cases: list[ReplyCase] = field(default_factory=list)


# ---------------------------------------------------------------- comparison -----------------------

_WS = re.compile(r"\s+")


def fold(text: str) -> str:
    """Whitespace folding: runs of whitespace (incl. newlines) become one space."""
    return _WS.sub(" ", text).strip()


def markdown_fold(text: str) -> str:
    """Discourse's expectations are Markdown: drop */# emphasis markers and list numbering."""
    text = re.sub(r"(?m)^(\s*)\d+\.\s", r"\g<1>1. ", text)
    return fold(re.sub(r"[*#]", "", text))


def _markdown_exact(text: str) -> str:
    text = re.sub(r"(?m)^(\s*)\d+\.\s", r"\g<1>1. ", text)
    return re.sub(r"[ \t]+", " ", re.sub(r"[*#]", "", text)).strip()


def exact_match(case: ReplyCase, visible: str) -> bool:
    assert case.expected is not None
    if case.compare == "no_whitespace":
        return _WS.sub("", visible) == _WS.sub("", case.expected)
    if case.compare == "markdown":
        return _markdown_exact(visible) == _markdown_exact(case.expected)
    return visible.strip() == case.expected.strip()


def folded_match(case: ReplyCase, visible: str) -> bool:
    assert case.expected is not None
    if case.compare == "no_whitespace":
        return exact_match(case, visible)
    if case.compare == "markdown":
        return markdown_fold(visible) == markdown_fold(case.expected)
    return fold(visible) == fold(case.expected)


# ---------------------------------------------------------------- MIME -----------------------------


def _decode(payload: bytes, charset: str | None) -> str:
    # Valid UTF-8 with non-ASCII bytes is almost never an accident, even under a wrong label
    # (discourse's chinese_reply says Big5 and carries UTF-8).
    for candidate in ("utf-8", charset):
        if candidate:
            try:
                return payload.decode(candidate)
            except (LookupError, UnicodeDecodeError):
                continue
    return payload.decode("latin-1")


def _leaves(part: email.message.Message, depth: int = 0) -> Iterator[email.message.Message]:
    if depth > 30:
        return
    payload = part.get_payload()
    if part.is_multipart() and isinstance(payload, list) and part.get_content_type() != "message/rfc822":
        for child in payload:
            if isinstance(child, email.message.Message):
                yield from _leaves(child, depth + 1)
    else:
        yield part


def eml_bodies(raw: bytes) -> tuple[str | None, str | None]:
    """First non-attachment text/plain and text/html bodies of a message; never raises."""
    msg = email.message_from_bytes(raw, policy=email.policy.compat32)
    text: str | None = None
    html: str | None = None
    for part in _leaves(msg):
        if (part.get("Content-Disposition") or "").strip().lower().startswith("attachment"):
            continue
        ctype = part.get_content_type()
        if ctype not in ("text/plain", "text/html"):
            continue
        payload = part.get_payload(decode=True)
        if not isinstance(payload, bytes):
            continue
        body = _decode(payload, part.get_content_charset())
        if ctype == "text/plain" and text is None:
            text = body
        elif ctype == "text/html" and html is None:
            html = body
    return text, html


def _read_text(path: Path) -> str:
    return _decode(path.read_bytes(), None)


def _html_text(html: str) -> str:
    return re.sub(r"<[^>]*>", " ", html)


# ---------------------------------------------------------------- talon ----------------------------


def load_talon(root: Path) -> Corpus:
    base = root / "talon"
    corpus = Corpus("talon")
    manifest = json.loads((base / "manifest.json").read_text(encoding="utf-8"))
    for entry in manifest["cases"]:
        task = entry["task"]
        expected = entry.get("expected") or {}
        path = base / entry["input"]
        if task == "reply_extraction" and path.suffix == ".eml" and "reply_nonempty" not in expected:
            text, _ = eml_bodies(path.read_bytes())
            reply = expected.get("reply")
            if "reply_file" in expected:
                reply = _read_text(base / expected["reply_file"])
            corpus.cases.append(ReplyCase("talon", entry["id"], text=text or "", expected=reply))
        elif task == "reply_extraction":
            # Upstream passes the whole file, headers included, as text.
            checks = [Check("visible", "nonempty", "", "reply_nonempty")]
            checks += [
                Check("visible", "not_contains", v, "reply_not_contains")
                for v in expected["reply_not_contains"]
            ]
            corpus.cases.append(ReplyCase("talon", entry["id"], text=_read_text(path), checks=tuple(checks)))
        elif task == "reply_extraction_html":
            reply = expected.get("reply") or _html_text(expected["reply_html"])
            corpus.cases.append(
                ReplyCase(
                    "talon", entry["id"], html=_read_text(path), expected=reply, compare="no_whitespace"
                )
            )
    inline = json.loads((base / "inline_cases.json").read_text(encoding="utf-8"))
    for entry in inline["cases"]:
        if "MAX_LINES_COUNT" in entry.get("notes", ""):
            continue  # depends on a talon-only line limit; the manifest says to exclude it
        corpus.cases.append(
            ReplyCase("talon", entry["id"], text=entry["input_text"], expected=entry["expected"]["reply"])
        )
    return corpus


def load_talon_signatures(root: Path) -> Corpus:
    """talon's signature fixtures: the visible text must be the body minus the signature."""
    base = root / "talon"
    corpus = Corpus("talon-signature")
    manifest = json.loads((base / "manifest.json").read_text(encoding="utf-8"))
    for entry in manifest["cases"]:
        if entry["task"] != "signature_extraction":
            continue
        expected = entry["expected"]
        sig_path = base / expected["signature_file"]
        body = _read_text(sig_path.with_name(sig_path.name.replace("_signature", "_body"))).strip()
        signature_raw = _read_text(sig_path)
        text = body[: len(body) - len(signature_raw)].strip() if signature_raw else body
        checks = (
            (Check("hidden", "contains", signature_raw.strip(), "signature"),)
            if signature_raw.strip()
            else ()
        )
        corpus.cases.append(ReplyCase(corpus.name, entry["id"], text=body, expected=text, checks=checks))
    return corpus


# ---------------------------------------------------------------- email_reply_parser family ------

# Assertions about the extracted new reply (equality after strip is what we score).
_REPLY_EQUALS = (
    "parse_reply_equals",
    "visible_text_equals",
    "visible_text_trimmed_equals",
    "first_fragment_equals",
    "first_fragment_trimmed_equals",
    "reply_0_body_equals",
)


def _as_list(value: Any) -> list[str]:
    return [str(v) for v in value] if isinstance(value, list) else [str(value)]


def _erp_checks(key: str, value: Any) -> list[Check]:
    """Translate a structural assertion to a visible/hidden check; [] when it has no equivalent."""
    if key in ("fragment_0_matches", "parse_reply_matches"):
        return [Check("visible", "regex", v, key) for v in _as_list(value)]
    if key in ("fragment_0_contains", "parse_reply_contains", "reply_0_body_contains"):
        return [Check("visible", "contains", v, key) for v in _as_list(value)]
    if key == "reply_0_body_not_contains":
        return [Check("visible", "not_contains", v, key) for v in _as_list(value)]
    if key == "quoted_text_matches":
        return [Check("hidden", "regex", v, key) for v in _as_list(value)]
    if key in ("reply_0_signature_contains", "reply_0_signature_startswith", "reply_1_body_contains"):
        return [Check("hidden", "contains", v, key) for v in _as_list(value)]
    if key == "reply_1_headers_contains":
        return [Check("hidden", "contains", v, key) for v in _as_list(value)]
    if key == "reply_0_signature_equals":
        return [Check("hidden", "contains", str(value), key) if value else Check("hidden", "empty", "", key)]
    return []


def load_email_reply_parser_family(root: Path) -> Corpus:
    base = root / "email_reply_parser_family"
    corpus = Corpus("email_reply_parser_family")
    manifest = json.loads((base / "manifest.json").read_text(encoding="utf-8"))
    for entry in manifest["cases"]:
        text = _read_text(base / entry["input"])
        expected: str | None = None
        checks: list[Check] = []
        max_seconds: float | None = None
        for assertion in entry["assertions"]:
            for key, value in assertion.items():
                if key in _REPLY_EQUALS and expected is None:
                    expected = str(value)
                elif key == "max_seconds":
                    max_seconds = float(value)
                else:
                    checks.extend(_erp_checks(key, value))
        corpus.cases.append(
            ReplyCase(
                corpus.name,
                entry["id"],
                text=text,
                expected=expected,
                checks=tuple(checks),
                max_seconds=max_seconds,
                note=entry.get("notes", ""),
            )
        )
    return corpus


# ---------------------------------------------------------------- discourse ------------------------


def load_discourse(root: Path) -> Corpus:
    corpus = Corpus("discourse")
    for era in ("v2019", "current_extra"):
        base = root / "discourse" / era
        manifest = json.loads((base / "manifest.json").read_text(encoding="utf-8"))
        for entry in manifest["cases"]:
            expected = entry.get("expected") or {}
            if "reply" not in expected:
                continue
            text, html = eml_bodies((base / entry["input"]).read_bytes())
            markdown = entry.get("match", "").endswith("markdown_aware")
            checks: tuple[Check, ...] = ()
            if expected.get("elided"):
                checks = (Check("hidden", "contains_markdown", expected["elided"], "elided"),)
            corpus.cases.append(
                ReplyCase(
                    corpus.name,
                    f"{era}/{entry['id']}",
                    text=text if text is not None or html is None else None,
                    html=html if text is None else None,
                    expected=expected["reply"],
                    compare="markdown" if markdown else "strip",
                    checks=checks,
                    note=entry.get("notes", ""),
                )
            )
    return corpus


LOADERS: dict[str, Callable[[Path], Corpus]] = {
    "talon": load_talon,
    "email_reply_parser_family": load_email_reply_parser_family,
    "discourse": load_discourse,
    "talon-signature": load_talon_signatures,
}


def load_all(root: Path) -> list[Corpus]:
    return [loader(root) for loader in LOADERS.values()]
