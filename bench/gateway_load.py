"""The gateway benchmark's load client: cheap, so that it is not what it measures.

One `Load` runs in a process of its own (`run_load`, for a spawn pool): an asyncio loop of
`asyncio.Protocol` connections to the gateway, with no HTTP or WebSocket library. Each
request is precomputed bytes but for one `bytes.replace` that makes its `event_id`s unique
(`"event_id":"` + a per-use prefix), and each answer is parsed only as far as the status
line, `Content-Length` and the small JSON body. Three ways to load:

- `closed`: `connections` keep-alive HTTP/1.1 connections, each sending its next request
  as soon as the answer to the last one is read (one outstanding request per connection);
- `open`: requests at a fixed `rate` (per second), on the first idle connection of a pool
  or queued until one is idle; latency runs from the time a request was due, so a slow
  answer delays the requests behind it in the numbers too (no coordinated omission);
- `ws`: `connections` WebSocket connections, each keeping `in_flight` frames
  `{"seq": n, "events": [...]}` unacknowledged; client frames carry the all-zero mask (a
  valid mask key: the server unmasks as it would any other, the client saves the XOR).

Only answers completed inside the measured window (`warmup` seconds after `start_at`, for
`seconds`) count; the client's own CPU time over that window is measured too.
"""

from __future__ import annotations

import asyncio
import base64
import os
import resource
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import orjson

Mode = Literal["closed", "open", "ws"]
_MARK = b'"event_id":"'


@dataclass(frozen=True)
class Load:
    """What one client process sends. `bodies` are JSON request bodies (for `ws`, the
    events array of a frame), `events[i]` how many events `bodies[i]` holds."""

    mode: Mode
    host: str
    port: int
    path: str
    bodies: list[bytes]
    events: list[int]
    content_type: str = "application/json"
    token: str | None = None
    connections: int = 16
    in_flight: int = 1
    rate: float = 0.0
    start_at: float = 0.0  # time.time() at which every client process starts sending
    warmup: float = 2.0
    seconds: float = 10.0
    tag: str = "x"  # unique per client process and run: the event_id prefix's start


@dataclass
class Result:
    """What one client process saw in its measured window."""

    answers: int = 0
    accepted: int = 0
    rejected: int = 0
    statuses: Counter[str] = field(default_factory=Counter)
    latencies_ms: list[float] = field(default_factory=list)
    cpu_s: float = 0.0
    window_s: float = 0.0
    late_s: float = 0.0  # open loop: how far behind its schedule the client fell, at most
    errors: list[str] = field(default_factory=list)


