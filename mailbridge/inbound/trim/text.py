"""Plain-text replies: split a body into the author's new text and the trimmed history/signature."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from mailbridge.inbound.trim import vocabulary as v


@dataclass(frozen=True)
class ExtractedReply:
    """The author's new text, and what was trimmed from it (kept so a reader can expand it)."""

    visible: str  # the new text the author wrote, trimmed
    hidden: str  # what was trimmed (quoted history, signature), kept but hidden


def _normalise(text: str) -> str:
    """CRLF/CR to LF; (narrow) no-break spaces, and "&nbsp;" left as letters, to plain spaces."""
    text = text.replace("\r\n", "\n").replace("\r", "\n").replace("\xa0", " ").replace("\u202f", " ")
    return v.NBSP_ENTITY.sub(" ", text) if "&" in text else text


def _clean(line: str) -> str:
    """The line as analysis reads it: no invisible characters; a line of residue marks is blank."""
    if line.isascii():  # every invisible character and residue mark is outside ASCII
        return line.strip()
    if v.RESIDUE_LINE.match(line):
        return ""
    return v.DROP_INVISIBLE.sub("", line).strip()


def _shown(line: str) -> str:
    """The line as posted: invisible characters and spaces trailing it are residue, never content."""
    return line.rstrip() if line.isascii() else v.TRAILING_INVISIBLE.sub("", line)


def _is_quote(line: str) -> bool:
    return v.QUOTE_LINE.match(line) is not None


def _is_rule(line: str) -> bool:
    return v.RULE_LINE.match(line) is not None


def _split_glued_headers(lines: list[str]) -> list[str]:
    """Put an attribution that a client glued to the author's last line, or to the first quoted
    line after it ("On …, Bob <b@x> wrote: Can you come?"), on a line of its own."""
    out: list[str] = []
    for i, line in enumerate(lines):
        if "on" in line.lower() and len(line) <= v.MAX_HEADER_CHARS and _ends_attribution(lines, i):
            glued = v.GLUED_ON.match(line) if not _is_quote(line) else None
            if glued and v.WORD_CHAR.search(glued["before"]) and v.TIME_OR_YEAR.search(glued["header"]):
                out.extend((glued["before"], glued["header"]))
                continue
        out.extend(_split_header_from_quote(line))
    return out


def _split_header_from_quote(line: str) -> tuple[str, ...]:
    # Only a dated header with an address: "On Monday I wrote: call me" stays a sentence.
    if _is_quote(line) or not v.ON_DATE.match(line) or "@" not in line[: v.MAX_HEADER_CHARS]:
        return (line,)
    verb = v.WROTE_COLON.search(line, 0, v.MAX_HEADER_CHARS)
    if verb is None or not line[verb.end() :].strip():
        return (line,)
    header = line[: verb.end()].rstrip()
    if _is_attribution(header) is not True or not v.TIME_OR_YEAR.search(header) or not _has_address(header):
        return (line,)
    return header, line[verb.end() :].strip()


def _ends_attribution(lines: Sequence[str], i: int) -> bool:
    # The "wrote:" may come a few wrapped lines later ("…, at 12:47 PM,\n Example <\naddr>wrote:").
    for j in range(i, min(i + v.MAX_HEADER_LINES + 1, len(lines))):
        if (j > i and not lines[j].strip()) or len(lines[j]) > v.MAX_HEADER_CHARS:
            return False
        if _ends_with_verb(lines[j]):
            return True
    return False


@dataclass(frozen=True)
class _Header:
    end: int  # exclusive line index
    strong: bool  # carries a date or an address: safe to cut even when no '>' quote follows


def _header_continuation(line: str) -> bool:
    # "> wrote:" / ">:" — a wrapped attribution whose tail a client prefixed with '>'.
    return bool(line) and (not _is_quote(line) or (len(line) <= 12 and line.endswith(":")))


