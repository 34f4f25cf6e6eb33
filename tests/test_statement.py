"""What an export reads, built without a database (PostgreSQL's table names need no catalog)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from rowstream import ConfigurationError, SourceError, UnsupportedQueryError
from rowstream._source import ResolvedSource, resolve_source
from rowstream._statement import build_statement, check_sqlite_file, render_sql, split_name

# Nothing connects: the engine is made, the statement compiled, the engine disposed.
PG = "postgresql://nobody@127.0.0.1:1/none"


@pytest.fixture
async def pg() -> AsyncIterator[ResolvedSource]:
    resolved = resolve_source(PG)
    try:
        yield resolved
    finally:
        await resolved.aclose()


@pytest.mark.parametrize(
    ("name", "expected"),
    [("orders", (None, "orders")), ("sales.orders", ("sales", "orders"))],
)
def test_split_name(name: str, expected: tuple[str | None, str]) -> None:
    assert split_name(name) == expected


@pytest.mark.parametrize("name", ["", "a..b", "a.b.c", ".a", "a."])
def test_bad_table_names(name: str) -> None:
    with pytest.raises(ConfigurationError, match="bad table name"):
        split_name(name)


async def test_table_name_is_quoted_never_pasted(pg: ResolvedSource) -> None:
    statement, arrow, kinds = await build_statement(
        pg, 'sales.Order "x"', "status = 'paid'", ["id", "Total"], "csv"
    )
    assert arrow is None and kinds is None
    assert render_sql(pg.engine, statement) == (
        'SELECT sales."Order ""x""".id, sales."Order ""x"""."Total" \nFROM sales."Order ""x""" '
        "\nWHERE (status = 'paid')"
    )


async def test_whole_table_selects_star(pg: ResolvedSource) -> None:
    statement, _, _ = await build_statement(pg, "orders", None, None, "parquet")
    assert render_sql(pg.engine, statement) == "SELECT * \nFROM orders"


async def test_statements_pass_through(pg: ResolvedSource) -> None:
    query = sa.text("SELECT 1 AS x")
    assert (await build_statement(pg, query, None, None, "csv"))[0] is query
    with pytest.raises(ConfigurationError, match="narrow a table"):
        await build_statement(pg, query, "x = 1", None, "csv")
    with pytest.raises(ConfigurationError, match="cannot export a int"):
        await build_statement(pg, 42, None, None, "csv")  # type: ignore[arg-type]


async def test_where_is_one_condition(pg: ResolvedSource) -> None:
    with pytest.raises(ConfigurationError, match="--where is empty"):
        await build_statement(pg, "orders", "  ", None, "csv")
    with pytest.raises(UnsupportedQueryError, match="refusing the where condition"):
        await build_statement(
            pg, "orders", "true) TO STDOUT; DROP TABLE x; COPY (SELECT 1", None, "csv"
        )


async def test_render_sql_refuses_unrenderable_values_and_second_statements(
    pg: ResolvedSource,
) -> None:
    with pytest.raises(ConfigurationError, match="use literal values"):
        render_sql(pg.engine, sa.select(sa.literal(object())))
    with pytest.raises(UnsupportedQueryError):
        render_sql(pg.engine, sa.text("SELECT 1; DELETE FROM t"))


def test_a_missing_sqlite_file_is_not_created(tmp_path: Path) -> None:
    missing = tmp_path / "nope.db"
    with pytest.raises(SourceError, match="there is no SQLite database"):
        check_sqlite_file(f"sqlite:///{missing}")
    assert not missing.exists()
    check_sqlite_file("sqlite:///:memory:")
