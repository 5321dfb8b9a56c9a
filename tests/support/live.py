"""Read live tables back from Redis in tests, to compare with ClickHouse's final rows."""

from __future__ import annotations

import importlib
from typing import Any

import orjson
import redis

from waxhouse.livetables import LiveTable, live_tables
from waxhouse.settings import load_settings
from waxhouse.views import final_rows


def clickstream_live() -> dict[str, LiveTable]:
    """The clickstream's live tables, with the default settings."""
    flow = importlib.import_module("dataflows.clickstream")
    settings = load_settings({})
    return live_tables(flow.pipeline.compile(settings.lateness_ms, settings.dedup_ms))


def redis_rows(url: str, table: LiveTable) -> list[dict[str, Any]]:
    """Every row of `table` kept in Redis, as its ClickHouse view shows it (`final_rows`:
    times in epoch milliseconds, decimals as `Decimal`): final parts only, retracted rows
    left out, sorted like `view_rows`."""
    out = []
    with redis.Redis.from_url(url) as client:
        for key in client.scan_iter(match=f"{table.namespace}:r:*", count=1000):
            fields = client.hgetall(key)
            parts = [orjson.loads(v) for k, v in fields.items() if k.startswith(b"p:")]
            if parts:
                out.extend(final_rows(table.compiled, [tuple(p) for p in parts]))
    return sorted(out, key=lambda row: tuple((v is None, v) for v in row.values()))


def provisional_rows(url: str, table: LiveTable) -> int:
    """How many row hashes still hold a provisional part and no final one."""
    n = 0
    with redis.Redis.from_url(url) as client:
        for key in client.scan_iter(match=f"{table.namespace}:r:*", count=1000):
            fields = client.hkeys(key)
            if not any(f.startswith(b"p:") for f in fields):
                n += 1
    return n