def _ends_with_verb(text: str) -> bool:
    # The verb closes the line: searching only the tail keeps this linear on long lines.
    tail = text[-v.VERB_TAIL :]
    if not tail.rstrip(" \t:：-=*").lower().endswith(v.VERB_ENDINGS):
        return False
    return v.WROTE_END.search(tail) is not None


def _is_attribution(joined: str) -> bool | None:
    """None when not an attribution; else whether it is strong (has a date/time or an address)."""
    if len(joined) > v.MAX_HEADER_CHARS:
        return None
    ends_with_colon = joined.endswith((":", "："))
    if ends_with_colon and v.DATE_LED.match(joined) and len(joined) <= 200:
        # "2016-03-03 17:21 GMT+01:00 Some One:" — a date, a time, a name and a colon: nothing else
        # is written this way.
        return True
    if _ends_with_verb(joined):
        if not v.WROTE_END.sub("", joined[-v.VERB_TAIL :]).strip(" -=*>") and len(joined) <= v.VERB_TAIL:
            return None  # a bare "wrote:" with no one who wrote
    elif not ends_with_colon:
        return None
    elif not (v.WROTE_BEFORE_NAME.search(joined) and v.HEADER_OPENER.match(joined)):
        if v.WROTE_ANYWHERE.search(joined) and v.TIME_OR_YEAR.search(joined) and _has_address(joined):
            # "Bob <b@x> schrieb am Fr., 28. Apr. 2017 um 11:53 Uhr:" — the verb before the date.
            return True
        # "2014-10-17 11:28 GMT+03:00 Postmaster <postmaster@x>:" — date + address + colon, no verb.
        dated = v.TIME_OR_YEAR.search(joined) is not None and v.DIGIT.search(joined[:30]) is not None
        return True if dated and _has_address(joined) else None
    return _has_address(joined) or v.DIGIT.search(joined) is not None


def _has_address(text: str) -> bool:
    return "@" in text and v.EMAIL.search(text) is not None


def _match_attribution(lines: Sequence[str], i: int) -> _Header | None:
    first = lines[i]
    if len(first) > v.MAX_HEADER_CHARS:
        return None
    # "On Tue, Apr 11, 2017 at 10:07 PM John Smith\n\n<\nmailto:…>\n> wrote:" (Polymail) spreads a
    # dated attribution over blank lines; only such a dated opener may reach that far.
    dated = v.ON_DATE.match(first) is not None
    limit = v.MAX_DATED_HEADER_LINES if dated else v.MAX_HEADER_LINES
    # Only a line that opens like an attribution *and* carries its date may be joined with the next
    # ones: "Am heutigen Tage" above "Am So., 1. Jan. 2023 … schrieb …" is text, then a header.
    # A name and address before the verb and the date ("Bob <b@x> schrieb am Fr., 28.") may be
    # joined too: the address and the verb say what the line is.
    joinable = v.DIGIT.search(first) is not None and (
        v.HEADER_OPENER.match(first) is not None
        or (_has_address(first) and v.WROTE_ANYWHERE.search(first) is not None)
    )
    parts: list[str] = []
    j = i
    while j < len(lines) and j - i < limit:
        if j > i:
            if dated and not lines[j]:
                j += 1
                continue
            if not joinable or not _header_continuation(lines[j]):
                break
        parts.append(lines[j].lstrip(">").strip() if j > i else lines[j])
        strong = _is_attribution(" ".join(parts))
        if strong is not None:
            return _Header(j + 1, strong)
        j += 1
    return None


def _match_date_email_line(lines: Sequence[str], i: int) -> _Header | None:
    # "2011/4/7 Nathan <support@example.com>" with no colon: only trusted when a quote follows it.
    line = lines[i]
    if len(line) <= v.MAX_HEADER_CHARS and v.DIGIT.match(line) and _has_address(line):
        return _Header(i + 1, False)
    return None


def _next_content(lines: Sequence[str], i: int) -> int:
    while i < len(lines) and not lines[i]:
        i += 1
    return i


