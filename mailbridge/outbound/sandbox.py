"""Templates are tenant code: a sandboxed Jinja2 with a small language, and HTML that fetches nothing.

A practice may replace any template (``PUT …/templates/{name}``). Practices are tenants, so their
templates run in Jinja2's ``ImmutableSandboxedEnvironment`` (no attribute of a Python object beyond
plain data, no mutation) with no globals (no ``range``, ``namespace``, ``lipsum``…) and a short list
of filters. The sandbox alone does not bound the work a template can ask for (nested loops over a
100 KB body, ``'x' * 10**9``), so :func:`check_syntax` also accepts only a small language, checked on
the parsed tree before a template is saved: output, ``if``/``elif``/``else``, one level of ``for``
over the lists the template is given, comparisons, ``and``/``or``/``not``, ``~`` and the listed
filters with constant arguments. No arithmetic, calls, ``set``, macros, includes, imports,
``extends`` or ``autoescape`` blocks. The shipped templates obey the same rules (a test checks), so
a practice can start from them.

:func:`remote_references` is the other half: the rendered HTML may load nothing from anywhere (no
``<img src="https://…">``, ``<link>``, CSS ``url()``/``@import``, ``<script>``, ``<iframe>``,
forms): every such reference is a tracking pixel in waiting. Images may only be ``cid:`` parts of
the message itself (the practice's logo).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from html.parser import HTMLParser

from jinja2 import StrictUndefined, meta, nodes
from jinja2.exceptions import TemplateSyntaxError
from jinja2.sandbox import ImmutableSandboxedEnvironment

ALLOWED_FILTERS = frozenset(
    {
        "e",
        "escape",
        "upper",
        "lower",
        "capitalize",
        "title",
        "trim",
        "length",
        "count",
        "default",
        "d",
        "join",
        "truncate",
        "wordcount",
        "first",
        "last",
    }
)
ALLOWED_TESTS = frozenset({"defined", "undefined", "none", "string", "number", "sameas", "eq", "ne"})
_ALLOWED_NODES: tuple[type[nodes.Node], ...] = (
    nodes.Template,
    nodes.Output,
    nodes.TemplateData,
    nodes.Name,
    nodes.Const,
    nodes.If,
    nodes.For,
    nodes.Getattr,
    nodes.Filter,
    nodes.Test,
    nodes.Compare,
    nodes.Operand,
    nodes.And,
    nodes.Or,
    nodes.Not,
    nodes.CondExpr,
    nodes.Concat,
)


def make_environment(html: bool) -> ImmutableSandboxedEnvironment:
    """The one environment kind every template renders in, shipped or a practice's own."""
    env = ImmutableSandboxedEnvironment(
        autoescape=html, undefined=StrictUndefined, keep_trailing_newline=True, trim_blocks=False
    )
    env.globals.clear()
    env.filters = {name: f for name, f in env.filters.items() if name in ALLOWED_FILTERS}
    env.tests = {name: t for name, t in env.tests.items() if name in ALLOWED_TESTS}
    return env


def check_syntax(
    env: ImmutableSandboxedEnvironment,
    source: str,
    variables: frozenset[str],
    lists: dict[str, frozenset[str]],
    loop_fields: frozenset[str],
) -> list[str]:
    """What in *source* falls outside the small language (empty when all is well), one line each.

    *variables* are the names the template may read; *lists* the ones a ``for`` may walk, with the
    fields of their items (plain strings have none).
    """
    try:
        tree = env.parse(source)
        problems: list[str] = []
        _walk(tree, {}, False, lists, loop_fields, problems)
    except TemplateSyntaxError as exc:
        return [f"line {exc.lineno}: {exc.message}"]
    except RecursionError:  # thousands of nested blocks: Jinja's parser and this walk recurse
        return ["blocks nested too deep"]
    if problems:
        return problems
    try:
        unknown = sorted(meta.find_undeclared_variables(tree) - variables)
    except TemplateSyntaxError as exc:  # TemplateAssertionError: e.g. a filter this environment lacks
        return [f"line {exc.lineno}: {exc.message}"]
    if unknown:
        problems.append("unknown or forbidden variables: " + ", ".join(unknown))
    return problems


def _walk(
    node: nodes.Node,
    loops: dict[str, frozenset[str]],
    in_loop: bool,
    lists: dict[str, frozenset[str]],
    loop_fields: frozenset[str],
    problems: list[str],
) -> None:
    line = f"line {getattr(node, 'lineno', None) or '?'}"
    if not isinstance(node, _ALLOWED_NODES):
        problems.append(f"{line}: {type(node).__name__.lower()} is not allowed in templates")
        return
    if isinstance(node, nodes.For):
        _walk_for(node, loops, in_loop, lists, loop_fields, problems)
        return
    if isinstance(node, nodes.Getattr):
        target = node.node
        fields = loops.get(target.name) if isinstance(target, nodes.Name) else None
        if fields is None or node.attr not in fields:
            problems.append(f"{line}: only the fields of a loop's item can be read (.{node.attr})")
        return
    if isinstance(node, nodes.Filter):
        if node.name not in ALLOWED_FILTERS:
            problems.append(f"{line}: filter {node.name!r} is not allowed")
        if (
            node.kwargs
            or node.dyn_args
            or node.dyn_kwargs
            or not all(isinstance(a, nodes.Const) for a in node.args)
        ):
            problems.append(f"{line}: filter arguments must be constants")
    if isinstance(node, nodes.Test) and node.name not in ALLOWED_TESTS:
        problems.append(f"{line}: test {node.name!r} is not allowed")
    if isinstance(node, nodes.Name) and node.ctx != "load":
        problems.append(f"{line}: assignments are not allowed")
    for child in node.iter_child_nodes():
        _walk(child, loops, in_loop, lists, loop_fields, problems)


