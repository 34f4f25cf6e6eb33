"""rowstream.web: real uvicorn, real clients (httpx, curl, raw sockets, headless Chromium).

Every download is compared byte for byte with ``python -m rowstream export`` of the same
table (Parquet: the same Arrow table, since a Parquet file records its writer's row groups).
The app is tests/webapp.py, started by tests/plugins/web.py on a free loopback port.
"""

from __future__ import annotations

import gzip
import json
import os
import random
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import psutil
import pyarrow.parquet as pq
import pytest
import sqlalchemy as sa

from tests.plugins import _bringup
from tests.plugins.shop import Shop
from tests.plugins.web import BIG_ROWS, ROOT, WebServer, free_port

pytest.importorskip("starlette")

Start = Callable[..., WebServer]
SUFFIX = {"csv": "csv", "jsonl": "jsonl", "parquet": "parquet"}


def cli_export(url: str, table: str, fmt: str, out: Path, *extra: str) -> bytes:
    """The CLI's bytes for a table: what every download must equal."""
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "rowstream",
            "export",
            url,
            "--table",
            table,
            "-o",
            str(out),
            "--format",
            fmt,
            "-q",
            *extra,
        ],
        env=env,
        capture_output=True,
        timeout=180,
    )
    assert done.returncode == 0, done.stderr.decode()
    return out.read_bytes()


def sync_engine(shop: Shop) -> sa.Engine:
    url = sa.engine.make_url(shop.url)
    if shop.dialect == "postgresql":
        url = url.set(drivername="postgresql+psycopg")
    elif shop.dialect == "mariadb":
        url = url.set(drivername="mysql+pymysql")
    return sa.create_engine(url, poolclass=sa.pool.NullPool)


def app_sessions(shop: Shop, server: WebServer) -> list[str]:
    """What the app still holds on the database: the PostgreSQL backends or MariaDB connections
    whose client end is a socket of the app's process (their states), or the SQLite files the
    server has open. Only the app's own: an idle connection another test left in this test
    session's pool must not count against it."""
    app = psutil.Process(server.pid)
    if shop.dialect == "sqlite":
        database = sa.engine.make_url(shop.url).database
        assert database is not None
        path = str(Path(database).resolve())
        return [f.path for f in app.open_files() if f.path.startswith(path)]
    ports = {c.laddr.port for c in app.net_connections(kind="tcp") if c.raddr}
    with sync_engine(shop).connect() as conn:
        if shop.dialect == "postgresql":
            rows = conn.execute(
                sa.text(
                    "SELECT state, client_port FROM pg_stat_activity "
                    "WHERE datname = current_database() AND pid <> pg_backend_pid()"
                )
            )
        else:
            rows = conn.execute(
                sa.text(
                    "SELECT COMMAND, SUBSTRING_INDEX(HOST, ':', -1) FROM "
                    "information_schema.PROCESSLIST WHERE DB = DATABASE() "
                    "AND ID <> CONNECTION_ID()"
                )
            )
        return [str(r[0]) for r in rows if r[1] is not None and int(r[1]) in ports]


def busy_sessions(shop: Shop) -> list[str]:
    """What is busy on the database besides this check: a query or an open transaction
    (PostgreSQL, MariaDB), a lock on the file (SQLite). Pooled idle connections do not count."""
    if shop.dialect == "sqlite":
        import sqlite3

        database = sa.engine.make_url(shop.url).database
        conn = sqlite3.connect(database or "", timeout=0, isolation_level=None)
        try:
            conn.execute("BEGIN EXCLUSIVE")
            conn.execute("ROLLBACK")
            return []
        except sqlite3.OperationalError as exc:
            return [str(exc)]
        finally:
            conn.close()
    with sync_engine(shop).connect() as conn:
        if shop.dialect == "postgresql":
            query = (
                "SELECT state FROM pg_stat_activity WHERE datname = current_database() "
                "AND application_name = 'rowstream' AND state <> 'idle' "
                "AND pid <> pg_backend_pid()"
            )
        else:
            query = (
                "SELECT COMMAND FROM information_schema.PROCESSLIST WHERE DB = DATABASE() "
                "AND ID <> CONNECTION_ID() AND COMMAND <> 'Sleep' UNION ALL "
                "SELECT 'transaction' FROM information_schema.INNODB_TRX "
                "WHERE trx_mysql_thread_id <> CONNECTION_ID()"
            )
        return [str(r[0]) for r in conn.execute(sa.text(query))]


