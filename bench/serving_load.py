"""The serving benchmark's clients: key lookups and Server-Sent Events watchers.

Like `bench.gateway_load`, cheap so that they are not what they measure: `asyncio.Protocol`
connections with no HTTP library, requests precomputed bytes, answers parsed only as far
as the status line and `Content-Length`. Each runs in a process of its own (spawn).

- `Lookups` (`run_lookups`): `GET` requests over a list of paths, in turn, on
  `connections` keep-alive connections; `closed` sends each connection's next request as
  soon as its answer is read, `open` sends at a fixed `rate` (latency from when a request
  was due, so a slow answer delays those behind it in the numbers too).
- `Watch` (`run_watchers`): `connections` SSE connections to one path, opened in steps;
  each event's `id:` and the wall-clock time (`time.time()`, comparable across processes
  on one machine) it was read, kept per connection until `stop` is set.
"""

from __future__ import annotations

import asyncio
import functools
import resource
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from bench.gateway_load import _chunked


@dataclass(frozen=True)
class Lookups:
    """What one lookup client process sends."""

    mode: Literal["closed", "open"]
    host: str
    port: int
    paths: list[str]
    token: str
    connections: int = 32
    rate: float = 0.0  # open: requests per second
    start_at: float = 0.0  # time.time() at which every client process starts
    warmup: float = 2.0
    seconds: float = 10.0


@dataclass
class LookupResult:
    answers: int = 0
    statuses: Counter[str] = field(default_factory=Counter)
    latencies_ms: list[float] = field(default_factory=list)
    cpu_s: float = 0.0
    late_s: float = 0.0  # open: how far behind its schedule the client fell, at most
    errors: list[str] = field(default_factory=list)


class _Get(asyncio.Protocol):
    """One keep-alive connection with at most one request outstanding."""

    def __init__(self, requests: list[bytes], done: Callable[[_Get, float, int], None]) -> None:
        self.requests = requests
        self.done = done
        self.buffer = bytearray()
        self.transport: asyncio.Transport | None = None
        self.sent = 0.0
        self.next = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def send(self, due: float | None = None) -> None:
        self.sent = time.perf_counter() if due is None else due
        assert self.transport is not None
        self.transport.write(self.requests[self.next % len(self.requests)])
        self.next += 1

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while True:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(self.buffer[:end]).lower()
            start = end + 4
            at = head.find(b"content-length:")
            if at >= 0:
                stop = head.find(b"\r\n", at)
                length = int(head[at + 15 : stop if stop >= 0 else None])
                if len(self.buffer) < start + length:
                    return
                del self.buffer[: start + length]
            elif b"transfer-encoding: chunked" in head:
                parsed = _chunked(self.buffer, start)
                if parsed is None:
                    return
                del self.buffer[: parsed[1]]
            else:
                del self.buffer[:start]
            self.done(self, self.sent, int(head[9:12]))


async def _lookups(load: Lookups) -> LookupResult:
    loop = asyncio.get_running_loop()
    result = LookupResult()
    head = f"Host: {load.host}:{load.port}\r\nAuthorization: Bearer {load.token}\r\n\r\n"
    requests = [f"GET {path} HTTP/1.1\r\n{head}".encode() for path in load.paths]
    delay = load.start_at - time.time()
    if delay > 0:
        await asyncio.sleep(delay)
    begin = time.perf_counter()
    window_from, window_to = begin + load.warmup, begin + load.warmup + load.seconds
    usage: list[resource.struct_rusage] = []
    for at in (load.warmup, load.warmup + load.seconds):
        loop.call_at(loop.time() + at, lambda: usage.append(resource.getrusage(0)))
    idle: deque[_Get] = deque()
    backlog: deque[float] = deque()

    def done(connection: _Get, sent: float, status: int) -> None:
        now = time.perf_counter()
        if window_from <= now < window_to:
            result.answers += 1
            result.statuses[str(status)] += 1
            result.latencies_ms.append((now - sent) * 1000.0)
        if now >= window_to:
            return
        if load.mode == "closed":
            connection.send()
        elif backlog:
            connection.send(backlog.popleft())
        else:
            idle.append(connection)

    connections: list[_Get] = []
    for k in range(load.connections):
        shifted = requests[k * 7 % len(requests) :] + requests[: k * 7 % len(requests)]
        _, connection = await loop.create_connection(
            functools.partial(_Get, shifted, done), load.host, load.port
        )
        connections.append(connection)
    if load.mode == "closed":
        for connection in connections:
            connection.send()
    else:
        idle.extend(connections)
        interval = 1.0 / load.rate
        due = time.perf_counter()
        while due < window_to:
            now = time.perf_counter()
            if due > now:
                await asyncio.sleep(due - now)
            now = time.perf_counter()
            while due <= now and due < window_to:
                result.late_s = max(result.late_s, now - due)
                if idle:
                    idle.popleft().send(due)
                else:
                    backlog.append(due)
                due += interval
    await asyncio.sleep(max(0.0, window_to - time.perf_counter()) + 0.1)
    for connection in connections:
        assert connection.transport is not None
        connection.transport.close()
    if len(usage) == 2:
        before, after = usage
        result.cpu_s = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    return result


