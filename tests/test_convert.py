"""Finding the column and value a conversion failed on, without a database."""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.dialects import sqlite

from rowstream import QueryError
from rowstream._convert import conversion_error, first_failure, raw_window

EVENTS = sa.table("events", sa.column("id", sa.Integer), sa.column("at", sa.DateTime))


def test_a_text_statement_has_nothing_to_convert() -> None:
    assert raw_window(sa.text("SELECT 1"), sqlite.dialect(), skip=0, limit=10) is None


def test_the_window_reads_raw_values_after_the_delivered_rows() -> None:
    window = raw_window(sa.select(EVENTS), sqlite.dialect(), skip=500, limit=250)
    assert window is not None
    assert window.names == ["id", "at"]
    sql = str(window.statement.compile(dialect=sqlite.dialect()))
    assert "LIMIT" in sql and "OFFSET" in sql
    found = first_failure([(1, "2024-01-01 00:00:00"), (2, "yesterday")], window)
    assert found is not None
    name, value, exc = found
    assert (name, value) == ("at", "yesterday")
    assert "Invalid isoformat string" in str(exc)
    error = conversion_error(found, QueryError("fallback"))
    assert "cannot convert column 'at': its value 'yesterday'" in str(error)
    assert error.context == {"column": "at"}


def test_long_values_are_cut_and_nothing_found_keeps_the_fallback() -> None:
    window = raw_window(sa.select(EVENTS), sqlite.dialect(), skip=0, limit=1)
    assert window is not None
    found = first_failure([(1, "x" * 1000)], window)
    assert found is not None
    assert len(str(conversion_error(found, QueryError("fallback")))) < 400
    fallback = QueryError("fallback")
    assert conversion_error(first_failure([(1, None)], window), fallback) is fallback
