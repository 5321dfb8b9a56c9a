"""Kafka source on confluent-kafka (librdkafka), chosen with `KAFKA_CLIENT=confluent`.

The same contract as `connectors.kafka.KafkaSource`: one Bytewax partition per Kafka
partition, whose snapshot is the next offset to read; `earliest`/`latest` without recovery
state; in bounded mode a partition stops at the end offset it saw when it was built; a
live, caught-up partition emits `IdleTick`s. librdkafka decodes records in C and prefetches
in the background, which reads several times as fast as kafka-python's pure-Python
decoding. Only the flow imports this module, and only when it is selected, so kafka-python
users need not install confluent-kafka (the `confluent` extra).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from datetime import datetime, timedelta, timezone
from typing import Any, TypeVar

from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition
from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition

from connectors.kafka import retry_while_unreachable
from connectors.metrics import CONSUMER_LAG, RECORDS_CONSUMED
from dataflows.records import IdleTick, InputBatch, SourceItem
from dataflows.settings import StartingOffset
from waxhouse.errors import SourceError

logger = logging.getLogger(__name__)
_librdkafka_logger = logging.getLogger(f"{__name__}.librdkafka")  # its own log lines

T = TypeVar("T")

KeyedItem = tuple[str, SourceItem]

_METADATA_TIMEOUT_S = 60.0
_UNREACHABLE_TIMEOUT_S = 300.0
_REQUEST_TIMEOUT_S = 10.0
_MAX_BATCH = 10_000
_FETCH_WAIT = timedelta(milliseconds=5)  # nothing queued yet: look again soon
_CAUGHT_UP_WAIT = timedelta(milliseconds=50)  # nothing new: poll gently
_IDLE_TICK_EVERY_S = 0.2
_CLIENT_ERROR_EVERY_S = 30.0

# kafka-python keyword (as `KafkaSecurity.client_options()` makes them) -> librdkafka name.
_OPTION_NAMES = {
    "security_protocol": "security.protocol",
    "sasl_mechanism": "sasl.mechanism",
    "sasl_plain_username": "sasl.username",
    "sasl_plain_password": "sasl.password",
    "ssl_cafile": "ssl.ca.location",
}

# Errors librdkafka recovers from by itself (it refreshes metadata, reconnects and fetches
# again). The Python client never sets `retriable()` on a record's error, so the code decides.
_TRANSIENT = frozenset(
    {
        KafkaError._TRANSPORT,
        KafkaError._ALL_BROKERS_DOWN,
        KafkaError._RESOLVE,
        KafkaError._TIMED_OUT,
        KafkaError._MSG_TIMED_OUT,
        KafkaError.REQUEST_TIMED_OUT,
        KafkaError.NETWORK_EXCEPTION,
        KafkaError.BROKER_NOT_AVAILABLE,
        KafkaError.LEADER_NOT_AVAILABLE,
        KafkaError.NOT_LEADER_FOR_PARTITION,
        KafkaError.REPLICA_NOT_AVAILABLE,
        KafkaError.KAFKA_STORAGE_ERROR,
        KafkaError.OFFSET_NOT_AVAILABLE,
        KafkaError.FENCED_LEADER_EPOCH,
        KafkaError.UNKNOWN_LEADER_EPOCH,
    }
)
# When looking up offsets, an unknown partition means the client has lost its leader.
_UNREACHABLE = _TRANSIENT | {KafkaError._UNKNOWN_PARTITION}


def librdkafka_options(client_options: Mapping[str, object]) -> dict[str, object]:
    """`client_options` (kafka-python keyword names) as librdkafka configuration.

    An option without a translation fails: dropping a security setting silently could
    connect in plain text.
    """
    unknown = sorted(set(client_options) - _OPTION_NAMES.keys())
    if unknown:
        raise SourceError(
            f"Kafka client options the confluent source cannot translate: {', '.join(unknown)}"
        )
    return {_OPTION_NAMES[name]: value for name, value in client_options.items()}


def _consumer_config(
    bootstrap: str, options: Mapping[str, object], on_error: Callable[[KafkaError], None]
) -> dict[str, Any]:
    return {
        "bootstrap.servers": bootstrap,
        # librdkafka requires a group id; the source never joins the group (it assigns its
        # partition explicitly) and never commits: positions live in Bytewax's snapshots.
        "group.id": "waxhouse",
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "enable.partition.eof": False,
        # As kafka.py's consumer: a position that retention deleted under a running reader
        # continues at the earliest offset, and uncommitted transactional records are read.
        "auto.offset.reset": "earliest",
        "isolation.level": "read_uncommitted",
        # Measured: ~418k records/s with a deep prefetch queue and large fetches, ~171k/s
        # with librdkafka's defaults.
        "queued.min.messages": 1_000_000,
        "fetch.max.bytes": 100 * 1024 * 1024,
        "max.partition.fetch.bytes": 16 * 1024 * 1024,
        "logger": _librdkafka_logger,
        "error_cb": on_error,
        **options,
    }


def _open_consumer(config: Mapping[str, Any]) -> Any:
    """A librdkafka consumer (it connects lazily: no broker needs to answer yet)."""
    try:
        return Consumer(dict(config))
    except KafkaException as e:
        raise SourceError(f"invalid Kafka client configuration: {_describe(e)}") from e


def _error_of(e: KafkaException) -> KafkaError | None:
    return e.args[0] if e.args and isinstance(e.args[0], KafkaError) else None


def _describe(e: KafkaException) -> str:
    error = _error_of(e)
    return f"{error.name()}: {error.str()}" if error is not None else repr(e)


def _unreachable(e: Exception) -> str | None:
    """The error's name if `e` means no broker answered (librdkafka will retry), else None."""
    error = _error_of(e) if isinstance(e, KafkaException) else None
    if error is None or not (error.retriable() or error.code() in _UNREACHABLE):
        return None
    return str(error.name())


