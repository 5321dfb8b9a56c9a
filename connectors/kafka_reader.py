"""One Kafka partition as a resumable Bytewax source partition, whatever the client.

Both Kafka clients (kafka-python in `waxhouse.connectors.kafka`, confluent-kafka in
`waxhouse.connectors.kafka_confluent`) share the state machine here; each adapts its consumer to
the small `PartitionClient` protocol. What the machine guarantees:

- **Offsets.** The snapshot is the next offset to read. It moves past every record
  emitted and past what a client skips without returning (transaction markers, aborted
  batches, compacted gaps), never past a record not yet emitted.
- **Bounded mode** stops when that position reaches the end offset looked up at build
  time (the last stable offset: reads are `read_committed`), however the last offsets
  are used, not when a record with the last offset arrives.
- **Idle time** counts only while the partition is *verifiably* caught up: an `IdleTick`
  reports the time from the last record to the newest fetch answer that showed the
  partition read to its end (its last stable offset). While no broker answers, that
  answer ages and event time stands still.
- **A growing topic** is noticed (`TopicWatch`) and stops the flow with an error: Bytewax
  partitions are fixed when the flow starts, so the restart picks the new partition up
  and, resuming from recovery, reads it from its beginning.
"""

from __future__ import annotations

import bisect
import logging
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Protocol

from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition

from waxhouse.connectors.metrics import (
    CONSUMER_LAG,
    END_OFFSET,
    RECORDS_CONSUMED,
    UNREAD_PARTITIONS,
)
from waxhouse.errors import SourceError
from waxhouse.records import IdleTick, InputBatch, SourceItem
from waxhouse.settings import StartingOffset

logger = logging.getLogger(__name__)

KeyedItem = tuple[str, SourceItem]

MAX_BATCH = 10_000
FETCH_WAIT = timedelta(milliseconds=5)  # behind, or nothing fetched yet: look again soon
CAUGHT_UP_WAIT = timedelta(milliseconds=50)  # at the end: poll gently
IDLE_TICK_EVERY_S = 0.2
WATCH_EVERY_S = 5.0  # how often a partition compares the topic's partition count
STOP_GRACE_S = 15.0  # from noticing a new partition to stopping: a metrics scrape's time
METADATA_MAX_AGE_S = 10.0  # clients refresh the topic's metadata at least this often
# A caught-up partition's fetch waits this long for data before the broker answers empty:
# how often it learns that it is still caught up, so the granularity of idle time.
FETCH_MAX_WAIT_MS = 250


@dataclass(frozen=True, slots=True)
class FetchAnswer:
    """A broker's answer about a partition: at monotonic time `at`, its end was `end`
    (the last stable offset: the first offset a read_committed consumer cannot read yet)."""

    at: float
    end: int


@dataclass(frozen=True, slots=True)
class Fetched:
    """Records from one poll of one partition, in offset order, as columns."""

    offsets: list[int]
    values: list[bytes | None]
    timestamps_ms: list[int]


class PartitionClient(Protocol):
    """One consumer assigned to one partition, as the reader needs it. Nothing blocks."""

    def fetch(self, max_records: int) -> Fetched | None:
        """Records fetched so far, up to `max_records`; None when there are none."""

    def position(self) -> int | None:
        """The next offset the client will return a record from or after: past every
        record returned and everything skipped since (markers, aborted batches, gaps)."""

    def answer(self) -> FetchAnswer | None:
        """The newest successful fetch answer for the partition, if any yet."""

    def partition_count(self) -> int | None:
        """The topic's partition count in the client's (periodically refreshed) metadata."""

    def close(self) -> None: ...


