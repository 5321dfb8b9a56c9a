"""An embedded source: a pipeline's records from a Python function, no Kafka needed.

    def orders(partition: int) -> Iterator[Record]:
        for n in range(10_000):
            yield Record({"order_id": f"o{partition}-{n}", ...}, timestamp_ms=...)

    flow = waxhouse.flow(pipeline, embedded=lambda settings: RecordsSource("orders", orders, 2))

Each partition `p` reads `records(p)` in order; record `n` of it has offset `n`, and its
dead letters name `<name>/<p>/<n>`. The function must give the same records every time
it is called (seeded randomness, not the clock): a flow resumed from recovery calls it
again and skips the records it had already read. The source is bounded: the flow ends
after the last record of every partition.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator
from itertools import islice

from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition

from waxhouse.records import InputBatch, Record, SourceItem

logger = logging.getLogger(__name__)

Records = Callable[[int], Iterable[Record]]


class _RecordsPartition(StatefulSourcePartition[tuple[str, SourceItem], int]):
    def __init__(self, part: str, records: Iterator[Record], first: int, batch_size: int) -> None:
        self._part = part
        self._records = records
        self._next = first
        self._batch_size = batch_size

    def next_batch(self) -> list[tuple[str, SourceItem]]:
        taken = list(islice(self._records, self._batch_size))
        if not taken:
            raise StopIteration
        first, self._next = self._next, self._next + len(taken)
        batch = InputBatch(
            self._part,
            list(range(first, self._next)),
            [record.encoded() for record in taken],
            [record.timestamp_ms for record in taken],
        )
        return [(self._part, batch)]

    def snapshot(self) -> int:
        return self._next


class RecordsSource(FixedPartitionedSource[tuple[str, SourceItem], int]):
    """`partitions` partitions named `<name>/<p>`, each reading `records(p)`; resumes at
    the next record (the state is its offset). A record's `partition` and `offset` fields
    are ignored: where the function yields it decides them."""

    def __init__(
        self, name: str, records: Records, partitions: int = 1, batch_size: int = 1_000
    ) -> None:
        if partitions < 1:
            raise ValueError(f"{name}: at least one partition, got {partitions}")
        self._name = name
        self._records = records
        self._partitions = partitions
        self._batch_size = batch_size

    def list_parts(self) -> list[str]:
        return [f"{self._name}/{p}" for p in range(self._partitions)]

    def build_part(
        self, step_id: str, for_part: str, resume_state: int | None
    ) -> _RecordsPartition:
        partition = int(for_part.rpartition("/")[2])
        first = resume_state or 0
        records = islice(iter(self._records(partition)), first, None)
        logger.info(
            "partition %s starts at record %d (%s)",
            for_part,
            first,
            "resumed" if resume_state is not None else "fresh start",
        )
        return _RecordsPartition(for_part, records, first, self._batch_size)
