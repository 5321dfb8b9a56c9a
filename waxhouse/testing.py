"""Run a pipeline over records in memory: its final rows and dead letters, no servers.

    from waxhouse.testing import Record, run

    result = run(orders, [Record({"order_id": "o1", ...}, partition=0), ...])
    assert result.rows["sku_sales"] == [{"window_start": ..., "sku": "A1", "orders": 2, ...}]
    assert [d.reason for d in result.dead_letters] == ["invalid_event"]

The records go through the same parser and the same compiled tables as in a flow, one
batch at a time per partition, in bounded mode (everything is flushed at the end). The
rows are what a plain `SELECT` on the table's view returns: replayed rows deduplicated by
identity with the highest version winning, rows of several source partitions combined.
Times are epoch milliseconds, decimals `decimal.Decimal`, means floats.

`replay_every=n` makes it harder: every `n` batches of a partition, the state is
snapshotted (pickled, as a flow's recovery does) and the `n` batches after the snapshot are
processed twice, the second time from the restored snapshot, as after a crash. The final
rows must not change: that is what exactly-once means here. With `segments=DIR` as well,
the snapshots are taken as a flow with recovery takes them, their sealed segments written
to files under `DIR` (`waxhouse.snapshots`), and each restore reads them back as a new
process would.
"""

from __future__ import annotations

import pickle
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from waxhouse.dedup import DEFAULT_HORIZON_MS
from waxhouse.fields import DEFAULT_MAX_FUTURE_MS
from waxhouse.joins import ReferencePartition
from waxhouse.pipeline import CompiledPipeline, Pipeline
from waxhouse.records import InputBatch, Record
from waxhouse.rows import DeadLetterRow, RowBatch
from waxhouse.snapshots import MIN_KEEP_SECONDS, SegmentFiles
from waxhouse.views import final_rows

__all__ = ["Record", "Result", "run"]


@dataclass
class Result:
    """`rows`: per table, the view's rows (dicts by column, sorted by the leading columns).
    `dead_letters`: every rejected record, each once, by source. `emitted`: per table, the
    physical rows in the order they were emitted, replays included. `notices`: per table,
    the notices sent (an episode reaching `at_least`), as the view shows their rows, in
    order, replays included (a flow sends them at least once)."""

    rows: dict[str, list[dict[str, Any]]]
    dead_letters: list[DeadLetterRow]
    emitted: dict[str, list[tuple]] = field(default_factory=dict)
    notices: dict[str, list[dict[str, Any]]] = field(default_factory=dict)


def run(
    pipeline: Pipeline | CompiledPipeline,
    records: Iterable[Record],
    *,
    topic: str = "events",
    batch_size: int = 500,
    lateness_ms: int = 0,
    dedup_ms: int = DEFAULT_HORIZON_MS,
    max_future_ms: int = DEFAULT_MAX_FUTURE_MS,
    replay_every: int | None = None,
    segments: Path | None = None,
    reference: Iterable[Record] = (),
    reference_topic: str | None = None,
) -> Result:
    """The final rows and dead letters of `records` through `pipeline` (bounded mode).

    `lateness_ms` and `dedup_ms` (the deduplication horizon) apply when the pipeline
    declares none. Partitions are read one after
    the other: a partition's results depend only on its own records. A pipeline with a
    join reads the `reference` records (topic `reference_topic`, default the join's name)
    too, its batches and each partition's interleaved by their records' timestamps (the
    time they arrived), and at the end the reference as read to its end.
    """
    if isinstance(pipeline, CompiledPipeline):
        compiled = pipeline
    else:
        compiled = pipeline.compile(lateness_ms, dedup_ms)
    join = compiled.pipeline.join
    by_partition: dict[int, list[Record]] = {}
    for record in records:
        by_partition.setdefault(record.partition, []).append(record)
    reference_batches: list[list[InputBatch]] = []
    if join is not None:
        ref_topic = reference_topic or join.name
        by_ref: dict[int, list[Record]] = {}
        for record in reference:
            by_ref.setdefault(record.partition, []).append(record)
        for partition, ref_records in sorted(by_ref.items()):
            reference_batches.append(
                list(_batches(f"{ref_topic}/{partition}", ref_records, batch_size))
            )
    emitted = RowBatch()
    for partition, part_records in sorted(by_partition.items()):
        part = f"{topic}/{partition}"
        steps = _interleaved(list(_batches(part, part_records, batch_size)), reference_batches)
        emitted.extend(_run_partition(compiled, part, steps, max_future_ms, replay_every, segments))
    dead = {row.source: row for row in emitted.dead_letters}
    rows = {
        name: final_rows(table, emitted.tables.get(name, []))
        for name, table in compiled.tables.items()
    }
    notices = {
        name: [final_rows(compiled.tables[name], [row])[0] for row in sent]
        for name, sent in emitted.notices.items()
    }
    return Result(rows, sorted(dead.values(), key=_source_order), emitted.tables, notices)


