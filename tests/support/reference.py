"""A brute-force reference for a toolkit pipeline: the rows its views should show and the
dead letters its records should get, computed from the rules in plain Python.

It shares no code with `waxhouse.engine`, `waxhouse.testing` or the schema's parser: it
reads only the declarations (the schema's field helpers, the tables' keys, windows and
aggregates) and decodes records with stdlib `json`. It is slow on purpose: every event is looked at
against every window it could be in, and a key's sessions are recomputed from its events
each time one arrives. The rules, per source partition, in arrival (offset) order:

- An event arrives at the watermark `w`: the largest event time of the valid events
  before it in its partition (none: minus infinity). Invalid and `future` records do not
  move it.
- Tumbling `S`: the event is in the window starting at `ts - ts % S`. Sliding `S` every
  `E`: in each window `[s, s + S)` with `s` a multiple of `E` and `s <= ts < s + S`. A
  window is closed for the event when `s + S + L < w`: it is not counted there.
- Session gap `G`, per key: a session is a maximal run of the key's counted events whose
  consecutive times are at most `G` apart; it closes once `end + G + L < w`. An event is
  late for the table when the session it would join or start is closed (see
  `_SessionTable.offer`).
- Count `n`, per key, in arrival order, late or not: batch `b` holds events `b*n ..
  (b+1)*n - 1`; a full one is `complete = 1`, the last partial one `complete = 0`.
- A valid event that missed a window (or its session) in any table gets one `late` dead
  letter: `missed <tables>` in declaration order.

The rows of a table keyed apart from the Kafka key are those of all partitions together:
aggregating every counted event of a key and window at once is what combining the
partitions' rows must amount to. (Records must be keyed correctly, all of a Kafka key's
in one partition, as the tests' are.)
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from waxhouse.aggregates import Aggregate
from waxhouse.fields import (
    ChoiceField,
    DecimalField,
    Field,
    IntegerField,
    Schema,
    TextField,
    TimestampField,
)
from waxhouse.pipeline import Pipeline
from waxhouse.records import Record
from waxhouse.tables import CountWindow, Session, Sliding, Table, Tumbling

MAX_TS_MS = 253402300799999
DEFAULT_MAX_FUTURE_MS = 3_600_000
Event = dict[str, Any]  # field name -> kept value
DeadLetter = tuple[str, str, str | None, bytes, int]


@dataclass
class Expected:
    """`rows` per table as the views show them, sorted by their leading columns;
    `dead_letters` by source as (source, reason, error, payload, received_at_ms), the
    error only for `late` ones (None for the others: the parser words those)."""

    rows: dict[str, list[dict[str, Any]]]
    dead_letters: list[DeadLetter]


def expected(
    pipeline: Pipeline,
    records: Iterable[Record],
    *,
    lateness_ms: int,
    topic: str = "events",
    max_future_ms: int = DEFAULT_MAX_FUTURE_MS,
) -> Expected:
    """What `waxhouse.testing.run(pipeline, records, lateness_ms=...)` must return."""
    schema = pipeline.schema
    lateness = pipeline.lateness_ms if pipeline.lateness_ms is not None else lateness_ms
    by_partition: dict[int, list[Record]] = defaultdict(list)
    for record in records:
        by_partition[record.partition].append(record)
    counted: dict[str, list[tuple[tuple, list[Event]]]] = {t.name: [] for t in pipeline.tables}
    dead: list[DeadLetter] = []
    for partition in sorted(by_partition):
        part = f"{topic}/{partition}"
        models = [_model(table, schema.event_time, lateness) for table in pipeline.tables]
        watermark = -math.inf
        next_offset = 0
        for record in by_partition[partition]:
            offset = next_offset if record.offset is None else record.offset
            next_offset = offset + 1
            source = f"{part}/{offset}"
            payload = record.encoded() or b""
            event = parse(schema, payload, record.timestamp_ms, max_future_ms)
            if isinstance(event, str):
                dead.append((source, event, None, payload, record.timestamp_ms))
                continue
            missed = [
                model.table.name
                for model in models
                if keeps(model.table.where, event) and not model.offer(event, watermark)
            ]
            if missed:
                error = "missed " + ", ".join(missed)
                dead.append((source, "late", error, payload, record.timestamp_ms))
            watermark = max(watermark, event[schema.event_time])
        for model in models:
            counted[model.table.name].extend(model.groups())
    rows = {table.name: _rows(table, schema, counted[table.name]) for table in pipeline.tables}
    dead.sort(key=lambda d: (d[0].rpartition("/")[0], int(d[0].rpartition("/")[2])))
    return Expected(rows, dead)


# ---------------------------------------------------------------------------------------
# Parsing: the field rules, for the shapes the tests generate


def parse(schema: Schema, raw: bytes, received_at_ms: int, max_future_ms: int) -> Event | str:
    """The kept values of a record, or the reason of its dead letter."""
    try:
        obj = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return "invalid_json"
    if not isinstance(obj, dict):
        return "invalid_json"
    event: Event = {}
    for name, kind in schema.fields.items():
        value = obj.get(name)
        if value is None:
            if not kind.optional:
                return "invalid_event"
            event[name] = getattr(kind, "default", None)
            continue
        kept = _read(kind, value)
        if kept is None:
            return "invalid_event"
        event[name] = kept
    for group in schema.require_any:
        if all(obj.get(name) is None for name in group):
            return "invalid_event"
    ts = event[schema.event_time]
    if received_at_ms >= 0 and ts - received_at_ms > max_future_ms:
        return "future"
    return event


def _read(kind: Field, value: object) -> Any:
    """The kept value, or None when a rule is broken (integer timestamps only)."""
    number = type(value) is int or type(value) is float
    if isinstance(kind, TextField):
        ok = type(value) is str and kind.min_length <= len(value) <= kind.max_length
        return value if ok else None
    if isinstance(kind, ChoiceField):
        return value if type(value) is str and value in kind.choices else None
    if isinstance(kind, TimestampField):
        return value if type(value) is int and 0 <= value <= MAX_TS_MS else None
    if isinstance(kind, IntegerField):
        return value if type(value) is int and kind.min <= value <= kind.max else None
    if isinstance(kind, DecimalField):
        if not number or not kind.min <= value <= kind.max:  # type: ignore[operator]
            return None
        return round(value * 10**kind.places)  # type: ignore[operator]
    raise TypeError(f"the reference does not know {kind!r}")


def keeps(where: Any, event: Event) -> bool:
    """Whether a `where` (None, a mapping or a callable) keeps the event."""
    if where is None:
        return True
    if isinstance(where, Mapping):
        return all(event[name] == value for name, value in where.items())
    return bool(where(_Attributes(event)))


class _Attributes:
    """An event read by attribute (as a callable `where` reads the event tuple)."""

    def __init__(self, event: Event) -> None:
        self.__dict__.update(event)


# ---------------------------------------------------------------------------------------
# Windows: each model takes a partition's events (those its table's `where` keeps) and
# says whether each was counted everywhere; `groups()` gives (leading values, events).


def _model(table: Table, time: str, lateness: int) -> _TableModel:
    window = table.window
    if isinstance(window, Tumbling):
        return _WindowTable(table, time, lateness, window.size_ms, window.size_ms)
    if isinstance(window, Sliding):
        return _WindowTable(table, time, lateness, window.size_ms, window.every_ms)
    if isinstance(window, Session):
        return _SessionTable(table, time, lateness, window.gap_ms)
    if isinstance(window, CountWindow):
        return _CountTable(table, time, window.size)
    raise TypeError(window)


def _key(table: Table, event: Event) -> tuple:
    return tuple(event[name] for name in table.key_fields)


class _TableModel:
    def __init__(self, table: Table, time: str) -> None:
        self.table = table
        self.time = time  # the event time field

    def offer(self, event: Event, watermark: float) -> bool:
        """Count the event where it is on time; False when it missed something."""
        raise NotImplementedError

    def groups(self) -> list[tuple[tuple, list[Event]]]:
        raise NotImplementedError


class _WindowTable(_TableModel):
    """Tumbling (`every == size`) and sliding windows: every multiple of `every` near the
    event's time, checked for holding it."""

    def __init__(self, table: Table, time: str, lateness: int, size: int, every: int) -> None:
        super().__init__(table, time)
        self.lateness, self.size, self.every = lateness, size, every
        self.windows: dict[tuple[int, tuple], list[Event]] = defaultdict(list)

    def offer(self, event: Event, watermark: float) -> bool:
        ts = event[self.time]
        on_time = True
        low = ts - self.size
        for start in range(low - low % self.every, ts + 1, self.every):
            if not start <= ts < start + self.size:
                continue
            if start + self.size + self.lateness < watermark:
                on_time = False
            else:
                self.windows[(start, _key(self.table, event))].append(event)
        return on_time

    def groups(self) -> list[tuple[tuple, list[Event]]]:
        return [
            ((start, start + self.size, *key), events)
            for (start, key), events in self.windows.items()
        ]


