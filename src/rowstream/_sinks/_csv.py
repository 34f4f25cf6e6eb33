"""CSV exactly as PostgreSQL's ``COPY ... TO STDOUT WITH CSV HEADER`` writes it.

Quoting follows COPY, not Python's csv module: NULL is an empty unquoted field and the empty
string is ``""``; a field is quoted when it holds a comma, a quote, CR or LF (quotes doubled),
and a lone column equal to ``\\.`` is quoted so that it cannot end a COPY stream.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, BinaryIO

from ._text import csv_text, hex_bytes

_SPECIAL = (",", '"', "\n", "\r")


def _quote(text: str) -> str:
    return '"' + text.replace('"', '""') + '"'


def _field(value: Any) -> str:
    if value is None:
        return ""
    text = value if type(value) is str else csv_text(value)
    if text == "" or any(c in text for c in _SPECIAL):
        return _quote(text)
    return text


class CsvSink:
    """Writes rows (or COPY output as it comes) to a binary file."""

    def __init__(self, out: BinaryIO) -> None:
        self._out = out
        self._single = False

    def begin(self, columns: Sequence[str]) -> None:
        self._single = len(columns) == 1
        self._write_line([_field(c) for c in columns])

    def write_rows(self, rows: Sequence[Sequence[Any]]) -> None:
        if len(rows) == 1:
            self._write_alone(rows[0])
            return
        lines = []
        for row in rows:
            fields = [_field(v) for v in row]
            if self._single and fields[0] == "\\.":
                fields[0] = _quote(fields[0])
            lines.append(",".join(fields))
        lines.append("")
        self._out.write("\n".join(lines).encode())

    def _write_alone(self, row: Sequence[Any]) -> None:
        """Write one row a field at a time.

        Batches are sized by bytes, so a row comes alone when it is wide (it may be 50 MB):
        joining its fields into a line, and encoding the line, would each copy it whole.
        """
        out = self._out
        for i, value in enumerate(row):
            if i:
                out.write(b",")
            chunk = hex_bytes(value)
            if chunk is not None:
                out.write(b"\\x")
                out.write(chunk)
                continue
            field = _field(value)
            if self._single and field == "\\.":
                field = _quote(field)
            out.write(field.encode())
        out.write(b"\n")

    def _write_line(self, fields: list[str]) -> None:
        if self._single and fields[0] == "\\.":
            fields[0] = _quote(fields[0])
        self._out.write((",".join(fields) + "\n").encode())

    def write_bytes(self, data: bytes) -> None:
        """CSV already encoded (PostgreSQL's COPY wrote it, header included)."""
        self._out.write(data)

    def finish(self) -> None:
        self._out.flush()

    def abort(self) -> None:
        """Nothing to undo: the destination discards what was written."""
