"""JSON Lines: one object per row, keys in column order, values as ``to_jsonb()`` renders them."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any, BinaryIO

from ._text import json_text


class JsonlSink:
    """Writes rows (or lines the server already rendered) to a binary file."""

    def __init__(self, out: BinaryIO) -> None:
        self._out = out
        self._keys: list[str] = []

    def begin(self, columns: Sequence[str]) -> None:
        # Keys are rendered once; jsonb's own separators (", " and ": ") for every line.
        self._keys = [json.dumps(c, ensure_ascii=False) + ": " for c in columns]

    def write_rows(self, rows: Sequence[Sequence[Any]]) -> None:
        keys = self._keys
        lines = [
            "{" + ", ".join(k + json_text(v) for k, v in zip(keys, row, strict=True)) + "}\n"
            for row in rows
        ]
        self._out.write("".join(lines).encode())

    def write_bytes(self, data: bytes) -> None:
        self._out.write(data)

    def finish(self) -> None:
        self._out.flush()
