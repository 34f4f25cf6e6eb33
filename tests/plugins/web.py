"""A real uvicorn serving tests/webapp.py on a free loopback port, and a bigger table.

``web_server(url, **env)`` starts the app as a child process on the database ``url`` and waits
(bounded) until it answers; every server is stopped when the test ends. ``big_table`` adds
``web_big`` (``BIG_ROWS`` rows, about 100 bytes each in CSV) to the shop's database, for the
tests whose clients must leave or stall while the server is still sending.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import sqlalchemy as sa

import rowstream
from tests import models
from tests.plugins import _bringup
from tests.plugins.shop import Shop

ROOT = Path(__file__).resolve().parents[2]
BIG_ROWS = 150_000
START_TIMEOUT = 30.0


@dataclass
class WebServer:
    base: str
    process: subprocess.Popen[bytes]
    log: Path

    @property
    def pid(self) -> int:
        return self.process.pid

    def output(self) -> str:
        return self.log.read_text(errors="replace")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _wait_ready(server: WebServer) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    host, port = server.base.removeprefix("http://").split(":")
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(f"uvicorn exited at start:\n{server.output()}")
        try:
            with socket.create_connection((host, int(port)), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"uvicorn did not answer within {START_TIMEOUT} s:\n{server.output()}")


@pytest.fixture
def web_server(tmp_path: Path) -> Iterator[Callable[..., WebServer]]:
    if shutil.which("curl") is None:
        _bringup.apt_install("curl")  # the tests' second client
    started: list[WebServer] = []

    def start(url: str, app: str = "tests.webapp:app", **env: str) -> WebServer:
        port = free_port()
        log = tmp_path / f"uvicorn-{port}.log"
        child_env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT)]),
            "ROWSTREAM_WEB_URL": url,
            "DATABASE_URL": url,
            **{f"ROWSTREAM_WEB_{k.upper()}": v for k, v in env.items()},
        }
        with log.open("wb") as out:
            process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "uvicorn",
                    app,
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(port),
                    "--log-level",
                    "warning",
                ],
                cwd=ROOT,
                env=child_env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        server = WebServer(f"http://127.0.0.1:{port}", process, log)
        started.append(server)
        _wait_ready(server)
        return server

    yield start
    for server in started:
        server.process.send_signal(signal.SIGTERM)
    for server in started:
        try:
            server.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.process.kill()
            server.process.wait(timeout=10)


def _big_sql(dialect: str) -> list[str]:
    n = BIG_ROWS
    if dialect == "postgresql":
        return [
            "DROP TABLE IF EXISTS web_big",
            "CREATE TABLE web_big (id bigint PRIMARY KEY, label text NOT NULL, "
            "amount numeric(12, 2), seen timestamptz)",
            "INSERT INTO web_big SELECT g, 'row ' || g || ' ' || md5(g::text), g * 1.25, "
            f"TIMESTAMPTZ '2024-01-01 00:00:00+00' + g * INTERVAL '1 second' "
            f"FROM generate_series(1, {n}) AS g",
        ]
    if dialect == "mariadb":
        return [
            "DROP TABLE IF EXISTS web_big",
            "CREATE TABLE web_big (id bigint PRIMARY KEY, label varchar(80) NOT NULL, "
            "amount decimal(12, 2), seen datetime)",
            "INSERT INTO web_big SELECT seq, CONCAT('row ', seq, ' ', MD5(seq)), seq * 1.25, "
            f"TIMESTAMP '2024-01-01 00:00:00' + INTERVAL seq SECOND FROM seq_1_to_{n}",
        ]
    return [
        "DROP TABLE IF EXISTS web_big",
        "CREATE TABLE web_big (id INTEGER PRIMARY KEY, label TEXT NOT NULL, amount REAL, "
        "seen TEXT)",
        "WITH RECURSIVE g(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM g WHERE i < "
        f"{n}) INSERT INTO web_big SELECT i, 'row ' || i || ' ' || hex(randomblob(16)), "
        "i * 1.25, datetime('2024-01-01', '+' || i || ' seconds') FROM g",
    ]


@pytest.fixture
def big_table(shop: Shop, _big_seeded: set[str]) -> Shop:
    """The shop's database with ``web_big`` filled (once per database and session)."""
    if shop.url in _big_seeded:
        return shop
    url = sa.engine.make_url(shop.url)
    if shop.dialect == "postgresql":
        url = url.set(drivername="postgresql+psycopg")
    elif shop.dialect == "mariadb":
        url = url.set(drivername="mysql+pymysql")
    engine = sa.create_engine(url)
    try:
        with engine.begin() as conn:
            for statement in _big_sql(shop.dialect):
                conn.execute(sa.text(statement))
    finally:
        engine.dispose()
    _big_seeded.add(shop.url)
    return shop


@pytest.fixture(scope="session")
def _big_seeded() -> set[str]:
    return set()


@pytest.fixture
async def pg_shop(pg_url: str, _seeded: set[str]) -> Shop:
    """The shop on PostgreSQL alone, for tests of what only PostgreSQL has (PgBouncer)."""
    if pg_url not in _seeded:
        engine = rowstream.create_engine(pg_url)
        try:
            await models.seed(engine)
        finally:
            await engine.dispose()
        _seeded.add(pg_url)
    return Shop(pg_url)
