"""What the Celery workers of tests/test_celery.py import: the statement and the handlers.

Each handled row's id is appended to a file of the worker's own (one ``os.write`` per batch on
an ``O_APPEND`` file, so lines from concurrent writers never mix) in
``$ROWSTREAM_TEST_RECORD_DIR``; the tests read them all back to count how often each row was
handled.
"""

from __future__ import annotations

import os
import threading
import time
from typing import Any

import sqlalchemy as sa

TABLE = "celery_invoices"
metadata = sa.MetaData()
invoices = sa.Table(
    TABLE,
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("amount_cents", sa.BigInteger, nullable=False),
)
INVOICES = sa.select(invoices)


def record(batch: list[Any]) -> None:
    folder = os.environ["ROWSTREAM_TEST_RECORD_DIR"]
    path = os.path.join(folder, f"{os.getpid()}-{threading.get_ident()}.ids")
    data = "".join(f"{row.id}\n" for row in batch).encode()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)
    time.sleep(float(os.environ.get("ROWSTREAM_TEST_HANDLER_SLEEP", "0")))


def fail_on_4242(batch: list[Any]) -> None:
    record(batch)
    if any(row.id == 4242 for row in batch):
        raise ValueError("invoice 4242 has no customer")


# Planned by the coordinator (min and max of the key only), then refused by the server in the
# worker that reads invoice 4242: a real rowstream QueryError raised in a worker.
RECIPROCALS = sa.select(invoices.c.id, (sa.literal(1) / (invoices.c.id - 4242)).label("inverse"))


def hang_on_4242(batch: list[Any]) -> None:
    """A handler that hangs (20 s, so the test's worker is not held for ever) on invoice 4242."""
    record(batch)
    if any(row.id == 4242 for row in batch):
        time.sleep(20)