class _Driver:
    """The bodies, the unique ids, the window and the tally shared by all connections."""

    def __init__(self, load: Load) -> None:
        self.load = load
        self.result = Result()
        self.used = 0
        self.window_from = 0.0  # perf_counter
        self.window_to = 0.0
        self.stop_at = 0.0
        auth = f"Authorization: Bearer {load.token}\r\n" if load.token else ""
        self._head = (
            f"POST {load.path} HTTP/1.1\r\nHost: {load.host}:{load.port}\r\n{auth}"
            f"Content-Type: {load.content_type}\r\nContent-Length: "
        ).encode()

    def next_body(self) -> tuple[bytes, int]:
        """The next body with unique event_ids, and its number of events."""
        i = self.used % len(self.load.bodies)
        prefix = b'"event_id":"%s%x-' % (self.load.tag.encode(), self.used // len(self.load.bodies))
        self.used += 1
        return self.load.bodies[i].replace(_MARK, prefix), self.load.events[i]

    def request(self) -> tuple[bytes, int]:
        body, events = self.next_body()
        return self._head + b"%d\r\n\r\n" % len(body) + body, events

    def done(self, sent: float, status: int, body: bytes) -> None:
        now = time.perf_counter()
        if not self.window_from <= now < self.window_to:
            return
        result = self.result
        result.answers += 1
        result.statuses[str(status)] += 1
        result.latencies_ms.append((now - sent) * 1000.0)
        if status == 200:
            answer = orjson.loads(body)
            result.accepted += answer["accepted"]
            result.rejected += len(answer["rejected"])

    def error(self, text: str) -> None:
        if len(self.result.errors) < 20:
            self.result.errors.append(text)


class _Http(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection with at most one request outstanding."""

    def __init__(self, driver: _Driver, on_idle: Callable[[_Http], None]) -> None:
        self.driver = driver
        self.on_idle = on_idle  # called with this connection when its answer is read
        self.buffer = bytearray()
        self.transport: asyncio.Transport | None = None
        self.sent = 0.0
        self.closed = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def send(self, due: float | None = None) -> None:
        request, _ = self.driver.request()
        self.sent = time.perf_counter() if due is None else due
        assert self.transport is not None
        self.transport.write(request)

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
                body = bytes(self.buffer[start : start + length])
                del self.buffer[: start + length]
            elif b"transfer-encoding: chunked" in head:
                parsed = _chunked(self.buffer, start)
                if parsed is None:
                    return
                body, stop_at = parsed
                del self.buffer[:stop_at]
            else:
                body = b""
                del self.buffer[:start]
            status = int(head[9:12])
            self.driver.done(self.sent, status, body)
            self.on_idle(self)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed.done():
            self.closed.set_result(exc)


def _chunked(buffer: bytearray, start: int) -> tuple[bytes, int] | None:
    """A chunked body from `start`, and where it ends; None while incomplete."""
    parts = []
    at = start
    while True:
        line_end = buffer.find(b"\r\n", at)
        if line_end < 0:
            return None
        size = int(bytes(buffer[at:line_end]).split(b";")[0], 16)
        if len(buffer) < line_end + 2 + size + 2:
            return None
        parts.append(bytes(buffer[line_end + 2 : line_end + 2 + size]))
        at = line_end + 2 + size + 2
        if size == 0:
            return b"".join(parts), at


class _WebSocket(asyncio.Protocol):
    """One WebSocket connection keeping `in_flight` frames unacknowledged."""

    def __init__(self, driver: _Driver) -> None:
        self.driver = driver
        self.buffer = bytearray()
        self.transport: asyncio.Transport | None = None
        self.upgraded = False
        self.seq = 0
        self.sent: dict[int, float] = {}
        self.closed = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        load = self.driver.load
        key = base64.b64encode(os.urandom(16)).decode()
        auth = f"Authorization: Bearer {load.token}\r\n" if load.token else ""
        transport.write(
            (
                f"GET {load.path} HTTP/1.1\r\nHost: {load.host}:{load.port}\r\n{auth}"
                "Upgrade: websocket\r\nConnection: Upgrade\r\n"
                f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
            ).encode()
        )

    def fill(self) -> None:
        now = time.perf_counter()
        if now >= self.driver.stop_at:
            return
        assert self.transport is not None
        while len(self.sent) < self.driver.load.in_flight:
            events, _ = self.driver.next_body()
            self.seq += 1
            payload = b'{"seq":%d,"events":%s}' % (self.seq, events)
            self.sent[self.seq] = now
            self.transport.write(_frame(0x1, payload))

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if not self.upgraded:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            if not self.buffer.startswith(b"HTTP/1.1 101"):
                self.driver.error(bytes(self.buffer[: end + 4]).decode(errors="replace"))
                assert self.transport is not None
                self.transport.close()
                return
            del self.buffer[: end + 4]
            self.upgraded = True
            self.fill()
        buffer = self.buffer
        while len(buffer) >= 2:
            opcode = buffer[0] & 0x0F
            length = buffer[1] & 0x7F
            at = 2
            if length == 126:
                if len(buffer) < 4:
                    return
                length, at = int.from_bytes(buffer[2:4], "big"), 4
            elif length == 127:
                if len(buffer) < 10:
                    return
                length, at = int.from_bytes(buffer[2:10], "big"), 10
            if len(buffer) < at + length:
                return
            payload = bytes(buffer[at : at + length])
            del buffer[: at + length]
            if opcode in (0x1, 0x2):
                self._answer(payload)
            elif opcode == 0x9:  # ping
                assert self.transport is not None
                self.transport.write(_frame(0xA, payload))
            elif opcode == 0x8:
                self.driver.error(f"closed by the server: {payload!r}")
                assert self.transport is not None
                self.transport.close()
                return
        self.fill()

    def _answer(self, payload: bytes) -> None:
        answer = orjson.loads(payload)
        seq = answer.get("ack")
        if seq is None:
            self.driver.error(f"not an ack: {payload[:200]!r}")
            seq = answer.get("seq")
            sent = self.sent.pop(seq, time.perf_counter())
            self.driver.done(sent, int(answer.get("status", 599)), b"")
            return
        self.driver.done(self.sent.pop(seq), 200, payload)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed.done():
            self.closed.set_result(exc)


def _frame(opcode: int, payload: bytes) -> bytes:
    """A final, masked client frame with the mask key 0 (the payload unchanged)."""
    n = len(payload)
    if n < 126:
        head = bytes((0x80 | opcode, 0x80 | n))
    elif n < 65536:
        head = bytes((0x80 | opcode, 0x80 | 126)) + n.to_bytes(2, "big")
    else:
        head = bytes((0x80 | opcode, 0x80 | 127)) + n.to_bytes(8, "big")
    return head + b"\x00\x00\x00\x00" + payload


async def _run(load: Load) -> Result:
    loop = asyncio.get_running_loop()
    driver = _Driver(load)
    delay = load.start_at - time.time()
    if delay > 0:
        await asyncio.sleep(delay)
    begin = time.perf_counter()
    driver.window_from = begin + load.warmup
    driver.window_to = driver.window_from + load.seconds
    driver.stop_at = driver.window_to
    usage: list[resource.struct_rusage] = []
    loop.call_at(loop.time() + load.warmup, lambda: usage.append(resource.getrusage(0)))
    loop.call_at(
        loop.time() + load.warmup + load.seconds, lambda: usage.append(resource.getrusage(0))
    )

    if load.mode == "ws":
        sockets = [
            (await loop.create_connection(lambda: _WebSocket(driver), load.host, load.port))[1]
            for _ in range(load.connections)
        ]
        await asyncio.sleep(max(0.0, driver.stop_at - time.perf_counter()) + 0.05)
        closing = [s.closed for s in sockets]
    else:
        idle: deque[_Http] = deque()
        backlog: deque[float] = deque()

        def closed_idle(connection: _Http) -> None:
            if time.perf_counter() < driver.stop_at:
                connection.send()

        def open_idle(connection: _Http) -> None:
            if backlog:
                connection.send(backlog.popleft())
            else:
                idle.append(connection)

        on_idle = closed_idle if load.mode == "closed" else open_idle
        connections: list[_Http] = [
            (await loop.create_connection(lambda: _Http(driver, on_idle), load.host, load.port))[1]
            for _ in range(load.connections)
        ]
        if load.mode == "closed":
            for connection in connections:
                connection.send()
        else:
            idle.extend(connections)
            interval = 1.0 / load.rate
            due = time.perf_counter()
            while due < driver.stop_at:
                now = time.perf_counter()
                if due > now:
                    await asyncio.sleep(due - now)
                now = time.perf_counter()
                while due <= now and due < driver.stop_at:  # every request now due
                    driver.result.late_s = max(driver.result.late_s, now - due)
                    if idle:
                        idle.popleft().send(due)
                    else:
                        backlog.append(due)
                    due += interval
        await asyncio.sleep(max(0.0, driver.stop_at - time.perf_counter()) + 0.05)
        closing = [c.closed for c in connections]
        for connection in connections:
            assert connection.transport is not None
            connection.transport.close()
    if len(usage) == 2:
        before, after = usage
        driver.result.cpu_s = (after.ru_utime + after.ru_stime) - (
            before.ru_utime + before.ru_stime
        )
    driver.result.window_s = load.seconds
    if load.mode == "ws":
        for s in sockets:
            assert s.transport is not None
            s.transport.close()
    await asyncio.wait(closing, timeout=5)
    return driver.result


def run_load(load: Load) -> Result:
    """One client process's run (the target of a spawn pool)."""
    return asyncio.run(_run(load))
