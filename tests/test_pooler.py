"""Streaming through PgBouncer 1.18 in transaction mode: detection, auto strategy, and twelve
concurrent streams given a URL, given strategy="keyset", and given create_engine(NullPool)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import asyncpg
import pytest
import sqlalchemy as sa
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.pool import NullPool

import rowstream
from rowstream._pooler import inspect_path

STREAMS = 12
ROWS = 100_000
TABLE = sa.table("rs_pooled", sa.column("id"), sa.column("label"))


@pytest.fixture(scope="module")
def pooled_table(servers: object) -> Iterator[None]:
    pg_url: str = servers.pg_url  # type: ignore[attr-defined]
    dsn = make_url(pg_url).set(drivername="postgresql").render_as_string(hide_password=False)

    async def build() -> None:
        conn = await asyncpg.connect(dsn)
        try:
            await conn.execute("DROP TABLE IF EXISTS rs_pooled")
            await conn.execute(
                "CREATE TABLE rs_pooled (id bigint PRIMARY KEY, label text NOT NULL)"
            )
            await conn.execute(
                f"INSERT INTO rs_pooled SELECT g, 'row ' || g FROM generate_series(1, {ROWS}) g"
            )
        finally:
            await conn.close()

    asyncio.run(build())
    yield


async def test_transaction_pooling_is_detected(pg_url: str, pgbouncer_url: str) -> None:
    direct = rowstream.create_engine(pg_url)
    pooled = rowstream.create_engine(pgbouncer_url)
    try:
        assert not (await inspect_path(direct)).pooler
        through = await inspect_path(pooled)
        assert through.pooler and through.transaction_pooling
        assert through.wants_short_transactions
    finally:
        await direct.dispose()
        await pooled.dispose()


async def _read_all(source: str | AsyncEngine, **options: object) -> tuple[str, list[int]]:
    async with rowstream.stream(source, sa.select(TABLE), **options) as rows:  # type: ignore[arg-type]
        ids: list[int] = []
        async for batch in rows.batches():
            ids.extend(row.id for row in batch)
            assert all(row.label == f"row {row.id}" for row in batch)
    return rows.stats.strategy, ids


@pytest.mark.parametrize("given", ["url", "keyset", "nullpool-engine"])
async def test_twelve_concurrent_streams(
    pooled_table: None, pgbouncer_url: str, given: str
) -> None:
    engine: AsyncEngine | None = None
    if given == "url":
        sources: list[str | AsyncEngine] = [pgbouncer_url] * STREAMS
        options: dict[str, object] = {}
    elif given == "keyset":
        engine = rowstream.create_engine(pgbouncer_url)
        sources = [engine] * STREAMS
        options = {"strategy": "keyset"}
    else:
        engine = rowstream.create_engine(pgbouncer_url, poolclass=NullPool)
        sources = [engine] * STREAMS
        options = {}
    try:
        results = await asyncio.gather(*(_read_all(s, **options) for s in sources))
    finally:
        if engine is not None:
            await engine.dispose()
    expected = list(range(1, ROWS + 1))
    for strategy, ids in results:
        assert ids == expected
        # Behind a transaction pooler, auto reads by keyset pages too.
        assert strategy == "keyset"
