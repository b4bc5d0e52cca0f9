"""``?limit=`` and ``?cursor=`` for every paginated list: one dependency, documented once in OpenAPI."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from fastapi import Query

from mailbridge.domain import pagination

from .schemas import Page

CURSOR_DOC = (
    "The next_cursor of the previous page (opaque). Pages follow a sort key, not an offset: rows "
    "inserted while you walk never make a row appear twice or be skipped."
)


@dataclass(frozen=True)
class PageQuery:
    limit: int
    cursor: str | None


def page_query(
    default: int = pagination.DEFAULT_LIMIT, maximum: int = pagination.MAX_LIMIT
) -> Callable[..., Any]:
    """A dependency reading ``limit`` (1..*maximum*, default *default*) and ``cursor``."""

    def dependency(
        limit: int = Query(default=default, ge=1, le=maximum, description=f"Rows per page, 1 to {maximum}."),
        cursor: str | None = Query(default=None, max_length=512, description=CURSOR_DOC),
    ) -> PageQuery:
        return PageQuery(limit, cursor or None)

    return dependency


def page_out(page: pagination.Page[Any], render: Callable[[Any], Any]) -> Page:
    return Page(items=[render(row) for row in page.items], next_cursor=page.next_cursor)
