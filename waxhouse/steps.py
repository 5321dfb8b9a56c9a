"""The clickstream flow's step functions: thin Bytewax glue around the pure logic."""

from __future__ import annotations

import pickle
from dataclasses import dataclass

from bytewax.operators import StatefulBatchLogic

from waxhouse.connectors.metrics import (
    DEAD_LETTERS,
    EVENTS_PARSED,
    LATE_EVENTS,
    LATE_OUTPUTS,
    WATERMARK,
    WATERMARK_LAG,
    WINDOW_ROWS,
)
from waxhouse.events import DEFAULT_MAX_FUTURE_MS, Event, parse_batch
from waxhouse.records import IdleTick, SourceItem
from waxhouse.rows import DeadLetterRow, RowBatch
from waxhouse.windows import PartitionWindows, WindowConfig


@dataclass(frozen=True, slots=True)
class ParsedBatch:
    part: str
    events: list[Event]
    dead_letters: list[DeadLetterRow]


WindowInput = ParsedBatch | IdleTick


@dataclass(frozen=True)
class Parse:
    """The parse step: raw batch -> events and dead letters; idle ticks pass through.

    `max_future_ms`: how far an event's time may be ahead of its record's timestamp.
    """

    max_future_ms: int = DEFAULT_MAX_FUTURE_MS

    def __call__(self, item: SourceItem) -> WindowInput:
        if isinstance(item, IdleTick):
            return item
        events, dead = parse_batch(item, self.max_future_ms)
        EVENTS_PARSED.inc(len(events))
        for row in dead:
            DEAD_LETTERS.labels(reason=row.reason).inc()
        return ParsedBatch(item.part, events, dead)


class PartitionWindowLogic(StatefulBatchLogic[WindowInput, RowBatch, bytes]):
    """One source partition's windows, sessions and watermark as Bytewax state.

    The snapshot is the pickled `PartitionWindows`, taken at the same epoch as the
    source's offset, so a resumed flow replays exactly the records after it.
    """

    def __init__(self, config: WindowConfig, state: PartitionWindows | None) -> None:
        self._config = config
        self._state = state

    @classmethod
    def builder(cls, config: WindowConfig):
        def build(resume_state: bytes | None) -> PartitionWindowLogic:
            state = None if resume_state is None else pickle.loads(resume_state)
            return cls(config, state)

        return build

    def on_batch(self, values: list[WindowInput]) -> tuple[list[RowBatch], bool]:
        out = RowBatch()
        for value in values:
            if self._state is None:
                self._state = self._config.build(value.part)
            if isinstance(value, IdleTick):
                out.extend(self._state.idle(value.idle_ms))
            else:
                out.dead_letters.extend(value.dead_letters)
                out.extend(self._state.process(value.events))
        return self._emit(out), StatefulBatchLogic.RETAIN

    def on_eof(self) -> tuple[list[RowBatch], bool]:
        if self._state is None:
            return [], StatefulBatchLogic.RETAIN
        return self._emit(self._state.flush()), StatefulBatchLogic.RETAIN

    def snapshot(self) -> bytes:
        return pickle.dumps(self._state, protocol=pickle.HIGHEST_PROTOCOL)

    def _emit(self, out: RowBatch) -> list[RowBatch]:
        if self._state is not None:
            WATERMARK.labels(partition=self._state.part).set(max(self._state.watermark, 0) / 1000)
            if self._state.watermark >= 0:  # the partition has seen an event
                WATERMARK_LAG.publish(self._state.part, self._state.watermark / 1000)
        if out.dead_letters:
            _count_late(out.dead_letters)
        WINDOW_ROWS.labels(table="page_stats").inc(len(out.page_stats))
        WINDOW_ROWS.labels(table="user_sessions").inc(len(out.sessions))
        return [out] if out else []


def _count_late(dead_letters: list[DeadLetterRow]) -> None:
    """Late dead letters, and per output the late events that missed it (one batch's
    worth; their `error` names the outputs: `missed page_stats, user_sessions`)."""
    late = [row.error for row in dead_letters if row.reason == "late"]
    if not late:
        return
    DEAD_LETTERS.labels(reason="late").inc(len(late))
    for output in LATE_OUTPUTS:
        missed = sum(1 for error in late if output in error)
        if missed:
            LATE_EVENTS.labels(output=output).inc(missed)
