"""Reply extraction: split an inbound body into the author's new text and the trimmed history/signature.

The plain-text rules live in :mod:`mailbridge.inbound.trim`; this module renders HTML to text, cuts
an HTML reply at its client's quote container, and sanitises what may be shown.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from html import escape
from html.parser import HTMLParser
from typing import Final

import nh3

from mailbridge.domain.fingerprint import Fingerprint
from mailbridge.inbound.trim import vocabulary as v
from mailbridge.inbound.trim.own import cut_own_copy
from mailbridge.inbound.trim.text import ExtractedReply, extract_reply

__all__ = [
    "ExtractedReply",
    "ReplyBody",
    "extract_reply",
    "extract_reply_from_html",
    "html_to_text",
    "reply_body",
    "sanitize_html",
    "visible_part_html",
]

# --------------------------------------------------------------------------------------------------
# HTML
# --------------------------------------------------------------------------------------------------


def _tags(names: str) -> frozenset[str]:
    return frozenset(names.split())


_VOID_TAGS: Final = _tags("area base br col embed hr img input link meta param source track wbr")
# Rendered as nothing at all (head, scripts, styles, embedded objects).
_SKIPPED_TAGS: Final = frozenset(
    {"head", "style", "script", "title", "template", "noscript", "iframe", "object", "svg", "canvas", "xml"}
)
_BLOCK_TAGS: Final = _tags(
    "div section article header footer main nav aside center address form fieldset figure "
    "figcaption dl dt dd table tbody thead tfoot caption tr ul ol li body html"
)
_PARAGRAPH_TAGS: Final = frozenset({"p", "h1", "h2", "h3", "h4", "h5", "h6", "pre"})
# A block tag opening while a <p> is open closes it (HTML's implied end tags, the useful subset).
_CLOSES_P: Final = _BLOCK_TAGS | _PARAGRAPH_TAGS | {"blockquote", "hr"}
_HTML_SPACE = re.compile(r"[ \t\n\r\f]+")
_MAX_DEPTH: Final = 120
# Private-use characters marking, in the rendered text, where the quoted part and signatures start.
_CUT: Final = "\ue000"
_SIG_OPEN: Final = "\ue001"
_SIG_CLOSE: Final = "\ue002"
_SENTINELS = re.compile("[\ue000-\ue002]")
_SIGNATURE_SENTINELS = re.compile("[\ue001\ue002]")
_BLANK_LINES = re.compile(r"\n{3,}")


class _Node:
    __slots__ = ("attrs", "children", "parent", "tag", "text")

    def __init__(self, tag: str, attrs: dict[str, str], parent: _Node | None, text: str = "") -> None:
        self.tag = tag
        self.attrs = attrs
        self.parent = parent
        self.text = text
        self.children: list[_Node] = []

    def classes(self) -> list[str]:
        return self.attrs.get("class", "").lower().split()

    def text_content(self, limit: int = 300) -> str:
        """The first ``limit`` characters of the text under this node, whitespace collapsed."""
        out: list[str] = []
        size = 0
        stack = [self]
        while stack and size < limit:
            node = stack.pop()
            if node.tag == "#text":
                out.append(node.text)
                size += len(node.text)
            elif node.tag not in _SKIPPED_TAGS:
                stack.extend(reversed(node.children))
        return _HTML_SPACE.sub(" ", "".join(out)).strip()


class _TreeBuilder(HTMLParser):
    """A forgiving DOM builder on the stdlib parser: unknown or unbalanced tags never raise."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.root = _Node("#root", {}, None)
        self.stack = [self.root]

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self._implied_end(tag)
        node = _Node(tag, {k.lower(): v or "" for k, v in attrs}, self.stack[-1])
        self.stack[-1].children.append(node)
        # Past _MAX_DEPTH, elements are kept flat so rendering can never exhaust the recursion limit.
        if tag not in _VOID_TAGS and len(self.stack) < _MAX_DEPTH:
            self.stack.append(node)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self._implied_end(tag)
        self.stack[-1].children.append(_Node(tag, {k.lower(): v or "" for k, v in attrs}, self.stack[-1]))

    def handle_endtag(self, tag: str) -> None:
        for depth in range(len(self.stack) - 1, 0, -1):
            if self.stack[depth].tag == tag:
                del self.stack[depth:]
                return

    def handle_data(self, data: str) -> None:
        self.stack[-1].children.append(_Node("#text", {}, self.stack[-1], _SENTINELS.sub("", data)))

    def _implied_end(self, tag: str) -> None:
        top = self.stack[-1].tag
        if (tag in _CLOSES_P and top == "p") or (tag == top and tag in {"li", "tr", "td", "th", "dt", "dd"}):
            self.stack.pop()


