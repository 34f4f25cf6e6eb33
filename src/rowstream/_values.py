"""MariaDB and SQLite values made exact for export, or refused in one line.

PostgreSQL renders its own values (COPY); MariaDB and SQLite values come through the driver,
and some of them are not what the database holds, or cannot be written as their column's type:

- MariaDB's text protocol rounds ``FLOAT`` to 6 digits (16777216 comes out 16777200): the
  statement selects ``CAST(col AS DOUBLE)`` instead (exact), and CSV/JSONL print the shortest
  text that reads back as the same float32 (:class:`Float32`).
- MariaDB's zero dates (``0000-00-00``, ``2024-00-15``) are no date at all: refused by default,
  or written as NULL or as the server's text (``zero_dates``).
- MariaDB's ``TIMESTAMP`` is an instant (stored in UTC; rowstream's sessions are UTC): it carries
  ``+00`` like PostgreSQL's timestamptz. ``JSON`` is nested in JSONL, as PostgreSQL's json is.
- SQLite types a value, not a column: a column's declared type only gives it an affinity
  (https://www.sqlite.org/datatype3.html, 3.1). Values are written as stored, dates included
  (text or a number: SQLite has no date type); ``BOOLEAN`` 0/1 are booleans; a blob in a TEXT
  column is refused (its ``\\x`` hex would read as text); in Parquet a column gets one type,
  so a value of another storage class is refused unless the column is written as text
  (``text_columns``).

The work is done per column and per batch, and only for the columns that need it: a batch whose
columns need none is passed through untouched (the generic path's speed on narrow rows).
"""

from __future__ import annotations

import json
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any, Literal

from ._exceptions import SinkError
from ._sinks._text import _pg_timestamp
from ._zerodates import DEFAULT_ZERO_DATES, ZERO_DATES, ZeroDates, check_zero_dates

__all__ = [
    "DEFAULT_ZERO_DATES",
    "ZERO_DATES",
    "Float32",
    "Kind",
    "Plan",
    "PlanColumn",
    "ZeroDates",
    "check_zero_dates",
    "float32_text",
    "parquet_kind",
    "sqlite_affinity",
]

# Integers a double holds exactly: a mix of integers and reals is a float64 column only then.
_EXACT_IN_DOUBLE = 2**53
_FLOAT32 = struct.Struct("<f")
_SHOWN_BYTES = 16

Kind = Literal[
    # MariaDB
    "float",
    "date",
    "datetime",
    "timestamp",
    "json",
    # SQLite affinities (and declared BOOLEAN)
    "integer",
    "real",
    "text",
    "numeric",
    "blob",
    "boolean",
]


def sqlite_affinity(declared: str | None) -> Kind:
    """The affinity SQLite gives a column declared ``declared`` (datatype3.html, 3.1).

    >>> sqlite_affinity("VARCHAR(20)"), sqlite_affinity("DOUBLE"), sqlite_affinity("DATETIME")
    ('text', 'real', 'numeric')
    """
    name = (declared or "").upper()
    if "INT" in name:
        return "integer"
    if "CHAR" in name or "CLOB" in name or "TEXT" in name:
        return "text"
    if "BLOB" in name or not name:
        return "blob"
    if "REAL" in name or "FLOA" in name or "DOUB" in name:
        return "real"
    return "numeric"


def float32_text(value: float) -> str:
    """The shortest decimal that reads back as the same float32 (as ``repr`` does for doubles).

    >>> float32_text(3.4028234663852886e38), float32_text(16777216.0), float32_text(0.1)
    ('3.4028235e+38', '16777216.0', '0.1')
    """
    if value != value or value in (float("inf"), float("-inf")) or value == 0:
        return repr(value)
    for digits in range(1, 10):
        candidate = float(f"{value:.{digits}g}")
        try:
            if _FLOAT32.unpack(_FLOAT32.pack(candidate))[0] == value:
                return repr(candidate)
        except OverflowError:  # rounded above the largest float32
            continue
    return repr(value)  # not a float32 value: every digit of the double


class Float32(float):
    """A MariaDB FLOAT read exactly (as a double): renders as the shortest float32 text.

    The CSV and JSON renderers take a float's digits from ``repr``, so they print this one as
    a float32 without knowing about it.
    """

    __slots__ = ()

    def __repr__(self) -> str:
        return float32_text(self)

    __str__ = __repr__


