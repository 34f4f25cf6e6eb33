"""What MariaDB and SQLite columns hold, so that an export writes them exactly.

A table's columns are known from reflection plus what it does not say (SQLite's declared type,
for the affinity; MariaDB's JSON, a LONGTEXT with a ``json_valid()`` check); a MariaDB query's
from a ``LIMIT 0`` probe of its result's types. Each column gets a kind, which
:mod:`rowstream._values` turns into the per-batch work, and a Parquet type.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any, cast

import sqlalchemy as sa
from sqlalchemy.sql.elements import TextClause
from sqlalchemy.sql.selectable import TextualSelect

from ._exceptions import SinkError
from ._pgcopy import quote_ident
from ._source import ResolvedSource
from ._values import Kind, PlanColumn, ZeroDates, parquet_kind, sqlite_affinity

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncConnection

    from ._arrow import ArrowColumn

__all__ = ["column_kind", "column_notes", "declared_types", "query_kinds", "typed_arrow"]


def declared_types(columns: list[Any], resolved: ResolvedSource) -> dict[str, str]:
    declared = {}
    for column in columns:
        try:
            declared[column.name] = str(column.type.compile(dialect=resolved.engine.dialect))
        except Exception:  # a type without DDL (NullType): no declared type, BLOB affinity
            declared[column.name] = ""
    return declared


def column_kind(column: Any, dialect: str, notes: dict[str, str]) -> Kind | None:
    """What a reflected column's values need (see :mod:`rowstream._values`)."""
    t = column.type
    if dialect == "sqlite":
        if isinstance(t, sa.Boolean):
            return "boolean"
        return sqlite_affinity(notes.get(column.name))
    if notes.get(column.name) == "json" or isinstance(t, sa.JSON):
        return "json"
    visit = getattr(t, "__visit_name__", "").upper()
    if visit == "FLOAT" and (getattr(t, "precision", None) or 0) <= MAX_FLOAT32_PRECISION:
        return "float"
    return _MY_TEMPORAL.get(visit)


# MariaDB FLOAT(p) is a float32 up to p = 24, a double above.
MAX_FLOAT32_PRECISION = 24
_MY_TEMPORAL: dict[str, Kind] = {"TIMESTAMP": "timestamp", "DATETIME": "datetime", "DATE": "date"}
# MariaDB's column type codes in a result's description (MYSQL_TYPE_*).
_MY_CODES: dict[int, Kind] = {
    4: "float",
    7: "timestamp",
    10: "date",
    12: "datetime",
    14: "date",
    245: "json",
}


async def query_kinds(
    resolved: ResolvedSource, statement: TextClause | TextualSelect
) -> tuple[TextClause | TextualSelect, list[PlanColumn] | None]:
    """MariaDB query: its columns' types (from a LIMIT 0 probe), FLOAT columns read exactly.

    With a FLOAT column the query becomes a derived table:
    ``SELECT q.a, CAST(q.f AS DOUBLE) AS f FROM (...) q``; one with ORDER BY is refused instead
    (MariaDB may ignore the order of a derived table). A query that cannot be a derived table
    (duplicate column names) runs as it is. SQLite: nothing to ask (a query's columns have no
    declared types).
    """
    if resolved.dialect == "sqlite":
        return statement, None
    clause = statement.element if isinstance(statement, TextualSelect) else statement
    if not isinstance(clause, TextClause):
        return statement, None

    # A trailing semicolon cannot stand inside a derived table.
    inner = clause.text.rstrip().rstrip(";")
    binds = list(clause._bindparams.values())
    try:
        async with _probe_connection(resolved) as conn:
            probe = sa.text(f"SELECT * FROM ({inner}) AS rowstream_q LIMIT 0")
            result = await conn.execute(probe.bindparams(*binds))
            description = result.cursor.description
            result.close()
    except Exception:
        return statement, None  # the query itself will say what is wrong
    kinds = [PlanColumn(d[0], _MY_CODES.get(cast(int, d[1]))) for d in description]
    floats = [k.name for k in kinds if k.kind == "float"]
    if not floats:
        return statement, kinds
    if _ORDER_BY.search(inner):
        # MariaDB may drop the ORDER BY of a derived table: the rows would come unordered.
        raise SinkError(
            f"column {floats[0]!r} is a FLOAT, which MariaDB sends rounded to 6 digits, and "
            "a query with ORDER BY cannot be wrapped to read it exactly: select "
            f"CAST({floats[0]} AS DOUBLE) AS {floats[0]} in the query"
        )
    quote = resolved.engine.dialect.identifier_preparer.quote
    select_list = ", ".join(
        f"CAST(rowstream_q.{quote(k.name)} AS DOUBLE) AS {quote(k.name)}"
        if k.kind == "float"
        else f"rowstream_q.{quote(k.name)}"
        for k in kinds
    )
    # The caller's own text and bound values, so parameters and %-escaping stay as they are.
    wrapped = sa.text(f"SELECT {select_list} FROM ({inner}) AS rowstream_q")
    return wrapped.bindparams(*binds), kinds


