"""``rowstream doctor`` for a Celery broker: the timeouts that decide how long a partition may run.

A rowstream partition is one Celery task acknowledged when it ends (``acks_late``). Two broker
settings bound how long such a task may run before the broker gives its message to another
worker:

- RabbitMQ's ``consumer_timeout`` (30 min by default): past it the broker closes the worker's
  channel and redelivers the message;
- Redis's visibility timeout, a setting of the Celery app (1 h by default, 6 h in rowstream's
  own app): past it an unacknowledged message is handed out again.

rowstream's ledger makes a second delivery harmless (a partition is claimed once per attempt),
but the work is done twice, so partitions must be sized to finish well within these bounds.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from urllib.parse import urlsplit

from ._doctor import Diagnosis
from ._source import mask_url

BROKER_SCHEMES = ("amqp", "amqps", "pyamqp", "redis", "rediss")
CELERY_DEFAULT_VISIBILITY = 3600.0
# A partition should take minutes: a timeout shorter than this would cut ordinary partitions.
SHORTEST_SAFE_TIMEOUT = 600.0
CONNECT_TIMEOUT = 5.0


def is_broker_url(url: str) -> bool:
    return urlsplit(url).scheme.lower() in BROKER_SCHEMES


def diagnose_broker(url: str) -> Diagnosis:
    """Connect to the broker at ``url`` and report the timeouts that bound a partition."""
    try:
        import kombu
    except ImportError:
        found = Diagnosis()
        found.problems.append("kombu is not installed: pip install 'rowstream[celery]'")
        return found
    found = Diagnosis()
    found.facts.append(("broker", mask_url(url)))
    try:
        connection = kombu.Connection  # type: ignore[attr-defined]
        with connection(url, connect_timeout=CONNECT_TIMEOUT) as conn:  # type: ignore[no-untyped-call]
            conn.ensure_connection(max_retries=1, timeout=CONNECT_TIMEOUT)
            if urlsplit(url).scheme.lower().startswith("redis"):
                _redis(conn, found)
            else:
                _rabbitmq(conn, url, found)
    except Exception as exc:
        found.problems.append(
            f"cannot reach the broker at {mask_url(url)}: {_first_line(exc)}; check the URL "
            "and that the broker runs"
        )
    return found


def _rabbitmq(conn: object, url: str, found: Diagnosis) -> None:
    properties = conn.connection.server_properties  # type: ignore[attr-defined]
    found.facts.append(("server", f"{properties.get('product')} {properties.get('version')}"))
    timeout = _local_consumer_timeout(url, str(properties.get("cluster_name") or ""))
    if timeout is None:
        found.facts.append(("consumer_timeout", "not readable from here (default 1800 s)"))
        found.advice.append(
            "RabbitMQ's consumer_timeout (30 min by default) must exceed the longest partition: "
            "pass more partitions to rowstream.celery so that each takes minutes"
        )
        return
    if timeout == "none":
        found.facts.append(("consumer_timeout", "none"))
        return
    seconds = float(timeout) / 1000
    found.facts.append(("consumer_timeout", f"{seconds:g} s"))
    _judge("consumer_timeout", seconds, found, where="rabbitmq.conf (consumer_timeout)")


def _local_consumer_timeout(url: str, node: str) -> str | None:
    """RabbitMQ's consumer_timeout in ms ("none" when unset), read with rabbitmqctl from the
    node (its cluster name) when the broker runs on this machine and our Erlang cookie opens
    it; None when it cannot be read (a client cannot ask over AMQP)."""
    host = urlsplit(url).hostname or "localhost"
    rabbitmqctl = shutil.which("rabbitmqctl")
    if host not in ("127.0.0.1", "localhost", "::1") or rabbitmqctl is None:
        return None
    try:
        done = subprocess.run(
            [
                rabbitmqctl,
                *(["-n", node] if node else []),
                "eval",
                "application:get_env(rabbit, consumer_timeout).",
            ],
            capture_output=True,
            text=True,
            timeout=20,
            stdin=subprocess.DEVNULL,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    if done.returncode != 0:
        return None
    match = re.search(r"\{ok,\s*(\d+)\}", done.stdout)
    if match:
        return match.group(1)
    return "none" if done.stdout.strip() == "undefined" else None


def _redis(conn: object, found: Diagnosis) -> None:
    client = conn.default_channel.client  # type: ignore[attr-defined]
    info = client.info("server")
    found.facts.append(("server", f"Redis {info.get('redis_version')}"))
    options = conn.transport_options  # type: ignore[attr-defined]
    visibility = float(options.get("visibility_timeout", CELERY_DEFAULT_VISIBILITY))
    found.facts.append(("visibility_timeout", f"{visibility:g} s (this client's setting)"))
    found.advice.append(
        "Redis hands an unacknowledged task to another worker after the Celery app's "
        "visibility_timeout (1 h by default; rowstream's own app sets 6 h): in your own app set "
        "broker_transport_options={'visibility_timeout': ...} above the longest partition"
    )
    _judge("visibility_timeout", visibility, found, where="broker_transport_options")


def _judge(name: str, seconds: float, found: Diagnosis, *, where: str) -> None:
    if seconds < SHORTEST_SAFE_TIMEOUT:
        found.problems.append(
            f"{name} is {seconds:g} s: partitions that run longer are delivered again; raise "
            f"it in {where} to at least {SHORTEST_SAFE_TIMEOUT:g} s, or use more partitions"
        )


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]
