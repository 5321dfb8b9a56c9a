"""Live tables without Redis: a flow that serves them from its own process.

    SERVE_LISTEN=127.0.0.1:8090 python -m bytewax.run dataflows.clickstream

With `SERVE_LISTEN` set and no `REDIS_URL`, the flow keeps its live tables in a
`MemoryStore` and runs `waxhouse serve`'s server in a thread of its process: key lookups,
tops and the streams work as with Redis; history does not (the flow holds the embedded
ClickHouse store, which one process opens at a time). The store lives and dies with the
process: a restart begins empty, and replayed rows fill it again. In one process only,
so with several flow processes (`-i/-a`), serve from Redis instead.

`MemoryStore` keeps the rules of the Redis scripts (`waxhouse.connectors.redis_scripts`),
version by version, so the two can be tested against each other.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson
from bytewax.outputs import FixedPartitionedSink, StatefulSinkPartition

from waxhouse.livetables import LiveTable
from waxhouse.rows import RowBatch
from waxhouse.settings import Settings

__all__ = ["MemoryStore", "serving_sink"]

logger = logging.getLogger(__name__)

KEPT_WINDOWS = 8  # a key's newest windows indexed, as in Redis
POLL_SECONDS = 0.02  # how often a waiting stream reader looks again
SWEEP_SECONDS = 60.0  # how often rows past their table's ttl are dropped

Fields = dict[str, str]


@dataclass
class _Table:
    rows: dict[tuple[str, str], Fields] = field(default_factory=dict)
    written: dict[tuple[str, str], float] = field(default_factory=dict)
    index: dict[str, dict[str, int]] = field(default_factory=dict)
    tops: dict[str, dict[str, float]] = field(default_factory=dict)
    pending: dict[str, int] = field(default_factory=dict)
    through: int = -1
    closed: str | None = None
    stream: deque[tuple[str, Fields]] = field(default_factory=deque)


class MemoryStore:
    """The live tables' layout in this process's memory: written by the flow's sink
    (`write`, one batch at a time), read by the server (`LiveReader`'s coroutines)."""

    def __init__(
        self,
        tables: Mapping[str, LiveTable],
        *,
        stream_length: int = 10_000,
        clock: Any = time.time,
    ) -> None:
        self._live = dict(tables)
        self._tables = {name: _Table() for name in tables}
        self._marks: dict[str, int] = {}
        self._stream_length = stream_length
        self._clock = clock
        self._lock = threading.Lock()
        self._last_id = (0, 0)
        self._swept = clock()

    # --- writing (the flow's worker) ---------------------------------------------------

    def write(self, batch: RowBatch) -> None:
        with self._lock:
            for name, rows in batch.tables.items():
                live = self._live.get(name)
                if live is not None:
                    for row in rows:
                        self._final(live, self._tables[name], row)
            for name, rows in batch.provisional.items():
                live = self._live.get(name)
                if live is not None:
                    for row in rows:
                        self._provisional(live, self._tables[name], row)
            if batch.marks:
                self._watermarks(batch.marks)
            if self._clock() - self._swept >= SWEEP_SECONDS:
                self._sweep()

    def _final(self, live: LiveTable, table: _Table, row: tuple) -> None:
        ident = live.identify(row)
        part, at = ident.part, (ident.wid, ident.kid)
        fields = table.rows.setdefault(at, {})
        held = fields.get(f"v:{part}")
        if held is not None and int(held) >= ident.version:
            return
        before = float(fields.get(f"s:{part}", 0))
        score = live.score_of(row)
        if live.score is not None:
            fields[f"s:{part}"] = str(score)
        encoded = orjson.dumps(row).decode()
        fields[f"v:{part}"], fields[f"p:{part}"] = str(ident.version), encoded
        fields.pop(f"q:{part}", None)
        fields.pop(f"qv:{part}", None)
        table.written[at] = self._clock()
        if ident.deleted:
            table.index.get(ident.kid, {}).pop(ident.wid, None)
        else:
            self._index(table, ident.kid, ident.wid, ident.order)
        if live.sessions:
            self._forget_provisional(table, ident.kid, part, ident.wid, ident.order, row, live)
        if live.score is not None:
            top = table.tops.setdefault(ident.wid, {})
            top[ident.kid] = top.get(ident.kid, 0.0) + score - before
            close_at = live.close_at(row)
            if close_at >= table.through:
                table.pending.setdefault(ident.wid, close_at)
        if live.streams_rows and not ident.deleted:
            entry = {"k": "row", "w": ident.wid, "i": ident.kid, "p": part, "r": encoded}
            self._append(table, entry)

    def _provisional(self, live: LiveTable, table: _Table, row: tuple) -> None:
        ident = live.identify(row)
        part, at = ident.part, (ident.wid, ident.kid)
        fields = table.rows.setdefault(at, {})
        held = fields.get(f"qv:{part}")
        if f"v:{part}" in fields or (held is not None and int(held) >= ident.version):
            return
        fields[f"qv:{part}"] = str(ident.version)
        fields[f"q:{part}"] = orjson.dumps(row).decode()
        table.written[at] = self._clock()
        self._index(table, ident.kid, ident.wid, ident.order)
        if live.sessions:
            self._forget_provisional(table, ident.kid, part, ident.wid, ident.order, row, live)

    def _forget_provisional(
        self,
        table: _Table,
        kid: str,
        part: str,
        wid: str,
        order: int,
        row: tuple,
        live: LiveTable,
    ) -> None:
        windows = table.index.get(kid, {})
        end = live.span_end(row)
        for other, other_order in list(windows.items()):
            if other != wid and order <= other_order <= end:
                fields = table.rows.get((other, kid), {})
                if f"v:{part}" not in fields:
                    table.rows.pop((other, kid), None)
                    table.written.pop((other, kid), None)
                    del windows[other]

    def _index(self, table: _Table, kid: str, wid: str, order: int) -> None:
        windows = table.index.setdefault(kid, {})
        windows[wid] = order
        if len(windows) > KEPT_WINDOWS:
            oldest = sorted(windows, key=lambda w: (windows[w], w))[: len(windows) - KEPT_WINDOWS]
            for gone in oldest:
                del windows[gone]

    def _watermarks(self, marks: Mapping[str, int]) -> None:
        for part, mark in marks.items():
            if mark > self._marks.get(part, mark - 1):
                self._marks[part] = mark
        if not self._marks:
            return
        low = min(self._marks.values())
        for name, live in self._live.items():
            table = self._tables[name]
            if live.score is None:
                continue
            ready = sorted((close, wid) for wid, close in table.pending.items() if close < low)
            for _, wid in ready:
                scores = table.tops.get(wid, {})
                best = sorted(scores.items(), key=lambda kv: (-kv[1], _reverse(kv[0])))
                pairs = [[kid, _number(score)] for kid, score in best[: live.live.top]]
                self._append(table, {"k": "top", "w": wid, "t": orjson.dumps(pairs).decode()})
                table.closed = wid
                del table.pending[wid]
            table.through = max(table.through, low)

    def _append(self, table: _Table, entry: Fields) -> None:
        ms = int(self._clock() * 1000)
        last_ms, seq = self._last_id
        self._last_id = (ms, 0) if ms > last_ms else (last_ms, seq + 1)
        table.stream.append((f"{self._last_id[0]}-{self._last_id[1]}", entry))
        while len(table.stream) > self._stream_length:
            table.stream.popleft()

    def _sweep(self) -> None:
        """Rows not written for their table's ttl go, as Redis expires them."""
        now = self._swept = self._clock()
        for name, live in self._live.items():
            table = self._tables[name]
            horizon = now - live.live.ttl_ms / 1000
            for at in [at for at, when in table.written.items() if when < horizon]:
                del table.written[at]
                table.rows.pop(at, None)
                table.index.get(at[1], {}).pop(at[0], None)
                table.tops.pop(at[0], None)
            for kid in [kid for kid, windows in table.index.items() if not windows]:
                del table.index[kid]

    # --- reading (the server's event loop) ----------------------------------------------

    async def newest_row(self, table: LiveTable, kid: str) -> dict[str, Any] | None:
        with self._lock:
            held = self._tables[table.name]
            windows = held.index.get(kid, {})
            newest = sorted(windows, key=lambda w: (windows[w], w), reverse=True)[:3]
            found = [dict(held.rows.get((wid, kid), {})) for wid in newest]
        for fields in found:
            row = table.render_row(kid, fields)
            if row is not None:
                return row
        return None

    async def top(self, table: LiveTable, limit: int) -> dict[str, Any] | None:
        with self._lock:
            held = self._tables[table.name]
            if held.closed is None:
                return None
            scores = held.tops.get(held.closed, {})
            best = sorted(scores.items(), key=lambda kv: (-kv[1], _reverse(kv[0])))[:limit]
            wid = held.closed
        return table.render_top(wid, best)

    async def stream_after(
        self, table: LiveTable, after: str | None, count: int
    ) -> tuple[list[tuple[str, dict[Any, Any]]], str | None]:
        with self._lock:
            stream = self._tables[table.name].stream
            first = stream[0][0] if stream else None
            return self._after(stream, after, count), first

    async def wait_stream(
        self, table: LiveTable, after: str, block_ms: int
    ) -> list[tuple[str, dict[Any, Any]]]:
        deadline = time.monotonic() + block_ms / 1000
        while True:
            with self._lock:
                got = self._after(self._tables[table.name].stream, after, 1000)
            if got or time.monotonic() >= deadline:
                return got
            await asyncio.sleep(POLL_SECONDS)

    async def ping(self) -> bool:
        return True

    @staticmethod
    def _after(
        stream: deque[tuple[str, Fields]], after: str | None, count: int
    ) -> list[tuple[str, dict[Any, Any]]]:
        if after in (None, "0", "0-0"):
            return [(i, dict(f)) for i, f in list(stream)[:count]]
        assert after is not None
        mark = _id(after)
        out: list[tuple[str, dict[Any, Any]]] = []
        for entry_id, fields in reversed(stream):
            if _id(entry_id) <= mark:
                break
            out.append((entry_id, dict(fields)))
        out.reverse()
        return out[:count]


def _number(score: float) -> float | int:
    return int(score) if score.is_integer() else score


def _id(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


def _reverse(text: str) -> tuple[int, ...]:
    """Sorts strings in reverse (Redis orders equal scores by member, highest first)."""
    return (*(-b for b in text.encode()), 1)


class _MemoryPartition(StatefulSinkPartition[RowBatch, None]):
    def __init__(self, store: MemoryStore, handle: Any) -> None:
        self._store = store
        self._handle = handle

    def write_batch(self, values: list[RowBatch]) -> None:
        for value in values:
            self._store.write(value)

    def snapshot(self) -> None:
        return None

    def close(self) -> None:
        self._handle.stop()


class _ServingSink(FixedPartitionedSink[RowBatch, None]):
    """Keeps the live tables in a `MemoryStore` and serves them while the flow runs."""

    def __init__(self, tables: Mapping[str, LiveTable], settings: Settings) -> None:
        self._tables = dict(tables)
        self._settings = settings

    def list_parts(self) -> list[str]:
        return ["serve"]

    def part_fn(self, item_key: str) -> int:
        return 0

    def build_part(self, step_id: str, for_part: str, resume_state: None) -> _MemoryPartition:
        from waxhouse.serve.server import start_in_thread

        store = MemoryStore(self._tables, stream_length=self._settings.redis_stream_length)
        handle = start_in_thread(self._tables, store, self._settings.serve)
        return _MemoryPartition(store, handle)


def serving_sink(
    pipeline: str, tables: Mapping[str, LiveTable], settings: Settings
) -> FixedPartitionedSink[RowBatch, None]:
    """The sink of a flow serving its own live tables (`SERVE_LISTEN`, no `REDIS_URL`)."""
    try:
        import waxhouse.serve.server  # noqa: F401 - needs aiohttp, the serve extra
    except ImportError as e:
        raise SystemExit(
            "waxhouse: SERVE_LISTEN is set: serving live tables needs the serve extra "
            f"(from the repository: pip install -e '.[serve]'): {e}"
        ) from None
    logger.info("%s serves its live tables in process: %s", pipeline, ", ".join(tables))
    if not settings.serve.tokens:
        logger.warning(
            "SERVE_TOKENS and SERVE_TOKENS_FILE are unset: anyone who reaches %s can read",
            settings.serve.listen,
        )
    return _ServingSink(tables, settings)
