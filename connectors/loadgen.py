"""A load generator: a built-in stream produced into Kafka at a chosen rate.

    waxhouse produce --rate 500                 # until stopped (SIGTERM / Ctrl-C)
    waxhouse produce --rate 2000 --events 100000
    waxhouse produce --flow sensors --rate 200  # readings, and the device registry

Events are the generators' (`waxhouse.connectors.generator`,
`waxhouse.connectors.sensors_generator`), with event time starting now and advancing at
the chosen rate, so a live flow sees live data. Records are keyed as the pipeline expects
(`user_id`, `device_id`) and carry their event time as the Kafka timestamp. For the
sensors flow the registry's versions go to their own topic as their time comes: the first
versions at once, each change when the readings reach its `valid_from`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from kafka import KafkaProducer

from waxhouse.connectors.generator import (
    ClickstreamGenerator,
    GeneratedRecord,
    GeneratorConfig,
    RecordGenerator,
)
from waxhouse.connectors.sensors_generator import (
    ReadingsGenerator,
    RegistryGenerator,
    SensorsConfig,
)
from waxhouse.errors import SourceError

logger = logging.getLogger(__name__)

# Records produced per pacing step at most: small enough that a rate is kept within a few
# milliseconds, large enough that the loop costs nothing next to the producer.
STEP_RECORDS = 500
PROGRESS_SECONDS = 10.0


@dataclass(frozen=True)
class LoadConfig:
    """What to produce: `rate` events/s (0 = as fast as the producer goes), `events` in all
    (0 = until stopped), generated with `seed` and `malformed_ratio` broken records, for
    `flow` (its events; for the sensors flow, readings and registry versions)."""

    rate: float
    events: int = 0
    seed: int = 42
    malformed_ratio: float = 0.01
    flow: Literal["clickstream", "sensors"] = "clickstream"

    def __post_init__(self) -> None:
        if self.rate < 0:
            raise ValueError("rate must be 0 (unlimited) or more events per second")
        if self.events < 0:
            raise ValueError("events must be 0 (endless) or more")
        if not 0 <= self.malformed_ratio <= 1:
            raise ValueError("malformed ratio must be between 0 and 1")

    def generator(self, start_ms: int) -> RecordGenerator:
        """The event stream: event time from `start_ms`, advancing `rate` events a second."""
        interval_ms = 1000.0 / self.rate if self.rate > 0 else 1.0
        if self.flow == "sensors":
            return ReadingsGenerator(self._sensors(start_ms, interval_ms))
        return ClickstreamGenerator(
            GeneratorConfig(
                seed=self.seed,
                events=self.events,
                start_ms=start_ms,
                mean_interval_ms=interval_ms,
                malformed_ratio=self.malformed_ratio,
            )
        )

    def reference(self, start_ms: int) -> RecordGenerator | None:
        """The sensors flow's registry for the same devices and time, else None."""
        if self.flow != "sensors":
            return None
        interval_ms = 1000.0 / self.rate if self.rate > 0 else 1.0
        return RegistryGenerator(self._sensors(start_ms, interval_ms))

    def _sensors(self, start_ms: int, interval_ms: float) -> SensorsConfig:
        return SensorsConfig(
            seed=self.seed,
            events=self.events,
            start_ms=start_ms,
            mean_interval_ms=interval_ms,
            malformed_ratio=self.malformed_ratio,
        )


def due_records(elapsed_seconds: float, rate: float, sent: int) -> int:
    """How many records are owed after `elapsed_seconds` at `rate`, `sent` already sent."""
    if rate <= 0:
        return STEP_RECORDS
    return max(0, min(STEP_RECORDS, int(elapsed_seconds * rate) - sent))


class LoadGenerator:
    """Produces `config`'s events into `topic` (and a reference's, such as the sensors
    flow's registry, into `reference_topic`) until done or `stop` is set.

    Connects in `run()`, not in the constructor. `clock` and `sleep` are injectable.
    """

    def __init__(
        self,
        bootstrap_servers: str,
        topic: str,
        config: LoadConfig,
        client_options: dict[str, str] | None = None,
        *,
        reference_topic: str | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if (reference_topic is None) != (config.flow == "clickstream"):
            raise ValueError(f"produce: the {config.flow} flow needs reference_topic or none")
        self._bootstrap = bootstrap_servers
        self._topic = topic
        self._reference_topic = reference_topic
        self._config = config
        self._options = client_options or {}
        self._clock = clock
        self._sleep = sleep

    def run(self, stop: threading.Event) -> int:
        """Produce until the configured count is reached or `stop` is set; flush; return
        how many records the broker acknowledged (events and reference versions).
        `SourceError` if any send failed."""
        producer = self._producer()
        failures: list[BaseException] = []

        def send(topic: str | None, record: GeneratedRecord) -> None:
            producer.send(
                topic, key=record.key, value=record.value, timestamp_ms=record.timestamp_ms
            ).add_errback(failures.append)

        start_ms = time.time_ns() // 1_000_000
        generator = self._config.generator(start_ms)
        reference = self._config.reference(start_ms)
        versions: list[GeneratedRecord] = []
        started = last_report = self._clock()
        sent = versions_sent = 0
        try:
            while not stop.is_set() and not generator.exhausted:
                now = self._clock()
                count = due_records(now - started, self._config.rate, sent)
                if count == 0:
                    self._sleep(min(0.05, 1.0 / self._config.rate))
                    continue
                records = generator.take(count)  # fewer at the end of a finite stream
                if reference is not None and records:
                    # The reference's versions up to the events' time, before the events.
                    versions = versions or reference.take(STEP_RECORDS)
                    until = records[-1].timestamp_ms
                    while versions and versions[0].timestamp_ms <= until:
                        send(self._reference_topic, versions.pop(0))
                        versions_sent += 1
                        if not versions:
                            versions = reference.take(STEP_RECORDS)
                for record in records:
                    send(self._topic, record)
                sent += len(records)
                if now - last_report >= PROGRESS_SECONDS:
                    logger.info("produced %d records (%.0f/s)", sent, sent / (now - started))
                    last_report = now
            producer.flush()
        finally:
            producer.close()
        total = sent + versions_sent
        if failures:
            raise SourceError(
                f"{len(failures)} of {total} records were not produced into {self._topic}"
                f"{f' and {self._reference_topic}' if self._reference_topic else ''}: "
                f"{failures[0]!r}"
            )
        logger.info("produced %d records into %s", sent, self._topic)
        if self._reference_topic:
            logger.info("produced %d records into %s", versions_sent, self._reference_topic)
        return total

    def _producer(self) -> Any:
        return KafkaProducer(
            bootstrap_servers=self._bootstrap,
            acks="all",
            linger_ms=20,
            batch_size=256 * 1024,
            max_request_size=16 * 1024 * 1024,  # the generator's rare 900 KB strings
            **self._options,
        )
