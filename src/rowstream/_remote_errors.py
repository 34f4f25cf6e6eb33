"""A worker's error, written into a distributed job's ledger and raised again by the coordinator.

A Celery worker that fails a partition records the error as JSON (:func:`record`): its type
name and a one-line message, always, and for rowstream's own exceptions the pickled exception
too (base64), so the coordinator gets back the same class with its ``message``, ``context``
and notes (:func:`revive`). Nothing of the URL's password is written: the message, the
context's strings and the exception's notes are scrubbed of every form of it first, and an
exception whose pickle still holds one is kept as text only.

Reading a ledger must not run code that a file in a shared folder asks for, so the
coordinator unpickles with an allow-list: the classes of :mod:`rowstream._exceptions` (and the
function their ``__reduce__`` names) and a few value types a context may carry (dates, times,
decimals, UUIDs, sets). Anything else, or a file that does not decode, falls back to the text.
"""

from __future__ import annotations

import base64
import datetime
import decimal
import io
import pickle
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from . import _exceptions
from ._exceptions import RowstreamError

# A context is diagnosis (table, partition, last key), not data: a pickle larger than this is
# kept as text only.
MAX_PICKLED_BYTES = 64 * 1024
MAX_MESSAGE_CHARS = 2_000

# Values a context keeps as they are (each pickles into what the unpickler below allows).
_PLAIN = (
    int,
    float,
    bool,
    bytes,
    type(None),
    decimal.Decimal,
    uuid.UUID,
    datetime.datetime,
    datetime.date,
    datetime.time,
    datetime.timedelta,
)
_ALLOWED_GLOBALS: dict[str, frozenset[str]] = {
    "builtins": frozenset({"set", "frozenset", "bytearray", "complex"}),
    "datetime": frozenset({"datetime", "date", "time", "timedelta", "timezone"}),
    "decimal": frozenset({"Decimal"}),
    "uuid": frozenset({"UUID"}),
}


def record(error: BaseException, url: str | None) -> dict[str, Any]:
    """``error`` as a JSON-safe document, with no part of ``url``'s password in it."""
    secret = _url(url)
    document: dict[str, Any] = {
        "error": type(error).__name__,
        "message": one_line(_scrub(str(error), secret)),
    }
    notes = [one_line(_scrub(str(note), secret)) for note in getattr(error, "__notes__", ())]
    if notes:
        document["notes"] = notes
    if isinstance(error, RowstreamError) and _is_ours(type(error)):
        pickled = _pickle(error, secret)
        if pickled is not None:
            document["pickled"] = base64.b64encode(pickled).decode("ascii")
    return document


def revive(document: Mapping[str, Any]) -> RowstreamError | None:
    """The rowstream exception :func:`record` pickled, or None (not one, or not readable)."""
    encoded = document.get("pickled")
    if not isinstance(encoded, str):
        return None
    try:
        error = _Unpickler(io.BytesIO(base64.b64decode(encoded, validate=True))).load()
    except Exception:  # refused, truncated, or a constructor that raised: the text stands
        return None
    if not isinstance(error, RowstreamError):
        return None
    for note in document.get("notes") or ():
        error.add_note(str(note))
    return error


def one_line(text: str) -> str:
    """``text`` on one line (its lines joined by ``"; "``), at most ``MAX_MESSAGE_CHARS``."""
    joined = "; ".join(line.strip() for line in text.splitlines() if line.strip())
    if len(joined) > MAX_MESSAGE_CHARS:
        joined = joined[: MAX_MESSAGE_CHARS - 3] + "..."
    return joined


def _is_ours(cls: type) -> bool:
    return (
        cls.__module__ == _exceptions.__name__ and getattr(_exceptions, cls.__name__, None) is cls
    )


class _Unpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if module == _exceptions.__name__:
            found = getattr(_exceptions, name, None)
            if found is _exceptions._rebuild or (
                isinstance(found, type) and issubclass(found, RowstreamError) and _is_ours(found)
            ):
                return found
        elif name in _ALLOWED_GLOBALS.get(module, ()):
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"{module}.{name} is not a rowstream exception")


def _pickle(error: RowstreamError, secret: _Secret | None) -> bytes | None:
    copy = type(error)(_scrub(error.message, secret), **_clean(error.context, secret))
    try:
        data = pickle.dumps(copy, protocol=pickle.HIGHEST_PROTOCOL)
    except Exception:
        return None
    forms = [form.encode("utf-8") for form in _forms(secret)]
    if len(data) > MAX_PICKLED_BYTES or any(form in data for form in forms):
        return None
    return data


def _clean(value: Any, secret: _Secret | None) -> Any:
    """``value`` with its strings scrubbed, and anything the coordinator would refuse to
    unpickle (an engine, a row, a driver's object) replaced by its scrubbed ``repr``."""
    if isinstance(value, str):
        return _scrub(value, secret)
    if isinstance(value, _PLAIN):
        return value
    if isinstance(value, Mapping):
        return {_clean(k, secret): _clean(v, secret) for k, v in value.items()}
    if type(value) in (list, tuple, set, frozenset):  # exactly: a named tuple is a repr
        return type(value)(_clean(v, secret) for v in value)
    return _scrub(repr(value), secret)


@dataclass(frozen=True)
class _Secret:
    """The URL as given (replaced whole by its masked form) and every form of its password."""

    url: str
    masked: str
    forms: tuple[str, ...]


def _url(url: str | None) -> _Secret | None:
    if url is None:
        return None
    from ._source import _parse, mask_url, password_forms

    try:
        forms = tuple(form for form in password_forms(_parse(url)) if form)
    except Exception:  # not a URL SQLAlchemy parses: the URL itself is still replaced
        forms = ()
    return _Secret(url, mask_url(url), forms)


def _forms(secret: _Secret | None) -> tuple[str, ...]:
    return () if secret is None else secret.forms


def _scrub(text: str, secret: _Secret | None) -> str:
    if secret is None:
        return text
    text = text.replace(secret.url, secret.masked)
    for form in secret.forms:
        text = text.replace(form, "***")
    return text