class _SessionTable(_TableModel):
    """Per key, the counted events still open and the sessions already closed."""

    def __init__(self, table: Table, time: str, lateness: int, gap: int) -> None:
        super().__init__(table, time)
        self.lateness, self.gap = lateness, gap
        self.open: dict[tuple, list[Event]] = defaultdict(list)
        self.closed: dict[tuple, list[list[Event]]] = defaultdict(list)

    def runs(self, events: list[Event]) -> list[list[Event]]:
        """Maximal runs of events at most `gap` apart, by event time."""
        out: list[list[Event]] = []
        for event in sorted(events, key=lambda e: e[self.time]):
            if out and event[self.time] - out[-1][-1][self.time] <= self.gap:
                out[-1].append(event)
            else:
                out.append([event])
        return out

    def _span(self, run: list[Event]) -> tuple[int, int]:
        times = [e[self.time] for e in run]
        return min(times), max(times)

    def offer(self, event: Event, watermark: float) -> bool:
        key = _key(self.table, event)
        ts = event[self.time]
        gap, slack = self.gap, self.gap + self.lateness
        # Close what the watermark has passed, as it was passed (only this key can change).
        still_open = []
        for run in self.runs(self.open[key]):
            if self._span(run)[1] + slack < watermark:
                self.closed[key].append(run)
            else:
                still_open.extend(run)
        self.open[key] = still_open
        spans = [self._span(run) for run in self.runs(still_open)]
        touching = [(s, e) for s, e in spans if s - gap <= ts <= e + gap]
        if not touching:
            if ts + slack < watermark:
                return False
        elif any(e + slack < watermark for _, e in touching):
            return False
        start = min([ts, *(s for s, _ in touching)])
        closed_ends = [self._span(run)[1] for run in self.closed[key]]
        if closed_ends and start - gap <= max(closed_ends):
            return False  # it would bridge into a session already emitted
        self.open[key].append(event)
        return True

    def groups(self) -> list[tuple[tuple, list[Event]]]:
        out = []
        for key in set(self.open) | set(self.closed):
            for run in [*self.closed[key], *self.runs(self.open[key])]:
                out.append(((*key, *self._span(run)), run))
        return out


