"""rowstream._temporal's text of the values Python cannot hold is PostgreSQL's own."""

from __future__ import annotations

import asyncpg
import pytest

from rowstream._temporal import date_text, timestamp_text

DATES = [
    "4714-11-24 BC",
    "0044-03-15 BC",
    "0001-01-01 BC",
    "0001-12-31 BC",
    "10000-01-01",
    "5874897-12-31",
]
INSTANTS = [
    "4713-01-01 00:00:00 BC",
    "0044-03-15 12:00:00.25 BC",
    "0001-12-31 23:59:59.999999 BC",
    "10000-01-01 00:00:00",
    "294276-12-31 23:59:59.999999",
]


async def test_the_text_is_postgresqls(pg_url: str) -> None:
    conn = await asyncpg.connect(pg_url)
    try:
        await conn.execute("SET TimeZone = 'UTC'")
        # The integers PostgreSQL sends, as they come (days or microseconds from 2000-01-01).
        for kind in ("date", "timestamp", "timestamptz"):
            await conn.set_type_codec(
                kind,
                schema="pg_catalog",
                encoder=lambda v: v,
                decoder=lambda v: v[0],
                format="tuple",
            )
        for value in DATES:
            days, text = await conn.fetchrow("SELECT $1::text::date, $1::text::date::text", value)
            assert date_text(days) == text == value
        for value in INSTANTS:
            for kind in ("timestamp", "timestamptz"):
                micros, text = await conn.fetchrow(
                    f"SELECT $1::text::{kind}, $1::text::{kind}::text", value
                )
                assert timestamp_text(micros, tz=kind == "timestamptz") == text
    finally:
        await conn.close()


@pytest.mark.parametrize(("days", "text"), [(2**31 - 1, "infinity"), (-(2**31), "-infinity")])
def test_the_sentinels(days: int, text: str) -> None:
    assert date_text(days) == text
    assert timestamp_text(days * 2**32 + (2**32 - 1 if days > 0 else 0), tz=False) == text


def test_refused_by_driver_walks_a_cycle_of_causes_once() -> None:
    # A drop translated by SQLAlchemy keeps the driver error as ``orig``, and that error may
    # have the translated one as its cause: the check must end, not spin (it hung a stream's
    # resume after a terminated backend).
    from rowstream._temporal import refused_by_driver

    outer, inner = RuntimeError("outer"), RuntimeError("inner")
    outer.orig = inner  # type: ignore[attr-defined]
    inner.__cause__ = outer
    assert refused_by_driver(outer) is False
