"""The cursor strategy's clean-up on MariaDB: leaving early stops the query on the server."""

from __future__ import annotations

import asyncio

import sqlalchemy as sa

import rowstream

SLOW = "SELECT SLEEP(30) AS slept /* rs-slow-query */"
RUNNING = sa.text(
    "SELECT COUNT(*) FROM information_schema.processlist "
    "WHERE info LIKE '%rs-slow-query%' AND info NOT LIKE '%processlist%'"
)


async def _running(engine: sa.ext.asyncio.AsyncEngine) -> int:
    async with engine.connect() as conn:
        return int((await conn.execute(RUNNING)).scalar_one())


async def test_cancelling_a_query_still_computing_kills_it(mysql_url: str) -> None:
    engine = rowstream.create_engine(mysql_url)

    async def consume() -> None:
        async with rowstream.stream(engine, SLOW) as rows:
            async for _ in rows:
                pass

    try:
        task = asyncio.create_task(consume())
        for _ in range(50):
            await asyncio.sleep(0.1)
            if await _running(engine):
                break
        assert await _running(engine) == 1
        task.cancel()
        done, _ = await asyncio.wait([task], timeout=5)
        assert done and task.cancelled()
        # Closing the socket alone leaves a query that is not sending rows running for its
        # 30 s; KILL QUERY stops it at once.
        for _ in range(20):
            if await _running(engine) == 0:
                break
            await asyncio.sleep(0.1)
        assert await _running(engine) == 0
        assert engine.pool.checkedout() == 0  # type: ignore[attr-defined]
    finally:
        await engine.dispose()
