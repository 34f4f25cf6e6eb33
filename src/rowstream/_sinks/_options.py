"""Sink options that need no third-party import (the CLI validates them before pyarrow loads)."""

from __future__ import annotations

from .._exceptions import ConfigurationError

DEFAULT_COMPRESSION = "zstd"
COMPRESSIONS = ("zstd", "snappy", "gzip", "brotli", "lz4", "none")


def check_compression(name: str) -> str:
    """Refuse a Parquet compression codec pyarrow does not write."""
    if name not in COMPRESSIONS:
        raise ConfigurationError(
            f"unknown Parquet compression {name!r}: choose one of {', '.join(COMPRESSIONS)}"
        )
    return name
