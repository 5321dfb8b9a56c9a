"""Read ClickHouse results in tests: `query_rows(url, sql, parameters)`.

chDB facts this relies on (chdb 4.4.0 through clickhouse-connect 1.12.0, checked by hand):

- One engine path per process *at a time*. Opening `chdb:///B` while any client on
  `chdb:///A` is still open raises `ProgrammingError` ("EmbeddedServer already initialized
  with path A"). Once every client on A is closed (or garbage-collected), the same process
  can open B, and later A again, with A's data intact. So a test process may use a fresh
  store per test, as long as it closes its clients.
- One process per store. While a process has a store open, another process opening it
  fails with code 36 (BAD_ARGUMENTS, "Error initializing EmbeddedServer"); after the first
  process closes its clients, the other can open it. Stop a flow subprocess (or let it
  finish) before reading its store here, and close clients before starting one.

`query_rows` therefore runs in-process and holds no client between calls. It raises if
this process has another store open at the time (e.g. a flow running in a thread).
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from waxhouse.connectors.clickhouse_store import open_client, parse_clickhouse_url


def query_rows(
    url: str, sql: str, parameters: Mapping[str, Any] | None = None
) -> list[tuple[Any, ...]]:
    """The rows of `sql` (bind values as `{name:Type}` via `parameters`) at `url`.

    Datetimes come back timezone-aware UTC, `Decimal(18, 2)` as `Decimal`.
    """
    client = open_client(parse_clickhouse_url(url))
    try:
        result = client.query(sql, parameters=dict(parameters) if parameters else None)
        return [tuple(row) for row in result.result_rows]
    finally:
        client.close()


def plain(value: Any) -> Any:
    """A value as `waxhouse.testing` shows it: times in epoch milliseconds."""
    if isinstance(value, datetime):
        return round(value.timestamp() * 1000)
    return value


def view_rows(url: str, table: str, columns: list[str]) -> list[dict[str, Any]]:
    """`columns` of every row of view `table`, as `waxhouse.testing` shows rows (times in
    epoch milliseconds), ordered by those columns."""
    names = ", ".join(columns)
    rows = query_rows(url, f"SELECT {names} FROM {table} ORDER BY {names}")  # noqa: S608
    return [dict(zip(columns, map(plain, row), strict=True)) for row in rows]