def _parse_html(html: str) -> _Node:
    builder = _TreeBuilder()
    builder.feed(html)
    builder.close()
    return builder.root


class _TextBuilder:
    """Accumulates rendered text; block boundaries ask for *at least* n line breaks."""

    def __init__(self) -> None:
        self.parts: list[str] = []
        self.newlines = 0  # trailing newlines already emitted
        self.empty = True
        self.space = False  # a collapsed space is pending

    def text(self, data: str, *, pre: bool = False) -> None:
        if not pre:
            data = _HTML_SPACE.sub(" ", data)
            if not data.strip(" "):  # &nbsp; is content: Word's "<p>&nbsp;</p>" is a blank line
                self.space = self.space or (bool(data) and not self.empty and self.newlines == 0)
                return
            if self.newlines or self.empty:
                data = data.lstrip(" ")
            elif data.startswith(" "):
                self.space, data = True, data[1:]
            if self.space and not self.newlines and not self.empty:
                self.parts.append(" ")
            self.space = data.endswith(" ")
            data = data.rstrip(" ")
        self.parts.append(data)
        self.empty = False
        stripped = data.rstrip("\n")
        self.newlines = len(data) - len(stripped) if stripped else self.newlines + len(data)

    def hard_break(self) -> None:
        self.parts.append("\n")
        self.newlines += 1
        self.empty = False
        self.space = False

    def block(self, count: int) -> None:
        if self.empty:
            return
        if self.newlines < count:
            self.parts.append("\n" * (count - self.newlines))
            self.newlines = count
        self.space = False

    def marker(self, char: str) -> None:
        self.parts.append(char)

    def value(self) -> str:
        return "".join(self.parts)


@dataclass
class _Renderer:
    """Walks the tree in document order; can plant sentinels where quotes and signatures start."""

    find_quotes: bool = False
    cut_done: bool = False
    list_stack: list[list[int]] = field(default_factory=list)  # per open list: [ordered?, counter]

    def render(self, node: _Node, out: _TextBuilder) -> None:
        for child in node.children:
            self._node(child, out)

    def _node(self, node: _Node, out: _TextBuilder) -> None:
        tag = node.tag
        if tag == "#text":
            out.text(node.text, pre=_inside(node, "pre"))
            return
        if tag in _SKIPPED_TAGS:
            return
        if self.find_quotes and not self.cut_done and _is_quote_container(node):
            self.cut_done = True
            out.block(1)
            out.marker(_CUT)
            out.block(1)
        signature = self.find_quotes and _is_signature_container(node)
        if signature:
            out.block(1)
            out.marker(_SIG_OPEN)
        self._element(node, out)
        if signature:
            out.block(1)
            out.marker(_SIG_CLOSE)

    def _element(self, node: _Node, out: _TextBuilder) -> None:
        tag = node.tag
        if tag == "br":
            out.hard_break()
        elif tag == "hr":
            # A visible rule; the text pass absorbs it when an Outlook header block follows.
            out.block(1)
            out.text("---")
            out.block(1)
        elif tag == "blockquote":
            self._blockquote(node, out)
        elif tag in ("ul", "ol"):
            out.block(2 if not self.list_stack else 1)
            self.list_stack.append([tag == "ol", _int(node.attrs.get("start"), 1)])
            self.render(node, out)
            self.list_stack.pop()
            out.block(2 if not self.list_stack else 1)
        elif tag == "li":
            out.block(1)
            out.text(self._bullet(), pre=True)
            self.render(node, out)
            out.block(1)
        elif tag in ("td", "th"):
            out.text(" ")
            self.render(node, out)
            out.text(" ")
        elif tag in _PARAGRAPH_TAGS:
            # Word writes one <p class=MsoNormal> per line with zero margins: a line, not a paragraph.
            gap = 1 if "msonormal" in node.classes() else 2
            out.block(gap)
            self.render(node, out)
            out.block(gap)
        elif tag in _BLOCK_TAGS:
            out.block(1)
            self.render(node, out)
            out.block(1)
        else:
            self.render(node, out)

    def _bullet(self) -> str:
        if not self.list_stack:
            return "- "
        ordered, counter = self.list_stack[-1]
        indent = "  " * (len(self.list_stack) - 1)
        if ordered:
            self.list_stack[-1][1] = counter + 1
            return f"{indent}{counter}. "
        return f"{indent}- "

    def _blockquote(self, node: _Node, out: _TextBuilder) -> None:
        inner = _TextBuilder()
        self.render(node, inner)
        body = _tidy(inner.value())
        out.block(2)
        if body:
            for line in body.split("\n"):
                rest = line.lstrip(_CUT + _SIG_OPEN + _SIG_CLOSE)
                for sentinel in line[: len(line) - len(rest)]:
                    out.marker(sentinel)  # keep the cut/signature positions through the quoting
                out.text(f">{rest}" if rest.startswith(">") or not rest else f"> {rest}", pre=True)
                out.hard_break()
        out.block(2)


