"""What the benchmarks share: a broker, a fast producer, a timed run of the flow."""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterable, Iterator, Mapping

from kafka import KafkaProducer

from connectors.generator import GeneratedRecord
from tests.support.flow import run_flow
from tests.support.kafka_broker import KafkaBroker


@contextlib.contextmanager
def bootstrap() -> Iterator[str]:
    """KAFKA_BOOTSTRAP_SERVERS if set, else a throwaway local broker for the duration."""
    external = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    if external:
        yield external
        return
    with KafkaBroker() as broker:
        yield broker.bootstrap_servers


def produce(servers: str, topic: str, records: Iterable[GeneratedRecord]) -> int:
    """Produce in order, keyed by user, with big batches; returns how many were sent."""
    producer = KafkaProducer(
        bootstrap_servers=servers,
        linger_ms=50,
        batch_size=1024 * 1024,
        max_request_size=16 * 1024 * 1024,
    )
    sent = 0
    for record in records:
        producer.send(topic, key=record.key, value=record.value, timestamp_ms=record.timestamp_ms)
        sent += 1
    producer.flush()
    producer.close()
    return sent


def timed_flow(env: Mapping[str, str]) -> tuple[str, float]:
    """Run the flow to the end: its stdout (with the run summary) and wall seconds."""
    started = time.monotonic()
    done = run_flow(env)
    wall = time.monotonic() - started
    if "records in" not in done.stdout:
        output = f"{done.stdout}\n{done.stderr[-3000:]}"
        raise RuntimeError(f"no summary in the flow's output:\n{output}")
    return done.stdout, wall
