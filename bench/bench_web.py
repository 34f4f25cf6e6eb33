"""Downloads through uvicorn against ``rowstream export`` to a file, in one run.

    python bench/bench_web.py                  # 1M rows of bench_orders (PG database test)
    python bench/bench_web.py --rows 200000 --only rowstream-csv,export-csv

The table is the 5M-row ``bench_orders`` of the other benchmarks; every variant reads its
first ``--rows`` rows (1M by default: the machine is shared). Each web variant gets a fresh
uvicorn (bench/_web_app.py) whose peak RSS (VmHWM) is read when the download ends; curl
downloads to /dev/null without compression. The export runs ``python -m rowstream export`` to
a file (its default, COPY, on PostgreSQL). Ratios: rows/s against the export, and for JSON
Lines against the naive per-row StreamingResponse and FastAPI's own JSON Lines streaming.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import DEFAULT_PG_DSN, Result, ensure_orders, ratio_table

ROOT = Path(__file__).resolve().parents[1]
VARIANTS = (
    "export-csv",
    "rowstream-csv",
    "export-jsonl",
    "rowstream-jsonl",
    "naive-jsonl",
    "fastapi-jsonl",
)
_PATHS = {
    "rowstream-csv": "/rowstream.csv",
    "rowstream-jsonl": "/rowstream.jsonl",
    "naive-jsonl": "/naive.jsonl",
    "fastapi-jsonl": "/fastapi.jsonl",
}


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT / "bench")])}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _peak_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def run_export(url: str, rows: int, fmt: str) -> Result:
    with tempfile.TemporaryDirectory() as tmp:
        target = Path(tmp) / f"orders.{fmt}"
        started = time.perf_counter()
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "rowstream",
                "export",
                url,
                "--table",
                "bench_orders",
                "--where",
                f"id <= {rows}",
                "-o",
                str(target),
                "-q",
            ],
            env=_env(),
            capture_output=True,
            timeout=1800,
        )
        seconds = time.perf_counter() - started
        if done.returncode != 0:
            raise SystemExit(done.stderr.decode())
        size = target.stat().st_size
    return Result(f"export-{fmt}", rows, seconds, 0.0, {"bytes": size})


def run_web(url: str, rows: int, name: str) -> Result:
    port = _free_port()
    env = {**_env(), "ROWSTREAM_BENCH_WEB_URL": url, "ROWSTREAM_BENCH_WEB_ROWS": str(rows)}
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "uvicorn",
            "_web_app:app",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--log-level",
            "warning",
        ],
        env=env,
        cwd=ROOT / "bench",
    )
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                time.sleep(0.1)
        else:
            raise SystemExit("uvicorn did not start within 60 s")
        started = time.perf_counter()
        done = subprocess.run(
            [
                "curl",
                "-sS",
                "-H",
                "Accept-Encoding: identity",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code} %{size_download}",
                f"http://127.0.0.1:{port}{_PATHS[name]}",
            ],
            capture_output=True,
            timeout=1800,
        )
        seconds = time.perf_counter() - started
        status, size = done.stdout.decode().split()
        if done.returncode != 0 or status != "200":
            raise SystemExit(f"{name}: curl {done.returncode} {status} {done.stderr.decode()}")
        peak = _peak_mb(server.pid)
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(timeout=20)
    return Result(name, rows, seconds, peak, {"bytes": int(size)})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default=DEFAULT_PG_DSN)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--only", default=",".join(VARIANTS))
    args = parser.parse_args()
    chosen = [v for v in VARIANTS if v in args.only.split(",")]
    built = asyncio.run(ensure_orders(args.url))
    if built:
        print(f"built bench_orders in {built:.0f} s", file=sys.stderr)
    results = []
    for name in chosen:
        if name.startswith("export-"):
            result = run_export(args.url, args.rows, name.removeprefix("export-"))
        else:
            result = run_web(args.url, args.rows, name)
        print(
            f"{name}: {result.seconds:.2f} s, {result.rows_per_second:,.0f} rows/s, "
            f"{result.extra['bytes']:,} bytes, peak RSS {result.peak_rss_mb:.0f} MB",
            file=sys.stderr,
        )
        results.append(result)
    print(
        ratio_table(
            results,
            [
                ("vs export-csv", "export-csv"),
                ("vs export-jsonl", "export-jsonl"),
                ("vs naive-jsonl", "naive-jsonl"),
                ("vs fastapi-jsonl", "fastapi-jsonl"),
            ],
        )
    )


if __name__ == "__main__":
    main()