class TopicWatch:
    """Notices a topic that has more partitions than the flow reads, and stops the flow.

    `check(found)` is given the partition count a client's metadata holds. Once it
    exceeds `known`, the watch logs an error and sets `waxhouse_source_partitions_unread`
    at once, and stops the flow `grace_s` later (time for a metrics scrape to see it; the
    flow works on meanwhile) through `on_failure(message)`, or by raising without one:
    records of a partition the flow does not read are never skipped silently, and the
    restart reads them.
    """

    def __init__(
        self,
        topic: str,
        known: int,
        every_s: float | None = None,
        grace_s: float | None = None,
        clock: Callable[[], float] = time.monotonic,
        on_failure: Callable[[str], None] | None = None,
    ) -> None:
        self._topic = topic
        self._on_failure = on_failure
        self._known = known
        self._every_s = WATCH_EVERY_S if every_s is None else every_s
        self._grace_s = STOP_GRACE_S if grace_s is None else grace_s
        self._clock = clock
        self._next_check = clock() + self._every_s
        self._stop_at: float | None = None
        self._message = ""
        UNREAD_PARTITIONS.labels(topic=topic).set(0)

    def due(self) -> bool:
        return self._clock() >= self._next_check

    def _stop(self) -> None:
        """`on_failure(message)` once (an orderly stop: the flow ends after this batch),
        or without it, raise."""
        if self._on_failure is None:
            raise SourceError(self._message)
        on_failure, self._on_failure = self._on_failure, None
        self._next_check = float("inf")
        on_failure(self._message)

    def check(self, found: int | None) -> None:
        now = self._clock()
        self._next_check = now + self._every_s
        if self._stop_at is not None:
            if now >= self._stop_at:
                self._stop()
            return
        if found is None or found <= self._known:
            return
        unread = ", ".join(f"{self._topic}/{p}" for p in range(self._known, found))
        UNREAD_PARTITIONS.labels(topic=self._topic).set(found - self._known)
        self._message = (
            f"Kafka topic {self._topic!r} grew from {self._known} to {found} partitions while "
            f"the flow ran, and the flow does not read {unread}: stopping so that a restart "
            "reads them (from their beginning, when it resumes from recovery)"
        )
        logger.error("%s; stopping in %.0f s", self._message, self._grace_s)
        self._stop_at = now + self._grace_s
        self._next_check = min(self._next_check, self._stop_at)


