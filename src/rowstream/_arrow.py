"""SQL types to Arrow types, and rows to Arrow record batches.

PostgreSQL columns are typed from the catalog (type name and type modifier, so ``numeric(p, s)``
keeps its precision); columns whose Arrow form would lose something are cast to text in the
query itself (``numeric`` without precision, ``interval``, ``uuid``, ``json``/``jsonb`` and any
type Arrow has no match for). Parquet has no month_day_nano interval (pyarrow refuses to write
it), so an interval is PostgreSQL's own text, ``1 year 2 mons 3 days 04:05:06.789``.

MariaDB and SQLite columns are typed from SQLAlchemy's types (a reflected table, or a typed
``select()``); a column without a type (a text query) takes the type Arrow infers from its first
non-null values.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import pyarrow as pa
import sqlalchemy as sa

__all__ = [
    "ArrowColumn",
    "lean_memory_pool",
    "pg_column",
    "rows_batch",
    "rows_to_batch",
    "sqla_column",
    "use_lean_memory_pool",
]

MAX_DECIMAL128_PRECISION = 38


@dataclass(frozen=True)
class ArrowColumn:
    """One output column: its name, its Arrow type (None: infer from the values), the SQL
    type it is cast to in the query (None: read as it is), and a check that makes a batch's
    values exact for the type or refuses them (:mod:`rowstream._values`; None: none needed)."""

    name: str
    type: pa.DataType | None
    cast: str | None = None
    check: Callable[[list[Any]], list[Any]] | None = field(default=None, compare=False)


_PG_SCALARS: dict[str, pa.DataType] = {
    "int2": pa.int16(),
    "int4": pa.int32(),
    "int8": pa.int64(),
    "bool": pa.bool_(),
    "float4": pa.float32(),
    "float8": pa.float64(),
    "text": pa.string(),
    "varchar": pa.string(),
    "bpchar": pa.string(),
    "name": pa.string(),
    "citext": pa.string(),
    "date": pa.date32(),
    "time": pa.time64("us"),
    "timestamp": pa.timestamp("us"),
    "timestamptz": pa.timestamp("us", tz="UTC"),
    "bytea": pa.binary(),
}
# Read as text: Arrow has no exact match that Parquet can store, or the text is the exact form.
# "char" too: read as it is, ADBC gives the byte 0 for '' and asyncpg gives bytes.
_PG_AS_TEXT = {"interval", "uuid", "json", "jsonb", "xml", "money", "timetz", "char"}


def _numeric(typmod: int) -> tuple[int, int] | None:
    if typmod < 4:
        return None
    value = typmod - 4
    precision, scale = (value >> 16) & 0xFFFF, value & 0xFFFF
    # Scale is an 11-bit signed number since PostgreSQL 15 (numeric(3, -2)).
    if scale >= 0x400:
        scale -= 0x800
    if not 0 < precision <= MAX_DECIMAL128_PRECISION or scale < 0:
        return None
    return precision, scale


def _pg_scalar(typname: str, typmod: int) -> tuple[pa.DataType, str | None]:
    if typname == "numeric":
        numeric = _numeric(typmod)
        if numeric is None:
            return pa.string(), "text"
        return pa.decimal128(*numeric), None
    if typname == "oid":
        # Unsigned 32-bit: read as bigint, so values above 2**31 stay positive.
        return pa.int64(), "int8"
    if typname in _PG_SCALARS:
        return _PG_SCALARS[typname], None
    return pa.string(), "text"


def pg_column(name: str, typname: str, typmod: int, element: str | None) -> ArrowColumn:
    """The Arrow column for a PostgreSQL column (``element`` is the element type of an array).

    >>> pg_column("total", "numeric", (10 << 16 | 2) + 4, None).type
    Decimal128Type(decimal128(10, 2))
    """
    if element is not None:
        item, cast = _pg_scalar(element, typmod)
        return ArrowColumn(name, pa.list_(item), "text[]" if cast else None)
    arrow, cast = _pg_scalar(typname, typmod)
    return ArrowColumn(name, arrow, cast)


def sqla_column(name: str, sql_type: Any, dialect: str) -> ArrowColumn:
    """The Arrow column for a SQLAlchemy type (MariaDB, SQLite); ``None`` type when untyped."""
    t = sql_type
    if isinstance(t, sa.types.NullType):
        return ArrowColumn(name, None)
    unsigned = bool(getattr(t, "unsigned", False))
    if isinstance(t, sa.Boolean):
        return ArrowColumn(name, pa.bool_())
    if isinstance(t, sa.Integer):
        if dialect == "sqlite":
            # SQLite integers are 64-bit whatever the declared type.
            return ArrowColumn(name, pa.int64())
        visit = getattr(t, "__visit_name__", "").upper()
        if visit == "TINYINT":
            return ArrowColumn(name, pa.uint8() if unsigned else pa.int8())
        if isinstance(t, sa.SmallInteger):
            return ArrowColumn(name, pa.uint16() if unsigned else pa.int16())
        if isinstance(t, sa.BigInteger):
            return ArrowColumn(name, pa.uint64() if unsigned else pa.int64())
        if visit == "MEDIUMINT":
            return ArrowColumn(name, pa.int32())
        return ArrowColumn(name, pa.uint32() if unsigned else pa.int32())
    if isinstance(t, sa.Float):
        visit = getattr(t, "__visit_name__", "").upper()
        single = visit == "FLOAT" and dialect != "sqlite" and (t.precision or 0) <= 24
        return ArrowColumn(name, pa.float32() if single else pa.float64())
    if isinstance(t, sa.Numeric):
        precision, scale = t.precision, t.scale
        if precision and 0 < precision <= MAX_DECIMAL128_PRECISION:
            return ArrowColumn(name, pa.decimal128(precision, scale or 0))
        return ArrowColumn(name, None if dialect == "sqlite" else pa.string())
    if isinstance(t, sa.DateTime):
        visit = getattr(t, "__visit_name__", "").upper()
        aware = bool(t.timezone) or visit == "TIMESTAMP"
        return ArrowColumn(name, pa.timestamp("us", tz="UTC" if aware else None))
    if isinstance(t, sa.Date):
        return ArrowColumn(name, pa.date32())
    if isinstance(t, sa.Time):
        # MySQL's TIME is a signed duration of up to 838 hours, not a time of day.
        return ArrowColumn(name, pa.duration("us") if dialect != "sqlite" else pa.time64("us"))
    if isinstance(t, (sa.LargeBinary, sa.types._Binary)):
        return ArrowColumn(name, pa.binary())
    if isinstance(t, sa.JSON):
        return ArrowColumn(name, pa.string(), cast="json")
    if isinstance(t, (sa.String, sa.Enum, sa.Uuid)):
        return ArrowColumn(name, pa.string())
    return ArrowColumn(name, None)


def lean_memory_pool() -> pa.MemoryPool:
    """jemalloc when pyarrow has it, else the default pool.

    Measured on a 1M-row Parquet export: the same Arrow allocations (22 MB at most) cost
    28-35 MB more peak RSS with pyarrow's default mimalloc, which keeps freed pages longer.
    """
    try:
        return pa.jemalloc_memory_pool()
    except (NotImplementedError, pa.ArrowNotImplementedError):
        return pa.default_memory_pool()


def use_lean_memory_pool() -> None:
    """Make :func:`lean_memory_pool` pyarrow's default (the CLI does: the process is ours)."""
    pa.set_memory_pool(lean_memory_pool())


