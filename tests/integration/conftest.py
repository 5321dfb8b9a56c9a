"""Fixtures for integration tests: real servers, one topic (or database) per test."""

from __future__ import annotations

import logging
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from kafka.errors import KafkaError

from tests.support.kafka_broker import KafkaBroker, TopicFactory, create_topic, delete_topic
from tests.support.redis_server import RedisServer
from tests.support.tcp_proxy import TcpProxy

logger = logging.getLogger(__name__)

_INTEGRATION_DIR = Path(__file__).resolve().parent


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark every test in this directory ``integration``."""
    for item in items:
        if item.path.is_relative_to(_INTEGRATION_DIR):
            item.add_marker(pytest.mark.integration)


# ---------------------------------------------------------------------------
# Redis


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """The session's own `redis-server` (Debian's), on a free loopback port. A test that
    kills it leaves it to the `redis_url` fixture of the next test to start it again."""
    with RedisServer() as server:
        yield server


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    """A Redis database of this test's own, empty (the server started if a test killed it)."""
    redis_server.start()
    return redis_server.database()


# ---------------------------------------------------------------------------
# Kafka

KAFKA_BOOTSTRAP_ENV = "KAFKA_BOOTSTRAP_SERVERS"


@pytest.fixture(scope="session")
def _session_kafka_broker() -> Iterator[KafkaBroker | None]:
    """The broker this session runs, or None when ``KAFKA_BOOTSTRAP_SERVERS`` names one.

    Besides PLAINTEXT it serves SASL_PLAINTEXT and SASL_SSL (SCRAM-SHA-512) and the
    PROXIED listener (see `tests.support.kafka_broker`).
    """
    if os.environ.get(KAFKA_BOOTSTRAP_ENV):
        yield None
        return
    with KafkaBroker() as broker:
        yield broker


@pytest.fixture(scope="session")
def kafka_bootstrap(_session_kafka_broker: KafkaBroker | None) -> str:
    """``host:port[,...]`` of the Kafka cluster for this session."""
    if _session_kafka_broker is None:
        return os.environ[KAFKA_BOOTSTRAP_ENV]
    return _session_kafka_broker.bootstrap_servers


@pytest.fixture
def kafka_broker(_session_kafka_broker: KafkaBroker | None) -> Iterator[KafkaBroker]:
    """The session's own broker, for tests that stop and start it.

    Skips when an external broker is configured. If the test leaves the broker down, it is
    started again afterwards so later tests find it running.
    """
    if _session_kafka_broker is None:
        pytest.skip(f"{KAFKA_BOOTSTRAP_ENV} names an external broker, which tests cannot restart")
    yield _session_kafka_broker
    _session_kafka_broker.start()


@pytest.fixture
def kafka_proxy(kafka_broker: KafkaBroker) -> Iterator[TcpProxy]:
    """A cuttable proxy in front of the broker's PROXIED listener, where it is advertised.

    Clients bootstrapped at ``kafka_broker.proxied_bootstrap_servers`` (= ``proxy.address``)
    reach the broker only through it. Closed (every connection reset) after the test.
    """
    with TcpProxy(kafka_broker.ports.proxy, kafka_broker.proxied_listener_port) as proxy:
        yield proxy


@pytest.fixture
def store_url(tmp_path: Path) -> str:
    """A fresh embedded ClickHouse store for the test."""
    return f"chdb://{tmp_path / 'store'}"


@pytest.fixture
def topic_factory(kafka_bootstrap: str) -> Iterator[TopicFactory]:
    """Create topics named ``<prefix>-<uuid>``; they are deleted after the test."""
    created: list[str] = []

    def create(partitions: int = 1, *, prefix: str = "topic") -> str:
        name = f"{prefix}-{uuid.uuid4().hex}"
        create_topic(kafka_bootstrap, name, partitions)
        created.append(name)
        return name

    yield create
    for name in created:
        try:
            delete_topic(kafka_bootstrap, name, timeout_s=5.0)
        except KafkaError as e:
            logger.warning("could not delete test topic %s: %r", name, e)
