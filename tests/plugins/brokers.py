"""Real message brokers for the tests: Redis and RabbitMQ.

The servers at the standard local ports are used when they answer (Redis a PING, RabbitMQ a
guest login); otherwise :mod:`tests.plugins._bringup` starts private ones. Environment
variables override:

    ROWSTREAM_TEST_REDIS_URL        default redis://127.0.0.1:6379/0
    ROWSTREAM_TEST_AMQP_URL         default amqp://guest:guest@127.0.0.1:5672//

They are session fixtures of their own, started on first use: database tests never wait for a
broker.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from . import _bringup


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with _bringup.Stack(tmp_path_factory.mktemp("redis")) as stack:
        yield os.environ.get("ROWSTREAM_TEST_REDIS_URL") or stack.redis()


@pytest.fixture(scope="session")
def amqp_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with _bringup.Stack(tmp_path_factory.mktemp("rabbitmq")) as stack:
        yield os.environ.get("ROWSTREAM_TEST_AMQP_URL") or stack.rabbitmq()


@pytest.fixture(params=["redis", "rabbitmq"])
def broker_url(request: pytest.FixtureRequest) -> str:
    """The URL of each broker a test applies to: the test runs once per broker."""
    name = "redis_url" if request.param == "redis" else "amqp_url"
    url: str = request.getfixturevalue(name)
    return url
