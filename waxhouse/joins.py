"""Temporal joins: each event takes the reference version valid at its event time.

    devices = Schema(
        {"device_id": fields.text(128), "site": fields.text(128),
         "temp_max": fields.decimal(2, min=-100, max=200, optional=True),
         "valid_from": fields.timestamp()},
        event_time="valid_from", name="Device",
    )
    registry = TemporalJoin("devices", devices, on="device_id", take={"site": "", "temp_max": None})

A reference topic (keyed like the events) holds versions of each key's data, each valid
from its `valid_from` on. An event at `ts` takes the version of its key with the largest
`valid_from` <= `ts`; of versions with equal `valid_from`, the later record in the
reference partition. With none, it takes the defaults given in `take`.

The result must not depend on which topic happened to be read first, so an event waits
until no version that could apply to it can still come: until the reference watermark has
passed its `ts`. A reference partition's watermark is the largest `valid_from` read in it
minus the lateness (with the events' idle rule); the reference watermark is the smallest
over its partitions, and unbounded once a bounded run has read the reference to its end.
A version more than the lateness behind the largest `valid_from` read before it in its
partition is late: a dead letter that changes nothing. So every version that is not late
has arrived before the events it applies to are released. Events are released in the
order they arrived (a waiting event holds back the ones after it), so the tables see each
source partition in offset order, as without a join.

Two state machines, both plain data for the snapshots:
- `ReferencePartition`, one per reference partition: refuses late versions and keeps its
  watermark;
- `JoinState`, one per event source partition: every version that was not late (each
  reference partition's updates go to every event partition), the watermark of each
  reference partition, and the waiting events.
"""

from __future__ import annotations

import bisect
import dataclasses
from collections import deque, namedtuple
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cached_property
from operator import itemgetter
from typing import Any, NamedTuple

from waxhouse.errors import WaxhouseError
from waxhouse.fields import RECORD_FIELDS, Field, Schema
from waxhouse.records import InputBatch, record_source
from waxhouse.rows import DeadLetterRow

__all__ = ["Enriched", "JoinState", "ReferencePartition", "ReferenceUpdate", "TemporalJoin"]

NO_WATERMARK = -(2**62)
UNBOUNDED = 2**62
EMPTY = UNBOUNDED - 1
"""The watermark of a reference partition that is caught up and has never had a version:
it holds no event back until its first version comes."""
# Event tuples end with the record's offset, payload and timestamp.
_OFFSET, _PAYLOAD, _RECEIVED_AT = -3, -2, -1
# A key's versions: (valid_from, offset, values), sorted by the first two.
_VALID_FROM, _VALID_FROM_AND_OFFSET = itemgetter(0), itemgetter(0, 1)


class JoinError(WaxhouseError, ValueError):
    """A temporal join that cannot be built, saying why."""


@dataclass(frozen=True)
class TemporalJoin:
    """`name`: the reference (names its metrics and dead letters). `schema`: its records,
    whose `event_time` is the `valid_from`. `on`: the event field matched with the
    reference's `key` (default: the same name). `take`: the reference fields each event
    gains, each with its value when no version applies. `topic`: the Kafka topic it is
    read from (default: `name`), from its beginning, whatever `KAFKA_STARTING_OFFSET`."""

    name: str
    schema: Schema
    on: str
    take: Mapping[str, Any]
    key: str | None = None
    topic: str | None = None

    def __post_init__(self) -> None:
        if not self.name.isidentifier():
            raise JoinError(f"join {self.name!r}: letters, digits and _ only")
        if not self.take:
            raise JoinError(f"join {self.name}: take at least one field")
        for name in (self.key_field, *self.take):
            self.schema.index(name)  # raises naming the field when the schema lacks it
        if self.schema.event_time in self.take:
            raise JoinError(f"join {self.name}: its valid_from field is not taken")

    @property
    def key_field(self) -> str:
        return self.key if self.key is not None else self.on

    @property
    def topic_name(self) -> str:
        return self.topic or self.name

    @property
    def fields(self) -> tuple[str, ...]:
        return tuple(self.take)

    def defaults(self) -> tuple[Any, ...]:
        return tuple(self.take.values())

    @cached_property
    def _indexes(self) -> tuple[int, int, tuple[int, ...]]:
        schema = self.schema
        taken = tuple(schema.index(name) for name in self.take)
        return schema.index(self.key_field), schema.time_index, taken

    def version(self, record: tuple) -> tuple[Any, int, int, tuple]:
        """A parsed reference record as (key, valid_from, offset, taken values)."""
        key, time, taken = self._indexes
        return (record[key], record[time], record[_OFFSET], tuple(record[i] for i in taken))

    def parse(self, batch: InputBatch) -> tuple[list[tuple], list[DeadLetterRow]]:
        """A batch of reference records: its versions and its dead letters. Tombstones
        are skipped, and a version is never `future` (it may be valid from any time on)."""
        return self.schema.parse_batch(without_tombstones(batch), UNBOUNDED)


