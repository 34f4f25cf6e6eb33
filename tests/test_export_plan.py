"""The export plan's decisions, without a database: the method and the options."""

from __future__ import annotations

import pytest

from rowstream import ConfigurationError
from rowstream._export_plan import ExportOptions, check_method, choose_method


@pytest.mark.parametrize(
    ("requested", "dialect", "borrowed", "expected"),
    [
        ("auto", "postgresql", False, "copy"),
        ("auto", "postgresql", True, "stream"),  # a lent connection: its own transaction
        ("auto", "mariadb", False, "stream"),
        ("auto", "sqlite", False, "stream"),
        ("copy", "postgresql", False, "copy"),
        ("stream", "postgresql", False, "stream"),
        ("stream", "sqlite", False, "stream"),
    ],
)
def test_choose_method(requested: str, dialect: str, borrowed: bool, expected: str) -> None:
    assert choose_method(requested, dialect, borrowed) == expected


@pytest.mark.parametrize(("dialect", "borrowed"), [("mariadb", False), ("postgresql", True)])
def test_copy_is_refused_where_it_cannot_run(dialect: str, borrowed: bool) -> None:
    with pytest.raises(ConfigurationError, match="method='copy' needs PostgreSQL"):
        choose_method("copy", dialect, borrowed)


def test_unknown_method() -> None:
    with pytest.raises(ConfigurationError, match="unknown export method 'fast'"):
        check_method("fast")


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"batch_rows": 0}, "batch_rows must be at least 1"),
        ({"batch_bytes": 0}, "batch_bytes must be positive"),
        ({"infinity": "huge"}, "unknown infinity choice"),
        ({"nan": "zero"}, "unknown nan choice"),
        ({"zero_dates": "maybe"}, "zero"),
        ({"read_timeout": -1}, "read_timeout"),
    ],
)
def test_options_are_validated_once(options: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        ExportOptions(**options)  # type: ignore[arg-type]


def test_default_options() -> None:
    options = ExportOptions()
    assert options.batch_rows is None and options.infinity == "error"
    assert options.text_columns == frozenset()