def _followed_by_quote(lines: Sequence[str], end: int) -> bool:
    nxt = _next_content(lines, end)
    return nxt < len(lines) and _is_quote(lines[nxt])


def _field_block_end(lines: Sequence[str], i: int) -> int | None:
    """End of an Outlook header block starting at line i, or None."""
    first_line = lines[i]
    first = v.FIELD.match(first_line)
    if first is None:
        return None
    # HTML flattened "<b>From: bob@x</b> <b>Date: …</b>" onto one line.
    fields = 1 + len(v.INLINE_FIELD.findall(first_line, first.end()))
    has_start = first["start"] is not None
    continuation = 0
    j = i + 1
    while j < len(lines) and j - i <= 12:
        line = lines[j]
        if not line:
            break
        match = v.FIELD.match(line)
        if match:
            fields += 1
            has_start = has_start or match["start"] is not None
            continuation = 0
        else:
            continuation += 1  # a wrapped "From: Name <\naddress>" or a long subject
            if continuation > 2:
                break
        j += 1
    if fields >= 2 and has_start and (first["start"] is not None or fields >= 3):
        return j
    return None


def _is_history_heading(lines: Sequence[str], i: int) -> bool:
    heading = v.HISTORY_HEADING.match(lines[i])
    if heading is None:
        return False
    if heading["open"].strip():  # emphasised ("*Previous Replies*", "## Earlier messages")
        return True
    k = i - 1
    while k >= 0 and not lines[k]:
        k -= 1
    return k >= 0 and _is_rule(lines[k])


def _is_mailing_list_footer(lines: Sequence[str], i: int) -> bool:
    # Mailman: a row of underscores, then "<list> mailing list", address, listinfo URL.
    if not v.UNDERSCORES.fullmatch(lines[i]):
        return False
    nxt = _next_content(lines, i + 1)
    return nxt < len(lines) and nxt - i <= 2 and v.MAILING_LIST_FOOTER.search(lines[nxt]) is not None


def _cut_marker_end(lines: Sequence[str], i: int) -> int | None:
    """If a marker after which everything is history starts at line i, the end of the marker."""
    line = lines[i]
    short = len(line) <= 200
    if short and (v.ORIGINAL_MARKER.match(line) or v.SIG_DELIMITER.match(line)):
        return i + 1
    if short and (v.MOBILE_FOOTER.match(line) or v.DEVICE_FOOTER.match(line) or v.REPLY_ABOVE.search(line)):
        return i + 1
    if short and (_is_history_heading(lines, i) or _is_mailing_list_footer(lines, i)):
        return i + 1
    return _field_block_end(lines, i)


def _footer_start(lines: Sequence[str], i: int) -> int:
    # "Jane Doe\nSent from my iPhone" set apart by a blank line is one mobile signature block.
    is_footer = v.MOBILE_FOOTER.match(lines[i]) or v.DEVICE_FOOTER.match(lines[i])
    if is_footer and i >= 3 and not lines[i - 2] and _looks_like_name(lines[i - 1]) and any(lines[: i - 2]):
        return i - 1
    return i


def _extend_cut_upwards(lines: Sequence[str], cut: int) -> int:
    # Blank lines and rules ("-----", "_____") right above a marker belong to the quoted part.
    while cut > 0 and (not lines[cut - 1] or _is_rule(lines[cut - 1])) and not _is_quote(lines[cut - 1]):
        cut -= 1
    return cut


@dataclass
class _Scan:
    end: int  # the author's region is lines[:end]; what follows is history
    keep_from: int | None = None  # a forwarded message starts here and stays visible verbatim
    headers: set[int] = field(default_factory=set)  # attribution lines that introduce a '>' block
    has_content: bool = True  # False: only quotes, their headers and markers (history, nothing new)


def _only_cover_note(lines: Sequence[str]) -> bool:
    """The author's lines above a forward say nothing but "FYI" (or the like, in a few languages)."""
    said = [line for line in lines if line.strip() and not _is_quote(line)]
    return len(said) == 1 and bool(v.FORWARD_COVER.match(said[0]))


