"""Where notification links point: the app's base URL and its link paths, validated (issue 20, item 13).

A practice has its own portal, so it may set ``app_url`` and the paths of its links; these end up
as ``href``s in mail its clients trust, so a practice must not be able to point them anywhere
dangerous. The rules:

- ``app_url`` is an absolute URL: a host (letters, digits, dots, hyphens; or an IP), an optional
  port and path; no user-info (``https://good@evil``), query or fragment; never ``javascript:``,
  ``data:`` or a relative URL. A practice's must be ``https://`` (``http://`` only to localhost,
  for development); the operator's own default may also be ``http://`` (a test install).
- a link path starts with one ``/`` (never ``//``, which would name another host) and holds only
  unreserved characters plus ``/ ? = & # % + -``; the conversation path carries ``{conversation}``
  exactly once, replaced by the conversation's id (hex), and the preferences path none.

The link is always ``app_url`` + path: the path cannot change the host the link goes to.
"""

from __future__ import annotations

import re
from urllib.parse import urlsplit

CONVERSATION = "{conversation}"
DEFAULT_CONVERSATION_PATH = "/conversations/{conversation}"
DEFAULT_PREFERENCES_PATH = "/settings/notifications"
LOOPBACK = frozenset({"localhost", "127.0.0.1", "::1"})

_HOST = re.compile(
    r"(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)*[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
)
_BASE_PATH = re.compile(r"(?:/[A-Za-z0-9._~%-]*)*")
_PATH = re.compile(r"/(?!/)[A-Za-z0-9._~/?=&#%+-]*")


def check_app_url(value: str, *, allow_http: bool) -> str:
    """*value* without a trailing slash, or ValueError saying what is wrong."""
    value = value.strip()
    parts = urlsplit(value)
    try:
        parts.port  # noqa: B018 (raises on a port that is not a number in range)
        good_port = True
    except ValueError:
        good_port = False
    host = parts.hostname or ""
    if (
        parts.scheme not in ("https", "http")
        or not good_port
        or "@" in parts.netloc
        or parts.query
        or parts.fragment
        or value.endswith(("?", "#"))
        or not (_HOST.fullmatch(host) or (host == "::1" and "[::1]" in parts.netloc))
        or not _BASE_PATH.fullmatch(parts.path)
    ):
        raise ValueError(f"expected an absolute URL such as https://portal.example.org[/path], got {value!r}")
    if parts.scheme == "http" and not allow_http and host not in LOOPBACK:
        raise ValueError("must be https:// (http:// only to localhost)")
    return value.rstrip("/")


def check_link_path(value: str, *, placeholder: bool) -> str:
    """A path appended to ``app_url``; with *placeholder*, ``{conversation}`` exactly once."""
    value = value.strip()
    if value.count(CONVERSATION) != (1 if placeholder else 0):
        raise ValueError(
            f"must contain {CONVERSATION} exactly once" if placeholder else "takes no placeholder"
        )
    if not _PATH.fullmatch(value.replace(CONVERSATION, "x")):
        raise ValueError(
            "expected a path starting with a single / and made of letters, digits and . _ ~ / ? = & # % + -"
        )
    return value


def conversation_link(app_url: str, path: str, conversation_id: str) -> str:
    return app_url.rstrip("/") + path.replace(CONVERSATION, conversation_id)
