"""Rendering pages: one Jinja2 environment with autoescape on for every template, and the headers
every console response carries (CSP, no caching, nosniff, no referrer)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime
from functools import lru_cache
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from fastapi.responses import HTMLResponse
from jinja2 import Environment, FileSystemLoader, StrictUndefined

from mailbridge.domain.models import Operator, Practice
from mailbridge.reasons import explain

from .accounts import Scope
from .i18n import translator

STATIC_DIR = Path(__file__).resolve().parent / "static"

# Scripts and styles from our own origin only: no inline script or style, no CDN (issue 14 §4).
# Frames: the template previews only (same origin, each one sandboxed). Images: our charts (data:).
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "frame-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'; object-src 'none'"
)
# A rendered email in the preview frame: its inline styles, nothing else; never a script.
PREVIEW_CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src data:; frame-ancestors 'self'; sandbox"


def templates_dir() -> Path:
    """Where the console's page templates live: shipped in the package beside the mail templates."""
    return Path(__file__).resolve().parent.parent / "templates" / "console"


@lru_cache(maxsize=1)
def environment() -> Environment:
    env = Environment(
        loader=FileSystemLoader(str(templates_dir())),
        autoescape=True,  # every template, whatever its name: mail is hostile (subjects, names, bodies)
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["when"] = _when
    env.filters["size"] = _size
    env.filters["extension"] = _extension
    env.globals["query"] = _query
    return env


def _when(value: datetime | None) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S") if value else ""


def _size(value: int | None) -> str:
    n = float(value or 0)
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GB"


_EXTENSION = re.compile(r"\.([A-Za-z0-9]{1,10})$")


def _extension(filename: str | None) -> str:
    """``.pdf`` of ``results.pdf``: the kind of file an operator without content rights may see,
    never its name (a file's name says what the mail says)."""
    found = _EXTENSION.search((filename or "").strip())
    return "." + found.group(1).lower() if found else ""


def _query(**params: Any) -> str:
    """A query string from the non-empty parameters (escaped by urlencode, then by autoescape)."""
    clean = {k: v for k, v in params.items() if v not in (None, "", [])}
    return ("?" + urlencode(clean, doseq=True)) if clean else ""


@dataclass
class Ctx:
    """The signed-in operator for one request: who, what they may see, the form token, the language."""

    operator: Operator
    scope: Scope
    csrf: str
    session_id: str
    locale: str
    practices: list[Practice] = field(default_factory=list)
    practice: Practice | None = None

    @property
    def content(self) -> bool:
        return self.scope.content


def reason_text(code: str | None, locale: str) -> tuple[str, str] | None:
    return explain(code, locale)


def page(
    name: str,
    ctx: Ctx | None,
    *,
    locale: str = "en",
    status: int = 200,
    title: str = "",
    **values: Any,
) -> HTMLResponse:
    lang = ctx.locale if ctx is not None else locale
    _ = translator(lang)
    html = (
        environment()
        .get_template(name)
        .render(
            ctx=ctx,
            lang=lang,
            _=_,
            title=title,
            explain=lambda code: reason_text(code, lang),
            base=f"/console/p/{ctx.practice.slug}" if ctx is not None and ctx.practice is not None else "",
            **values,
        )
    )
    return HTMLResponse(html, status_code=status)


def security_headers(headers: Any, path: str) -> None:
    """On every console response; previews and static files get their own CSP and caching."""
    if path.startswith("/console/static/"):
        headers.setdefault("Cache-Control", "public, max-age=3600")
    else:
        headers["Cache-Control"] = "no-store"
        headers["Pragma"] = "no-cache"
    if "content-security-policy" not in headers:
        headers["Content-Security-Policy"] = CSP
    headers["X-Content-Type-Options"] = "nosniff"
    headers["Referrer-Policy"] = "no-referrer"
    headers.setdefault("X-Frame-Options", "DENY")
    headers["Cross-Origin-Opener-Policy"] = "same-origin"
