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
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    try:
        tp = TopicPartition(topic, 0)
        consumer.assign([tp])
        consumer.seek_to_beginning(tp)
        end = consumer.end_offsets([tp])[tp]
        records: list[ConsumerRecord] = []
        deadline = time.monotonic() + timeout_s
        while consumer.position(tp) < end:
            assert time.monotonic() < deadline, f"{len(records)} of {end} records read"
            records.extend(consumer.poll(timeout_ms=500).get(tp, []))
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
