"""One reader per table, its events rendered once and handed to every client's queue.

A `Feed` follows a table's stream (`N:s`) with blocking reads from where it stood when it
started, renders each entry once as an `Event` (the SSE frame and the WebSocket frame
ready to send), and offers it to every `Subscriber`. A subscriber's queue holds at most
`QUEUE_LIMIT` events: a client that falls that far behind is dropped (it resumes with
its last event id), so one slow reader never holds the others back or grows memory. An
SSE client that has caught up takes events `direct`: written to its connection by the
feed itself, with no task woken per client (its connection's buffer bounded instead).

A client that resumes subscribes first, then reads what it missed with `stream_after`,
then takes its queue, skipping what it already sent: entries written meanwhile are in
one or both, never in neither, and ids decide which are new.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson

from waxhouse.livetables import LiveTable
from waxhouse.serve import metrics
from waxhouse.serve.store import LiveReader, parse_id

__all__ = ["PAGE", "QUEUE_LIMIT", "Event", "Feed", "Subscriber", "event_of"]

logger = logging.getLogger(__name__)

QUEUE_LIMIT = 1024  # events a client may be behind before it is dropped
PAGE = 1000  # entries one catch-up read returns at most
BLOCK_MS = 5000  # one blocking read's wait
RETRY_S = 1.0  # after a failed read


@dataclass(frozen=True, slots=True)
class Event:
    """One stream entry as every client gets it."""

    id: str
    order: tuple[int, int]
    name: str  # row | top
    data: bytes  # JSON
    sse: bytes  # the Server-Sent Events frame
    chunk: bytes  # the same as one chunk of a chunked HTTP/1.1 body
    ws: str  # the WebSocket text frame: {"id", "event", "data"}


def event_of(table: LiveTable, entry_id: str, fields: Any) -> Event:
    name, data = table.render_entry(fields)
    sse = b"id: %s\nevent: %s\ndata: %s\n\n" % (entry_id.encode(), name.encode(), data)
    ws = b'{"id":%s,"event":"%s","data":%s}' % (orjson.dumps(entry_id), name.encode(), data)
    return Event(entry_id, parse_id(entry_id), name, data, sse, http_chunk(sse), ws.decode())


def http_chunk(data: bytes) -> bytes:
    """`data` framed as one chunk of a `Transfer-Encoding: chunked` body."""
    return b"%x\r\n%s\r\n" % (len(data), data)


def wid_of(fields: Any) -> str | None:
    """A stream entry's window id (`w`), as text."""
    wid = fields.get(b"w", fields.get("w")) if isinstance(fields, dict) else None
    return wid.decode() if isinstance(wid, bytes) else wid


class Subscriber:
    """One client: its queue of events (None in it: dropped, close the stream), or, once
    it has caught up, `direct`, which hands an event straight to its connection (False:
    it could not, the client is too slow or gone). `closed` is done once dropped."""

    __slots__ = ("closed", "direct", "dropped", "queue")

    def __init__(self) -> None:
        self.queue: asyncio.Queue[Event | None] = asyncio.Queue()
        self.dropped = False
        self.direct: Callable[[Event], bool] | None = None
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def offer(self, event: Event) -> bool:
        if self.dropped:
            return False
        if self.direct is not None:
            if self.direct(event):
                return True
        elif self.queue.qsize() < QUEUE_LIMIT:
            self.queue.put_nowait(event)
            return True
        self.drop()
        return False

    def drop(self) -> None:
        if not self.dropped:
            self.dropped = True
            self.queue.put_nowait(None)
            if not self.closed.done():
                self.closed.set_result(None)


class Feed:
    """The one reader of `table`'s stream in this process (`run()`, a task)."""

    def __init__(self, table: LiveTable, reader: LiveReader) -> None:
        self.table = table
        self.reader = reader
        self.subscribers: set[Subscriber] = set()
        self.cursor: str | None = None  # the last entry read (None: not started)
        self.started = asyncio.Event()
        self.sent = metrics.events(table.name)

    def subscribe(self) -> Subscriber:
        subscriber = Subscriber()
        self.subscribers.add(subscriber)
        return subscriber

    def unsubscribe(self, subscriber: Subscriber) -> None:
        self.subscribers.discard(subscriber)

    def close(self) -> None:
        """End every client's stream (they resume elsewhere or later)."""
        for subscriber in list(self.subscribers):
            subscriber.drop()
        self.subscribers.clear()

    async def run(self) -> None:
        failed = False
        while True:
            try:
                if self.cursor is None:
                    self.cursor = await self._tail()
                    self.started.set()
                if failed:
                    await self._after_failure(self.cursor)
                    failed = False
                entries = await self.reader.wait_stream(self.table, self.cursor, BLOCK_MS)
            except asyncio.CancelledError:
                raise
            except Exception as e:  # the store is down or failing: retry, clients stay
                if not failed:
                    logger.warning("reading %s's stream failed: %r", self.table.name, type(e))
                failed = True
                metrics.REDIS_UP.set(0)
                await asyncio.sleep(RETRY_S)
                continue
            metrics.REDIS_UP.set(1)
            self._publish(entries)

    def _publish(self, entries: list[tuple[str, Any]]) -> None:
        for entry_id, fields in entries:
            self.cursor = entry_id
            metrics.observe_push(self.table, wid_of(fields))
            try:
                event = event_of(self.table, entry_id, fields)
            except (ValueError, KeyError, TypeError) as e:
                logger.warning("%s: entry %s cannot be shown: %r", self.table.name, entry_id, e)
                continue
            direct = 0
            for subscriber in list(self.subscribers):
                if not subscriber.offer(event):
                    self.subscribers.discard(subscriber)
                elif subscriber.direct is not None:
                    direct += 1
            if direct:
                self.sent.inc(direct)  # the queued ones count as their clients send them

    async def _tail(self) -> str:
        """The id of the stream's last entry now ("0-0" if empty): where reading starts."""
        after: str | None = None
        last = "0-0"
        while True:
            entries, _ = await self.reader.stream_after(self.table, after, PAGE)
            if entries:
                last = after = entries[-1][0]
            if len(entries) < PAGE:
                return last

    async def _after_failure(self, cursor: str) -> None:
        """Back after a failure: if the stream was trimmed past `cursor`, entries may be
        lost to the clients; drop them all, and they resume (and are told of a gap)."""
        _, first = await self.reader.stream_after(self.table, cursor, 1)
        if first is not None and parse_id(first) > parse_id(cursor) and cursor != "0-0":
            logger.warning(
                "%s's stream was trimmed while unreadable: clients resume", self.table.name
            )
            self.close()