def _interleaved(
    events: list[InputBatch], references: list[list[InputBatch]]
) -> list[tuple[bool, InputBatch]]:
    """Event batches in their order, each reference partition's batches in theirs, a
    reference batch before an event batch whose first record came after its own (by
    record timestamp, as a consumer of both topics would see them)."""
    queues = [list(reversed(batches)) for batches in references]
    steps: list[tuple[bool, InputBatch]] = []

    def due(limit: float) -> None:
        while True:
            heads = [q for q in queues if q and q[-1].timestamps_ms[0] <= limit]
            if not heads:
                return
            queue = min(heads, key=lambda q: q[-1].timestamps_ms[0])
            steps.append((True, queue.pop()))

    for batch in events:
        due(batch.timestamps_ms[0])
        steps.append((False, batch))
    due(float("inf"))
    return steps


def _source_order(row: DeadLetterRow) -> tuple[str, int]:
    part, _, offset = row.source.rpartition("/")
    return part, int(offset) if offset.isdigit() else -1


def _batches(part: str, records: list[Record], size: int) -> Iterable[InputBatch]:
    next_offset = 0
    offsets, values, times = [], [], []
    for record in records:
        offset = next_offset if record.offset is None else record.offset
        next_offset = offset + 1
        offsets.append(offset)
        values.append(record.encoded())
        times.append(record.timestamp_ms)
        if len(offsets) == size:
            yield InputBatch(part, offsets, values, times)
            offsets, values, times = [], [], []
    if offsets:
        yield InputBatch(part, offsets, values, times)


class _Partition:
    """One source partition's state and, with a join, its reference partitions'."""

    def __init__(self, compiled: CompiledPipeline, part: str, reference_parts: list[str]):
        self.state = compiled.partition_state(part, reference_parts)
        join = compiled.pipeline.join
        self.references = {
            ref: ReferencePartition(ref, join, compiled.lateness_ms)
            for ref in reference_parts
            if join is not None
        }

    def restored(self, compiled: CompiledPipeline) -> _Partition:
        self.state = compiled.restore(self.state)
        join = compiled.pipeline.join
        for reference in self.references.values():
            assert join is not None
            reference.bind(join)
        return self


def _run_partition(
    compiled: CompiledPipeline,
    part: str,
    steps: list[tuple[bool, InputBatch]],
    max_future_ms: int,
    replay_every: int | None,
    segments: Path | None,
) -> RowBatch:
    out = RowBatch()
    join = compiled.pipeline.join
    reference_parts = sorted({batch.part for is_ref, batch in steps if is_ref})
    held = _Partition(compiled, part, reference_parts)
    files = SegmentFiles(segments, MIN_KEEP_SECONDS) if segments is not None else None

    def step(held: _Partition, is_reference: bool, batch: InputBatch) -> None:
        if is_reference:
            assert join is not None
            versions, dead = join.parse(batch)
            update, late = held.references[batch.part].process(versions)
            out.dead_letters.extend([*dead, *late])
            out.extend(held.state.reference(update))
            return
        events, dead = compiled.schema.parse_batch(batch, max_future_ms)
        out.dead_letters.extend(dead)
        out.extend(held.state.process(events))

    if replay_every is None:
        for is_reference, batch in steps:
            step(held, is_reference, batch)
    else:
        for start in range(0, len(steps), replay_every):
            if files is None:
                snapshot = pickle.dumps(held, protocol=pickle.HIGHEST_PROTOCOL)
            else:
                snapshot = files.dumps(held, part)
            chunk = steps[start : start + replay_every]
            for is_reference, batch in chunk:
                step(held, is_reference, batch)
            # A crash: back to the snapshot, and the same batches again.
            if files is None:
                held = pickle.loads(snapshot).restored(compiled)
            else:
                assert segments is not None
                files = SegmentFiles(segments, MIN_KEEP_SECONDS)  # a new process
                held = files.loads(snapshot).restored(compiled)
            for is_reference, batch in chunk:
                step(held, is_reference, batch)
    if held.state.join is not None:
        out.extend(held.state.reference_ended())
    out.extend(held.state.flush())
    return out
