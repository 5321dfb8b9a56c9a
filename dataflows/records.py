"""What sources emit: batches of raw records from one source partition, and idle ticks.

A batch is one unit of work: the windowing step parses and aggregates it whole.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple


class SourceRecord(NamedTuple):
    """One raw record: its position in the partition, its bytes and its record time."""

    offset: int
    value: bytes | None
    timestamp_ms: int


@dataclass(frozen=True, slots=True)
class InputBatch:
    """Records read in one poll of one source partition, in partition order.

    `source_prefix` + offset names a record in `dead_letters.source`, e.g. `events/0/` + 42.
    """

    part: str
    source_prefix: str
    records: list[SourceRecord]


@dataclass(frozen=True, slots=True)
class IdleTick:
    """A caught-up partition has received nothing for `idle_ms` of wall-clock time.

    Only emitted by a live source that has read everything available, so replays and
    downtime never count as elapsed event time.
    """

    part: str
    idle_ms: int


SourceItem = InputBatch | IdleTick
