"""Bring up the servers the tests need when they are not already answering.

- PostgreSQL and MariaDB at 127.0.0.1:5432 / :3306 are reused when they answer. Otherwise a
  private instance is started in a temporary directory on a free port (the packages are
  installed with apt-get first when the binaries are missing and we are root).
- PgBouncer (Debian's, transaction pooling, no prepared-statement support) always runs as a
  private instance on a free port in front of the PostgreSQL in use.

Everything started here is stopped when the test session ends.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

from sqlalchemy.engine import make_url

PG_DEFAULT = "postgresql://postgres@127.0.0.1:5432/test"
MYSQL_DEFAULT = "mysql://root@127.0.0.1:3306/test"


def answers(host: str, port: int, timeout: float = 1.0) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def wait_for(host: str, port: int, what: str, seconds: float = 60.0) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if answers(host, port):
            return
        time.sleep(0.2)
    raise RuntimeError(f"{what} did not start listening on {host}:{port} within {seconds:.0f}s")


def apt_install(*packages: str) -> None:
    if os.geteuid() != 0:
        raise RuntimeError(
            f"{' '.join(packages)} not installed and not root: install them, or point "
            "ROWSTREAM_TEST_PG_URL / ROWSTREAM_TEST_MYSQL_URL / ROWSTREAM_TEST_PGBOUNCER_URL "
            "at running servers"
        )
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
    subprocess.run(["apt-get", "install", "-y", "-qq", *packages], check=True, env=env)


def as_user(user: str, argv: list[str]) -> list[str]:
    """Servers refuse to run as root: run them as their own system user."""
    if os.geteuid() != 0:
        return argv
    return ["runuser", "-u", user, "--", *argv]


def private_dir(owner: str) -> Path:
    path = Path(tempfile.mkdtemp(prefix=f"rowstream-{owner}-"))
    path.chmod(0o755)
    if os.geteuid() == 0:
        shutil.chown(path, owner, owner)
    return path


class Stack(contextlib.AbstractContextManager["Stack"]):
    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self._procs: list[subprocess.Popen[bytes]] = []
        self._dirs: list[Path] = []

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        for proc in reversed(self._procs):
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
        for path in self._dirs:
            shutil.rmtree(path, ignore_errors=True)

    def _spawn(self, argv: list[str], log: Path) -> None:
        with log.open("ab") as out:
            self._procs.append(
                subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
            )

    # PostgreSQL ----------------------------------------------------------------------------
    def postgresql(self) -> str:
        if answers("127.0.0.1", 5432):
            return PG_DEFAULT
        bindir = _pg_bindir()
        if bindir is None:
            apt_install("postgresql")
            bindir = _pg_bindir()
            assert bindir is not None
        data = private_dir("postgres")
        self._dirs.append(data)
        port = free_port()
        subprocess.run(
            as_user(
                "postgres",
                [
                    f"{bindir}/initdb",
                    "-D",
                    str(data / "db"),
                    "-A",
                    "trust",
                    "-U",
                    "postgres",
                    "-E",
                    "UTF8",
                ],
            ),
            check=True,
            capture_output=True,
        )
        self._spawn(
            as_user(
                "postgres",
                [
                    f"{bindir}/postgres",
                    "-D",
                    str(data / "db"),
                    "-p",
                    str(port),
                    "-c",
                    "listen_addresses=127.0.0.1",
                    "-k",
                    str(data),
                    "-c",
                    "fsync=off",
                ],
            ),
            data / "postgres.log",
        )
        wait_for("127.0.0.1", port, "PostgreSQL")
        for _ in range(50):
            created = subprocess.run(
                [
                    f"{bindir}/createdb",
                    "-h",
                    "127.0.0.1",
                    "-p",
                    str(port),
                    "-U",
                    "postgres",
                    "test",
                ],
                capture_output=True,
            )
            if created.returncode == 0:
                break
            time.sleep(0.2)
        return f"postgresql://postgres@127.0.0.1:{port}/test"

    # MariaDB -------------------------------------------------------------------------------
    def mariadb(self) -> str:
        if answers("127.0.0.1", 3306):
            return MYSQL_DEFAULT
        if shutil.which("mariadbd") is None and not os.path.exists("/usr/sbin/mariadbd"):
            apt_install("mariadb-server")
        data = private_dir("mysql")
        self._dirs.append(data)
        port = free_port()
        subprocess.run(
            [
                "mariadb-install-db",
                f"--datadir={data / 'db'}",
                "--user=mysql",
                "--auth-root-authentication-method=normal",
                "--skip-test-db",
            ],
            check=True,
            capture_output=True,
        )
        self._spawn(
            [
                "/usr/sbin/mariadbd",
                "--no-defaults",
                f"--datadir={data / 'db'}",
                f"--port={port}",
                "--bind-address=127.0.0.1",
                f"--socket={data / 'mysql.sock'}",
                f"--pid-file={data / 'mysql.pid'}",
                "--user=mysql",
                "--skip-grant-tables=0",
            ],
            data / "mariadb.log",
        )
        wait_for("127.0.0.1", port, "MariaDB")
        for _ in range(50):
            created = subprocess.run(
                [
                    "mariadb",
                    "-h127.0.0.1",
                    f"-P{port}",
                    "-uroot",
                    "-e",
                    "CREATE DATABASE IF NOT EXISTS test",
                ],
                capture_output=True,
            )
            if created.returncode == 0:
                break
            time.sleep(0.2)
        return f"mysql://root@127.0.0.1:{port}/test"

    # PgBouncer -----------------------------------------------------------------------------
    def pgbouncer(self, pg_url: str) -> str:
        binary = shutil.which("pgbouncer") or "/usr/sbin/pgbouncer"
        if not os.path.exists(binary):
            apt_install("pgbouncer")
        target = make_url(pg_url)
        user = target.username or "postgres"
        conf_dir = private_dir("postgres")
        self._dirs.append(conf_dir)
        port = free_port()
        (conf_dir / "userlist.txt").write_text(f'"{user}" ""\n')
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
            f"admin_users = {user}\n"
            "ignore_startup_parameters = extra_float_digits\n"
            "server_reset_query =\n"
        )
        for name in ("userlist.txt", "pgbouncer.ini"):
            (conf_dir / name).chmod(0o644)
        self._spawn(
            as_user("postgres", [binary, str(conf_dir / "pgbouncer.ini")]),
            conf_dir.parent / f"{conf_dir.name}.log",
        )
        wait_for("127.0.0.1", port, "PgBouncer")
        return target.set(host="127.0.0.1", port=port).render_as_string(hide_password=False)


def _pg_bindir() -> str | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return os.path.dirname(found[-1]) if found else None
