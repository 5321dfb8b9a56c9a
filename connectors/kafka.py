"""Kafka I/O on kafka-python: a partitioned Bytewax source and the dead-letter sink.

The source adapts kafka-python's consumer to `waxhouse.connectors.kafka_reader`, which holds the
partition state machine both Kafka clients share (offsets, bounded mode, idle ticks, new
partitions). Reads are `read_committed`; every codec kafka-python knows (gzip, snappy,
lz4, zstd) decodes with the pinned codec packages.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple, TypeVar

from bytewax.outputs import FixedPartitionedSink, StatefulSinkPartition
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.errors import (
    BrokerNotAvailableError,
    KafkaConnectionError,
    KafkaError,
    KafkaTimeoutError,
    SaslAuthenticationFailedError,
)
from kafka.net.connection import KafkaConnection

from waxhouse.connectors.kafka_reader import (
    FETCH_MAX_WAIT_MS,
    METADATA_MAX_AGE_S,
    FetchAnswer,
    Fetched,
    KafkaTopicSource,
)
from waxhouse.connectors.metrics import DLQ_RECORDS
from waxhouse.errors import SinkError, SourceError
from waxhouse.rows import DeadLetterRow

logger = logging.getLogger(__name__)

T = TypeVar("T")

_METADATA_TIMEOUT_S = 60.0
_UNREACHABLE_TIMEOUT_S = 300.0
_MAX_PENDING = 10_000  # records sent but not yet known to be acknowledged


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


class _RefusedLogins:
    """Notes the SASL authentications kafka-python's connections fail.

    kafka-python 3.0 retries a refused login like an unreachable broker and reports only
    `KafkaTimeoutError` once its bootstrap time is up. So the watch wraps the one step
    where a login is refused, `KafkaConnection._sasl_authenticate` (installed once, on
    first use), and keeps what went wrong there: the broker's refusal
    (`SaslAuthenticationFailedError`), or the connection lost mid-authentication, which
    is how a refusal looks over TLS when the broker's close overtakes its answer.
    """

    LOST_LOGINS = 2  # connections lost while authenticating that count as a refusal

    def __init__(self) -> None:
        self._failures: list[tuple[float, Exception]] = []
        self._installed = False

    def install(self) -> None:
        if self._installed:
            return
        authenticate = KafkaConnection._sasl_authenticate
        watch = self

        async def watched(connection: Any, timeout_at: float | None = None) -> Any:
            try:
                return await authenticate(connection, timeout_at)
            except (SaslAuthenticationFailedError, KafkaConnectionError) as e:
                watch._failures = [*watch._failures[-9:], (time.monotonic(), e)]
                raise

        KafkaConnection._sasl_authenticate = watched
        self._installed = True

    def since(self, started: float) -> str | None:
        """Why logins since `started` were refused, if they were."""
        failures = [e for at, e in self._failures if at >= started]
        refusals = [e for e in failures if isinstance(e, SaslAuthenticationFailedError)]
        if refusals:
            return str(refusals[-1])
        if len(failures) >= self.LOST_LOGINS:
            return (
                f"the broker closed the connection during SASL authentication {len(failures)} times"
            )
        return None


_REFUSED_LOGINS = _RefusedLogins()


def _connecting(bootstrap: str, client: Callable[[], T]) -> T:
    """`client()` (a kafka-python consumer or producer, which connects as it is made);
    wrong credentials fail at once with `SourceError`, an outage is retried."""
    _REFUSED_LOGINS.install()

    def attempt() -> T:
        started = time.monotonic()
        try:
            return client()
        except KafkaTimeoutError as e:
            refused = _REFUSED_LOGINS.since(started)
            if refused is None:
                raise
            raise SourceError(
                f"Kafka at {bootstrap} refused the credentials ({refused}); check "
                "KAFKA_SASL_USERNAME, KAFKA_SASL_PASSWORD and KAFKA_SASL_MECHANISM"
            ) from e

    return _while_unreachable("connecting to Kafka", attempt)


def _consumer(bootstrap: str, options: Mapping[str, object]) -> KafkaConsumer:
    return _connecting(
        bootstrap,
        lambda: KafkaConsumer(
            bootstrap_servers=bootstrap,
            group_id=None,
            enable_auto_commit=False,
            # A position that retention deleted under a running reader continues at the
            # earliest offset; aborted and open transactions are never read.
            auto_offset_reset="earliest",
            isolation_level="read_committed",
            metadata_max_age_ms=int(METADATA_MAX_AGE_S * 1000),  # notice new partitions
            # Every fetch answer names the partition with its last stable offset (an
            # incremental fetch session leaves out partitions that did not change): see
            # _KafkaPythonClient. One partition per consumer, so this costs nothing.
            enable_incremental_fetch_sessions=False,
            fetch_max_wait_ms=FETCH_MAX_WAIT_MS,  # how often a caught-up partition hears
            max_poll_records=10_000,
            max_partition_fetch_bytes=8 * 1024 * 1024,
            fetch_max_bytes=64 * 1024 * 1024,
            **options,
        ),
    )


class _KafkaPythonClient:
    """A kafka-python consumer assigned to one partition, as a `PartitionClient`.

    kafka-python keeps no record of when a fetch answered, so the client wraps its
    fetcher's response handler (kafka-python 3.0's `Fetcher._handle_fetch_response`,
    looked up per request) to note each successful answer's last stable offset and time.
    """

    def __init__(self, consumer: KafkaConsumer, tp: TopicPartition) -> None:
        self._consumer = consumer
        self._tp = tp
        self._answer: FetchAnswer | None = None
        fetcher = getattr(consumer, "_fetcher", None)
        handle = getattr(fetcher, "_handle_fetch_response", None)
        if handle is None:
            raise SourceError("this kafka-python version has no Fetcher._handle_fetch_response")

        def observe(node_id: int, fetch_offsets: Any, send_time: float, response: Any) -> Any:
            self._note(response)
            return handle(node_id, fetch_offsets, send_time, response)

        fetcher._handle_fetch_response = observe  # type: ignore[union-attr]

    def _note(self, response: Any) -> None:
        tp = self._tp
        for topic_data in response.responses:
            if topic_data.topic != tp.topic:
                continue
            for data in topic_data.partitions:
                if data.partition_index == tp.partition and data.error_code == 0:
                    stable = getattr(data, "last_stable_offset", -1)
                    end = stable if stable >= 0 else data.high_watermark
                    self._answer = FetchAnswer(time.monotonic(), end)

    def seek(self, offset: int) -> None:
        self._consumer.seek(self._tp, offset)

    def fetch(self, max_records: int) -> Fetched | None:
        records = self._consumer.poll(timeout_ms=0, max_records=max_records).get(self._tp)
        if not records:
            return None
        return Fetched(
            [r.offset for r in records],
            [r.value for r in records],
            [r.timestamp for r in records],
        )

    def position(self) -> int | None:
        return self._consumer.position(self._tp)

    def answer(self) -> FetchAnswer | None:
        return self._answer

    def partition_count(self) -> int | None:
        partitions = self._consumer.partitions_for_topic(self._tp.topic)
        return len(partitions) if partitions else None

    def close(self) -> None:
        self._consumer.close()


class KafkaSource(KafkaTopicSource):
    """Every partition of one topic, read with kafka-python (`read_committed`)."""

    def _partitions(self) -> list[int]:
        consumer = _consumer(self._bootstrap, self._options)
        try:
            deadline = time.monotonic() + _METADATA_TIMEOUT_S
            while True:
                partitions = consumer.partitions_for_topic(self._topic)
                if partitions:
                    return sorted(partitions)
                if time.monotonic() > deadline:
                    raise SourceError(
                        f"Kafka topic {self._topic!r} not found at {self._bootstrap} "
                        f"after {_METADATA_TIMEOUT_S:.0f} s"
                    )
                logger.warning("waiting for Kafka topic %r to appear", self._topic)
                time.sleep(1.0)
        finally:
            consumer.close()

    def _open(self, partition: int, part: str) -> tuple[_KafkaPythonClient, int, int]:
        tp = TopicPartition(self._topic, partition)
        consumer = _consumer(self._bootstrap, self._options)
        try:
            consumer.assign([tp])
            client = _KafkaPythonClient(consumer, tp)
            # Explicit ListOffsets lookups: a lazy seek_to_beginning() can fall back to the
            # consumer's reset policy when the lookup fails, silently skipping the backlog.
            # Read committed, the end is the last stable offset.
            first, end = _while_unreachable(
                f"looking up the offsets of {part}",
                lambda: (consumer.beginning_offsets([tp])[tp], consumer.end_offsets([tp])[tp]),
            )
        except KafkaError as e:
            consumer.close()
            raise SourceError(f"cannot open Kafka partition {part}: {e}") from e
        except BaseException:
            consumer.close()
            raise
        return client, first, end


DLQ_PART = "dlq"
NOTICES_PART = "notices"


class Message(NamedTuple):
    """One record for a topic sink: its key, value and headers."""

    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes]]


class _TopicPartition(StatefulSinkPartition[T, None]):
    """Sends records as they come and waits for Kafka's acknowledgements once per epoch.

    `snapshot()` ends an epoch: it returns only when every record sent so far is
    acknowledged, so a committed epoch never loses one, and the worker does not wait
    for a round trip per batch. A large backlog is settled early to bound memory.
    """

    def __init__(
        self,
        producer: KafkaProducer,
        topic: str,
        what: str,
        encode: Callable[[T], Message],
        acknowledged: Callable[[T], None],
    ) -> None:
        self._producer = producer
        self._topic = topic
        self._what = what
        self._encode = encode
        self._acknowledged = acknowledged
        self._pending: list[tuple[T, Any]] = []

    def write_batch(self, values: list[T]) -> None:
        for item in values:
            key, value, headers = self._encode(item)
            future = self._producer.send(self._topic, key=key, value=value, headers=headers)
            self._pending.append((item, future))
        if len(self._pending) >= _MAX_PENDING:
            self._settle()

    def _settle(self) -> None:
        """Wait until every record sent is acknowledged; fail loudly if one was not."""
        pending, self._pending = self._pending, []
        if not pending:
            return
        self._producer.flush()
        for item, future in pending:
            try:
                future.get(timeout=0)
            except KafkaError as e:
                raise SinkError(f"producing to {self._what} {self._topic!r} failed: {e}") from e
            self._acknowledged(item)

    def snapshot(self) -> None:
        self._settle()
        return None

    def close(self) -> None:
        try:
            self._settle()
        finally:
            self._producer.close()


class KafkaTopicSink(FixedPartitionedSink[T, None]):
    """Records to one topic, at least once: a replay after a crash may produce a record
    again. One partition, so the records of an epoch are acknowledged by Kafka before that
    epoch is committed. `encode` makes an item a `Message`; `acknowledged` is called for
    each once Kafka has it (metrics). `what` and `setting` (the variable that names the
    topic, if one does) name the topic in errors: a missing topic fails the start, not the
    first record."""

    def __init__(
        self,
        bootstrap_servers: str,
        topic: str,
        *,
        part: str,
        what: str,
        setting: str | None,
        encode: Callable[[T], Message],
        acknowledged: Callable[[T], None],
        client_options: Mapping[str, object] | None = None,
    ) -> None:
        self._bootstrap = bootstrap_servers
        self._topic = topic
        self._part = part
        self._what = what
        self._setting = setting
        self._encode = encode
        self._acknowledged = acknowledged
        self._options = dict(client_options or {})

    def list_parts(self) -> list[str]:
        return [self._part]

    def part_fn(self, item_key: str) -> int:
        return 0

    def build_part(self, step_id: str, for_part: str, resume_state: None) -> _TopicPartition[T]:
        _while_unreachable(f"checking {self._what} {self._topic!r}", self._check_topic_exists)
        producer = _connecting(
            self._bootstrap,
            lambda: KafkaProducer(
                bootstrap_servers=self._bootstrap,
                acks="all",
                linger_ms=100,  # records are settled once per epoch: batch them
                batch_size=1024 * 1024,
                max_request_size=16 * 1024 * 1024,
                **self._options,
            ),
        )
        return _TopicPartition(producer, self._topic, self._what, self._encode, self._acknowledged)

    def _check_topic_exists(self) -> None:
        consumer = _consumer(self._bootstrap, self._options)
        try:
            if not consumer.partitions_for_topic(self._topic):
                point = f" or point {self._setting} at one that does" if self._setting else ""
                raise SinkError(
                    f"{self._what} {self._topic!r} does not exist at {self._bootstrap}: "
                    f"create it{point}"
                )
        finally:
            consumer.close()


def _letter(row: DeadLetterRow) -> Message:
    headers = [
        ("reason", row.reason.encode()),
        ("error", row.error.encode()),
        ("source", row.source.encode()),
    ]
    return Message(None, row.payload, headers)


def _letter_sent(row: DeadLetterRow) -> None:
    DLQ_RECORDS.labels(reason=row.reason).inc()


def dead_letter_sink(
    bootstrap_servers: str,
    topic: str,
    *,
    setting: str | None = "KAFKA_DLQ_TOPIC",
    client_options: Mapping[str, object] | None = None,
) -> KafkaTopicSink[DeadLetterRow]:
    """Raw rejected records to the DLQ topic with `reason`/`error`/`source` headers (the
    `dead_letters` table holds each exactly once)."""
    return KafkaTopicSink(
        bootstrap_servers,
        topic,
        part=DLQ_PART,
        what="dead-letter topic",
        setting=setting,
        encode=_letter,
        acknowledged=_letter_sent,
        client_options=client_options,
    )
