"""Settle a stream's key: the rules of rowstream._keys, and the catalog when the table's
metadata does not show the key unique and non-null.

The sync twin, rowstream._sync._keyfind, is generated from this module (tools/unasync.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.sql.elements import ColumnElement
from sqlalchemy.sql.selectable import Select

from ._acompat import run_sync
from ._exceptions import StreamKeyError
from ._keys import Catalog, Key, KeyArg, key_getter, reflect_catalog
from ._plan import Plan
from ._source import ResolvedSource
from ._translate import raise_translated


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
        getter, names = key_getter(plan, columns)
        await _check_unique_not_null(source, columns)
    except StreamKeyError as exc:
        if explicit:
            raise
        return None, exc.message
    return Key(tuple(columns), names, getter), None


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


async def _reflect_table(source: ResolvedSource, table: sa.TableClause) -> Catalog | None:
    if source.borrowed is not None:
        return await run_sync(source.borrowed, reflect_catalog, table.name, table.schema)
    try:
        async with source.engine.connect() as conn:
            return await run_sync(conn, reflect_catalog, table.name, table.schema)
    except Exception as exc:
        raise_translated(exc, url=source.engine.url)
