"""The gateway's Kafka producer: acknowledged means stored, and a bounded amount waiting.

confluent-kafka (librdkafka) with `acks=all` and the idempotent producer. `send` produces
one request's events and returns a `Delivery` that completes once Kafka has acknowledged
every one of them or any failed. librdkafka's own threads do the network I/O; its
delivery reports are served on the event loop by `pump()`, a task that calls `poll(0)`
every millisecond while events are waiting (every `POLL_S` when idle): each report counts
down its request, and only the last one completes the request's future (one wake-up of
the handler per request, not per event). Measured against serving them from a polling
thread (the reports then each take the GIL from the busy event loop): 1.3 to 1.5 times
the requests per second, single-event and batched, at lower latency.

What is waiting is bounded twice: `max_inflight_events` events across all requests
(checked before anything of a request is produced: a request is refused whole, never
half-sent), and librdkafka's own queue. Either full, or Kafka not reachable, `send`
raises `Unavailable` and the caller answers 503 with `Retry-After`; a delivery that
fails or times out (`ack_timeout_s`) completes with its error, also a 503.

`ready` says whether Kafka answers: a metadata fetch every `CHECK_INTERVAL_S` (in a
thread of its own), and librdkafka's "all brokers down" error at once. While it is false,
`send` refuses at once (503) rather than queue events that would wait for the
acknowledgement timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Producer

from waxhouse.connectors.kafka_confluent import librdkafka_options
from waxhouse.gateway import metrics

logger = logging.getLogger(__name__)
_librdkafka_logger = logging.getLogger(f"{__name__}.librdkafka")

CHECK_INTERVAL_S = 2.0
CHECK_TIMEOUT_S = 3.0
PUMP_S = 0.001
"""How often delivery reports are served while events wait for Kafka."""
POLL_S = 0.05
"""... and while none do (errors, logs)."""
LINGER_MS = 2
RETRY_AFTER_S = 1
_UNREACHABLE = frozenset(
    {KafkaError._ALL_BROKERS_DOWN, KafkaError._AUTHENTICATION, KafkaError._RESOLVE}
)


class Unavailable(Exception):
    """Kafka cannot take these events now: not reachable, or too much already waiting."""


class Delivery:
    """One request's events on their way to Kafka; lives on the event loop.

    `await delivery.wait()` returns None once Kafka acknowledged all of them, or the
    first error's name if any failed.
    """

    __slots__ = ("_release", "error", "future", "remaining")

    def __init__(
        self, future: asyncio.Future[str | None], count: int, release: Callable[[], None]
    ) -> None:
        self._release = release
        self.remaining = count
        self.error: str | None = None
        self.future = future

    def delivered(self, error: KafkaError | None, _message: object) -> None:
        """librdkafka's delivery report, served by `GatewayProducer.pump` on the loop."""
        if error is not None and self.error is None:
            self.error = error.name()
        self.remaining -= 1
        if self.remaining == 0:
            self._finish()

    def unsent(self, count: int, error: str) -> None:
        """`count` of the events were never produced (the queue filled mid-request)."""
        if self.error is None:
            self.error = error
        self.remaining -= count
        if self.remaining == 0:
            self._finish()

    def _finish(self) -> None:
        self._release()
        if not self.future.done():
            self.future.set_result(self.error)

    async def wait(self) -> str | None:
        return await self.future


