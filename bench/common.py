"""What the benchmarks share: a broker, a fast producer, a timed run of the flow."""

from __future__ import annotations

import contextlib
import itertools
import os
import random
import re
import subprocess
import time
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Protocol

import orjson
from kafka import KafkaProducer

from tests.support.flow import REPO, run_flow
from tests.support.kafka_broker import KafkaBroker

_SUMMARY = re.compile(r"waxhouse: ([\d,]+) records in [\d.]+ s \(([\d,]+) records/s\)")


@contextlib.contextmanager
def bootstrap() -> Iterator[str]:
    """KAFKA_BOOTSTRAP_SERVERS if set, else a throwaway local broker for the duration."""
    external = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    if external:
        yield external
        return
    with KafkaBroker() as broker:
        yield broker.bootstrap_servers


class KafkaRecord(Protocol):
    """What `produce` sends: a generated record (`GeneratedRecord`, `RealisticRecord`).
    A None value is a tombstone."""

    @property
    def key(self) -> bytes | None: ...
    @property
    def value(self) -> bytes | None: ...
    @property
    def timestamp_ms(self) -> int: ...


def produce(servers: str, topic: str, records: Iterable[KafkaRecord]) -> int:
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


def bounded_env(servers: str, topic: str, store: Path) -> dict[str, str]:
    """The flow's settings to drain `topic` in bounded mode into a chDB store at `store`
    (dead letters to `<topic>.dlq`)."""
    return {
        "KAFKA_BOOTSTRAP_SERVERS": servers,
        "KAFKA_TOPIC": topic,
        "KAFKA_DLQ_TOPIC": f"{topic}.dlq",
        "KAFKA_STOP_AT_END": "true",
        "CLICKHOUSE_URL": f"chdb://{store}",
    }


def flow_version() -> str:
    """The commit of the flow the benchmarks run, and whether its code has uncommitted
    changes. Read-only, without git's optional index lock (others may be committing)."""
    git = ["git", "--no-optional-locks", "-C", str(REPO)]
    head = subprocess.run([*git, "rev-parse", "--short=12", "HEAD"], capture_output=True, text=True)
    changed = subprocess.run(
        [*git, "status", "--porcelain", "--", "waxhouse", "connectors", "dataflows"],
        capture_output=True,
        text=True,
    )
    commit = f"`{head.stdout.strip()}`" if head.returncode == 0 else "unknown"
    return commit + (" with uncommitted changes" if changed.stdout.strip() else "")


def timed_flow(env: Mapping[str, str]) -> tuple[str, float]:
    """Run the flow to the end: its stdout (with the run summary) and wall seconds."""
    started = time.monotonic()
    done = run_flow(env)
    wall = time.monotonic() - started
    if "records in" not in done.stdout:
        output = f"{done.stdout}\n{done.stderr[-3000:]}"
        raise RuntimeError(f"no summary in the flow's output:\n{output}")
    return done.stdout, wall


def summary_rate(stdout: str) -> tuple[int, float]:
    """(records, records/s) from the flow's run summary in `stdout`."""
    match = _SUMMARY.search(stdout)
    if match is None:
        raise RuntimeError(f"no run summary in the flow's output:\n{stdout[-3000:]}")
    records, rate = (int(group.replace(",", "")) for group in match.groups())
    return records, float(rate)


class EventMaker:
    """Valid clickstream events shaped like the generator's: Zipf-popular pages, the same
    mix of types, purchase values with 2 decimals; `event_id`s `<prefix><n>`."""

    def __init__(self, seed: int, pages: int = 2_000, prefix: str = "ev-") -> None:
        self.rng = random.Random(seed)
        self._pages = [f"/products/{i}" for i in range(pages)]
        self._cum = list(itertools.accumulate(1.0 / (rank + 1) ** 1.1 for rank in range(pages)))
        self._prefix = prefix
        self.n = 0

    def make(self, user_id: str, ts_ms: int) -> bytes:
        """The next event's JSON, from `user_id` at event time `ts_ms`."""
        rng = self.rng
        r = rng.random()
        kind = "page_view"
        if r < 0.02:
            kind = "purchase"
        elif r < 0.07:
            kind = "add_to_cart"
        elif r < 0.32:
            kind = "click"
        event: dict[str, object] = {
            "event_id": f"{self._prefix}{self.n}",
            "user_id": user_id,
            "type": kind,
            "page": rng.choices(self._pages, cum_weights=self._cum)[0],
            "ts": ts_ms,
        }
        if kind == "purchase":
            event["value"] = rng.randrange(100, 50_000) / 100
        self.n += 1
        return orjson.dumps(event)


def confluent_producer(servers: str):  # -> confluent_kafka.Producer
    """A fast producer for the benchmarks that make their own events."""
    from confluent_kafka import Producer

    return Producer(
        {
            "bootstrap.servers": servers,
            "linger.ms": 5,
            "queue.buffering.max.messages": 1_000_000,
            "queue.buffering.max.kbytes": 1_048_576,
        }
    )


def send(producer, topic: str, key: bytes, value: bytes, ts_ms: int) -> None:
    """`producer.produce`, waiting while its local queue is full."""
    while True:
        try:
            producer.produce(topic, value=value, key=key, timestamp=ts_ms)
            return
        except BufferError:
            producer.poll(0.05)
