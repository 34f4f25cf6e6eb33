"""Python values rendered as PostgreSQL renders them, for the paths that are not COPY.

PostgreSQL exports go through COPY, so the server renders every value itself. MariaDB, SQLite
(and PostgreSQL queries that cannot be COPYed) are rendered here with the same rules, so a file
looks the same whichever database it came from:

- CSV: ``COPY ... WITH CSV`` text: booleans ``t``/``f``, timestamps ``2024-01-01 00:00:00.5+00``
  (UTC, trailing zeros of the fraction dropped), floats in their shortest exact form with an
  exponent from 1e15 or below 1e-4 (``1e+15``, ``1.5e-05``), ``NaN``/``Infinity``, numerics
  without exponent, bytes as ``\\x`` hex, arrays as ``{a,"b c",NULL}``, JSON as jsonb prints it.
- JSON: ``to_jsonb()``: numbers with every digit and no exponent, ``NaN``/``Infinity`` as
  strings, timestamps ISO 8601 (``2024-01-01T00:00:00+00:00``), bytes as ``"\\\\x..."``.
"""

from __future__ import annotations

import binascii
import json
import math
from collections.abc import Callable
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from typing import Any
from uuid import UUID

__all__ = ["csv_text", "hex_bytes", "json_text"]


def _float_digits(value: float) -> tuple[str, int]:
    """Shortest round-trip digits of ``value`` and the decimal exponent of the first digit."""
    sign, digits, exponent = Decimal(repr(value)).normalize().as_tuple()
    text = "".join(map(str, digits))
    assert isinstance(exponent, int)
    return ("-" if sign else "") + text, len(digits) + exponent - 1


def pg_float(value: float) -> str:
    """float8out: ``1e+15``, ``1.5e-05``, ``123.25``, ``NaN``, ``-Infinity``."""
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "Infinity" if value > 0 else "-Infinity"
    if value == 0:
        return "-0" if math.copysign(1.0, value) < 0 else "0"
    signed, point = _float_digits(value)
    sign = "-" if signed.startswith("-") else ""
    digits = signed.lstrip("-")
    if point < -4 or point >= 15:
        mantissa = digits[0] + ("." + digits[1:] if len(digits) > 1 else "")
        return f"{sign}{mantissa}e{'-' if point < 0 else '+'}{abs(point):02d}"
    return sign + _positional(digits, point)


def _positional(digits: str, point: int) -> str:
    if point < 0:
        return "0." + "0" * (-point - 1) + digits
    if point + 1 >= len(digits):
        return digits + "0" * (point + 1 - len(digits))
    return digits[: point + 1] + "." + digits[point + 1 :]


def _fraction(microsecond: int) -> str:
    return f".{microsecond:06d}".rstrip("0") if microsecond else ""


def _pg_time(value: time) -> str:
    return f"{value.hour:02d}:{value.minute:02d}:{value.second:02d}{_fraction(value.microsecond)}"


def _pg_date(value: date) -> str:
    return f"{value.year:04d}-{value.month:02d}-{value.day:02d}"


def _utc(value: datetime) -> datetime:
    return value.astimezone(UTC) if value.tzinfo is not None else value


def _pg_timestamp(value: datetime, sep: str, zone: str) -> str:
    value = _utc(value)
    text = f"{_pg_date(value.date())}{sep}{_pg_time(value.time())}"
    return text + zone if value.tzinfo is not None else text


def _duration(value: timedelta) -> str:
    """MySQL's TIME (a signed duration, up to 838 hours): ``-01:02:03.5``."""
    micros = value // timedelta(microseconds=1)
    sign = "-" if micros < 0 else ""
    seconds, micro = divmod(abs(micros), 1_000_000)
    minutes, second = divmod(seconds, 60)
    hours, minute = divmod(minutes, 60)
    return f"{sign}{hours:02d}:{minute:02d}:{second:02d}{_fraction(micro)}"


