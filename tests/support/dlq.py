"""Read what the flow wrote to a dead-letter (or notice) topic, and compare it with the
table."""

from __future__ import annotations

import time

from kafka import KafkaConsumer, TopicPartition
from kafka.consumer.fetcher import ConsumerRecord

from tests.support.tables import Tables

Letter = tuple[str, str, str, str]  # source, reason, error, payload as upper-case hex
HEADERS = {"source", "reason", "error"}


def read_topic(bootstrap: str, topic: str, timeout_s: float = 60.0) -> list[ConsumerRecord]:
    """Every record of `topic` (one partition: the flow's dead letters or notices), read
    to its end offset, in order."""
    return read_partitions(bootstrap, topic, 1, timeout_s=timeout_s)


def read_partitions(
    bootstrap: str,
    topic: str,
    partitions: int,
    *,
    committed_only: bool = False,
    timeout_s: float = 60.0,
) -> list[ConsumerRecord]:
    """Every record of partitions 0 .. `partitions` - 1 of `topic`, each read to its end
    offset (its last stable offset with `committed_only`, which reads only committed
    transactional records); each partition's records in order."""
    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap,
        enable_auto_commit=False,
        isolation_level="read_committed" if committed_only else "read_uncommitted",
    )
    try:
        tps = [TopicPartition(topic, p) for p in range(partitions)]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        ends = consumer.end_offsets(tps)
        records: list[ConsumerRecord] = []
        deadline = time.monotonic() + timeout_s
        while any(consumer.position(tp) < ends[tp] for tp in tps):
            assert time.monotonic() < deadline, f"{len(records)} records read, ends {ends}"
            for batch in consumer.poll(timeout_ms=500).values():
                records.extend(batch)
        return records
    finally:
        consumer.close()


def read_dlq(bootstrap: str, topic: str, timeout_s: float = 60.0) -> list[Letter]:
    """Every letter on `topic`, in order; each must carry exactly the `source`, `reason`
    and `error` headers."""
    letters: list[Letter] = []
    for message in read_topic(bootstrap, topic, timeout_s):
        headers = {key: value.decode() for key, value in message.headers}
        assert set(headers) == HEADERS, headers
        payload = (message.value or b"").hex().upper()
        letters.append((headers["source"], headers["reason"], headers["error"], payload))
    return letters


def assert_dlq_equals_the_table(letters: list[Letter], tables: Tables) -> None:
    """The DLQ topic holds the `dead_letters` table's letters, each exactly once (a run
    without crashes: after one, a letter may come twice), with the same headers."""
    stored = sorted(row[:4] for row in tables.dead_letters)
    assert stored, "no dead letters to compare"
    assert sorted(letters) == stored
