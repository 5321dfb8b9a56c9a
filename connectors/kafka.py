"""Kafka I/O on kafka-python: a partitioned Bytewax source and the dead-letter sink.

The source has one Bytewax partition per Kafka partition. Its snapshot is the next offset
to read, so a resumed flow continues exactly after what it had emitted; without recovery
state a partition starts at `earliest` or `latest`. Each poll becomes one `InputBatch`.
In bounded mode a partition stops at the end offset it saw when it was built. A live,
caught-up partition emits `IdleTick`s so idle windows still close.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from datetime import datetime, timedelta, timezone
from typing import Any, TypeVar

from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition
from bytewax.outputs import FixedPartitionedSink, StatefulSinkPartition
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.errors import (
    BrokerNotAvailableError,
    KafkaConnectionError,
    KafkaError,
    KafkaTimeoutError,
)

from connectors.metrics import CONSUMER_LAG, DLQ_RECORDS, RECORDS_CONSUMED
from dataflows.records import IdleTick, InputBatch, SourceItem
from dataflows.rows import DeadLetterRow
from dataflows.settings import StartingOffset
from waxhouse.errors import SinkError, SourceError

logger = logging.getLogger(__name__)

T = TypeVar("T")

KeyedItem = tuple[str, SourceItem]

_METADATA_TIMEOUT_S = 60.0
_UNREACHABLE_TIMEOUT_S = 300.0
_FETCH_WAIT = timedelta(milliseconds=5)  # a fetch is in flight: look again soon
_CAUGHT_UP_WAIT = timedelta(milliseconds=50)  # nothing new: poll gently
_IDLE_TICK_EVERY_S = 0.2
_DLQ_MAX_PENDING = 10_000  # letters sent but not yet known to be acknowledged


def retry_while_unreachable(
    what: str,
    action: Callable[[], T],
    unreachable: Callable[[Exception], str | None],
    timeout_s: float,
) -> T:
    """`action()`, retried with backoff for as long as no Kafka broker answers.

    `unreachable(e)` names the error if `e` means no broker answered, else None (then `e`
    propagates at once). A broker restart or a network blip must not crash the flow at
    start-up or when a sink partition is built mid-run; after `timeout_s` it gives up
    loudly. Both Kafka clients' sources use it, each with its own `unreachable`.
    """
    deadline = time.monotonic() + timeout_s
    delay = 0.5
    while True:
        try:
            return action()
        except Exception as e:
            why = unreachable(e)
            if why is None:
                raise
            if time.monotonic() + delay > deadline:
                raise SourceError(
                    f"{what}: no Kafka broker answered for {timeout_s:.0f} s ({why})"
                ) from e
            logger.warning("%s: Kafka unreachable (%s); retrying in %.1f s", what, why, delay)
            time.sleep(delay)
            delay = min(delay * 2, 10.0)


def _unreachable(e: Exception) -> str | None:
    if isinstance(e, (KafkaConnectionError, KafkaTimeoutError, BrokerNotAvailableError)):
        return type(e).__name__
    return None


def _while_unreachable(what: str, action: Callable[[], T]) -> T:
    return retry_while_unreachable(what, action, _unreachable, _UNREACHABLE_TIMEOUT_S)


def _consumer(bootstrap: str, options: Mapping[str, object]) -> KafkaConsumer:
    return _while_unreachable(
        "connecting to Kafka",
        lambda: KafkaConsumer(
            bootstrap_servers=bootstrap,
            group_id=None,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            max_poll_records=10_000,
            max_partition_fetch_bytes=8 * 1024 * 1024,
            fetch_max_bytes=64 * 1024 * 1024,
            **options,
        ),
    )


class _KafkaPartition(StatefulSourcePartition[KeyedItem, int]):
    def __init__(
        self,
        consumer: KafkaConsumer,
        tp: TopicPartition,
        part: str,
        next_offset: int,
        stop_at: int | None,
    ) -> None:
        self._consumer = consumer
        self._tp = tp
        self._part = part
        self._next_offset = next_offset
        self._stop_at = stop_at
        self._last_data = time.monotonic()
        self._last_tick = 0.0
        self._wait: timedelta | None = None
        self._consumed = RECORDS_CONSUMED.labels(topic=tp.topic, partition=str(tp.partition))
        self._lag = CONSUMER_LAG.labels(topic=tp.topic, partition=str(tp.partition))

    def _done(self) -> bool:
        return self._stop_at is not None and self._next_offset >= self._stop_at

    def next_batch(self) -> list[KeyedItem]:
        if self._done():
            raise StopIteration
        polled = self._consumer.poll(timeout_ms=0, max_records=10_000)
        records = polled.get(self._tp, [])
        highwater = self._consumer.highwater(self._tp)
        if not records:
            caught_up = highwater is not None and self._next_offset >= highwater
            self._wait = _CAUGHT_UP_WAIT if caught_up else _FETCH_WAIT
            if highwater is not None:
                self._lag.set(max(0, highwater - self._next_offset))
            return self._idle_tick(highwater)
        self._wait = None
        self._last_data = time.monotonic()
        if self._stop_at is not None:
            records = [r for r in records if r.offset < self._stop_at]
        if not records:  # all past the stop offset
            self._next_offset = self._stop_at or self._next_offset
            return []
        batch = InputBatch(
            self._part,
            [r.offset for r in records],
            [r.value for r in records],
            [r.timestamp for r in records],
        )
        self._next_offset = batch.offsets[-1] + 1
        self._consumed.inc(len(batch))
        if highwater is not None:
            self._lag.set(max(0, highwater - self._next_offset))
        return [(self._part, batch)]

    def _idle_tick(self, highwater: int | None) -> list[KeyedItem]:
        """A live partition that has read all there is lets wall-clock time pass."""
        if self._stop_at is not None or highwater is None or self._next_offset < highwater:
            return []
        now = time.monotonic()
        if now - self._last_tick < _IDLE_TICK_EVERY_S:
            return []
        self._last_tick = now
        idle_ms = int((now - self._last_data) * 1000)
        return [(self._part, IdleTick(self._part, idle_ms))]

    def next_awake(self) -> datetime | None:
        if self._wait is None:
            return None
        return datetime.now(timezone.utc) + self._wait

    def snapshot(self) -> int:
        return self._next_offset

    def close(self) -> None:
        self._consumer.close()


class KafkaSource(FixedPartitionedSource[KeyedItem, int]):
    """Every partition of one topic, each resumable from its next offset."""

    def __init__(
        self,
        bootstrap_servers: str,
        topic: str,
        starting_offset: StartingOffset = "earliest",
        stop_at_end: bool = False,
        client_options: Mapping[str, object] | None = None,
    ) -> None:
        self._bootstrap = bootstrap_servers
        self._topic = topic
        self._starting_offset = starting_offset
        self._stop_at_end = stop_at_end
        self._options = dict(client_options or {})

    def list_parts(self) -> list[str]:
        consumer = _consumer(self._bootstrap, self._options)
        try:
            deadline = time.monotonic() + _METADATA_TIMEOUT_S
            while True:
                partitions = consumer.partitions_for_topic(self._topic)
                if partitions:
                    return [f"{self._topic}/{p}" for p in sorted(partitions)]
                if time.monotonic() > deadline:
                    raise SourceError(
                        f"Kafka topic {self._topic!r} not found at {self._bootstrap} "
                        f"after {_METADATA_TIMEOUT_S:.0f} s"
                    )
                logger.warning("waiting for Kafka topic %r to appear", self._topic)
                time.sleep(1.0)
        finally:
            consumer.close()

    def build_part(self, step_id: str, for_part: str, resume_state: int | None) -> _KafkaPartition:
        topic, _, partition = for_part.rpartition("/")
        tp = TopicPartition(topic, int(partition))
        consumer = _consumer(self._bootstrap, self._options)
        try:
            consumer.assign([tp])
            # Explicit ListOffsets lookups: a lazy seek_to_beginning() can fall back to the
            # consumer's reset policy when the lookup fails, silently skipping the backlog.
            first, end = _while_unreachable(
                f"looking up the offsets of {for_part}",
                lambda: (consumer.beginning_offsets([tp])[tp], consumer.end_offsets([tp])[tp]),
            )
            if resume_state is not None:
                next_offset = resume_state
                if resume_state < first:
                    logger.warning(
                        "partition %s: resume offset %d was deleted by retention; continuing at %d",
                        for_part,
                        resume_state,
                        first,
                    )
                    next_offset = first
            else:
                next_offset = first if self._starting_offset == "earliest" else end
            consumer.seek(tp, next_offset)
            stop_at = end if self._stop_at_end else None
        except KafkaError as e:
            consumer.close()
            raise SourceError(f"cannot open Kafka partition {for_part}: {e}") from e
        logger.info(
            "partition %s starts at offset %d (%s)%s",
            for_part,
            next_offset,
            "resumed" if resume_state is not None else self._starting_offset,
            f", stops at {stop_at}" if stop_at is not None else "",
        )
        return _KafkaPartition(consumer, tp, for_part, next_offset, stop_at)


DLQ_PART = "dlq"


class _DeadLetterPartition(StatefulSinkPartition[DeadLetterRow, None]):
    """Sends letters as they come and waits for Kafka's acknowledgements once per epoch.

    `snapshot()` ends an epoch: it returns only when every letter sent so far is
    acknowledged, so a committed epoch never loses one, and the worker does not wait
    for a round trip per batch. A large backlog is settled early to bound memory.
    """

    def __init__(self, producer: KafkaProducer, topic: str) -> None:
        self._producer = producer
        self._topic = topic
        self._pending: list[tuple[DeadLetterRow, Any]] = []

    def write_batch(self, values: list[DeadLetterRow]) -> None:
        for row in values:
            headers = [
                ("reason", row.reason.encode()),
                ("error", row.error.encode()),
                ("source", row.source.encode()),
            ]
            future = self._producer.send(self._topic, value=row.payload, headers=headers)
            self._pending.append((row, future))
        if len(self._pending) >= _DLQ_MAX_PENDING:
            self._settle()

    def _settle(self) -> None:
        """Wait until every letter sent is acknowledged; fail loudly if one was not."""
        pending, self._pending = self._pending, []
        if not pending:
            return
        self._producer.flush()
        for row, future in pending:
            try:
                future.get(timeout=0)
            except KafkaError as e:
                raise SinkError(
                    f"producing to dead-letter topic {self._topic!r} failed: {e}"
                ) from e
            DLQ_RECORDS.labels(reason=row.reason).inc()

    def snapshot(self) -> None:
        self._settle()
        return None

    def close(self) -> None:
        try:
            self._settle()
        finally:
            self._producer.close()


class KafkaDeadLetterSink(FixedPartitionedSink[DeadLetterRow, None]):
    """Raw rejected records to the DLQ topic with `reason`/`error`/`source` headers.

    One partition, so the letters of an epoch are acknowledged by Kafka before that epoch
    is committed. A replay after a crash may produce a letter again (at least once); the
    `dead_letters` table holds each exactly once.
    """

    def __init__(
        self,
        bootstrap_servers: str,
        topic: str,
        client_options: Mapping[str, object] | None = None,
    ) -> None:
        self._bootstrap = bootstrap_servers
        self._topic = topic
        self._options = dict(client_options or {})

    def list_parts(self) -> list[str]:
        return [DLQ_PART]

    def part_fn(self, item_key: str) -> int:
        return 0

    def build_part(self, step_id: str, for_part: str, resume_state: None) -> _DeadLetterPartition:
        _while_unreachable(f"checking dead-letter topic {self._topic!r}", self._check_topic_exists)
        producer = _while_unreachable(
            "connecting the dead-letter producer",
            lambda: KafkaProducer(
                bootstrap_servers=self._bootstrap,
                acks="all",
                linger_ms=100,  # letters are settled once per epoch: batch them
                batch_size=1024 * 1024,
                max_request_size=16 * 1024 * 1024,
                **self._options,
            ),
        )
        return _DeadLetterPartition(producer, self._topic)

    def _check_topic_exists(self) -> None:
        """Fail at start, not at the first bad record, when the DLQ topic is missing."""
        consumer = _consumer(self._bootstrap, self._options)
        try:
            if not consumer.partitions_for_topic(self._topic):
                raise SinkError(
                    f"dead-letter topic {self._topic!r} does not exist at {self._bootstrap}: "
                    "create it or point KAFKA_DLQ_TOPIC at one that does"
                )
        finally:
            consumer.close()
