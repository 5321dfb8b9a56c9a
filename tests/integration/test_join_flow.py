"""A flow with a temporal join against the real broker: readings and registry versions in
two topics, read together; the views equal `waxhouse.testing`'s rows for the same records
(which tests/unit/test_join_pipeline.py holds to the plain rule and to any interleaving),
in one bounded run and across kill -9s."""

from __future__ import annotations

import random
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from tests.support.clickhouse import query_rows, view_rows
from tests.support.flow import recovery_args, run_python, start_python
from tests.support.joined import pipeline, streams
from tests.support.kafka_broker import TopicFactory
from tests.support.produce import produce_in_partitions
from waxhouse.testing import Result, run

pytestmark = pytest.mark.integration

TABLES = ("device_stats", "site_stats", "alerts")


def assert_exact(url: str, result: Result) -> None:
    for table in TABLES:
        want = result.rows[table]
        assert view_rows(url, table, list(want[0])) == want, table
    dead = sorted(query_rows(url, "SELECT source, reason, error FROM dead_letters"))
    assert dead == sorted((d.source, d.reason, d.error) for d in result.dead_letters)


@pytest.fixture
def topics(kafka_bootstrap: str, topic_factory: TopicFactory) -> dict[str, Any]:
    readings, versions = streams(3)
    names = {
        "readings": topic_factory(3, prefix="readings"),
        "devices": topic_factory(2, prefix="devices"),
        "dlq": topic_factory(1, prefix="readings-dlq"),
    }
    produce_in_partitions(kafka_bootstrap, names["readings"], readings, "device_id")
    produce_in_partitions(kafka_bootstrap, names["devices"], versions, "device_id")
    expected = run(
        pipeline,
        readings,
        topic=names["readings"],
        reference=versions,
        reference_topic=names["devices"],
    )
    assert expected.rows["alerts"] and any(
        d.source.startswith(names["devices"]) for d in expected.dead_letters
    )
    return {**names, "expected": expected}


def env(bootstrap: str, topics: dict[str, Any], url: str) -> dict[str, str]:
    return {
        "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
        "KAFKA_TOPIC": topics["readings"],
        "KAFKA_DLQ_TOPIC": topics["dlq"],
        "JOINED_REFERENCE_TOPIC": topics["devices"],
        "KAFKA_STOP_AT_END": "true",
        "CLICKHOUSE_URL": url,
    }


COMMAND = ["-m", "bytewax.run", "tests.support.joined"]


def test_a_joined_flow_reads_both_topics_with_exact_results(
    kafka_bootstrap: str, topics: dict[str, Any], tmp_path: Path
) -> None:
    url = f"chdb://{tmp_path / 'store'}"
    done = run_python(
        [*COMMAND, *recovery_args(tmp_path / "recovery")],
        env(kafka_bootstrap, topics, url),
        timeout_s=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert_exact(url, topics["expected"])


@pytest.mark.slow
def test_a_joined_flow_killed_twice_resumes_exactly(
    kafka_bootstrap: str, topics: dict[str, Any], tmp_path: Path
) -> None:
    seed = time.time_ns() % 10_000
    rng = random.Random(seed)
    url = f"chdb://{tmp_path / 'store'}"
    live = {**env(kafka_bootstrap, topics, url), "KAFKA_STOP_AT_END": "false"}
    args = [*COMMAND, *recovery_args(tmp_path / "recovery")]
    log = tmp_path / "flow.log"
    for _ in range(2):
        flow = start_python(args, live, log)
        time.sleep(rng.uniform(4.0, 8.0))
        assert flow.poll() is None, log.read_text(errors="replace")[-3000:]
        flow.send_signal(signal.SIGKILL)
        assert flow.wait(timeout=30) == -signal.SIGKILL
    done = run_python(args, env(kafka_bootstrap, topics, url), timeout_s=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "resuming from" in done.stderr, f"seed {seed}"
    assert_exact(url, topics["expected"])