def _while_unreachable(what: str, action: Callable[[], T]) -> T:
    return retry_while_unreachable(what, action, _unreachable, _UNREACHABLE_TIMEOUT_S)


def _watermarks(consumer: Any, tp: Any) -> tuple[int, int]:
    """(first offset, end offset) of `tp`, asked of its leader (a ListOffsets request)."""
    found = consumer.get_watermark_offsets(tp, timeout=_REQUEST_TIMEOUT_S)
    if found is None:  # the client's documented answer to a timeout
        raise KafkaException(KafkaError(KafkaError._TIMED_OUT, "watermark lookup timed out"))
    first, end = found
    return int(first), int(end)


class _ClientErrors:
    """librdkafka's errors that belong to no record (connections, authentication).

    librdkafka retries them by itself, so they are logged, each kind at most once per
    `_CLIENT_ERROR_EVERY_S` (an outage queues one `_ALL_BROKERS_DOWN` per connection
    attempt); a fatal one is kept for the partition to raise.
    """

    def __init__(self, what: str) -> None:
        self._what = what
        self.fatal: KafkaError | None = None
        self._logged_at: dict[int, float] = {}
        self._unlogged: dict[int, int] = {}

    def __call__(self, error: KafkaError) -> None:
        if error.fatal():
            self.fatal = error
            logger.error(
                "%s: fatal Kafka client error %s: %s", self._what, error.name(), error.str()
            )
            return
        code, now = error.code(), time.monotonic()
        if now - self._logged_at.get(code, -_CLIENT_ERROR_EVERY_S) < _CLIENT_ERROR_EVERY_S:
            self._unlogged[code] = self._unlogged.get(code, 0) + 1
            return
        self._logged_at[code] = now
        repeats = self._unlogged.pop(code, 0)
        transient = error.retriable() or code in _UNREACHABLE
        logger.log(
            logging.WARNING if transient else logging.ERROR,
            "%s: Kafka client error %s: %s%s",
            self._what,
            error.name(),
            error.str(),
            f" (and {repeats} more like it since it was last logged)" if repeats else "",
        )


class _ConfluentPartition(StatefulSourcePartition[KeyedItem, int]):
    def __init__(
        self,
        consumer: Any,
        tp: Any,
        part: str,
        next_offset: int,
        stop_at: int | None,
        errors: _ClientErrors,
    ) -> None:
        self._consumer = consumer
        self._tp = tp
        self._part = part
        self._next_offset = next_offset
        self._stop_at = stop_at
        self._errors = errors
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
        if self._errors.fatal is not None:
            fatal = self._errors.fatal
            raise SourceError(
                f"Kafka partition {self._part}: fatal client error {fatal.name()}: {fatal.str()}"
            ) from KafkaException(fatal)
        try:
            messages = self._consumer.consume(num_messages=_MAX_BATCH, timeout=0)
        except KafkaException as e:
            raise SourceError(
                f"consuming Kafka partition {self._part} failed: {_describe(e)}"
            ) from e
        if [m for m in messages if m.error() is not None]:
            messages = self._without_errors(messages)
        highwater = self._highwater()
        if not messages:
            caught_up = highwater is not None and self._next_offset >= highwater
            self._wait = _CAUGHT_UP_WAIT if caught_up else _FETCH_WAIT
            if highwater is not None:
                self._lag.set(max(0, highwater - self._next_offset))
            return self._idle_tick(highwater)
        self._wait = None
        self._last_data = time.monotonic()
        if self._stop_at is not None and messages[-1].offset() >= self._stop_at:
            stop_at = self._stop_at
            messages = [m for m in messages if m.offset() < stop_at]
            if not messages:  # all past the stop offset
                self._next_offset = stop_at
                return []
        batch = InputBatch(
            self._part,
            [m.offset() for m in messages],
            [m.value() for m in messages],
            [m.timestamp()[1] for m in messages],
        )
        self._next_offset = batch.offsets[-1] + 1
        self._consumed.inc(len(batch))
        if highwater is not None:
            self._lag.set(max(0, highwater - self._next_offset))
        return [(self._part, batch)]

    def _without_errors(self, messages: list[Any]) -> list[Any]:
        """The records among `messages`; the errors are dealt with.

        End of partition is no news; an error librdkafka recovers from is logged; any other
        (authorization, a deleted topic, a record too large to fetch) would stall the
        partition for good, so it fails the flow.
        """
        records = []
        for message in messages:
            error = message.error()
            if error is None:
                records.append(message)
            elif error.code() == KafkaError._PARTITION_EOF:
                continue
            elif not error.fatal() and (error.retriable() or error.code() in _TRANSIENT):
                logger.warning(
                    "Kafka partition %s: %s (%s); the client retries",
                    self._part,
                    error.name(),
                    error.str(),
                )
            else:
                raise SourceError(
                    f"Kafka partition {self._part}: {error.name()}: {error.str()}"
                ) from KafkaException(error)
        return records

    def _highwater(self) -> int | None:
        """The end offset as of the consumer's last fetch response, without a request.

        None until the first response arrives: librdkafka reports OFFSET_INVALID (-1001)
        until then, up to `fetch.wait.max.ms` after the assignment.
        """
        try:
            found = self._consumer.get_watermark_offsets(self._tp, cached=True)
        except KafkaException:
            return None
        if found is None or found[1] < 0:
            return None
        return int(found[1])

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


