"""Topics written by transactional producers (Kafka Streams, Flink, Debezium do this):
only committed records count, a bounded run ends however the last offsets are used, and a
live run's idle windows close while a transaction stays open.

The topics are written by Kafka's own Java client (`tests.support.java_producer`), with
committed and aborted transactions interleaved on several partitions. The aborted records
are events of their own (another generator seed): counted, they would change the tables.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import orjson
import pytest

from tests.support.clickhouse import query_rows
from tests.support.dlq import assert_dlq_equals_the_table, read_dlq
from tests.support.flow import run_flow, run_live_while_idle
from tests.support.java_producer import JavaProducer
from tests.support.kafka_broker import TopicFactory, create_topic, delete_topic
from tests.support.oracle import oracle
from tests.support.tables import assert_tables_match, read_tables
from waxhouse.connectors.generator import ClickstreamGenerator, GeneratedRecord, GeneratorConfig

pytestmark = pytest.mark.integration

CLIENTS = ("kafka-python", "confluent")
EVENTS = 2_000
PARTITIONS = 3
CHUNK = 100  # committed records per transaction


@dataclass(frozen=True)
class TransactionalTopic:
    topic: str
    committed: list[GeneratedRecord]
    positions: dict[int, str]  # committed record n -> topic/partition/offset
    aborted: int  # records written in aborted transactions


def client_env(client: str) -> dict[str, str]:
    return {} if client == "kafka-python" else {"KAFKA_CLIENT": client}


@pytest.fixture(scope="module")
def transactional_topic(kafka_bootstrap: str) -> Iterator[TransactionalTopic]:
    """Committed transactions of CHUNK records, an aborted one after every second, and an
    aborted one last: the topic's final offsets are an aborted batch and its marker."""
    committed = ClickstreamGenerator(GeneratorConfig(seed=41, events=EVENTS)).take(EVENTS)
    rejected = ClickstreamGenerator(GeneratorConfig(seed=42, events=EVENTS)).take(EVENTS)
    topic = f"tx-{uuid.uuid4().hex[:12]}"
    create_topic(kafka_bootstrap, topic, PARTITIONS)
    sends: list[GeneratedRecord | None] = []  # None: a record of an aborted transaction
    config = {"transactional.id": f"waxhouse-tests-{topic}"}
    with JavaProducer(kafka_bootstrap, topic, config) as producer:
        for number, start in enumerate(range(0, EVENTS, CHUNK)):
            producer.begin()
            for record in committed[start : start + CHUNK]:
                producer.send(record.value, key=record.key, timestamp_ms=record.timestamp_ms)
                sends.append(record)
            producer.commit()
            if number % 2 == 1 or start + CHUNK >= EVENTS:
                producer.begin()
                for record in rejected[start // 2 : start // 2 + CHUNK // 2]:
                    producer.send(record.value, key=record.key, timestamp_ms=record.timestamp_ms)
                    sends.append(None)
                producer.flush()  # in the log, then aborted
                producer.abort()
        landed = producer.flush()
    positions = {
        record.n: f"{topic}/{partition}/{offset}"
        for record, (partition, offset) in zip(sends, landed, strict=True)
        if record is not None
    }
    yield TransactionalTopic(topic, committed, positions, sends.count(None))
    delete_topic(kafka_bootstrap, topic)


@pytest.mark.parametrize("client", CLIENTS)
def test_a_bounded_run_counts_only_committed_records_and_ends(
    client: str,
    transactional_topic: TransactionalTopic,
    kafka_bootstrap: str,
    topic_factory: TopicFactory,
    tmp_path: Path,
) -> None:
    assert transactional_topic.aborted >= 500
    dlq = topic_factory(1, prefix="tx-dlq")
    url = f"chdb://{tmp_path / 'store'}"
    done = run_flow(
        {
            "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
            "KAFKA_TOPIC": transactional_topic.topic,
            "KAFKA_DLQ_TOPIC": dlq,
            "KAFKA_STOP_AT_END": "true",
            "CLICKHOUSE_URL": url,
            **client_env(client),
        },
        timeout_s=120,  # "never ends" was the bug
    )
    assert f"{EVENTS:,} records in" in done.stdout
    tables = read_tables(url, done.stdout)
    expected = oracle(transactional_topic.committed)
    assert_tables_match(
        tables, expected, transactional_topic.committed, transactional_topic.positions
    )
    assert_dlq_equals_the_table(read_dlq(kafka_bootstrap, dlq), tables)


def event(n: int, user: str, page: str, ts: int) -> bytes:
    return orjson.dumps(
        {"event_id": f"e{n}", "user_id": user, "type": "page_view", "page": page, "ts": ts}
    )


@pytest.mark.parametrize("client", CLIENTS)
def test_idle_windows_close_while_a_transaction_stays_open(
    client: str, kafka_bootstrap: str, topic_factory: TopicFactory, tmp_path: Path
) -> None:
    """Caught up means at the last stable offset: the open transaction on partition 1
    holds it back, and both partitions' windows still close by the idle clock."""
    topic = topic_factory(2, prefix="tx-live")
    now = int(time.time() * 1000)
    config = {"transactional.id": f"waxhouse-tests-{topic}"}
    producer = JavaProducer(kafka_bootstrap, topic, config)
    producer.start()
    try:
        producer.begin()
        for n in range(20):
            partition = n % 2
            producer.send(event(n, f"u{n}", f"/p{partition}", now + n), partition=partition)
        producer.commit()
        producer.begin()
        for n in range(20, 30):
            producer.send(event(n, f"u{n}", "/open", now + n), partition=1)
        producer.flush()  # written, not committed
        url = f"chdb://{tmp_path / 'store'}"
        log = tmp_path / "flow.log"
        # Only the idle clock can close these windows: nothing committed comes after them.
        run_live_while_idle(
            {
                "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
                "KAFKA_TOPIC": topic,
                "KAFKA_DLQ_TOPIC": topic_factory(1, prefix="tx-live-dlq"),
                "CLICKHOUSE_URL": url,
                **client_env(client),
            },
            log,
            partitions=2,
        )
    finally:
        producer.abort()
        producer.close()

    views = query_rows(url, "SELECT page, sum(views) FROM page_stats GROUP BY page ORDER BY 1")
    assert views == [("/p0", 10), ("/p1", 10)]
    sessions = query_rows(url, "SELECT count(), sum(events) FROM user_sessions")
    assert sessions == [(20, 20)]
