"""Tables and their windows: what a pipeline declares it wants in ClickHouse.

    Table("sku_sales", key="sku", window=sliding(minutes=10, every=minutes(1)),
          aggregates={"orders": agg.count(), "revenue": agg.sum("amount")})

A table is a key (one field or several), a window and named aggregates. Each row is one
key in one window. The windows, per source partition and by event time:

- `tumbling(size)`: fixed, epoch-aligned windows `[start, start + size)`.
- `sliding(size, every)`: windows of `size` starting at every multiple of `every`; an
  event is in each one that contains it.
- `session(gap)`: a key's maximal runs of events at most `gap` apart.
- `count(n)`: a key's events in Kafka offset order, `n` at a time, numbered 0, 1, 2 ...
  from the first one the flow read; event time and lateness play no part.
- `episodes(when, at_least=n)`: a key's maximal runs of consecutive events (in event-time
  order, each taken once it is final) for which `when` holds, once a run has `n` events:
  alerts, outages, streaks. A row is written when the run ends (`closed` = 1).

Durations are `timedelta`s or seconds; `seconds()`, `minutes()`, `hours()` read well.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import timedelta

from waxhouse.aggregates import Aggregate, Where

Duration = timedelta | float | int


def seconds(n: float) -> timedelta:
    return timedelta(seconds=n)


def minutes(n: float) -> timedelta:
    return timedelta(minutes=n)


def hours(n: float) -> timedelta:
    return timedelta(hours=n)


def to_ms(duration: Duration, what: str, *, zero: bool = False) -> int:
    """Whole milliseconds of a `timedelta` or a number of seconds: at least 1, or 0 too
    with `zero`."""
    ms = (
        duration // timedelta(milliseconds=1)
        if isinstance(duration, timedelta)
        else round(duration * 1000)
    )
    if ms < 0 or (ms == 0 and not zero):
        least = "0" if zero else "one millisecond"
        raise ValueError(f"{what}: must be at least {least}, got {duration!r}")
    return ms


@dataclass(frozen=True)
class Tumbling:
    size_ms: int
    columns: tuple[str, str] = ("window_start", "window_end")


@dataclass(frozen=True)
class Sliding:
    size_ms: int
    every_ms: int
    columns: tuple[str, str] = ("window_start", "window_end")


@dataclass(frozen=True)
class Session:
    gap_ms: int
    columns: tuple[str, str] = ("session_start", "session_end")


@dataclass(frozen=True)
class CountWindow:
    size: int
    columns: tuple[str, str] = ("batch", "complete")


@dataclass(frozen=True)
class Episodes:
    when: Where
    at_least: int
    tie: tuple[str, ...]
    columns: tuple[str, str, str] = ("episode_start", "episode_end", "closed")


Window = Tumbling | Sliding | Session | CountWindow | Episodes


def tumbling(
    size: Duration, *, columns: tuple[str, str] = ("window_start", "window_end")
) -> Tumbling:
    """Epoch-aligned windows `[start, start + size)`; `columns` name their start and end."""
    return Tumbling(to_ms(size, "tumbling size"), columns)


def sliding(
    size: Duration, every: Duration, *, columns: tuple[str, str] = ("window_start", "window_end")
) -> Sliding:
    """Windows of `size` starting at every multiple of `every` (epoch-aligned)."""
    size_ms, every_ms = to_ms(size, "sliding size"), to_ms(every, "sliding every")
    if every_ms > size_ms:
        raise ValueError(f"sliding: every ({every!r}) must not exceed size ({size!r})")
    return Sliding(size_ms, every_ms, columns)


def session(
    gap: Duration, *, columns: tuple[str, str] = ("session_start", "session_end")
) -> Session:
    """A key's maximal runs of events at most `gap` apart (in event time)."""
    return Session(to_ms(gap, "session gap"), columns)


def count(n: int, *, columns: tuple[str, str] = ("batch", "complete")) -> CountWindow:
    """A key's events in offset order, `n` to a window. `columns` name the window number
    and the flag that the window is full (a bounded run writes the last, partial one with
    0; a later run that fills it replaces that row)."""
    if type(n) is not int or n < 1:
        raise ValueError(f"count window: n must be a positive integer, got {n!r}")
    return CountWindow(n, columns)


