"""Batch sizing by bytes.

Nothing is known of a result's rows before the first one arrives, and one row may hold 50 MB:
so the first batch is one row. Its size (the Python size, which is what the process holds)
gives the number of rows that fit in ``batch_bytes``, and batches grow toward it geometrically
(one row, then 8, 64...), never past what the measured width allows: a few wide rows among
narrow first ones meet a small batch, not a full one. A few rows of each batch are measured
again, so a table whose rows grow wider further on gets smaller batches there. Narrow rows
reach the ceiling after six batches (about 4,700 rows), at no measurable cost in speed.

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
FIRST_BATCH_ROWS = 1
GROWTH = 8
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
        self._last_rows = 0

    def next_rows(self) -> int:
        if self.fixed_rows is not None:
            return self.fixed_rows
        if self.row_bytes is None:
            return FIRST_BATCH_ROWS
        rows = int(self.batch_bytes / self.row_bytes)
        rows = min(rows, self._last_rows * GROWTH)
        return max(MIN_BATCH_ROWS, min(MAX_BATCH_ROWS, rows))

    def observe(self, batch: Sequence[Any]) -> int:
        """Measure ``batch`` (a sample of it) and return its estimated size in bytes."""
        if not batch:
            return 0
        self._last_rows = len(batch)
        step = max(1, len(batch) // SAMPLE_ROWS)
        sample = batch[::step]
        width = sum(deep_size(row) for row in sample) / len(sample)
        if self.row_bytes is None or width > 2 * self.row_bytes:
            # First measurement, or rows got much wider: follow at once to keep memory flat.
            self.row_bytes = width
        else:
            self.row_bytes = 0.7 * self.row_bytes + 0.3 * width
        return int(width * len(batch))