def _scan(lines: Sequence[str]) -> _Scan:
    """Find where the author's text ends, and which attribution lines belong to '>' blocks.

    A marker with no author text above it is ignored: a body that starts with a header block is a
    forward without comment, and its content is the message.
    """
    headers: set[int] = set()
    has_content = False
    i = 0
    while i < len(lines):
        line = lines[i]
        if not line or _is_quote(line):
            i += 1
            continue
        if v.FORWARD_MARKER.match(line):
            # Below the author's words, a forwarded message is what they point at: hidden, like
            # history. Alone, it is what they are sending: kept whole.
            if has_content and not _only_cover_note(lines[:i]):
                return _Scan(_extend_cut_upwards(lines, i), None, headers)
            return _Scan(i, i, headers)
        header = _match_attribution(lines, i)
        if header is None and _followed_by_quote(lines, i + 1):
            header = _match_date_email_line(lines, i)
        if header is not None:
            if _followed_by_quote(lines, header.end):
                headers.update(range(i, header.end))
                i = header.end
                continue
            if header.strong:
                if has_content:
                    return _Scan(_extend_cut_upwards(lines, i), None, headers)
                i = header.end
                continue
        marker_end = _cut_marker_end(lines, i)
        if marker_end is not None:
            if has_content:
                return _Scan(_extend_cut_upwards(lines, _footer_start(lines, i)), None, headers)
            i = marker_end
            continue
        has_content = has_content or not _is_rule(line)  # a rule alone is nobody's words
        i += 1
    return _Scan(len(lines), None, headers, has_content)


def _classify(lines: Sequence[str], end: int, headers: set[int]) -> list[str]:
    """One letter per line: T(ext), Q(uote), H(eader of a quote), B(lank)."""
    kinds: list[str] = []
    for i in range(end):
        if i in headers:
            kinds.append("H")
        elif not lines[i]:
            kinds.append("B")
        else:
            kinds.append("Q" if _is_quote(lines[i]) else "T")
    _absorb_lazy_continuations(lines, kinds)
    _release_decorations(lines, kinds)
    return kinds


def _continues_quote(previous: str, line: str) -> bool:
    """Whether ``line`` is the wrapped tail of the quoted ``previous`` line rather than an answer."""
    first = line[:1]
    if (first.isalpha() and first.islower()) or not first.isalnum():
        return True  # "ignissim odio?", "_nonce=3dd518)": a word or URL cut in two
    quoted = previous.lstrip(" \t>")
    return len(quoted) >= 60 and not quoted.endswith((".", "!", "?", ":", ";"))


def _absorb_lazy_continuations(lines: Sequence[str], kinds: list[str]) -> None:
    # A quoted line re-wrapped by the client loses its '>' ("> … pharetra d\nignissim odio?\n>"):
    # one or two unprefixed lines squeezed between quote lines are still the quote — unless they
    # read as an answer typed between two quoted lines ("> Question?\nYes.\n> Next?").
    i = 0
    while i < len(kinds):
        if kinds[i] == "T" and i > 0 and kinds[i - 1] == "Q":
            j = i
            while j < len(kinds) and kinds[j] == "T" and j - i < 2:
                j += 1
            if (
                j < len(kinds)
                and kinds[j] == "Q"
                and all(_continues_quote(lines[k - 1], lines[k]) for k in range(i, j))
            ):
                for k in range(i, j):
                    kinds[k] = "Q"
            i = j
        else:
            i += 1


def _release_decorations(lines: Sequence[str], kinds: list[str]) -> None:
    # A lone banner line glued inside text (">>> >>> http://x <<<") uses '>' as an arrow, not a quote.
    for i in range(1, len(kinds) - 1):
        if kinds[i] == "Q" and kinds[i - 1] == "T" and kinds[i + 1] == "T" and v.BANNER.search(lines[i]):
            kinds[i] = "T"


@dataclass
class _Segment:
    kind: str  # "T" (author text) or "Q" (quote, with its attribution)
    lines: list[int] = field(default_factory=list)