def episodes(
    when: Where,
    *,
    at_least: int = 1,
    tie: str | Sequence[str] = (),
    columns: tuple[str, str, str] = ("episode_start", "episode_end", "closed"),
) -> Episodes:
    """A key's maximal runs of consecutive events for which `when` holds (a mapping
    `{field: value}` or a callable), that reach `at_least` events.

    Events are taken in event-time order, `tie` fields breaking ties, each once it is final:
    once the partition's watermark is more than the lateness past it, so no event still to
    come can sort before it. An event for which `when` does not hold ends the key's run.
    Events the table's `where` leaves out take no part (they neither extend nor end a run).
    `columns` name the run's first and last event times and the flag written 1 when the
    run has ended (a bounded run writes a run still going with 0; the run's later row
    replaces it). Final events only: an event newer than the lateness at the end of a
    bounded run waits for the next run.
    """
    if type(at_least) is not int or at_least < 1:
        raise ValueError(f"episodes: at_least must be a positive integer, got {at_least!r}")
    if when is None:
        raise ValueError("episodes: `when` says which events a run is made of")
    ties = (tie,) if isinstance(tie, str) else tuple(tie)
    return Episodes(when, at_least, ties, columns)


@dataclass(frozen=True)
class Live:
    """A table also kept in Redis (`live()`; `waxhouse.livetables` says how)."""

    top_by: str | None
    top: int
    ttl_ms: int
    provisional: bool


def live(
    *,
    top_by: str | None = None,
    top: int = 10,
    ttl: Duration = timedelta(hours=24),
    provisional: bool = False,
) -> Live:
    """Keep the table in Redis too, where applications read it live (`REDIS_URL`,
    `waxhouse serve`): each key's latest final row and, with `top_by` (a count or sum
    aggregate of a tumbling or sliding table), each window's `top` keys by it, announced
    when the window has closed in every source partition. `ttl`: how long a key's rows
    stay after their last write. `provisional`: open windows' rows so far too, marked
    provisional, at most every `REDIS_PROVISIONAL_SECONDS` (tumbling and sliding tables);
    the final row always replaces them.
    """
    if type(top) is not int or top < 1:
        raise ValueError(f"live: top must be a positive integer, got {top!r}")
    return Live(top_by, top, to_ms(ttl, "live ttl"), provisional)


@dataclass(frozen=True)
class Table:
    """A ClickHouse table of windowed aggregates: one row per key and window.

    `name` is what users query (a view); rows are stored in `<name>_data`. `where` keeps
    only some events for this table (a mapping `{field: value}` or a callable). `live`:
    keep it in Redis too (`live()`).
    """

    name: str
    key: str | tuple[str, ...]
    window: Window
    aggregates: Mapping[str, Aggregate]
    where: Where = None
    live: Live | None = None
    key_fields: tuple[str, ...] = field(init=False)

    def __post_init__(self) -> None:
        if not self.name.isidentifier():
            raise ValueError(f"table name {self.name!r}: letters, digits and _ only")
        keys = (self.key,) if isinstance(self.key, str) else tuple(self.key)
        if not keys:
            raise ValueError(f"{self.name}: a table needs a key")
        object.__setattr__(self, "key_fields", keys)
        if not self.aggregates:
            raise ValueError(f"{self.name}: a table needs at least one aggregate")
        taken = set(keys) | set(self.window.columns) | {"part", "version", "written_at"}
        for name, aggregate in self.aggregates.items():
            if not isinstance(aggregate, Aggregate):
                raise TypeError(f"{self.name}.{name}: not an aggregate (use waxhouse.agg)")
            if not name.isidentifier() or name in taken:
                raise ValueError(f"{self.name}.{name}: not a free column name")

    def reads(self) -> Sequence[str]:
        """Every event field the table reads."""
        names = list(self.key_fields)
        for aggregate in self.aggregates.values():
            names.extend(aggregate.fields())
        if isinstance(self.where, Mapping):
            names.extend(self.where)
        if isinstance(self.window, Episodes):
            names.extend(self.window.tie)
            if isinstance(self.window.when, Mapping):
                names.extend(self.window.when)
        return names
