"""Score mailbridge's reply extractor against the shared corpora and the installed reply-parsing libraries.

Run from the repository root::

    .venv/bin/python -m benchmarks.bench_reply_extraction [--failures] [--corpus NAME]

Per corpus: exact match of the visible reply after strip (the corpus's own comparison rule: strip,
whitespace-free for talon's HTML cases, Markdown-aware for Discourse), the same after whitespace
folding, and the transcribed contains/regex assertions as pass/fail. Every library gets the same
cases in the same run; HTML-only cases reach the text-only libraries through our html_to_text.

The last table is the own-notification corpus (benchmarks/own_corpus.py): replies to the project's
own notifications, quoted as real clients quote them, built in the run (no shared data needed).
"mailbridge own-cut" knows what was sent (the fingerprint the worker keeps); "mailbridge" is the
generic extractor alone, as for any other mail.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from benchmarks.corpora import Corpus, ReplyCase, corpora_root, exact_match, folded_match, load_all
from benchmarks.own_corpus import KEY, OwnCase, cases
from mailbridge.inbound.body import extract_reply, extract_reply_from_html, html_to_text, reply_body

Extractor = Callable[[ReplyCase], tuple[str, str]]


def _text_of(case: ReplyCase) -> str:
    return case.text if case.text is not None else html_to_text(case.html or "")


def _rest(source: str, visible: str) -> str:
    # Libraries without a "hidden" output: whatever of the input is not the visible reply.
    return source.replace(visible.strip(), "", 1) if visible.strip() else source


def mailbridge_extract(case: ReplyCase) -> tuple[str, str]:
    reply = extract_reply(case.text) if case.text is not None else extract_reply_from_html(case.html or "")
    return reply.visible, reply.hidden


def _email_reply_parser() -> Extractor | None:
    try:
        from email_reply_parser import EmailReplyParser  # type: ignore[import-untyped]
    except ImportError:
        return None

    def run(case: ReplyCase) -> tuple[str, str]:
        source = _text_of(case)
        visible = EmailReplyParser.parse_reply(source)
        return visible, _rest(source, visible)

    return run


def _mail_parser_reply() -> Extractor | None:
    try:
        from mailparser_reply import EmailReplyParser  # type: ignore[import-untyped]
        from mailparser_reply.constants import MAIL_LANGUAGES  # type: ignore[import-untyped]
    except ImportError:
        return None
    parser = EmailReplyParser(languages=list(MAIL_LANGUAGES))

    def run(case: ReplyCase) -> tuple[str, str]:
        source = _text_of(case)
        visible = parser.parse_reply(source)
        return visible, _rest(source, visible)

    return run


def _quotequail() -> Extractor | None:
    try:
        import quotequail  # type: ignore[import-untyped]
    except ImportError:
        return None

    def run(case: ReplyCase) -> tuple[str, str]:
        if case.text is None and case.html:
            unwrapped = quotequail.unwrap_html(case.html)
            if unwrapped and unwrapped.get("html_top"):
                visible = html_to_text(unwrapped["html_top"])
                return visible, _rest(html_to_text(case.html), visible)
        source = _text_of(case)
        unwrapped = quotequail.unwrap(source)
        if unwrapped and unwrapped.get("text_top") is not None:
            visible = unwrapped["text_top"]
        else:
            visible = "\n".join(part for shown, part in quotequail.quote(source) if shown)
        return visible, _rest(source, visible)

    return run


@dataclass
class Score:
    exact: int = 0
    folded: int = 0
    scored: int = 0
    checks_passed: int = 0
    checks: int = 0
    errors: int = 0
    failures: list[str] = field(default_factory=list)

    def row(self) -> str:
        return (
            f"{_cell(self.exact, self.scored)}  {_cell(self.folded, self.scored)}  "
            f"{_cell(self.checks_passed, self.checks)}"
        )


def _cell(ok: int, total: int) -> str:
    if not total:
        return f"{'-':>14}"
    return f"{ok:>3}/{total:<3} {100 * ok / total:5.1f}%"


def score(corpus: Corpus, extractor: Extractor) -> Score:
    result = Score()
    for case in corpus.cases:
        started = time.perf_counter()
        try:
            visible, hidden = extractor(case)
        except Exception as exc:  # a library crashing on a case is a failed case, not a crashed benchmark
            visible, hidden = "", ""
            result.errors += 1
            result.failures.append(f"{case.case_id}: raised {type(exc).__name__}")
        elapsed = time.perf_counter() - started
        if case.expected is not None:
            result.scored += 1
            exact = exact_match(case, visible)
            result.exact += exact
            result.folded += folded_match(case, visible)
            if not exact:
                result.failures.append(f"{case.case_id}: expected {case.expected.strip()!r}, got {visible!r}")
        checks = list(case.checks)
        for check in checks:
            result.checks += 1
            ok = check.passes(visible, hidden)
            result.checks_passed += ok
            if not ok:
                result.failures.append(
                    f"{case.case_id}: check {check.source} {check.kind} {check.value!r} failed"
                )
        if case.max_seconds is not None:
            result.checks += 1
            result.checks_passed += elapsed <= case.max_seconds
    return result


def own_corpus() -> tuple[Corpus, dict[str, OwnCase]]:
    """The own-notification corpus as scored cases (exact after strip), with each case's fingerprint."""
    corpus = Corpus("own-notification")
    by_id: dict[str, OwnCase] = {}
    for case in cases():
        by_id[case.case_id] = case
        corpus.cases.append(
            ReplyCase(corpus.name, case.case_id, text=case.text, html=case.html, expected=case.expected)
        )
    return corpus, by_id


