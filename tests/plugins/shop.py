"""The seeds' shop (users, orders, invoices from :mod:`tests.models`) on every database.

``shop`` fills the tables once per database and test session (on SQLite, whose file is new
for every test, once per test); tests only read them.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine

import rowstream
from tests import models


@dataclass(frozen=True)
class Shop:
    url: str

    @property
    def dialect(self) -> str:
        """``postgresql``, ``mariadb`` or ``sqlite`` (a ``mysql://`` URL means MariaDB here)."""
        name = make_url(self.url).get_backend_name()
        return "mariadb" if name == "mysql" else name


@pytest.fixture(scope="session")
def _seeded() -> set[str]:
    return set()


@pytest.fixture
async def shop(db_url: str, _seeded: set[str]) -> Shop:
    """``db_url`` with the shop's tables filled (see :mod:`tests.models` for the rows)."""
    if db_url not in _seeded:
        engine = rowstream.create_engine(db_url)
        try:
            await models.seed(engine)
        finally:
            await engine.dispose()
        _seeded.add(db_url)
    return Shop(db_url)


@pytest.fixture
async def engine(shop: Shop) -> AsyncIterator[AsyncEngine]:
    """A pooled rowstream engine on the shop's database, disposed after the test."""
    engine = rowstream.create_engine(shop.url)
    try:
        yield engine
    finally:
        await engine.dispose()
