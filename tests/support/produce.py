"""Put generated records on a topic the way our producers do: keyed by user."""

from __future__ import annotations

from kafka import KafkaProducer

from waxhouse.connectors.generator import GeneratedRecord


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
