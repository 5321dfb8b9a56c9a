"""The two live stores, Redis (the Lua scripts) and the flow's own memory (embedded mode),
fed the same batches from the real engine, replays included, answer the same."""

from __future__ import annotations

import asyncio
import importlib
import random
import zlib

import orjson
import pytest
import redis

from waxhouse.connectors.generator import ClickstreamGenerator, GeneratorConfig
from waxhouse.connectors.redis_store import RedisWriter
from waxhouse.livetables import LiveTable, live_tables
from waxhouse.records import InputBatch
from waxhouse.rows import RowBatch
from waxhouse.serve.embedded import MemoryStore
from waxhouse.serve.store import RedisReader

pytestmark = pytest.mark.integration

PARTS = ("events/0", "events/1")


def batches(seed: int, events: int) -> list[RowBatch]:
    """What the clickstream's tables' step hands the live sink, partition by partition:
    final rows, provisional rows now and then, watermarks; the end flushes every window."""
    flow = importlib.import_module("dataflows.clickstream")
    compiled = flow.pipeline.compile(2_000, 600_000)
    records = ClickstreamGenerator(GeneratorConfig(seed=seed, events=events)).take(events)
    states = {part: compiled.partition_state(part) for part in PARTS}
    offsets = dict.fromkeys(PARTS, 0)
    rng = random.Random(seed)
    out = []
    for start in range(0, len(records), 400):
        chunk = records[start : start + 400]
        by_part: dict[str, list] = {part: [] for part in PARTS}
        for record in chunk:
            by_part[PARTS[zlib.crc32(record.key or b"") % 2]].append(record)
        for part, got in by_part.items():
            batch = InputBatch(
                part,
                list(range(offsets[part], offsets[part] + len(got))),
                [r.value for r in got],
                [r.timestamp_ms for r in got],
            )
            offsets[part] += len(got)
            events, _ = compiled.schema.parse_batch(batch)
            rows = states[part].process(events)
            if rng.random() < 0.3:
                rows.provisional.update(states[part].provisional(states[part].watermark))
            rows.marks[part] = states[part].watermark
            out.append(rows)
    for part in PARTS:
        out.append(states[part].flush())
    return out


async def answers(store: object, tables: dict[str, LiveTable], keys: dict[str, set[str]]) -> dict:
    got: dict = {}
    for name, table in tables.items():
        got[name] = {kid: await store.newest_row(table, kid) for kid in sorted(keys[name])}  # type: ignore[attr-defined]
        if table.score is not None:
            got[name, "top"] = await store.top(table, 25)  # type: ignore[attr-defined]
        entries, _ = await store.stream_after(table, None, 100_000)  # type: ignore[attr-defined]
        got[name, "stream"] = [_decoded(_text(f)) for _, f in entries]
    return got


def _decoded(fields: dict) -> dict:
    """A stream entry with its JSON fields decoded (the two stores escape differently)."""
    return {k: orjson.loads(v) if k in ("r", "t") else v for k, v in fields.items()}


def _text(fields: dict) -> dict:
    return {
        (k.decode() if isinstance(k, bytes) else k): (v.decode() if isinstance(v, bytes) else v)
        for k, v in fields.items()
    }


def test_redis_and_the_memory_store_agree_through_replays(redis_url: str) -> None:
    flow = importlib.import_module("dataflows.clickstream")
    tables = live_tables(flow.pipeline.compile(2_000, 600_000))
    fed = batches(seed=11, events=30_000)
    rng = random.Random(5)
    memory = MemoryStore(tables, stream_length=100_000)
    keys: dict[str, set[str]] = {name: set() for name in tables}
    with redis.Redis.from_url(redis_url) as client:
        writer = RedisWriter(client, "clickstream", tables, stream_length=100_000)
        for i, batch in enumerate(fed):
            for name, rows in [*batch.tables.items(), *batch.provisional.items()]:
                if name in tables:
                    keys[name].update(tables[name].identify(row).kid for row in rows)
            writer.write(batch)
            memory.write(batch)
            if i > 5 and rng.random() < 0.1:  # a crash: the last few batches again
                for again in fed[i - rng.randint(1, 5) : i + 1]:
                    writer.write(again)
                    memory.write(again)

    async def both() -> tuple[dict, dict]:
        reader = RedisReader(redis_url)
        try:
            return await answers(reader, tables, keys), await answers(memory, tables, keys)
        finally:
            await reader.close()

    from_redis, from_memory = asyncio.run(both())
    assert from_redis["page_stats", "top"] is not None
    assert len(from_redis["page_stats", "stream"]) > 10
    assert len(from_redis["user_sessions", "stream"]) > 100
    assert sum(row is not None for row in from_redis["user_sessions"].values()) > 100
    for part in from_redis:
        assert from_redis[part] == from_memory[part], part