_ORDER_BY = re.compile(r"\border\s+by\b", re.IGNORECASE)


@contextlib.asynccontextmanager
async def _probe_connection(resolved: ResolvedSource) -> AsyncIterator[AsyncConnection]:
    if resolved.borrowed is not None:
        yield resolved.borrowed
        return
    async with resolved.engine.connect() as conn:
        yield conn


def typed_arrow(
    arrow: list[ArrowColumn] | None,
    kinds: list[PlanColumn] | None,
    dialect: str,
    fmt: str,
    zero_dates: ZeroDates,
    as_text: frozenset[str],
) -> list[ArrowColumn] | None:
    """Parquet column types for MariaDB and SQLite, once the columns' kinds are known."""
    if fmt != "parquet" or (arrow is None and kinds is None):
        return arrow
    import pyarrow as pa

    from ._arrow import ArrowColumn

    if kinds is None:
        assert arrow is not None
        return [ArrowColumn(c.name, pa.string()) if c.name in as_text else c for c in arrow]
    typed = []
    for i, column in enumerate(kinds):
        name, kind = column.name, column.kind
        if dialect == "sqlite":
            wanted = parquet_kind(kind)
            typed.append(ArrowColumn(name, getattr(pa, wanted)() if wanted else None))
        else:
            if arrow is not None:
                typed.append(arrow[i])
            else:  # a query: the types its description gives, else from the values
                query_types = {
                    "float": pa.float32(),
                    "date": pa.date32(),
                    "datetime": pa.timestamp("us"),
                    "timestamp": pa.timestamp("us", tz="UTC"),
                }
                typed.append(ArrowColumn(name, query_types.get(kind or "")))
        if name in as_text or (zero_dates == "text" and kind in ("date", "datetime", "timestamp")):
            typed[-1] = ArrowColumn(name, pa.string())
    return typed


_JSON_CHECK = re.compile(r"json_valid\(`((?:[^`]|``)+)`\)")


async def column_notes(
    conn: AsyncConnection, dialect: str, schema: str | None, name: str
) -> dict[str, str]:
    if dialect == "sqlite":
        prefix = f"{quote_ident(schema)}." if schema else ""
        result = await conn.exec_driver_sql(f"PRAGMA {prefix}table_info({quote_ident(name)})")
        # table_info rows: cid, name, type, notnull, dflt_value, pk.
        rows: list[Any] = list(result)
        return {str(row[1]): str(row[2] or "") for row in rows}
    query = sa.text(
        "SELECT CHECK_CLAUSE FROM information_schema.CHECK_CONSTRAINTS "
        "WHERE CONSTRAINT_SCHEMA = COALESCE(:schema, DATABASE()) AND TABLE_NAME = :name"
    )
    try:
        clauses = (await conn.execute(query, {"schema": schema, "name": name})).scalars()
    except Exception:
        return {}  # MySQL before 8.0.16 has no such view, and no CHECK-based JSON either
    notes = {}
    for clause in clauses:
        match = _JSON_CHECK.fullmatch(clause.strip())
        if match:
            notes[match.group(1).replace("``", "`")] = "json"
    return notes
