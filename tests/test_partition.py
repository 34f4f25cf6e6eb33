"""Partition plans: the arithmetic without a database, balance and completeness on real servers."""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator

import pytest
import sqlalchemy as sa
from sqlalchemy.dialects import mysql, postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

import rowstream
from rowstream._exceptions import ConfigurationError
from rowstream._guard import check_read_only
from rowstream._partition import (
    Partition,
    block_ranges,
    key_partitions,
    partition_count,
    plan_partitions,
    plan_statement,
    quantile_bounds,
)

# ---------------------------------------------------------------- no database


def test_partition_count_is_per_job_but_never_below_the_minimum_size() -> None:
    assert partition_count(None, 4) == 24
    assert partition_count(10 * 2**30, 4, per_job=8) == 32
    assert partition_count(100 * 2**20, 4, min_bytes=10 * 2**20) == 10
    assert partition_count(0, 4) == 1
    assert partition_count(5, 2, min_bytes=10) == 1
    with pytest.raises(ConfigurationError, match="jobs must be at least 1"):
        partition_count(None, 0)


@pytest.mark.parametrize(("blocks", "count"), [(10, 3), (1000, 24), (7, 24), (1, 8), (97, 13)])
def test_block_ranges_cover_every_block_once_and_end_open(blocks: int, count: int) -> None:
    ranges = block_ranges(blocks, count)
    assert len(ranges) == min(count, blocks)
    assert ranges[0][0] == 0
    assert ranges[-1][1] is None
    for (_, upper), (lower, _) in itertools.pairwise(ranges):
        assert upper == lower
    sizes = [(u if u is not None else blocks) - lo for lo, u in ranges]
    assert sum(sizes) == blocks
    assert max(sizes) - min(sizes) <= 1
    assert all(s > 0 for s in sizes)


def test_quantile_bounds_are_ordered_and_unique() -> None:
    assert quantile_bounds(list(range(1000)), 4) == [250, 500, 750]
    assert quantile_bounds([5] * 100, 8) == [5]
    assert quantile_bounds([], 8) == []
    # A backslash reads differently with standard_conforming_strings off: never a boundary.
    assert quantile_bounds(["a", "b\\'", "c", "d"], 4) == ["c", "d"]
    assert quantile_bounds([1, 2, 3], 1) == []


def test_key_partitions_are_open_at_both_ends_with_a_null_part() -> None:
    parts = key_partitions("k", [10, 20], nullable=True)
    assert [(p.kind, p.lower, p.upper) for p in parts] == [
        ("key", None, 10),
        ("key", 10, 20),
        ("key", 20, None),
        ("null", None, None),
    ]
    assert [p.id for p in parts] == [0, 1, 2, 3]
    assert key_partitions("k", [], nullable=False) == [Partition(0, "key", None, None, "k")]


@pytest.mark.parametrize("dialect", [postgresql.dialect(), mysql.dialect(), sqlite.dialect()])
def test_predicates_quote_names_and_values_and_pass_the_read_only_check(
    dialect: sa.engine.Dialect,
) -> None:
    evil = "O'Brien'; DROP TABLE t; --"
    part = Partition(1, "key", evil, "zz", 'we"ird col')
    where = part.where(dialect)
    assert where is not None
    sql = f"SELECT * FROM t WHERE {where}"
    check_read_only(sql, dialect.name)
    assert "O''Brien''; DROP TABLE t; --'" in where
    null = Partition(2, "null", column="k").where(dialect)
    assert null is not None and "IS NULL" in null
    assert Partition(0, "all").where(dialect) is None


def test_ctid_predicates() -> None:
    pg = postgresql.dialect()
    assert Partition(0, "ctid", 0, 8).where(pg) == "ctid >= '(0,0)'::tid AND ctid < '(8,0)'::tid"
    assert Partition(1, "ctid", 8, None).where(pg) == "ctid >= '(8,0)'::tid"
    assert Partition(0, "ctid", 8, 16).bounds() == {
        "kind": "ctid",
        "column": None,
        "lower": 8,
        "upper": 16,
    }


