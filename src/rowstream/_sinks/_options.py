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