def _walk_for(
    node: nodes.For,
    loops: dict[str, frozenset[str]],
    in_loop: bool,
    lists: dict[str, frozenset[str]],
    loop_fields: frozenset[str],
    problems: list[str],
) -> None:
    line = f"line {node.lineno}"
    if in_loop:
        problems.append(f"{line}: loops cannot be nested")
        return
    if node.recursive:
        problems.append(f"{line}: recursive loops are not allowed")
    if not isinstance(node.iter, nodes.Name) or node.iter.name not in lists:
        problems.append(f"{line}: a loop may only walk one of: {', '.join(sorted(lists))}")
        return
    if not isinstance(node.target, nodes.Name):
        problems.append(f"{line}: a loop takes one item at a time")
        return
    inner = {**loops, node.target.name: lists[node.iter.name], "loop": loop_fields}
    for child in node.body:
        _walk(child, inner, True, lists, loop_fields, problems)
    if node.test is not None:
        _walk(node.test, inner, True, lists, loop_fields, problems)
    for child in node.else_:
        _walk(child, loops, in_loop, lists, loop_fields, problems)


# ---- the rendered HTML loads nothing -------------------------------------------------------------

_FORBIDDEN_TAGS = frozenset(
    {
        "script",
        "iframe",
        "frame",
        "frameset",
        "object",
        "embed",
        "applet",
        "form",
        "input",
        "button",
        "link",
        "base",
        "audio",
        "video",
        "source",
        "track",
        "svg",
        "math",
        "portal",
    }
)
_FETCHING_ATTRIBUTES = frozenset(
    {"src", "srcset", "background", "poster", "data", "action", "formaction", "lowsrc", "dynsrc", "ping"}
)
_LINK_SCHEMES = ("https:", "http:", "mailto:", "tel:", "#")
# CSS that fetches: url(), @import, image-set(), and backslash escapes that could spell them.
_CSS_FETCH = re.compile(r"url\s*\(|@import|image-set|expression\s*\(|\\", re.IGNORECASE)
# Inside comments (Outlook's conditional comments hold real markup): any attribute or CSS that fetches.
_COMMENT_FETCH = re.compile(
    r"\b(?:src|srcset|background|href|data)\s*=|url\s*\(|@import|<\s*(?:img|link|script|v:image|v:fill)\b",
    re.IGNORECASE,
)


def remote_references(html: str, allowed_images: frozenset[str] = frozenset()) -> list[str]:
    """Everything in *html* that would make a mail client fetch something, one line each (empty: none).

    ``src`` may only name one of *allowed_images* (``cid:`` parts of this message). Links (``<a
    href>``) may go to http(s), mailto and tel addresses; they are not fetched when the mail opens.
    """
    finder = _Finder(allowed_images)
    finder.feed(html)
    finder.close()
    return finder.found


class _Finder(HTMLParser):
    def __init__(self, allowed_images: frozenset[str]) -> None:
        super().__init__(convert_charrefs=True)
        self.allowed_images = allowed_images
        self.found: list[str] = []
        self._in_style = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in _FORBIDDEN_TAGS:
            self.found.append(f"<{tag}> is not allowed")
        if tag == "meta" and any(k == "http-equiv" and (v or "").lower() == "refresh" for k, v in attrs):
            self.found.append("<meta http-equiv=refresh> is not allowed")
        self._in_style = tag == "style"
        for name, raw in attrs:
            value = (raw or "").strip()
            if name.startswith("on"):
                self.found.append(f"<{tag} {name}>: event handlers are not allowed")
            elif name == "src" and tag == "img":
                if value not in self.allowed_images:
                    self.found.append(f"<img src={value[:60]!r}>: images may only be the practice's logo")
            elif name in _FETCHING_ATTRIBUTES:
                self.found.append(f"<{tag} {name}=…>: loads something from elsewhere")
            elif name == "href" and not value.lower().startswith(_LINK_SCHEMES):
                self.found.append(f"<{tag} href={value[:60]!r}>: links may be http(s), mailto or tel")
            elif name == "style" and _CSS_FETCH.search(value):
                self.found.append(f"<{tag} style>: url(), @import and escapes are not allowed in CSS")

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.handle_starttag(tag, attrs)
        self._in_style = False

    def handle_endtag(self, tag: str) -> None:
        if tag == "style":
            self._in_style = False

    def handle_data(self, data: str) -> None:
        if self._in_style and _CSS_FETCH.search(data):
            self.found.append("<style>: url(), @import and escapes are not allowed in CSS")

    def handle_comment(self, data: str) -> None:
        if _COMMENT_FETCH.search(data):
            self.found.append("a comment (an Outlook conditional block) loads something from elsewhere")


def iter_links(html: str) -> Iterator[tuple[str, str]]:
    """``(href, link text)`` of every ``<a>`` in *html*."""
    collector = _Links()
    collector.feed(html)
    collector.close()
    yield from collector.links


class _Links(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.links: list[tuple[str, str]] = []
        self._href: str | None = None
        self._text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "a":
            self._href = dict(attrs).get("href") or ""
            self._text = []

    def handle_endtag(self, tag: str) -> None:
        if tag == "a" and self._href is not None:
            self.links.append((self._href, " ".join("".join(self._text).split())))
            self._href = None

    def handle_data(self, data: str) -> None:
        if self._href is not None:
            self._text.append(data)
