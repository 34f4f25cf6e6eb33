"""PostgreSQL dates and timestamps through ``rowstream.stream``: exact, or refused naming the
column (issue 10), on both faces, both strategies, straight and through PgBouncer.

asyncpg's own codecs turn ``infinity`` into ``date.max``/``datetime.max``, the very values of a
real 9999-12-31 (an "open-ended" sentinel that must keep streaming); psycopg refuses infinity
without naming the column. rowstream._temporal decodes both ways exactly.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest
import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

import rowstream
import rowstream.sync

TABLE = "rs_stream_types"
UTC = dt.UTC
MAX_TS = dt.datetime.max

# id, d, ts, tstz, ad (SQL literals); rows 1-3 hold values Python holds, the rest one each
# that it does not.
ROWS = [
    (
        1,
        "'2024-02-29'",
        "'2024-02-29 12:34:56.5'",
        "'2024-02-29 12:34:56.5+03'",
        "'{2024-02-29,NULL}'",
    ),
    (
        2,
        "'9999-12-31'",
        "'9999-12-31 23:59:59.999999'",
        "'9999-12-31 23:59:59.999999+00'",
        "'{9999-12-31}'",
    ),
    (3, "'0001-01-01'", "'0001-01-01 00:00:00'", "'0001-01-01 00:00:00+00'", "'{0001-01-01}'"),
    (4, "'infinity'", "NULL", "NULL", "NULL"),
    (5, "'-infinity'", "NULL", "NULL", "NULL"),
    (6, "NULL", "'infinity'", "NULL", "NULL"),
    (7, "NULL", "NULL", "'-infinity'", "NULL"),
    (8, "'0044-03-15 BC'", "NULL", "NULL", "NULL"),
    (9, "NULL", "'10000-01-01 00:00:00'", "NULL", "NULL"),
    (10, "NULL", "NULL", "'294276-12-31 23:59:59.999999+00'", "NULL"),
    (11, "NULL", "'0001-01-01 00:00:00 BC'", "NULL", "NULL"),
    (12, "NULL", "NULL", "NULL", "'{2020-01-01,infinity}'"),
]
COLUMNS = ("d", "ts", "tstz", "ad")
# The values of rows 1-3, exactly as Python has them.
EXACT = {
    1: (
        dt.date(2024, 2, 29),
        dt.datetime(2024, 2, 29, 12, 34, 56, 500000),
        dt.datetime(2024, 2, 29, 9, 34, 56, 500000, tzinfo=UTC),
        [dt.date(2024, 2, 29), None],
    ),
    2: (dt.date.max, MAX_TS, MAX_TS.replace(tzinfo=UTC), [dt.date.max]),
    3: (dt.date.min, dt.datetime.min, dt.datetime.min.replace(tzinfo=UTC), [dt.date.min]),
}
# The row, its column, PostgreSQL's text of the value, and what null/clamp/text make of it.
EDGES: list[tuple[int, str, str, Any]] = [
    (4, "d", "infinity", dt.date.max),
    (5, "d", "-infinity", dt.date.min),
    (6, "ts", "infinity", MAX_TS),
    (7, "tstz", "-infinity", dt.datetime.min.replace(tzinfo=UTC)),
    (8, "d", "0044-03-15 BC", dt.date.min),
    (9, "ts", "10000-01-01 00:00:00", MAX_TS),
    (10, "tstz", "294276-12-31 23:59:59.999999+00", MAX_TS.replace(tzinfo=UTC)),
    (11, "ts", "0001-01-01 00:00:00 BC", dt.datetime.min),
    (12, "ad", "infinity", [dt.date(2020, 1, 1), dt.date.max]),
]


class Base(DeclarativeBase):
    pass


class Period(Base):
    __tablename__ = TABLE

    id: Mapped[int] = mapped_column(primary_key=True)
    d: Mapped[dt.date | None] = mapped_column(sa.Date)
    ts: Mapped[dt.datetime | None] = mapped_column(sa.DateTime)
    tstz: Mapped[dt.datetime | None] = mapped_column(sa.DateTime(timezone=True))
    ad: Mapped[list[dt.date] | None] = mapped_column(sa.ARRAY(sa.Date))


def _core(ids: list[int]) -> Any:
    return sa.select(Period.id, Period.d, Period.ts, Period.tstz, Period.ad).where(
        Period.id.in_(ids)
    )


@pytest.fixture
async def table(pg_url: str) -> AsyncIterator[None]:
    conn = await asyncpg.connect(pg_url)
    try:
        await conn.execute(
            f"DROP TABLE IF EXISTS {TABLE}; CREATE TABLE {TABLE} (id int PRIMARY KEY, d date, "
            "ts timestamp, tstz timestamptz, ad date[])"
        )
        values = ", ".join(f"({i}, {d}, {ts}, {tz}, {ad})" for i, d, ts, tz, ad in ROWS)
        await conn.execute(f"INSERT INTO {TABLE} VALUES {values}")
        yield
    finally:
        await conn.execute(f"DROP TABLE IF EXISTS {TABLE}")
        await conn.close()


@pytest.fixture(params=["pg", "pgbouncer"])
def url(request: pytest.FixtureRequest, pg_url: str, pgbouncer_url: str) -> str:
    return pg_url if request.param == "pg" else pgbouncer_url


def _read(face: str, url: str, statement: Any, **options: Any) -> list[Any]:
    """Every item of a stream of ``statement`` on ``face`` (sync: psycopg; async: asyncpg)."""
    if face == "sync":
        with rowstream.sync.stream(url, statement, batch_rows=2, **options) as rows:
            return list(rows)

    async def read() -> list[Any]:
        async with rowstream.stream(url, statement, batch_rows=2, **options) as rows:
            return [item async for item in rows]

    return asyncio.run(read())


FACES = ["async", "sync"]
STRATEGIES = ["cursor", "keyset"]


@pytest.mark.usefixtures("table")
@pytest.mark.parametrize("face", FACES)
@pytest.mark.parametrize("strategy", STRATEGIES)
def test_values_python_holds_stream_exactly(url: str, face: str, strategy: str) -> None:
    # 9999-12-31 and 0001-01-01 (and their last and first microseconds) are real values:
    # they come as themselves, under every infinity= choice.
    for choice in ("error", "null", "clamp", "text"):
        rows = _read(face, url, _core([1, 2, 3]), strategy=strategy, infinity=choice)
        assert {row.id: tuple(row[1:]) for row in rows} == EXACT, choice


@pytest.mark.usefixtures("table")
@pytest.mark.parametrize("face", FACES)
@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize(("row", "column", "text", "clamped"), EDGES)
def test_what_python_cannot_hold_is_refused_naming_the_column(
    url: str, face: str, strategy: str, row: int, column: str, text: str, clamped: Any
) -> None:
    with pytest.raises(rowstream.QueryError) as caught:
        _read(face, url, _core([1, 2, row]), strategy=strategy)
    message = str(caught.value)
    assert message.startswith(f"column {column!r} (")
    assert f"holds {text}," in message
    assert "infinity='null', 'clamp' or 'text'" in message and f"({column}::text)" in message
    assert caught.value.context == {"column": column}
    assert "\n" not in message and "server rejected" not in message


@pytest.mark.parametrize("face", FACES)
def test_a_bare_text_query_is_refused_naming_the_column_too(pg_url: str, face: str) -> None:
    # A text() cannot be read again as a window of plain columns: the column comes from the
    # result being loaded (psycopg's, after SQLAlchemy closed the failed cursor).
    query = sa.text("SELECT 1 AS id, 'infinity'::date AS due")
    with pytest.raises(rowstream.QueryError) as caught:
        _read(face, pg_url, query)
    message = str(caught.value)
    assert "due" in message and "(due::text)" in message and "infinity" in message
    assert "infinity='null', 'clamp' or 'text'" in message
    assert "\n" not in message and "server rejected" not in message


@pytest.mark.usefixtures("table")
@pytest.mark.parametrize("face", FACES)
@pytest.mark.parametrize(("row", "column", "text", "clamped"), EDGES)
def test_infinity_choices(
    pg_url: str, face: str, row: int, column: str, text: str, clamped: Any
) -> None:
    index = COLUMNS.index(column) + 1
    as_text: Any = text if column != "ad" else [dt.date(2020, 1, 1), "infinity"]
    nulled: Any = None if column != "ad" else [dt.date(2020, 1, 1), None]
    for choice, expected in (("null", nulled), ("clamp", clamped), ("text", as_text)):
        rows = _read(face, pg_url, _core([2, row]), strategy="cursor", infinity=choice)
        got = {r.id: r for r in rows}
        assert got[row][index] == expected, choice
        # The genuine 9999-12-31 beside it is untouched.
        assert tuple(got[2][1:]) == EXACT[2]


@pytest.mark.usefixtures("table")
@pytest.mark.parametrize("face", FACES)
@pytest.mark.parametrize("strategy", STRATEGIES)
def test_orm_entities_get_the_same_refusal(url: str, face: str, strategy: str) -> None:
    statement = sa.select(Period).where(Period.id.in_([1, 2, 7]))
    with pytest.raises(rowstream.QueryError) as caught:
        _read(face, url, statement, strategy=strategy)
    assert str(caught.value).startswith("column 'tstz' (timestamptz) holds -infinity,")
    # Opted in, the entity holds the text; the real 9999-12-31 stays a date.
    periods = _read(face, url, statement, strategy=strategy, infinity="text")
    assert {p.id: p.tstz for p in periods}[7] == "-infinity"
    assert {p.id: p.d for p in periods}[2] == dt.date.max


@pytest.mark.usefixtures("table")
@pytest.mark.parametrize("face", FACES)
def test_parameters_are_exact_too(pg_url: str, face: str) -> None:
    # asyncpg's own encoder sends date.max as infinity (row 4); the stream's sends 9999-12-31.
    statement = sa.select(Period.id).where(Period.d == dt.date.max)
    assert [r.id for r in _read(face, pg_url, statement, strategy="cursor")] == [2]
    statement = sa.select(Period.id).where(
        Period.tstz
        == dt.datetime(2024, 2, 29, 12, 34, 56, 500000, tzinfo=dt.timezone(dt.timedelta(hours=3)))
    )
    assert [r.id for r in _read(face, pg_url, statement, strategy="keyset")] == [1]
    # asyncpg's own would send datetime.max as infinity, and rows 6 and 9 would match.
    statement = sa.select(Period.id).where(Period.ts.between(dt.datetime(9999, 12, 31), MAX_TS))
    assert [r.id for r in _read(face, pg_url, statement, strategy="keyset")] == [2]


@pytest.mark.usefixtures("table")
async def test_the_connection_leaves_as_it_came(pg_url: str) -> None:
    # A borrowed connection decodes with asyncpg's own codecs again after the stream (and the
    # statement the stream prepared does not serve the caller's next query).
    engine = rowstream.create_engine(pg_url)
    query = sa.text(f"SELECT d FROM {TABLE} WHERE id = 4")
    try:
        async with engine.connect() as conn:
            before = (await conn.execute(query)).scalar_one()
            async with rowstream.stream(conn, query, infinity="text") as rows:
                assert [r.d async for r in rows] == ["infinity"]
            after = (await conn.execute(query)).scalar_one()
            # Again: the statement the first stream prepared (cached for its choice) serves.
            async with rowstream.stream(conn, query, infinity="text") as rows:
                assert [r.d async for r in rows] == ["infinity"]
            async with rowstream.stream(conn, query, infinity="null") as rows:
                assert [r.d async for r in rows] == [None]
    finally:
        await engine.dispose()
    assert before == after == dt.date.max


def test_unknown_choice_is_refused_before_connecting() -> None:
    with pytest.raises(rowstream.ConfigurationError, match="unknown infinity choice 'nan'"):
        rowstream.stream("postgresql://nowhere.invalid/db", sa.text("SELECT 1"), infinity="nan")  # type: ignore[arg-type]


@pytest.mark.usefixtures("table")
async def test_process_refuses_or_passes_the_choice_on(pg_url: str) -> None:
    seen: list[Any] = []

    def handler(batch: list[Any]) -> None:
        seen.extend(row.d for row in batch)

    statement = sa.select(Period.id, Period.d).where(Period.id.in_([2, 4]))
    with pytest.raises(rowstream.QueryError, match="column 'd' \\(date\\) holds infinity"):
        await rowstream.process(pg_url, statement, handler)
    seen.clear()
    await rowstream.process(pg_url, statement, handler, infinity="null")
    assert sorted(seen, key=repr) == sorted([dt.date.max, None], key=repr)
    seen.clear()
    rowstream.sync.process(pg_url, statement, handler, infinity="text")
    assert sorted(seen, key=repr) == sorted([dt.date.max, "infinity"], key=repr)


@pytest.mark.usefixtures("table")
async def test_a_codec_of_the_callers_own_is_kept(pg_url: str) -> None:
    # A connection whose owner set a codec for timestamptz (on connect) keeps it: the stream
    # decodes that type with it, and does not reset it afterwards.
    engine = rowstream.create_engine(pg_url)
    query = sa.text(f"SELECT d, tstz FROM {TABLE} WHERE id = 7")
    try:
        async with engine.connect() as conn:
            raw = await conn.get_raw_connection()
            driver: Any = raw.driver_connection
            await driver.set_type_codec(
                "timestamptz", schema="pg_catalog", encoder=str, decoder=str, format="text"
            )
            async with rowstream.stream(conn, query) as rows:
                assert [tuple(r) async for r in rows] == [(None, "-infinity")]
            assert tuple((await conn.execute(query)).one()) == (None, "-infinity")
            query = sa.text(f"SELECT d FROM {TABLE} WHERE id = 4")
            with pytest.raises(rowstream.QueryError, match="column 'd' \\(date\\) holds infinity"):
                async with rowstream.stream(conn, query) as rows:
                    [r async for r in rows]
    finally:
        await engine.dispose()
