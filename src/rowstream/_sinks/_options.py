"""Sink options that need no third-party import: the CLI lists and checks them before any
heavy module loads (no SQLAlchemy, no pyarrow)."""

from __future__ import annotations

from typing import Literal

from .._exceptions import ConfigurationError

Format = Literal["csv", "jsonl", "parquet"]
FORMATS: tuple[Format, ...] = ("csv", "jsonl", "parquet")
DEFAULT_COMPRESSION = "zstd"
COMPRESSIONS = ("zstd", "snappy", "gzip", "brotli", "lz4", "none")


def check_compression(name: str) -> str:
    """Refuse a Parquet compression codec pyarrow does not write."""
    if name not in COMPRESSIONS:
        raise ConfigurationError(
            f"unknown Parquet compression {name!r}: choose one of {', '.join(COMPRESSIONS)}"
        )
    return name


# PostgreSQL values a Parquet type cannot hold (see rowstream._pgtypes): what to write instead.
INFINITY_CHOICES = ("error", "null", "clamp", "text")
NAN_CHOICES = ("error", "null", "text")


def check_edge_values(infinity: str, nan: str) -> None:
    """Refuse an unknown ``infinity=`` or ``nan=`` choice before anything connects."""
    if infinity not in INFINITY_CHOICES:
        raise ConfigurationError(
            f"unknown infinity choice {infinity!r}: choose one of {', '.join(INFINITY_CHOICES)}"
        )
    if nan not in NAN_CHOICES:
        raise ConfigurationError(
            f"unknown nan choice {nan!r}: choose one of {', '.join(NAN_CHOICES)}"
        )
