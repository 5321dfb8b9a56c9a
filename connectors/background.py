"""Writing a sink's batches on one thread of its own while the flow's worker goes on.

    writer = BackgroundWriter(store.write, executor.submit)
    writer.submit(batches)      # queued; returns at once unless the backlog is too long
    writer.drain()              # every batch submitted so far is written

The ClickHouse and Redis sinks share it. While the store is quick, each batch is written
as it comes (fresh results); while it is busy, batches pile up and go in together (fewer,
larger writes). Batches stay in order. With more than `max_queued_rows` rows waiting,
`submit` waits for the write in flight, so a slow store holds the flow back. A sink's
`snapshot()` drains: an epoch is committed only once its rows are stored, which recovery
relies on. A write that failed for good stops all writing and is raised once, by the next
`submit` or `drain` (raising it again while Bytewax shuts down would abort the process
without a message).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import Future

from waxhouse.rows import RowBatch

__all__ = ["BackgroundWriter"]

Submit = Callable[[Callable[[], None]], "Future[None]"]


class BackgroundWriter:
    """`write` runs on the thread `submit_to` submits to (one thread: writes never overlap)."""

    def __init__(
        self,
        write: Callable[[RowBatch], None],
        submit_to: Submit,
        max_queued_rows: int = 200_000,
    ) -> None:
        self._write_batch = write
        self._submit_to = submit_to
        self._max_queued_rows = max_queued_rows
        self._lock = threading.Lock()
        self._queued = RowBatch()
        self._in_flight: Future[None] | None = None
        self._failure: BaseException | None = None  # a write failed for good, not raised yet
        self._broken = False  # a write failed for good: nothing more is written

    def submit(self, values: list[RowBatch]) -> None:
        with self._lock:
            self._raise_failure()
            for value in values:
                self._queued.extend(value)
            backlog = len(self._queued) > self._max_queued_rows
            in_flight = self._start_write()
        if backlog and in_flight is not None:
            in_flight.result()
            with self._lock:
                self._raise_failure()

    def drain(self) -> None:
        """Wait until every batch submitted so far is written; raise a failed write's error."""
        while True:
            with self._lock:
                self._raise_failure()
                in_flight = self._start_write()
            if in_flight is None:
                return
            in_flight.result()

    def _start_write(self) -> Future[None] | None:
        """With the lock held: submit what is queued unless a write is in flight (or one
        failed); returns the write in flight, if any."""
        if self._in_flight is None and self._queued and not self._broken:
            batch, self._queued = self._queued, RowBatch()
            self._in_flight = self._submit_to(lambda: self._write(batch))
        return self._in_flight

    def _write(self, batch: RowBatch) -> None:
        """On the writing thread: this batch, then start on what queued up meanwhile."""
        try:
            self._write_batch(batch)
        except BaseException as e:
            with self._lock:
                self._in_flight, self._failure, self._broken = None, e, True
            return
        with self._lock:
            self._in_flight = None
            self._start_write()

    def _raise_failure(self) -> None:
        failure, self._failure = self._failure, None
        if failure is not None:
            raise failure
