"""`waxhouse serve`'s HTTP, Server-Sent Events and WebSocket server (aiohttp).

    server = LiveServer(tables, reader, settings.serve, history)
    asyncio.run(server.serve())           # until SIGTERM/SIGINT

    handle = start_in_thread(tables, reader, settings.serve)   # inside a flow's process
    ...
    handle.stop()

Routes (docs/serving.md is the reference):

- `GET /v1/{table}/{key}` (or `/v1/{table}?key=...`): the key's newest row; 404 if none.
- `GET /v1/{table}/top?limit=N`: the newest closed window's top keys.
- `GET /v1/{table}/history/{key}?since=&until=&limit=`: past rows from ClickHouse.
- `GET /v1/{table}/stream`: Server-Sent Events, resumable with `Last-Event-ID`.
- `GET /v1/{table}/ws`: the same events over WebSocket.
- `/healthz`, `/readyz` (the live store answers), `/metrics`.

A request goes: CORS headers for an allowed `Origin` → token (401; streams also take
`?token=`, as `EventSource` cannot send headers) → the table (404) → the store (503 with
`Retry-After` if it fails).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import threading
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import orjson
from aiohttp import WSMsgType, web
from clickhouse_connect.driver.exceptions import ClickHouseError
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

from waxhouse.fields import InvalidField, parse_rfc3339
from waxhouse.gateway.answers import Refused, json_response, refusal
from waxhouse.gateway.limits import CorsPolicy, Tokens, bearer
from waxhouse.livetables import LiveTable
from waxhouse.serve import metrics
from waxhouse.serve.fanout import PAGE, Event, Feed, Subscriber, event_of, http_chunk
from waxhouse.serve.history import EMBEDDED, History, HistoryUnavailable
from waxhouse.serve.store import LiveReader, parse_id
from waxhouse.settings import ServeSettings, host_port

__all__ = ["LiveServer", "ServeHandle", "start_in_thread"]

logger = logging.getLogger(__name__)

OTHER = "other"
KEEPALIVE_S = 15.0
FIRST_FRAME_S = 1.0  # how long a WebSocket waits for {"last_event_id": ...}
RETRY_AFTER_S = 1
STREAMS_RETRY_AFTER_S = 5
MAX_LIMIT = 1000
HISTORY_LIMIT = 100
SHUTDOWN_S = 5.0
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _label(request: web.Request) -> str:
    resource = request.match_info.route.resource
    return OTHER if resource is None else resource.canonical


def parse_time(text: str, name: str) -> int:
    """`since`/`until`: RFC 3339 or epoch milliseconds."""
    if text.isdigit():
        return int(text)
    try:
        return parse_rfc3339(text, name)
    except InvalidField as e:
        raise Refused(400, f"{e} (or epoch milliseconds)") from None


def parse_limit(text: str | None, default: int) -> int:
    if text is None:
        return default
    if not text.isdigit() or not 1 <= int(text) <= MAX_LIMIT:
        raise Refused(400, f"limit must be 1..{MAX_LIMIT}")
    return int(text)


class Sink(Protocol):
    """Where a stream's events go: an SSE response or a WebSocket."""

    async def send(self, event: Event) -> None: ...
    async def gap(self, after: str, first: str) -> None: ...
    async def keepalive(self) -> None: ...


