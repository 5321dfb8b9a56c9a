"""Which server library for the gateway: aiohttp against a raw ASGI app on uvicorn.

    python -m bench.gateway_servers [--rounds 3] [--seconds 6] [--inflight 64]

Both servers run the same handler in their own process on one asyncio loop (no uvloop):
read the body, `orjson.loads` it, answer `{"accepted": n, "rejected": []}`. No Kafka: this
measures what the library costs per request and per WebSocket frame, not the gateway.
uvicorn runs with `http="httptools"` and `ws="websockets"` (its fastest pure-asyncio
choices).

The load client is one process of its own: `--inflight` keep-alive HTTP/1.1 connections,
each sending its next request as soon as the answer arrives (hand-written on asyncio
streams, so the client costs less than either server); for WebSocket, 4 connections with
16 frames of 100 events each in flight per connection (aiohttp's client for both
servers). Each scenario runs `--rounds` times, the servers alternating, and the medians are
reported; the results go to `bench/results/gateway-servers.md`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results" / "gateway-servers.md"
SERVERS = ("aiohttp", "uvicorn")
WS_CONNECTIONS = 4
WS_INFLIGHT = 16


def sample_event(i: int) -> dict[str, Any]:
    return {
        "event_id": f"e-{i:012d}",
        "user_id": f"u-{i % 5000:06d}",
        "type": "page_view",
        "page": "/products/shoes-123",
        "ts": 1_795_000_000_000 + i,
        "value": 0,
    }


def _answer(body: bytes) -> bytes:
    decoded = orjson.loads(body)
    count = len(decoded) if type(decoded) is list else 1
    return orjson.dumps({"accepted": count, "rejected": []})


def _frame_answer(frame: bytes | str) -> bytes:
    decoded = orjson.loads(frame)
    return orjson.dumps({"ack": decoded["seq"], "accepted": len(decoded["events"]), "rejected": []})


# ---------------------------------------------------------------------------
# The two servers


def serve_aiohttp(port: int) -> None:
    from aiohttp import WSMsgType, web

    async def events(request: web.Request) -> web.Response:
        return web.Response(body=_answer(await request.read()), content_type="application/json")

    async def websocket(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        async for message in ws:
            if message.type in (WSMsgType.TEXT, WSMsgType.BINARY):
                await ws.send_bytes(_frame_answer(message.data))
        return ws

    app = web.Application(client_max_size=2 * 1024 * 1024)
    app.router.add_post("/v1/events", events)
    app.router.add_get("/v1/events/ws", websocket)
    web.run_app(app, host="127.0.0.1", port=port, access_log=None, print=None)


async def asgi_app(scope: dict[str, Any], receive: Callable[..., Any], send: Callable[..., Any]):
    """The same handler as a raw ASGI app (no framework on top of uvicorn)."""
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    if scope["type"] == "websocket":
        await receive()  # websocket.connect
        await send({"type": "websocket.accept"})
        while True:
            message = await receive()
            if message["type"] == "websocket.disconnect":
                return
            data = message.get("bytes") or message.get("text")
            await send({"type": "websocket.send", "bytes": _frame_answer(data)})
    chunks = []
    while True:
        message = await receive()
        chunks.append(message.get("body", b""))
        if not message.get("more_body"):
            break
    body = _answer(b"".join(chunks))
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


def serve_uvicorn(port: int) -> None:
    import uvicorn

    uvicorn.run(
        "bench.gateway_servers:asgi_app",
        host="127.0.0.1",
        port=port,
        http="httptools",
        ws="websockets",
        loop="asyncio",
        lifespan="off",
        access_log=False,
        log_level="warning",
        ws_max_size=4 * 1024 * 1024,
    )


# ---------------------------------------------------------------------------
# The load client


def http_request(port: int, body: bytes) -> bytes:
    head = (
        f"POST /v1/events HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


async def _http_connection(port: int, request: bytes, until: float, counts: list[int]) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        while time.perf_counter() < until:
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            if not head.startswith(b"HTTP/1.1 200"):
                raise RuntimeError(f"unexpected answer: {head[:60]!r}")
            length = 0
            for line in head.split(b"\r\n"):
                if line[:15].lower() == b"content-length:":
                    length = int(line[15:])
            await reader.readexactly(length)
            counts[0] += 1
    finally:
        writer.close()


async def _run_http(port: int, body: bytes, inflight: int, seconds: float) -> float:
    counts = [0]
    request = http_request(port, body)
    start = time.perf_counter()
    until = start + seconds
    await asyncio.gather(*(_http_connection(port, request, until, counts) for _ in range(inflight)))
    return counts[0] / (time.perf_counter() - start)


async def _ws_connection(port: int, payload: list[Any], until: float, counts: list[int]) -> None:
    import aiohttp

    async with (
        aiohttp.ClientSession() as session,
        session.ws_connect(f"http://127.0.0.1:{port}/v1/events/ws", max_msg_size=0) as ws,
    ):
        window = asyncio.Semaphore(WS_INFLIGHT)

        async def read_acks() -> None:
            async for message in ws:
                orjson.loads(message.data)
                counts[0] += 1
                window.release()

        reader = asyncio.create_task(read_acks())
        seq = 0
        while time.perf_counter() < until:
            await window.acquire()
            seq += 1
            await ws.send_bytes(orjson.dumps({"seq": seq, "events": payload}))
        for _ in range(WS_INFLIGHT):
            await window.acquire()
        reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reader


async def _run_ws(port: int, payload: list[Any], seconds: float) -> float:
    counts = [0]
    start = time.perf_counter()
    until = start + seconds
    await asyncio.gather(
        *(_ws_connection(port, payload, until, counts) for _ in range(WS_CONNECTIONS))
    )
    return counts[0] / (time.perf_counter() - start)


def load(scenario: str, port: int, inflight: int, seconds: float) -> float:
    """Requests (or frames) per second of one scenario against the server at `port`."""
    batch = [sample_event(i) for i in range(100)]
    if scenario == "single":
        return asyncio.run(_run_http(port, orjson.dumps(sample_event(0)), inflight, seconds))
    if scenario == "batch":
        return asyncio.run(_run_http(port, orjson.dumps(batch), inflight, seconds))
    return asyncio.run(_run_ws(port, batch, seconds))


# ---------------------------------------------------------------------------
# Rounds


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_for_port(port: int, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError("the server exited at start")
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"no server on port {port} after 20 s")


@contextlib.contextmanager
def server(kind: str) -> Iterator[int]:
    port = _free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "bench.gateway_servers", "serve", kind, str(port)], cwd=REPO
    )
    try:
        _wait_for_port(port, process)
        yield port
    finally:
        process.terminate()
        process.wait(10)


SCENARIOS = {
    "single": ("single-event HTTP", 1),
    "batch": ("100-event HTTP", 100),
    "ws": ("WebSocket, 100-event frames", 100),
}


def measure(rounds: int, seconds: float, inflight: int) -> dict[tuple[str, str], list[float]]:
    results: dict[tuple[str, str], list[float]] = {}
    for round_number in range(rounds):
        order = SERVERS if round_number % 2 == 0 else tuple(reversed(SERVERS))
        for kind in order:
            with server(kind) as port:
                load("single", port, inflight, 1.0)  # warm up
                for scenario in SCENARIOS:
                    rate = load(scenario, port, inflight, seconds)
                    results.setdefault((kind, scenario), []).append(rate)
                    print(f"round {round_number + 1} {kind:8} {scenario:7} {rate:10,.0f}/s")
    return results


def report(results: dict[tuple[str, str], list[float]], command: str) -> str:
    lines = [
        "# Gateway server library: aiohttp vs a raw ASGI app on uvicorn",
        "",
        "The same handler (read the body, orjson-decode, answer with a count) on each library,",
        "one process, one asyncio loop, no Kafka. Medians of the rounds, servers alternating;",
        "requests (or WebSocket frames) per second and the events per second they carry.",
        "",
        f"Command: `{command}`",
        "",
        "| scenario | aiohttp req/s | uvicorn req/s | aiohttp events/s | uvicorn events/s "
        "| aiohttp / uvicorn |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for scenario, (title, events) in SCENARIOS.items():
        a = statistics.median(results[("aiohttp", scenario)])
        u = statistics.median(results[("uvicorn", scenario)])
        lines.append(
            f"| {title} | {a:,.0f} | {u:,.0f} | {a * events:,.0f} | {u * events:,.0f} "
            f"| {a / u:.2f}x |"
        )
    lines += ["", "All rounds (per second):", ""]
    for (kind, scenario), rates in sorted(results.items()):
        lines.append(f"- {kind} {scenario}: {', '.join(f'{r:,.0f}' for r in rates)}")
    return "\n".join(lines) + "\n"


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "serve":
        kind, port = sys.argv[2], int(sys.argv[3])
        (serve_aiohttp if kind == "aiohttp" else serve_uvicorn)(port)
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=6.0)
    parser.add_argument("--inflight", type=int, default=64)
    args = parser.parse_args()
    results = measure(args.rounds, args.seconds, args.inflight)
    command = (
        f"python -m bench.gateway_servers --rounds {args.rounds} --seconds {args.seconds:g} "
        f"--inflight {args.inflight}"
    )
    text = report(results, command)
    text += (
        f"\nMachine: {os.cpu_count()} cores, Python {sys.version.split()[0]}; the load "
        "client runs in its own process on the same machine.\n"
    )
    RESULTS.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
