"""The stream's key: unique, non-null columns that order the rows and say where a stream is.

A key lets a stream page by key (keyset strategy), resume after a dropped connection and
checkpoint its progress. It defaults to the primary key of the single table selected;
``key=`` names other columns. A key is accepted only when the table's metadata or, failing
that, the database's own catalog shows it unique and non-null, and when every delivered item
carries it (selected as a column, or mapped on the ORM entity).

What needs the database (the catalog, when the metadata does not tell) is in
:mod:`rowstream._keyfind`, whose sync twin is generated; the rules here are shared.
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
        self.check_known(last)
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

    def check_known(self, value: Sequence[Any]) -> None:
        """Refuse a key value holding None: nothing can be read after it. A key is non-null,
        but a zero date or infinity in it read with ``zero_dates="null"`` or
        ``infinity="null"`` comes as None."""
        if any(v is None for v in value):
            names = ", ".join(self.names)
            raise StreamKeyError(
                f"the key ({names}) of a row came as None, and rows cannot be read after it: "
                "a zero date or infinity in a key column becomes None with zero_dates='null' "
                "or infinity='null'; keep the default or 'text' for that option, or pass key= "
                "with other unique columns",
                key=names,
            )

    def ordered_by(self, statement: Select[Any]) -> bool:
        """True when ``statement`` is ordered by exactly this key, ascending."""
        clauses = statement._order_by_clauses
        return len(clauses) == len(self.columns) and all(
            clause.compare(column) for clause, column in zip(clauses, self.columns, strict=True)
        )


def pageable(statement: Select[Any], key: Key) -> str | None:
    """Why ``statement`` cannot be paged by ``key``, or None when it can."""
    if statement._limit_clause is not None or statement._offset_clause is not None:
        return "it has LIMIT/OFFSET; use strategy='cursor'"
    if statement._group_by_clauses or statement._distinct:
        return "it has GROUP BY or DISTINCT, so the key may not be unique in the result"
    if statement._order_by_clauses and not key.ordered_by(statement):
        return (
            "it is ordered by something else than its key, and pages follow the key's "
            "order: drop order_by() or order by the key, or use strategy='cursor'"
        )
    return None


def key_getter(plan: Plan, columns: list[ColumnElement[Any]]) -> tuple[Any, tuple[str, ...]]:
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


@dataclass(frozen=True)
class Catalog:
    """What the database's catalog says of a table's keys."""

    primary_key: list[str]
    unique: list[set[str]]
    nullable: set[str]


def reflect_catalog(sync_conn: Any, name: str, schema: str | None) -> Catalog | None:
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
    return Catalog(primary_key=list(pk), unique=unique, nullable=nullable)


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