@dataclass(frozen=True)
class PlanColumn:
    """One output column: its name and what needs doing to its values (None: nothing)."""

    name: str
    kind: Kind | None = None


def _shown(value: Any) -> str:
    if isinstance(value, bytes | bytearray | memoryview):
        data = bytes(value)
        more = "..." if len(data) > _SHOWN_BYTES else ""
        return f"x'{data[:_SHOWN_BYTES].hex()}{more}' ({len(data)} bytes)"
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


_CLASS = {int: "integer", float: "real", str: "text", bytes: "blob", bool: "integer"}


def _storage(value: Any) -> str:
    return _CLASS.get(type(value), type(value).__name__)


Fix = Callable[[list[Any]], list[Any]]


@dataclass
class Plan:
    """What to do to each column of a batch for one format, decided once per export.

    ``fmt`` is csv, jsonl or parquet; ``zero_dates`` and ``text_columns`` are the export's
    options. :meth:`apply` returns the batch itself when no value changes.
    """

    columns: Sequence[PlanColumn]
    fmt: str
    dialect: str
    zero_dates: ZeroDates = DEFAULT_ZERO_DATES
    text_columns: frozenset[str] = frozenset()
    _fixes: list[tuple[int, Fix]] = field(default_factory=list, init=False)

    def __post_init__(self) -> None:
        for i, column in enumerate(self.columns):
            fix = self._fix(column)
            if fix is not None:
                self._fixes.append((i, fix))

    @property
    def active(self) -> bool:
        return bool(self._fixes)

    def checks(self) -> dict[int, Fix]:
        """Per column index, the function that makes a batch's values exact (or refuses them).

        For Parquet they run inside the Arrow conversion (``ArrowColumn.check``), on the
        column it extracts anyway; for CSV and JSONL :meth:`apply` runs them on the rows.
        """
        return dict(self._fixes)

    def apply(self, rows: Sequence[Sequence[Any]]) -> Sequence[Sequence[Any]]:
        changed: list[tuple[int, list[Any]]] = []
        for i, fix in self._fixes:
            values = [row[i] for row in rows]
            fixed = fix(values)
            if fixed is not values:
                changed.append((i, fixed))
        if not changed:
            return rows
        out = [list(row) for row in rows]
        for i, fixed in changed:
            for row, value in zip(out, fixed, strict=True):
                row[i] = value
        return out

    # ------------------------------------------------------------ per kind

    def _fix(self, column: PlanColumn) -> Fix | None:
        kind, name = column.kind, column.name
        text_wanted = self.fmt == "parquet" and name in self.text_columns
        if kind == "float":
            return _float32 if self.fmt != "parquet" else None
        if kind in ("date", "datetime", "timestamp"):
            instant = None
            if kind == "timestamp" and (self.fmt != "parquet" or self.zero_dates == "text"):
                # Parquet's timestamp column is UTC already; text needs the +00 written.
                instant = _instant_text(self.fmt)
            return self._zero_date_fix(name, instant)
        if kind == "json":
            return _json_fix(name) if self.fmt == "jsonl" else None
        if self.dialect != "sqlite":
            return None
        if kind == "boolean":
            return _boolean_fix(name, text_wanted)
        if kind == "text":
            return _text_fix(name)
        if self.fmt == "parquet" and kind is not None and not text_wanted:
            return _one_class_fix(name, kind)
        return None

    def _zero_date_fix(self, name: str, instant: Callable[[datetime], str] | None) -> Fix:
        policy = self.zero_dates

        def fix(values: list[Any]) -> list[Any]:
            kinds = set(map(type, values))
            if str in kinds:
                zero = next(v for v in values if isinstance(v, str))
                if policy == "refuse":
                    raise SinkError(
                        f"column {name!r} holds the zero date {zero!r}, which is no date: "
                        "write zero dates as NULL with --zero-dates null (zero_dates='null') "
                        "or as the server's text with --zero-dates text"
                    )
                if policy == "null":
                    values = [None if isinstance(v, str) else v for v in values]
            if instant is not None and datetime in kinds:
                values = [instant(v) if type(v) is datetime else v for v in values]
            return values

        return fix