# ---------------------------------------------------------------- real servers


async def _counts(conn: AsyncConnection, table: str, parts: tuple[Partition, ...]) -> list[int]:
    counts = []
    for part in parts:
        where = part.where(conn.dialect) or "1 = 1"
        counts.append(
            int(await conn.scalar(sa.text(f"SELECT count(*) FROM {table} WHERE {where}")))
        )
    return counts


@pytest.fixture
async def pg(pg_url: str) -> AsyncIterator[AsyncEngine]:
    engine = rowstream.create_engine(pg_url)
    yield engine
    await engine.dispose()


@pytest.fixture
async def maria(mysql_url: str) -> AsyncIterator[AsyncEngine]:
    engine = rowstream.create_engine(mysql_url)
    yield engine
    await engine.dispose()


async def test_a_never_analyzed_table_is_split_in_balanced_ctid_ranges(pg: AsyncEngine) -> None:
    async with pg.begin() as conn:
        await conn.exec_driver_sql("DROP TABLE IF EXISTS part_fresh")
        await conn.exec_driver_sql(
            "CREATE TABLE part_fresh (id bigint PRIMARY KEY, note text) "
            "WITH (autovacuum_enabled = false)"
        )
        await conn.exec_driver_sql(
            "INSERT INTO part_fresh SELECT g, repeat('n', 40 + g % 20) "
            "FROM generate_series(1, 120000) g"
        )
    async with pg.connect() as conn:
        # What DuckDB's scanner sizes from: nothing, the table was never analyzed.
        relpages = await conn.scalar(
            sa.text("SELECT relpages FROM pg_class WHERE relname = 'part_fresh'")
        )
        assert relpages == 0
        plan = await plan_partitions(conn, "part_fresh", jobs=4, min_bytes=64 * 1024)
        assert plan.method == "ctid"
        assert len(plan) == 24
        counts = await _counts(conn, "part_fresh", plan.partitions)
        where = plan.partitions[3].where(conn.dialect)
        query = sa.text(f"EXPLAIN SELECT * FROM part_fresh WHERE {where}")
        explain = "\n".join((await conn.execute(query)).scalars())
    assert "Tid Range Scan" in explain
    assert sum(counts) == 120_000
    assert max(counts) <= 1.1 * min(counts), counts


async def test_a_mostly_toast_table_is_split_by_its_toast_bytes(pg: AsyncEngine) -> None:
    async with pg.begin() as conn:
        await conn.exec_driver_sql("DROP TABLE IF EXISTS part_toast")
        await conn.exec_driver_sql(
            "CREATE TABLE part_toast (id int PRIMARY KEY, pad text, body text) "
            "WITH (autovacuum_enabled = false)"
        )
        # EXTERNAL: out of line and not compressed, so TOAST holds the real size.
        await conn.exec_driver_sql("ALTER TABLE part_toast ALTER body SET STORAGE EXTERNAL")
        await conn.exec_driver_sql(
            "INSERT INTO part_toast SELECT g, repeat('p', 300), repeat(md5(g::text), 300) "
            "FROM generate_series(1, 6000) g"
        )
    async with pg.connect() as conn:
        heap = int(await conn.scalar(sa.text("SELECT pg_relation_size('part_toast')")))
        plan = await plan_partitions(conn, "part_toast", jobs=4, min_bytes=4 * 2**20)
        assert plan.relation_bytes is not None and plan.relation_bytes > 10 * heap
        # Sized from the heap alone this would be one partition.
        assert heap < 4 * 2**20
        assert len(plan) >= 12
        sizes = []
        for part in plan.partitions:
            sizes.append(
                int(
                    await conn.scalar(
                        sa.text(
                            "SELECT coalesce(sum(octet_length(body)), 0) FROM part_toast "
                            f"WHERE {part.where(conn.dialect)}"
                        )
                    )
                )
            )
        counts = await _counts(conn, "part_toast", plan.partitions)
    assert sum(counts) == 6000
    assert max(sizes) <= 1.25 * min(sizes), sizes


