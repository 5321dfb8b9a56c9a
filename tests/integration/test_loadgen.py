"""`waxhouse produce` against a real broker: keyed, present-day events the flow accepts,
and an orderly stop on SIGTERM, as `docker compose stop` sends it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import orjson
import pytest

from tests.support.dlq import read_partitions
from tests.support.flow import run_flow

pytestmark = pytest.mark.integration

PARTITIONS = 3


def produce(bootstrap: str, topic: str, *args: str) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KAFKA_", "CLICKHOUSE_"))}
    env.update(KAFKA_BOOTSTRAP_SERVERS=bootstrap, KAFKA_TOPIC=topic)
    return subprocess.Popen(
        [sys.executable, "-m", "waxhouse.cli", "produce", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        text=True,
    )


def read_all(bootstrap: str, topic: str) -> list[tuple[bytes, bytes, int]]:
    return [(r.key, r.value, r.timestamp) for r in read_partitions(bootstrap, topic, PARTITIONS)]


def test_produced_events_are_keyed_present_and_valid(
    kafka_bootstrap: str, topic_factory: Callable[..., str], tmp_path: Path
) -> None:
    topic = topic_factory(PARTITIONS, prefix="loadgen")
    started_ms = time.time_ns() // 1_000_000
    done = produce(
        kafka_bootstrap,
        topic,
        *("--rate", "0", "--events", "5000", "--seed", "7", "--malformed-ratio", "0"),
    )
    output, _ = done.communicate(timeout=120)
    assert done.returncode == 0, output
    assert "produced 5000 records" in output

    records = read_all(kafka_bootstrap, topic)
    assert len(records) == 5_000
    for key, value, _ in records:
        assert orjson.loads(value)["user_id"].encode() == key
    finished_ms = time.time_ns() // 1_000_000
    stamps = [ts for _, _, ts in records]
    assert started_ms - 1_000 <= min(stamps) and max(stamps) <= finished_ms + 60_000

    # The flow takes every one as a valid event, none late.
    url = f"chdb://{tmp_path}/store"
    ran = run_flow(
        {
            "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
            "KAFKA_TOPIC": topic,
            "KAFKA_DLQ_TOPIC": f"{topic}.dlq",
            "KAFKA_STOP_AT_END": "true",
            "CLICKHOUSE_URL": url,
        }
    )
    assert "waxhouse: 5,000 records" in ran.stdout, ran.stdout
    assert "valid events      5,000" in ran.stdout, ran.stdout


def test_sigterm_stops_the_producer_after_a_flush(
    kafka_bootstrap: str, topic_factory: Callable[..., str]
) -> None:
    topic = topic_factory(PARTITIONS, prefix="loadgen")
    running = produce(kafka_bootstrap, topic, "--rate", "2000", "--seed", "8")
    try:
        deadline = time.monotonic() + 60
        while not read_all(kafka_bootstrap, topic):
            assert running.poll() is None, running.communicate()[0]
            assert time.monotonic() < deadline, "nothing was produced"
            time.sleep(0.5)
        running.send_signal(signal.SIGTERM)
        output, _ = running.communicate(timeout=60)
    finally:
        if running.poll() is None:
            running.kill()
            running.wait()
    assert running.returncode == 0, output
    (line,) = [line for line in output.splitlines() if "records into" in line]
    produced = int(line.split("produced ")[1].split()[0])
    assert len(read_all(kafka_bootstrap, topic)) == produced > 0