def own_cut(by_id: dict[str, OwnCase]) -> Extractor:
    def run(case: ReplyCase) -> tuple[str, str]:
        body = reply_body(case.text, case.html, sent=[by_id[case.case_id].sent], key=KEY)
        return body.visible, body.hidden

    return run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--failures", action="store_true", help="list mailbridge's failing cases")
    parser.add_argument("--corpus", action="append", help="only this corpus (repeatable)")
    args = parser.parse_args(argv)

    root = corpora_root()
    if root is None:
        print(
            "corpora not found (../shared/corpora or $MAILBRIDGE_CORPORA): shared corpora not scored",
            file=sys.stderr,
        )
    extractors: dict[str, Extractor] = {"mailbridge": mailbridge_extract}
    for name, factory in (
        ("email-reply-parser", _email_reply_parser),
        ("mail-parser-reply", _mail_parser_reply),
        ("quotequail", _quotequail),
    ):
        extractor = factory()
        if extractor is None:
            print(f"({name} not installed: skipped; pip install -e '.[bench]')", file=sys.stderr)
        else:
            extractors[name] = extractor

    header = f"{'corpus':<27} {'extractor':<19} {'exact (strip)':>14}  {'ws-folded':>14}  {'checks':>14}"
    print(header)
    print("-" * len(header))
    ours: dict[str, Score] = {}
    for corpus in load_all(root) if root is not None else []:
        if args.corpus and corpus.name not in args.corpus:
            continue
        for name, extractor in extractors.items():
            result = score(corpus, extractor)
            if name == "mailbridge":
                ours[corpus.name] = result
            print(f"{corpus.name:<27} {name:<19} {result.row()}")
        print()
    own, by_id = own_corpus()
    if not args.corpus or own.name in args.corpus:
        for name, extractor in {"mailbridge own-cut": own_cut(by_id), **extractors}.items():
            result = score(own, extractor)
            if name in ("mailbridge own-cut", "mailbridge"):
                ours[f"{own.name} ({name})"] = result
            print(f"{own.name:<27} {name:<19} {result.row()}")
        print()
    if args.failures:
        for corpus_name, result in ours.items():
            print(f"== mailbridge failures in {corpus_name}")
            for failure in result.failures:
                print(f"  {failure}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