async def test_a_view_is_split_by_key_with_a_null_partition(pg: AsyncEngine) -> None:
    async with pg.begin() as conn:
        await conn.exec_driver_sql("DROP VIEW IF EXISTS part_view")
        await conn.exec_driver_sql("DROP TABLE IF EXISTS part_base")
        await conn.exec_driver_sql("CREATE TABLE part_base (id int PRIMARY KEY, k int)")
        await conn.exec_driver_sql(
            "INSERT INTO part_base SELECT g, CASE WHEN g % 10 = 0 THEN NULL ELSE g END "
            "FROM generate_series(1, 5000) g"
        )
        await conn.exec_driver_sql("CREATE VIEW part_view AS SELECT id, k FROM part_base")
    async with pg.connect() as conn:
        assert (await plan_partitions(conn, "part_view", jobs=2)).method == "single"
        plan = await plan_partitions(conn, "part_view", jobs=2, partition_by="k")
        assert plan.method == "key"
        assert plan.partitions[-1].kind == "null"
        assert len(plan) == 13
        counts = await _counts(conn, "part_view", plan.partitions)
    assert sum(counts) == 5000
    assert counts[-1] == 500


async def test_mariadb_key_ranges_from_a_sample_cover_every_row_once(maria: AsyncEngine) -> None:
    async with maria.begin() as conn:
        await conn.exec_driver_sql("DROP TABLE IF EXISTS part_m")
        await conn.exec_driver_sql(
            "CREATE TABLE part_m (id int PRIMARY KEY, code varchar(20) NULL, pad varchar(200))"
        )
        await conn.execute(
            sa.text("INSERT INTO part_m VALUES (:id, :code, :pad)"),
            [
                # Mixed case: the server's collation, not Python's, orders the boundaries.
                {"id": i, "code": None if i % 7 == 0 else f"{'aA'[i % 2]}{i:05d}", "pad": "x" * 150}
                for i in range(1, 20_001)
            ],
        )
        await conn.exec_driver_sql("ANALYZE TABLE part_m")
    async with maria.connect() as conn:
        by_pk = await plan_partitions(conn, "part_m", jobs=2, min_bytes=64 * 1024)
        assert by_pk.method == "key" and by_pk.column == "id"
        assert all(p.kind == "key" for p in by_pk.partitions)
        pk_counts = await _counts(conn, "part_m", by_pk.partitions)
        by_code = await plan_partitions(
            conn, "part_m", jobs=2, partition_by="code", min_bytes=64 * 1024
        )
        assert by_code.partitions[-1].kind == "null"
        code_counts = await _counts(conn, "part_m", by_code.partitions)
    assert sum(pk_counts) == 20_000
    assert len(by_pk) >= 6
    assert max(pk_counts) <= 1.5 * min(pk_counts), pk_counts
    assert sum(code_counts) == 20_000
    assert code_counts[-1] == 20_000 // 7


async def test_sqlite_is_one_reader(sqlite_url: str) -> None:
    engine = rowstream.create_engine(sqlite_url)
    try:
        async with engine.begin() as conn:
            await conn.exec_driver_sql("CREATE TABLE t (id integer primary key)")
            plan = await plan_partitions(conn, "t", jobs=4)
    finally:
        await engine.dispose()
    assert plan.method == "single" and len(plan) == 1
    assert "one reader" in plan.note


async def test_a_statement_that_is_not_a_single_read_is_refused_before_anything_is_sent(
    pg: AsyncEngine,
) -> None:
    t = sa.table("part_fresh", sa.column("id"))
    async with pg.connect() as conn:
        with pytest.raises(rowstream.UnsupportedQueryError):
            await plan_statement(
                conn, sa.select(t.c.id).with_for_update(), jobs=2, partition_by="id"
            )
        with pytest.raises(ConfigurationError, match="not a column of the statement"):
            await plan_statement(conn, sa.select(t.c.id), jobs=2, partition_by="nope")
        plan = await plan_statement(conn, sa.text("SELECT 1"), jobs=2)
        assert plan.method == "single" and "one reader" in plan.note