def _to_text(value: Any) -> Any:
    if value is None or isinstance(value, str):
        return value
    from ._sinks._text import csv_text, json_text

    if isinstance(value, (dict, list)):
        return json_text(value)
    return csv_text(value)


def _array(values: list[Any], column: ArrowColumn, pool: pa.MemoryPool) -> pa.Array:
    if column.check is not None:
        values = column.check(values)
    if column.type is None:
        return pa.array(values, memory_pool=pool)
    if column.cast == "json" or (
        pa.types.is_string(column.type) and any(not isinstance(v, str | None) for v in values)
    ):
        values = [_to_text(v) for v in values]
    return pa.array(values, type=column.type, memory_pool=pool)


def infer_columns(
    columns: Sequence[ArrowColumn], rows: Sequence[Sequence[Any]]
) -> list[ArrowColumn]:
    """Give untyped columns the type Arrow infers from ``rows`` (text when all are NULL)."""
    typed = []
    for i, column in enumerate(columns):
        if column.type is not None:
            typed.append(column)
            continue
        values = [row[i] for row in rows]
        if column.check is not None:
            values = column.check(values)
        inferred = pa.array(values).type
        if pa.types.is_null(inferred):
            inferred = pa.string()
        typed.append(replace(column, type=inferred))
    return typed


def schema_of(columns: Sequence[ArrowColumn]) -> pa.Schema:
    return pa.schema([pa.field(c.name, c.type) for c in columns])


def rows_to_batch(rows: Sequence[Sequence[Any]], columns: Sequence[ArrowColumn]) -> pa.RecordBatch:
    """Turn rows (tuples) into one Arrow record batch with the columns' types.

    The arrays come from :func:`lean_memory_pool` even when the process kept pyarrow's
    default: on rows of 50 MB, mimalloc kept the pages of earlier batches, 60 MB more at the
    peak of a Parquet export.
    """
    pool = lean_memory_pool()
    arrays = []
    for i, column in enumerate(columns):
        values = [row[i] for row in rows]
        try:
            arrays.append(_array(values, column, pool))
        except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError):
            if not pa.types.is_string(column.type or pa.null()):
                raise
            arrays.append(pa.array([_to_text(v) for v in values], type=pa.string()))
    return pa.RecordBatch.from_arrays(arrays, schema=schema_of(columns))


def rows_batch(rows: Sequence[Sequence[Any]], columns: Sequence[ArrowColumn]) -> pa.RecordBatch:
    """Rows as one record batch of the columns' types; a value that does not fit is refused."""
    from ._exceptions import SinkError

    try:
        return rows_to_batch(rows, columns)
    except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError) as exc:
        raise SinkError(
            f"cannot write these values to Parquet: {str(exc).splitlines()[0]}; "
            "cast the column in the query (for example to text)"
        ) from None
