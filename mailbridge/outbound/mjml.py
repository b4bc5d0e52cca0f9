"""MJML to responsive HTML, once per template source: mrml, MJML's Rust implementation.

The templates are MJML (layout) around Jinja2 (data): MJML is compiled first, and Jinja's tags
(``{{ … }}``, ``{% … %}``) pass through the compiler untouched, so the HTML it produces is itself
a Jinja template, rendered per message. Compiling costs a fraction of a millisecond but is done once
per source anyway (start-up for the shipped templates, first use for a practice's own).

Why ``mrml``: it is the Python binding published from the MRML repository by MRML's author, released
together with the compiler (``mjml-python``, the other wheel on PyPI, wraps the same Rust crate from
a third-party repository and follows its releases; both give byte-identical HTML here). It also
exposes the include loader, which matters for tenants' templates: it is the no-op loader, so an
``mj-include`` can never read a file or fetch a URL (our own partials are expanded beforehand,
see :func:`expand_includes`). ``fonts={}`` keeps MJML from adding Google
Fonts ``<link>`` elements (a remote fetch on every open); author comments are dropped.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping

import mrml

# <mj-include path="name.mjml" /> (self-closing or not): replaced by the partial before compiling.
_INCLUDE = re.compile(r'<mj-include\s+path\s*=\s*"([A-Za-z0-9_.-]+)"\s*/?>(?:\s*</mj-include>)?')


class MjmlError(ValueError):
    """The source is not MJML the compiler accepts (the message names the position)."""


#: Deeper element nesting is refused before mrml sees it: its recursive parser overflows the stack
#: (a segmentation fault that ends the whole process) at a few thousand levels, and a practice's
#: template must never be able to do that. The shipped templates nest about ten deep.
MAX_DEPTH = 100
_TAG = re.compile(r"<!--.*?-->|<(/?)([A-Za-z][A-Za-z0-9:_-]*)\b[^>]*?(/?)>", re.DOTALL)
_VOID = frozenset(
    {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}
)


def nesting_depth(source: str) -> int:
    """The deepest element nesting of *source*, counted generously (an unclosed tag stays open)."""
    depth = deepest = 0
    for match in _TAG.finditer(source):
        closing, name, self_closing = match.groups()
        if name is None or self_closing or name.lower() in _VOID:
            continue
        if closing:
            depth = max(depth - 1, 0)
        else:
            depth += 1
            deepest = max(deepest, depth)
    return deepest


def compile_mjml(source: str, partials: Mapping[str, str] | None = None) -> str:
    """The HTML (still a Jinja template) for *source*; ``mj-include`` sees only *partials*."""
    return _compile(source, tuple(sorted((partials or {}).items())))


def expand_includes(source: str, partials: Mapping[str, str]) -> str:
    """*source* with each ``mj-include`` of a partial replaced by the partial's text.

    Done here rather than by mrml's include loader: mrml 0.2 does not pass ``mj-body``'s width to
    the sections of an included file, which then span the whole window instead of the 600-pixel
    column. Only the names in *partials* can be included (one level, no file, no URL); any other
    ``mj-include`` is left for mrml, whose no-op loader refuses it.
    """

    def one(match: re.Match[str]) -> str:
        return partials.get(match.group(1), match.group(0))

    return _INCLUDE.sub(one, source)


@functools.lru_cache(maxsize=512)
def _compile(source: str, partials: tuple[tuple[str, str], ...]) -> str:
    expanded = expand_includes(source, dict(partials))
    if nesting_depth(expanded) > MAX_DEPTH:
        raise MjmlError(f"elements nested more than {MAX_DEPTH} deep")
    options = mrml.ParserOptions(include_loader=mrml.noop_loader())
    render = mrml.RenderOptions(disable_comments=True, fonts={})
    try:
        output = mrml.to_html(expanded, parser_options=options, render_options=render)
    except (OSError, ValueError) as exc:  # mrml raises OSError for parse errors
        raise MjmlError(str(exc)) from None
    except BaseException as exc:
        # A panic in the Rust code arrives as pyo3's PanicException, a BaseException that no
        # ``except Exception`` would stop: for a practice's template it is one more refusal.
        if isinstance(exc, (KeyboardInterrupt, SystemExit, GeneratorExit)):
            raise
        raise MjmlError(f"the MJML compiler failed: {type(exc).__name__}") from None
    return str(output.content)
