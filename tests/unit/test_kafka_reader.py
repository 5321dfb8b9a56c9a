"""The partition state machine both Kafka sources share, driven by a scripted client.

The client is a fake of the `PartitionClient` protocol and the clock is injected, so each
rule is shown on its own: positions past skipped offsets, the stop offset, idle time only
up to the newest answer at the end, and a topic that grows.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from waxhouse.connectors import kafka_reader
from waxhouse.connectors.kafka_reader import (
    FetchAnswer,
    Fetched,
    KafkaPartition,
    TopicWatch,
    start_offset,
)
from waxhouse.errors import SourceError
from waxhouse.records import IdleTick, InputBatch

PART = "events/0"


@dataclass
class Clock:
    now: float = 100.0

    def __call__(self) -> float:
        return self.now


@dataclass
class ScriptedClient:
    """Returns what the test queued: records per fetch, a position, the newest answer."""

    fetches: list[Fetched] = field(default_factory=list)
    at: int | None = None
    newest: FetchAnswer | None = None
    partitions: int | None = 1
    closed: bool = False

    def fetch(self, max_records: int) -> Fetched | None:
        if not self.fetches:
            return None
        fetched = self.fetches.pop(0)
        self.at = max(self.at or 0, fetched.offsets[-1] + 1)
        return fetched

    def position(self) -> int | None:
        return self.at

    def answer(self) -> FetchAnswer | None:
        return self.newest

    def partition_count(self) -> int | None:
        return self.partitions

    def close(self) -> None:
        self.closed = True


def records(*offsets: int) -> Fetched:
    return Fetched(list(offsets), [b"%d" % o for o in offsets], [1_000 + o for o in offsets])


def batches(items: list) -> list[InputBatch]:
    return [item for _, item in items if isinstance(item, InputBatch)]


def ticks(items: list) -> list[IdleTick]:
    return [item for _, item in items if isinstance(item, IdleTick)]


def test_records_become_one_batch_and_move_the_snapshot() -> None:
    client = ScriptedClient(fetches=[records(5, 6, 7)])
    part = KafkaPartition(client, PART, 5, None, clock=Clock())
    [batch] = batches(part.next_batch())
    assert (batch.part, batch.offsets, batch.values) == (PART, [5, 6, 7], [b"5", b"6", b"7"])
    assert batch.timestamps_ms == [1_005, 1_006, 1_007]
    assert part.snapshot() == 8
    assert part.next_awake() is None  # more may be waiting: at once


def test_the_position_moves_past_offsets_the_client_skipped() -> None:
    """Transaction markers and aborted batches have offsets but no records."""
    client = ScriptedClient(fetches=[records(0, 1)])
    part = KafkaPartition(client, PART, 0, None, clock=Clock())
    part.next_batch()
    client.at = 12  # a marker, an aborted batch and its marker followed
    assert part.next_batch() == []
    assert part.snapshot() == 12


def test_bounded_mode_cuts_at_the_stop_offset_and_stops_there() -> None:
    client = ScriptedClient(fetches=[records(8, 9, 10, 11)])
    part = KafkaPartition(client, PART, 8, 10, clock=Clock())
    [batch] = batches(part.next_batch())
    assert batch.offsets == [8, 9]
    assert part.snapshot() == 10
    with pytest.raises(StopIteration):
        part.next_batch()


def test_bounded_mode_ends_when_only_skipped_offsets_remain() -> None:
    client = ScriptedClient(fetches=[records(3)])
    part = KafkaPartition(client, PART, 3, 9, clock=Clock())
    part.next_batch()
    client.at = 15  # past the stop offset: an aborted transaction's records, not emitted
    part.next_batch()
    assert part.snapshot() == 9  # never past the stop offset
    with pytest.raises(StopIteration):
        part.next_batch()


def test_idle_time_counts_up_to_the_newest_answer_at_the_end() -> None:
    clock = Clock(100.0)
    client = ScriptedClient(fetches=[records(0, 1)])
    part = KafkaPartition(client, PART, 0, None, clock=clock)
    part.next_batch()  # data at t=100
    clock.now = 100.5
    client.newest = FetchAnswer(at=100.4, end=2)
    [tick] = ticks(part.next_batch())
    assert tick == IdleTick(PART, 400)
    assert part.next_awake() is not None  # caught up: poll gently
    clock.now = 100.6  # within the tick spacing: no tick
    client.newest = FetchAnswer(at=100.55, end=2)
    assert part.next_batch() == []
    clock.now = 101.0
    [tick] = ticks(part.next_batch())
    assert tick.idle_ms == 550


def test_no_idle_time_passes_while_no_answer_comes() -> None:
    """A cut network: the wall clock runs on, the newest answer does not."""
    clock = Clock(100.0)
    client = ScriptedClient(fetches=[records(0)], newest=FetchAnswer(at=100.0, end=1))
    part = KafkaPartition(client, PART, 0, None, clock=clock)
    part.next_batch()
    clock.now = 100.3
    client.newest = FetchAnswer(at=100.25, end=1)
    assert [t.idle_ms for t in ticks(part.next_batch())] == [250]
    for step in range(1, 50):  # 49 more polls over 49 s, and no answer
        clock.now = 100.3 + step
        assert ticks(part.next_batch()) == []


def test_an_answer_showing_more_records_is_not_caught_up() -> None:
    clock = Clock(100.0)
    client = ScriptedClient(fetches=[records(0)])
    part = KafkaPartition(client, PART, 0, None, clock=clock)
    part.next_batch()
    clock.now = 101.0
    client.newest = FetchAnswer(at=100.9, end=5)  # four records exist that we have not read
    assert part.next_batch() == []
    assert part.next_awake() is not None
    # ... and once they are read, that answer vouches for the time it was given.
    client.fetches.append(records(1, 2, 3, 4))
    clock.now = 101.1
    assert batches(part.next_batch())[0].offsets == [1, 2, 3, 4]
    clock.now = 101.5
    assert ticks(part.next_batch()) == []  # the answer (100.9) predates the data (101.1)


def test_no_idle_ticks_in_bounded_mode() -> None:
    clock = Clock(100.0)
    client = ScriptedClient(newest=FetchAnswer(at=100.0, end=0))
    part = KafkaPartition(client, PART, 0, 5, clock=clock)
    for step in range(10):
        clock.now = 100.0 + step
        client.newest = FetchAnswer(at=clock.now, end=0)
        assert part.next_batch() == []


def test_the_lag_metric_is_the_answer_minus_the_position() -> None:
    client = ScriptedClient(fetches=[records(0, 1, 2)], newest=FetchAnswer(at=1.0, end=10))
    part = KafkaPartition(client, "lagging/0", 0, None, clock=Clock())
    part.next_batch()
    lag = kafka_reader.CONSUMER_LAG.labels(topic="lagging", partition="0")._value.get()
    assert lag == 7


@pytest.mark.parametrize(
    ("resume_state", "starting", "resumed", "expected"),
    [
        (None, "earliest", False, 10),
        (None, "latest", False, 50),
        (30, "latest", False, 30),  # its own state wins
        (3, "earliest", False, 10),  # deleted by retention: the first offset
        (None, "latest", True, 10),  # added since a resumed flow first ran: from the start
        (42, "latest", True, 42),
    ],
)
def test_where_a_partition_starts(
    resume_state: int | None, starting: str, resumed: bool, expected: int
) -> None:
    start = start_offset(PART, resume_state, 10, 50, starting, resumed)  # type: ignore[arg-type]
    assert start == expected


def test_a_grown_topic_is_said_at_once_and_stops_after_the_grace() -> None:
    clock = Clock(0.0)
    watch = TopicWatch("grown", known=2, every_s=5.0, grace_s=15.0, clock=clock)
    assert not watch.due()
    clock.now = 5.0
    assert watch.due()
    watch.check(2)  # as before
    clock.now = 10.0
    watch.check(3)  # noticed: said, not yet stopped
    assert kafka_reader.UNREAD_PARTITIONS.labels(topic="grown")._value.get() == 1
    clock.now = 24.9
    watch.check(3)
    clock.now = 25.0
    with pytest.raises(SourceError, match="does not read grown/2: stopping"):
        watch.check(3)


def test_the_partition_consults_the_watch_only_when_due() -> None:
    clock = Clock(0.0)
    client = ScriptedClient(partitions=4)
    watch = TopicWatch("events", known=1, every_s=5.0, grace_s=0.0, clock=clock)
    part = KafkaPartition(client, PART, 0, None, watch, clock=clock)
    part.next_batch()  # not due yet
    clock.now = 5.0
    part.next_batch()  # noticed, grace 0: stops on the next check
    clock.now = 5.1
    with pytest.raises(SourceError, match="grew from 1 to 4 partitions"):
        part.next_batch()


def test_with_a_stopper_a_grown_topic_asks_for_an_orderly_stop_once() -> None:
    clock = Clock(0.0)
    asked: list[str] = []
    watch = TopicWatch("events", 2, every_s=1.0, grace_s=3.0, clock=clock, on_failure=asked.append)
    clock.now = 1.0
    watch.check(3)
    clock.now = 4.0
    watch.check(3)  # no raise: the stopper ends the flow after this batch
    assert len(asked) == 1 and "does not read events/2" in asked[0]
    assert not watch.due()  # asked once; nothing more to check
