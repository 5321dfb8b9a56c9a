"""The test broker is a real Kafka: keyed records round-trip exactly once and survive restarts."""

from __future__ import annotations

import json
import time
from collections import Counter, defaultdict

import pytest
from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from tests.support.kafka_broker import KafkaBroker, TopicFactory

Record = tuple[bytes, int, int]  # key, partition, seq


def _key(seq: int) -> bytes:
    return f"user-{seq % 37}".encode()


def _produce(bootstrap: str, topic: str, seqs: range) -> dict[int, int]:
    """Send one JSON record per seq, keyed by user; return seq -> partition it was written to."""
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
    try:
        futures = {
            seq: producer.send(topic, key=_key(seq), value=json.dumps({"seq": seq}).encode())
            for seq in seqs
        }
        producer.flush(timeout=30)
        return {seq: future.get(timeout=30).partition for seq, future in futures.items()}
    finally:
        producer.close(timeout=10)


def _consume_all(bootstrap: str, topic: str, partitions: int) -> list[Record]:
    """Read every partition from the beginning up to its end offset (30 s at most)."""
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False)
    try:
        assigned = [TopicPartition(topic, p) for p in range(partitions)]
        consumer.assign(assigned)
        consumer.seek_to_beginning(*assigned)
        end_offsets = consumer.end_offsets(assigned)
        records: list[Record] = []
        deadline = time.monotonic() + 30
        while any(consumer.position(tp) < end for tp, end in end_offsets.items()):
            if time.monotonic() > deadline:
                pytest.fail(f"timed out reading {topic} back: {len(records)} records so far")
            for batch in consumer.poll(timeout_ms=500).values():
                records.extend((r.key, r.partition, json.loads(r.value)["seq"]) for r in batch)
        return records
    finally:
        consumer.close()


def _assert_exactly_once(records: list[Record], written: dict[int, int]) -> None:
    counts = Counter(seq for _, _, seq in records)
    assert sorted(counts) == sorted(written)
    assert set(counts.values()) == {1}
    assert {seq: partition for _, partition, seq in records} == written
    assert all(key == _key(seq) for key, _, seq in records)


def test_keyed_records_come_back_exactly_once_and_stay_in_their_partition(
    kafka_bootstrap: str, topic_factory: TopicFactory
) -> None:
    topic = topic_factory(4)
    written = _produce(kafka_bootstrap, topic, range(1000))

    records = _consume_all(kafka_bootstrap, topic, 4)

    _assert_exactly_once(records, written)
    partitions_by_key: defaultdict[bytes, set[int]] = defaultdict(set)
    for key, partition, _ in records:
        partitions_by_key[key].add(partition)
    assert all(len(found) == 1 for found in partitions_by_key.values())
    assert len({partition for _, partition, _ in records}) > 1


@pytest.mark.parametrize("hard", [False, True], ids=["sigterm", "sigkill"])
def test_records_survive_a_broker_restart(
    kafka_broker: KafkaBroker, topic_factory: TopicFactory, hard: bool
) -> None:
    bootstrap = kafka_broker.bootstrap_servers
    topic = topic_factory(2)
    written = _produce(bootstrap, topic, range(200))

    kafka_broker.restart(hard=hard)
    written |= _produce(bootstrap, topic, range(200, 300))

    assert kafka_broker.bootstrap_servers == bootstrap
    _assert_exactly_once(_consume_all(bootstrap, topic, 2), written)