class KafkaPartition(StatefulSourcePartition[KeyedItem, int]):
    """One Kafka partition: batches of records, idle ticks, and its next offset as state."""

    def __init__(
        self,
        client: PartitionClient,
        part: str,
        next_offset: int,
        stop_at: int | None,
        watch: TopicWatch | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._client = client
        self._part = part
        self._next_offset = next_offset
        self._stop_at = stop_at
        self._watch = watch
        self._clock = clock
        self._last_data = clock()  # a restart counts no idle time from before it
        self._verified: float | None = None  # newest answer that showed us at the end
        self._caught_up = False
        self._last_tick = -IDLE_TICK_EVERY_S
        self._ticked_ms = -1
        self._wait: timedelta | None = None
        self._finished = False
        topic, _, partition = part.rpartition("/")
        self._consumed = RECORDS_CONSUMED.labels(topic=topic, partition=partition)
        self._lag = CONSUMER_LAG.labels(topic=topic, partition=partition)
        self._labels = (topic, partition)  # the end offset's series starts at the first answer

    @property
    def part(self) -> str:
        return self._part

    def _done(self) -> bool:
        return self._stop_at is not None and self._next_offset >= self._stop_at

    def next_batch(self) -> list[KeyedItem]:
        if self._done():
            if not self._finished:
                self._finished = True
                logger.info("partition %s read to its stop offset %d", self._part, self._stop_at)
            raise StopIteration
        if self._watch is not None and self._watch.due():
            self._watch.check(self._client.partition_count())
        fetched = self._client.fetch(MAX_BATCH)
        now = self._clock()
        batch = self._batch(fetched) if fetched is not None else None
        if batch is not None:
            self._next_offset = batch.offsets[-1] + 1
            self._last_data, self._ticked_ms = now, -1
            self._consumed.inc(len(batch))
        self._skip_to(self._client.position())
        self._observe(self._client.answer())
        if batch is not None:
            self._wait = None
            return [(self._part, batch)]
        self._wait = CAUGHT_UP_WAIT if self._caught_up else FETCH_WAIT
        return self._idle_tick(now)

    def _batch(self, fetched: Fetched) -> InputBatch | None:
        """`fetched` as a batch, without records at or past the stop offset."""
        offsets, values, stamps = fetched.offsets, fetched.values, fetched.timestamps_ms
        if self._stop_at is not None and offsets[-1] >= self._stop_at:
            keep = bisect.bisect_left(offsets, self._stop_at)
            offsets, values, stamps = offsets[:keep], values[:keep], stamps[:keep]
        if not offsets:
            return None
        return InputBatch(self._part, offsets, values, stamps)

    def _skip_to(self, position: int | None) -> None:
        """Move past what the client skipped without a record (markers, aborted batches,
        compacted gaps); in bounded mode never past the stop offset."""
        if position is None or position <= self._next_offset:
            return
        if self._stop_at is not None:
            position = min(position, self._stop_at)
        self._next_offset = max(self._next_offset, position)

    def _observe(self, answer: FetchAnswer | None) -> None:
        if answer is None:
            return
        at_end = self._next_offset >= answer.end
        if at_end and (self._verified is None or answer.at > self._verified):
            self._verified = answer.at
        # Caught up now (poll gently, let idle time pass) only if no record came since the
        # answer: a backlog's answers are older than its records.
        self._caught_up = at_end and answer.at >= self._last_data
        self._lag.set(max(0, answer.end - self._next_offset))
        END_OFFSET.labels(*self._labels).set(answer.end)

    def _idle_tick(self, now: float) -> list[KeyedItem]:
        """A live partition read to its end lets time pass, up to its newest answer."""
        if self._stop_at is not None or not self._caught_up or self._verified is None:
            return []
        if now - self._last_tick < IDLE_TICK_EVERY_S:
            return []
        idle_ms = round((self._verified - self._last_data) * 1000)
        if idle_ms <= self._ticked_ms or idle_ms < 0:
            return []
        self._last_tick, self._ticked_ms = now, idle_ms
        return [(self._part, IdleTick(self._part, idle_ms))]

    def next_awake(self) -> datetime | None:
        if self._wait is None:
            return None
        return datetime.now(timezone.utc) + self._wait

    def snapshot(self) -> int:
        return self._next_offset

    def close(self) -> None:
        self._client.close()


def start_offset(
    part: str,
    resume_state: int | None,
    first: int,
    end: int,
    starting_offset: StartingOffset,
    resumed: bool,
) -> int:
    """Where a partition starts reading, given its offsets `first` .. `end`.

    Its own recovery state wins; a state that retention deleted continues at `first`. A
    partition without state in a flow that resumes from recovery was added to the topic
    since the flow first ran: it is read from its beginning, whatever `starting_offset`
    says, so none of its records is skipped.
    """
    if resume_state is not None:
        if resume_state < first:
            logger.warning(
                "partition %s: resume offset %d was deleted by retention; continuing at %d",
                part,
                resume_state,
                first,
            )
            return first
        return resume_state
    if resumed:
        logger.warning(
            "partition %s has no recovery state in a resumed flow: it was added to the topic "
            "since the flow first ran; reading it from its beginning (offset %d)",
            part,
            first,
        )
        return first
    return first if starting_offset == "earliest" else end


class KafkaTopicSource(FixedPartitionedSource[KeyedItem, int], ABC):
    """Every partition of one topic, each resumable from its next offset.

    Subclasses open a client per partition (`_open`) and list the topic's partitions
    (`_partitions`); the rest is shared.
    """

    def __init__(
        self,
        bootstrap_servers: str,
        topic: str,
        starting_offset: StartingOffset = "earliest",
        stop_at_end: bool = False,
        client_options: Mapping[str, object] | None = None,
        resumed: bool = False,
        on_failure: Callable[[str], None] | None = None,
    ) -> None:
        self._bootstrap = bootstrap_servers
        self._topic = topic
        self._starting_offset = starting_offset
        self._stop_at_end = stop_at_end
        self._options = self._client_options(client_options or {})
        self._resumed = resumed
        self._on_failure = on_failure
        self._known: int | None = None

    def _client_options(self, options: Mapping[str, object]) -> dict[str, object]:
        """The client's own names for `options` (kafka-python keyword names)."""
        return dict(options)

    def list_parts(self) -> list[str]:
        partitions = self._partitions()
        self._known = len(partitions)
        return [f"{self._topic}/{p}" for p in partitions]

    @abstractmethod
    def _partitions(self) -> list[int]:
        """The topic's partition ids, sorted; waits a while for a topic that is missing."""

    @abstractmethod
    def _open(self, partition: int, part: str) -> tuple[OffsetClient, int, int]:
        """A client for `partition` with its (first offset, end offset) looked up."""

    def build_part(self, step_id: str, for_part: str, resume_state: int | None) -> KafkaPartition:
        partition = int(for_part.rpartition("/")[2])
        client, first, end = self._open(partition, for_part)
        try:
            next_offset = start_offset(
                for_part, resume_state, first, end, self._starting_offset, self._resumed
            )
            client.seek(next_offset)
            stop_at = end if self._stop_at_end else None
            known = self._known if self._known is not None else len(self._partitions())
        except BaseException:
            client.close()
            raise
        origin: str = "resumed" if resume_state is not None else self._starting_offset
        if resume_state is None and self._resumed:
            origin = "added since the flow first ran"
        logger.info(
            "partition %s starts at offset %d (%s)%s",
            for_part,
            next_offset,
            origin,
            f", stops at {stop_at}" if stop_at is not None else "",
        )
        watch = None
        if not self._stop_at_end:
            watch = TopicWatch(self._topic, known, on_failure=self._on_failure)
        return KafkaPartition(client, for_part, next_offset, stop_at, watch)


class OffsetClient(PartitionClient, Protocol):
    """A partition client that can be positioned before the first fetch."""

    def seek(self, offset: int) -> None: ...
