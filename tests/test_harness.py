"""The harness itself: every server and broker answers, PgBouncer pools by transaction, and the
private instances a fresh machine needs really start (and stop)."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import asyncpg
import kombu
import pytest
import redis
import sqlalchemy as sa
from sqlalchemy.engine import make_url

import rowstream
from tests.plugins import _bringup


async def _select_one(url: str) -> object:
    engine = rowstream.create_engine(url)
    try:
        async with engine.connect() as conn:
            return (await conn.execute(sa.text("SELECT 1"))).scalar()
    finally:
        await engine.dispose()


async def test_every_database_answers(db_url: str) -> None:
    assert await _select_one(db_url) == 1


async def test_each_test_session_has_a_database_of_its_own(pg_url: str, mysql_url: str) -> None:
    # Two test runs on one machine (two engineers, CI and a developer) must not share
    # tables: each session creates rowstream_test_<pid> and drops it at the end.
    for url in (pg_url, mysql_url):
        assert (make_url(url).database or "").startswith(_bringup.RUN_DATABASE_PREFIX)


async def _connect(url: str) -> asyncpg.Connection:
    parsed = make_url(url)
    return await asyncpg.connect(
        host=parsed.host,
        port=parsed.port,
        user=parsed.username,
        database=parsed.database,
        statement_cache_size=0,
    )


async def test_pgbouncer_pools_by_transaction(pgbouncer_url: str, pg_url: str) -> None:
    direct = await _connect(pg_url)
    a = await _connect(pgbouncer_url)
    b = await _connect(pgbouncer_url)
    try:
        default_work_mem = await direct.fetchval("SHOW work_mem")
        # Two clients, both still connected, in turn get the same server backend: the
        # backend went back to the pool when a's transaction ended (session pooling would
        # pin one backend to each client).
        pid_a = await a.fetchval("SELECT pg_backend_pid()")
        pid_b = await b.fetchval("SELECT pg_backend_pid()")
        assert pid_a == pid_b

        # Session state does not stay with the client that set it: b's SET is left on the
        # backend, which a picks up next, while b itself lands on another backend.
        await b.execute("SET work_mem = '77MB'")
        async with a.transaction():
            assert await a.fetchval("SHOW work_mem") == "77MB"
            assert await b.fetchval("SHOW work_mem") == default_work_mem
            # While a holds its backend in a transaction, b is served by a different one.
            assert await a.fetchval("SELECT pg_backend_pid()") != await b.fetchval(
                "SELECT pg_backend_pid()"
            )
        await a.execute("RESET work_mem")
    finally:
        for conn in (a, b, direct):
            await conn.close()


@pytest.mark.slow
def test_private_instances_start_answer_and_stop(tmp_path: Path) -> None:
    # The path a fresh machine takes (nothing at the standard ports), taken for real here:
    # private PostgreSQL, MariaDB and PgBouncer on free ports, a run database on each.
    with _bringup.Stack(tmp_path, private=True) as stack:
        pg = stack.run_database(stack.postgresql())
        my = stack.run_database(stack.mariadb())
        bouncer = stack.pgbouncer(pg)
        urls = (pg, my, bouncer)
        ports = [make_url(url).port for url in urls]
        assert 5432 not in ports and 3306 not in ports
        for url in urls:
            assert asyncio.run(_select_one(url)) == 1
        data_dirs = list(stack._dirs)
    for port in ports:
        assert port is not None and not _bringup.answers("127.0.0.1", port)
    assert not any(path.exists() for path in data_dirs)


def _round_trip(url: str) -> object:
    """Publish one message to a fresh queue and read it back (kombu, bounded waits)."""
    with kombu.Connection(url, connect_timeout=5) as conn:
        # auto_delete: the queue goes with its consumer, so nothing is left on the broker.
        name = f"rowstream-harness-{os.getpid()}"
        with conn.SimpleQueue(name, queue_opts={"auto_delete": True}) as queue:
            queue.put({"n": 1})
            message = queue.get(block=True, timeout=5)
            message.ack()
            payload = message.payload
    if url.startswith("redis://"):
        # kombu's Redis transport keeps a queue's bindings in keys of their own.
        client = redis.Redis.from_url(url, socket_timeout=5)
        client.delete(f"_kombu.binding.{name}", f"_kombu.binding_permanent.{name}")
        client.close()
    return payload


def test_every_broker_carries_a_message(broker_url: str) -> None:
    assert _round_trip(broker_url) == {"n": 1}


@pytest.mark.slow
def test_private_brokers_start_answer_and_stop(tmp_path: Path) -> None:
    # What a fresh machine gets: a private Redis and a private RabbitMQ node on free ports.
    with _bringup.Stack(tmp_path, private=True) as stack:
        urls = (stack.redis(), stack.rabbitmq())
        ports = [make_url(url.replace("amqp://", "postgresql://")).port for url in urls]
        assert 6379 not in ports and 5672 not in ports
        for url in urls:
            assert _round_trip(url) == {"n": 1}
        data_dirs = list(stack._dirs)
    for port in ports:
        assert port is not None and not _bringup.answers("127.0.0.1", port)
    assert not any(path.exists() for path in data_dirs)