def _instant_text(fmt: str) -> Callable[[datetime], str]:
    """A TIMESTAMP (naive, in the session's UTC) as the text of an instant: what the writers
    print for an aware datetime, without making one per value (2 to 3 times the cost)."""
    sep, zone = ("T", "+00:00") if fmt == "jsonl" else (" ", "+00")

    def render(value: datetime) -> str:
        return _pg_timestamp(value, sep, "") + zone

    return render


def _float32(values: list[Any]) -> list[Any]:
    return [None if v is None else Float32(v) for v in values]


def _json_fix(name: str) -> Fix:
    def fix(values: list[Any]) -> list[Any]:
        out: list[Any] = []
        for value in values:
            if value is None:
                out.append(None)
                continue
            try:
                # Decimal: every digit of a number, as PostgreSQL's jsonb keeps it.
                out.append(json.loads(value, parse_float=Decimal))
            except (ValueError, TypeError):
                raise SinkError(
                    f"column {name!r} holds {_shown(value)}, which is not JSON: export it as "
                    "text with --format csv, or select it as a string in --query "
                    "(CONCAT(col))"
                ) from None
        # A JSON string comes back as a str, which the writer would print as a JSON string:
        # the same nesting PostgreSQL's to_jsonb() gives a json string.
        return out

    return fix


def _boolean_fix(name: str, as_text: bool) -> Fix:
    def fix(values: list[Any]) -> list[Any]:
        out: list[Any] = []
        for value in values:
            if value is None:
                out.append(None)
            elif type(value) is int and value in (0, 1):
                out.append(bool(value))
            elif as_text:
                out.append(value)
            else:
                raise SinkError(
                    f"column {name!r} is declared BOOLEAN but holds {_shown(value)} "
                    f"({_storage(value)}), not 0 or 1: select CAST({name} AS INTEGER) in "
                    f"--query to write its numbers (to Parquet: or --text-columns {name})"
                )
        return out

    return fix


def _text_fix(name: str) -> Fix:
    def fix(values: list[Any]) -> list[Any]:
        if bytes in set(map(type, values)):
            blob = next(v for v in values if isinstance(v, bytes))
            raise SinkError(
                f"column {name!r} has TEXT affinity but holds the blob {_shown(blob)}, which "
                f"would read back as text: select CAST({name} AS BLOB) in --query to write "
                "the whole column as bytes"
            )
        return values

    return fix


_ONE_CLASS: dict[str, tuple[type, ...]] = {
    "integer": (int,),
    "real": (float,),
}


def _one_class_fix(name: str, kind: Kind) -> Fix:
    """Parquet: every value of the column in the one Arrow type its first rows gave it.

    INTEGER affinity is int64 and REAL float64; other columns take the storage class of their
    first non-null values (integers and reals together are float64 when every integer is
    exact in a double). A value that does not fit is refused, naming ``--text-columns``.
    """
    expected: set[type] = set(_ONE_CLASS.get(kind, ()))

    def fix(values: list[Any]) -> list[Any]:
        kinds = set(map(type, values))
        kinds.discard(type(None))
        if not expected:
            # The first rows decide, as the Parquet writer infers its type from them (text
            # when they are all NULL).
            if not kinds:
                expected.add(str)
            elif kinds == {int, float}:
                expected.add(float)
            else:
                expected.add(type(next(v for v in values if v is not None)))
        if kinds <= expected:
            return values
        if expected == {float} and kinds <= {int, float}:
            big = next((v for v in values if type(v) is int and abs(v) > _EXACT_IN_DOUBLE), None)
            if big is None:
                return [float(v) if type(v) is int else v for v in values]
            odd = big
        else:
            odd = next(v for v in values if v is not None and type(v) not in expected)
        first = "real" if expected == {float} else _CLASS.get(next(iter(expected)), "?")
        raise SinkError(
            f"column {name!r} holds {_shown(odd)} ({_storage(odd)}) among {first} values, "
            "and a Parquet column has one type: write it as text with "
            f"--text-columns {name} (text_columns=[{name!r}])"
        )

    return fix


def parquet_kind(kind: Kind | None) -> str | None:
    """The Arrow type name a SQLite column starts with in Parquet (None: from its values)."""
    return {"integer": "int64", "real": "float64", "text": "string", "boolean": "bool_"}.get(
        kind or ""
    )
