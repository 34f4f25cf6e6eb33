"""A key the catalog does not vouch for is refused with the real reason, on every database."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import sqlalchemy as sa

import rowstream
import rowstream.sync
from rowstream import StreamKeyError

TABLE = sa.table("keys_t", sa.column("a"), sa.column("b"), sa.column("c"))


@pytest.fixture
async def keys_table(db_url: str) -> AsyncIterator[str]:
    # a: unique but nullable, b: neither unique nor NOT NULL, c: NOT NULL but not unique.
    engine = rowstream.create_engine(db_url)
    try:
        async with engine.begin() as conn:
            await conn.exec_driver_sql("DROP TABLE IF EXISTS keys_t")
            await conn.exec_driver_sql("CREATE TABLE keys_t (a int UNIQUE, b int, c int NOT NULL)")
            await conn.exec_driver_sql("INSERT INTO keys_t VALUES (1, 1, 1), (NULL, NULL, 2)")
        yield db_url
    finally:
        async with engine.begin() as conn:
            await conn.exec_driver_sql("DROP TABLE IF EXISTS keys_t")
        await engine.dispose()


async def _refusal(url: str, key: str) -> str:
    with pytest.raises(StreamKeyError) as caught:
        async with rowstream.stream(url, sa.select(TABLE), key=key) as rows:
            [r async for r in rows]
    with (
        pytest.raises(StreamKeyError) as sync_caught,
        rowstream.sync.stream(url, sa.select(TABLE), key=key) as sync_rows,
    ):
        list(sync_rows)
    assert str(sync_caught.value) == str(caught.value)
    return str(caught.value)


async def test_a_nullable_key_is_called_nullable(keys_table: str) -> None:
    unique_but_nullable = await _refusal(keys_table, "a")
    assert "key (a) of keys_t is nullable: its NULLs cannot be ordered past" in unique_but_nullable
    assert "not unique" not in unique_but_nullable
    neither = await _refusal(keys_table, "b")
    assert "key (b) of keys_t is nullable" in neither
    assert "it is not unique either" in neither
    not_unique = await _refusal(keys_table, "c")
    assert "key (c) of keys_t is not unique" in not_unique
    assert "nullable" not in not_unique
