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
import re
import statistics
import tempfile
import uuid

from bench.common import bootstrap, produce, timed_flow
from tests.support.kafka_broker import create_topic
from waxhouse.connectors.generator import ClickstreamGenerator, GeneratedRecord, GeneratorConfig

_RATE = re.compile(r"records in [\d.]+ s \(([\d,]+) records/s\)")


def generated(events: int, seed: int) -> list[GeneratedRecord]:
    return ClickstreamGenerator(GeneratorConfig(seed=seed, events=events)).take(events)


def timed_run(env: dict[str, str]) -> tuple[float, float]:
    stdout, wall = timed_flow(env)
    match = _RATE.search(stdout)
    assert match is not None
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
        produce(servers, topic, generated(args.events, args.seed))
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
