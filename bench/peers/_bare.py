"""Consume loops shared by the ceilings: every partition from the start to its end offset."""

from __future__ import annotations

from collections.abc import Callable, Iterator

from kafka import KafkaConsumer, TopicPartition


def kafka_python_values(servers: str, topic: str) -> Iterator[list[bytes | None]]:
    """kafka-python: batches of record values until every partition reached its end."""
    consumer = KafkaConsumer(bootstrap_servers=servers, enable_auto_commit=False)
    partitions = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic)]
    consumer.assign(partitions)
    consumer.seek_to_beginning(*partitions)
    ends = consumer.end_offsets(partitions)
    left = {tp for tp in partitions if ends[tp] > 0}
    try:
        while left:
            for tp, records in consumer.poll(timeout_ms=500, max_records=10_000).items():
                yield [r.value for r in records]
                if records[-1].offset + 1 >= ends[tp]:
                    left.discard(tp)
                    consumer.pause(tp)
    finally:
        consumer.close()


def confluent_values(servers: str, topic: str) -> Iterator[list[bytes | None]]:
    """confluent-kafka: batches of record values until every partition reached its end."""
    from confluent_kafka import OFFSET_BEGINNING, Consumer
    from confluent_kafka import TopicPartition as Partition

    consumer = Consumer(
        {"bootstrap.servers": servers, "group.id": "bench-bare", "enable.auto.commit": False}
    )
    metadata = consumer.list_topics(topic, timeout=10).topics[topic]
    ends = {p: consumer.get_watermark_offsets(Partition(topic, p))[1] for p in metadata.partitions}
    consumer.assign([Partition(topic, p, OFFSET_BEGINNING) for p in ends])
    left = {p for p, end in ends.items() if end > 0}
    done: Callable[[int, int], bool] = lambda p, offset: offset + 1 >= ends[p]  # noqa: E731
    try:
        while left:
            batch = consumer.consume(10_000, 0.5)
            if not batch:
                continue
            values = []
            for msg in batch:
                if msg.error() is None:
                    values.append(msg.value())
                    if done(msg.partition(), msg.offset()):
                        left.discard(msg.partition())
            yield values
    finally:
        consumer.close()