def _int(value: str | None, default: int) -> int:
    try:
        return int(value) if value is not None else default
    except ValueError:
        return default


def _inside(node: _Node, tag: str) -> bool:
    parent = node.parent
    while parent is not None:
        if parent.tag == tag:
            return True
        parent = parent.parent
    return False


# Outlook (web, desktop, Mac, new Outlook), Yahoo, AOL, Zimbra, Proton, Gmail, Thunderbird.
_ID_CONTAINERS: Final = (
    "divrplyfwdmsg",
    "appendonsend",
    "olk_src_body_section",
    "mail-editor-reference-message-container",
    "aolmsgpart",
)
_CLASS_CONTAINER = re.compile(r"(?:^|_)(?:gmail_quote|moz-cite-prefix|protonmail_quote)|yahoo_quoted")
_FIELD_START = re.compile(rf"^\s*(?:{v.START_FIELDS})\s*[:：]", re.IGNORECASE)
_FORWARD_START = re.compile(rf"^\W*(?:{v.FORWARD_NAMES})", re.IGNORECASE)


def _is_quote_container(node: _Node) -> bool:
    """Elements that mail clients put around the quoted message when replying."""
    node_id = node.attrs.get("id", "").lower()
    if node_id.removeprefix("x_").startswith(_ID_CONTAINERS) or "yahoo_quoted" in node_id:
        return True
    if node.attrs.get("name") == "messageReplySection" or node.attrs.get("data-marker") == "__QUOTED_TEXT__":
        return True
    if node.tag != "blockquote" and any(_CLASS_CONTAINER.search(c) for c in node.classes()):
        # Gmail wraps forwarded messages in the same container: a forward is the content.
        return not _FORWARD_START.match(node.text_content(120))
    if node.tag == "div":
        style = node.attrs.get("style", "").lower().replace(" ", "")
        if "border-top:solid" in style or "border-top-style:solid" in style:
            # Outlook's separator: a top border, then "From: … Sent: …" (Word: padding 3pt).
            return "padding:3.0pt" in style or _FIELD_START.match(node.text_content(80)) is not None
    return False


def _is_signature_container(node: _Node) -> bool:
    classes = node.classes()
    return (
        any(c.removeprefix("x_") in ("gmail_signature", "moz-signature") for c in classes)
        or node.attrs.get("id", "").lower().removeprefix("x_")
        in ("signature", "applemailsignature", "ms-outlook-mobile-signature")
        or node.attrs.get("data-smartmail") == "gmail_signature"
    )


def _tidy(text: str) -> str:
    lines = [line.rstrip() for line in text.replace("\xa0", " ").split("\n")]
    return _BLANK_LINES.sub("\n\n", "\n".join(lines)).strip()


def _render(html: str | _Node, *, find_quotes: bool) -> str:
    out = _TextBuilder()
    _Renderer(find_quotes=find_quotes).render(_parse_html(html) if isinstance(html, str) else html, out)
    return _tidy(out.value())


def html_to_text(html: str) -> str:
    """HTML body → plain text for extract_reply: blocks become lines, <blockquote> becomes '> ' lines."""
    return _render(html, find_quotes=False)


def _split_signatures(text: str) -> tuple[str, str]:
    kept: list[str] = []
    signatures: list[str] = []
    for n, chunk in enumerate(_SIGNATURE_SENTINELS.split(text)):
        (signatures if n % 2 else kept).append(chunk)
    return "".join(kept), "\n".join(s.strip() for s in signatures if s.strip())


def extract_reply_from_html(
    html: str, *, sent: Sequence[Fingerprint] = (), key: bytes = b""
) -> ExtractedReply:
    """Cut an HTML reply at the client's quote container, then extract the reply from the text.

    With ``sent`` (the notifications the reply answers), the quoted copy of ours is cut first,
    exactly, wherever the client put it; the container is the fallback.
    """
    return _html_reply(html, sent, key)[0]


