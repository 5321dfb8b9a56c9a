"""A key's past rows from ClickHouse: the query, built with quoted names and bound values.

    sql, parameters = history_query(table, "/home", since_ms=..., until_ms=None, limit=100)

reads the table's view (one final row per key and window), the key's columns equal to
bound values, the window's (or session's, episode's) start within `[since, until)`,
oldest first. `History` runs it on a ClickHouse server in a worker thread; an embedded
chDB store is held by the flow's process, so serve cannot open it.
"""

from __future__ import annotations

import asyncio
import threading
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from clickhouse_connect.driver.binding import quote_identifier
from clickhouse_connect.driver.client import Client

from waxhouse.connectors.clickhouse_store import ClickHouseTarget, open_client
from waxhouse.fields import format_rfc3339
from waxhouse.livetables import LiveTable

__all__ = ["EMBEDDED", "History", "HistoryUnavailable", "history_query", "present"]

EMBEDDED = (
    "history needs a ClickHouse server (CLICKHOUSE_URL=http://...): an embedded chDB store "
    "is open in the flow's process only"
)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MILLISECOND = timedelta(milliseconds=1)


class HistoryUnavailable(Exception):
    """History cannot be read here (no server, or an embedded store)."""


def history_query(
    table: LiveTable, key: str, since_ms: int | None, until_ms: int | None, limit: int
) -> tuple[str, dict[str, Any]]:
    """The SQL and its parameters for `key`'s rows of `table`; ValueError when `since` or
    `until` is given for a table whose windows are not times (count windows)."""
    compiled = table.compiled
    start = compiled.table.window.columns[0]
    types = dict(zip(compiled.columns, compiled.types, strict=True))
    timed = types[start].startswith("DateTime")
    key_fields = compiled.table.key_fields
    values = [key] if len(key_fields) == 1 else key.split("/", len(key_fields) - 1)
    if len(values) != len(key_fields):
        raise ValueError(f"the key of {table.name} is {'/'.join(key_fields)}")
    conditions: list[str] = []
    parameters: dict[str, Any] = {}
    for i, (name, value) in enumerate(zip(key_fields, values, strict=True)):
        conditions.append(f"{quote_identifier(name)} = {{k{i}:{types[name]}}}")
        parameters[f"k{i}"] = value
    column = quote_identifier(start)
    for bound, ms, op in (("since", since_ms, ">="), ("until", until_ms, "<")):
        if ms is None:
            continue
        if not timed:
            raise ValueError(f"{table.name}'s windows are not times: no {bound}")
        conditions.append(f"{column} {op} fromUnixTimestamp64Milli({{{bound}:Int64}}, 'UTC')")
        parameters[bound] = ms
    parameters["limit"] = limit
    # Quoted names; every value is a bound parameter.
    view, where = quote_identifier(table.name), " AND ".join(conditions)
    sql = f"SELECT * FROM {view} WHERE {where} ORDER BY {column} LIMIT {{limit:UInt32}}"  # noqa: S608
    return sql, parameters


def present(value: Any) -> Any:
    """A ClickHouse value as the API shows it: times RFC 3339, decimals numbers."""
    if isinstance(value, datetime):
        if value.tzinfo is None:
            raise ValueError("a naive datetime from ClickHouse")
        return format_rfc3339((value - _EPOCH) // _MILLISECOND)
    if isinstance(value, Decimal):
        return float(value)
    return value


class History:
    """Runs history queries on `target` (a server), one at a time on one client, each in
    a worker thread; the client is opened on first use."""

    def __init__(self, target: ClickHouseTarget | None) -> None:
        self.target = target
        self._client: Client | None = None
        self._lock = threading.Lock()

    def check(self) -> None:
        if self.target is None:
            raise HistoryUnavailable("history is not served here (no CLICKHOUSE_URL)")
        if self.target.embedded:
            raise HistoryUnavailable(EMBEDDED)

    async def rows(
        self, table: LiveTable, key: str, since_ms: int | None, until_ms: int | None, limit: int
    ) -> list[dict[str, Any]]:
        self.check()
        sql, parameters = history_query(table, key, since_ms, until_ms, limit)
        return await asyncio.to_thread(self._query, sql, parameters)

    def _query(self, sql: str, parameters: dict[str, Any]) -> list[dict[str, Any]]:
        with self._lock:  # one session: clickhouse-connect refuses concurrent queries in it
            if self._client is None:
                if self.target is None:
                    raise HistoryUnavailable("history is not served here (no CLICKHOUSE_URL)")
                self._client = open_client(self.target)
            result = self._client.query(sql, parameters=parameters)
        names = list(result.column_names)
        return [
            {name: present(value) for name, value in zip(names, row, strict=True)}
            for row in result.result_rows
        ]

    def close(self) -> None:
        with self._lock:
            if self._client is not None:
                self._client.close()
                self._client = None
