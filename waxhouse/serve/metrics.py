"""`waxhouse serve`'s Prometheus metrics (served on its own `GET /metrics`).

`route` is the route template (`/v1/{table}/{key}`, `/v1/{table}/stream`, ..., or
`other`), never the raw URL; no label ever holds a token, a key or a client address.
"""

from __future__ import annotations

import time
from functools import cache
from typing import Any

from prometheus_client import Counter, Gauge, Histogram

from waxhouse.livetables import LiveTable

REQUESTS = Counter(
    "waxhouse_serve_requests",
    "HTTP responses by route template and status; a stream counts once, when it opens",
    ["route", "status"],
)
REQUEST_SECONDS = Histogram(
    "waxhouse_serve_request_seconds",
    "From a request read to its answer (lookups, tops, history; not streams)",
    ["route"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
)
STREAMS = Gauge("waxhouse_serve_streams", "Open event streams", ["transport"])
STREAM_EVENTS = Counter(
    "waxhouse_serve_stream_events", "Events sent to stream clients (all clients)", ["table"]
)
PUSH_DELAY = Histogram(
    "waxhouse_serve_push_delay_seconds",
    "From a window's close (its end plus the allowed lateness) to serve reading its top or "
    "final row from the table's stream",
    ["table"],
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0),
)
REDIS_UP = Gauge("waxhouse_serve_redis_up", "1 while the live store answers, else 0")


@cache
def answered(route: str, status: int) -> Any:
    """The `REQUESTS` child of (route, status), looked up once (both are few)."""
    return REQUESTS.labels(route, str(status))


@cache
def seconds(route: str) -> Any:
    return REQUEST_SECONDS.labels(route)


@cache
def streams(transport: str) -> Any:
    return STREAMS.labels(transport)


@cache
def events(table: str) -> Any:
    return STREAM_EVENTS.labels(table)


def push_delay_s(table: LiveTable, wid: str | None, now_ms: int) -> float | None:
    """How long after its window closed (end + lateness) an entry of window `wid` is read;
    None for tables without a time window (sessions, counts, episodes)."""
    if wid is None:
        return None
    try:
        window = table.window_of(wid)
    except ValueError:
        return None
    if window is None:
        return None
    return (now_ms - (window[1] + table.lateness_ms)) / 1000


def observe_push(table: LiveTable, wid: str | None) -> None:
    delay = push_delay_s(table, wid, time.time_ns() // 1_000_000)
    if delay is not None:
        PUSH_DELAY.labels(table.name).observe(max(delay, 0.0))
