"""Redis sink: live tables' rows, versioned, where applications read them in a millisecond.

`RedisSink` writes the rows of every table declared `live` (`waxhouse.livetables` has the
layout) through one partition, `"redis"`, as the ClickHouse sink does, on a thread of its
own. Each write is one pipelined round trip of Lua scripts (`redis_scripts`), each a
compare-and-set on a row's version: a replay after a crash writes nothing twice and never
moves a value back.

Redis is a view of what ClickHouse keeps, not the record: while it is unreachable the
sink retries with backoff for `REDIS_RETRY_SECONDS` (holding the flow back, so nothing is
skipped), then drops live writes, counted in `waxhouse_redis_rows_total{result="dropped"}`
with `waxhouse_redis_up` at 0, and tries again every few seconds; ClickHouse goes on
exact all along. Errors that no retry mends (a key of ours holding another type) drop
the batch at once, loudly. Keys are computed in the scripts: a single Redis (or a
primary with replicas), not Redis Cluster.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Literal

import orjson
import redis
from bytewax.outputs import FixedPartitionedSink, StatefulSinkPartition

from waxhouse.connectors.background import BackgroundWriter
from waxhouse.connectors.metrics import REDIS_ERRORS, REDIS_ROWS, REDIS_UP, REDIS_WRITE_SECONDS
from waxhouse.connectors.redis_scripts import WATERMARKS, WRITE_FINAL, WRITE_PROVISIONAL
from waxhouse.livetables import LiveTable, marks_key
from waxhouse.rows import RowBatch
from waxhouse.settings import mask_url

__all__ = ["TRANSIENT", "RedisSink", "RedisWriter"]

logger = logging.getLogger(__name__)

PART_NAME = "redis"
ROWS_PER_CALL = 500  # rows per script call: one call runs atomically and blocks Redis
PROBE_SECONDS = 5.0  # while dropping: how often Redis is tried again

# Worth another attempt: the network, a server starting or failing over, memory pressure.
TRANSIENT: tuple[type[Exception], ...] = (
    redis.ConnectionError,
    redis.TimeoutError,
    redis.BusyLoadingError,
    redis.exceptions.ReadOnlyError,
    redis.exceptions.OutOfMemoryError,
    redis.exceptions.TryAgainError,
)


@dataclass(frozen=True, slots=True)
class _Call:
    """One script call of a write: what it writes, for which table, how many rows."""

    kind: Literal["final", "provisional", "marks"]
    table: str
    script: Any  # redis.commands.core.Script
    args: list[Any]
    rows: int


class RedisWriter:
    """Writes a `RowBatch`'s live rows and watermarks: all I/O goes through `_send`.

    `budget_seconds`: how long a write is retried before live writes are dropped.
    `sleep`, `clock` and `jitter` are injectable for tests.
    """

    def __init__(
        self,
        client: redis.Redis,
        pipeline: str,
        tables: Mapping[str, LiveTable],
        *,
        stream_length: int = 10_000,
        budget_seconds: float = 60.0,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
        jitter: Callable[[], float] = random.random,
    ) -> None:
        self._client = client
        self._marks = marks_key(pipeline)
        self._tables = dict(tables)
        self._top = [table for table in self._tables.values() if table.live.top_by is not None]
        self._stream_length = str(stream_length)
        self._budget = budget_seconds
        self._sleep, self._clock, self._jitter = sleep, clock, jitter
        self._final = client.register_script(WRITE_FINAL)
        self._provisional = client.register_script(WRITE_PROVISIONAL)
        self._watermarks = client.register_script(WATERMARKS)
        self._down_since: float | None = None
        self._probed = 0.0
        REDIS_UP.set(1)

    @property
    def dropping(self) -> bool:
        return self._down_since is not None

    def write(self, batch: RowBatch) -> None:
        calls = list(self._calls(batch))
        if not calls:
            return
        if self._down_since is not None and not self._probe():
            self._drop(calls)
            return
        with REDIS_WRITE_SECONDS.time():
            results = self._send_with_retries(calls)
        if results is None:
            self._drop(calls)
            return
        for call, result in zip(calls, results, strict=True):
            if call.kind != "marks":
                written, refused = int(result[0]), int(result[1])
                label = "written" if call.kind == "final" else "provisional"
                REDIS_ROWS.labels(call.table, label).inc(written)
                REDIS_ROWS.labels(call.table, "refused").inc(refused)

    def _calls(self, batch: RowBatch) -> Iterable[_Call]:
        """The script calls of `batch`, in the order they must run:
        final rows, provisional rows, then watermarks (which close windows whose rows
        came in the same batch)."""
        for name, rows in batch.tables.items():
            table = self._tables.get(name)
            if table is None or not rows:
                continue
            head = [
                table.namespace,
                table.live.ttl_ms,
                self._stream_length,
                "1" if table.score is not None else "0",
                "1" if table.streams_rows else "0",
                "1" if table.sessions else "0",
            ]
            for start in range(0, len(rows), ROWS_PER_CALL):
                chunk = rows[start : start + ROWS_PER_CALL]
                entries = [_entry(table, row, final=True) for row in chunk]
                args = [*head, orjson.dumps(entries)]
                yield _Call("final", name, self._final, args, len(chunk))
        for name, rows in batch.provisional.items():
            table = self._tables.get(name)
            if table is None or not rows:
                continue
            for start in range(0, len(rows), ROWS_PER_CALL):
                chunk = rows[start : start + ROWS_PER_CALL]
                entries = [_entry(table, row, final=False) for row in chunk]
                spans = "1" if table.sessions else "0"
                args = [table.namespace, table.live.ttl_ms, spans, orjson.dumps(entries)]
                yield _Call("provisional", name, self._provisional, args, len(chunk))
        if batch.marks and self._top:
            args = [self._marks, len(batch.marks)]
            for part, mark in batch.marks.items():
                args += [part, mark]
            for table in self._top:
                args += [table.namespace, table.live.top, self._stream_length]
            yield _Call("marks", "", self._watermarks, args, 0)

    def _send_with_retries(self, calls: Sequence[_Call]) -> list[Any] | None:
        """The scripts' results, or None once the retry budget is spent (or on an error no
        retry mends)."""
        started = self._clock()
        attempt = 1
        while True:
            try:
                return self._send(calls)
            except TRANSIENT as e:
                REDIS_ERRORS.inc()
                elapsed = self._clock() - started
                delay = self._jitter() * min(5.0, 0.05 * 2 ** (attempt - 1))
                if elapsed + delay > self._budget:
                    logger.error(
                        "Redis unreachable for %.1f s (%s): dropping live writes until it "
                        "answers again; ClickHouse is not affected",
                        elapsed,
                        type(e).__name__,
                    )
                    self._down_since = self._probed = self._clock()
                    REDIS_UP.set(0)
                    return None
                logger.warning(
                    "Redis write failed (attempt %d, %s); retrying in %.2f s",
                    attempt,
                    type(e).__name__,
                    delay,
                )
                self._sleep(delay)
                attempt += 1
            except redis.RedisError as e:
                REDIS_ERRORS.inc()
                logger.error(
                    "Redis refused a live write (%s): %s; batch dropped", type(e).__name__, e
                )
                return None

    def _send(self, calls: Sequence[_Call]) -> list[Any]:
        pipe = self._client.pipeline(transaction=False)
        for call in calls:
            call.script(keys=[], args=call.args, client=pipe)
        return pipe.execute()

    def _probe(self) -> bool:
        """While dropping: whether Redis answers again (tried every `PROBE_SECONDS`)."""
        now = self._clock()
        if now - self._probed < PROBE_SECONDS:
            return False
        self._probed = now
        try:
            self._client.ping()
        except redis.RedisError:
            REDIS_ERRORS.inc()
            return False
        down = now - (self._down_since or now)
        logger.warning("Redis answers again after %.1f s: live writes resume", down)
        self._down_since = None
        REDIS_UP.set(1)
        return True

    def _drop(self, calls: Sequence[_Call]) -> None:
        for call in calls:
            if call.kind != "marks":
                REDIS_ROWS.labels(call.table, "dropped").inc(call.rows)


def _entry(table: LiveTable, row: tuple, *, final: bool) -> tuple[Any, ...]:
    """A row as the scripts take it (`redis_scripts`): a final row's entry, or a
    provisional one's."""
    ident = table.identify(row)
    encoded = orjson.dumps(row).decode()
    if not final:
        return (ident.kid, ident.wid, ident.order, ident.part, ident.version, encoded,
                table.span_end(row))  # fmt: skip
    return (
        ident.kid,
        ident.wid,
        ident.order,
        ident.part,
        ident.version,
        encoded,
        table.score_of(row),
        1 if ident.deleted else 0,
        table.close_at(row) if table.windowed else 0,
        table.span_end(row),
    )


