"""Streaming through PgBouncer 1.18 in transaction mode: detection, auto strategy, and twelve
concurrent streams given a URL, given strategy="keyset", and given create_engine(NullPool)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

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


SETTINGS = (
    "SELECT current_setting('jit'), current_setting('TimeZone'), "
    "current_setting('application_name')"
)


@pytest.mark.parametrize("path", ["direct", "pgbouncer"])
async def test_engine_settings_reach_the_stream(pg_url: str, pgbouncer_url: str, path: str) -> None:
    url = pg_url if path == "direct" else pgbouncer_url
    async with rowstream.stream(url, SETTINGS) as rows:
        ((jit, zone, name),) = [tuple(row) async for row in rows]
    assert zone == "UTC"
    assert name == "rowstream"
    if path == "pgbouncer":
        # Session settings do not stick behind a transaction pooler: JIT goes off per
        # transaction (SET LOCAL) there.
        assert jit == "off"


async def test_statement_caches_are_off(pg_url: str) -> None:
    engine = rowstream.create_engine(pg_url)
    try:
        async with engine.connect() as conn:
            raw = await conn.get_raw_connection()
            adapted: Any = raw.dbapi_connection
            assert adapted._prepared_statement_cache is None
            assert adapted.driver_connection._stmt_cache.get_max_size() == 0
        assert engine.pool._pre_ping  # type: ignore[attr-defined]
    finally:
        await engine.dispose()
