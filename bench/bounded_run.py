"""Throughput of whole runs, side by side: bounded Kafka backfill and the embedded demo.

    python -m bench.bounded_run [--events 200000] [--repeat 3]

Produces the generated clickstream to a fresh 4-partition topic (on the broker named by
KAFKA_BOOTSTRAP_SERVERS, or a throwaway local one), then alternates bounded Kafka runs and
embedded runs of `python -m bytewax.run dataflows.clickstream` into fresh chDB stores.
Reports the median of the records/s each run prints (flow start to last write) and of
the whole command's wall time, including interpreter start-up.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import statistics
import tempfile
import time
import uuid
from collections.abc import Iterator

from kafka import KafkaProducer

from connectors.generator import ClickstreamGenerator, GeneratorConfig
from tests.support.flow import run_flow
from tests.support.kafka_broker import KafkaBroker, create_topic

_RATE = re.compile(r"records in [\d.]+ s \(([\d,]+) records/s\)")


@contextlib.contextmanager
def bootstrap() -> Iterator[str]:
    external = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    if external:
        yield external
        return
    with KafkaBroker() as broker:
        yield broker.bootstrap_servers


def produce(servers: str, topic: str, events: int, seed: int) -> None:
    producer = KafkaProducer(bootstrap_servers=servers, linger_ms=20, batch_size=256 * 1024)
    generator = ClickstreamGenerator(GeneratorConfig(seed=seed, events=events))
    for record in generator.take(events):
        producer.send(topic, key=record.key, value=record.value, timestamp_ms=record.timestamp_ms)
    producer.flush()
    producer.close()


def timed_run(env: dict[str, str]) -> tuple[float, float]:
    started = time.monotonic()
    done = run_flow(env)
    wall = time.monotonic() - started
    match = _RATE.search(done.stdout)
    if match is None:
        raise RuntimeError(
            f"no summary in the flow's output:\n{done.stdout}\n{done.stderr[-3000:]}"
        )
    return float(match.group(1).replace(",", "")), wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()

    results: dict[str, list[tuple[float, float]]] = {"kafka bounded": [], "embedded": []}
    with bootstrap() as servers, tempfile.TemporaryDirectory() as scratch:
        topic = f"bench-{uuid.uuid4().hex[:8]}"
        create_topic(servers, topic, 4)
        create_topic(servers, f"{topic}.dlq", 1)
        produce(servers, topic, args.events, args.seed)
        for i in range(args.repeat):
            kafka_env = {
                "KAFKA_BOOTSTRAP_SERVERS": servers,
                "KAFKA_TOPIC": topic,
                "KAFKA_DLQ_TOPIC": f"{topic}.dlq",
                "KAFKA_STOP_AT_END": "true",
                "CLICKHOUSE_URL": f"chdb://{scratch}/kafka-{i}",
            }
            embedded_env = {
                "GENERATOR_EVENTS": str(args.events),
                "GENERATOR_SEED": str(args.seed),
                "CLICKHOUSE_URL": f"chdb://{scratch}/embedded-{i}",
            }
            results["kafka bounded"].append(timed_run(kafka_env))
            results["embedded"].append(timed_run(embedded_env))

    print(f"{args.events:,} events, median of {args.repeat} runs each, alternated")
    print(f"{'run':<15} {'records/s (flow)':>17} {'wall s (command)':>17}")
    for name, runs in results.items():
        rate = statistics.median(r for r, _ in runs)
        wall = statistics.median(w for _, w in runs)
        print(f"{name:<15} {rate:>17,.0f} {wall:>17.1f}")


if __name__ == "__main__":
    main()
