"""Bring up the servers the tests need when they are not already usable.

- PostgreSQL and MariaDB at 127.0.0.1:5432 / :3306 are reused when we can log in there as
  ``postgres`` / ``root`` without a password (a port that merely answers is not enough: a
  freshly installed Debian server asks for a password over TCP). Otherwise a private instance
  is started in a temporary directory on a free port; the packages are installed with apt-get
  first when the binaries are missing and we are root.
- PgBouncer (Debian's, transaction pooling, no prepared-statement support) always runs as a
  private instance on a free port in front of the PostgreSQL in use.
- Redis (6379) and RabbitMQ (5672, guest/guest) are reused when Redis answers PING and
  RabbitMQ takes a login there; otherwise private ones are started the same way (RabbitMQ as a
  node of its own, with its own name, ports, database and cookie). They start only for tests
  that ask for a broker.
- Each test session works in a database of its own (``rowstream_test_<pid>``) on each server, so
  concurrent test sessions on one machine never see each other's tables or connections. It is
  dropped at the end; ones left behind by sessions that died are dropped at the next start.

``ROWSTREAM_TEST_PRIVATE_SERVERS=1`` skips the servers at the standard ports, which is how the
private-instance paths are exercised on a machine that has them. Everything started here is
stopped when the test session ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import glob
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import warnings
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import quote

import asyncmy
import asyncmy.errors
import asyncpg
from sqlalchemy.engine import URL, make_url

PG_DEFAULT = "postgresql://postgres@127.0.0.1:5432/test"
MYSQL_DEFAULT = "mysql://root@127.0.0.1:3306/test"
RUN_DATABASE_PREFIX = "rowstream_test_"
LOGIN_TIMEOUT = 5.0
START_TIMEOUT = 120.0


def answers(host: str, port: int, timeout: float = 1.0) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


REDIS_PORT = 6379
AMQP_PORT = 5672


def redis_answers(host: str, port: int, timeout: float = 2.0) -> bool:
    """True when a Redis server answers PING there (an open port is not enough)."""
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


def amqp_logs_in(url: str, timeout: float = 3.0) -> bool:
    """True when an AMQP broker at ``url`` accepts its login (kombu, bounded)."""
    import kombu

    try:
        with kombu.Connection(url, connect_timeout=timeout) as conn:
            conn.ensure_connection(max_retries=1, timeout=timeout)
            return True
    except Exception:
        return False


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def force_private() -> bool:
    return os.environ.get("ROWSTREAM_TEST_PRIVATE_SERVERS", "") not in ("", "0")


_apt_updated = False


def apt_install(*packages: str) -> None:
    global _apt_updated
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        raise RuntimeError(
            f"{' '.join(packages)} not installed and cannot apt-get install as non-root: "
            "install them, or point ROWSTREAM_TEST_PG_URL / ROWSTREAM_TEST_MYSQL_URL / "
            "ROWSTREAM_TEST_PGBOUNCER_URL at running servers"
        )
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    if not _apt_updated:
        _run(["apt-get", "update", "-qq"], env=env, timeout=600)
        _apt_updated = True
    _run(
        ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *packages],
        env=env,
        timeout=1200,
    )


def _run(argv: list[str], *, timeout: float = 120, **kwargs: Any) -> str:
    """Run a setup command; on failure raise with its own output, which says what broke."""
    done = subprocess.run(
        argv, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL, **kwargs
    )
    if done.returncode != 0:
        raise RuntimeError(
            f"{' '.join(argv)} exited {done.returncode}:\n{done.stdout}\n{done.stderr}"
        )
    output: str = done.stdout
    return output


def private_dir(owner: str | None) -> Path:
    path = Path(tempfile.mkdtemp(prefix=f"rowstream-{owner or 'server'}-"))
    path.chmod(0o755)
    if owner is not None:
        shutil.chown(path, owner, owner)
    return path


def server_user(name: str) -> str | None:
    """The system user a server runs as: its own when we are root (servers refuse root)."""
    return name if os.geteuid() == 0 else None


async def let_aiosqlite_stop() -> None:
    """Give aiosqlite's thread the moment it needs after a failed connect.

    aiosqlite (0.22) answers a failed connect by queueing a stop without awaiting it; when
    the test's event loop closes first, the thread's reply hits a closed loop and pytest
    reports an unhandled thread exception in whichever test runs next.
    """
    await asyncio.sleep(0.2)


# Logging in ---------------------------------------------------------------------------------
async def _pg_connect(url: URL, database: str | None = None) -> asyncpg.Connection:
    return await asyncpg.connect(
        host=url.host or "127.0.0.1",
        port=url.port or 5432,
        user=url.username or "postgres",
        password=url.password,
        database=database or url.database or "postgres",
        timeout=LOGIN_TIMEOUT,
        statement_cache_size=0,
    )


async def _my_connect(url: URL, database: str | None = None) -> Any:
    return await asyncmy.connect(
        host=url.host or "127.0.0.1",
        port=url.port or 3306,
        user=url.username or "root",
        password=url.password or "",
        database=database,
        connect_timeout=int(LOGIN_TIMEOUT),
        autocommit=True,
    )


async def _can_log_in(url: URL) -> bool:
    try:
        if url.get_backend_name() == "postgresql":
            # Any database will do to prove the login; the run database is made later.
            conn = await _pg_connect(url, "postgres")
            await conn.close()
        else:
            conn = await _my_connect(url)
            await conn.ensure_closed()
        return True
    except Exception:
        return False


async def _pg_run(socket_dir: str, port: int, sql: str) -> None:
    conn = await asyncpg.connect(
        host=socket_dir, port=port, user="postgres", database="postgres", timeout=LOGIN_TIMEOUT
    )
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


async def _pg_answers(socket_dir: str, port: int) -> bool:
    try:
        await _pg_run(socket_dir, port, "SELECT 1")
        return True
    except Exception:
        return False


def _tls_setup(db: Path, as_user: dict[str, Any]) -> list[str]:
    """A self-signed certificate and a pg_hba.conf that refuses TCP without TLS; returns the
    server options that turn TLS on."""
    key, cert = str(db / "server.key"), str(db / "server.crt")
    request = ["req", "-new", "-x509", "-days", "2", "-nodes", "-subj", "/CN=127.0.0.1"]
    _run(["openssl", *request, "-keyout", key, "-out", cert], **as_user)
    (db / "server.key").chmod(0o600)
    (db / "pg_hba.conf").write_text(
        "local all all trust\n"
        "hostssl all all 127.0.0.1/32 scram-sha-256\n"
        "hostnossl all all 127.0.0.1/32 reject\n"
    )
    return ["-c", "ssl=on", "-c", "password_encryption=scram-sha-256"]


def can_log_in(url: str) -> bool:
    parsed = make_url(url)
    if not answers(parsed.host or "127.0.0.1", parsed.port or _default_port(parsed)):
        return False
    return asyncio.run(_can_log_in(parsed))


def _default_port(url: URL) -> int:
    return 5432 if url.get_backend_name() == "postgresql" else 3306


# Per-session databases ----------------------------------------------------------------------
def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _stale(name: str) -> bool:
    suffix = name.removeprefix(RUN_DATABASE_PREFIX)
    return suffix.isdigit() and int(suffix) != os.getpid() and not _pid_alive(int(suffix))


async def _create_run_database(url: URL, name: str) -> None:
    if url.get_backend_name() == "postgresql":
        conn = await _pg_connect(url, "postgres")
        try:
            names = await conn.fetch(
                "SELECT datname FROM pg_database WHERE datname LIKE $1",
                RUN_DATABASE_PREFIX.replace("_", r"\_") + "%",
            )
            for row in names:
                if _stale(row["datname"]):
                    await conn.execute(f'DROP DATABASE IF EXISTS "{row["datname"]}" WITH (FORCE)')
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            await conn.execute(f'CREATE DATABASE "{name}"')
        finally:
            await conn.close()
        return
    conn = await _my_connect(url)
    try:
        async with conn.cursor() as cursor:
            await cursor.execute(
                "SHOW DATABASES LIKE %s", (RUN_DATABASE_PREFIX.replace("_", r"\_") + "%",)
            )
            for (existing,) in await cursor.fetchall():
                if _stale(existing):
                    await cursor.execute(f"DROP DATABASE IF EXISTS `{existing}`")
            await cursor.execute(f"DROP DATABASE IF EXISTS `{name}`")
            await cursor.execute(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4")
    finally:
        await conn.ensure_closed()


async def _drop_run_database(url: URL) -> None:
    name = url.database
    if url.get_backend_name() == "postgresql":
        conn = await _pg_connect(url, "postgres")
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await conn.close()
        return
    conn = await _my_connect(url)
    try:
        async with conn.cursor() as cursor:
            await cursor.execute(f"DROP DATABASE IF EXISTS `{name}`")
    finally:
        await conn.ensure_closed()


def run_database(url: str) -> str:
    """A fresh database for this test session on the server of ``url``; its URL.

    When the server does not let us create databases, ``url`` is used as it is.
    """
    parsed = make_url(url)
    name = f"{RUN_DATABASE_PREFIX}{os.getpid()}"
    try:
        with warnings.catch_warnings():
            # asyncmy turns the server's notes ("database doesn't exist" after DROP ... IF
            # EXISTS) into warnings, which the test run's filterwarnings=error would raise.
            warnings.simplefilter("ignore")
            asyncio.run(_create_run_database(parsed, name))
    except (asyncpg.InsufficientPrivilegeError, asyncmy.errors.OperationalError) as exc:
        if isinstance(exc, asyncmy.errors.OperationalError) and exc.args[0] not in (1044, 1227):
            raise
        return url
    return parsed.set(database=name).render_as_string(hide_password=False)


def drop_run_database(url: str) -> None:
    parsed = make_url(url)
    if (parsed.database or "").startswith(RUN_DATABASE_PREFIX):
        with contextlib.suppress(Exception), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            asyncio.run(_drop_run_database(parsed))


# The stack ----------------------------------------------------------------------------------
class Stack(contextlib.AbstractContextManager["Stack"]):
    """The servers of one test session; whatever it started stops on exit."""

    def __init__(self, workdir: Path, *, private: bool | None = None) -> None:
        self.workdir = workdir
        self.private = force_private() if private is None else private
        self._procs: list[tuple[subprocess.Popen[bytes], signal.Signals]] = []
        self._dirs: list[Path] = []
        self._databases: list[str] = []

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        for url in reversed(self._databases):
            drop_run_database(url)
        for proc, stop in reversed(self._procs):
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(stop)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
        for path in self._dirs:
            shutil.rmtree(path, ignore_errors=True)

    def run_database(self, url: str) -> str:
        """A database of this session's own on ``url``'s server, dropped on exit."""
        made = run_database(url)
        if made != url:
            self._databases.append(made)
        return made

    def _spawn(
        self,
        argv: list[str],
        log: Path,
        *,
        user: str | None,
        stop: signal.Signals,
        env: dict[str, str] | None = None,
    ) -> subprocess.Popen[bytes]:
        with log.open("ab") as out:
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                # Its own process group: a Ctrl-C in the terminal reaches pytest, not the
                # servers, which are stopped in order on exit instead.
                start_new_session=True,
                env=env,
                user=user,
                group=user,
                extra_groups=[] if user is not None else None,
            )
        if user is not None:
            shutil.chown(log, user, user)
        self._procs.append((proc, stop))
        return proc

    def _wait_for(self, proc: subprocess.Popen[bytes], port: int, what: str, log: Path) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if answers("127.0.0.1", port):
                return
            if proc.poll() is not None:
                break
            time.sleep(0.2)
        tail = log.read_text(errors="replace")[-3000:] if log.exists() else ""
        raise RuntimeError(
            f"{what} did not start listening on 127.0.0.1:{port} (exit code {proc.poll()}); "
            f"its log {log}:\n{tail}"
        )

    # PostgreSQL ---------------------------------------------------------------------------
    def postgresql(self) -> str:
        if not self.private and can_log_in(PG_DEFAULT):
            return PG_DEFAULT
        port, _ = self._private_postgresql()
        return f"postgresql://postgres@127.0.0.1:{port}/postgres"

    def postgresql_tls(self, password: str) -> str:
        """A private PostgreSQL that takes TCP clients only over TLS and with a password
        (scram-sha-256), as production servers do. Its URL carries both."""
        port, data = self._private_postgresql(tls=True)
        literal = password.replace("'", "''")
        asyncio.run(_pg_run(str(data), port, f"ALTER ROLE postgres PASSWORD '{literal}'"))
        user = quote(password, safe="")
        return f"postgresql://postgres:{user}@127.0.0.1:{port}/postgres?ssl=require"

    def _private_postgresql(self, *, tls: bool = False) -> tuple[int, Path]:
        """Start a private PostgreSQL; returns its port and directory (the socket's too)."""
        bindir = _pg_bindir()
        if bindir is None:
            apt_install("postgresql")
            bindir = _pg_bindir()
            if bindir is None:
                raise RuntimeError("apt-get installed postgresql but no initdb was found")
        user = server_user("postgres")
        data = private_dir(user)
        self._dirs.append(data)
        port = free_port()
        as_user: dict[str, Any] = {
            "user": user,
            "group": user,
            "extra_groups": [] if user is not None else None,
        }
        # No locale: a fresh machine may have none generated, and tests need none.
        initdb = [f"{bindir}/initdb", "-D", str(data / "db"), "-A", "trust", "-U", "postgres"]
        _run([*initdb, "-E", "UTF8", "--no-locale"], **as_user)
        options = ["-c", "fsync=off", "-c", "max_connections=200"]
        if tls:
            options += _tls_setup(data / "db", as_user)
        log = data / "postgres.log"
        proc = self._spawn(
            [
                *(f"{bindir}/postgres", "-D", str(data / "db"), "-p", str(port), "-k", str(data)),
                *("-c", "listen_addresses=127.0.0.1", *options),
            ],
            log,
            user=user,
            # SIGINT is PostgreSQL's fast shutdown; SIGTERM would wait for every client.
            stop=signal.SIGINT,
        )
        self._wait_for(proc, port, "PostgreSQL", log)
        deadline = time.monotonic() + START_TIMEOUT
        # The port opens a moment before the server accepts logins; the socket needs no TLS.
        while not asyncio.run(_pg_answers(str(data), port)):
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError(f"PostgreSQL on port {port} refuses logins; see {log}")
            time.sleep(0.2)
        return port, data

    # MariaDB ------------------------------------------------------------------------------
    def mariadb(self) -> str:
        if not self.private and can_log_in(MYSQL_DEFAULT):
            return MYSQL_DEFAULT
        server = _mariadbd()
        if server is None or shutil.which("mariadb-install-db") is None:
            apt_install("mariadb-server", "mariadb-client")
            server = _mariadbd()
            if server is None:
                raise RuntimeError("apt-get installed mariadb-server but no mariadbd was found")
        user = server_user("mysql")
        data = private_dir(user)
        self._dirs.append(data)
        port = free_port()
        _run(
            [
                "mariadb-install-db",
                "--no-defaults",
                f"--datadir={data / 'db'}",
                *([f"--user={user}"] if user else []),
                "--auth-root-authentication-method=normal",
                "--skip-test-db",
            ],
            timeout=300,
        )
        socket_path = data / "mysql.sock"
        log = data / "mariadb.log"
        proc = self._spawn(
            [
                server,
                "--no-defaults",
                f"--datadir={data / 'db'}",
                f"--port={port}",
                "--bind-address=127.0.0.1",
                f"--socket={socket_path}",
                f"--pid-file={data / 'mysql.pid'}",
                "--innodb-flush-log-at-trx-commit=2",
                "--skip-log-bin",
            ],
            log,
            user=user,
            stop=signal.SIGTERM,
        )
        self._wait_for(proc, port, "MariaDB", log)
        # root@localhost matches socket logins; TCP from 127.0.0.1 may not resolve to
        # "localhost", so give root a passwordless 127.0.0.1 account too, over the socket.
        grant = (
            "CREATE USER IF NOT EXISTS 'root'@'127.0.0.1'; "
            "GRANT ALL PRIVILEGES ON *.* TO 'root'@'127.0.0.1' WITH GRANT OPTION; "
            "CREATE DATABASE IF NOT EXISTS test;"
        )
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            done = subprocess.run(
                [_mariadb_client(), f"--socket={socket_path}", "-uroot", "-e", grant],
                capture_output=True,
                text=True,
                stdin=subprocess.DEVNULL,
                timeout=60,
            )
            if done.returncode == 0:
                break
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError(f"MariaDB on port {port} refuses logins: {done.stderr}")
            time.sleep(0.2)
        return f"mysql://root@127.0.0.1:{port}/test"

    # PgBouncer ----------------------------------------------------------------------------
    def pgbouncer(self, pg_url: str) -> str:
        binary = _pgbouncer()
        if binary is None:
            apt_install("pgbouncer")
            binary = _pgbouncer()
            if binary is None:
                raise RuntimeError("apt-get installed pgbouncer but no binary was found")
        target = make_url(pg_url)
        login = target.username or "postgres"
        user = server_user("postgres")
        conf_dir = private_dir(user)
        self._dirs.append(conf_dir)
        port = free_port()
        (conf_dir / "userlist.txt").write_text(f'"{login}" ""\n')
        (conf_dir / "pgbouncer.ini").write_text(
            "[databases]\n"
            f"* = host={target.host or '127.0.0.1'} port={target.port or 5432}\n"
            "[pgbouncer]\n"
            f"listen_addr = 127.0.0.1\nlisten_port = {port}\n"
            f"unix_socket_dir = {conf_dir}\n"
            "auth_type = trust\n"
            f"auth_file = {conf_dir / 'userlist.txt'}\n"
            "pool_mode = transaction\n"
            "max_client_conn = 500\n"
            "default_pool_size = 4\n"
            # LIFO reuse of server connections (the default, said out loud): the harness
            # test relies on a released backend being the next one handed out.
            "server_round_robin = 0\n"
            f"admin_users = {login}\n"
            "ignore_startup_parameters = extra_float_digits\n"
            "server_reset_query =\n"
        )
        for name in ("userlist.txt", "pgbouncer.ini"):
            (conf_dir / name).chmod(0o644)
        log = conf_dir / "pgbouncer.log"
        # SIGTERM is PgBouncer 1.18's immediate shutdown; SIGINT would wait for stray clients.
        proc = self._spawn(
            [binary, str(conf_dir / "pgbouncer.ini")], log, user=user, stop=signal.SIGTERM
        )
        self._wait_for(proc, port, "PgBouncer", log)
        return target.set(host="127.0.0.1", port=port).render_as_string(hide_password=False)

    # Redis --------------------------------------------------------------------------------
    def redis(self) -> str:
        if not self.private and redis_answers("127.0.0.1", REDIS_PORT):
            return f"redis://127.0.0.1:{REDIS_PORT}/0"
        binary = shutil.which("redis-server") or "/usr/bin/redis-server"
        if not os.path.exists(binary):
            apt_install("redis-server")
        user = server_user("redis")
        data = private_dir(user)
        self._dirs.append(data)
        port = free_port()
        log = data / "redis.log"
        # No snapshots, no append-only file: the tests' queues live as long as the session.
        argv = [binary, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(data)]
        argv += ["--save", "", "--appendonly", "no", "--daemonize", "no"]
        proc = self._spawn(argv, log, user=user, stop=signal.SIGTERM)
        self._wait_for(proc, port, "Redis", log)
        deadline = time.monotonic() + START_TIMEOUT
        while not redis_answers("127.0.0.1", port):
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError(f"Redis on port {port} does not answer PING; see {log}")
            time.sleep(0.2)
        return f"redis://127.0.0.1:{port}/0"

    # RabbitMQ -----------------------------------------------------------------------------
    def rabbitmq(self, config: str = "") -> str:
        """RabbitMQ's URL; ``config`` (rabbitmq.conf lines) asks for a private node with it."""
        standard = f"amqp://guest:guest@127.0.0.1:{AMQP_PORT}//"
        if not self.private and not config and amqp_logs_in(standard):
            return standard
        server = "/usr/lib/rabbitmq/bin/rabbitmq-server"
        if not os.path.exists(server):
            apt_install("rabbitmq-server")
        user = server_user("rabbitmq")
        data = private_dir(user)
        self._dirs.append(data)
        port, dist = free_port(), free_port()
        # A node of its own: its own name, ports, database, logs and Erlang cookie (in HOME),
        # no plugins; guest/guest may log in from loopback, which is all the tests use.
        env = {
            "PATH": "/usr/bin:/bin:/usr/sbin:/sbin:/usr/lib/rabbitmq/bin",
            "HOME": str(data),
            # A short name: RabbitMQ appends this host's name, as its cluster name says.
            "RABBITMQ_NODENAME": f"rowstream{port}",
            "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
            "RABBITMQ_NODE_PORT": str(port),
            "RABBITMQ_DIST_PORT": str(dist),
            "RABBITMQ_MNESIA_BASE": str(data / "mnesia"),
            "RABBITMQ_LOG_BASE": str(data / "log"),
            "RABBITMQ_PID_FILE": str(data / "rabbitmq.pid"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(data / "enabled_plugins"),
            "RABBITMQ_CONFIG_FILE": str(data / "rabbitmq"),
            "RABBITMQ_ADVANCED_CONFIG_FILE": str(data / "advanced.config"),
        }
        # The system's Erlang cookie, when there is one, so rabbitmqctl (which runs as the
        # rabbitmq user, with that user's cookie) can reach this node as it reaches the shared one.
        system_cookie = Path("/var/lib/rabbitmq/.erlang.cookie")
        if system_cookie.exists():
            shutil.copyfile(system_cookie, data / ".erlang.cookie")
            (data / ".erlang.cookie").chmod(0o400)
            if user is not None:
                shutil.chown(data / ".erlang.cookie", user, user)
        (data / "rabbitmq.conf").write_text(config)
        (data / "rabbitmq.conf").chmod(0o644)
        log = data / "rabbitmq.out"
        proc = self._spawn([server], log, user=user, stop=signal.SIGTERM, env=env)
        url = f"amqp://guest:guest@127.0.0.1:{port}//"
        deadline = time.monotonic() + START_TIMEOUT
        # The AMQP port opens before the broker takes logins: wait for a real login.
        while not amqp_logs_in(url):
            if time.monotonic() > deadline or proc.poll() is not None:
                tail = log.read_text(errors="replace")[-3000:] if log.exists() else ""
                raise RuntimeError(f"RabbitMQ on port {port} refuses logins; its log:\n{tail}")
            time.sleep(0.5)
        return url


def _pg_bindir() -> str | None:
    found = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/initdb"),
        key=lambda p: int(Path(p).parts[-3]) if Path(p).parts[-3].isdigit() else 0,
    )
    return os.path.dirname(found[-1]) if found else None


def _mariadbd() -> str | None:
    for candidate in (shutil.which("mariadbd"), "/usr/sbin/mariadbd", "/usr/sbin/mysqld"):
        if candidate and os.path.exists(candidate):
            return candidate
    return None


def _mariadb_client() -> str:
    return shutil.which("mariadb") or shutil.which("mysql") or "mariadb"


def _pgbouncer() -> str | None:
    for candidate in (shutil.which("pgbouncer"), "/usr/sbin/pgbouncer"):
        if candidate and os.path.exists(candidate):
            return candidate
    return None
