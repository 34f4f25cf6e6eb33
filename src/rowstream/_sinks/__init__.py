"""Where exported rows go: CSV, JSON Lines and Parquet writers over a binary file.

Every sink takes ``begin(columns)``, then ``write_rows(rows)`` for rows from
:func:`rowstream.stream` (or ``write_bytes``/``write_batch`` for data a fast path already
rendered), then ``finish()``. Sinks never open or rename files: :mod:`rowstream._atomic` does.
The Parquet sink lives in :mod:`rowstream._sinks._parquet`, imported only when used: pyarrow
adds about 40 MB to every process that loads it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

from ._csv import CsvSink
from ._jsonl import JsonlSink
from ._options import COMPRESSIONS, DEFAULT_COMPRESSION, check_compression

__all__ = [
    "COMPRESSIONS",
    "DEFAULT_COMPRESSION",
    "CsvSink",
    "JsonlSink",
    "Sink",
    "check_compression",
]


class Sink(Protocol):
    def begin(self, columns: Sequence[str]) -> None: ...

    def write_rows(self, rows: Sequence[Sequence[Any]]) -> None: ...

    def finish(self) -> None: ...
