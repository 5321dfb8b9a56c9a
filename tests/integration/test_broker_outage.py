"""A Kafka broker outage mid-run: the flow waits, reconnects, and finishes exactly."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.support.flow import recovery_args, start_flow, wait_until_partitions_start
from tests.support.kafka_broker import KafkaBroker, TopicFactory
from tests.support.oracle import oracle
from tests.support.produce import produce_records
from tests.support.tables import assert_tables_match, read_tables
from waxhouse.connectors.generator import ClickstreamGenerator, GeneratorConfig

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_broker_down_for_ten_seconds_mid_run(
    kafka_broker: KafkaBroker, topic_factory: TopicFactory, tmp_path: Path
) -> None:
    records = ClickstreamGenerator(GeneratorConfig(seed=5, events=150_000)).take(150_000)
    bootstrap = kafka_broker.bootstrap_servers
    topic, dlq = topic_factory(4, prefix="outage"), topic_factory(1, prefix="outage-dlq")
    positions = produce_records(bootstrap, topic, records)
    url, log = f"chdb://{tmp_path / 'store'}", tmp_path / "flow.log"
    env = {
        "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
        "KAFKA_TOPIC": topic,
        "KAFKA_DLQ_TOPIC": dlq,
        "KAFKA_STOP_AT_END": "true",
        "CLICKHOUSE_URL": url,
    }
    flow = start_flow(env, log, recovery_args(tmp_path / "recovery"))
    try:
        wait_until_partitions_start(flow, log, 4, timeout_s=90)
        time.sleep(1.0)
        kafka_broker.shutdown()
        time.sleep(10)
        assert flow.poll() is None, "the flow must wait for the broker, not exit"
        kafka_broker.start()
        assert flow.wait(timeout=300) == 0, log.read_text(errors="replace")[-3000:]
    finally:
        if flow.poll() is None:
            flow.kill()
        kafka_broker.start()

    output = log.read_text(errors="replace")
    assert output.count("starts at offset") == 4, "no restart loop: one start per partition"
    # kafka-python logs each failed connection (with its socket traceback); the flow
    # itself never failed: no Bytewax error, exit code 0 above.
    assert "BytewaxRuntimeError" not in output
    assert "ECONNREFUSED" in output  # the outage was seen, and said so
    assert_tables_match(read_tables(url), oracle(records), records, positions)
