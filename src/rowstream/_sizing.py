"""Batch sizing by bytes.

The first batch is small; its rows are measured (their Python size, which is what the
process holds) and every later batch aims at ``batch_bytes``. A few rows of each batch are
measured again, so a table whose rows grow wider further on gets smaller batches there.

With the default 4 MiB this gives the seeds' rule of thumb: narrow rows of a few integers and
short strings land at the 10,000-row ceiling, rows with about 1 KB of text near 2,000, and rows
with a 10 KB JSON document between 50 and 200.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from datetime import date, datetime, time, timedelta
from decimal import Decimal
from typing import Any
from uuid import UUID

from ._exceptions import ConfigurationError

DEFAULT_BATCH_BYTES = 4 * 1024 * 1024
FIRST_BATCH_ROWS = 100
MIN_BATCH_ROWS = 1
MAX_BATCH_ROWS = 10_000
SAMPLE_ROWS = 16
_MAX_DEPTH = 6
_ATOMS = (int, float, bool, str, bytes, Decimal, datetime, date, time, timedelta, UUID)


def parse_size(text: str) -> int:
    """Parse ``4MB``, ``512k``, ``1GiB`` or a plain number of bytes."""
    units = {"": 1, "b": 1, "k": 1024, "m": 1024**2, "g": 1024**3}
    raw = text.strip().lower().removesuffix("ib").removesuffix("b")
    number, unit = raw, ""
    if raw and raw[-1] in "kmg":
        number, unit = raw[:-1], raw[-1]
    try:
        value = int(float(number) * units[unit])
    except ValueError:
        raise ConfigurationError(
            f"cannot read the size {text!r}: write a number of bytes or one like 4MB or 512KiB"
        ) from None
    if value <= 0:
        raise ConfigurationError(f"the size {text!r} must be positive")
    return value


def deep_size(value: Any, depth: int = 0) -> int:
    """Approximate bytes held by ``value`` and what it references (rows, JSON, ORM objects)."""
    size = sys.getsizeof(value)
    if isinstance(value, _ATOMS) or value is None or depth >= _MAX_DEPTH:
        return size
    if isinstance(value, dict):
        return size + sum(deep_size(v, depth + 1) for v in value.values())
    if isinstance(value, (tuple, list, set, frozenset)):
        return size + sum(deep_size(v, depth + 1) for v in value)
    if hasattr(value, "_mapping"):  # a Row
        return size + sum(deep_size(v, depth + 1) for v in tuple(value))
    attrs = getattr(value, "__dict__", None)
    if attrs is not None:  # an ORM instance: its attributes and its InstanceState
        return size + sum(
            deep_size(v, depth + 1) if not k.startswith("_sa_") else 400 for k, v in attrs.items()
        )
    return size


class BatchSizer:
    """Decides how many rows the next batch should hold."""

    def __init__(self, *, batch_rows: int | None, batch_bytes: int | None) -> None:
        if batch_rows is not None and batch_rows < 1:
            raise ConfigurationError(f"batch_rows must be at least 1, not {batch_rows}")
        if batch_bytes is not None and batch_bytes < 1:
            raise ConfigurationError(f"batch_bytes must be positive, not {batch_bytes}")
        self.fixed_rows = batch_rows
        self.batch_bytes = batch_bytes or DEFAULT_BATCH_BYTES
        self.row_bytes: float | None = None

    def next_rows(self) -> int:
        if self.fixed_rows is not None:
            return self.fixed_rows
        if self.row_bytes is None:
            return FIRST_BATCH_ROWS
        rows = int(self.batch_bytes / self.row_bytes)
        return max(MIN_BATCH_ROWS, min(MAX_BATCH_ROWS, rows))

    def observe(self, batch: Sequence[Any]) -> int:
        """Measure ``batch`` (a sample of it) and return its estimated size in bytes."""
        if not batch:
            return 0
        step = max(1, len(batch) // SAMPLE_ROWS)
        sample = batch[::step]
        width = sum(deep_size(row) for row in sample) / len(sample)
        if self.row_bytes is None or width > 2 * self.row_bytes:
            # First measurement, or rows got much wider: follow at once to keep memory flat.
            self.row_bytes = width
        else:
            self.row_bytes = 0.7 * self.row_bytes + 0.3 * width
        return int(width * len(batch))
