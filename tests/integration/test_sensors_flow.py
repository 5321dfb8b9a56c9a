"""The sensors flow against the real broker: readings and registry versions in their own
topics, read together; the four tables and the dead letters equal the contract's oracle,
in one bounded run and after kill -9s at random moments; every alert row reached the
alerts topic (at least once) and every message there is an alert."""

from __future__ import annotations

import random
import signal
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.support.clickhouse import query_rows, view_rows
from tests.support.dlq import read_topic
from tests.support.flow import (
    recovery_args,
    run_python,
    start_python,
    wait_until_partitions_start,
)
from tests.support.kafka_broker import TopicFactory
from tests.support.produce import produce_in_partitions
from tests.support.scrape import free_port, sample_total, scrape
from tests.support.sensors import Stream, generated, oracle_settings
from tests.support.sensors_oracle import Raw, SensorsExpected, sensors_oracle
from waxhouse.connectors.sensors_generator import SensorsConfig
from waxhouse.fields import format_rfc3339
from waxhouse.settings import Settings, load_settings
from waxhouse.testing import Record

pytestmark = pytest.mark.integration

TABLES = ("device_stats", "site_stats", "device_batches", "alerts")
COMMAND = ["-m", "bytewax.run", "dataflows.sensors"]


def produce(bootstrap: str, topic: str, stream: Stream) -> None:
    """Keyed by device, into the partitions `stream` put them in (tombstones too)."""
    produce_in_partitions(bootstrap, topic, stream.records, "device_id")


def _plain(value: Any) -> Any:
    if isinstance(value, float):
        return round(value, 9)
    if isinstance(value, Decimal):
        return value.normalize()
    return value


def _rows(rows: list[dict[str, Any]]) -> list[tuple]:
    return sorted((tuple(sorted((k, _plain(v)) for k, v in row.items())) for row in rows), key=repr)


def assert_exact(url: str, expected: SensorsExpected) -> None:
    for table in TABLES:
        want = getattr(expected, table)
        assert _rows(view_rows(url, table, list(want[0]))) == _rows(want), table
    dead = {
        s: (r, e) for s, r, e in query_rows(url, "SELECT source, reason, error FROM dead_letters")
    }
    assert set(dead) == set(expected.dead_letters)
    assert {s: r for s, (r, _) in dead.items()} == {
        s: r for s, (r, _) in expected.dead_letters.items()
    }


def alert_messages(bootstrap: str, topic: str) -> list[dict[str, Any]]:
    return [orjson.loads(record.value) for record in read_topic(bootstrap, topic)]


def assert_alerts_sent(bootstrap: str, topic: str, expected: SensorsExpected) -> None:
    """At least once: every alert row has a message, and every message is an alert."""
    sent = {(m["device_id"], m["alert_start"]) for m in alert_messages(bootstrap, topic)}
    rows = {(a["device_id"], format_rfc3339(a["alert_start"])) for a in expected.alerts}
    assert sent == rows


def sensors_topics(
    topic_factory: TopicFactory, readings: int = 3, devices: int = 2
) -> dict[str, str]:
    """The sensors flow's topics, by the settings that name them."""
    return {
        "SENSORS_TOPIC": topic_factory(readings, prefix="readings"),
        "DEVICES_TOPIC": topic_factory(devices, prefix="devices"),
        "SENSORS_DLQ_TOPIC": topic_factory(1, prefix="readings-dlq"),
        "ALERTS_TOPIC": topic_factory(1, prefix="alerts"),
    }


def expected_in(
    topics: dict[str, str],
    readings: list[Raw],
    registry: list[Raw],
    settings: Settings | None = None,
    *,
    live: bool = False,
) -> SensorsExpected:
    """The oracle's tables for records on `topics` (dead letters name them)."""
    return sensors_oracle(
        readings,
        registry,
        oracle_settings(settings or Settings()),
        topic=topics["SENSORS_TOPIC"],
        registry_topic=topics["DEVICES_TOPIC"],
        live=live,
    )


@pytest.fixture
def sensors(kafka_bootstrap: str, topic_factory: TopicFactory) -> dict[str, Any]:
    config = SensorsConfig(seed=11, events=30_000, devices=60, sites=6)
    readings, registry = generated(config)
    names = sensors_topics(topic_factory)
    produce(kafka_bootstrap, names["SENSORS_TOPIC"], readings)
    produce(kafka_bootstrap, names["DEVICES_TOPIC"], registry)
    expected = expected_in(names, readings.raw, registry.raw)
    assert expected.alerts and expected.device_batches
    return {"topics": names, "expected": expected}


def env(bootstrap: str, topics: dict[str, str], url: str) -> dict[str, str]:
    return {
        "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
        **topics,
        "KAFKA_STOP_AT_END": "true",
        "CLICKHOUSE_URL": url,
    }


