"""The sensors flow against the real broker: readings and registry versions in their own
topics, read together; the four tables and the dead letters equal the contract's oracle,
in one bounded run and after kill -9s at random moments; every alert row reached the
alerts topic (at least once) and every message there is an alert."""

from __future__ import annotations

import random
import signal
import time
from datetime import datetime, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson
import pytest
from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from tests.support.clickhouse import query_rows
from tests.support.flow import recovery_args, run_python, start_python
from tests.support.kafka_broker import TopicFactory
from tests.support.sensors import Stream, generated, oracle_settings
from tests.support.sensors_oracle import SensorsExpected, sensors_oracle
from waxhouse.connectors.sensors_generator import SensorsConfig
from waxhouse.settings import Settings

pytestmark = pytest.mark.integration

TABLES = ("device_stats", "site_stats", "device_batches", "alerts")
COMMAND = ["-m", "bytewax.run", "dataflows.sensors"]


def produce(bootstrap: str, topic: str, stream: Stream) -> None:
    """Keyed by device, into the partitions `stream` put them in (tombstones too)."""
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all")
    try:
        for record in stream.records:
            value = record.encoded()
            key = None
            if value is not None and value.startswith(b"{"):
                try:
                    key = str(orjson.loads(value).get("device_id", "")).encode()
                except orjson.JSONDecodeError:
                    key = None
            producer.send(
                topic,
                value=value,
                key=key or b"?",
                partition=record.partition,
                timestamp_ms=record.timestamp_ms,
            )
        producer.flush(60)
    finally:
        producer.close()


def _plain(value: Any) -> Any:
    if isinstance(value, datetime):
        return round(value.timestamp() * 1000)
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
        columns = list(want[0])
        got = query_rows(url, f"SELECT {', '.join(columns)} FROM {table}")  # noqa: S608
        assert _rows([dict(zip(columns, row, strict=True)) for row in got]) == _rows(want), table
    dead = {
        s: (r, e) for s, r, e in query_rows(url, "SELECT source, reason, error FROM dead_letters")
    }
    assert set(dead) == set(expected.dead_letters)
    assert {s: r for s, (r, _) in dead.items()} == {
        s: r for s, (r, _) in expected.dead_letters.items()
    }


def alert_messages(bootstrap: str, topic: str) -> list[dict[str, Any]]:
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    try:
        part = TopicPartition(topic, 0)
        consumer.assign([part])
        consumer.seek_to_beginning(part)
        end = consumer.end_offsets([part])[part]
        out: list[dict[str, Any]] = []
        deadline = time.monotonic() + 60
        while consumer.position(part) < end and time.monotonic() < deadline:
            for records in consumer.poll(timeout_ms=1000).values():
                out.extend(orjson.loads(r.value) for r in records)
        return out
    finally:
        consumer.close()


def assert_alerts_sent(bootstrap: str, topic: str, expected: SensorsExpected) -> None:
    """At least once: every alert row has a message, and every message is an alert."""
    sent = {(m["device_id"], m["alert_start"]) for m in alert_messages(bootstrap, topic)}
    rows = {(a["device_id"], _rfc3339(a["alert_start"])) for a in expected.alerts}
    assert sent == rows


def _rfc3339(ms: int) -> str:
    moment = datetime.fromtimestamp(ms / 1000, tz=timezone.utc)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ms % 1000:03d}Z"


@pytest.fixture
def sensors(kafka_bootstrap: str, topic_factory: TopicFactory) -> dict[str, Any]:
    config = SensorsConfig(seed=11, events=30_000, devices=60, sites=6)
    readings, registry = generated(config)
    names = {
        "SENSORS_TOPIC": topic_factory(3, prefix="readings"),
        "DEVICES_TOPIC": topic_factory(2, prefix="devices"),
        "SENSORS_DLQ_TOPIC": topic_factory(1, prefix="readings-dlq"),
        "ALERTS_TOPIC": topic_factory(1, prefix="alerts"),
    }
    produce(kafka_bootstrap, names["SENSORS_TOPIC"], readings)
    produce(kafka_bootstrap, names["DEVICES_TOPIC"], registry)
    expected = sensors_oracle(
        readings.raw,
        registry.raw,
        oracle_settings(Settings()),
        topic=names["SENSORS_TOPIC"],
        registry_topic=names["DEVICES_TOPIC"],
    )
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
def test_the_sensors_flow_killed_twice_resumes_exactly(
    kafka_bootstrap: str, sensors: dict[str, Any], tmp_path: Path
) -> None:
    seed = time.time_ns() % 10_000
    rng = random.Random(seed)
    url = f"chdb://{tmp_path / 'store'}"
    bounded = env(kafka_bootstrap, sensors["topics"], url)
    live = {**bounded, "KAFKA_STOP_AT_END": "false"}
    args = [*COMMAND, *recovery_args(tmp_path / "recovery")]
    log = tmp_path / "flow.log"
    for _ in range(2):
        flow = start_python(args, live, log)
        time.sleep(rng.uniform(4.0, 9.0))
        assert flow.poll() is None, log.read_text(errors="replace")[-3000:]
        flow.send_signal(signal.SIGKILL)
        assert flow.wait(timeout=30) == -signal.SIGKILL
    done = run_python(args, bounded, timeout_s=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "resuming from" in done.stderr, f"seed {seed}"
    assert_exact(url, sensors["expected"])
    assert_alerts_sent(kafka_bootstrap, sensors["topics"]["ALERTS_TOPIC"], sensors["expected"])
