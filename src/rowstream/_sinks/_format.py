"""Which encoder an output gets: the format and compression from explicit choices or the name.

I/O-free and light (no SQLAlchemy, no pyarrow): the CLI and the export plan both call it
before anything connects.
"""

from __future__ import annotations

from pathlib import Path

from .._atomic import STDOUT
from .._exceptions import ConfigurationError
from ._options import FORMATS, Format, check_compression

__all__ = ["STDOUT", "TEXT_COMPRESSIONS", "format_for_path"]

TEXT_COMPRESSIONS = ("gzip", "none")

# Longest suffixes first: "orders.csv.gz" is gzip'd CSV, not a ".gz" format.
_SUFFIXES: tuple[tuple[str, Format, str | None], ...] = (
    (".csv.gz", "csv", "gzip"),
    (".jsonl.gz", "jsonl", "gzip"),
    (".ndjson.gz", "jsonl", "gzip"),
    (".csv", "csv", None),
    (".jsonl", "jsonl", None),
    (".ndjson", "jsonl", None),
    (".parquet", "parquet", None),
    (".pq", "parquet", None),
)


def format_for_path(
    path: str | Path | None, format: str | None = None, compression: str | None = None
) -> tuple[Format, str | None]:
    """The format and compression an export to ``path`` uses: explicit ones win, else the suffix.

    ``path`` None stands for a stream (any object with ``write``), which has no suffix; a
    stream and standard output (``"-"``) default to CSV. Every format goes to any of them:
    Parquet's footer records offsets counted from the bytes written, so it needs no seek.

    >>> format_for_path("orders.csv.gz")
    ('csv', 'gzip')
    >>> format_for_path("-", "parquet")
    ('parquet', 'zstd')
    """
    name = "" if path is None else str(path).lower()
    by_suffix = next(((f, c) for s, f, c in _SUFFIXES if name.endswith(s)), None)
    if format is None:
        if path is None or name == STDOUT:
            format = "csv"
        elif by_suffix is None:
            raise ConfigurationError(
                f"cannot tell the format of {str(path)!r} from its suffix: pass --format "
                "csv, jsonl or parquet, or name the file .csv, .csv.gz, .jsonl, .ndjson or .parquet"
            )
        else:
            format = by_suffix[0]
    if format not in FORMATS:
        raise ConfigurationError(f"unknown format {format!r}: choose one of {', '.join(FORMATS)}")
    if compression is None and by_suffix is not None and by_suffix[0] == format:
        compression = by_suffix[1]
    if format == "parquet":
        return "parquet", check_compression(compression or "zstd")
    if compression not in (None, *TEXT_COMPRESSIONS):
        raise ConfigurationError(
            f"unknown compression {compression!r} for {format}: use gzip or none"
        )
    return format, None if compression == "none" else compression