class ConfluentKafkaSource(FixedPartitionedSource[KeyedItem, int]):
    """Every partition of one topic, each resumable from its next offset (librdkafka)."""

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
        self._options = librdkafka_options(client_options or {})

    def _config(self, errors: _ClientErrors) -> dict[str, Any]:
        return _consumer_config(self._bootstrap, self._options, errors)

    def list_parts(self) -> list[str]:
        consumer = _open_consumer(self._config(_ClientErrors(f"listing topic {self._topic!r}")))
        try:
            deadline = time.monotonic() + _METADATA_TIMEOUT_S
            while True:
                metadata = _while_unreachable(
                    f"looking up Kafka topic {self._topic!r}",
                    lambda: consumer.list_topics(self._topic, timeout=_REQUEST_TIMEOUT_S),
                )
                found = metadata.topics.get(self._topic)
                if found is not None and found.partitions:
                    return [f"{self._topic}/{p}" for p in sorted(found.partitions)]
                if time.monotonic() > deadline:
                    answer = found.error.name() if found is not None and found.error else "none"
                    raise SourceError(
                        f"Kafka topic {self._topic!r} not found at {self._bootstrap} "
                        f"after {_METADATA_TIMEOUT_S:.0f} s (broker's answer: {answer})"
                    )
                logger.warning("waiting for Kafka topic %r to appear", self._topic)
                time.sleep(1.0)
        except KafkaException as e:
            raise SourceError(f"cannot look up Kafka topic {self._topic!r}: {_describe(e)}") from e
        finally:
            consumer.close()

    def build_part(
        self, step_id: str, for_part: str, resume_state: int | None
    ) -> _ConfluentPartition:
        topic, _, partition = for_part.rpartition("/")
        tp = TopicPartition(topic, int(partition))
        errors = _ClientErrors(f"partition {for_part}")
        consumer = _open_consumer(self._config(errors))
        try:
            next_offset, stop_at = self._start(consumer, tp, for_part, resume_state)
            # Explicit assignment at an absolute offset: no group join, no committed offset.
            consumer.assign([TopicPartition(topic, tp.partition, next_offset)])
        except KafkaException as e:
            consumer.close()
            raise SourceError(f"cannot open Kafka partition {for_part}: {_describe(e)}") from e
        except BaseException:
            consumer.close()
            raise
        logger.info(
            "partition %s starts at offset %d (%s)%s",
            for_part,
            next_offset,
            "resumed" if resume_state is not None else self._starting_offset,
            f", stops at {stop_at}" if stop_at is not None else "",
        )
        return _ConfluentPartition(consumer, tp, for_part, next_offset, stop_at, errors)

    def _start(
        self, consumer: Any, tp: Any, for_part: str, resume_state: int | None
    ) -> tuple[int, int | None]:
        """(next offset to read, stop offset or None), from an explicit offsets lookup.

        Not a lazy `OFFSET_BEGINNING`/`OFFSET_END`: an absolute offset fixed here is what
        bounded mode stops at and what the start line reports.
        """
        first, end = _while_unreachable(
            f"looking up the offsets of {for_part}", lambda: _watermarks(consumer, tp)
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
        return next_offset, end if self._stop_at_end else None
