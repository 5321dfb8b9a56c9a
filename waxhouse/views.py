"""What a table's view shows: physical rows made into the rows a plain `SELECT` returns.

`final_rows` is the view's rule in Python (the highest version per row identity, retracted
rows dropped, a combined table's source partitions combined), for `waxhouse.testing` and
anyone checking a store. `notice` is one row as a notice message: a JSON object by
column, times in RFC 3339, decimals as numbers.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import orjson

from waxhouse.engine import CompiledTable
from waxhouse.fields import format_rfc3339

__all__ = ["final_rows", "notice", "time_columns"]


def final_rows(table: CompiledTable, physical: list[tuple]) -> list[dict[str, Any]]:
    """What `SELECT * FROM <table>` returns once `physical` rows are stored: per identity
    the highest version unless that one deletes the row, then (for a table keyed apart
    from the Kafka key) the source partitions combined."""
    columns = table.columns
    identity = [columns.index(name) for name in table.order_by]
    version = columns.index("version")
    latest: dict[tuple, tuple] = {}
    for values in physical:
        key = tuple(values[i] for i in identity)
        held = latest.get(key)
        if held is None or values[version] > held[version]:
            latest[key] = values
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for values in latest.values():
        row = dict(zip(columns, values, strict=True))
        if row.get("deleted"):
            continue  # retracted: FINAL drops it
        groups.setdefault(tuple(row[name] for name in table.leading), []).append(row)
    out = []
    for lead, rows in sorted(groups.items(), key=lambda item: _sortable(item[0])):
        shown = dict(zip(table.leading, lead, strict=True))
        for name, aggregate in table.table.aggregates.items():
            shown[name] = _combine(table, name, aggregate.operation, rows)
        for flag in table.trailing:
            shown[flag] = rows[0][flag]
        out.append(shown)
    return out


def _sortable(values: tuple) -> tuple:
    return tuple((value is None, value) for value in values)


def _combine(table: CompiledTable, name: str, operation: str, rows: list[dict[str, Any]]) -> Any:
    stored = table.stored[name]
    places = _places(table, name)
    if operation in ("count", "count_distinct"):
        return sum(row[name] for row in rows)
    if operation == "sum":
        return _scaled(sum(row[stored[0]] for row in rows), places)
    if operation == "mean":
        total = sum(row[stored[0]] for row in rows)
        n = sum(row[stored[1]] for row in rows)
        if n == 0:
            return None
        return total / n / 10**places if places else total / n
    values = [row for row in rows if row[stored[0]] is not None]
    if not values:
        return None
    if operation in ("min", "max"):
        pick = min if operation == "min" else max
        return _scaled(pick(row[stored[0]] for row in values), places)
    if len(values) == 1 or len(stored) == 1:
        return _scaled(values[0][stored[0]], places)
    pick = min if operation == "first" else max
    order = (*stored[1:], stored[0])
    best = pick(values, key=lambda row: tuple(row[column] for column in order))
    return _scaled(best[stored[0]], places)


def _places(table: CompiledTable, name: str) -> int:
    aggregate = table.table.aggregates[name]
    if aggregate.field is None or aggregate.operation == "count_distinct":
        return 0
    return getattr(table.kind(aggregate.field), "places", 0)


def _scaled(value: Any, places: int) -> Any:
    if value is None or not places:
        return value
    return Decimal(value).scaleb(-places)


def time_columns(table: CompiledTable) -> frozenset[str]:
    """The view's columns that hold times (epoch milliseconds in `final_rows`)."""
    types = dict(zip(table.columns, table.types, strict=True))
    names = [*table.leading, *table.trailing]
    out = {name for name in names if "DateTime64" in types.get(name, "")}
    for name, stored in table.stored.items():
        if "DateTime64" in types.get(stored[0], ""):
            out.add(name)
    return frozenset(out)


def notice(table: CompiledTable, row: tuple, times: frozenset[str]) -> bytes:
    """The JSON of one physical row of `table` as its view shows it, with the table's
    name: `{"table": "alerts", "device_id": "d1", "alert_start": "2026-...Z", ...}`.
    `times`: `time_columns(table)`."""
    (shown,) = final_rows(table, [row])
    message: dict[str, Any] = {"table": table.name}
    for name, value in shown.items():
        if name in times and value is not None:
            value = format_rfc3339(value)
        message[name] = value
    return orjson.dumps(message, default=_number)


def _number(value: object) -> float:
    if isinstance(value, Decimal):
        return float(value)
    raise TypeError(f"not JSON: {type(value).__name__}")