class GatewayProducer:
    """See the module docstring. `start()` connects, `close()` flushes and stops."""

    def __init__(
        self,
        bootstrap: str,
        client_options: Mapping[str, object],
        *,
        max_inflight_events: int,
        ack_timeout_s: float,
        topics: Sequence[str] = (),
    ) -> None:
        self.bootstrap = bootstrap
        self.max_inflight_events = max_inflight_events
        self.ack_timeout_s = ack_timeout_s
        self.topics = tuple(topics)
        self.in_flight_events = 0
        self._config: dict[str, Any] = {
            "bootstrap.servers": bootstrap,
            "acks": "all",
            "enable.idempotence": True,
            "linger.ms": LINGER_MS,
            # The admission bound below is what limits waiting events; librdkafka's queue
            # holds at least that many, and at most 256 MiB.
            "queue.buffering.max.messages": max(2 * max_inflight_events, 1000),
            "queue.buffering.max.kbytes": 256 * 1024,
            "message.timeout.ms": int(ack_timeout_s * 1000),
            "logger": _librdkafka_logger,
            "error_cb": self._on_error,
            **librdkafka_options(client_options),
        }
        self._producer: Any = None
        self._ready = False
        self._fatal = False
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []
        self._work = asyncio.Event()
        self._closed = False

    @property
    def ready(self) -> bool:
        return self._ready and not self._fatal

    @property
    def healthy(self) -> bool:
        """False after a fatal producer error: the process must be restarted."""
        return not self._fatal

    def start(self) -> None:
        """Connect and start the readiness checks (blocking: call it off the loop); then
        run `pump()` on the loop."""
        self._producer = Producer(self._config)
        self._check()  # answers /readyz right away when Kafka is there
        thread = threading.Thread(target=self._watch, name="gateway-kafka-readiness", daemon=True)
        thread.start()
        self._threads.append(thread)

    async def pump(self) -> None:
        """Serve librdkafka's reports (deliveries, errors, logs) on the loop until closed."""
        poll = self._producer.poll
        while not self._closed:
            try:
                poll(0)
            except Exception:  # a callback failed: keep serving the others' reports
                logger.exception("serving Kafka delivery reports failed")
            if self.in_flight_events:
                await asyncio.sleep(PUMP_S)
                continue
            self._work.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._work.wait(), POLL_S)

    def send(
        self,
        topic: str,
        keys: Sequence[bytes | None],
        values: Sequence[bytes],
        timestamp_ms: int,
    ) -> Delivery:
        """Produce `values` (with `keys`) into `topic`, all with `timestamp_ms`; call on
        the event loop. Raises `Unavailable` without producing anything if Kafka is not
        ready or the in-flight bound would be crossed (a request larger than the bound
        alone still passes when nothing else waits)."""
        count = len(values)
        if not self.ready:
            raise Unavailable("Kafka is not reachable")
        if self.in_flight_events and self.in_flight_events + count > self.max_inflight_events:
            raise Unavailable("too many events are waiting for Kafka")
        self.in_flight_events += count

        def release() -> None:
            self.in_flight_events -= count

        delivery = Delivery(asyncio.get_running_loop().create_future(), count, release)
        self._work.set()
        produce, callback = self._producer.produce, delivery.delivered
        sent = 0
        try:
            for key, value in zip(keys, values, strict=True):
                produce(topic, value, key, on_delivery=callback, timestamp=timestamp_ms)
                sent += 1
        except BufferError:
            delivery.unsent(count - sent, "_QUEUE_FULL")
            if sent == 0:
                raise Unavailable("the producer queue is full") from None
        except KafkaException as e:
            delivery.unsent(count - sent, _name(e))
            if sent == 0:
                raise Unavailable(f"Kafka refused the events: {_name(e)}") from None
        return delivery

    async def close(self, timeout_s: float) -> int:
        """Deliver what is queued (within `timeout_s`), stop; returns how many events were
        still not delivered."""
        self._stopping.set()
        if self._producer is None:
            return 0
        deadline = time.monotonic() + timeout_s
        while len(self._producer) and time.monotonic() < deadline:
            self._producer.poll(0)
            await asyncio.sleep(PUMP_S)
        self._closed = True
        self._work.set()
        for thread in self._threads:
            await asyncio.to_thread(thread.join, CHECK_TIMEOUT_S + 1)
        self._ready = False
        metrics.KAFKA_READY.set(0)
        return len(self._producer)

    # --- readiness -------------------------------------------------------------------

    def _watch(self) -> None:
        while not self._stopping.wait(CHECK_INTERVAL_S):
            self._check()

    def _check(self) -> None:
        """A metadata fetch: does Kafka answer?"""
        topic = self.topics[0] if self.topics else None
        try:
            metadata = self._producer.list_topics(topic, timeout=CHECK_TIMEOUT_S)
        except KafkaException as e:
            self._set_ready(False, _name(e))
            return
        self._set_ready(bool(metadata.brokers), "no broker in the metadata")

    def _on_error(self, error: KafkaError) -> None:
        if error.fatal():
            self._fatal = True
            logger.error("fatal Kafka producer error, restart the gateway: %s", error.name())
            self._set_ready(False, error.name())
        elif error.code() in _UNREACHABLE:
            self._set_ready(False, error.name())
        else:
            logger.info("Kafka producer: %s", error.name())

    def _set_ready(self, ready: bool, why: str = "") -> None:
        if ready != self._ready:
            if ready:
                logger.info("Kafka is reachable at %s", self.bootstrap)
            else:
                logger.warning("Kafka is not reachable at %s (%s)", self.bootstrap, why)
        self._ready = ready
        metrics.KAFKA_READY.set(1 if self.ready else 0)


def _name(e: KafkaException) -> str:
    error = e.args[0] if e.args else None
    return error.name() if isinstance(error, KafkaError) else type(e).__name__
