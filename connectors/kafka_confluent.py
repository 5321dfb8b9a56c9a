"""Kafka source on confluent-kafka (librdkafka), chosen with `KAFKA_CLIENT=confluent`.

The same contract as `waxhouse.connectors.kafka.KafkaSource`: both adapt their consumer to
`waxhouse.connectors.kafka_reader`, the partition state machine they share. librdkafka decodes
records in C and prefetches in the background, which reads several times as fast as
kafka-python's pure-Python decoding. Only the flow imports this module, and only when it
is selected, so kafka-python users need not install confluent-kafka (the `confluent`
extra).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import orjson
from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition

from waxhouse.connectors.kafka import retry_while_unreachable
from waxhouse.connectors.kafka_reader import (
    FETCH_MAX_WAIT_MS,
    METADATA_MAX_AGE_S,
    FetchAnswer,
    Fetched,
    KafkaTopicSource,
)
from waxhouse.errors import SourceError

logger = logging.getLogger(__name__)
_librdkafka_logger = logging.getLogger(f"{__name__}.librdkafka")  # its own log lines

T = TypeVar("T")

_METADATA_TIMEOUT_S = 60.0
_UNREACHABLE_TIMEOUT_S = 300.0
_REQUEST_TIMEOUT_S = 10.0
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
        # End-of-partition events carry the position past transaction markers and
        # aborted batches (see `_ConfluentClient`).
        "enable.partition.eof": True,
        # As kafka.py's consumer: a position that retention deleted under a running reader
        # continues at the earliest offset; aborted and open transactions are never read.
        "auto.offset.reset": "earliest",
        "isolation.level": "read_committed",
        "statistics.interval.ms": FETCH_MAX_WAIT_MS,
        "fetch.wait.max.ms": FETCH_MAX_WAIT_MS,
        "topic.metadata.refresh.interval.ms": int(METADATA_MAX_AGE_S * 1000),
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


def _looking_up(what: str, consumer: Any, errors: _ClientErrors, action: Callable[[], T]) -> T:
    """`action()` (a request of `consumer`'s), retried while no broker answers; wrong
    credentials fail at once. librdkafka says why a connection failed only through the
    error callback, which runs when the consumer is polled: a failed request polls it."""

    def attempt() -> T:
        try:
            return action()
        except KafkaException as e:
            consumer.poll(0)
            if errors.refused is not None:
                raise SourceError(
                    f"Kafka refused the credentials ({errors.refused.str()}); check "
                    "KAFKA_SASL_USERNAME, KAFKA_SASL_PASSWORD and KAFKA_SASL_MECHANISM"
                ) from e
            raise

    return _while_unreachable(what, attempt)


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
        self.refused: KafkaError | None = None  # wrong credentials: no retry mends them
        self._logged_at: dict[int, float] = {}
        self._unlogged: dict[int, int] = {}

    def __call__(self, error: KafkaError) -> None:
        if error.code() == KafkaError._AUTHENTICATION:
            self.refused = error
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


class _ConfluentClient:
    """A librdkafka consumer assigned to one partition, as a `PartitionClient`.

    - Position: librdkafka's own `position()` runs one past an end-of-partition event, so
      the client tracks it: one past the last record returned, or the offset of the
      latest end-of-partition event (`enable.partition.eof`), which lies past any
      transaction markers and aborted batches.
    - Answers: from librdkafka's statistics (`stats_cb`, every `FETCH_MAX_WAIT_MS`): the
      partition's last stable offset, and when the connection to its leader last received
      anything (`ts - rxidle`, on the same monotonic clock as Python's), while the
      partition is fetching. A cut connection stops `rxidle` from resetting.
    - Partition count: the topic's partitions in those statistics (metadata refreshed
      every `METADATA_MAX_AGE_S`).
    """

    def __init__(self, consumer: Any, tp: Any, part: str, errors: _ClientErrors) -> None:
        self._consumer = consumer
        self._tp = tp
        self._part = part
        self._errors = errors
        self._after_last: int | None = None
        self._answer: FetchAnswer | None = None
        self._partitions: int | None = None

    def on_stats(self, stats_json: str) -> None:
        stats = orjson.loads(stats_json)
        partitions = stats.get("topics", {}).get(self._tp.topic, {}).get("partitions", {})
        ids = [p for p in partitions if p != "-1"]
        if ids:
            self._partitions = len(ids)
        found = partitions.get(str(self._tp.partition))
        if found is None or found.get("fetch_state") != "active":
            return
        end = found.get("ls_offset", -1)
        leader = found.get("leader")
        for broker in stats.get("brokers", {}).values():
            if broker.get("nodeid") != leader or broker.get("state") != "UP":
                continue
            rxidle = broker.get("rxidle", -1)
            if rxidle >= 0 and end >= 0:
                self._answer = FetchAnswer((stats["ts"] - rxidle) / 1e6, end)

    def seek(self, offset: int) -> None:
        # Explicit assignment at an absolute offset: no group join, no committed offset.
        self._consumer.assign([TopicPartition(self._tp.topic, self._tp.partition, offset)])

    def fetch(self, max_records: int) -> Fetched | None:
        if self._errors.fatal is not None:
            fatal = self._errors.fatal
            raise SourceError(
                f"Kafka partition {self._part}: fatal client error {fatal.name()}: {fatal.str()}"
            ) from KafkaException(fatal)
        try:
            messages = self._consumer.consume(num_messages=max_records, timeout=0)
        except KafkaException as e:
            raise SourceError(
                f"consuming Kafka partition {self._part} failed: {_describe(e)}"
            ) from e
        if [m for m in messages if m.error() is not None]:
            messages = self._without_errors(messages)
        if not messages:
            return None
        # An end-of-partition event after these records may already have moved it further.
        self._after_last = max(self._after_last or 0, messages[-1].offset() + 1)
        return Fetched(
            [m.offset() for m in messages],
            [m.value() for m in messages],
            [m.timestamp()[1] for m in messages],
        )

    def _without_errors(self, messages: list[Any]) -> list[Any]:
        """The records among `messages`; the errors are dealt with.

        End of partition moves the position; an error librdkafka recovers from is logged;
        any other (authorization, a deleted topic, a record too large to fetch) would stall
        the partition for good, so it fails the flow.
        """
        records = []
        for message in messages:
            error = message.error()
            if error is None:
                records.append(message)
            elif error.code() == KafkaError._PARTITION_EOF:
                logger.debug("partition %s: read to its end at %d", self._part, message.offset())
                self._after_last = max(self._after_last or 0, message.offset())
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

    def position(self) -> int | None:
        return self._after_last

    def answer(self) -> FetchAnswer | None:
        return self._answer

    def partition_count(self) -> int | None:
        return self._partitions

    def close(self) -> None:
        self._consumer.close()


class ConfluentKafkaSource(KafkaTopicSource):
    """Every partition of one topic, read with librdkafka (`read_committed`)."""

    def _client_options(self, options: Mapping[str, object]) -> dict[str, object]:
        return librdkafka_options(options)

    def _partitions(self) -> list[int]:
        errors = _ClientErrors(f"listing topic {self._topic!r}")
        consumer = _open_consumer(_consumer_config(self._bootstrap, self._options, errors))
        try:
            deadline = time.monotonic() + _METADATA_TIMEOUT_S
            while True:
                metadata = _looking_up(
                    f"looking up Kafka topic {self._topic!r}",
                    consumer,
                    errors,
                    lambda: consumer.list_topics(self._topic, timeout=_REQUEST_TIMEOUT_S),
                )
                found = metadata.topics.get(self._topic)
                if found is not None and found.partitions:
                    return sorted(found.partitions)
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

    def _open(self, partition: int, part: str) -> tuple[_ConfluentClient, int, int]:
        tp = TopicPartition(self._topic, partition)
        errors = _ClientErrors(f"partition {part}")
        client: _ConfluentClient | None = None

        def on_stats(stats_json: str) -> None:
            if client is not None:
                client.on_stats(stats_json)

        config = _consumer_config(self._bootstrap, self._options, errors)
        consumer = _open_consumer({**config, "stats_cb": on_stats})
        try:
            # Not a lazy `OFFSET_BEGINNING`/`OFFSET_END`: an absolute offset fixed here is
            # what bounded mode stops at and what the start line reports. Read committed,
            # the end is the last stable offset.
            first, end = _looking_up(
                f"looking up the offsets of {part}",
                consumer,
                errors,
                lambda: _watermarks(consumer, tp),
            )
        except KafkaException as e:
            consumer.close()
            raise SourceError(f"cannot open Kafka partition {part}: {_describe(e)}") from e
        except BaseException:
            consumer.close()
            raise
        client = _ConfluentClient(consumer, tp, part, errors)
        return client, first, end
