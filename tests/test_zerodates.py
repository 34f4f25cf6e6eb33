"""MariaDB zero dates through ``rowstream.stream`` and ``process``: refused naming the column,
or None, or the server's text, as ``zero_dates=`` says (issue 10), on both faces (asyncmy,
PyMySQL), both strategies, for Core rows, ORM entities and ``text()``, and across a resume.

The drivers hand a zero date back as a ``str`` in a date column; the expected text is the
server's own (``CAST(col AS CHAR)``), the genuine values are Python literals.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Iterator
from typing import Any

import pymysql  # type: ignore[import-untyped]
import pytest
import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

import rowstream
import rowstream.sync
from rowstream._strategy import StrategyName
from rowstream._zerodates import ZeroDates
from tests.faults import Killer, _my_args

TABLE = "rs_zero_dates"
DDL = f"CREATE TABLE {TABLE} (id int PRIMARY KEY, d date, dt datetime(6), ts timestamp(6) NULL)"
# Inserted with sql_mode = '' (zero dates allowed), in a UTC session.
ROWS = f"""
INSERT INTO {TABLE} VALUES
(1, '1000-01-01', '1000-01-01 00:00:00', '1970-01-01 00:00:01'),
(2, '9999-12-31', '9999-12-31 23:59:59.999999', '2038-01-19 03:14:07.999999'),
(3, '0000-00-00', '0000-00-00 00:00:00', '0000-00-00 00:00:00'),
(4, '2024-00-15', '2024-01-00 10:00:00', NULL),
(5, NULL, NULL, NULL),
(6, '2024-02-29', '2024-02-29 12:00:00.5', '2024-02-29 12:00:00.5')
"""
# A day February does not have: stored only with ALLOW_INVALID_DATES.
INVALID = f"INSERT INTO {TABLE} VALUES (7, '2024-02-31', NULL, NULL)"
COLUMNS = ("d", "dt", "ts")
GENUINE: dict[int, tuple[Any, ...]] = {
    1: (dt.date(1000, 1, 1), dt.datetime(1000, 1, 1), dt.datetime(1970, 1, 1, 0, 0, 1)),
    2: (
        dt.date(9999, 12, 31),
        dt.datetime(9999, 12, 31, 23, 59, 59, 999999),
        dt.datetime(2038, 1, 19, 3, 14, 7, 999999),
    ),
    5: (None, None, None),
    6: (
        dt.date(2024, 2, 29),
        dt.datetime(2024, 2, 29, 12, 0, 0, 500000),
        dt.datetime(2024, 2, 29, 12, 0, 0, 500000),
    ),
}
# Which rows hold no date in which column: None for a NULL beside them.
NO_DATE = {
    3: ("d", "dt", "ts"),
    4: ("d", "dt"),
    7: ("d",),
}
FACES = ["async", "sync"]
STRATEGIES: list[StrategyName] = ["cursor", "keyset"]


class Base(DeclarativeBase):
    pass


class Event(Base):
    __tablename__ = TABLE

    id: Mapped[int] = mapped_column(primary_key=True)
    d: Mapped[dt.date | None] = mapped_column(sa.Date)
    at: Mapped[dt.datetime | None] = mapped_column("dt", sa.DateTime)
    ts: Mapped[dt.datetime | None] = mapped_column(sa.TIMESTAMP)


def _core(ids: list[int] | None = None, *columns: str) -> Any:
    table = Event.__table__
    picked = [table.c.id, *(table.c[c] for c in columns or COLUMNS)]
    statement = sa.select(*picked)
    return statement if ids is None else statement.where(table.c.id.in_(ids))


def _admin(url: str) -> Any:
    conn = pymysql.connect(**_my_args(url))
    with conn.cursor() as cur:
        cur.execute("SET time_zone = '+00:00'")
    return conn


@pytest.fixture
def zero_table(mysql_url: str) -> Iterator[str]:
    admin = _admin(mysql_url)
    try:
        with admin.cursor() as cur:
            # Zero dates are what this file is about: a session that allows them.
            cur.execute("SET SESSION sql_mode = ''")
            cur.execute(f"DROP TABLE IF EXISTS {TABLE}")
            cur.execute(DDL)
            cur.execute(ROWS)
            cur.execute("SET SESSION sql_mode = 'ALLOW_INVALID_DATES'")
            cur.execute(INVALID)
        yield mysql_url
    finally:
        with admin.cursor() as cur:
            cur.execute(f"DROP TABLE IF EXISTS {TABLE}")
        admin.close()


def server_text(url: str) -> dict[int, tuple[str | None, ...]]:
    """Every row's values as the server writes them (``CAST(col AS CHAR)``)."""
    admin = _admin(url)
    try:
        with admin.cursor() as cur:
            casts = ", ".join(f"CAST({c} AS CHAR)" for c in COLUMNS)
            cur.execute(f"SELECT id, {casts} FROM {TABLE}")
            return {row[0]: tuple(row[1:]) for row in cur.fetchall()}
    finally:
        admin.close()


