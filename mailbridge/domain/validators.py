"""Small checks for values a tenant sets that end up in mail headers or HTML: addresses and colours."""

from __future__ import annotations

import re

_EMAIL = re.compile(
    r"^[A-Za-z0-9!#$%&'*+/=?^_`{|}~.-]{1,64}@[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)+$"
)
# A colour and nothing else: it is written into a style attribute of notification HTML, where
# anything more (``url(https://tracker.example/…)``, ``;background:…``) would be CSS of the tenant's.
_COLOUR = re.compile(r"^#(?:[0-9A-Fa-f]{3}|[0-9A-Fa-f]{6})$")


def check_email(value: str) -> str:
    """An addr-spec we can put in a header safely: no spaces, quotes, CR/LF or display names."""
    if len(value) > 254 or not _EMAIL.match(value) or ".." in value:
        raise ValueError("not a valid email address")
    return value


def check_colour(value: str) -> str:
    if not _COLOUR.match(value):
        raise ValueError("a colour is #rgb or #rrggbb")
    return value