def _html_reply(html: str | _Node, sent: Sequence[Fingerprint], key: bytes) -> tuple[ExtractedReply, bool]:
    """The reply, and whether our own notification's copy was found and cut."""
    marked = _render(html, find_quotes=True)
    if sent:
        unsigned, signature = _split_signatures(marked.replace(_CUT, ""))
        own = cut_own_copy(_tidy(unsigned), sent, key)
        if own is not None:
            return ExtractedReply(own.visible, "\n\n".join(h for h in (own.hidden, signature) if h)), True
    head, _, quoted = marked.partition(_CUT)
    visible_html, signature = _split_signatures(head)
    if not _tidy(visible_html):
        # The container held everything (e.g. an Exchange reply section alone): keep it all.
        return extract_reply(_tidy(_SENTINELS.sub("", marked))), False
    reply = extract_reply(_tidy(visible_html))
    hidden = [reply.hidden, signature, _tidy(_SENTINELS.sub("", quoted))]
    return ExtractedReply(reply.visible, "\n\n".join(h for h in hidden if h)), False


# --------------------------------------------------------------------------------------------------
# The visible part of an HTML reply, as HTML (what was trimmed never reaches body_html)
# --------------------------------------------------------------------------------------------------

_UNSEEN = re.compile(f"[\\s>{v.INVISIBLE}{v.RESIDUE_MARKS}]+")
_RENDERED_ONLY = re.compile(r"[-\d.]*")  # what the renderer adds itself: list bullets and numbers, rules


def _squash(text: str) -> str:
    """Text compared without spacing, quote marks and invisible characters."""
    return _UNSEEN.sub("", text.replace("\xa0", " "))


def _prefix_of(raw: str, length: int) -> str:
    """The shortest start of ``raw`` whose squashed form is ``length`` characters long."""
    count = 0
    for index, char in enumerate(raw):
        if count == length:
            return raw[:index]
        count += len(_squash(char))
    return raw


def _in_order(root: _Node) -> list[_Node]:
    """Every node in document order, what is never rendered left out."""
    order: list[_Node] = []
    stack = list(reversed(root.children))
    while stack:
        node = stack.pop()
        if node.tag in _SKIPPED_TAGS:
            continue
        order.append(node)
        stack.extend(reversed(node.children))
    return order


def _kept_text(order: Sequence[_Node], visible: str) -> dict[int, str]:
    """The text nodes (by id) that spell ``visible`` in document order, with the text each keeps.

    A node is kept only when its words come next in ``visible``, so nothing that was trimmed can
    come back, whatever the markup; a node cut in two by the extraction keeps its first part.
    """
    target = _squash(visible)
    kept: dict[int, str] = {}
    position = 0
    for node in order:
        if position >= len(target):
            break
        if node.tag != "#text":
            continue
        chunk = _squash(node.text)
        if not chunk:
            continue
        ahead = target.find(chunk, position, position + len(chunk) + 12)
        if ahead >= 0 and _RENDERED_ONLY.fullmatch(target[position:ahead]):
            kept[id(node)] = node.text
            position = ahead + len(chunk)
        elif len(chunk) >= len(target) - position and chunk.startswith(target[position:]):
            kept[id(node)] = _prefix_of(node.text, len(target) - position)
            position = len(target)
    return kept


def _has_words(node: _Node) -> bool:
    stack = [node]
    while stack:
        current = stack.pop()
        if current.tag == "#text" and _squash(current.text):
            return True
        if current.tag not in _SKIPPED_TAGS:
            stack.extend(current.children)
    return False


def _attributes(node: _Node) -> str:
    return "".join(f' {name}="{escape(value, quote=True)}"' for name, value in node.attrs.items())


def visible_part_html(html: str, visible: str) -> str | None:
    """The sanitised HTML of what is visible: the text nodes that make up ``visible``, and the markup
    around them (paragraphs, emphasis, links, lists). Quoted history, signatures and our own
    notification, trimmed from the text, are absent; None when nothing is visible."""
    return _visible_html(_parse_html(html), visible)