class _RedisPartition(StatefulSinkPartition[RowBatch, None]):
    """Writes on a thread of its own while the worker goes on (`BackgroundWriter`), so
    Redis's work overlaps the flow's; `snapshot()` returns once every batch received is
    written (or dropped past the budget), so an epoch is committed only after its live
    rows are in Redis."""

    def __init__(self, client: redis.Redis, writer: RedisWriter) -> None:
        self._client = client
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="redis")
        self._writes = BackgroundWriter(writer.write, self._executor.submit)

    def write_batch(self, values: list[RowBatch]) -> None:
        self._writes.submit(values)

    def snapshot(self) -> None:
        self._writes.drain()
        return None

    def close(self) -> None:
        try:
            self._writes.drain()
        finally:
            self._executor.shutdown(wait=True)
            self._client.close()


class RedisSink(FixedPartitionedSink[RowBatch, None]):
    """Writes `(key, RowBatch)` items' live rows to Redis at `url` through one partition.
    Nothing connects until `build_part`."""

    def __init__(
        self,
        url: str,
        pipeline: str,
        tables: Mapping[str, LiveTable],
        *,
        stream_length: int = 10_000,
        budget_seconds: float = 60.0,
    ) -> None:
        self._url = url
        self._pipeline = pipeline
        self._tables = dict(tables)
        self._stream_length = stream_length
        self._budget = budget_seconds

    def list_parts(self) -> list[str]:
        return [PART_NAME]

    def part_fn(self, item_key: str) -> int:
        return 0

    def build_part(self, step_id: str, for_part: str, resume_state: None) -> _RedisPartition:
        logger.info(
            "Writing live tables %s to Redis at %s", sorted(self._tables), mask_url(self._url)
        )
        client = redis.Redis.from_url(
            self._url, socket_timeout=5, socket_connect_timeout=5, health_check_interval=30
        )
        writer = RedisWriter(
            client,
            self._pipeline,
            self._tables,
            stream_length=self._stream_length,
            budget_seconds=self._budget,
        )
        return _RedisPartition(client, writer)
