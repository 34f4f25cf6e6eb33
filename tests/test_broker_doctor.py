"""`rowstream doctor` on a Celery broker's URL, against real RabbitMQ and Redis: the timeouts
that bound how long one partition may run."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.plugins import _bringup


def doctor(url: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "rowstream", "doctor", url],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_rabbitmq_reports_its_version_and_consumer_timeout(amqp_url: str) -> None:
    done = doctor(amqp_url)
    assert done.returncode == 0, done.stderr
    assert "RabbitMQ 3." in done.stdout
    assert "consumer_timeout" in done.stdout
    assert "guest:guest" not in done.stdout
    assert done.stdout.rstrip().endswith("partitions: ok")


def test_redis_reports_its_version_and_visibility_timeout(redis_url: str) -> None:
    done = doctor(redis_url)
    assert done.returncode == 0, done.stderr
    assert "Redis " in done.stdout and "visibility_timeout" in done.stdout
    assert done.stdout.rstrip().endswith("partitions: ok")


def test_a_short_consumer_timeout_is_a_problem(tmp_path: Path) -> None:
    # A private node on this machine whose consumer_timeout (1 min) would cut ordinary
    # partitions; rabbitmqctl reads it from the node its cluster name names.
    with _bringup.Stack(tmp_path, private=True) as stack:
        url = stack.rabbitmq(config="consumer_timeout = 60000\n")
        done = doctor(url)
    assert done.returncode == 1
    assert "consumer_timeout  60 s" in done.stdout
    assert "consumer_timeout is 60 s: partitions that run longer are delivered again" in done.stderr


def test_an_unreachable_broker_is_one_line_without_the_password() -> None:
    done = doctor("amqp://guest:hunter2pass@127.0.0.1:1//")
    assert done.returncode == 1
    assert "cannot reach the broker" in done.stderr and "Traceback" not in done.stderr
    assert "hunter2" not in done.stdout + done.stderr