class Enriched:
    """What tables read when a pipeline joins: the event fields, then the joined ones.

    `event_type` is the enriched events' named tuple, `<Event>With<Join>`, with its fields
    named (for `where` callables). It is kept in this module under a name of its pipeline
    (`owner`), so that events pickle in the snapshots with nothing for users to bind. A
    joined field whose default is None is nullable, whatever its declaration.
    """

    def __init__(self, schema: Schema, join: TemporalJoin, owner: str) -> None:
        self.schema = schema
        self.join = join
        clashes = sorted(set(join.take) & set(schema.names))
        if clashes:
            raise JoinError(
                f"join {join.name}: the events already have {', '.join(map(repr, clashes))}"
            )
        self.names: tuple[str, ...] = (*schema.names, *join.fields)
        self.time_index = schema.time_index
        self.event_time = schema.event_time
        name = f"{schema.event_type.__name__}With{join.name.title().replace('_', '')}"
        self.event_type: type[tuple[Any, ...]] = namedtuple(  # type: ignore[misc]
            name, (*self.names, *RECORD_FIELDS), module=__name__
        )
        bound = f"_{owner}_{name}"
        self.event_type.__qualname__ = bound
        globals()[bound] = self.event_type

    def index(self, name: str) -> int:
        if name in self.join.take:
            return len(self.schema.names) + self.join.fields.index(name)
        if name in RECORD_FIELDS:
            return len(self.names) + RECORD_FIELDS.index(name)
        return self.schema.index(name)

    def kind(self, name: str) -> Field:
        if name not in self.join.take:
            return self.schema.kind(name)
        field = self.join.schema.kind(name)
        if self.join.take[name] is None and not field.optional:
            return dataclasses.replace(field, optional=True)
        return field


def without_tombstones(batch: InputBatch) -> InputBatch:
    """A reference batch without its null values: on a compacted topic a null value
    (a tombstone) deletes a key's older records; it is no version and no dead letter."""
    if None not in batch.values:
        return batch
    kept = [i for i, value in enumerate(batch.values) if value is not None]
    return InputBatch(
        batch.part,
        [batch.offsets[i] for i in kept],
        [batch.values[i] for i in kept],
        [batch.timestamps_ms[i] for i in kept],
    )


class ReferenceUpdate(NamedTuple):
    """What one reference partition tells every event partition: its versions that were
    not late, in partition order, and its watermark after them."""

    part: str
    versions: list[tuple[Any, int, int, tuple]]
    watermark: int


class ReferencePartition:
    """One reference partition: the largest `valid_from` read, and late versions refused."""

    def __init__(self, part: str, join: TemporalJoin, lateness_ms: int) -> None:
        self.part = part
        self.lateness_ms = lateness_ms
        self.newest: int | None = None
        self.watermark = NO_WATERMARK
        self._join = join

    def bind(self, join: TemporalJoin) -> None:
        self._join = join

    def __getstate__(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k != "_join"}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)

    def process(self, records: list[tuple]) -> tuple[ReferenceUpdate, list[DeadLetterRow]]:
        """Parsed reference records, in partition order: the update and the late ones."""
        versions, late = [], []
        time_index = self._join.schema.time_index
        for record in records:
            valid_from = record[time_index]
            if self.newest is not None and valid_from < self.newest - self.lateness_ms:
                late.append(self._late(record))
                continue
            versions.append(self._join.version(record))
            if self.newest is None or valid_from > self.newest:
                self.newest = valid_from
        if self.newest is not None:
            self.watermark = max(self.watermark, self.newest - self.lateness_ms)
        return ReferenceUpdate(self.part, versions, self.watermark), late

    def idle(self, idle_ms: int) -> ReferenceUpdate:
        """Caught up and quiet for `idle_ms`: time passes, as for the events. A partition
        that never had a version holds no event back while it is caught up."""
        if self.newest is None:
            return ReferenceUpdate(self.part, [], EMPTY)
        self.watermark = max(self.watermark, self.newest + idle_ms)
        return ReferenceUpdate(self.part, [], self.watermark)

    def end(self) -> ReferenceUpdate:
        """Read to its end in a bounded run: it holds no event back any more, in this run
        (event partitions do not keep that in their snapshots)."""
        return ReferenceUpdate(self.part, [], UNBOUNDED)

    def _late(self, record: tuple) -> DeadLetterRow:
        return DeadLetterRow(
            source=record_source(self.part, record[_OFFSET]),
            reason="late",
            error=f"{self._join.name}: valid_from more than the lateness behind "
            f"the partition's newest ({self.newest})",
            payload=record[_PAYLOAD],
            received_at_ms=record[_RECEIVED_AT],
        )