def _decimal(value: Decimal) -> str:
    if value.is_nan():
        return "NaN"
    if value.is_infinite():
        return "Infinity" if value > 0 else "-Infinity"
    return format(value, "f")


def _array_element(value: Any) -> str:
    if value is None:
        return "NULL"
    if isinstance(value, list):
        return _pg_array(value)
    text = csv_text(value)
    if text == "" or text.upper() == "NULL" or any(c in text for c in '{},"\\ \t\n\r\v\f'):
        return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return text


def _pg_array(value: list[Any]) -> str:
    return "{" + ",".join(_array_element(v) for v in value) + "}"


def _json_dump(value: Any) -> str:
    # jsonb's own text form: ", " and ": " separators, non-ASCII kept as is.
    return json.dumps(value, ensure_ascii=False, default=str)


_CSV: dict[type, Callable[[Any], str]] = {
    bool: lambda v: "t" if v else "f",
    int: str,
    str: lambda v: v,
    float: pg_float,
    Decimal: _decimal,
    datetime: lambda v: _pg_timestamp(v, " ", "+00"),
    date: _pg_date,
    time: _pg_time,
    timedelta: _duration,
    bytes: lambda v: "\\x" + v.hex(),
    bytearray: lambda v: "\\x" + bytes(v).hex(),
    memoryview: lambda v: "\\x" + v.hex(),
    UUID: str,
    list: _pg_array,
    dict: _json_dump,
}


def hex_bytes(value: Any) -> bytes | None:
    """The hex digits of a binary value as bytes (no str in between: a blob may be 50 MB), or
    None for any other value."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        return binascii.hexlify(value)
    return None


def csv_text(value: Any) -> str:
    """The text COPY writes for ``value`` (not yet quoted); ``None`` is never passed."""
    render = _CSV.get(type(value))
    if render is None:
        render = next((r for t, r in _CSV.items() if isinstance(value, t)), str)
    return render(value)


def _json_float(value: float) -> str:
    if math.isnan(value):
        return '"NaN"'
    if math.isinf(value):
        return '"Infinity"' if value > 0 else '"-Infinity"'
    # to_jsonb() turns a float into numeric: every digit, never an exponent.
    return format(Decimal(repr(value)).normalize(), "f")


def _json_decimal(value: Decimal) -> str:
    text = _decimal(value)
    return f'"{text}"' if not value.is_finite() else text


def _json_string(value: str) -> str:
    return json.dumps(value, ensure_ascii=False)


def _json_list(value: list[Any]) -> str:
    return "[" + ", ".join(json_text(v) for v in value) + "]"


def _json_dict(value: dict[Any, Any]) -> str:
    return (
        "{" + ", ".join(f"{_json_string(str(k))}: {json_text(v)}" for k, v in value.items()) + "}"
    )


_JSON: dict[type, Callable[[Any], str]] = {
    bool: lambda v: "true" if v else "false",
    int: str,
    str: _json_string,
    float: _json_float,
    Decimal: _json_decimal,
    datetime: lambda v: '"' + _pg_timestamp(v, "T", "+00:00") + '"',
    date: lambda v: '"' + _pg_date(v) + '"',
    time: lambda v: '"' + _pg_time(v) + '"',
    timedelta: lambda v: '"' + _duration(v) + '"',
    bytes: lambda v: '"\\\\x' + v.hex() + '"',
    bytearray: lambda v: '"\\\\x' + bytes(v).hex() + '"',
    memoryview: lambda v: '"\\\\x' + v.hex() + '"',
    UUID: lambda v: f'"{v}"',
    list: _json_list,
    tuple: _json_list,
    dict: _json_dict,
}


def json_text(value: Any) -> str:
    """``to_jsonb(value)::text`` for a Python value."""
    if value is None:
        return "null"
    render = _JSON.get(type(value))
    if render is None:
        render = next(
            (r for t, r in _JSON.items() if isinstance(value, t)),
            lambda v: _json_string(str(v)),
        )
    return render(value)
