"""Put records on a topic the way our producers do: keyed by the pipeline's key."""

from __future__ import annotations

import orjson
from kafka import KafkaProducer

from waxhouse.connectors.generator import GeneratedRecord
from waxhouse.records import Record


def produce_records(bootstrap: str, topic: str, records: list[GeneratedRecord]) -> dict[int, str]:
    """Produce `records` in order, keyed by user, with their record timestamps.

    Returns where each landed: record n -> `topic/partition/offset` (its dead-letter source).
    """
    producer = KafkaProducer(
        bootstrap_servers=bootstrap,
        acks="all",
        linger_ms=20,
        batch_size=256 * 1024,
        max_in_flight_requests_per_connection=1,
        max_request_size=16 * 1024 * 1024,
    )
    futures = [
        producer.send(topic, key=r.key, value=r.value, timestamp_ms=r.timestamp_ms) for r in records
    ]
    producer.flush()
    producer.close()
    positions = {}
    for record, future in zip(records, futures, strict=True):
        meta = future.get(timeout=60)
        positions[record.n] = f"{topic}/{meta.partition}/{meta.offset}"
    return positions


def produce_in_partitions(bootstrap: str, topic: str, records: list[Record], key: str) -> None:
    """`waxhouse.testing` records, in order, each into its own `partition` with its
    timestamp, keyed by its value's `key` field (`?` for a value without one: malformed
    records and tombstones)."""
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all")
    try:
        for record in records:
            value = record.encoded()
            producer.send(
                topic,
                value=value,
                key=_key(value, key),
                partition=record.partition,
                timestamp_ms=record.timestamp_ms,
            )
        producer.flush(60)
    finally:
        producer.close()


def _key(value: bytes | None, field: str) -> bytes:
    try:
        found = orjson.loads(value or b"null")
    except orjson.JSONDecodeError:
        return b"?"
    if not isinstance(found, dict) or field not in found:
        return b"?"
    return str(found[field]).encode()