def run_lookups(load: Lookups) -> LookupResult:
    """One lookup client process's run (the target of a spawn pool)."""
    return asyncio.run(_lookups(load))


# --- Server-Sent Events --------------------------------------------------------------------


@dataclass(frozen=True)
class Watch:
    """What one watcher process opens."""

    host: str
    port: int
    path: str
    token: str
    connections: int
    step: int = 250  # connections opened at once, then a pause
    pause_s: float = 0.05


@dataclass
class WatchResult:
    """Per connection that was answered 200: the events read, `(id, time.time())`."""

    opened: int = 0  # answered 200 with the stream's comment
    refused: Counter[str] = field(default_factory=Counter)  # other statuses, errors
    lost: int = 0  # connections closed before the end
    seen: list[list[tuple[str, float]]] = field(default_factory=list)
    cpu_s: float = 0.0


class _Sse(asyncio.Protocol):
    def __init__(self, result: WatchResult, request: bytes) -> None:
        self.result = result
        self.request = request
        self.buffer = bytearray()
        self.head_done = False
        self.events: list[tuple[str, float]] = []
        self.ready: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        transport.write(self.request)

    def data_received(self, data: bytes) -> None:
        now = time.time()
        self.buffer += data
        if not self.head_done:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            status = bytes(self.buffer[9:12]).decode()
            if status != "200":
                self.result.refused[status] += 1
                self._settle(False)
                assert self.transport is not None
                self.transport.close()
                return
            self.head_done = True
            del self.buffer[: end + 4]
        # The body is chunked: an event's lines may be split across chunks, so look for
        # ids anywhere in the raw bytes (chunk sizes are hex digits on lines of their own).
        buffer = self.buffer
        while True:
            at = buffer.find(b"id: ")
            if at < 0:
                if len(buffer) > 64:
                    del buffer[:-64]
                return
            end = buffer.find(b"\n", at)
            if end < 0:
                del buffer[:at]
                return
            self.events.append((bytes(buffer[at + 4 : end]).decode(), now))
            del buffer[: end + 1]
            if not self.ready.done():
                self._settle(True)
            continue

    def _settle(self, ok: bool) -> None:
        if not self.ready.done():
            self.ready.set_result(ok)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.head_done:
            self.result.lost += 1
        self._settle(False)


async def _watch(watch: Watch, stop: Any, connected: Any) -> WatchResult:
    loop = asyncio.get_running_loop()
    result = WatchResult()
    request = (
        f"GET {watch.path} HTTP/1.1\r\nHost: {watch.host}:{watch.port}\r\n"
        f"Authorization: Bearer {watch.token}\r\nAccept: text/event-stream\r\n\r\n"
    ).encode()
    clients: list[_Sse] = []
    for first in range(0, watch.connections, watch.step):
        for _ in range(first, min(first + watch.step, watch.connections)):
            try:
                _, client = await loop.create_connection(
                    lambda: _Sse(result, request), watch.host, watch.port
                )
                clients.append(client)
            except OSError as e:
                result.refused[type(e).__name__] += 1
        await asyncio.sleep(watch.pause_s)
    # Answered once the head and the stream's opening comment are read.
    deadline = loop.time() + 60
    while loop.time() < deadline and not all(c.head_done or c.ready.done() for c in clients):
        await asyncio.sleep(0.1)
    result.opened = sum(1 for c in clients if c.head_done)
    connected.put(result.opened)
    usage0 = resource.getrusage(0)
    while not stop.is_set():
        await asyncio.sleep(0.1)
    usage1 = resource.getrusage(0)
    result.cpu_s = usage1.ru_utime + usage1.ru_stime - usage0.ru_utime - usage0.ru_stime
    result.seen = [c.events for c in clients if c.head_done]
    lost_before = result.lost
    for client in clients:
        if client.transport is not None:
            client.transport.close()
    await asyncio.sleep(0.2)
    result.lost = lost_before
    return result


def run_watchers(watch: Watch, stop: Any, connected: Any, results: Any) -> None:
    """One watcher process: opens its connections, puts how many were answered on
    `connected`, reads until `stop` (a multiprocessing Event) is set, then puts its
    `WatchResult` on `results`."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 65_536)), hard))
    results.put(asyncio.run(_watch(watch, stop, connected)))
