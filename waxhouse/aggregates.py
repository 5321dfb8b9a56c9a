"""Aggregates: what a table computes for each key and window.

    from waxhouse import agg

    {"orders": agg.count(),
     "cancelled": agg.count(where={"status": "cancelled"}),
     "revenue": agg.sum("amount"),
     "customers": agg.count_distinct("customer"),
     "first_sku": agg.first("sku", by="order_id")}

Every built-in aggregate is exact: integers and scaled decimals only (no float sums whose
value depends on the order of addition), and a deterministic tie rule for `first`/`last`.
An aggregate is not a callable run per event: the table compiles its aggregates into one
loop (`waxhouse.engine`), which is why a table with ten of them costs about what a
hand-written loop would.

`where` keeps only some events: a mapping `{field: value}` (every field equal; compiled
into the loop) or a callable taking the event and returning a bool (called per event:
slower, but any rule). Absent optional values (`None`) are skipped by every aggregate but
`count`.

How each aggregate is stored per row, combined across source partitions (for a table
keyed apart from the Kafka key) and shown:

- `count`: the events; combined by `sum`; UInt64.
- `sum`: an integer (a scaled decimal's integer); `sum`; Int64, or Decimal(18, places).
- `min`, `max`: the value; `min`, `max`; the field's type, Nullable.
- `mean`: its sum and count; both summed; Nullable(Float64).
- `count_distinct`: the number of distinct values; `sum`, which is exact only when the
  field is the Kafka key (each value in one partition), so it is refused otherwise; UInt64.
- `first`, `last`: the value with its event time and tie fields; `argMin` / `argMax` over
  (time, ties, value); the field's type, Nullable.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

Where = Mapping[str, object] | Callable[[tuple], bool] | None

OPERATIONS = ("count", "sum", "min", "max", "mean", "count_distinct", "first", "last")


@dataclass(frozen=True)
class Aggregate:
    """One named output of a table: `operation` over `field` (none for `count`), over the
    events `where` keeps. `by`: the fields that break ties of `first`/`last` after the
    event time (then the value itself)."""

    operation: str
    field: str | None = None
    where: Where = None
    by: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.operation not in OPERATIONS:
            raise ValueError(f"unknown aggregate {self.operation!r}: one of {OPERATIONS}")
        if (self.field is None) != (self.operation == "count"):
            takes = "no field" if self.operation == "count" else "a field"
            raise ValueError(f"{self.operation}: takes {takes}")
        if self.by and self.operation not in ("first", "last"):
            raise ValueError(f"{self.operation}: `by` is for first and last only")
        if not (self.where is None or callable(self.where) or isinstance(self.where, Mapping)):
            raise TypeError("where: a mapping {field: value} or a callable(event) -> bool")

    def fields(self) -> tuple[str, ...]:
        """Every event field this aggregate reads (its own, `by`, a mapping's `where`)."""
        names = [] if self.field is None else [self.field]
        names.extend(self.by)
        if isinstance(self.where, Mapping):
            names.extend(self.where)
        return tuple(names)


def _by(by: str | tuple[str, ...] | list[str]) -> tuple[str, ...]:
    return (by,) if isinstance(by, str) else tuple(by)


def count(*, where: Where = None) -> Aggregate:
    """The number of events (that `where` keeps)."""
    return Aggregate("count", where=where)


def sum(field: str, *, where: Where = None) -> Aggregate:
    """The sum of an integer or decimal field; absent values count as nothing."""
    return Aggregate("sum", field, where)


def min(field: str, *, where: Where = None) -> Aggregate:
    """The smallest value (numbers, timestamps, text); null when no event had one."""
    return Aggregate("min", field, where)


def max(field: str, *, where: Where = None) -> Aggregate:
    """The largest value; null when no event had one."""
    return Aggregate("max", field, where)


def mean(field: str, *, where: Where = None) -> Aggregate:
    """Sum over count of the present values (exact integers until the final division)."""
    return Aggregate("mean", field, where)


def count_distinct(field: str, *, where: Where = None) -> Aggregate:
    """The exact number of distinct values (a set per row while its window is open)."""
    return Aggregate("count_distinct", field, where)


def first(
    field: str, *, by: str | tuple[str, ...] | list[str] = (), where: Where = None
) -> Aggregate:
    """The value of the earliest event: smallest event time, then smallest `by` fields,
    then smallest value."""
    return Aggregate("first", field, where, _by(by))


def last(
    field: str, *, by: str | tuple[str, ...] | list[str] = (), where: Where = None
) -> Aggregate:
    """The value of the latest event: largest event time, then largest `by` fields, then
    largest value."""
    return Aggregate("last", field, where, _by(by))