def _segments(kinds: Sequence[str]) -> list[_Segment]:
    """Group lines; blank lines stay with the segment above (as talon does when it cuts a quote)."""
    segments: list[_Segment] = []
    for i, kind in enumerate(kinds):
        if kind == "B":
            if not segments:
                segments.append(_Segment("T"))
            segments[-1].lines.append(i)
            continue
        seg_kind = "Q" if kind in ("Q", "H") else "T"
        # An attribution opens a new quote: what was quoted above it is not that history.
        opens_history = kind == "H" and (i == 0 or kinds[i - 1] != "H")
        if not segments or segments[-1].kind != seg_kind or opens_history:
            segments.append(_Segment(seg_kind))
        segments[-1].lines.append(i)
    return segments


def _content(lines: Sequence[str], segment: _Segment) -> list[str]:
    return [lines[i] for i in segment.lines if lines[i]]


def _is_signoff(content: Sequence[str]) -> bool:
    return 0 < len(content) <= 2 and v.SIGNOFF_START.match(content[0]) is not None


def _is_name_block(content: Sequence[str]) -> bool:
    # "Stefano Costa @stekosteko / Editor, Journal of Open Archaeology Data" under a quote: a signature.
    if not content or len(content) > 4 or _is_signoff(content):
        return False
    return all(_looks_like_name(v.HANDLE.sub("", line)) for line in content)


def _is_answer(lines: Sequence[str], segments: Sequence[_Segment], n: int) -> bool:
    """Whether text segment n answers the quote above it.

    Between two quotes, any words are an answer ("> Thursday?\nYes\n> And the form?"); under the
    last quote, a sign-off or a name block is a signature, not an answer.
    """
    content = _content(lines, segments[n])
    if not content:
        return False
    if any(seg.kind == "Q" for seg in segments[n + 1 :]):
        return True
    # A lone "Yes" under the only quote is the reply; under a top-posted reply, a name is its signature.
    signature_possible = _has_text(lines, segments[: max(n - 1, 0)])
    return not _is_signoff(content) and not (signature_possible and _is_name_block(content))


def _is_greeting(lines: Sequence[str], before: Sequence[_Segment]) -> bool:
    content = [line for seg in before if seg.kind == "T" for line in _content(lines, seg)]
    return len(content) == 1 and (v.GREETING.match(content[0]) is not None or content[0].endswith(","))


def _select_visible(lines: Sequence[str], scan: _Scan) -> list[int]:
    """Indices of the author's lines in lines[:scan.end].

    A quote the author answers below is part of what they mean ("> Thursday?" / "Yes"): it stays
    visible in an interleaved reply (two or more answers below quotes); when the author answered
    one short point inside the history (a short quote, the answer, then more quoted history); and
    below a quote the author introduced with a greeting only ("Hi Bob,\n> question\nanswer").
    Every other quote is history and hidden: the unanswered quotes that trail the last answer, and
    the whole message quoted above a bottom-posted answer (the conversation already shows it).
    Kept quotes lose their attribution line. A name/title block left under the last quote is a
    signature.
    """
    kinds = _classify(lines, scan.end, scan.headers)
    segments = _segments(kinds)
    answered = {
        n
        for n, seg in enumerate(segments[:-1])
        if seg.kind == "Q" and segments[n + 1].kind == "T" and _is_answer(lines, segments, n + 1)
    }
    interleaved = len(answered) >= 2
    last_quote = max((n for n, seg in enumerate(segments) if seg.kind == "Q"), default=-1)
    text_above = any(seg.kind == "T" and _content(lines, seg) for seg in segments[: max(last_quote, 0)])
    visible: list[int] = []
    for n, seg in enumerate(segments):
        if seg.kind == "T":
            content = _content(lines, seg)
            if n > last_quote and text_above and content and _is_name_block(content):
                continue
            visible.extend(seg.lines)
        elif n in answered and (
            interleaved or _is_point(lines, segments, n, kinds) or _is_greeting(lines, segments[:n])
        ):
            visible.extend(_without_attribution(lines, seg.lines, kinds))
        elif _is_citation(segments, n, kinds) and _has_text(lines, segments[:n]):
            visible.extend(seg.lines)
    return visible


