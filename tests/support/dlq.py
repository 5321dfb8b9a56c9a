"""Read what the flow wrote to a dead-letter topic, and compare it with the table."""

from __future__ import annotations

from kafka import KafkaConsumer, TopicPartition

from tests.support.tables import Tables


def read_dlq(
    bootstrap: str, topic: str, timeout_s: float = 10.0, **client_options: object
) -> dict[str, tuple[str, str, str]]:
    """Every letter on `topic` (one partition), by its `source` header: (reason, error,
    payload as upper-case hex). The topic is at least once: a repeated letter is one entry.
    """
    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap,
        enable_auto_commit=False,
        consumer_timeout_ms=int(timeout_s * 1000),
        **client_options,
    )
    try:
        tp = TopicPartition(topic, 0)
        consumer.assign([tp])
        consumer.seek_to_beginning(tp)
        letters = {}
        for message in consumer:
            headers = {key: value.decode() for key, value in message.headers}
            letters[headers["source"]] = (
                headers["reason"],
                headers["error"],
                (message.value or b"").hex().upper(),
            )
        return letters
    finally:
        consumer.close()


def assert_dlq_equals_the_table(letters: dict[str, tuple[str, str, str]], tables: Tables) -> None:
    """The DLQ topic holds exactly the `dead_letters` table's letters, with their headers."""
    stored = {
        source: (reason, error, payload)
        for source, reason, error, payload, _ in tables.dead_letters
    }
    assert stored, "no dead letters to compare"
    assert letters == stored
