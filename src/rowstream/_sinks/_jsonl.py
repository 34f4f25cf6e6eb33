"""JSON Lines: one object per row, keys in column order, values as ``to_jsonb()`` renders them."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any, BinaryIO

from ._text import hex_bytes, json_text


class JsonlSink:
    """Writes rows (or lines the server already rendered) to a binary file."""

    def __init__(self, out: BinaryIO) -> None:
        self._out = out
        self._keys: list[str] = []

    def begin(self, columns: Sequence[str]) -> None:
        # Keys are rendered once; jsonb's own separators (", " and ": ") for every line.
        self._keys = [json.dumps(c, ensure_ascii=False) + ": " for c in columns]

    def write_rows(self, rows: Sequence[Sequence[Any]]) -> None:
        if len(rows) == 1:
            self._write_alone(rows[0])
            return
        keys = self._keys
        lines = [
            "{" + ", ".join(k + json_text(v) for k, v in zip(keys, row, strict=True)) + "}\n"
            for row in rows
        ]
        self._out.write("".join(lines).encode())

    def _write_alone(self, row: Sequence[Any]) -> None:
        """Write one row a value at a time (see :meth:`CsvSink._write_alone`: a row that
        comes alone may be 50 MB, and every join or concatenation would copy it)."""
        out = self._out
        out.write(b"{")
        for i, (key, value) in enumerate(zip(self._keys, row, strict=True)):
            out.write((", " + key if i else key).encode())
            self._write_value(value)
        out.write(b"}\n")

    def _write_value(self, value: Any) -> None:
        chunk = hex_bytes(value)
        if chunk is None:
            self._out.write(json_text(value).encode())
        else:
            self._out.write(b'"\\\\x')
            self._out.write(chunk)
            self._out.write(b'"')

    def write_bytes(self, data: bytes) -> None:
        """Lines already encoded (PostgreSQL's COPY built them)."""
        self._out.write(data)

    def finish(self) -> None:
        self._out.flush()

    def abort(self) -> None:
        """Nothing to undo: the destination discards what was written."""


class RenderedJsonlSink(JsonlSink):
    """JSON Lines from values the server already rendered as JSON text (``to_jsonb()::text``):
    each value is written as it is, ``None`` as ``null``."""

    def write_rows(self, rows: Sequence[Sequence[Any]]) -> None:
        if len(rows) == 1:
            self._write_alone(rows[0])
            return
        keys = self._keys
        lines = [
            "{"
            + ", ".join(k + ("null" if v is None else v) for k, v in zip(keys, row, strict=True))
            + "}\n"
            for row in rows
        ]
        self._out.write("".join(lines).encode())

    def _write_value(self, value: Any) -> None:
        self._out.write(b"null" if value is None else value.encode())
