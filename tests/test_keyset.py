"""Keyset pages, keys and the auto strategy, on every database."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, selectinload

import rowstream

ROWS = 3_000


class Base(DeclarativeBase):
    pass


class Parent(Base):
    __tablename__ = "ks_parent"

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    name: Mapped[str] = mapped_column(sa.String(30))


class Item(Base):
    __tablename__ = "ks_item"

    # A composite primary key: (grp, seq).
    grp: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    seq: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    parent_id: Mapped[int] = mapped_column(sa.ForeignKey("ks_parent.id"))
    code: Mapped[str] = mapped_column(sa.String(20), unique=True)
    maybe: Mapped[int | None] = mapped_column(unique=True)
    label: Mapped[str] = mapped_column(sa.String(30))
    parent: Mapped[Parent] = sa.orm.relationship()


def item_row(i: int) -> dict[str, object]:
    return {
        "grp": i % 7,
        "seq": i,
        "parent_id": 1 + i % 5,
        "code": f"c{i:06d}",
        "maybe": i if i % 2 else None,
        "label": f"item {i}",
    }


@pytest.fixture
async def engine(db_url: str) -> AsyncIterator[AsyncEngine]:
    engine = rowstream.create_engine(db_url)
    async with engine.begin() as conn:
        await conn.run_sync(Base.metadata.drop_all)
        await conn.run_sync(Base.metadata.create_all)
        await conn.execute(
            sa.insert(Parent), [{"id": i, "name": f"parent {i}"} for i in range(1, 6)]
        )
        await conn.execute(sa.insert(Item), [item_row(i) for i in range(ROWS)])
    yield engine
    await engine.dispose()


def expected_keys() -> list[tuple[int, int]]:
    return sorted((i % 7, i) for i in range(ROWS))


async def test_keyset_pages_composite_key_in_key_order(engine: AsyncEngine) -> None:
    async with rowstream.stream(engine, sa.select(Item), strategy="keyset", batch_rows=250) as rows:
        keys = [(item.grp, item.seq) async for item in rows]
        assert rows.key_columns == ("grp", "seq")
    assert keys == expected_keys()
    assert rows.stats.strategy == "keyset"
    assert rows.stats.batches == ROWS // 250
    assert engine.pool.checkedout() == 0


async def test_keyset_core_rows_with_filter(engine: AsyncEngine) -> None:
    table = Item.__table__
    statement = sa.select(table.c.seq, table.c.grp, table.c.label).where(table.c.grp != 3)
    async with rowstream.stream(engine, statement, strategy="keyset", batch_rows=100) as rows:
        got = [(row.grp, row.seq) async for row in rows]
    assert got == [k for k in expected_keys() if k[0] != 3]


async def test_explicit_unique_key_and_start_after(engine: AsyncEngine) -> None:
    statement = sa.select(Item.code, Item.seq)
    async with rowstream.stream(
        engine, statement, strategy="keyset", key="code", start_after=("c002990",)
    ) as rows:
        codes = [row.code async for row in rows]
    assert codes == [f"c{i:06d}" for i in range(2991, ROWS)]


async def test_cursor_reads_in_key_order_when_unordered(engine: AsyncEngine) -> None:
    async with rowstream.stream(engine, sa.select(Item), strategy="cursor", batch_rows=500) as rows:
        keys = [rows.key_of(item) async for item in rows]
    assert keys == expected_keys()
    assert rows.last_key == expected_keys()[-1]


async def test_nullable_key_is_refused_before_reading(engine: AsyncEngine) -> None:
    with pytest.raises(rowstream.StreamKeyError, match="nullable"):
        async with rowstream.stream(engine, sa.select(Item), strategy="keyset", key=Item.maybe):
            pass
    assert engine.pool.checkedout() == 0


async def test_non_unique_key_is_refused(engine: AsyncEngine) -> None:
    with pytest.raises(rowstream.StreamKeyError, match="not unique"):
        async with rowstream.stream(engine, sa.select(Item), strategy="keyset", key="label"):
            pass


async def test_key_must_be_selected(engine: AsyncEngine) -> None:
    with pytest.raises(rowstream.StreamKeyError, match="not selected"):
        async with rowstream.stream(engine, sa.select(Item.label), strategy="keyset"):
            pass


async def test_keyset_refuses_a_foreign_order(engine: AsyncEngine) -> None:
    statement = sa.select(Item).order_by(Item.label)
    with pytest.raises(rowstream.StreamKeyError, match="ordered by something else"):
        async with rowstream.stream(engine, statement, strategy="keyset"):
            pass
    # auto keeps the caller's order and reads it through the cursor.
    async with rowstream.stream(engine, statement) as rows:
        labels = [item.label async for item in rows]
    assert labels == sorted(f"item {i}" for i in range(ROWS))
    assert rows.stats.strategy == "cursor"


async def test_text_has_no_key(engine: AsyncEngine) -> None:
    with pytest.raises(rowstream.StreamKeyError, match="no usable key"):
        async with rowstream.stream(engine, "SELECT seq FROM ks_item", strategy="keyset"):
            pass


async def test_lightweight_table_key_comes_from_the_catalog(engine: AsyncEngine) -> None:
    table = sa.table("ks_item", sa.column("grp"), sa.column("seq"), sa.column("code"))
    async with rowstream.stream(
        engine, sa.select(table), strategy="keyset", batch_rows=999
    ) as rows:
        keys = [(row.grp, row.seq) async for row in rows]
        assert rows.key_columns == ("grp", "seq")
    assert keys == expected_keys()


async def test_selectinload_with_keyset_pages(engine: AsyncEngine) -> None:
    statement = sa.select(Item).options(selectinload(Item.parent))
    # On MySQL/MariaDB auto must choose keyset pages here: the cursor cannot share its
    # connection with selectinload's queries.
    async with rowstream.stream(engine, statement, batch_rows=400) as rows:
        names = [(item.seq, item.parent.name) async for item in rows]
    assert sorted(names) == sorted((i, f"parent {1 + i % 5}") for i in range(ROWS))
    if engine.dialect.name in {"mysql", "mariadb"}:
        assert rows.stats.strategy == "keyset"