def test_the_sensors_flow_equals_the_oracle(
    kafka_bootstrap: str, sensors: dict[str, Any], tmp_path: Path
) -> None:
    url = f"chdb://{tmp_path / 'store'}"
    done = run_python(
        [*COMMAND, *recovery_args(tmp_path / "recovery")],
        env(kafka_bootstrap, sensors["topics"], url),
        timeout_s=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert_exact(url, sensors["expected"])
    assert_alerts_sent(kafka_bootstrap, sensors["topics"]["ALERTS_TOPIC"], sensors["expected"])


@pytest.mark.slow
def test_the_sensors_flow_killed_mid_flush_and_at_random_resumes_exactly(
    kafka_bootstrap: str, sensors: dict[str, Any], tmp_path: Path
) -> None:
    seed = time.time_ns() % 10_000
    rng = random.Random(seed)
    url = f"chdb://{tmp_path / 'store'}"
    bounded = env(kafka_bootstrap, sensors["topics"], url)
    live = {**bounded, "KAFKA_STOP_AT_END": "false"}
    args = [*COMMAND, *recovery_args(tmp_path / "recovery")]
    log = tmp_path / "flow.log"
    # First a crash in the middle of a sink flush: some tables' rows stored, not others'.
    faulty = ["-m", "tests.support.fault_run", "dataflows.sensors", *args[3:]]
    flow = start_python(faulty, {**live, "FAULT_KILL_MID_FLUSH": str(rng.randint(1, 4))}, log)
    assert flow.wait(timeout=120) == -signal.SIGKILL, log.read_text(errors="replace")[-3000:]
    assert "SIGKILL in the middle of a sink flush" in log.read_text(errors="replace")
    # Then at a random moment (readings may be waiting for the registry).
    flow = start_python(args, live, log)
    time.sleep(rng.uniform(3.0, 8.0))
    assert flow.poll() is None, log.read_text(errors="replace")[-3000:]
    flow.send_signal(signal.SIGKILL)
    assert flow.wait(timeout=30) == -signal.SIGKILL
    done = run_python(args, bounded, timeout_s=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "resuming from" in done.stderr, f"seed {seed}"
    assert_exact(url, sensors["expected"])
    assert_alerts_sent(kafka_bootstrap, sensors["topics"]["ALERTS_TOPIC"], sensors["expected"])


def all_emitted(metrics: str | None, expected: SensorsExpected) -> bool:
    """Every table stored as many rows as the oracle has, and the alerts acknowledged by
    their topic (once per epoch)."""
    if metrics is None:
        return False
    sent = sample_total(metrics, "waxhouse_notices_total", table="alerts")
    return sent >= len(expected.alerts) and all(
        sample_total(metrics, "waxhouse_sink_rows_total", table=table)
        >= len(getattr(expected, table))
        for table in TABLES
    )


QUICK = {
    "SENSOR_WINDOW_SECONDS": "2",
    "SENSOR_SLIDE_SECONDS": "1",
    "WINDOW_SECONDS": "1",
    "ALLOWED_LATENESS_SECONDS": "1",
}


def test_a_live_sensors_flow_closes_idle_windows_and_ends_episodes(
    kafka_bootstrap: str, topic_factory: TopicFactory, tmp_path: Path
) -> None:
    """Live: once everything is read, only the idle clock (of the readings and of the
    registry) moves time; every window closes, every reading becomes final, and the rows
    a live run writes (closed windows, complete batches, ended episodes) are the oracle's."""
    config = SensorsConfig(seed=12, events=3_000, devices=15, sites=3, lateness_ms=1_000)
    readings, registry = generated(config)
    topics = sensors_topics(topic_factory)
    produce(kafka_bootstrap, topics["SENSORS_TOPIC"], readings)
    produce(kafka_bootstrap, topics["DEVICES_TOPIC"], registry)
    settings = load_settings(QUICK)
    expected = expected_in(topics, readings.raw, registry.raw, settings, live=True)
    assert expected.alerts and expected.device_batches
    url = f"chdb://{tmp_path / 'store'}"
    log = tmp_path / "flow.log"
    port = free_port()
    live = {
        **env(kafka_bootstrap, topics, url),
        **QUICK,
        "KAFKA_STOP_AT_END": "false",
        "BYTEWAX_DATAFLOW_API_ENABLED": "true",
        "BYTEWAX_DATAFLOW_API_PORT": str(port),
    }
    flow = start_python(COMMAND, live, log)
    try:
        wait_until_partitions_start(flow, log, 5, timeout_s=60)  # 3 readings, 2 registry
        # Only the idle clock can close the last windows and end the last episodes: wait
        # until every table has stored the rows the oracle expects (too few fails below).
        deadline = time.monotonic() + 90
        while not all_emitted(metrics := scrape(port), expected):
            assert flow.poll() is None, "a live flow must keep running"
            assert time.monotonic() < deadline, log.read_text(errors="replace")[-3000:]
            time.sleep(0.5)
        assert metrics is not None
        # What the dashboard's join panels show, served with samples.
        assert sample_total(metrics, "waxhouse_reference_versions_total", join="devices") > 0
        for gauge in ("waxhouse_join_waiting_events", "waxhouse_reference_watermark_seconds"):
            assert f'{gauge}{{partition="{topics["SENSORS_TOPIC"]}/0"}}' in metrics, gauge
    finally:
        flow.kill()
        flow.wait(timeout=30)
    assert_exact(url, expected)
    assert_alerts_sent(kafka_bootstrap, topics["ALERTS_TOPIC"], expected)


def test_an_episode_open_at_the_end_of_a_bounded_run_is_closed_by_the_next(
    kafka_bootstrap: str, topic_factory: TopicFactory, tmp_path: Path
) -> None:
    t0 = 1_767_225_600_000
    topics = sensors_topics(topic_factory, readings=1, devices=1)

    def readings(first: int, made: list[tuple[str, int, float]]) -> Stream:
        values = [
            {
                "reading_id": f"r{first + n}",
                "device_id": device,
                "ts": t0 + s * 1000,
                "temperature": t,
            }
            for n, (device, s, t) in enumerate(made)
        ]
        records = [Record(v, 0, v["ts"], first + n) for n, v in enumerate(values)]
        return Stream(records, [(0, r.offset, r.timestamp_ms, r.encoded()) for r in records])

    version = {"device_id": "hot", "site": "hall", "temp_max": 50, "valid_from": t0 - 3_600_000}
    registry = Stream([Record(version, 0, t0 - 1, 0)], [(0, 0, t0 - 1, orjson.dumps(version))])
    first = readings(
        0, [("hot", 0, 60), ("hot", 1, 61), ("hot", 2, 63), ("hot", 3, 62), ("cool", 30, 20)]
    )
    second = readings(5, [("hot", 31, 61), ("hot", 32, 20), ("cool", 60, 20)])
    url = f"chdb://{tmp_path / 'store'}"
    bounded = env(kafka_bootstrap, topics, url)
    args = [*COMMAND, *recovery_args(tmp_path / "recovery")]
    produce(kafka_bootstrap, topics["DEVICES_TOPIC"], registry)
    alerts = ["alert_start", "alert_end", "readings", "closed"]
    for part, want in (
        (first, [(t0, t0 + 3_000, 4, 0)]),  # still open: written with closed = 0
        (second, [(t0, t0 + 31_000, 5, 1)]),  # the next run's row replaces it
    ):
        produce(kafka_bootstrap, topics["SENSORS_TOPIC"], part)
        done = run_python(args, bounded, timeout_s=300)
        assert done.returncode == 0, done.stderr[-3000:]
        assert [tuple(row.values()) for row in view_rows(url, "alerts", alerts)] == want
    everything = expected_in(topics, [*first.raw, *second.raw], registry.raw)
    assert_exact(url, everything)


@pytest.mark.slow
def test_killed_while_readings_wait_for_the_registry_then_its_versions_arrive(
    kafka_bootstrap: str, topic_factory: TopicFactory, tmp_path: Path
) -> None:
    """The registry has only its first versions (an hour before the readings), so every
    reading waits for its watermark; the flow is killed with them waiting (in its
    snapshots), the registry's later versions arrive, and the next run applies them to
    the readings as if they had come first."""
    config = SensorsConfig(seed=13, events=8_000, devices=30, sites=4)
    readings, registry = generated(config)
    first = [r for r in registry.records if r.timestamp_ms < config.start_ms]
    later = [r for r in registry.records if r.timestamp_ms >= config.start_ms]
    assert first and later
    topics = sensors_topics(topic_factory)
    produce(kafka_bootstrap, topics["SENSORS_TOPIC"], readings)
    produce_in_partitions(kafka_bootstrap, topics["DEVICES_TOPIC"], first, "device_id")
    expected = expected_in(topics, readings.raw, registry.raw)
    url = f"chdb://{tmp_path / 'store'}"
    bounded = env(kafka_bootstrap, topics, url)
    port = free_port()
    live = {
        **bounded,
        "KAFKA_STOP_AT_END": "false",
        "BYTEWAX_DATAFLOW_API_ENABLED": "true",
        "BYTEWAX_DATAFLOW_API_PORT": str(port),
    }
    args = [*COMMAND, *recovery_args(tmp_path / "recovery")]
    log = tmp_path / "flow.log"
    flow = start_python(args, live, log)
    try:
        deadline = time.monotonic() + 90
        while True:  # until (nearly) every reading waits, and a snapshot has them
            metrics = scrape(port)
            waiting = sample_total(metrics, "waxhouse_join_waiting_events") if metrics else 0
            if waiting >= 0.9 * config.events:
                break
            assert flow.poll() is None, log.read_text(errors="replace")[-3000:]
            assert time.monotonic() < deadline, f"{waiting} readings waiting"
            time.sleep(0.5)
        time.sleep(2)  # a snapshot every second: the waiting readings are in one
    finally:
        flow.send_signal(signal.SIGKILL)
        flow.wait(timeout=30)
    produce_in_partitions(kafka_bootstrap, topics["DEVICES_TOPIC"], later, "device_id")
    done = run_python(args, bounded, timeout_s=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "resuming from" in done.stderr
    assert_exact(url, expected)
