"""The producer's countdown and bounds, with librdkafka but no broker: nothing is ever
acknowledged, so every request ends in its error, and nothing is left counted."""

from __future__ import annotations

import asyncio

import pytest
from confluent_kafka import Producer

from tests.support.scrape import free_port
from waxhouse.gateway.producer import GatewayProducer, Unavailable


def producer(max_inflight_events: int, ack_timeout_s: float = 1.0) -> GatewayProducer:
    gateway = GatewayProducer(
        f"127.0.0.1:{free_port()}",  # nothing listens: deliveries time out
        {},
        max_inflight_events=max_inflight_events,
        ack_timeout_s=ack_timeout_s,
    )
    gateway._producer = Producer(gateway._config)  # without start(): no readiness checks
    gateway._ready = True  # as if Kafka had answered
    return gateway


def run(gateway: GatewayProducer, scenario: object) -> object:
    async def main() -> object:
        pump = asyncio.create_task(gateway.pump())
        try:
            return await scenario  # type: ignore[misc]
        finally:
            await gateway.close(0.1)
            await pump

    return asyncio.run(main())


def test_a_request_beyond_the_in_flight_bound_is_refused_whole() -> None:
    gateway = producer(max_inflight_events=10)

    async def scenario() -> tuple[str | None, int]:
        first = gateway.send("t", [b"k"] * 8, [b"v"] * 8, 1)
        assert gateway.in_flight_events == 8
        with pytest.raises(Unavailable, match="too many events"):
            gateway.send("t", [b"k"] * 3, [b"v"] * 3, 1)
        assert gateway.in_flight_events == 8  # nothing of the refused one was counted
        error = await asyncio.wait_for(first.wait(), 30)
        return error, gateway.in_flight_events

    error, left = run(gateway, scenario())  # type: ignore[misc]
    assert error == "_MSG_TIMED_OUT"  # never acknowledged: the request is a 503
    assert left == 0


def test_a_request_larger_than_the_bound_passes_alone() -> None:
    gateway = producer(max_inflight_events=10)

    async def scenario() -> int:
        delivery = gateway.send("t", [b"k"] * 25, [b"v"] * 25, 1)
        await asyncio.wait_for(delivery.wait(), 30)
        return gateway.in_flight_events

    assert run(gateway, scenario()) == 0


def test_a_full_librdkafka_queue_fails_the_request_and_counts_the_unsent() -> None:
    gateway = producer(max_inflight_events=500)  # librdkafka's queue: 1,000 messages

    async def scenario() -> tuple[str | None, int]:
        delivery = gateway.send("t", [b"k"] * 1200, [b"v"] * 1200, 1)  # alone: admitted
        with pytest.raises(Unavailable, match="too many events"):
            gateway.send("t", [b"k"], [b"v"], 1)
        error = await asyncio.wait_for(delivery.wait(), 30)
        return error, gateway.in_flight_events

    error, left = run(gateway, scenario())  # type: ignore[misc]
    assert error == "_QUEUE_FULL"  # the first error: 200 events never produced
    assert left == 0


def test_not_ready_refuses_at_once() -> None:
    gateway = producer(max_inflight_events=10)
    gateway._ready = False

    async def scenario() -> None:
        with pytest.raises(Unavailable, match="not reachable"):
            gateway.send("t", [b"k"], [b"v"], 1)

    run(gateway, scenario())
    assert gateway.in_flight_events == 0
