"""The gateway's HTTP and WebSocket server (aiohttp): one generic handler per `Route`.

    gateway = Gateway(routes, settings.gateway, producer, max_future_ms=...)
    asyncio.run(gateway.serve())        # until SIGTERM/SIGINT; then drains and flushes

A request goes: CORS headers for an allowed `Origin` → token (401) → size and type
(413, 415) → decoding (400) → rate (429) → the pipeline's parser, each event accepted or
rejected → produce the accepted ones with the timestamp the `future` rule checked
against → wait until Kafka acknowledged every one → 200, or 503 with `Retry-After` if
Kafka is unreachable, the bound of waiting events is reached, or any delivery failed (the
client retries the whole batch; the flow deduplicates). docs/gateway.md is the reference.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import orjson
from aiohttp import WSMsgType, web
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

from waxhouse.gateway import metrics
from waxhouse.gateway.answers import Refused, json_response, refusal
from waxhouse.gateway.body import Batch, BodyError, decode_body, validate
from waxhouse.gateway.limits import CorsPolicy, RateLimiter, Tokens, bearer
from waxhouse.gateway.producer import RETRY_AFTER_S, GatewayProducer, Unavailable
from waxhouse.gateway.routes import Route
from waxhouse.settings import GatewaySettings, host_port

logger = logging.getLogger(__name__)

OTHER = "other"
FIRST_FRAME_TIMEOUT_S = 10.0
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class Gateway:
    """The server over `routes`; `producer` is started by `serve()` (or by the caller
    before `app()` when embedding it in tests)."""

    def __init__(
        self,
        routes: Sequence[Route],
        settings: GatewaySettings,
        producer: GatewayProducer,
        *,
        max_future_ms: int,
    ) -> None:
        self.routes = tuple(routes)
        self.settings = settings
        self.producer = producer
        self.max_future_ms = max_future_ms
        self.tokens = Tokens(settings.tokens)
        self.rates = RateLimiter(settings.rate_per_token)
        self.cors = CorsPolicy(settings.cors_origins)
        self.websockets: set[_Socket] = set()
        self.draining = False
        self._labels = {r.path: r.path for r in self.routes} | {
            r.ws_path: r.ws_path for r in self.routes
        }

    # --- the application --------------------------------------------------------------

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._observe], client_max_size=self._max_bytes)
        for route in self.routes:
            app.router.add_post(route.path, self._post_handler(route))
            app.router.add_get(route.ws_path, self._ws_handler(route))
            for path in (route.path, route.ws_path):
                app.router.add_route("OPTIONS", path, self._preflight)
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        app.router.add_get("/metrics", self._metrics)
        app.on_shutdown.append(self._close_websockets)
        return app

    @property
    def _max_bytes(self) -> int:
        return self.settings.max_body_bytes

    def _label(self, request: web.Request) -> str:
        return self._labels.get(request.path, OTHER)

    @web.middleware
    async def _observe(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """Counts every HTTP answer by route and status, and adds the CORS headers."""
        label = self._label(request)
        cors = self.cors.headers(request.headers.get("Origin"))
        try:
            response = await handler(request)
        except web.HTTPException as e:
            metrics.answered(label, e.status).inc()
            e.headers.update(cors)
            raise
        if not isinstance(response, web.WebSocketResponse):
            metrics.answered(label, response.status).inc()
            if cors and not response.prepared:
                response.headers.update(cors)
        return response

    async def _preflight(self, request: web.Request) -> web.Response:
        headers = self.cors.preflight(request.headers.get("Origin"))
        if headers is None:
            return json_response(
                403, {"error": "this origin is not allowed (GATEWAY_CORS_ORIGINS)"}
            )
        return web.Response(status=204, headers=headers)

    async def _healthz(self, _request: web.Request) -> web.Response:
        if not self.producer.healthy:
            return json_response(503, {"status": "the Kafka producer failed for good"})
        return json_response(200, {"status": "ok"})

    async def _readyz(self, _request: web.Request) -> web.Response:
        if self.draining:
            return json_response(503, {"status": "shutting down"})
        if not self.producer.ready:
            return json_response(503, {"status": "Kafka is not reachable"})
        return json_response(200, {"status": "ready"})

    async def _metrics(self, _request: web.Request) -> web.Response:
        response = web.Response(body=generate_latest(REGISTRY))
        response.headers["Content-Type"] = CONTENT_TYPE_LATEST
        return response

    # --- HTTP ------------------------------------------------------------------------

    def _post_handler(self, route: Route) -> Handler:
        async def handle(request: web.Request) -> web.StreamResponse:
            try:
                return await self._post(route, request)
            except Refused as refused:
                return refusal(refused)

        return handle

    async def _post(self, route: Route, request: web.Request) -> web.Response:
        caller = self._caller(request.headers.get("Authorization"))
        if caller is None:
            raise Refused(401, "a valid bearer token is required")
        length = request.content_length
        if length is not None and length > self._max_bytes:
            raise Refused(413, f"the body is larger than {self._max_bytes} bytes")
        body = await self._read(request)
        read_at = time.perf_counter()
        try:
            events = decode_body(
                body,
                content_type=request.headers.get("Content-Type"),
                encoding=request.headers.get("Content-Encoding"),
                max_bytes=self._max_bytes,
            )
        except BodyError as e:
            raise Refused(e.status, e.message) from None
        batch = await self.store(route, route.path, caller, events, read_at)
        return json_response(200, {"accepted": batch.accepted, "rejected": batch.rejected})

    async def _read(self, request: web.Request) -> bytes:
        chunks, size = [], 0
        async for chunk in request.content.iter_any():
            size += len(chunk)
            if size > self._max_bytes:
                raise Refused(413, f"the body is larger than {self._max_bytes} bytes")
            chunks.append(chunk)
        return b"".join(chunks)

    def _caller(self, authorization: str | None) -> int | None:
        return self.tokens.caller(bearer(authorization))

    async def store(
        self, route: Route, label: str, caller: int, events: list[Any], read_at: float
    ) -> Batch:
        """Validate, produce and wait for Kafka: the batch once every accepted event is
        acknowledged; `Refused` (429, 503) otherwise. Shared by HTTP and WebSocket."""
        if self.draining:
            raise Refused(503, "the gateway is shutting down", RETRY_AFTER_S)
        wait = self.rates.retry_after(caller, len(events), time.monotonic())
        if wait:
            raise Refused(429, "over this token's rate (GATEWAY_RATE_PER_TOKEN)", wait)
        now_ms = time.time_ns() // 1_000_000
        batch = validate(
            route.schema, route.key, events, now_ms=now_ms, max_future_ms=self.max_future_ms
        )
        if batch.accepted:
            try:
                delivery = self.producer.send(route.topic, batch.keys, batch.values, now_ms)
            except Unavailable as e:
                raise Refused(503, str(e), RETRY_AFTER_S) from None
            counted = metrics.route(label)
            gauge = counted.in_flight
            gauge.inc()
            try:
                error = await delivery.wait()
            finally:
                gauge.dec()
            if error is not None:
                raise Refused(
                    503, f"Kafka did not acknowledge every event ({error}); retry", RETRY_AFTER_S
                )
            counted.ack_seconds.observe(time.perf_counter() - read_at)
            counted.accepted.inc(batch.accepted)
        if batch.rejected:
            metrics.route(label).rejected.inc(len(batch.rejected))
        return batch

    # --- WebSocket ---------------------------------------------------------------------

    def _ws_handler(self, route: Route) -> Handler:
        async def handle(request: web.Request) -> web.StreamResponse:
            authorization = request.headers.get("Authorization")
            caller = None
            if authorization is not None or not self.tokens.required:
                caller = self._caller(authorization)
                if caller is None:
                    return refusal(Refused(401, "a valid bearer token is required"))
            if self.draining:
                return refusal(Refused(503, "the gateway is shutting down", RETRY_AFTER_S))
            socket = _Socket(self, route, caller)
            return await socket.run(request)

        return handle

    async def _close_websockets(self, _app: web.Application) -> None:
        await asyncio.gather(*(socket.drain_and_close() for socket in list(self.websockets)))

    # --- running ---------------------------------------------------------------------

    async def serve(self, ready: Callable[[str], None] | None = None) -> None:
        """Serve on GATEWAY_LISTEN until SIGTERM or SIGINT; then stop accepting, wait for
        the acknowledgements in flight (at most the ack timeout), flush, return."""
        host, port = host_port(self.settings.listen)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        await asyncio.to_thread(self.producer.start)
        pump = asyncio.create_task(self.producer.pump())
        runner = web.AppRunner(
            self.app(),
            access_log=None,
            handle_signals=False,
            auto_decompress=False,  # body.gunzip inflates, bounded by GATEWAY_MAX_BODY_BYTES
            shutdown_timeout=self.settings.ack_timeout_seconds + 1,
        )
        await runner.setup()
        site = web.TCPSite(runner, host, port, backlog=1024)
        await site.start()
        address = f"{host}:{port}"
        logger.info(
            "gateway listening on %s: %s",
            address,
            ", ".join(f"{r.path} -> {r.topic}" for r in self.routes),
        )
        if ready is not None:
            ready(address)
        await stop.wait()
        logger.info("stopping: no new requests; waiting for Kafka to acknowledge those in flight")
        self.draining = True
        await runner.cleanup()
        left = await self.producer.close(self.settings.ack_timeout_seconds)
        await pump
        if left:
            logger.warning("%d events were not acknowledged by Kafka before exit", left)
        logger.info("gateway stopped")


class _Socket:
    """One WebSocket connection: frames in, acks out, at most `ws_max_inflight` frames
    waiting for Kafka (beyond that the socket is not read: TCP pushes back)."""

    def __init__(self, gateway: Gateway, route: Route, caller: int | None) -> None:
        self.gateway = gateway
        self.route = route
        self.caller = caller
        self.label = route.ws_path
        self.window = asyncio.Semaphore(gateway.settings.ws_max_inflight)
        self.tasks: set[asyncio.Task[None]] = set()
        self.ws = web.WebSocketResponse(max_msg_size=gateway.settings.max_body_bytes)
        self.closing = False

    async def run(self, request: web.Request) -> web.WebSocketResponse:
        await self.ws.prepare(request)
        self.gateway.websockets.add(self)
        metrics.WEBSOCKETS.inc()
        try:
            if self.caller is None and not await self._authenticate():
                return self.ws
            await self._read_frames()
            if self.tasks:
                await asyncio.wait(self.tasks)
        finally:
            self.gateway.websockets.discard(self)
            metrics.WEBSOCKETS.dec()
            await self.ws.close()
        return self.ws

    async def _authenticate(self) -> bool:
        """The first frame `{"token": "..."}` (when no Authorization header came)."""
        try:
            message = await self.ws.receive(timeout=FIRST_FRAME_TIMEOUT_S)
        except asyncio.TimeoutError:
            message = None
        token = None
        if message is not None and message.type in (WSMsgType.TEXT, WSMsgType.BINARY):
            with contextlib.suppress(orjson.JSONDecodeError):
                first = orjson.loads(message.data)
                if type(first) is dict and type(first.get("token")) is str:
                    token = first["token"]
        self.caller = self.gateway.tokens.caller(token)
        if self.caller is None:
            await self._send_error(None, Refused(401, "a valid bearer token is required"))
            await self.ws.close(code=1008, message=b"unauthorized")
            return False
        return True

    async def _read_frames(self) -> None:
        while not self.closing:
            await self.window.acquire()  # backpressure: no read beyond the unacked bound
            message = await self.ws.receive()
            if message.type in (WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED):
                self.window.release()
                return
            if message.type is WSMsgType.ERROR:
                self.window.release()
                logger.info("WebSocket closed with an error: %r", self.ws.exception())
                return
            if message.type not in (WSMsgType.TEXT, WSMsgType.BINARY):
                self.window.release()
                continue
            task = asyncio.create_task(self._frame(message.data, time.perf_counter()))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)

    async def _frame(self, data: str | bytes, read_at: float) -> None:
        seq: object = None
        try:
            try:
                frame = orjson.loads(data)
            except orjson.JSONDecodeError as e:
                raise Refused(400, f"the frame is not JSON: {e}") from None
            if type(frame) is not dict:
                raise Refused(400, 'a frame is {"seq": n, "events": [...]}')
            seq = frame.get("seq")
            events = frame.get("events")
            if type(events) is not list:
                raise Refused(400, 'a frame is {"seq": n, "events": [...]}')
            if self.caller is None:  # not reachable: run() authenticates first
                raise Refused(401, "a valid bearer token is required")
            batch = await self.gateway.store(self.route, self.label, self.caller, events, read_at)
        except Refused as refused:
            metrics.answered(self.label, refused.status).inc()
            await self._send_error(seq, refused)
        else:
            metrics.answered(self.label, 200).inc()
            await self._send({"ack": seq, "accepted": batch.accepted, "rejected": batch.rejected})
        finally:
            self.window.release()

    async def _send_error(self, seq: object, refused: Refused) -> None:
        await self._send({"seq": seq, "status": refused.status, **refused.body()})

    async def _send(self, answer: dict[str, Any]) -> None:
        if self.ws.closed:
            return
        with contextlib.suppress(ConnectionError, RuntimeError):
            await self.ws.send_str(orjson.dumps(answer).decode())

    async def drain_and_close(self) -> None:
        """At shutdown: read no more frames, answer those waiting, then close (1001)."""
        self.closing = True
        if self.tasks:
            await asyncio.wait(self.tasks, timeout=self.gateway.settings.ack_timeout_seconds + 1)
        await self.ws.close(code=1001, message=b"the gateway is shutting down")
