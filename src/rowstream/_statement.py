"""What an export reads: a table name, ``Table`` or statement made into one checked ``select``.

source -> **statement** -> plan -> reader -> pipeline -> sink -> report

A table name is quoted by SQLAlchemy, never pasted; ``where`` is checked to be one boolean
expression before the catalog is read; MariaDB and SQLite tables are reflected for their
columns' types (Parquet) and for what their values need to stay exact
(:mod:`rowstream._values`). :func:`render_sql` gives the SQL text PostgreSQL's COPY, probe and
ADBC paths send, checked to be a single read.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from sqlalchemy.engine import URL
from sqlalchemy.exc import NoSuchTableError
from sqlalchemy.sql.elements import TextClause
from sqlalchemy.sql.selectable import Select, TextualSelect

from ._coltypes import column_kind, column_notes, declared_types
from ._exceptions import ConfigurationError, QueryError, SourceError
from ._guard import check_read_only, check_where
from ._sinks._options import Format
from ._source import ResolvedSource, Source, mask_url, resolve_url
from ._strategy import shielded
from ._translate import raise_translated
from ._values import Kind, PlanColumn

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncEngine

    from ._arrow import ArrowColumn

__all__ = [
    "Statement",
    "TableOrStatement",
    "build_statement",
    "check_sqlite_file",
    "render_sql",
    "split_name",
]

TableOrStatement = str | sa.Table | Select[Any] | TextualSelect | TextClause
Statement = Select[Any] | TextualSelect | TextClause


def check_sqlite_file(source: Source) -> None:
    """SQLite creates a missing database file on connect: an export must not leave one."""
    if not isinstance(source, (str, URL)):
        return
    url = resolve_url(source)
    database = url.database
    if url.get_backend_name() != "sqlite" or not database or database == ":memory:":
        return
    if database.startswith("file:") or url.query.get("uri"):
        return
    if not Path(database).is_file():
        raise SourceError(
            f"cannot use {mask_url(url)}: there is no SQLite database at {database!r}; "
            "check the path (sqlite:///relative.db or sqlite:////absolute.db)"
        )


def split_name(name: str) -> tuple[str | None, str]:
    if not name or any(not part for part in name.split(".")) or name.count(".") > 1:
        raise ConfigurationError(f"bad table name {name!r}: write table or schema.table")
    schema, _, table = name.rpartition(".")
    return schema or None, table


async def build_statement(
    resolved: ResolvedSource,
    table_or_statement: TableOrStatement,
    where: str | None,
    columns: Sequence[str] | None,
    fmt: Format,
) -> tuple[Statement, list[ArrowColumn] | None, list[PlanColumn] | None]:
    """The statement to export, the Arrow columns its types give (None: untyped) and what its
    values need to be exact (:mod:`rowstream._values`; None: nothing known)."""
    arrow: list[ArrowColumn] | None
    kinds: list[PlanColumn] | None = None
    if where is not None and isinstance(table_or_statement, (str, sa.Table)):
        if not where.strip():
            raise ConfigurationError("--where is empty: give a condition, or leave it out")
        # Before the catalog is read: one boolean expression, nothing more. The statement it
        # ends up in is checked as a whole before it is sent (by render_sql() or stream()).
        check_where(where, resolved.dialect)
    if isinstance(table_or_statement, (Select, TextualSelect, TextClause)):
        if where is not None or columns is not None:
            raise ConfigurationError(
                "where= and columns= narrow a table: with a statement, put them in it"
            )
        arrow = None
        if isinstance(table_or_statement, Select):
            arrow = _arrow_columns(table_or_statement.selected_columns, resolved.dialect, fmt)
        return table_or_statement, arrow, None
    if isinstance(table_or_statement, str):
        schema, name = split_name(table_or_statement)
        if resolved.dialect == "postgresql":
            # Types come from the server later; here only names, quoted by SQLAlchemy.
            table: sa.TableClause = sa.table(
                name, *(sa.column(c) for c in columns or ()), schema=schema
            )
            selected: list[Any] = list(table.c) if columns else [sa.literal_column("*")]
            arrow = None
        else:
            table, notes = await _reflect(resolved, schema, name)
            picked = _pick(table, columns, table_or_statement)
            arrow = _arrow_columns(picked, resolved.dialect, fmt)
            kinds = [PlanColumn(c.name, column_kind(c, resolved.dialect, notes)) for c in picked]
            selected = [_raw(c, k.kind, resolved) for c, k in zip(picked, kinds, strict=True)]
    elif isinstance(table_or_statement, sa.Table):
        table = table_or_statement
        selected = _pick(table, columns, table.fullname)
        arrow = _arrow_columns(selected, resolved.dialect, fmt)
        if resolved.dialect != "postgresql":
            # The same reading as a reflected table; SQLite's declared types are the DDL the
            # Table's types compile to.
            notes = declared_types(selected, resolved) if resolved.dialect == "sqlite" else {}
            kinds = [PlanColumn(c.name, column_kind(c, resolved.dialect, notes)) for c in selected]
            selected = [_raw(c, k.kind, resolved) for c, k in zip(selected, kinds, strict=True)]
    else:
        raise ConfigurationError(
            f"cannot export a {type(table_or_statement).__name__}: pass a table name, a "
            "Table, a select() or a text()"
        )
    statement = sa.select(*selected).select_from(table)
    if where is not None:
        statement = statement.where(sa.text(f"({where})"))
    return statement, arrow, kinds


def _arrow_columns(columns: Any, dialect: str, fmt: Format) -> list[ArrowColumn] | None:
    """Arrow columns from SQLAlchemy types, for Parquet only (pyarrow loads only then)."""
    if fmt != "parquet":
        return None
    from ._arrow import sqla_column

    return [sqla_column(c.name, c.type, dialect) for c in columns]


def _pick(table: sa.TableClause, columns: Sequence[str] | None, label: str) -> list[Any]:
    if not columns:
        return list(table.c)
    missing = [c for c in columns if c not in table.c]
    if missing:
        raise QueryError(
            f"unknown column {missing[0]!r} in table {label!r}: it has "
            + ", ".join(c.name for c in table.c)
        )
    return [table.c[c] for c in columns]


def _raw(column: Any, kind: Kind | None, resolved: ResolvedSource) -> Any:
    """The column as the driver returns it, without SQLAlchemy's result processing.

    The processors are lossy for export: MySQL's DOUBLE comes back as a Decimal padded to 10
    places, TIME (a duration of up to 838 hours) as a time of day modulo 24 hours, SQLite's
    NUMERIC as a padded Decimal, SQLite's dates parsed (and refused unless ISO text, converted
    to UTC when they have an offset). The column keeps its reflected type for Parquet (see
    :func:`_arrow_columns`). MariaDB's FLOAT is read as a DOUBLE: the text protocol rounds a
    FLOAT to 6 digits, the DOUBLE of a float32 is exact.
    """
    if kind == "float":
        quoted = resolved.engine.dialect.identifier_preparer.quote(column.name)
        # Not sa.cast(): SQLAlchemy skips (with a warning) a CAST to DOUBLE on MySQL.
        return sa.literal_column(f"CAST({quoted} AS DOUBLE)").label(column.name)
    return sa.type_coerce(column, sa.types.NullType()).label(column.name)


async def _reflect(
    resolved: ResolvedSource, schema: str | None, name: str
) -> tuple[sa.Table, dict[str, str]]:
    """The table, and per column what reflection does not say: SQLite's declared type (for
    its affinity), or ``"json"`` for MariaDB's JSON (a LONGTEXT with a json_valid() check)."""
    engine = resolved.engine
    try:
        conn = await engine.connect()
    except Exception as exc:
        raise_translated(exc, url=engine.url, connecting=True)
    try:
        table = await conn.run_sync(
            lambda sync: sa.Table(name, sa.MetaData(), schema=schema, autoload_with=sync)
        )
        return table, await column_notes(conn, resolved.dialect, schema, name)
    except NoSuchTableError:
        label = f"{schema}.{name}" if schema else name
        raise QueryError(
            f"unknown table {label!r} in {mask_url(engine.url)}: check the name (schema.table)"
        ) from None
    except Exception as exc:
        raise_translated(exc, url=engine.url)
    finally:
        await shielded(conn.close())


def render_sql(engine: AsyncEngine | sa.Engine, statement: Statement) -> str:
    """The statement as PostgreSQL's COPY, probe and ADBC paths send it, checked to be a single
    read, without a trailing ';' or comment (it is wrapped in ``(...) AS t``)."""
    try:
        compiled = statement.compile(dialect=engine.dialect, compile_kwargs={"literal_binds": True})
    except Exception as exc:
        raise ConfigurationError(
            f"cannot render this statement for export: {str(exc).splitlines()[0]}; "
            "use literal values instead of bound parameters"
        ) from None
    return check_read_only(str(compiled), engine.dialect.name)
