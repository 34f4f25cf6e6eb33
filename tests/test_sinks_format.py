"""The format and compression of an output, from explicit choices or its name (no I/O)."""

from __future__ import annotations

import pytest

from rowstream import ConfigurationError
from rowstream._sinks._format import format_for_path


@pytest.mark.parametrize(
    ("path", "fmt", "compression", "expected"),
    [
        ("orders.csv", None, None, ("csv", None)),
        ("orders.CSV.GZ", None, None, ("csv", "gzip")),
        ("orders.ndjson.gz", None, None, ("jsonl", "gzip")),
        ("orders.parquet", None, None, ("parquet", "zstd")),
        ("orders.pq", None, "snappy", ("parquet", "snappy")),
        ("orders.csv.gz", None, "none", ("csv", None)),
        ("orders.data", "jsonl", None, ("jsonl", None)),
        ("-", None, None, ("csv", None)),
        ("-", "parquet", None, ("parquet", "zstd")),  # a pipe takes Parquet too
        (None, None, None, ("csv", None)),  # a stream
        (None, "parquet", "lz4", ("parquet", "lz4")),
    ],
)
def test_format_for_path(
    path: str | None, fmt: str | None, compression: str | None, expected: tuple[str, str | None]
) -> None:
    assert format_for_path(path, fmt, compression) == expected


@pytest.mark.parametrize(
    ("path", "fmt", "compression", "message"),
    [
        ("orders.xlsx", None, None, "cannot tell the format"),
        ("orders.csv", "xml", None, "unknown format 'xml'"),
        ("orders.csv", None, "zstd", "unknown compression 'zstd' for csv"),
        ("orders.parquet", None, "rar", "unknown Parquet compression 'rar'"),
    ],
)
def test_bad_choices_are_one_clear_error(
    path: str, fmt: str | None, compression: str | None, message: str
) -> None:
    with pytest.raises(ConfigurationError, match=message):
        format_for_path(path, fmt, compression)
