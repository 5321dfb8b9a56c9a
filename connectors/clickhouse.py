"""ClickHouse sink: shape output rows in pure code, insert them in one place, with retries.

`ClickHouseSink` has a single partition, so in a multi-process run exactly one process
opens the store (an embedded chDB store allows no more). Writes go on while the flow
works; an epoch's snapshot returns only once its rows are in ClickHouse: recovery relies
on it. Replays and retries are safe because
the tables deduplicate on each row's identity and keep its highest version.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from bytewax.outputs import FixedPartitionedSink, StatefulSinkPartition
from clickhouse_connect.driver.client import Client
from clickhouse_connect.driver.exceptions import DatabaseError, Error, OperationalError

from waxhouse.connectors.background import BackgroundWriter
from waxhouse.connectors.clickhouse_store import (
    ClickHouseTarget,
    ensure_schema,
    open_client,
    parse_clickhouse_url,
    wait_for_schema,
)
from waxhouse.connectors.metrics import (
    SINK_BATCH_SECONDS,
    SINK_BATCHES,
    SINK_ERRORS,
    SINK_RETRIES,
    SINK_ROWS,
    observe_freshness,
)
from waxhouse.errors import SinkError
from waxhouse.rows import RowBatch

__all__ = [
    "DEAD_LETTERS_TABLE",
    "TRANSIENT_ERROR_CODES",
    "ClickHouseSink",
    "ClickHouseTarget",
    "ClickHouseWriter",
    "InsertClient",
    "Retrier",
    "RetryPolicy",
    "TableSpec",
    "ensure_schema",
    "is_transient",
    "open_client",
    "parse_clickhouse_url",
]

logger = logging.getLogger(__name__)

T = TypeVar("T")

PART_NAME = "clickhouse"
_DATETIME = "DateTime64(3, 'UTC')"

# ClickHouse error codes worth another attempt: overload, timeouts, network, replicas.
TRANSIENT_ERROR_CODES = frozenset(
    {
        159,  # TIMEOUT_EXCEEDED
        202,  # TOO_MANY_SIMULTANEOUS_QUERIES
        203,  # NO_FREE_CONNECTION
        209,  # SOCKET_TIMEOUT
        210,  # NETWORK_ERROR
        241,  # MEMORY_LIMIT_EXCEEDED
        242,  # TABLE_IS_READ_ONLY
        252,  # TOO_MANY_PARTS
        285,  # TOO_FEW_LIVE_REPLICAS
        319,  # UNKNOWN_STATUS_OF_INSERT
        373,  # SESSION_IS_LOCKED
        425,  # SYSTEM_ERROR
        439,  # CANNOT_SCHEDULE_TASK
        999,  # KEEPER_EXCEPTION
    }
)


# --- tables and row shaping (pure) ------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TableSpec:
    """A physical table: its name, the metric label (the name users query), columns, types.

    Rows are tuples in `columns` order, inserted as they are. Times go in as epoch
    milliseconds, the ticks of `DateTime64(3, 'UTC')`, and decimals as scaled integers.
    `end_column`: the index of the column where a row's window ends, if it has one
    (`waxhouse_window_freshness_seconds` measures from it).
    """

    name: str
    label: str
    columns: tuple[str, ...]
    types: tuple[str, ...]
    end_column: int | None = None


DEAD_LETTERS_TABLE = TableSpec(
    name="dead_letters_data",
    label="dead_letters",
    columns=("source", "reason", "error", "payload", "received_at"),
    types=("String", "String", "String", "String", _DATETIME),
)


# --- retries (pure) ---------------------------------------------------------------------


def is_transient(error: Error) -> bool:
    """Whether another attempt may succeed, judged from the exception's type and code.

    `OperationalError` is clickhouse-connect's network/transport failure (including HTTP
    429/503/504); a `DatabaseError` is transient only for the codes in
    `TRANSIENT_ERROR_CODES`. Retrying an insert is safe: a duplicate is deduplicated.
    """
    if isinstance(error, OperationalError):
        return True
    return isinstance(error, DatabaseError) and error.code in TRANSIENT_ERROR_CODES


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with full jitter, within a budget of attempts and time.

    Retry `n` (1-based) waits a uniformly random time in
    `[0, min(max_delay_seconds, base_delay_seconds * 2 ** (n - 1)))`. No retry starts once
    `max_attempts` attempts were made, or if its wait would end past `max_elapsed_seconds`
    after the first attempt began.
    """

    max_attempts: int = 10
    max_elapsed_seconds: float = 300.0
    base_delay_seconds: float = 0.5
    max_delay_seconds: float = 30.0

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        if self.max_elapsed_seconds < 0 or self.base_delay_seconds < 0:
            raise ValueError("max_elapsed_seconds and base_delay_seconds must be 0 or more")
        if self.max_delay_seconds < self.base_delay_seconds:
            raise ValueError("max_delay_seconds must be at least base_delay_seconds")

    def ceiling(self, retry: int) -> float:
        """The largest wait before retry number `retry` (1-based)."""
        return min(self.max_delay_seconds, self.base_delay_seconds * 2 ** (retry - 1))


