"""The load generator's pacing and events, with a fake clock and a fake producer."""

from __future__ import annotations

import threading
from typing import Any

import orjson
import pytest

from waxhouse.connectors.loadgen import STEP_RECORDS, LoadConfig, LoadGenerator, due_records


class FakeFuture:
    def add_errback(self, errback: Any) -> FakeFuture:
        return self


class FakeProducer:
    def __init__(self, clock: list[float]) -> None:
        self.clock = clock
        self.sent: list[tuple[float, bytes, bytes, int]] = []
        self.topics: list[str] = []
        self.flushed = self.closed = False

    def send(self, topic: str, *, key: bytes, value: bytes, timestamp_ms: int) -> FakeFuture:
        self.sent.append((self.clock[0], key, value, timestamp_ms))
        self.topics.append(topic)
        return FakeFuture()

    def flush(self) -> None:
        self.flushed = True

    def close(self) -> None:
        self.closed = True


def run(config: LoadConfig, reference_topic: str | None = None) -> FakeProducer:
    now = [0.0]
    producer = FakeProducer(now)

    def sleep(seconds: float) -> None:
        now[0] += seconds

    class Generator(LoadGenerator):
        def _producer(self) -> Any:
            return producer

    sent = Generator(
        "unused:9092",
        "events",
        config,
        reference_topic=reference_topic,
        clock=lambda: now[0],
        sleep=sleep,
    ).run(threading.Event())
    assert sent == len(producer.sent)
    assert producer.flushed and producer.closed
    return producer


def test_records_are_never_sent_ahead_of_the_rate() -> None:
    producer = run(LoadConfig(rate=100.0, events=1_000, malformed_ratio=0.0))
    assert len(producer.sent) == 1_000
    for n, (at, *_) in enumerate(producer.sent):
        assert at >= n / 100.0 - 1e-9, (n, at)
    # ...nor far behind it: the last record goes out within one sleep of its due time.
    assert producer.sent[-1][0] <= 999 / 100.0 + 0.05


def test_events_are_keyed_by_user_and_start_at_the_present(monkeypatch: Any) -> None:
    monkeypatch.setattr(
        "waxhouse.connectors.loadgen.time.time_ns", lambda: 1_800_000_000_000 * 10**6
    )
    producer = run(LoadConfig(rate=0.0, events=2_000, malformed_ratio=0.0))
    for _, key, value, timestamp_ms in producer.sent:
        event = orjson.loads(value)
        assert event["user_id"].encode() == key
        assert 1_800_000_000_000 <= timestamp_ms < 1_800_000_000_000 + 60_000


def test_a_count_that_is_not_a_whole_number_of_steps_is_reported_exactly() -> None:
    producer = run(LoadConfig(rate=0.0, events=STEP_RECORDS + 7, malformed_ratio=0.0))
    assert len(producer.sent) == STEP_RECORDS + 7


def test_an_unlimited_rate_sends_whole_steps() -> None:
    assert due_records(0.0, 0.0, 10**9) == STEP_RECORDS
    assert due_records(1.0, 10.0, 10) == 0
    assert due_records(2.0, 10.0, 10) == 10


@pytest.mark.parametrize(
    "config", [{"rate": -1.0}, {"rate": 1.0, "events": -1}, {"rate": 1.0, "malformed_ratio": 2}]
)
def test_invalid_load_is_refused(config: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        LoadConfig(**config)


def test_sensors_readings_and_registry_versions_once_their_time_has_come() -> None:
    producer = run(
        LoadConfig(rate=500.0, events=3_000, malformed_ratio=0.0, flow="sensors"), "devices"
    )
    sent = list(zip(producer.topics, producer.sent, strict=True))
    readings = [record for topic, record in sent if topic == "events"]
    versions = [(n, record) for n, (topic, record) in enumerate(sent) if topic == "devices"]
    assert len(readings) == 3_000 and len(versions) > 20
    for _, key, value, _ in readings:
        assert orjson.loads(value)["device_id"].encode() == key  # keyed by device
    # A version goes out with the step of readings that reaches its time, never before:
    # the first versions (an hour before the readings) at once, each change later.
    for n, (_, _, _, ts) in versions:
        step = [r[3] for topic, r in sent[n : n + 2 * STEP_RECORDS] if topic == "events"]
        assert step and ts <= max(step[:STEP_RECORDS])
    first_change = next(n for n, (_, _, _, ts) in versions if ts >= readings[0][3])
    assert first_change > versions[0][0] + 1  # changes wait for the readings' time


def test_the_sensors_flow_needs_its_registry_topic() -> None:
    with pytest.raises(ValueError, match="reference_topic"):
        LoadGenerator("unused:9092", "readings", LoadConfig(rate=1.0, flow="sensors"))