class _CountTable(_TableModel):
    def __init__(self, table: Table, time: str, size: int) -> None:
        super().__init__(table, time)
        self.size = size
        self.seen: dict[tuple, list[Event]] = defaultdict(list)

    def offer(self, event: Event, watermark: float) -> bool:
        self.seen[_key(self.table, event)].append(event)
        return True

    def groups(self) -> list[tuple[tuple, list[Event]]]:
        out = []
        for key, events in self.seen.items():
            for batch in range(0, len(events), self.size):
                chunk = events[batch : batch + self.size]
                # The complete flag rides along after the batch number; _rows moves it.
                out.append(((*key, batch // self.size, int(len(chunk) == self.size)), chunk))
        return out


# ---------------------------------------------------------------------------------------
# Rows


def _leading(table: Table) -> tuple[str, ...]:
    window = table.window
    if isinstance(window, (Tumbling, Sliding)):
        return (*window.columns, *table.key_fields)
    if isinstance(window, Session):
        return (*table.key_fields, *window.columns)
    return (*table.key_fields, window.columns[0])


def _rows(
    table: Table, schema: Schema, groups: Sequence[tuple[tuple, list[Event]]]
) -> list[dict[str, Any]]:
    leading = _leading(table)
    merged: dict[tuple, list[Event]] = defaultdict(list)
    complete: dict[tuple, int] = {}
    for lead, events in groups:
        if isinstance(table.window, CountWindow):
            complete[lead[:-1]] = lead[-1]
            lead = lead[:-1]
        merged[lead].extend(events)  # the partitions of a combined table, together
    out = []
    for lead in sorted(merged):
        row = dict(zip(leading, lead, strict=True))
        for name, aggregate in table.aggregates.items():
            row[name] = aggregate_value(schema, aggregate, merged[lead])
        if isinstance(table.window, CountWindow):
            row[table.window.columns[1]] = complete[lead]
        out.append(row)
    return out


def aggregate_value(schema: Schema, aggregate: Aggregate, events: list[Event]) -> Any:
    """One aggregate over a row's events, as the view shows it."""
    kept = [e for e in events if keeps(aggregate.where, e)]
    operation = aggregate.operation
    if operation == "count":
        return len(kept)
    assert aggregate.field is not None
    name = aggregate.field
    places = getattr(schema.kind(name), "places", 0)
    present = [e for e in kept if e[name] is not None]
    values = [e[name] for e in present]
    if operation == "count_distinct":
        return len(set(values))
    if operation == "sum":
        return _shown(sum(values), places)
    if operation == "mean":
        if not values:
            return None
        total, n = sum(values), len(values)
        return total / n / 10**places if places else total / n
    if not values:
        return None
    if operation == "min":
        return _shown(min(values), places)
    if operation == "max":
        return _shown(max(values), places)
    time = schema.event_time

    def order(e: Event) -> tuple:
        return (e[time], *(e[tie] for tie in aggregate.by), e[name])

    pick = min if operation == "first" else max
    return _shown(pick(present, key=order)[name], places)


def _shown(value: int, places: int) -> Any:
    return Decimal(value).scaleb(-places) if places else value