class JoinState:
    """One event partition's side of the join: versions by key, each reference
    partition's watermark, and the events waiting for it.

    `reference_parts`: every partition of the reference; until each has told its
    watermark, every event waits. `time_index`, `key_index`: where the event tuples hold
    their time and the joined key.
    """

    def __init__(
        self,
        join: TemporalJoin,
        reference_parts: list[str],
        time_index: int,
        key_index: int,
        event_type: type[tuple[Any, ...]] = tuple,
    ) -> None:
        self.name = join.name
        self.event_type = event_type
        self.defaults = join.defaults()
        self.time_index = time_index
        self.key_index = key_index
        self.versions: dict[Any, list[tuple[int, int, tuple]]] = {}
        self.marks: dict[str, int] = dict.fromkeys(reference_parts, NO_WATERMARK)
        self.waiting: deque[tuple] = deque()
        # Reference partitions this run read to their end (a bounded run): not in
        # snapshots, as the next run may find more versions there.
        self.ended_parts: set[str] = set()

    def __getstate__(self) -> dict[str, Any]:
        """The enriched event type is the pipeline's, attached again on restore (`bind`);
        what this run read to its end is this run's."""
        skip = ("event_type", "ended_parts")
        return {k: v for k, v in self.__dict__.items() if k not in skip}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self.event_type = tuple
        self.ended_parts = set()

    def bind(self, event_type: type[tuple[Any, ...]]) -> None:
        self.event_type = event_type

    def __len__(self) -> int:
        return len(self.waiting)

    @property
    def watermark(self) -> int:
        """The reference watermark: an event at `ts` < this has every version it needs."""
        ended = self.ended_parts
        return min((m for part, m in self.marks.items() if part not in ended), default=UNBOUNDED)

    def update(self, update: ReferenceUpdate) -> list[tuple]:
        """Take a reference partition's versions and watermark; the events released."""
        for key, valid_from, offset, values in update.versions:
            history = self.versions.get(key)
            entry = (valid_from, offset, values)
            if history is None:
                self.versions[key] = [entry]
            elif entry[:2] > history[-1][:2]:
                history.append(entry)
            else:
                bisect.insort(history, entry, key=_VALID_FROM_AND_OFFSET)
        held = self.marks.get(update.part, NO_WATERMARK)
        if update.watermark == UNBOUNDED:
            self.ended_parts.add(update.part)  # read to its end: `ReferencePartition.end`
        elif held == EMPTY or update.watermark == EMPTY:
            self.marks[update.part] = update.watermark  # its first version, or still none
        else:
            self.marks[update.part] = max(held, update.watermark)
        return self._release()

    def add(self, events: list[tuple]) -> list[tuple]:
        """Events in partition order; those released (enriched), in the same order."""
        if not self.waiting:
            limit = self.watermark
            time = self.time_index
            ready = 0
            for event in events:
                if event[time] >= limit:
                    break
                ready += 1
            if ready == len(events):
                return [self._enrich(event) for event in events]
            out = [self._enrich(event) for event in events[:ready]]
            self.waiting.extend(events[ready:])
            return out
        self.waiting.extend(events)
        return self._release()

    def end(self) -> list[tuple]:
        """The reference was read to its end (a bounded run): every waiting event."""
        self.ended_parts.update(self.marks)
        return self._release()

    def _release(self) -> list[tuple]:
        waiting, limit, time = self.waiting, self.watermark, self.time_index
        out = []
        while waiting and waiting[0][time] < limit:
            out.append(self._enrich(waiting.popleft()))
        return out

    def _enrich(self, event: tuple) -> tuple:
        values = self.defaults
        history = self.versions.get(event[self.key_index])
        if history is not None:
            ts = event[self.time_index]
            i = bisect.bisect_right(history, ts, key=_VALID_FROM)
            if i:
                values = history[i - 1][2]
        return tuple.__new__(self.event_type, (*event[:_OFFSET], *values, *event[_OFFSET:]))
