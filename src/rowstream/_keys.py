"""The stream's key: unique, non-null columns that order the rows and say where a stream is.

A key lets a stream page by key (keyset strategy), resume after a dropped connection and
checkpoint its progress. It defaults to the primary key of the single table selected;
``key=`` names other columns. A key is accepted only when the table's metadata or, failing
that, the database's own catalog shows it unique and non-null, and when every delivered item
carries it (selected as a column, or mapped on the ORM entity).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from operator import attrgetter, itemgetter
from typing import Any

import sqlalchemy as sa
from sqlalchemy.sql.elements import ColumnElement
from sqlalchemy.sql.selectable import Select

from ._exceptions import StreamKeyError
from ._plan import Plan
from ._source import ResolvedSource
from ._translate import raise_translated

KeyArg = str | ColumnElement[Any] | Any | Sequence[str | ColumnElement[Any] | Any] | None


@dataclass(frozen=True)
class Key:
    """A usable key: the SQL columns, and how to read their values from a delivered item."""

    columns: tuple[ColumnElement[Any], ...]
    names: tuple[str, ...]
    #: Attribute names on ORM instances, or positions in Rows.
    getter: Any

    def of(self, item: Any) -> tuple[Any, ...]:
        value = self.getter(item)
        return value if len(self.columns) > 1 else (value,)

    def after(self, last: Sequence[Any], *, dialect: str) -> ColumnElement[bool]:
        """``key > last`` in the key's order: a row-value comparison where the database plans
        it well (PostgreSQL, SQLite), the expanded OR form on MySQL/MariaDB."""
        cols = self.columns
        if len(cols) == 1:
            single: ColumnElement[bool] = cols[0] > last[0]
            return single
        if dialect in {"mysql", "mariadb"}:
            terms = []
            for i in range(len(cols)):
                equal = [cols[j] == last[j] for j in range(i)]
                terms.append(sa.and_(*equal, cols[i] > last[i]))
            return sa.or_(*terms)
        comparison: ColumnElement[bool] = sa.tuple_(*cols) > tuple(last)
        return comparison

    def ordered_by(self, statement: Select[Any]) -> bool:
        """True when ``statement`` is ordered by exactly this key, ascending."""
        clauses = statement._order_by_clauses
        return len(clauses) == len(self.columns) and all(
            clause.compare(column) for clause, column in zip(clauses, self.columns, strict=True)
        )


async def _requested(
    source: ResolvedSource, statement: Select[Any], key: KeyArg
) -> list[ColumnElement[Any]] | None:
    if key is None:
        froms = statement.get_final_froms()
        if len(froms) != 1 or not isinstance(froms[0], sa.TableClause):
            return None
        table = froms[0]
        primary: list[ColumnElement[Any]] = (
            list(table.primary_key.columns) if isinstance(table, sa.Table) else []
        )
        if not primary and not isinstance(table, sa.Table):
            # A lightweight sa.table() knows no primary key: the catalog does.
            catalog = await _reflect_table(source, table)
            if catalog is None or not catalog.primary_key:
                return None
            if any(name not in table.c for name in catalog.primary_key):
                return None
            primary = [table.c[name] for name in catalog.primary_key]
        return primary or None
    items = [key] if isinstance(key, str) or not isinstance(key, Sequence) else list(key)
    columns: list[ColumnElement[Any]] = []
    for item in items:
        if isinstance(item, str):
            column = statement.selected_columns.get(item)
            if column is None:
                froms = statement.get_final_froms()
                found = [f.c[item] for f in froms if item in f.c]
                if len(found) != 1:
                    raise StreamKeyError(
                        f"key column {item!r} is not a column of the statement: name a selected "
                        "column or pass the column itself (key=Order.id)"
                    )
                column = found[0]
        else:
            column = sa.inspect(item) if hasattr(item, "__clause_element__") else item
            column = getattr(column, "expression", column)
        columns.append(column)
    return columns


async def resolve_key(
    source: ResolvedSource, plan: Plan, key: KeyArg
) -> tuple[Key | None, str | None]:
    """The stream's key and, when there is none, why. An explicit ``key=`` that cannot be
    used raises :class:`StreamKeyError` before any row is read."""
    statement = plan.statement
    explicit = key is not None
    if not isinstance(statement, Select):
        if explicit:
            raise StreamKeyError(
                "a key needs a select(): text() statements cannot be paged or resumed by key"
            )
        return None, "text() statements have no key"
    columns = await _requested(source, statement, key)
    if not columns:
        return None, "the statement does not select a single table with a primary key"
    try:
        getter, names = _getter(plan, columns)
        await _check_unique_not_null(source, columns)
    except StreamKeyError as exc:
        if explicit:
            raise
        return None, exc.message
    return Key(tuple(columns), names, getter), None


def _getter(plan: Plan, columns: list[ColumnElement[Any]]) -> tuple[Any, tuple[str, ...]]:
    statement = plan.statement
    assert isinstance(statement, Select)
    if plan.scalars:
        entity = statement.column_descriptions[0]["entity"]
        mapper = sa.inspect(entity).mapper
        attrs = []
        for column in columns:
            try:
                attrs.append(mapper.get_property_by_column(column).key)
            except Exception:
                raise StreamKeyError(
                    f"key column {column} is not mapped on {mapper.class_.__name__}"
                ) from None
        return attrgetter(*attrs), tuple(attrs)
    selected = list(statement.selected_columns)
    positions = []
    for column in columns:
        found = [i for i, c in enumerate(selected) if c.compare(column) or _same(c, column)]
        if not found:
            raise StreamKeyError(
                f"key column {column} is not selected: add it to the select() so that each "
                "row carries its key"
            )
        positions.append(found[0])
    names = tuple(str(selected[i].key) for i in positions)
    return itemgetter(*positions), names


def _same(a: Any, b: Any) -> bool:
    return bool(getattr(a, "table", None) is getattr(b, "table", 0) and a.key == b.key)


async def _check_unique_not_null(source: ResolvedSource, columns: list[ColumnElement[Any]]) -> None:
    tables = {getattr(c, "table", None) for c in columns}
    table = next(iter(tables))
    if len(tables) != 1 or not isinstance(table, sa.TableClause):
        raise StreamKeyError(
            "a key's columns must all belong to one table, so that it can be checked unique"
        )
    names = {str(c.name) for c in columns}
    if isinstance(table, sa.Table):
        nullable = {str(c.name) for c in columns if getattr(c, "nullable", True)}
        pk = {str(c.name) for c in table.primary_key.columns}
        unique = [pk] if pk else []
        unique += [
            {str(c.name) for c in constraint.columns}
            for constraint in table.constraints
            if isinstance(constraint, sa.UniqueConstraint)
        ]
        unique += [{str(c.name) for c in index.columns} for index in table.indexes if index.unique]
        unique += [{str(c.name)} for c in table.columns if c.unique]
        if names == pk:
            nullable = set()
        if any(u and u <= names for u in unique) and not nullable:
            return
    # The metadata does not show it (a Table declared loosely, a lightweight sa.table()):
    # ask the database's catalog.
    catalog = await _reflect_table(source, table)
    if catalog is None:
        raise StreamKeyError(f"cannot check the key of {table.name}: the table was not found")
    nullable = names & catalog.nullable
    is_unique = any(u and u <= names for u in catalog.unique)
    # Nullability first: a nullable column is often unique but for its NULLs, and "not
    # unique" alone would send the reader looking for duplicates that are not there.
    if nullable:
        also = (
            "; it is not unique either (no primary key or unique constraint covers it)"
            if not is_unique
            else ""
        )
        raise StreamKeyError(
            f"key ({', '.join(sorted(nullable))}) of {table.name} is nullable: its NULLs "
            f"cannot be ordered past (NULL > x is never true){also}; pass key= with non-null "
            "columns, or declare them NOT NULL"
        )
    if not is_unique:
        raise StreamKeyError(
            f"key ({', '.join(sorted(names))}) of {table.name} is not unique: keyset paging and "
            "resume need a primary key or a unique constraint; pass key= with one"
        )


@dataclass(frozen=True)
class _Catalog:
    """What the database's catalog says of a table's keys."""

    primary_key: list[str]
    unique: list[set[str]]
    nullable: set[str]


async def _reflect_table(source: ResolvedSource, table: sa.TableClause) -> _Catalog | None:
    if source.borrowed is not None:
        return await source.borrowed.run_sync(_reflect, table.name, table.schema)
    try:
        async with source.engine.connect() as conn:
            return await conn.run_sync(_reflect, table.name, table.schema)
    except Exception as exc:
        raise_translated(exc, url=source.engine.url)


def _reflect(sync_conn: Any, name: str, schema: str | None) -> _Catalog | None:
    inspector = sa.inspect(sync_conn)
    if not inspector.has_table(name, schema=schema):
        return None
    unique: list[set[str]] = []
    pk = inspector.get_pk_constraint(name, schema=schema).get("constrained_columns") or []
    if pk:
        unique.append(set(pk))
    for constraint in inspector.get_unique_constraints(name, schema=schema):
        unique.append(set(constraint["column_names"]))
    for index in inspector.get_indexes(name, schema=schema):
        if index.get("unique"):
            unique.append({str(c) for c in index["column_names"] if c is not None})
    nullable = {
        str(column["name"])
        for column in inspector.get_columns(name, schema=schema)
        if column.get("nullable", True) and column["name"] not in pk
    }
    return _Catalog(primary_key=list(pk), unique=unique, nullable=nullable)


class KeyedStream:
    """What a stream (async or sync) tells of its key; it sets ``_key`` and ``_last_key``."""

    _key: Key | None
    _last_key: tuple[Any, ...] | None

    @property
    def key_columns(self) -> tuple[str, ...] | None:
        """The names of the key's columns (attributes for ORM instances), None without a key."""
        return self._key.names if self._key is not None else None

    def key_of(self, item: Any) -> tuple[Any, ...]:
        """The key of a delivered item, as a tuple (``start_after=`` takes it back)."""
        if self._key is None:
            raise StreamKeyError(
                "this stream has no key: pass key= naming unique, non-null columns"
            )
        return self._key.of(item)

    @property
    def last_key(self) -> tuple[Any, ...] | None:
        """The key of the last item delivered (or ``start_after``), None before any."""
        return self._last_key
