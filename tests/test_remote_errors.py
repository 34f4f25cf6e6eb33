"""A worker's error as the ledger keeps it and the coordinator raises it again: every rowstream
exception round-trips whole, nothing else is unpickled, and no password is written. No
database, no broker."""

from __future__ import annotations

import base64
import datetime
import decimal
import json
import pickle
import uuid
from pathlib import Path
from typing import Any

import pytest

from rowstream import _exceptions
from rowstream._exceptions import QueryError, RowstreamError, UnsupportedQueryError
from rowstream._ledger import Ledger
from rowstream._remote_errors import record, revive

URL = "postgresql://app:pa%40ss:w0rd@db.example/shop"
PASSWORD_FORMS = ("pa@ss:w0rd", "pa%40ss:w0rd", "pa%40ss%3Aw0rd")
CONTEXT: dict[str, Any] = {
    "table": "orders",
    "partition": 3,
    "last_key": (41, "x"),
    "column": "total",
    "value": decimal.Decimal("1.50"),
    "at": datetime.datetime(2026, 11, 30, 12, 0, tzinfo=datetime.UTC),
    "day": datetime.date(2026, 11, 30),
    "took": datetime.timedelta(seconds=3),
    "id": uuid.UUID(int=7),
    "keys": {"a": [1, 2], "b": None},
}
CLASSES = [getattr(_exceptions, name) for name in _exceptions.__all__]


def test_the_tree_is_all_here() -> None:
    assert len(CLASSES) == 11 and all(issubclass(c, RowstreamError) for c in CLASSES)
    from rowstream._snapshot import SnapshotError

    assert SnapshotError in CLASSES  # an export worker's: one of the tree, so it crosses whole


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
def test_every_rowstream_exception_pickles_with_its_attributes(cls: type[RowstreamError]) -> None:
    original = cls("the server said no", **CONTEXT)
    copy = pickle.loads(pickle.dumps(original))
    assert type(copy) is cls
    assert copy.message == original.message and copy.context == CONTEXT
    assert copy.args == original.args and str(copy) == str(original)


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
def test_every_rowstream_exception_crosses_the_ledger_whole(cls: type[RowstreamError]) -> None:
    original = cls("the server said no", **CONTEXT)
    original.add_note("read 4 batches (1000 rows) before it")
    document = json.loads(json.dumps(record(original, URL)))  # what the file holds
    assert document["error"] == cls.__name__ and document["message"] == str(original)
    copy = revive(document)
    assert type(copy) is cls and copy is not None
    assert copy.message == original.message and copy.context == CONTEXT
    assert str(copy) == str(original)
    assert copy.__notes__ == ["read 4 batches (1000 rows) before it"]


def test_other_exceptions_are_text_only() -> None:
    document = record(ValueError("invoice 4242 has no customer"), URL)
    assert document == {"error": "ValueError", "message": "invoice 4242 has no customer"}
    assert revive(document) is None


def test_a_multi_line_message_is_one_line() -> None:
    error = QueryError('relation "nope" does not exist\nLINE 1: SELECT * FROM nope\n  ^')
    document = record(error, None)
    assert document["message"] == ('relation "nope" does not exist; LINE 1: SELECT * FROM nope; ^')
    revived = revive(document)
    assert revived is not None and revived.message == error.message  # the whole message


def test_no_form_of_the_password_is_written() -> None:
    errors: list[BaseException] = [
        ValueError(f"cannot connect to {URL}"),
        QueryError(f"login failed for {URL}", url=URL, password="pa@ss:w0rd", nested=[URL]),
        UnsupportedQueryError("refused", engine=object()),  # not a value: kept as its repr
    ]
    errors[0].add_note("password pa@ss:w0rd rejected")
    for error in errors:
        document = record(error, URL)
        text = json.dumps(document) + base64.b64decode(document.get("pickled", "")).decode(
            "latin-1"
        )
        assert not any(form in text for form in PASSWORD_FORMS), text
        assert "app" in text or "refused" in text
    revived = revive(record(errors[1], URL))
    assert isinstance(revived, QueryError)
    assert revived.context["url"] == "postgresql://app:***@db.example/shop"
    assert revived.context["password"] == "***"


def test_only_rowstream_exceptions_are_unpickled() -> None:
    class Boom:
        def __reduce__(self) -> tuple[Any, ...]:
            return (print, ("pwned",))

    for payload in (Boom(), ValueError("x"), {"a": 1}, QueryError("x", obj=Path("/"))):
        document = {
            "error": "QueryError",
            "message": "x",
            "pickled": base64.b64encode(pickle.dumps(payload)).decode(),
        }
        assert revive(document) is None
    assert revive({"error": "QueryError", "message": "x", "pickled": "not base64!"}) is None
    assert revive({"error": "QueryError", "message": "x", "pickled": "AAAA"}) is None


def test_the_ledger_gives_the_failed_attempt_back(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path, lease=1.0)
    ledger.create({"kind": "test", "partitions": {}}, resume=False)
    ledger.sent("p3", 2)
    claim = ledger.claim("p3", 2)
    assert claim is not None
    claim.failed(QueryError("division by zero", partition="p3"), url=URL)
    view = ledger.view("p3", now=1.0)
    assert view.failure == "QueryError: division by zero (partition='p3')"
    error = ledger.error("p3")
    assert isinstance(error, QueryError) and error.context == {"partition": "p3"}
    assert ledger.error("p4") is None  # never sent