def _read(face: str, url: str, statement: Any, **options: Any) -> list[Any]:
    """Every item of a stream of ``statement`` on ``face`` (async: asyncmy; sync: PyMySQL)."""
    if face == "sync":
        with rowstream.sync.stream(url, statement, batch_rows=2, **options) as rows:
            return list(rows)

    async def read() -> list[Any]:
        async with rowstream.stream(url, statement, batch_rows=2, **options) as rows:
            return [item async for item in rows]

    return asyncio.run(read())


def _values(item: Any) -> tuple[Any, ...]:
    if isinstance(item, Event):
        return (item.d, item.at, item.ts)
    return tuple(item[1:])


def _expected(url: str, choice: str) -> dict[int, tuple[Any, ...]]:
    """What every row must come as under ``choice`` ("null" or "text")."""
    text = server_text(url)
    expected = dict(GENUINE)
    for row, columns in NO_DATE.items():
        expected[row] = tuple(
            (None if choice == "null" else text[row][i]) if c in columns else None
            for i, c in enumerate(COLUMNS)
        )
    return expected


def _assert_refusal(error: BaseException, column: str, text: str, typname: str) -> None:
    assert isinstance(error, rowstream.QueryError)
    message = str(error)
    assert message.startswith(f"column {column!r} ({typname}) holds the "), message
    assert f" date {text!r}, " in message
    assert "zero_dates='null'" in message and "zero_dates='text'" in message
    python = "date" if typname == "date" else "datetime"
    assert f"which Python's {python} cannot hold" in message
    assert error.context == {"column": column}
    assert "\n" not in message and "Traceback" not in message and "Error" not in message


# The row, its column, its type, whether it is a zero date (else an invalid one).
REFUSED = [
    (3, "d", "date"),
    (3, "dt", "datetime"),
    (3, "ts", "timestamp"),
    (4, "d", "date"),
    (4, "dt", "datetime"),
    (7, "d", "date"),
]


@pytest.mark.parametrize("face", FACES)
@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize(("row", "column", "typname"), REFUSED)
def test_refused_by_default_naming_column_and_value(
    zero_table: str, face: str, strategy: str, row: int, column: str, typname: str
) -> None:
    text = server_text(zero_table)[row][COLUMNS.index(column)]
    assert text is not None
    # Genuine values and a NULL in the batches before it, and the same batch.
    with pytest.raises(rowstream.QueryError) as caught:
        _read(face, zero_table, _core([1, 2, 5, 6, row], column), strategy=strategy)
    _assert_refusal(caught.value, column, text, typname)
    kind = "zero" if row != 7 else "invalid"
    assert f"holds the {kind} date {text!r}" in str(caught.value)


@pytest.mark.parametrize("face", FACES)
@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("choice", ["null", "text"])
def test_null_and_text(zero_table: str, face: str, strategy: str, choice: str) -> None:
    rows = _read(face, zero_table, _core(), strategy=strategy, zero_dates=choice)
    got = {row.id: tuple(row[1:]) for row in rows}
    assert got == _expected(zero_table, choice)
    if choice == "text":
        assert got[3] == ("0000-00-00", "0000-00-00 00:00:00.000000", "0000-00-00 00:00:00.000000")
        assert got[4][:2] == ("2024-00-15", "2024-01-00 10:00:00.000000")


@pytest.mark.parametrize("face", FACES)
@pytest.mark.parametrize("strategy", STRATEGIES)
def test_genuine_values_stream_unchanged_under_every_choice(
    zero_table: str, face: str, strategy: str
) -> None:
    for choice in ("refuse", "null", "text"):
        rows = _read(face, zero_table, _core([1, 2, 5, 6]), strategy=strategy, zero_dates=choice)
        assert {row.id: tuple(row[1:]) for row in rows} == GENUINE, choice


@pytest.mark.parametrize("face", FACES)
@pytest.mark.parametrize("strategy", STRATEGIES)
def test_orm_entities(zero_table: str, face: str, strategy: str) -> None:
    statement = sa.select(Event).where(Event.id.in_([1, 2, 4, 5, 6]))
    with pytest.raises(rowstream.QueryError) as caught:
        _read(face, zero_table, statement, strategy=strategy)
    # The entity's attribute is named (the first refused one the entity holds).
    column = caught.value.context["column"]
    text, typname = {"d": ("2024-00-15", "date"), "at": ("2024-01-00 10:00:00.000000", "datetime")}[
        column
    ]
    _assert_refusal(caught.value, column, text, typname)
    for choice in ("null", "text"):
        events = _read(face, zero_table, statement, strategy=strategy, zero_dates=choice)
        expected = _expected(zero_table, choice)
        assert {e.id: _values(e) for e in events} == {i: expected[i] for i in (1, 2, 4, 5, 6)}