def _visible_html(root: _Node, visible: str) -> str | None:
    if not _squash(visible):
        return None
    order = _in_order(root)
    kept = _kept_text(order, visible)
    if not kept:
        return None
    index = {id(node): n for n, node in enumerate(order)}
    spots = [index[key] for key in kept]
    first, last = min(spots), max(spots)
    holds: set[int] = set()  # elements with a kept text node inside
    for node in order:
        if id(node) in kept:
            parent = node.parent
            while parent is not None and id(parent) not in holds:
                holds.add(id(parent))
                parent = parent.parent
    out: list[str] = []
    deepest = 0

    def write(node: _Node, depth: int = 0) -> None:
        nonlocal deepest
        deepest = max(deepest, depth)
        for child in node.children:
            spot = index.get(id(child))
            if spot is None:
                continue
            if child.tag == "#text":
                if id(child) in kept:
                    out.append(escape(kept[id(child)], quote=False))
                elif first < spot < last and not _squash(child.text):
                    out.append(escape(child.text, quote=False))  # spacing between kept words
            elif child.tag in _VOID_TAGS:
                if first < spot < last:
                    out.append(f"<{child.tag}{_attributes(child)}>")
            elif id(child) in holds or (first < spot < last and not _has_words(child)):
                # An element around kept words, or an empty spacer between them ("<div><br></div>").
                out.append(f"<{child.tag}{_attributes(child)}>")
                write(child, depth + 1)
                out.append(f"</{child.tag}>")

    write(root)
    rebuilt = "".join(out)
    if deepest > _MAX_SANITIZED_DEPTH:  # the same bound as any HTML we keep (finding 9)
        rebuilt = bounded_nesting(rebuilt)
    return sanitize_html(rebuilt)


# --------------------------------------------------------------------------------------------------
# One call for a message's body: text first, else HTML (with its visible part as HTML)
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ReplyBody:
    visible: str  # what is posted
    hidden: str  # what was trimmed, kept hidden
    html: str | None  # an HTML-only message: the sanitised HTML of the visible part, nothing more
    own_copy: bool = False  # the quoted copy of a notification we sent was found and cut


def reply_body(
    text: str | None, html: str | None, *, sent: Sequence[Fingerprint] = (), key: bytes = b""
) -> ReplyBody:
    """Prefer text/plain, else HTML; cut our own quoted notification first when ``sent`` names it."""
    if text and text.strip():
        own = cut_own_copy(text, sent, key) if sent else None
        reply = own if own is not None else extract_reply(text)
        return ReplyBody(reply.visible.strip(), reply.hidden, None, own is not None)
    if html:
        root = _parse_html(html)  # read once: rendering never changes the tree
        reply, own_copy = _html_reply(root, sent, key)
        return ReplyBody(reply.visible.strip(), reply.hidden, _visible_html(root, reply.visible), own_copy)
    return ReplyBody("", "", None)


# --------------------------------------------------------------------------------------------------
# Sanitising
# --------------------------------------------------------------------------------------------------

_SAFE_TAGS: Final = _tags(
    "a abbr b blockquote br caption center cite code col colgroup dd del div dl dt em font h1 h2 "
    "h3 h4 h5 h6 hr i ins kbd li ol p pre q s samp small span strike strong sub "
    "sup table tbody td tfoot th thead tr tt u ul"
)
# No style/class/id (CSS can exfiltrate or overlay the UI); no img at all (remote images track the reader).
_SAFE_ATTRIBUTES: Final = {
    "a": {"href", "title"},
    "abbr": {"title"},
    "ol": {"start", "type"},
    "td": {"colspan", "rowspan", "align", "valign"},
    "th": {"colspan", "rowspan", "align", "valign", "scope"},
    "col": {"span"},
    "colgroup": {"span"},
    "table": {"summary"},
    "*": {"dir", "lang"},
}
_DROPPED_WITH_CONTENT: Final = frozenset(
    {"script", "style", "title", "template", "noscript", "iframe", "object", "embed", "svg", "math", "head"}
)


# html5ever (inside nh3) walks the stack of open elements for many start tags ("is there a <p> in
# button scope?"), so its cost grows with the number of tags times the nesting depth: 537 KB of
# nested <div> took ~4 s (security review, finding 9). Past a few thousand start tags the HTML is
# first re-nested to a bounded depth, in one linear pass, so nh3 never sees a deep tree.
_START_TAG: Final = re.compile(r"<[A-Za-z]")
_FAST_PATH_START_TAGS: Final = 2000  # below this even the worst nesting costs nh3 a few tens of ms
_MAX_SANITIZED_START_TAGS: Final = 50_000  # above this the re-nesting pass alone would take seconds
_MAX_SANITIZED_DEPTH: Final = 100
_NESTING_VOID: Final = _tags("area base br col embed hr img input link meta param source track wbr keygen")
_NESTING_IMPLIED_END: Final = _tags("p li dt dd option optgroup tr td th rb rt rp")
_ATTRIBUTE_NAME: Final = re.compile(r"[A-Za-z_:][-A-Za-z0-9_:.]*\Z")


