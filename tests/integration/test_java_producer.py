"""The Java producer tool (tests/support/java_producer.py) against the real broker: records
land as sent, keyed records go where Java's partitioner puts them, and transactions commit,
abort and stay open as a JVM producer's do."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator

import pytest
from kafka import KafkaConsumer, TopicPartition
from kafka.partitioner.default import murmur2

from tests.support.dlq import read_partitions
from tests.support.java_producer import JavaProducer, JavaProducerError
from tests.support.kafka_broker import TopicFactory

pytestmark = pytest.mark.integration

Read = dict[tuple[int, int], tuple[bytes | None, bytes | None, int]]  # (p, offset) -> record


def read_all(bootstrap: str, topic: str, partitions: int, *, committed_only: bool = True) -> Read:
    """Every record up to each partition's end (the last stable offset when reading
    committed), by (partition, offset)."""
    records = read_partitions(bootstrap, topic, partitions, committed_only=committed_only)
    return {(r.partition, r.offset): (r.key, r.value, r.timestamp) for r in records}


def end_offsets(bootstrap: str, topic: str, *, committed_only: bool) -> int:
    """The end of partition 0: the last stable offset, or the high watermark."""
    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap,
        isolation_level="read_committed" if committed_only else "read_uncommitted",
    )
    try:
        tp = TopicPartition(topic, 0)
        return int(consumer.end_offsets([tp])[tp])
    finally:
        consumer.close()


@pytest.fixture
def transactional_id() -> Iterator[str]:
    yield f"java-producer-test-{uuid.uuid4().hex}"


def test_records_land_as_sent(kafka_bootstrap: str, topic_factory: TopicFactory) -> None:
    topic = topic_factory(3, prefix="java")
    sent = [  # value, key, partition, timestamp
        (b"first", b"k1", 2, 1_767_225_600_000),
        (None, b"k1", 2, 1_767_225_600_001),  # a tombstone
        (b"no key", None, 0, 1_000),
        (b"", b"", 1, 1_767_225_600_002),  # empty, not null
        (bytes(range(256)) * 40, b"\x00\xff binary \n key", 1, 0),
    ]
    before_ms = int(time.time() * 1000)
    with JavaProducer(kafka_bootstrap, topic, {"acks": "all"}) as producer:
        for value, key, partition, timestamp in sent:
            producer.send(value, key=key, partition=partition, timestamp_ms=timestamp)
        producer.send(b"stamped by the producer", key=b"k2", partition=0)
        positions = producer.close()
    after_ms = int(time.time() * 1000)

    assert [p for p, _ in positions] == [2, 2, 0, 1, 1, 0]
    assert len(set(positions)) == len(positions)
    got = read_all(kafka_bootstrap, topic, 3)
    assert len(got) == len(positions)
    for (value, key, _, timestamp), position in zip(sent, positions[:-1], strict=True):
        assert got[position] == (key, value, timestamp)
    key, value, stamped = got[positions[-1]]
    assert (key, value) == (b"k2", b"stamped by the producer")
    assert before_ms <= stamped <= after_ms


def test_keyed_records_go_where_javas_partitioner_puts_them(
    kafka_bootstrap: str, topic_factory: TopicFactory
) -> None:
    """The Java client's partitioning (murmur2 of the key, made positive, modulo the
    partitions), which kafka-python copies: a user lands in one partition from either."""
    partitions = 5
    topic = topic_factory(partitions, prefix="java-keys")
    keys = [f"u-{i}".encode() for i in range(200)]
    with JavaProducer(kafka_bootstrap, topic) as producer:
        for key in keys:
            producer.send(b"{}", key=key)
        positions = producer.flush()
    assert [p for p, _ in positions] == [(murmur2(k) & 0x7FFFFFFF) % partitions for k in keys]
    assert len({p for p, _ in positions}) == partitions


def test_committed_and_aborted_transactions(
    kafka_bootstrap: str, topic_factory: TopicFactory, transactional_id: str
) -> None:
    topic = topic_factory(1, prefix="java-tx")
    with JavaProducer(kafka_bootstrap, topic, {"transactional.id": transactional_id}) as producer:
        producer.begin()
        for i in range(3):
            producer.send(f"committed {i}".encode(), key=b"a")
        producer.commit()
        producer.begin()
        for i in range(2):
            producer.send(f"aborted {i}".encode(), key=b"a")
        producer.abort()
        producer.begin()
        producer.send(b"committed 3", key=b"a")
        producer.commit()
        positions = producer.close()

    offsets = [offset for _, offset in positions]
    committed = offsets[:3] + offsets[5:]
    aborted = offsets[3:5]
    assert offsets == sorted(offsets) and len(set(offsets)) == 6
    # Each transaction ends with a marker, which takes an offset of its own.
    assert committed[2] < aborted[0] < aborted[1] < committed[3]

    visible = read_all(kafka_bootstrap, topic, 1)
    assert sorted(visible) == [(0, offset) for offset in committed]
    assert [visible[(0, o)][1] for o in committed] == [f"committed {i}".encode() for i in range(4)]
    everything = read_all(kafka_bootstrap, topic, 1, committed_only=False)
    assert {o for _, o in everything} == set(offsets)  # aborted records are in the log
    assert [everything[(0, o)][1] for o in aborted] == [b"aborted 0", b"aborted 1"]
    assert end_offsets(kafka_bootstrap, topic, committed_only=True) == committed[3] + 2


def test_an_open_transaction_stays_invisible_until_committed(
    kafka_bootstrap: str, topic_factory: TopicFactory, transactional_id: str
) -> None:
    topic = topic_factory(1, prefix="java-open-tx")
    with (
        pytest.raises(JavaProducerError, match=r"error 0 .*IllegalStateException.*transaction"),
        JavaProducer(kafka_bootstrap, topic, {"transactional.id": transactional_id}) as producer,
    ):
        producer.send(b"outside", key=b"a")  # a transactional producer sends in transactions
        producer.flush()
    with JavaProducer(kafka_bootstrap, topic, {"transactional.id": transactional_id}) as producer:
        producer.begin()
        producer.send(b"pending 0", key=b"a")
        producer.send(b"pending 1", key=b"a")
        pending = producer.flush()  # in the log, the transaction still open

        assert [o for _, o in pending] == [0, 1]
        assert end_offsets(kafka_bootstrap, topic, committed_only=False) == 2
        assert end_offsets(kafka_bootstrap, topic, committed_only=True) == 0
        assert read_all(kafka_bootstrap, topic, 1) == {}
        assert len(read_all(kafka_bootstrap, topic, 1, committed_only=False)) == 2

        producer.commit()
        visible = read_all(kafka_bootstrap, topic, 1)
        assert [visible[p][1] for p in sorted(visible)] == [b"pending 0", b"pending 1"]


def test_failures_raise_with_the_jvms_stderr(
    kafka_bootstrap: str, topic_factory: TopicFactory
) -> None:
    topic = topic_factory(1, prefix="java-fail")
    with (
        pytest.raises(JavaProducerError, match=r"error 1 .*RecordTooLargeException") as failure,
        JavaProducer(kafka_bootstrap, topic, {"max.request.size": "1000"}) as producer,
    ):
        producer.send(b"fits")
        producer.send(b"x" * 2000)
        producer.flush()
    assert "JVM stderr:" in str(failure.value)
    with pytest.raises(JavaProducerError, match=r"(?s)exit code 1.*brotli"):
        JavaProducer(kafka_bootstrap, topic, {"compression.type": "brotli"}).start()