def wait_released(
    shop: Shop, server: WebServer, within: float = 1.0, *, pooled: bool = False
) -> float:
    """Seconds until the app holds nothing on the database (``pooled``: nothing but idle
    pooled connections); fails after ``within``."""
    started = time.monotonic()
    while True:
        held = busy_sessions(shop) if pooled else app_sessions(shop, server)
        waited = time.monotonic() - started
        if not held:
            return waited
        assert waited < within, f"still held {waited:.2f} s after the client left: {held}"
        time.sleep(0.02)


def http_get(base: str, path: str) -> socket.socket:
    host, port = base.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=10)
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
    return sock


# ---------------------------------------------------------------- downloads


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_downloads_equal_the_export(
    shop: Shop, web_server: Start, tmp_path: Path, fmt: str
) -> None:
    server = web_server(shop.url)
    expected = cli_export(shop.url, "orders", fmt, tmp_path / f"orders.{fmt}")
    url = f"{server.base}/table/orders.{fmt}"

    plain = httpx.get(url, headers={"accept-encoding": "identity"}, timeout=60)
    assert plain.status_code == 200
    assert plain.content == expected
    headers = plain.headers
    assert headers["content-type"] == (
        "text/csv; charset=utf-8" if fmt == "csv" else "application/x-ndjson"
    )
    assert headers["content-disposition"] == f'attachment; filename="orders.{fmt}"'
    assert headers["x-accel-buffering"] == "no"
    assert headers["x-rowstream-strategy"] == "keyset"
    assert "content-encoding" not in headers

    # httpx asks for gzip by default and decodes it.
    zipped = httpx.get(url, timeout=60)
    assert zipped.headers["content-encoding"] == "gzip"
    assert zipped.content == expected

    target = tmp_path / f"curl.{fmt}"
    done = subprocess.run(
        ["curl", "-sS", "--compressed", "-o", str(target), "-w", "%{http_code}", url],
        capture_output=True,
        timeout=60,
    )
    assert done.stdout == b"200", done.stderr
    assert target.read_bytes() == expected
    raw = subprocess.run(["curl", "-sS", "-H", "Accept-Encoding: gzip", url], capture_output=True)
    assert gzip.decompress(raw.stdout) == expected


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_text_key_downloads_equal_the_export(
    shop: Shop, web_server: Start, tmp_path: Path, fmt: str
) -> None:
    """A table keyed by text: rows through rowstream.stream's keyset pages into the sinks
    (PostgreSQL's COPY pages take integer keys only), still the export's bytes."""
    kind = {"postgresql": "timestamptz", "mariadb": "datetime", "sqlite": "TEXT"}[shop.dialect]
    engine = sync_engine(shop)
    with engine.begin() as conn:
        conn.execute(sa.text("DROP TABLE IF EXISTS web_codes"))
        conn.execute(
            sa.text(
                "CREATE TABLE web_codes (code varchar(20) PRIMARY KEY, n integer, "
                f"note text, at {kind})"
            )
        )
        conn.execute(
            sa.text("INSERT INTO web_codes VALUES (:code, :n, :note, :at)"),
            [
                {
                    "code": f"c{i:05d}",
                    "n": i if i % 7 else None,
                    "note": 'say "hi", then\nleave' if i % 5 == 0 else f"note {i}",
                    "at": f"2024-02-{1 + i % 28:02d} 10:{i % 60:02d}:00",
                }
                for i in range(2_000)
            ],
        )
    server = web_server(shop.url)
    expected = cli_export(shop.url, "web_codes", fmt, tmp_path / f"codes.{fmt}")
    got = httpx.get(f"{server.base}/table/web_codes.{fmt}", timeout=60)
    assert got.status_code == 200
    assert got.headers["x-rowstream-strategy"] == "keyset"
    assert got.content == expected