class LiveServer:
    """The server over `tables` (by name), reading `reader`; `history` None: not served."""

    def __init__(
        self,
        tables: Mapping[str, LiveTable],
        reader: LiveReader,
        settings: ServeSettings,
        history: History | None = None,
    ) -> None:
        self.tables = dict(tables)
        self.reader = reader
        self.settings = settings
        self.history = history
        self.tokens = Tokens(settings.tokens)
        self.cors = CorsPolicy(settings.cors_origins)
        self.feeds = {name: Feed(table, reader) for name, table in self.tables.items()}
        self.open_streams = 0
        self.draining = False
        self._tasks: list[asyncio.Task[None]] = []

    # --- the application --------------------------------------------------------------

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._observe])
        get = app.router.add_get
        get("/healthz", self._healthz)
        get("/readyz", self._readyz)
        get("/metrics", self._metrics)
        get("/v1/{table}/top", self._handler(self._top))
        get("/v1/{table}/stream", self._handler(self._sse))
        get("/v1/{table}/ws", self._handler(self._ws))
        get("/v1/{table}/history/{key:.+}", self._handler(self._history))
        get("/v1/{table}", self._handler(self._row))
        get("/v1/{table}/{key:.+}", self._handler(self._row))  # last: a key may hold "/"
        app.router.add_route("OPTIONS", "/{path:.*}", self._preflight)
        app.on_startup.append(self._start_feeds)
        app.on_shutdown.append(self._end_streams)
        app.on_cleanup.append(self._stop_feeds)
        return app

    @web.middleware
    async def _observe(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """Counts and times every HTTP answer by route; adds the CORS headers. A stream
        is counted by its handler when it opens."""
        label = _label(request)
        started = time.perf_counter()
        cors = self.cors.headers(request.headers.get("Origin"))
        try:
            response = await handler(request)
        except web.HTTPException as e:
            metrics.answered(label, e.status).inc()
            e.headers.update(cors)
            raise
        if isinstance(response, web.Response):
            metrics.answered(label, response.status).inc()
            metrics.seconds(label).observe(time.perf_counter() - started)
            if cors:
                response.headers.update(cors)
        return response

    def _handler(self, method: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> Handler:
        async def handle(request: web.Request) -> web.StreamResponse:
            try:
                return await method(request)
            except Refused as refused:
                return refusal(refused)

        return handle

    async def _preflight(self, request: web.Request) -> web.Response:
        headers = self.cors.preflight(request.headers.get("Origin"))
        if headers is None:
            return json_response(403, {"error": "this origin is not allowed (SERVE_CORS_ORIGINS)"})
        headers["Access-Control-Allow-Methods"] = "GET, OPTIONS"
        headers["Access-Control-Allow-Headers"] = "Authorization, Last-Event-ID"
        return web.Response(status=204, headers=headers)

    async def _healthz(self, _request: web.Request) -> web.Response:
        return json_response(200, {"status": "ok"})

    async def _readyz(self, _request: web.Request) -> web.Response:
        if self.draining:
            return json_response(503, {"status": "shutting down"})
        up = await self.reader.ping()
        metrics.REDIS_UP.set(1 if up else 0)
        if not up:
            return json_response(503, {"status": "the live store does not answer"})
        return json_response(200, {"status": "ready"})

    async def _metrics(self, _request: web.Request) -> web.Response:
        response = web.Response(body=generate_latest(REGISTRY))
        response.headers["Content-Type"] = CONTENT_TYPE_LATEST
        return response

    def _authorize(self, request: web.Request, *, query: bool = False) -> None:
        token = bearer(request.headers.get("Authorization"))
        if token is None and query:
            token = request.query.get("token")
        if self.tokens.caller(token) is None:
            raise Refused(401, "a valid bearer token is required")

    def _table(self, request: web.Request) -> LiveTable:
        table = self.tables.get(request.match_info["table"])
        if table is None:
            raise Refused(404, f"no live table {request.match_info['table']!r}")
        return table

    async def _read(self, reading: Awaitable[Any]) -> Any:
        try:
            return await reading
        except Exception as e:  # the store's client errors: which ones depends on the store
            logger.warning("reading the live store failed: %r", type(e))
            metrics.REDIS_UP.set(0)
            raise Refused(503, "the live store is unreachable", RETRY_AFTER_S) from None

    # --- lookups ---------------------------------------------------------------------

    async def _row(self, request: web.Request) -> web.Response:
        self._authorize(request)
        table = self._table(request)
        key = request.match_info.get("key") or request.query.get("key")
        if not key:
            raise Refused(400, "which key? /v1/{table}/{key} or /v1/{table}?key=...")
        row = await self._read(self.reader.newest_row(table, table.kid_of(key)))
        if row is None:
            raise Refused(404, f"no row of {table.name} for key {key!r}")
        return json_response(200, row)

    async def _top(self, request: web.Request) -> web.Response:
        self._authorize(request)
        table = self._table(request)
        if table.live.top_by is None:
            raise Refused(404, f"{table.name} keeps no top (live top_by)")
        limit = parse_limit(request.query.get("limit"), table.live.top)
        top = await self._read(self.reader.top(table, limit))
        if top is None:
            raise Refused(404, f"no window of {table.name} has closed yet")
        return json_response(200, top)

    async def _history(self, request: web.Request) -> web.Response:
        self._authorize(request)
        table = self._table(request)
        query = request.query
        since = parse_time(query["since"], "since") if "since" in query else None
        until = parse_time(query["until"], "until") if "until" in query else None
        limit = parse_limit(query.get("limit"), HISTORY_LIMIT)
        if self.history is None:  # serving inside a flow, which holds the embedded store
            raise Refused(503, EMBEDDED)
        try:
            rows = await self.history.rows(table, request.match_info["key"], since, until, limit)
        except HistoryUnavailable as e:
            raise Refused(503, str(e)) from None
        except ValueError as e:
            raise Refused(400, str(e)) from None
        except (ClickHouseError, OSError) as e:
            logger.warning("a history query failed: %r", type(e))
            raise Refused(
                503, "ClickHouse did not answer the history query", RETRY_AFTER_S
            ) from None
        return json_response(
            200, {"table": table.name, "key": request.match_info["key"], "rows": rows}
        )

    # --- streams ---------------------------------------------------------------------

    def _stream_start(self, request: web.Request) -> tuple[LiveTable, str | None]:
        self._authorize(request, query=True)
        table = self._table(request)
        last = request.headers.get("Last-Event-ID") or request.query.get("last_event_id")
        if last is not None:
            last = last.strip()
            try:
                parse_id(last)
            except ValueError:
                raise Refused(400, f"Last-Event-ID {last!r} is no event id") from None
        if self.draining:
            raise Refused(503, "shutting down", STREAMS_RETRY_AFTER_S)
        if self.open_streams >= self.settings.max_streams:
            raise Refused(503, "too many open streams (SERVE_MAX_STREAMS)", STREAMS_RETRY_AFTER_S)
        return table, last

    async def _sse(self, request: web.Request) -> web.StreamResponse:
        table, last = self._stream_start(request)
        response = web.StreamResponse(
            headers={
                "Content-Type": "text/event-stream",
                "Cache-Control": "no-cache",
                "X-Accel-Buffering": "no",
                **self.cors.headers(request.headers.get("Origin")),
            }
        )
        response.enable_chunked_encoding()  # what the direct writes frame their events as
        await response.prepare(request)
        with self._open(request, "sse"):
            sink = _SseSink(response)
            with contextlib.suppress(ConnectionError, RuntimeError):
                await response.write(b": waxhouse\n\n")  # the client knows it is connected
                await self._pump(table, last, sink, _DirectSse(request.transport))
        return response

    async def _ws(self, request: web.Request) -> web.StreamResponse:
        table, last = self._stream_start(request)
        ws = web.WebSocketResponse(heartbeat=KEEPALIVE_S)
        await ws.prepare(request)
        with self._open(request, "ws"):
            subscriber = self.feeds[table.name].subscribe()  # "from now" is from connecting
            if last is None:
                try:
                    last = await _first_frame(ws)
                except Refused as refused:
                    self.feeds[table.name].unsubscribe(subscriber)
                    await ws.close(code=1008, message=refused.error.encode()[:120])
                    return ws
            pump = asyncio.create_task(self._pump(table, last, _WsSink(ws), subscriber=subscriber))
            reading = asyncio.create_task(_until_closed(ws))
            with contextlib.suppress(ConnectionError, RuntimeError):
                await asyncio.wait((pump, reading), return_when=asyncio.FIRST_COMPLETED)
            for task in (pump, reading):
                task.cancel()
            await asyncio.gather(pump, reading, return_exceptions=True)
            await ws.close()
        return ws

    @contextlib.contextmanager
    def _open(self, request: web.Request, transport: str) -> Any:
        label = _label(request)
        metrics.answered(label, 200).inc()
        gauge = metrics.streams(transport)
        gauge.inc()
        self.open_streams += 1
        try:
            yield
        finally:
            self.open_streams -= 1
            gauge.dec()

    async def _pump(
        self,
        table: LiveTable,
        last: str | None,
        sink: Sink,
        direct: _DirectSse | None = None,
        subscriber: Subscriber | None = None,
    ) -> None:
        """Catch up after `last` (if given), then live: each event once, in id order.
        Returns when the client is dropped (too slow, or shutting down) or the store
        fails while catching up; the client resumes with its last id."""
        feed = self.feeds[table.name]
        if subscriber is None:
            subscriber = feed.subscribe()
        counted = metrics.events(table.name)
        try:
            await feed.started.wait()
            sent = None if last is None else parse_id(last)
            if last is not None:
                try:
                    sent = await self._catch_up(table, last, subscriber, sink, counted)
                except (ConnectionError, RuntimeError):
                    raise  # the client went away
                except Exception as e:  # the store's errors: which ones depends on the store
                    logger.warning("catching a stream up failed: %r", type(e))
                    return
            if direct is None:
                await self._follow(subscriber, sink, sent, counted)
            else:
                await self._follow_direct(subscriber, sink, sent, counted, direct)
        finally:
            feed.unsubscribe(subscriber)

    async def _catch_up(
        self, table: LiveTable, last: str, subscriber: Subscriber, sink: Sink, counted: Any
    ) -> tuple[int, int]:
        sent = parse_id(last)
        after, first_page = last, True
        while not subscriber.dropped:
            entries, first = await self.reader.stream_after(table, after, PAGE)
            if first_page and first is not None and sent > (0, 0) and parse_id(first) > sent:
                await sink.gap(last, first)  # entries after `last` may have been trimmed
            first_page = False
            for entry_id, fields in entries:
                event = event_of(table, entry_id, fields)
                await sink.send(event)
                counted.inc()
                sent = event.order
            if len(entries) < PAGE:
                break
            after = entries[-1][0]
        return sent

    async def _follow(
        self, subscriber: Subscriber, sink: Sink, sent: tuple[int, int] | None, counted: Any
    ) -> None:
        queue = subscriber.queue
        while True:
            try:
                async with asyncio.timeout(KEEPALIVE_S):  # no task per wait, as wait_for makes
                    event = await queue.get()
            except TimeoutError:
                await sink.keepalive()
                continue
            if event is None or subscriber.dropped:
                return  # too slow, or shutting down: the client resumes
            if sent is not None and event.order <= sent:
                continue
            await sink.send(event)
            counted.inc()
            sent = event.order

    async def _follow_direct(
        self,
        subscriber: Subscriber,
        sink: Sink,
        sent: tuple[int, int] | None,
        counted: Any,
        direct: _DirectSse,
    ) -> None:
        """Send what queued while catching up; then let the feed write each event to the
        connection itself (`Subscriber.direct`), and only keep the connection alive here."""
        queue = subscriber.queue
        while not queue.empty():
            event = queue.get_nowait()
            if event is None or subscriber.dropped:
                return
            if sent is not None and event.order <= sent:
                continue
            await sink.send(event)
            counted.inc()
            sent = event.order
        # Nothing awaited since the queue was found empty: no event can fall in between.
        direct.sent = sent
        subscriber.direct = direct
        while not subscriber.dropped:
            await asyncio.wait((subscriber.closed,), timeout=KEEPALIVE_S)
            if not subscriber.dropped and not direct.keepalive():
                subscriber.drop()

    # --- lifecycle -------------------------------------------------------------------

    async def _start_feeds(self, _app: web.Application) -> None:
        self._tasks = [asyncio.create_task(feed.run()) for feed in self.feeds.values()]

    async def _end_streams(self, _app: web.Application) -> None:
        self.draining = True
        for feed in self.feeds.values():
            feed.close()

    async def _stop_feeds(self, _app: web.Application) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def start(self) -> tuple[web.AppRunner, str]:
        """Listen on SERVE_LISTEN; the runner (to `cleanup()`) and the address bound."""
        host, port = host_port(self.settings.listen, "SERVE_LISTEN")
        runner = web.AppRunner(
            self.app(), access_log=None, handle_signals=False, shutdown_timeout=SHUTDOWN_S
        )
        await runner.setup()
        site = web.TCPSite(runner, host, port, backlog=4096)
        await site.start()
        bound = runner.addresses[0][1] if runner.addresses else port  # port 0: the one taken
        return runner, f"{host}:{bound}"

    async def serve(self, ready: Callable[[str], None] | None = None) -> None:
        """Serve until SIGTERM or SIGINT; then end the streams (clients resume) and stop."""
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        runner, address = await self.start()
        logger.info("serve listening on %s: tables %s", address, ", ".join(self.tables))
        if ready is not None:
            ready(address)
        await stop.wait()
        logger.info("stopping: ending the streams")
        await runner.cleanup()
        logger.info("serve stopped")


class _SseSink:
    __slots__ = ("response",)

    def __init__(self, response: web.StreamResponse) -> None:
        self.response = response

    async def send(self, event: Event) -> None:
        await self.response.write(event.sse)

    async def gap(self, after: str, first: str) -> None:
        data = orjson.dumps({"after": after, "first": first})
        await self.response.write(b"event: gap\ndata: %s\n\n" % data)

    async def keepalive(self) -> None:
        await self.response.write(b": keepalive\n\n")


DIRECT_BUFFER_BYTES = 1 << 20  # a direct client's unsent bytes before it is dropped
KEEPALIVE_CHUNK = http_chunk(b": keepalive\n\n")


class _DirectSse:
    """Writes events to one SSE client's connection from the feed, in the HTTP chunks
    its response is framed in; skips those it already sent (the catch-up may have read
    past the feed). False when the connection is gone or holds too much unsent."""

    __slots__ = ("sent", "transport")

    def __init__(self, transport: asyncio.Transport | None) -> None:
        self.transport = transport
        self.sent: tuple[int, int] | None = None

    def _writable(self) -> asyncio.Transport | None:
        transport = self.transport
        if transport is None or transport.is_closing():
            return None
        if transport.get_write_buffer_size() > DIRECT_BUFFER_BYTES:
            transport.abort()  # too slow: cut it off now (it resumes), not after a drain
            return None
        return transport

    def __call__(self, event: Event) -> bool:
        if self.sent is not None and event.order <= self.sent:
            return True
        transport = self._writable()
        if transport is None:
            return False
        transport.write(event.chunk)
        self.sent = event.order
        return True

    def keepalive(self) -> bool:
        transport = self._writable()
        if transport is None:
            return False
        transport.write(KEEPALIVE_CHUNK)
        return True


class _WsSink:
    __slots__ = ("ws",)

    def __init__(self, ws: web.WebSocketResponse) -> None:
        self.ws = ws

    async def send(self, event: Event) -> None:
        await self.ws.send_str(event.ws)

    async def gap(self, after: str, first: str) -> None:
        gap = {"id": None, "event": "gap", "data": {"after": after, "first": first}}
        await self.ws.send_str(orjson.dumps(gap).decode())

    async def keepalive(self) -> None:
        pass  # the WebSocket's own pings (heartbeat)


async def _first_frame(ws: web.WebSocketResponse) -> str | None:
    """The id in a first frame `{"last_event_id": "..."}` sent within `FIRST_FRAME_S`;
    None if none came (or it names none)."""
    try:
        message = await ws.receive(timeout=FIRST_FRAME_S)
    except TimeoutError:
        return None
    if message.type not in (WSMsgType.TEXT, WSMsgType.BINARY):
        return None
    try:
        frame = orjson.loads(message.data)
    except orjson.JSONDecodeError:
        raise Refused(400, 'the first frame is {"last_event_id": "..."}') from None
    last = frame.get("last_event_id") if type(frame) is dict else None
    if last is None:
        return None
    if type(last) is not str:
        raise Refused(400, "last_event_id is a string")
    try:
        parse_id(last)
    except ValueError:
        raise Refused(400, f"last_event_id {last!r} is no event id") from None
    return last


async def _until_closed(ws: web.WebSocketResponse) -> None:
    async for _message in ws:
        pass  # a client sends nothing more; its close ends the loop


# --- in a flow's process --------------------------------------------------------------


@dataclass
class ServeHandle:
    """A `LiveServer` running on its own event loop in a daemon thread."""

    address: str
    loop: asyncio.AbstractEventLoop
    thread: threading.Thread
    _stop: asyncio.Event

    def stop(self, timeout: float = SHUTDOWN_S + 5) -> None:
        """End the streams, stop listening, wait for the thread (at most `timeout` s)."""
        if self.thread.is_alive():
            self.loop.call_soon_threadsafe(self._stop.set)
            self.thread.join(timeout)


def start_in_thread(
    tables: Mapping[str, LiveTable], reader: LiveReader, settings: ServeSettings
) -> ServeHandle:
    """Serve `tables` from `reader` on SERVE_LISTEN in a daemon thread (history is not
    served: the flow's process holds the store). Returns once listening; raises what
    starting raised (an address in use, ...)."""
    loop = asyncio.new_event_loop()
    started: dict[str, Any] = {}
    ready = threading.Event()

    async def main() -> None:
        stop = asyncio.Event()
        started["stop"] = stop
        server = LiveServer(tables, reader, settings, history=None)
        try:
            runner, started["address"] = await server.start()
        except BaseException as e:
            started["error"] = e
            ready.set()
            return
        ready.set()
        await stop.wait()
        await runner.cleanup()

    def run() -> None:
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(main())
        finally:
            loop.close()

    thread = threading.Thread(target=run, name="waxhouse-serve", daemon=True)
    thread.start()
    ready.wait()
    if "error" in started:
        thread.join()
        raise started["error"]
    logger.info("serving live tables on %s (in process): %s", started["address"], ", ".join(tables))
    return ServeHandle(started["address"], loop, thread, started["stop"])