@pytest.mark.parametrize("face", FACES)
def test_text_statements(zero_table: str, face: str) -> None:
    query = sa.text(f"SELECT id, d, dt, ts FROM {TABLE} ORDER BY id")
    with pytest.raises(rowstream.QueryError) as caught:
        _read(face, zero_table, query)
    _assert_refusal(caught.value, "d", "0000-00-00", "date")
    for choice in ("null", "text"):
        rows = _read(face, zero_table, query, zero_dates=choice)
        assert {row.id: tuple(row[1:]) for row in rows} == _expected(zero_table, choice)


async def test_process_on_both_faces(zero_table: str) -> None:
    seen: list[Any] = []

    def handler(batch: list[Any]) -> None:
        seen.extend(tuple(row[1:]) for row in batch)

    statement = _core([1, 3])
    with pytest.raises(rowstream.QueryError) as caught:
        await rowstream.process(zero_table, statement, handler)
    _assert_refusal(caught.value, "d", "0000-00-00", "date")
    with pytest.raises(rowstream.QueryError):
        rowstream.sync.process(zero_table, statement, handler)
    seen.clear()
    await rowstream.process(zero_table, statement, handler, zero_dates="null")
    assert sorted(seen, key=repr) == sorted([GENUINE[1], (None, None, None)], key=repr)
    seen.clear()
    rowstream.sync.process(zero_table, statement, handler, zero_dates="text")
    zero = _expected(zero_table, "text")[3]
    assert sorted(seen, key=repr) == sorted([GENUINE[1], zero], key=repr)


@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("choice", ["null", "text"])
async def test_a_resumed_stream_keeps_the_choice(
    zero_table: str, strategy: StrategyName, choice: ZeroDates
) -> None:
    # The drop lands as the cursor's statement starts (cursor) or before a page's rollback
    # (keyset): the stream resumes on a new connection, which must read zero dates the same way.
    killer = Killer(zero_table, zero_table)
    killer.pending = "execute" if strategy == "cursor" else "rollback"
    try:
        async with rowstream.stream(
            killer.engine,
            _core(),
            strategy=strategy,
            batch_rows=2,
            backoff=0.05,
            zero_dates=choice,
        ) as rows:
            got = {row.id: tuple(row[1:]) async for row in rows}
        assert killer.kills == 1 and rows.stats.reconnects >= 1
    finally:
        await killer.aclose()
    assert got == _expected(zero_table, choice)


def test_a_resumed_sync_stream_keeps_the_choice(zero_table: str) -> None:
    engine = rowstream.sync.create_engine(zero_table)
    admin = _admin(zero_table)
    pending = [True]

    @event.listens_for(engine, "rollback")
    def kill(conn: Any) -> None:
        # The end of the first keyset page: a drop the stream resumes from.
        if pending:
            pending.clear()
            with admin.cursor() as cur:
                cur.execute(f"KILL CONNECTION {int(conn.connection.driver_connection.thread_id())}")

    try:
        with rowstream.sync.stream(
            engine, _core(), strategy="keyset", batch_rows=2, backoff=0.05, zero_dates="null"
        ) as rows:
            got = {row.id: tuple(row[1:]) for row in rows}
        assert not pending and rows.stats.reconnects >= 1
    finally:
        engine.dispose()
        admin.close()
    assert got == _expected(zero_table, "null")


async def test_a_borrowed_connection_leaves_as_it_came(zero_table: str) -> None:
    # The caller's connection gets its driver's own converters back after the stream.
    engine = rowstream.create_engine(zero_table)
    query = sa.text(f"SELECT d FROM {TABLE} WHERE id = 3")
    try:
        async with engine.connect() as conn:
            async with rowstream.stream(conn, query, zero_dates="null") as rows:
                assert [r.d async for r in rows] == [None]
            assert (await conn.execute(query)).scalar_one() == "0000-00-00"
    finally:
        await engine.dispose()
    sync_engine = rowstream.sync.create_engine(zero_table)
    try:
        with sync_engine.connect() as sync_conn:
            with pytest.raises(rowstream.QueryError), rowstream.sync.stream(sync_conn, query) as rs:
                list(rs)
            assert sync_conn.execute(query).scalar_one() == "0000-00-00"
    finally:
        sync_engine.dispose()