class InsertClient(Protocol):
    """The part of a clickhouse-connect client the writer uses (faked in tests)."""

    def insert(
        self,
        table: str | None = None,
        data: Sequence[Sequence[Any]] | None = None,
        column_names: str | Sequence[str] | None = "*",
        database: str | None = None,
        column_types: Any = None,
        column_type_names: Sequence[str] | None = None,
        column_oriented: bool = False,
    ) -> Any: ...


class Retrier:
    """Runs an operation until it succeeds, retrying transient errors per a `RetryPolicy`.

    `sleep`, `jitter` (uniform in [0, 1)) and `clock` (monotonic seconds) are injectable so
    tests run without waiting. With `metric_label`, failed attempts and retries are counted
    in `SINK_ERRORS` / `SINK_RETRIES` under that table label.
    """

    def __init__(
        self,
        policy: RetryPolicy | None = None,
        *,
        sleep: Callable[[float], None] = time.sleep,
        jitter: Callable[[], float] = random.random,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.policy = policy or RetryPolicy()
        self._sleep = sleep
        self._jitter = jitter
        self._clock = clock

    def call(self, operation: Callable[[], T], what: str, metric_label: str | None = None) -> T:
        """`operation()`'s result; `SinkError` on a permanent error or an exhausted budget."""
        started = self._clock()
        attempt = 1
        while True:
            try:
                return operation()
            except Error as e:
                if metric_label is not None:
                    SINK_ERRORS.labels(metric_label).inc()
                delay = self._delay(e, attempt, self._clock() - started)
                if delay is None:
                    failure = f"{what} failed after {attempt} attempt(s): {_describe(e)}"
                    raise SinkError(failure) from e
                if metric_label is not None:
                    SINK_RETRIES.labels(metric_label).inc()
                logger.warning(
                    "%s failed (attempt %d, %s); retrying in %.2f s",
                    what,
                    attempt,
                    _describe(e),
                    delay,
                )
                self._sleep(delay)
                attempt += 1

    def _delay(self, error: Error, attempt: int, elapsed: float) -> float | None:
        """The wait before the next attempt, or None to give up."""
        if not is_transient(error) or attempt >= self.policy.max_attempts:
            return None
        delay = self._jitter() * self.policy.ceiling(attempt)
        if elapsed + delay > self.policy.max_elapsed_seconds:
            return None
        return delay


class ClickHouseWriter:
    """Writes a `RowBatch` table by table (`tables`, then the dead letters): all I/O goes
    through `_insert`."""

    def __init__(
        self,
        client: InsertClient,
        tables: Sequence[TableSpec],
        retrier: Retrier | None = None,
        max_insert_rows: int = 100_000,
    ) -> None:
        self._client = client
        self._tables = tuple(tables)
        known = {table.label for table in self._tables}
        if len(known) != len(self._tables) or DEAD_LETTERS_TABLE.label in known:
            raise ValueError(f"table names must be unique and not dead_letters: {sorted(known)}")
        self._retrier = retrier or Retrier()
        self._max_insert_rows = max_insert_rows

    def write(self, batch: RowBatch) -> None:
        """Insert every row of `batch`; returns once all are in ClickHouse."""
        unknown = set(batch.tables) - {table.label for table in self._tables}
        if unknown:
            raise ValueError(f"rows for tables this sink does not write: {sorted(unknown)}")
        for table in self._tables:
            self._insert(table, batch.tables.get(table.label, ()))
        self._insert(DEAD_LETTERS_TABLE, batch.dead_letters)

    def _insert(self, table: TableSpec, rows: Sequence[tuple[Any, ...]]) -> None:
        # A bounded-mode flush can hold millions of rows: insert them in slices, so the
        # encoded block stays small. Each slice is safe to retry or replay on its own.
        for start in range(0, len(rows), self._max_insert_rows):
            self._insert_slice(table, rows[start : start + self._max_insert_rows])

    def _insert_slice(self, table: TableSpec, rows: Sequence[tuple[Any, ...]]) -> None:
        columns = list(zip(*rows, strict=True))
        with SINK_BATCH_SECONDS.labels(table.label).time():
            self._retrier.call(
                lambda: self._client.insert(
                    table.name,
                    columns,
                    column_names=table.columns,
                    column_type_names=table.types,
                    column_oriented=True,
                ),
                f"Insert of {len(rows)} rows into {table.name}",
                metric_label=table.label,
            )
        SINK_ROWS.labels(table.label).inc(len(rows))
        SINK_BATCHES.labels(table.label).inc()
        if table.end_column is not None:
            observe_freshness(table.label, columns[table.end_column])


def _describe(error: Error) -> str:
    """Class, code and symbolic name: enough to act on, and never a URL or password."""
    return f"{type(error).__name__} code={error.code} name={error.name}"


# --- the Bytewax sink -------------------------------------------------------------------


class _ClientThread:
    """One long-lived Python thread that makes every call on the client.

    Bytewax runs workers on Rust threads when there are several (`-w N`, `-i/-a`); such a
    thread gets a fresh Python thread state for each call into Python, and chDB (pybind11)
    then crashes the process when its connection closes ("double free or corruption").
    A Python thread keeps one thread state for life.
    """

    def __init__(self) -> None:
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="clickhouse")

    def call(self, operation: Callable[[], T]) -> T:
        return self.submit(operation).result()

    def submit(self, operation: Callable[[], T]) -> Future[T]:
        return self._executor.submit(operation)

    def close(self) -> None:
        self._executor.shutdown(wait=True)