class _BoundedNesting(HTMLParser):
    """Re-emit HTML well nested, with at most ``limit`` elements open: deeper start tags are dropped
    (their text stays, one level up), stray end tags too; comments and declarations go, and so do
    the elements nh3 drops with their content (scripts, styles…). Tags are rebuilt from their parsed
    name and attributes, text is re-escaped, so what nh3 reads is exactly the tree built here.
    Written by hand: nh3 has no depth limit to set, and the stdlib tokenizer this rests on is linear."""

    def __init__(self, limit: int) -> None:
        super().__init__(convert_charrefs=True)  # text arrives decoded, and is escaped again below
        self.limit = limit
        self.stack: list[str] = []
        self.out: list[str] = []
        self.skipping: str | None = None  # inside an element dropped with its content
        self.skip_depth = 0

    def _tag(self, tag: str, attrs: list[tuple[str, str | None]]) -> str:
        parts = [tag]
        for name, value in attrs:
            if _ATTRIBUTE_NAME.match(name):
                parts.append(name if value is None else f'{name}="{_escape_attribute(value)}"')
        return "<" + " ".join(parts) + ">"

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if self.skipping is not None:
            self.skip_depth += tag == self.skipping
            return
        if tag in _DROPPED_WITH_CONTENT:
            self.skipping, self.skip_depth = tag, 1
            return
        if tag in _NESTING_VOID:
            self.out.append(self._tag(tag, attrs))
            return
        if tag in _NESTING_IMPLIED_END and self.stack and self.stack[-1] == tag:
            self.out.append(f"</{self.stack.pop()}>")  # <p>a<p>b: siblings, as HTML parses them
        if len(self.stack) < self.limit:
            self.stack.append(tag)
            self.out.append(self._tag(tag, attrs))

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        # "<div/>" opens a div in HTML (the slash counts only on void elements): close it at once.
        if self.skipping is not None or tag in _DROPPED_WITH_CONTENT:
            return
        self.out.append(self._tag(tag, attrs) + ("" if tag in _NESTING_VOID else f"</{tag}>"))

    def handle_endtag(self, tag: str) -> None:
        if self.skipping is not None:
            if tag == self.skipping:
                self.skip_depth -= 1
                if self.skip_depth == 0:
                    self.skipping = None
            return
        if tag in self.stack:
            while self.stack:
                name = self.stack.pop()
                self.out.append(f"</{name}>")
                if name == tag:
                    break

    def handle_data(self, data: str) -> None:
        if self.skipping is None:
            self.out.append(data.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;"))

    def result(self) -> str:
        self.close()
        return "".join(self.out) + "".join(f"</{name}>" for name in reversed(self.stack))


def _escape_attribute(value: str) -> str:
    return value.replace("&", "&amp;").replace('"', "&quot;").replace("<", "&lt;").replace(">", "&gt;")


def bounded_nesting(html: str, limit: int = _MAX_SANITIZED_DEPTH) -> str:
    """``html`` re-emitted with at most ``limit`` elements open at any point (see _BoundedNesting)."""
    nester = _BoundedNesting(limit)
    nester.feed(html)
    return nester.result()


def sanitize_html(html: str) -> str | None:
    """Allow-list sanitising with nh3: no scripts, styles, handlers, javascript: URLs or images.

    None when the HTML cannot be sanitised within bounds (more than 50,000 start tags, or markup the
    re-nesting tokenizer refuses): the message then keeps its text version only.
    """
    start_tags = len(_START_TAG.findall(html))
    if start_tags > _MAX_SANITIZED_START_TAGS:
        return None
    if start_tags > _FAST_PATH_START_TAGS:
        try:
            html = bounded_nesting(html)
        except Exception:  # html.parser raises on some malformed declarations ("<![…")
            return None
    return nh3.clean(
        html,
        tags=set(_SAFE_TAGS),
        clean_content_tags=set(_DROPPED_WITH_CONTENT),
        attributes={tag: set(names) for tag, names in _SAFE_ATTRIBUTES.items()},
        url_schemes={"http", "https", "mailto"},
        link_rel="noopener noreferrer nofollow",
        strip_comments=True,
    )