def _is_point(lines: Sequence[str], segments: Sequence[_Segment], n: int, kinds: Sequence[str]) -> bool:
    """A short quote answered inside the history: more quoted text follows the answer below it."""
    quoted = [i for i in segments[n].lines if kinds[i] == "Q" and lines[i].lstrip("> \t")]
    if not 0 < len(quoted) <= v.MAX_ANSWERED_QUOTE_LINES:
        return False
    return any(seg.kind == "Q" for seg in segments[n + 2 :])


def _has_text(lines: Sequence[str], segments: Sequence[_Segment]) -> bool:
    return any(seg.kind == "T" and _content(lines, seg) for seg in segments)


def _is_citation(segments: Sequence[_Segment], n: int, kinds: Sequence[str]) -> bool:
    # "Reply\n> a line I quote\n\nOn <date>, Bob wrote:\n> history": the history starts at the
    # attribution; a quote the author placed above it is part of the reply.
    seg = segments[n]
    if seg.kind != "Q" or kinds[seg.lines[0]] == "H" or n + 1 >= len(segments):
        return False
    following = segments[n + 1]
    return following.kind == "Q" and kinds[following.lines[0]] == "H"


def _without_attribution(lines: Sequence[str], indices: Sequence[int], kinds: Sequence[str]) -> list[int]:
    """A kept quote without its attribution (above it, or quoted inside it as Apple Mail writes it)."""
    kept: list[int] = []
    after_header = False
    for i in indices:
        quoted_header = kinds[i] == "Q" and _is_attribution(lines[i].lstrip("> \t")) is not None
        if (
            kinds[i] == "H"
            or quoted_header
            or (after_header and (kinds[i] == "B" or _is_blank_quote(lines[i])))
        ):
            after_header = True
            continue
        after_header = False
        kept.append(i)
    return kept


def _is_blank_quote(line: str) -> bool:
    return not line.lstrip("> \t")


def _is_contact(line: str) -> bool:
    if _has_address(line) or v.URL.search(line) or v.CONTACT_LABEL.match(line):
        return True
    phone = v.PHONE.search(line)
    return phone is not None and sum(c.isdigit() for c in phone.group()) >= 7


def _looks_like_name(line: str) -> bool:
    """A name or title line: short, and its longer words capitalised ("Jane Doe", "Head of Sales")."""
    words = line.split()
    if not 1 <= len(words) <= 6 or len(line) > 60 or line.endswith((":", ",", "?", "!")):
        return False
    # "Sure." / "Yes, at 10." are answers; "Ph.D." / "Jr." / "Inc." end names and titles.
    if line.endswith(".") and (len(words) == 1 or not v.ABBREVIATION.fullmatch(words[-1])):
        return False
    letters = [w for w in (v.LEADING_PUNCTUATION.sub("", w) for w in words) if w[:1].isalpha()]
    if not letters or not letters[0][0].isupper():
        return False
    return all(w[0].isupper() for w in letters if len(w) >= 4)


def _is_sentence(line: str) -> bool:
    words = len(line.split())
    return words >= 9 or (words >= 5 and line.endswith((".", "!", "?")))


