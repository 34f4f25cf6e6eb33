"""Resume on every path: streams whose connections are killed five times each, at different
points (mid-fetch, between pages, as a statement starts, in a keyset page's rollback), on
PostgreSQL directly, through PgBouncer and on MariaDB, must deliver every row exactly once, in
order. And a key that is not really unique is caught where keyset pages would lose rows.

The acceptance run (20 streams per combination, a bigger table) is
``bench/faults_terminations.py``; this file runs three streams per combination.
"""

from __future__ import annotations

import asyncio

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

import rowstream
from tests import faults

ROWS = 40_000
STREAMS = 3


@pytest.fixture(scope="module")
def fault_table(servers: object) -> None:
    faults.make_table(servers.pg_url, ROWS)  # type: ignore[attr-defined]
    faults.make_table(servers.mysql_url, ROWS)  # type: ignore[attr-defined]


@pytest.mark.parametrize("strategy", ["cursor", "keyset"])
@pytest.mark.parametrize("path", ["direct", "pgbouncer", "mariadb"])
async def test_five_terminations_per_stream_lose_and_repeat_nothing(
    fault_table: None, pg_url: str, pgbouncer_url: str, mysql_url: str, path: str, strategy: str
) -> None:
    stream_url = {"direct": pg_url, "pgbouncer": pgbouncer_url, "mariadb": mysql_url}[path]
    admin_url = mysql_url if path == "mariadb" else pg_url
    for seed in range(STREAMS):
        outcome = await faults.terminated_stream(
            stream_url, admin_url, strategy, ROWS, batch_rows=500, seed=seed
        )
        assert outcome.error is None, f"stream {seed}: {outcome}"
        assert outcome.exact
        assert outcome.kills == 5, outcome


async def test_a_drop_in_the_rollback_after_a_page_resumes(fault_table: None, pg_url: str) -> None:
    """The rollback that ends every keyset page sat outside the translation: a backend killed
    right before it escaped as a raw DBAPIError ("cannot switch to state 15")."""
    killer = faults.Killer(pg_url, pg_url)
    seen = 0
    try:
        async with rowstream.stream(
            killer.engine,
            sa.select(sa.table(faults.TABLE, sa.column("id"))),
            strategy="keyset",
            key="id",
            batch_rows=5_000,
            backoff=0.01,
        ) as rows:
            async for batch in rows.batches():
                assert batch[0].id == seen + 1
                seen += len(batch)
                if seen in (5_000, 15_000):
                    killer.pending = "rollback"
        assert seen == ROWS
        assert killer.kills == 2
        assert rows.stats.reconnects == 2
    finally:
        await killer.aclose()


class _Base(DeclarativeBase):
    pass


class Reading(_Base):
    """An ORM model that declares a non-unique column its primary key."""

    __tablename__ = "rs_not_unique"
    sensor: Mapped[int] = mapped_column(primary_key=True)
    value: Mapped[int]


async def test_a_key_that_is_not_unique_is_caught_at_the_page_boundary(db_url: str) -> None:
    engine = rowstream.create_engine(db_url)
    try:
        async with engine.begin() as conn:
            await conn.exec_driver_sql("DROP TABLE IF EXISTS rs_not_unique")
            # The real table has no key: the model's metadata alone claims sensor unique.
            await conn.exec_driver_sql("CREATE TABLE rs_not_unique (sensor INT, value INT)")
            values = [{"sensor": i // 3, "value": i} for i in range(30)]
            await conn.execute(sa.insert(Reading.__table__), values)
        with pytest.raises(rowstream.StreamKeyError, match=r"\(sensor\) is not unique: 1 ") as e:
            async with rowstream.stream(
                engine, sa.select(Reading), strategy="keyset", batch_rows=4
            ) as rows:
                async for _ in rows:
                    pass
        assert e.value.context == {"key": "sensor", "value": 1}
        # Duplicates inside a page lose nothing; only the boundary matters: pages of 3 are fine.
        async with rowstream.stream(
            engine, sa.select(Reading.sensor, Reading.value), strategy="keyset", batch_rows=3
        ) as rows:
            assert len([r async for r in rows]) == 30
    finally:
        async with engine.begin() as conn:
            await conn.exec_driver_sql("DROP TABLE IF EXISTS rs_not_unique")
        await engine.dispose()


async def test_mariadb_kill_in_the_rollback_after_a_page_resumes(
    fault_table: None, mysql_url: str
) -> None:
    """MariaDB's 2013 (lost connection) in a page's rollback used to escape raw."""
    outcome = await faults.terminated_stream(
        mysql_url, mysql_url, "keyset", ROWS, kills=2, batch_rows=2_000, seed=1
    )
    assert outcome.error is None, outcome
    assert outcome.exact and outcome.kills == 2
    await asyncio.sleep(0)
