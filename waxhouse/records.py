"""What sources emit: batches of raw records from one source partition, and idle ticks.

A batch is one unit of work: the windowing step parses and aggregates it whole.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson


@dataclass(frozen=True, slots=True)
class InputBatch:
    """Records read in one poll of one source partition, in partition order, as columns.

    Entry `i` of `offsets`, `values` and `timestamps_ms` describes the same record: its
    position in the partition, its bytes and its record time (epoch ms). Columns, not one
    object per record, so a source fills them with three list comprehensions.
    `record_source(part, offset)` names a record in `dead_letters.source`.
    """

    part: str
    offsets: list[int]
    values: list[bytes | None]
    timestamps_ms: list[int]

    @property
    def source_prefix(self) -> str:
        """What `record_source` puts before an offset, e.g. `events/0/`."""
        return f"{self.part}/"

    def __len__(self) -> int:
        return len(self.offsets)

    def source(self, index: int) -> str:
        """The `dead_letters.source` of record `index`."""
        return record_source(self.part, self.offsets[index])


def record_source(part: str, offset: int) -> str:
    """A record's `dead_letters.source`: `events/0/42` (topic/partition/offset), `generator/7`."""
    return f"{part}/{offset}"


@dataclass(frozen=True, slots=True)
class IdleTick:
    """A caught-up partition has received nothing for `idle_ms` of wall-clock time.

    Only emitted by a live source that has read everything available, so replays and
    downtime never count as elapsed event time.
    """

    part: str
    idle_ms: int


SourceItem = InputBatch | IdleTick


@dataclass(frozen=True)
class Record:
    """One record as a test or an embedded source describes it: its value (bytes, text, or
    a dict/list sent as JSON; None is a null value), its partition, its record timestamp
    (epoch ms) and optionally its offset (by default the next one of its partition)."""

    value: bytes | str | Mapping[str, Any] | list[Any] | None
    partition: int = 0
    timestamp_ms: int = 0
    offset: int | None = None

    def encoded(self) -> bytes | None:
        """The value's bytes, as a producer would have sent them."""
        if self.value is None or isinstance(self.value, bytes):
            return self.value
        if isinstance(self.value, str):
            return self.value.encode()
        return orjson.dumps(self.value)
