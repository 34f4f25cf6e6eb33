"""Which column and value a client-side conversion failed on.

A result processor (SQLite's DATETIME parser, a Numeric's Decimal, a custom TypeDecorator)
raises ``ValueError`` and the like while SQLAlchemy builds the rows of a batch, in compiled
code that keeps no trace of the column or the raw value, and the batch's raw rows are gone by
then. So, on that error only, the failing window is read again with the processors off
(:func:`raw_window`), and each value goes through its column's processor until one fails
(:func:`first_failure`): the normal path pays nothing. The window starts after the rows
already delivered (OFFSET, so the database walks past them once more: a cost paid on the error
path only). Both faces run the query their way.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import URL, Dialect
from sqlalchemy.sql.selectable import Select, TextualSelect

from ._exceptions import QueryError
from ._translate import is_conversion_error, translate

__all__ = ["Window", "conversion_error", "first_failure", "raw_window", "unlocated"]

# A value is shown up to this many characters: enough to recognise, not a whole document.
MAX_SHOWN = 80

Processor = Callable[[Any], Any] | None


@dataclass(frozen=True)
class Window:
    """The failing batch read again as the driver returns it: the statement, and each
    column's name and result processor."""

    statement: Any
    names: list[str]
    processors: list[Processor]


def raw_window(statement: Any, dialect: Dialect, *, skip: int, limit: int) -> Window | None:
    """``statement``'s rows ``skip`` to ``skip + limit``, with result processing off.

    None when the statement has no typed columns (a bare ``text()``: nothing converts).
    """
    if not isinstance(statement, (Select, TextualSelect)):
        return None
    selected = list(statement.selected_columns)
    processors: list[Processor] = [
        column.type._cached_result_processor(dialect, None) for column in selected
    ]
    if not any(processors):
        return None
    sub = statement.subquery()
    columns = list(sub.c)
    if len(columns) != len(selected):
        return None
    raw: Any = sa.select(
        *(sa.type_coerce(c, sa.types.NullType()).label(f"c{i}") for i, c in enumerate(columns))
    )
    names = [
        str(getattr(c, "key", None) or getattr(c, "name", f"column {i + 1}"))
        for i, c in enumerate(selected)
    ]
    return Window(raw.offset(skip).limit(limit), names, processors)


def first_failure(
    rows: Iterable[Sequence[Any]], window: Window
) -> tuple[str, Any, BaseException] | None:
    """The first (column, raw value, error) whose conversion fails, in row order."""
    for row in rows:
        for name, process, value in zip(window.names, window.processors, row, strict=False):
            if process is None or value is None:
                continue
            try:
                process(value)
            except Exception as exc:
                if is_conversion_error(exc):
                    return name, value, exc
    return None


def unlocated(exc: BaseException, url: URL) -> QueryError:
    """The conversion error before its column is known (``translate``'s reading of it)."""
    error = translate(exc, url=url)
    assert isinstance(error, QueryError)
    return error


def conversion_error(
    found: tuple[str, Any, BaseException] | None, fallback: QueryError
) -> QueryError:
    """The error to raise: naming the column and the value when they were found."""
    if found is None:
        return fallback
    name, value, exc = found
    shown = _cut(repr(value))
    # The reason often quotes the value again: it is cut the same way.
    reason = _cut(str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__)
    return QueryError(
        f"cannot convert column {name!r}: its value {shown} is not what the column's type "
        f"expects ({reason}); fix the stored value, or select the column with another type "
        "(sa.type_coerce(column, sa.String))",
        column=name,
    )


def _cut(text: str) -> str:
    return text if len(text) <= MAX_SHOWN else text[: MAX_SHOWN - 3] + "..."
