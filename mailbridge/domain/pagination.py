"""Keyset pagination, the one helper every list uses: ``limit`` and ``cursor`` in, ``next_cursor`` out.

A page is "the next ``limit`` rows after this sort key", never "rows 1,000 to 1,050": the database
walks an index from the cursor instead of counting past every earlier row, so a deep page costs what
the first one does, and a row inserted while a client walks the list neither shifts a page (no row
twice) nor hides one (no row missed). Every sort ends with a unique column (the id), so the order is
total.

The cursor is opaque to clients: URL-safe base64 of the JSON list of the last row's sort key.
Tampering with it moves the position and nothing else: the caller's filters (practice, reader)
apply to every page.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Generic, TypeVar

from sqlalchemy import Select, and_, literal, or_
from sqlalchemy.orm import Session
from sqlalchemy.sql.elements import ColumnElement
from sqlalchemy.types import TypeDecorator

from mailbridge.domain.errors import Invalid

T = TypeVar("T")

DEFAULT_LIMIT = 50
MAX_LIMIT = 200


@dataclass(frozen=True)
class Key:
    """One sort column; every key of a sort goes the same way (``descending``) in our lists."""

    column: Any  # an ORM attribute or a column
    attribute: str  # the attribute holding the value on the loaded object

    def value(self, row: Any) -> Any:
        return getattr(row, self.attribute)


@dataclass
class Page(Generic[T]):
    items: list[T]
    next_cursor: str | None


def encode(values: Sequence[Any]) -> str:
    """A sort key as an opaque cursor; datetimes keep their microseconds and zone."""
    plain = [v.isoformat() if isinstance(v, datetime) else v for v in values]
    return base64.urlsafe_b64encode(json.dumps(plain, separators=(",", ":")).encode()).decode().rstrip("=")


def decode(cursor: str, keys: Sequence[Key]) -> list[Any]:
    """The sort key a cursor carries, each value checked against its column's Python type."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        values = json.loads(raw)
    except (binascii.Error, ValueError, UnicodeDecodeError):
        raise _bad() from None
    if not isinstance(values, list) or len(values) != len(keys):
        raise _bad()
    out: list[Any] = []
    for key, value in zip(keys, values, strict=True):
        python_type = _python_type(key.column.type)
        if python_type is datetime:
            if not isinstance(value, str):
                raise _bad()
            try:
                value = datetime.fromisoformat(value)
            except ValueError:
                raise _bad() from None
        elif python_type is int:
            if not isinstance(value, int) or isinstance(value, bool):
                raise _bad()
        elif not isinstance(value, python_type):
            raise _bad()
        out.append(value)
    return out


def _python_type(sql_type: Any) -> type:
    """The Python type behind a column type (a TypeDecorator such as UTCDateTime says ``object``)."""
    while isinstance(sql_type, TypeDecorator):
        sql_type = sql_type.impl_instance
    python_type: type = sql_type.python_type
    return python_type


def _bad() -> Invalid:
    return Invalid("invalid_cursor", "cursor: not a cursor this list returned", "cursor")


def after(keys: Sequence[Key], values: Sequence[Any], descending: bool) -> ColumnElement[bool]:
    """Rows strictly after the key in the sort order: (a, b) > (x, y) spelled as
    ``a > x OR (a = x AND b > y)``, which SQLite and PostgreSQL both answer from the index."""
    clauses: list[ColumnElement[bool]] = []
    for i, key in enumerate(keys):
        bound = literal(values[i], key.column.type)
        beyond = key.column < bound if descending else key.column > bound
        equal = [k.column == literal(v, k.column.type) for k, v in zip(keys[:i], values[:i], strict=True)]
        clauses.append(and_(*equal, beyond) if equal else beyond)
    return or_(*clauses)


def check_limit(limit: int | None, default: int = DEFAULT_LIMIT, maximum: int = MAX_LIMIT) -> int:
    if limit is None:
        return default
    if not 1 <= limit <= maximum:
        raise Invalid("invalid_limit", f"limit: between 1 and {maximum}", "limit")
    return limit


def page(
    session: Session,
    query: Select[Any],
    keys: Sequence[Key],
    *,
    limit: int,
    cursor: str | None,
    descending: bool = False,
    scalars: bool = True,
    prepare: Callable[[Select[Any]], Select[Any]] | None = None,
) -> Page[Any]:
    """One page of *query* in the order of *keys*: ``limit + 1`` rows fetched, so the last page
    says so (``next_cursor`` null) without a second query. *prepare* adds loader options."""
    if cursor:
        query = query.where(after(keys, decode(cursor, keys), descending))
    order = [k.column.desc() if descending else k.column.asc() for k in keys]
    query = query.order_by(*order).limit(limit + 1)
    if prepare is not None:
        query = prepare(query)
    result = session.scalars(query) if scalars else session.execute(query)
    rows = list(result.unique().all()) if scalars else list(result.all())
    more = len(rows) > limit
    rows = rows[:limit]
    next_cursor = encode([k.value(rows[-1]) for k in keys]) if more and rows else None
    return Page(rows, next_cursor)