def _signature_start(lines: Sequence[str], visible: Sequence[int]) -> int | None:
    """Position in ``visible`` where a trailing signature block starts, or None.

    Two shapes are recognised, walking up from the end while the tail stays short:
    a closing formula on its own line ("Regards," + name/title lines), and a contact block
    (a name or a rule, then lines with at least two of phone / e-mail / URL) — "John Doe, FCLS /
    Mailgun Inc / 555-941-0697" alone has one contact line and stays visible.
    """
    content_positions = [p for p, i in enumerate(visible) if lines[i]]
    if len(content_positions) < 2:
        return None
    first_content = content_positions[0]
    best: int | None = None
    tail_lines = contacts = 0
    prose = False
    for p in range(len(visible) - 1, first_content, -1):
        line = lines[visible[p]]
        if not line:
            continue
        if len(line) > v.MAX_SIGNATURE_LINE_CHARS or _is_quote(lines[visible[p]]) or v.POSTSCRIPT.match(line):
            break
        tail_lines += 1
        if tail_lines > v.MAX_SIGNATURE_LINES:
            break
        contacts += _is_contact(line)
        prose = prose or _is_sentence(line)
        if v.VALEDICTION.match(line):
            # "Regards,\nJane" is part of the message; "Regards,\nJane Doe\nOffice manager" is a signature.
            if tail_lines >= 3:
                best = p
            continue
        opens_block = not lines[visible[p - 1]] or _is_rule(lines[visible[p - 1]])
        if not prose and contacts >= 2 and opens_block and (_looks_like_name(line) or _is_rule(line)):
            best = p
    return best


def _strip_trailing_noise(lines: Sequence[str], visible: list[int]) -> list[int]:
    # Trailing blank lines and rules left by a cut carry nothing.
    end = len(visible)
    while end > 0 and (not lines[visible[end - 1]] or _is_rule(lines[visible[end - 1]])):
        end -= 1
    return visible[:end]


def _join(lines: Sequence[str], indices: Iterable[int]) -> str:
    # Trailing blanks are invisible noise (and format=flowed artefacts), never the author's words.
    return _trim("\n".join(_shown(lines[i]) for i in indices))


def _trim(text: str) -> str:
    return v.TRAILING_INVISIBLE.sub("", text).lstrip().lstrip(v.INVISIBLE_CHARS).strip()


def extract_reply(text: str) -> ExtractedReply:
    """Split a plain-text body into what the author wrote and the quoted history/signature."""
    raw = _split_glued_headers(_normalise(text).split("\n"))
    lines = [_clean(line) for line in raw]  # analysis reads cleaned lines; the output keeps raw ones
    scan = _scan(lines)
    visible = _select_visible(lines, scan)
    if scan.keep_from is not None:
        visible = [*visible, *range(scan.keep_from, len(lines))]
    else:
        visible = _strip_trailing_noise(lines, visible)
    history_only = not scan.has_content and any(_is_quote(line) for line in lines)
    if history_only or not any(lines[i] for i in visible):
        # Only history (quotes, their headers, markers) and nothing new: nothing to post. The
        # pipeline answers as for an empty reply; the history stays in the hidden part.
        return ExtractedReply("", _join(raw, range(len(raw))))
    if scan.keep_from is None:
        start = _signature_start(lines, visible)
        signed = _strip_trailing_noise(lines, visible[:start]) if start is not None else visible
        if any(lines[i] and not _is_rule(lines[i]) for i in signed):  # a signature is never all there is
            visible = signed
    kept = set(visible)
    return ExtractedReply(_join(raw, visible), _join(raw, (i for i in range(len(raw)) if i not in kept)))


# ---- shared with the cut of our own notification (own.py) -------------------------------------------


def split_lines(text: str) -> tuple[list[str], list[str]]:
    """``(raw, cleaned)`` lines as :func:`extract_reply` reads them (glued attributions split)."""
    raw = _split_glued_headers(_normalise(text).split("\n"))
    return raw, [_clean(line) for line in raw]


def is_quote(line: str) -> bool:
    return _is_quote(line)


def is_rule(line: str) -> bool:
    return _is_rule(line)


def has_address(line: str) -> bool:
    return _has_address(line)


def ends_like_attribution(line: str) -> bool:
    """A line that closes a reply header: "…:" or "… wrote" in any of the known languages."""
    return line.endswith((":", "：")) or _ends_with_verb(line)


def join_lines(lines: Sequence[str], indices: Iterable[int]) -> str:
    return _join(lines, indices)