async def test_asyncmy_prepared_statements_do_not_hide_zero_dates(zero_table: str) -> None:
    # With asyncmy's statement cache on, a query with parameters runs as a prepared statement,
    # whose binary rows make a zero date None, like NULL; the stream reads as text instead.
    engine = rowstream.create_engine(zero_table, connect_args={"stmt_cache_size": 16})
    statement = _core([1, 3], "d")
    try:
        async with engine.connect() as conn:
            binary = (await conn.execute(statement.order_by(Event.id))).all()
            assert [tuple(r) for r in binary] == [(1, dt.date(1000, 1, 1)), (3, None)]
        for strategy in STRATEGIES:
            with pytest.raises(rowstream.QueryError) as caught:
                async with rowstream.stream(engine, statement, strategy=strategy) as rows:
                    [r async for r in rows]
            _assert_refusal(caught.value, "d", "0000-00-00", "date")
            async with rowstream.stream(
                engine, statement, strategy=strategy, zero_dates="text"
            ) as rows:
                assert [tuple(r) async for r in rows] == [
                    (1, dt.date(1000, 1, 1)),
                    (3, "0000-00-00"),
                ]
    finally:
        await engine.dispose()


@pytest.mark.parametrize("face", FACES)
def test_unknown_choice_is_refused_before_connecting(face: str) -> None:
    url, query = "mysql://nowhere.invalid/db", sa.text("SELECT 1")
    calls: list[Any] = [
        lambda: rowstream.stream(url, query, zero_dates="maybe"),  # type: ignore[arg-type]
        lambda: asyncio.run(rowstream.process(url, query, print, zero_dates="maybe")),  # type: ignore[arg-type]
    ]
    if face == "sync":
        calls = [
            lambda: rowstream.sync.stream(url, query, zero_dates="maybe"),  # type: ignore[arg-type]
            lambda: rowstream.sync.process(url, query, print, zero_dates="maybe"),  # type: ignore[arg-type]
        ]
    for call in calls:
        with pytest.raises(rowstream.ConfigurationError) as caught:
            call()
        assert str(caught.value) == ("unknown zero_dates 'maybe': choose one of refuse, null, text")


@pytest.mark.parametrize("face", FACES)
@pytest.mark.parametrize("database", ["postgresql", "sqlite"])
def test_no_effect_on_postgresql_and_sqlite(
    pg_url: str, sqlite_url: str, face: str, database: str
) -> None:
    # Neither has zero dates: a date stays a date, and SQLite's text '0000-00-00' (SQLite has
    # no date type) stays text, under every choice.
    if database == "postgresql":
        url, query = pg_url, sa.text("SELECT DATE '2024-02-29' AS d, NULL::date AS n")
        expected: tuple[Any, ...] = (dt.date(2024, 2, 29), None)
    else:
        url, query = sqlite_url, sa.text("SELECT '0000-00-00' AS d, NULL AS n")
        expected = ("0000-00-00", None)
    for choice in ("refuse", "null", "text"):
        assert [tuple(r) for r in _read(face, url, query, zero_dates=choice)] == [expected]


KEYED = "rs_zero_keyed"


@pytest.fixture
def date_keyed(mysql_url: str) -> Iterator[str]:
    admin = _admin(mysql_url)
    try:
        with admin.cursor() as cur:
            cur.execute("SET SESSION sql_mode = ''")
            cur.execute(f"DROP TABLE IF EXISTS {KEYED}")
            cur.execute(f"CREATE TABLE {KEYED} (d date PRIMARY KEY, v int)")
            cur.execute(
                f"INSERT INTO {KEYED} VALUES ('0000-00-00', 1), ('2024-00-15', 2), "
                "('2024-01-01', 3), ('2024-01-02', 4), ('2024-01-03', 5)"
            )
        yield mysql_url
    finally:
        with admin.cursor() as cur:
            cur.execute(f"DROP TABLE IF EXISTS {KEYED}")
        admin.close()


@pytest.mark.parametrize("face", FACES)
def test_zero_dates_in_a_key_column(date_keyed: str, face: str) -> None:
    keyed = sa.table(KEYED, sa.column("d", sa.Date), sa.column("v", sa.Integer))
    statement = sa.select(keyed.c.d, keyed.c.v)
    # As text, the key still orders the pages: MariaDB compares its own text with the column.
    rows = _read(face, date_keyed, statement, key="d", strategy="keyset", zero_dates="text")
    assert [tuple(r) for r in rows] == [
        ("0000-00-00", 1),
        ("2024-00-15", 2),
        (dt.date(2024, 1, 1), 3),
        (dt.date(2024, 1, 2), 4),
        (dt.date(2024, 1, 3), 5),
    ]
    # As None, no page can start after it: refused in one line, never rows left out.
    with pytest.raises(rowstream.StreamKeyError) as caught:
        _read(face, date_keyed, statement, key="d", strategy="keyset", zero_dates="null")
    message = str(caught.value)
    assert message.startswith("the key (d) of a row came as None, and rows cannot be read")
    assert "zero_dates='null'" in message and "\n" not in message
