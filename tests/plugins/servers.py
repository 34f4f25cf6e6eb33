"""Real database servers for the tests: PostgreSQL, MariaDB, SQLite and PgBouncer.

Servers at the standard local ports are used when we can log in there; environment variables
override:

    ROWSTREAM_TEST_PG_URL           default postgresql://postgres@127.0.0.1:5432/test
    ROWSTREAM_TEST_MYSQL_URL        default mysql://root@127.0.0.1:3306/test
    ROWSTREAM_TEST_PGBOUNCER_URL    default: a private PgBouncer (transaction mode) started here
    ROWSTREAM_TEST_PRIVATE_SERVERS  1: ignore the standard ports, start private instances

What is missing is brought up by :mod:`tests.plugins._bringup` (apt-get when root, private
instances in a temporary directory). Each test session gets a database of its own on each
server (``rowstream_test_<pid>``), so two test runs on one machine do not collide. No database
is ever mocked.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from . import _bringup

DIALECTS = ("postgresql", "mariadb", "sqlite")


@dataclass
class Servers:
    pg_url: str
    mysql_url: str
    pgbouncer_url: str


@pytest.fixture(scope="session")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Servers]:
    workdir = tmp_path_factory.mktemp("servers")
    with _bringup.Stack(workdir) as stack:
        pg_server = os.environ.get("ROWSTREAM_TEST_PG_URL") or stack.postgresql()
        mysql_server = os.environ.get("ROWSTREAM_TEST_MYSQL_URL") or stack.mariadb()
        pg_url = stack.run_database(pg_server)
        mysql_url = stack.run_database(mysql_server)
        bouncer_url = os.environ.get("ROWSTREAM_TEST_PGBOUNCER_URL") or stack.pgbouncer(pg_url)
        yield Servers(pg_url=pg_url, mysql_url=mysql_url, pgbouncer_url=bouncer_url)


# Quotes, a backslash and a space: the password must survive every connection string.
TLS_PASSWORD = "s3cret 'quoted' \\ pass"


@pytest.fixture(scope="session")
def pg_tls_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A private PostgreSQL reached only over TLS and with a password (started on first use)."""
    with _bringup.Stack(tmp_path_factory.mktemp("tls"), private=True) as stack:
        yield stack.postgresql_tls(TLS_PASSWORD)


@pytest.fixture
def pg_url(servers: Servers) -> str:
    return servers.pg_url


@pytest.fixture
def mysql_url(servers: Servers) -> str:
    return servers.mysql_url


@pytest.fixture
def pgbouncer_url(servers: Servers) -> str:
    return servers.pgbouncer_url


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'test.db'}"


@pytest.fixture(params=DIALECTS)
def db_url(request: pytest.FixtureRequest, servers: Servers, tmp_path: Path) -> str:
    """The URL of each database a test applies to: the test runs once per database."""
    dialect: str = request.param
    if dialect == "postgresql":
        return servers.pg_url
    if dialect == "mariadb":
        return servers.mysql_url
    return f"sqlite:///{tmp_path / 'test.db'}"