class _ClickHousePartition(StatefulSinkPartition[RowBatch, None]):
    """Writes on the client thread while the worker goes on, batching what piles up
    (`BackgroundWriter`). `snapshot()` and `close()` return only once every row received
    is stored: an epoch is only committed once its rows are in ClickHouse, which recovery
    relies on. A write that failed for good raises at the next call.
    """

    def __init__(
        self,
        thread: _ClientThread,
        client: Client,
        writer: ClickHouseWriter,
        on_close: Callable[[Client], None] | None,
        max_queued_rows: int = 200_000,
    ) -> None:
        self._thread = thread
        self._client = client
        self._on_close = on_close
        self._writes = BackgroundWriter(writer.write, thread.submit, max_queued_rows)

    def write_batch(self, values: list[RowBatch]) -> None:
        self._writes.submit(values)

    def snapshot(self) -> None:
        self._writes.drain()
        return None

    def close(self) -> None:
        try:
            self._writes.drain()
            self._thread.call(self._close_client)
        finally:
            self._thread.close()

    def _close_client(self) -> None:
        try:
            if self._on_close is not None:
                self._on_close(self._client)
        finally:
            self._client.close()


class ClickHouseSink(FixedPartitionedSink[RowBatch, None]):
    """Writes `(key, RowBatch)` items to ClickHouse through one partition, `"clickhouse"`:
    the rows of `tables` and the dead letters. `statements`: the DDL of the tables and
    their views, as `(name, statement)`; the dead letters' table is added.

    `on_close` is called with the open client just before it closes (at the end of a
    bounded run), e.g. to print a summary. With `create_schema` (the default) the sink
    creates missing tables and views; without, it waits for them (up to the retry budget),
    for deployments where a separate step applies the DDL. Nothing connects until
    `build_part`.
    """

    def __init__(
        self,
        target: ClickHouseTarget | str,
        tables: Sequence[TableSpec],
        statements: Sequence[tuple[str, str]],
        retry: RetryPolicy | None = None,
        on_close: Callable[[Client], None] | None = None,
        create_schema: bool = True,
    ) -> None:
        self._target = parse_clickhouse_url(target) if isinstance(target, str) else target
        self._tables = tuple(tables)
        self._statements = tuple(statements)
        self._retry = retry or RetryPolicy()
        self._on_close = on_close
        self._create_schema = create_schema

    def list_parts(self) -> list[str]:
        return [PART_NAME]

    def part_fn(self, item_key: str) -> int:
        return 0

    def build_part(self, step_id: str, for_part: str, resume_state: None) -> _ClickHousePartition:
        retrier = Retrier(self._retry)
        logger.info("Opening ClickHouse at %s for %s", self._target, step_id)
        thread = _ClientThread()
        try:
            client = thread.call(
                lambda: retrier.call(
                    lambda: _open_with_schema(
                        self._target,
                        self._statements,
                        self._create_schema,
                        self._retry.max_elapsed_seconds,
                    ),
                    f"Opening {self._target}",
                )
            )
        except BaseException:
            thread.close()
            raise
        writer = ClickHouseWriter(client, self._tables, retrier)
        return _ClickHousePartition(thread, client, writer, self._on_close)


def _open_with_schema(
    target: ClickHouseTarget,
    statements: Sequence[tuple[str, str]],
    create: bool,
    wait_seconds: float,
) -> Client:
    client = open_client(target)
    try:
        if create:
            ensure_schema(client, statements)
        else:
            wait_for_schema(client, statements, wait_seconds)
    except BaseException:
        client.close()
        raise
    return client