def test_parquet_download_equals_the_export(shop: Shop, web_server: Start, tmp_path: Path) -> None:
    server = web_server(shop.url)
    cli_export(shop.url, "orders", "parquet", tmp_path / "cli.parquet")
    got = httpx.get(f"{server.base}/table/orders.parquet", timeout=60)
    assert got.status_code == 200
    assert got.headers["content-type"] == "application/vnd.apache.parquet"
    assert got.headers["x-rowstream-strategy"] == "keyset"
    assert "content-encoding" not in got.headers
    (tmp_path / "web.parquet").write_bytes(got.content)
    web = pq.read_table(tmp_path / "web.parquet")
    cli = pq.read_table(tmp_path / "cli.parquet")
    assert web.schema == cli.schema
    assert web.equals(cli)
    assert web.num_rows == 1_500


def test_big_download_equals_the_export(big_table: Shop, web_server: Start, tmp_path: Path) -> None:
    server = web_server(big_table.url)
    expected = cli_export(big_table.url, "web_big", "csv", tmp_path / "big.csv")
    target = tmp_path / "curl.csv"
    done = subprocess.run(
        ["curl", "-sS", "-o", str(target), f"{server.base}/table/web_big.csv"],
        capture_output=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert target.read_bytes() == expected
    assert expected.count(b"\n") == BIG_ROWS + 1

    # Parquet over many keyset pages: the same table as the export's.
    cli_export(big_table.url, "web_big", "parquet", tmp_path / "cli.parquet")
    got = httpx.get(f"{server.base}/table/web_big.parquet", timeout=120)
    assert got.status_code == 200 and got.headers["x-rowstream-strategy"] == "keyset"
    (tmp_path / "web.parquet").write_bytes(got.content)
    web = pq.read_table(tmp_path / "web.parquet")
    assert web.equals(pq.read_table(tmp_path / "cli.parquet"))
    assert web.num_rows == BIG_ROWS


def test_example_app(shop: Shop, web_server: Start, tmp_path: Path) -> None:
    """examples/fastapi_download.py: a session dependency, an ORM select, a download."""
    server = web_server(shop.url, app="examples.fastapi_download:app")
    expected = cli_export(shop.url, "orders", "csv", tmp_path / "cli.csv", "--where", "user_id = 7")
    got = httpx.get(f"{server.base}/users/7/orders.csv", timeout=60)
    assert got.status_code == 200
    assert got.headers["content-disposition"] == 'attachment; filename="orders-7.csv"'
    assert got.content == expected
    assert got.content.count(b"\n") == 1 + 1_500 // 20


# ---------------------------------------------------------------- errors


def test_bad_query_is_an_http_error(shop: Shop, web_server: Start) -> None:
    server = web_server(shop.url)
    got = httpx.get(f"{server.base}/table/no_such_table.csv", timeout=30)
    assert got.status_code == 500
    body = got.text
    assert body.startswith("export failed: ") and body.count("\n") == 1, body
    assert "no_such_table" in body
    assert "Traceback" not in body and "Traceback" not in server.output()


@pytest.mark.parametrize("dialect", ["postgresql", "mariadb", "sqlite"])
def test_unreachable_database_is_503_without_password(
    web_server: Start, tmp_path: Path, dialect: str
) -> None:
    port = free_port()  # nothing listens there
    url = {
        "postgresql": f"postgresql://app:Sup3rSecretPw@127.0.0.1:{port}/shop",
        "mariadb": f"mysql://app:Sup3rSecretPw@127.0.0.1:{port}/shop",
        "sqlite": f"sqlite:///{tmp_path / 'missing.db'}",
    }[dialect]
    server = web_server(url)
    # /fresh/ passes the URL itself: rowstream checks a SQLite file exists before connecting.
    got = httpx.get(f"{server.base}/fresh/orders.csv", timeout=60)
    assert got.status_code == 503
    assert got.text.startswith("database unavailable: ") and got.text.count("\n") == 1
    for text in (got.text, server.output()):
        assert "Sup3rSecretPw" not in text and "Traceback" not in text
    if dialect == "sqlite":
        assert not (tmp_path / "missing.db").exists()


# A query that fails on the server at row 1000, after the first rows have been sent.
FAILING = {
    "postgresql": "SELECT id, (SELECT 1 UNION ALL SELECT 2 WHERE orders.id = 1000) AS x "
    "FROM orders",
    "mariadb": "SELECT id, (SELECT 1 UNION ALL SELECT 2 FROM DUAL WHERE orders.id = 1000) AS x "
    "FROM orders",
    "sqlite": "SELECT id, CASE WHEN id = 1000 THEN abs(-9223372036854775807 - 1) ELSE 0 END "
    "AS x FROM orders",
}


def test_error_mid_stream_truncates_the_download(
    shop: Shop, web_server: Start, tmp_path: Path
) -> None:
    server = web_server(shop.url)
    url = f"{server.base}/query.csv"
    params = {"sql": FAILING[shop.dialect]}
    received = bytearray()
    plain = {"accept-encoding": "identity"}
    with (
        pytest.raises(httpx.RemoteProtocolError),
        httpx.stream("GET", url, params=params, headers=plain, timeout=60) as got,
    ):
        assert got.status_code == 200
        for piece in got.iter_raw():
            received += piece
    text = bytes(received)
    # Some rows came (in the server's order, which MariaDB takes from an index), not all.
    assert text.startswith(b"id,x\n") and text.count(b"\n") > 1
    assert b"\n1000," not in text and text.count(b"\n") < 1_500

    # curl sees a partial file too (18: transfer closed with data outstanding).
    done = subprocess.run(
        ["curl", "-sS", "-G", "--data-urlencode", f"sql={params['sql']}", url],
        capture_output=True,
        timeout=60,
    )
    assert done.returncode == 18, (done.returncode, done.stderr)
    assert done.stdout.startswith(b"id,x\n") and done.stdout.count(b"\n") > 1
    wait_released(shop, server, within=5.0, pooled=True)


# ---------------------------------------------------------------- clients that leave or stall


@pytest.mark.parametrize("spec", ["2.3", "2.4"])
def test_clients_leaving_release_the_database_within_a_second(
    big_table: Shop, web_server: Start, spec: str
) -> None:
    """50 clients leave at random points of a 15 MB download; after each, the app holds no
    backend (PostgreSQL), no connection (MariaDB) and no open file (SQLite) within 1 s.

    uvicorn speaks ASGI 2.3; told 2.4, Starlette would stop listening for the disconnect
    (a 2.4 server raises on send instead, which uvicorn does not): the response still does.
    """
    server = web_server(big_table.url, spec=spec)
    rng = random.Random(13)
    waits = []
    for i in range(50 if spec == "2.3" else 20):
        cut = 0 if i == 0 else rng.randrange(1, 3_000_000)
        sock = http_get(server.base, "/fresh/web_big.csv")
        got = 0
        while got < cut:
            data = sock.recv(min(65536, cut - got))
            assert data, "the server ended the download early"
            got += len(data)
        # Unread data in the buffer: the kernel answers with a reset, as for a closed tab.
        sock.close()
        waits.append(wait_released(big_table, server))
    assert max(waits) < 1.0
    assert "Traceback" not in server.output()


def test_slow_client_holds_no_transaction(
    big_table: Shop, web_server: Start, tmp_path: Path
) -> None:
    """A client reading at 100 KB/s (through a small receive window, so the server's sends
    really wait on it) gets the exact file; meanwhile no transaction waits on it (keyset
    pages), and the server's memory stays flat."""
    server = web_server(big_table.url)
    where = "id <= 6000"
    expected = cli_export(big_table.url, "web_big", "csv", tmp_path / "slow.csv", "--where", where)
    rate = 100 * 1024
    window = [(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 * 1024)]
    received = bytearray()
    seen: list[str] = []
    rss = []
    started = time.monotonic()
    with (
        httpx.Client(transport=httpx.HTTPTransport(socket_options=window), timeout=30) as client,
        client.stream(
            "GET",
            f"{server.base}/table/web_big.csv",
            params={"where": where},
            headers={"accept-encoding": "identity"},
        ) as got,
    ):
        assert got.status_code == 200
        for piece in got.iter_raw(8192):
            received += piece
            # Hold the average at the rate: sleep until the bytes so far are due.
            ahead = len(received) / rate - (time.monotonic() - started)
            if ahead > 0:
                time.sleep(ahead)
            if len(rss) < len(received) // 50_000:
                rss.append(psutil.Process(server.pid).memory_info().rss)
                if big_table.dialect == "postgresql":
                    seen += app_sessions(big_table, server)
    took = time.monotonic() - started
    assert bytes(received) == expected
    assert took > 0.9 * len(expected) / rate, (took, len(expected))
    assert "idle in transaction" not in seen, seen
    assert max(rss) < 150 * 1024 * 1024


def test_client_that_stops_reading_is_cut_off(big_table: Shop, web_server: Start) -> None:
    server = web_server(big_table.url, send_timeout="2")
    # Closed on every path: a failed assertion must not leave the socket for the collector
    # (its ResourceWarning would fail whichever test runs next).
    with socket.socket() as sock:
        # A small window: the server's writes block soon after the client stops reading.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        host, port = server.base.removeprefix("http://").split(":")
        sock.settimeout(30)
        sock.connect((host, int(port)))
        sock.sendall(f"GET /fresh/web_big.csv HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
        assert sock.recv(4096).startswith(b"HTTP/1.1 200")
        time.sleep(6)  # stalled: more than the send timeout
        released = app_sessions(big_table, server)
        assert released == [], f"a stalled client still holds {released}"
        total = 0
        end = time.monotonic() + 30
        while time.monotonic() < end:
            try:
                data = sock.recv(1 << 20)
            except ConnectionResetError:
                break
            if not data:
                break
            total += len(data)
    assert total < 12_000_000, "the stalled download was not cut off"
    assert "read nothing for 2 s" in server.output()


def test_too_many_downloads_get_503_with_retry_after(big_table: Shop, web_server: Start) -> None:
    server = web_server(big_table.url, limit="1")
    holder = http_get(server.base, "/table/web_big.csv")
    holder.settimeout(10)
    assert holder.recv(1024).startswith(b"HTTP/1.1 200")
    busy = httpx.get(f"{server.base}/table/orders.csv", timeout=30)
    assert busy.status_code == 503
    assert busy.headers["retry-after"] == "7"
    holder.close()
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        again = httpx.get(f"{server.base}/table/orders.csv", timeout=30)
        if again.status_code == 200:
            break
        time.sleep(0.1)
    assert again.status_code == 200


# ---------------------------------------------------------------- PgBouncer


def test_hundred_downloads_through_pgbouncer(
    pgbouncer_url: str, pg_shop: Shop, web_server: Start, tmp_path: Path
) -> None:
    """100 concurrent downloads through PgBouncer (transaction mode, a pool of 4), all exact."""
    shop = pg_shop
    server = web_server(pgbouncer_url, limit="100")
    expected = {
        fmt: cli_export(shop.url, "orders", fmt, tmp_path / f"orders.{fmt}")
        for fmt in ("csv", "jsonl")
    }

    def download(i: int) -> tuple[str, int, bytes, str]:
        fmt = "csv" if i % 2 else "jsonl"
        got = httpx.get(f"{server.base}/table/orders.{fmt}", timeout=120)
        return fmt, got.status_code, got.content, got.headers.get("x-rowstream-strategy", "")

    with ThreadPoolExecutor(100) as pool:
        results = list(pool.map(download, range(100)))
    for fmt, status, content, strategy in results:
        assert status == 200
        assert strategy == "keyset"
        assert content == expected[fmt]


# ---------------------------------------------------------------- a browser


def _chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        # A fresh machine (CI): Debian's package, as the harness installs servers.
        _bringup.apt_install("chromium")
        found = shutil.which("chromium")
    assert found is not None, "chromium is missing: apt-get install -y chromium"
    return found


class _DevTools:
    """Chromium's DevTools protocol over its websocket: one call at a time, events kept."""

    def __init__(self, ws: Any) -> None:
        self._ws = ws
        self._next = 0
        self.events: list[dict[str, Any]] = []

    def call(self, method: str, session: str | None = None, **params: Any) -> dict[str, Any]:
        self._next += 1
        message: dict[str, Any] = {"id": self._next, "method": method, "params": params}
        if session:
            message["sessionId"] = session
        self._ws.send(json.dumps(message))
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            reply = json.loads(self._ws.recv(timeout=30))
            if reply.get("id") == self._next:
                assert "error" not in reply, reply
                result: dict[str, Any] = reply["result"]
                return result
            self.events.append(reply)
        raise AssertionError(f"no answer to {method}")

    def wait_event(
        self, method: str, done: Callable[[dict[str, Any]], bool], within: float
    ) -> None:
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            if any(e.get("method") == method and done(e["params"]) for e in self.events):
                return
            try:
                self.events.append(json.loads(self._ws.recv(timeout=1)))
            except TimeoutError:
                continue
        seen = [e.get("method") for e in self.events]
        raise AssertionError(f"no {method} within {within} s; events: {seen}")


def test_browser_download_from_a_link(shop: Shop, web_server: Start, tmp_path: Path) -> None:
    """Headless Chromium clicks a download link in a page; the saved file equals the export."""
    server = web_server(shop.url)
    expected = cli_export(shop.url, "orders", "csv", tmp_path / "cli.csv")
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    profile = tmp_path / "profile"
    browser = subprocess.Popen(
        [
            _chromium(),
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            f"--user-data-dir={profile}",
            "--remote-debugging-port=0",
            "about:blank",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    found: list[str] = []

    def read_port() -> None:
        assert browser.stderr is not None
        for line in browser.stderr:
            if "DevTools listening on" in line:
                found.append(line.split("DevTools listening on", 1)[1].strip())
                return

    reader = threading.Thread(target=read_port, daemon=True)
    reader.start()
    reader.join(timeout=30)
    try:
        assert found, "chromium did not open its DevTools port"
        from websockets.sync.client import connect

        with connect(found[0], max_size=None, open_timeout=10) as ws:
            tools = _DevTools(ws)
            tools.call(
                "Browser.setDownloadBehavior",
                behavior="allow",
                downloadPath=str(downloads),
                eventsEnabled=True,
            )
            target = tools.call("Target.createTarget", url=f"{server.base}/")["targetId"]
            session = tools.call("Target.attachToTarget", targetId=target, flatten=True)[
                "sessionId"
            ]
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:
                # The new tab is about:blank (complete) until the page replaces it.
                loaded = "document.readyState === 'complete' && !!document.getElementById('get')"
                state = tools.call("Runtime.evaluate", session, expression=loaded)["result"]
                if state.get("value") is True:
                    break
                time.sleep(0.1)
            assert state.get("value") is True, f"the page did not load: {state}"
            # A real click, as a person's: the browser's own mouse events on the link.
            box = tools.call(
                "Runtime.evaluate",
                session,
                returnByValue=True,
                expression="(() => { const r = document.getElementById('get')"
                ".getBoundingClientRect(); return [r.x + r.width / 2, r.y + r.height / 2]; })()",
            )["result"]["value"]
            for kind in ("mousePressed", "mouseReleased"):
                tools.call(
                    "Input.dispatchMouseEvent",
                    session,
                    type=kind,
                    x=box[0],
                    y=box[1],
                    button="left",
                    clickCount=1,
                )
            tools.wait_event(
                "Browser.downloadProgress", lambda p: p.get("state") == "completed", within=60
            )
    finally:
        browser.terminate()
        try:
            browser.wait(timeout=10)
        except subprocess.TimeoutExpired:
            browser.kill()
            browser.wait(timeout=10)
        if browser.stderr is not None:
            browser.stderr.close()
    saved = downloads / "orders.csv"
    assert saved.read_bytes() == expected
